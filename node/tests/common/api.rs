//! A real node on a real listener, and a client for it.

use canopy_node::{Node, NodeConfig};
use canopy_serving::api::create_user;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub struct TestNode {
    pub node: Node,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub const PASSWORD: &str = "correct horse battery";

impl TestNode {
    pub async fn start(api: ApiConfig) -> TestNode {
        Self::start_with(api, |_| {}).await
    }

    /// A node whose configuration `adjust` changes first (its data directory is set).
    #[allow(dead_code)]
    pub async fn start_with(api: ApiConfig, adjust: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.api = api;
        adjust(&mut config);
        let node = Node::start(config).await.unwrap();
        let base = format!("http://{}", node.addr);
        TestNode {
            node,
            base,
            client: reqwest::Client::new(),
            dir,
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// Creates an account with `role` directly in the store (as `canopy admin create` does).
    pub async fn create(&self, username: &str, role: Role) -> uuid::Uuid {
        create_user(self.node.state.store.as_ref(), username, PASSWORD, role)
            .await
            .unwrap()
    }

    pub async fn register(&self, username: &str) -> uuid::Uuid {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({ "username": username, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["user_id"].as_str().unwrap().parse().unwrap()
    }

    /// Logs in; returns (access token, refresh token).
    pub async fn login(&self, username: &str) -> (String, String) {
        let (status, body) = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({ "username": username, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    pub async fn create_decision(&self, token: &str, quorum: u64) -> String {
        let body = json!({ "title": "Protect the old forest?", "region": "north", "options": ["protect", "log", "defer"], "closes_at": i64::MAX, "quorum": quorum });
        let (status, body) = self
            .post("/api/v1/voting/decision/create", Some(token), body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// The durable end of the log, summed over partitions: what "changes nothing" checks.
    pub fn log_records(&self) -> u64 {
        let log = self.node.state.gate.log();
        (0..log.partitions())
            .map(|p| log.end_offset(p).unwrap())
            .sum()
    }
}
