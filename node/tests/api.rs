//! End to end through a real listener: accounts, roles, decisions, votes, results.

mod common;

use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, TestNode, elements};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn option_composite(results: &Value, option: usize) -> f64 {
    results["options"][option]["composite"].as_f64().unwrap()
}

fn cell(breakdown: &Value, option: u64, component: &str) -> Option<Value> {
    elements(&breakdown["cells"])
        .find(|c| c["option"] == option && c["component"] == component)
        .cloned()
}

/// The decision's breakdown as of a view that includes `offset` (read your own writes).
async fn breakdown_including(node: &TestNode, decision: &str, offset: u64, token: &str) -> Value {
    let path = format!("/api/v1/voting/decision/{decision}/breakdown?min_offset={offset}");
    node.get(&path, token).await.1
}

#[tokio::test]
async fn voters_of_every_role_cast_change_and_read_their_own_votes() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    node.create("gateway", Role::Operator).await;
    node.create("ana", Role::Analyst).await;
    let (admin, _) = node.login("root").await;

    let citizen = node.register("cora").await;
    let expert = node.register("ezra").await;
    let stakeholder = node.register("sami").await;
    let verify = |user: uuid::Uuid, role: &str, weight: f64| json!({ "user_id": user, "role": role, "weight": weight, "field": "hydrology", "regions": ["north"] });
    for (user, role, weight) in [(expert, "expert", 2.5), (stakeholder, "stakeholder", 1.5)] {
        let verification = verify(user, role, weight);
        node.post_expecting(
            "/api/v1/auth/verify-expert",
            Some(&admin),
            verification,
            StatusCode::OK,
        )
        .await;
    }
    let _ = citizen;
    let decision = node.create_decision(&admin, 3).await;
    let (cora, _) = node.login("cora").await;
    let (ezra, _) = node.login("ezra").await;
    let (sami, _) = node.login("sami").await;

    let cast = |option: u16| json!({ "decision_id": decision, "option": option });
    let mut last_offset = 0;
    for (token, option) in [(&cora, 0u16), (&ezra, 1), (&sami, 1), (&cora, 2)] {
        let receipt = node
            .post_expecting(CAST_VOTE, Some(token), cast(option), StatusCode::CREATED)
            .await;
        assert_eq!(receipt["leaf_hash"].as_str().unwrap().len(), 64);
        last_offset = receipt["position"]["offset"].as_u64().unwrap();
        // Read your own write: the result includes the vote just cast.
        let results = node
            .get_ok(
                &format!("/api/v1/voting/decision/{decision}/results?min_offset={last_offset}"),
                token,
            )
            .await;
        assert!(results["as_of"]["offset"].as_u64().unwrap() > last_offset);
    }
    // An analyst reads but does not vote.
    let (ana, _) = node.login("ana").await;
    assert_eq!(
        node.post_refusal(CAST_VOTE, Some(&ana), cast(0)).await,
        (StatusCode::FORBIDDEN, "forbidden")
    );

    // Below admin, a cell shows its count and share and never its weighted sum: watched
    // before and after a vote, the sum would give that voter's weight, which names an expert
    // from one decision to the next.
    let seen_by_analyst = breakdown_including(&node, &decision, last_offset, &ana).await;
    for shown in elements(&seen_by_analyst["cells"]) {
        assert_eq!(shown.get("weight"), None, "{seen_by_analyst}");
    }
    let expert_seen = cell(&seen_by_analyst, 1, "expert").unwrap();
    assert_eq!(
        (expert_seen["count"].as_u64(), expert_seen["share"].as_f64()),
        (Some(1), Some(1.0))
    );
    let breakdown = breakdown_including(&node, &decision, last_offset, &admin).await;
    // Cora changed her vote from 0 to 2: only the latest counts.
    assert_eq!(cell(&breakdown, 0, "democratic"), None);
    let democratic = cell(&breakdown, 2, "democratic").unwrap();
    assert_eq!(
        (democratic["count"].as_u64(), democratic["weight"].as_f64()),
        (Some(1), Some(1.0))
    );
    let expert_cell = cell(&breakdown, 1, "expert").unwrap();
    assert_eq!(
        (
            expert_cell["count"].as_u64(),
            expert_cell["weight"].as_f64()
        ),
        (Some(1), Some(2.5))
    );
    let community = cell(&breakdown, 1, "community").unwrap();
    assert_eq!(
        (community["count"].as_u64(), community["weight"].as_f64()),
        (Some(1), Some(1.5))
    );

    let (_, results) = node
        .get(&format!("/api/v1/voting/decision/{decision}/results"), &ana)
        .await;
    assert_eq!(results["turnout"], 3);
    assert_eq!(results["quorum_met"], true);
    // Default weights: democratic 0.4 (all to option 2), expert 0.3 and community 0.2 (option 1).
    assert!(
        (option_composite(&results, 1) - 0.5).abs() < 1e-9,
        "{results}"
    );
    assert!(
        (option_composite(&results, 2) - 0.4).abs() < 1e-9,
        "{results}"
    );
    assert_eq!(option_composite(&results, 0), 0.0);

    // A gateway relays a batch, each vote under its voter's own token.
    let (gateway, _) = node.login("gateway").await;
    let batch = json!({ "votes": [
        { "voter_token": cora, "decision_id": decision, "option": 0 },
        { "voter_token": sami, "decision_id": decision, "option": 0 },
    ]});
    let body = node
        .post_expecting(
            "/api/v1/voting/cast-votes",
            Some(&gateway),
            batch,
            StatusCode::CREATED,
        )
        .await;
    let offset = body["receipts"][1]["position"]["offset"].as_u64().unwrap();
    let breakdown = breakdown_including(&node, &decision, offset, &ana).await;
    assert_eq!(cell(&breakdown, 0, "democratic").unwrap()["count"], 1);
    assert_eq!(cell(&breakdown, 0, "community").unwrap()["count"], 1);
    assert_eq!(cell(&breakdown, 1, "community"), None);

    let (status, active) = node.get("/api/v1/voting/active-decisions", &cora).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active.as_array().unwrap().len(), 1);

    // A retried cast with the same vote id counts once and gets the first receipt, whose
    // leaf is the one in the record; the id with another option is refused.
    let retry = json!({ "vote_id": "7f0c62d4-3a55-4c4e-9e38-5f4d8f3b2a10", "decision_id": decision, "option": 1 });
    let (_, first) = node.post(CAST_VOTE, Some(&ezra), retry.clone()).await;
    let records = node.log_records();
    let (_, second) = node.post(CAST_VOTE, Some(&ezra), retry).await;
    assert_eq!(second, first);
    let reused = json!({ "vote_id": "7f0c62d4-3a55-4c4e-9e38-5f4d8f3b2a10", "decision_id": decision, "option": 2 });
    assert_eq!(
        node.post_refusal(CAST_VOTE, Some(&ezra), reused).await,
        (StatusCode::CONFLICT, "vote_id_reused")
    );
    assert_eq!(node.log_records(), records, "a retry appended to the log");
    let offset = second["position"]["offset"].as_u64().unwrap();
    let breakdown = breakdown_including(&node, &decision, offset, &ana).await;
    assert_eq!(cell(&breakdown, 1, "expert").unwrap()["count"], 1);

    let (status, trail) = node.get("/api/v1/audit/trail", &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trail["chain_intact"], true);
    let actions: Vec<&str> = elements(&trail["entries"])
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "register",
        "login",
        "verify_user",
        "create_decision",
        "refused",
    ] {
        assert!(actions.contains(&expected), "no {expected} in {actions:?}");
    }
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let node = TestNode::start(ApiConfig::default()).await;
    let (status, _) = node.get_anonymous("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = node.get_anonymous("/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    assert_eq!(
        node.refusal(reqwest::Method::GET, "/api/v1/nothing", None, None)
            .await,
        (StatusCode::NOT_FOUND, "not_found")
    );
    node.node.shutdown().await.unwrap();
}

/// Whatever part of a request is malformed (a path segment, the query string, the method,
/// the body's type), the answer is the JSON error body with a code, as for every other error.
#[tokio::test]
async fn malformed_requests_answer_the_json_error_body() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let decision = uuid::Uuid::new_v4();
    let client = reqwest::Client::new();
    for (method, path, content_type, expected) in [
        (
            reqwest::Method::GET,
            "/api/v1/voting/decision/not-a-uuid/results".to_string(),
            None,
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/audit/decisions/{decision}/proof"),
            None,
            (StatusCode::BAD_REQUEST, "bad_request"),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/audit/decisions/{decision}/consistency?from=x&to=2"),
            None,
            (StatusCode::BAD_REQUEST, "bad_request"),
        ),
        (
            reqwest::Method::DELETE,
            "/api/v1/auth/login".to_string(),
            None,
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/voting/cast-vote".to_string(),
            Some("text/plain"),
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
    ] {
        let mut request = client
            .request(method.clone(), format!("http://{}{path}", node.node.addr))
            .bearer_auth(&admin);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type).body("{}");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!((status, code.as_str()), expected, "{method} {path}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path}"
        );
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{method} {path}: {body}"
        );
    }
    node.node.shutdown().await.unwrap();
}

/// The served OpenAPI document is generated from the handlers: every operation it lists is
/// routed (no 404 route-not-found, no 405), answers only statuses it documents (asked
/// without a token, with an empty body, and with a malformed id), and every voting and
/// auth route is in it.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let node = TestNode::start(ApiConfig::default()).await;
    let (status, document) = node.get_anonymous("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        for (method_name, operation) in item.as_object().unwrap() {
            let method =
                reqwest::Method::from_bytes(method_name.to_uppercase().as_bytes()).unwrap();
            let body = (method == reqwest::Method::POST).then(|| json!({}));
            let response = node.request(method.clone(), &concrete, None, body).await;
            let unrouted = response.0 == StatusCode::METHOD_NOT_ALLOWED
                || response.0 == StatusCode::NOT_FOUND
                    && response.1["error"]["message"] == "route not found";
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed: {:?}",
                response
            );
            let documented =
                |status: StatusCode| operation["responses"].get(status.as_str()).is_some();
            assert!(
                documented(response.0),
                "{method} {path} answered {} undocumented: {}",
                response.0,
                response.1
            );
            if path.contains("{id}") {
                let malformed = path.replace("{id}", "not-an-id");
                let body = (method == reqwest::Method::POST).then(|| json!({}));
                let response = node.request(method.clone(), &malformed, None, body).await;
                assert!(
                    documented(response.0),
                    "{method} {malformed} answered {} undocumented: {}",
                    response.0,
                    response.1
                );
            }
            operations += 1;
        }
    }
    for expected in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh-token",
        "/api/v1/auth/revoke-token",
        "/api/v1/auth/verify-expert",
        "/api/v1/auth/2fa/enrol",
        "/api/v1/auth/2fa/confirm",
        "/api/v1/auth/2fa/disable",
        "/api/v1/auth/2fa/recovery-codes",
        "/api/v1/auth/password",
        "/api/v1/voting/decision/create",
        "/api/v1/voting/cast-vote",
        "/api/v1/voting/cast-votes",
        "/api/v1/voting/decision/{id}/results",
        "/api/v1/voting/decision/{id}/breakdown",
        "/api/v1/voting/active-decisions",
        "/api/v1/audit/key",
        "/api/v1/audit/decisions/{id}/checkpoints",
        "/api/v1/audit/decisions/{id}/proof",
        "/api/v1/audit/decisions/{id}/consistency",
        "/api/v1/audit/decisions/{id}/checkpoints/{size}/anchor",
        "/api/v1/audit/decisions/{id}/tlog/checkpoint",
        "/api/v1/audit/decisions/{id}/tlog/tile/{*path}",
        "/api/v1/admin/erase-voter",
        "/api/v1/admin/rolls",
        "/api/v1/admin/rolls/{id}",
        "/api/v1/admin/rolls/{id}/reissue",
        "/api/v1/rolls/claim",
        "/api/v1/data/sensors",
        "/api/v1/data/process-sensor-data",
        "/api/v1/data/ingest-environmental-data",
        "/api/v1/data/metrics/{region}",
        "/api/v1/data/historical-trends",
        "/api/v1/data/alerts/stream",
        "/api/v1/analytics/sql",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    assert_eq!(operations, 43);
    let (status, body) = node.get_anonymous("/api/v1/undocumented").await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("route not found"))
    );
    node.node.shutdown().await.unwrap();
}

/// The OpenAPI document, byte for byte as served, equals the committed copy: a handler moved
/// between modules, a renamed type or a reordered route changes what clients generate from
/// it, so such a change must show in review as a change to `tests/data/openapi.json`.
/// `CANOPY_BLESS=1` rewrites the copy after an intended change.
#[tokio::test]
async fn the_openapi_document_is_the_committed_one() {
    let node = TestNode::start(ApiConfig::default()).await;
    let served = node
        .client
        .get(format!("{}/api/v1/openapi.json", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    node.node.shutdown().await.unwrap();
    let committed_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/openapi.json");
    if std::env::var_os("CANOPY_BLESS").is_some() {
        std::fs::write(&committed_path, &served).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    if served != committed {
        let pretty = |text: &str| {
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(text).unwrap()).unwrap()
        };
        let (served, committed) = (pretty(&served), pretty(&committed));
        let first_difference = served
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(served.lines().count().min(committed.lines().count()));
        panic!(
            "the served OpenAPI document differs from tests/data/openapi.json from line {} of \
             the pretty-printed form:\nserved:    {:?}\ncommitted: {:?}",
            first_difference + 1,
            served.lines().nth(first_difference),
            committed.lines().nth(first_difference)
        );
    }
}

/// The audit trail reads in pages (`after`, `limit`): the pages put together are the whole
/// trail, each page's chain is checked from the entry before it, and bad bounds are refused.
#[tokio::test]
async fn the_audit_trail_reads_in_pages_that_chain() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    for name in ["cora", "dana", "emil", "fynn"] {
        node.register(name).await;
        node.login(name).await;
    }
    let (admin, _) = node.login("root").await;
    let whole = node.get_ok("/api/v1/audit/trail", &admin).await;
    assert_eq!(whole["chain_intact"], true, "{whole}");
    assert_eq!(whole["next_after"], Value::Null);
    let all: Vec<Value> = elements(&whole["entries"]).cloned().collect();
    assert!(all.len() >= 9, "{whole}");

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = node
            .get_ok(
                &format!("/api/v1/audit/trail?after={after}&limit=2"),
                &admin,
            )
            .await;
        assert_eq!(page["chain_intact"], true, "{page}");
        paged.extend(elements(&page["entries"]).cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    // Reading the trail added no entry of its own before the pages were read.
    assert_eq!(paged[..all.len()], all[..]);

    for query in ["limit=0", "limit=1001", "after=-1"] {
        let (status, body) = node
            .get(&format!("/api/v1/audit/trail?{query}"), &admin)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
    }
    let (status, _) = node.get("/api/v1/audit/trail?after=100000", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A retry whose first answer was lost, sent after the node restarted (so only the record
/// remembers the first delivery), gets the first receipt, and that receipt's leaf has a
/// proof; the same id with another option is still refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_restart_gets_the_first_receipt() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let decision = node.create_decision(&admin, 1).await;
    node.register("cora").await;
    let (cora, _) = node.login("cora").await;
    let vote = json!({ "vote_id": "0b8e7a10-6f3c-4d2a-9c1e-2a7d5e9f4b31", "decision_id": decision, "option": 2 });
    let first = node
        .post_expecting(CAST_VOTE, Some(&cora), vote.clone(), StatusCode::CREATED)
        .await;
    let offset = first["position"]["offset"].as_u64().unwrap();
    let path = format!("/api/v1/voting/decision/{decision}/results?min_offset={offset}");
    node.get_ok(&path, &cora).await;

    let TestNode {
        node: running,
        client,
        dir,
        ..
    } = node;
    running.shutdown().await.unwrap();
    let mut config = canopy_node::NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let restarted = canopy_node::Node::start(config).await.unwrap();
    let node = TestNode {
        base: format!("http://{}", restarted.addr),
        node: restarted,
        client,
        dir,
    };
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..200 {
        ready = node
            .client
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .unwrap()
            .status();
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(ready, StatusCode::OK);

    let records = node.log_records();
    let again = node
        .post_expecting(CAST_VOTE, Some(&cora), vote, StatusCode::CREATED)
        .await;
    assert_eq!(again, first);
    assert_eq!(node.log_records(), records, "the retry appended to the log");
    let proof = format!(
        "/api/v1/audit/decisions/{decision}/proof?leaf={}",
        first["leaf_hash"].as_str().unwrap()
    );
    let (status, body) = node.get_anonymous(&proof).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::CONFLICT,
        "the first receipt's leaf is not in the record: {status} {body}"
    );
    let reused = json!({ "vote_id": "0b8e7a10-6f3c-4d2a-9c1e-2a7d5e9f4b31", "decision_id": decision, "option": 0 });
    assert_eq!(
        node.post_refusal(CAST_VOTE, Some(&cora), reused).await,
        (StatusCode::CONFLICT, "vote_id_reused")
    );
}
