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

pub const CAST_VOTE: &str = "/api/v1/voting/cast-vote";
pub const CREATE_DECISION: &str = "/api/v1/voting/decision/create";
pub const LOGIN: &str = "/api/v1/auth/login";

/// The code a refusal's body names (`error.code`), or `"<none>"` when it names none.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// The elements of a JSON array (panics when `value` is not one).
pub fn elements(value: &Value) -> std::slice::Iter<'_, Value> {
    value.as_array().unwrap().iter()
}

/// How many entries of an audit trail (`GET /api/v1/audit/trail`) record `action`.
pub fn audit_entries(trail: &Value, action: &str) -> usize {
    elements(&trail["entries"])
        .filter(|e| e["action"] == action)
        .count()
}

/// An answer seen as a refusal: it equals the pair `(status, error code)` a test expects,
/// and keeps the body so that a failed comparison prints what the node said.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub body: Value,
}

impl PartialEq<(StatusCode, &str)> for Refusal {
    fn eq(&self, (status, code): &(StatusCode, &str)) -> bool {
        self.status == *status && self.code == *code
    }
}

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
        // Tests sign many voters up from one address; the registration limits have tests
        // of their own, which set them again in `adjust`.
        config.api.registrations_per_address = canopy_serving::limits::Rate::per_hour(100_000);
        config.api.registrations_per_block = canopy_serving::limits::Rate::per_hour(100_000);
        adjust(&mut config);
        let node = Node::start(config).await.unwrap();
        let base = format!("http://{}", node.addr);
        TestNode {
            node,
            base,
            client: canopy_testkit::http_client(),
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

    /// A GET without a token (health, readiness, the OpenAPI document, unknown routes).
    pub async fn get_anonymous(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None, None).await
    }

    /// A GET that must answer 200 OK; returns the body.
    pub async fn get_ok(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.get(path, token).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// A POST that must answer `expected`; returns the body.
    pub async fn post_expecting(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
        expected: StatusCode,
    ) -> Value {
        let (status, body) = self.post(path, token, body).await;
        assert_eq!(status, expected, "POST {path}: {body}");
        body
    }

    /// A request whose answer is compared as a refusal: `assert_eq!(node.refusal(…).await,
    /// (StatusCode::FORBIDDEN, "forbidden"))`.
    pub async fn refusal(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Refusal {
        let (status, body) = self.request(method, path, token, body).await;
        Refusal {
            status,
            code: error_code(&body).to_string(),
            body,
        }
    }

    /// A POST whose answer is compared as a refusal (see [`TestNode::refusal`]).
    pub async fn post_refusal(&self, path: &str, token: Option<&str>, body: Value) -> Refusal {
        self.refusal(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Creates an account with `role` directly in the store (as `canopy admin create` does).
    pub async fn create(&self, username: &str, role: Role) -> uuid::Uuid {
        create_user(self.node.state.store.as_ref(), username, PASSWORD, role)
            .await
            .unwrap()
    }

    pub async fn register(&self, username: &str) -> uuid::Uuid {
        let body = self
            .post_credentials("/api/v1/auth/register", username, StatusCode::CREATED)
            .await;
        body["user_id"].as_str().unwrap().parse().unwrap()
    }

    /// Logs in; returns (access token, refresh token).
    pub async fn login(&self, username: &str) -> (String, String) {
        let body = self.post_credentials(LOGIN, username, StatusCode::OK).await;
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// Posts `username` with the shared [`PASSWORD`] to `path`, which must answer `expected`.
    async fn post_credentials(&self, path: &str, username: &str, expected: StatusCode) -> Value {
        let credentials = json!({ "username": username, "password": PASSWORD });
        self.post_expecting(path, None, credentials, expected).await
    }

    pub async fn create_decision(&self, token: &str, quorum: u64) -> String {
        let body = json!({ "title": "Protect the old forest?", "region": "north", "options": ["protect", "log", "defer"], "closes_at": i64::MAX, "quorum": quorum });
        let body = self
            .post_expecting(CREATE_DECISION, Some(token), body, StatusCode::CREATED)
            .await;
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
