//! End to end through a real listener: accounts, roles, decisions, votes, results.

mod common;

use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, TestNode, elements};
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
    let client = canopy_testkit::http_client();
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
        "/api/v1/voting/decisions",
        "/api/v1/voting/decisions/{id}",
        "/api/v1/voting/decisions/{id}/close",
        "/api/v1/voting/decisions/{id}/cancel",
        "/api/v1/voting/my-votes",
        "/api/v1/audit/key",
        "/api/v1/audit/decisions/{id}/checkpoints",
        "/api/v1/audit/decisions/{id}/proof",
        "/api/v1/audit/decisions/{id}/consistency",
        "/api/v1/audit/decisions/{id}/checkpoints/{size}/anchor",
        "/api/v1/audit/decisions/{id}/tlog/checkpoint",
        "/api/v1/audit/decisions/{id}/tlog/tile/{*path}",
        "/api/v1/audit/decisions/{id}/result",
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
        "/api/v1/data/import",
        "/api/v1/agents/analyze-proposal",
        "/api/v1/agents/agents/{id}/status",
        "/api/v1/agents/invoke-consensus",
        "/api/v1/agents/recommendations/{decision_id}",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    assert_eq!(operations, 56);
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

const VERIFY_EXPERT: &str = "/api/v1/auth/verify-expert";
const MY_VOTES: &str = "/api/v1/voting/my-votes";
const SEARCH: &str = "/api/v1/voting/decisions";

/// The GET of verify-expert answers the caller's own verification, naming the verifier as
/// the audit trail does, never by account id; an account never verified is told so; the
/// admin's POST still verifies.
#[tokio::test]
async fn verify_expert_shows_the_caller_their_own_verification() {
    let node = TestNode::start(ApiConfig::default()).await;
    let root = node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let ezra = node.register("ezra").await;
    let cora = node.register("cora").await;
    let verification = json!({ "user_id": ezra, "role": "expert", "weight": 2.5, "field": "hydrology", "regions": ["north", "east"] });
    node.post_expecting(VERIFY_EXPERT, Some(&admin), verification, StatusCode::OK)
        .await;
    // The role and weight are the account's now: a token issued after the verification.
    let (ezra_token, _) = node.login("ezra").await;
    let (cora_token, _) = node.login("cora").await;

    let shown = node.get_ok(VERIFY_EXPERT, &ezra_token).await;
    let (_, trail) = node.get("/api/v1/audit/trail", &admin).await;
    let verifier = elements(&trail["entries"])
        .find(|entry| entry["action"] == "verify_user")
        .unwrap()["actor"]
        .clone();
    assert_eq!(shown["role"], "expert", "{shown}");
    assert_eq!(shown["weight"], 2.5);
    assert_eq!(shown["verified"], true);
    assert_eq!(shown["field"], "hydrology");
    assert_eq!(shown["regions"], json!(["east", "north"]));
    assert_eq!(shown["verified_by"], verifier);
    assert!(shown["verified_at"].as_i64().unwrap() > 0);
    let text = shown.to_string();
    for id in [root, ezra, cora] {
        assert!(!text.contains(&id.to_string()), "an account id in {text}");
    }

    let never = node.get_ok(VERIFY_EXPERT, &cora_token).await;
    assert_eq!(
        never,
        json!({ "role": "citizen", "weight": 1.0, "verified": false })
    );
    // Nobody asks for someone else's: the route takes no account.
    assert_eq!(
        node.refusal(
            reqwest::Method::GET,
            &format!("{VERIFY_EXPERT}?user_id={ezra}"),
            Some(&admin),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let admins_own = node
        .get_ok(&format!("{VERIFY_EXPERT}?user_id={ezra}"), &admin)
        .await;
    assert_eq!(admins_own["role"], "admin", "{admins_own}");
    assert_eq!(admins_own["verified"], false, "{admins_own}");
    assert_eq!(
        node.refusal(reqwest::Method::GET, VERIFY_EXPERT, None, None)
            .await,
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    node.node.shutdown().await.unwrap();
}

/// `my-votes` once it lists `votes` votes, each with one of `statuses` (the engine takes a
/// vote into the record within an epoch, a checkpoint within a second, an anchor batch at
/// the anchoring interval).
async fn my_votes_once(node: &TestNode, token: &str, votes: usize, statuses: &[&str]) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = node.get_ok(MY_VOTES, token).await;
        let listed: Vec<&Value> = elements(&last["votes"]).collect();
        if listed.len() == votes
            && listed
                .iter()
                .all(|vote| statuses.iter().any(|s| vote["proof"]["status"] == *s))
        {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not {votes} votes, each {statuses:?}: {last}");
}

/// A voter lists their current vote per decision, most recent decision first, each with
/// the receipt its cast answered and its proof status, whose links prove it; nobody lists
/// anyone else's, and no answer carries another voter's ballot.
#[tokio::test(flavor = "multi_thread")]
async fn voters_list_their_own_votes_with_receipts_and_proofs() {
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        config.record.anchor.interval = std::time::Duration::from_millis(200);
    })
    .await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let decisions = [
        node.create_decision(&admin, 1).await,
        node.create_decision(&admin, 1).await,
        node.create_decision(&admin, 1).await,
    ];
    let cora_id = node.register("cora").await;
    node.register("ezra").await;
    let (cora, _) = node.login("cora").await;
    let (ezra, _) = node.login("ezra").await;

    // Cora changes her mind in the first decision; only the latest vote is hers now.
    let mut receipts: Vec<(String, &str, String, u16, Value)> = Vec::new();
    for (voter, token, decision, option) in [
        ("cora", &cora, &decisions[0], 0u16),
        ("ezra", &ezra, &decisions[0], 1),
        ("cora", &cora, &decisions[1], 1),
        ("cora", &cora, &decisions[0], 2),
        ("ezra", &ezra, &decisions[2], 0),
    ] {
        let receipt = node
            .post_expecting(
                CAST_VOTE,
                Some(token),
                json!({ "decision_id": decision, "option": option }),
                StatusCode::CREATED,
            )
            .await;
        receipts.push((voter.into(), token, decision.clone(), option, receipt));
    }
    // The oracle: per voter and decision the last receipt, most recent decision first (the
    // order the decisions are listed in, reversed).
    let listed: Vec<String> =
        elements(&node.get_ok("/api/v1/voting/active-decisions", &admin).await)
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
    let expected = |voter: &str| -> Vec<(String, u16, Value)> {
        listed
            .iter()
            .rev()
            .filter_map(|decision| {
                receipts
                    .iter()
                    .rev()
                    .find(|(v, _, d, _, _)| v == voter && d == decision)
                    .map(|(_, _, d, option, receipt)| (d.clone(), *option, receipt.clone()))
            })
            .collect()
    };

    for (voter, token) in [("cora", &cora), ("ezra", &ezra)] {
        let wanted = expected(voter);
        let mine = my_votes_once(&node, token, wanted.len(), &["anchored"]).await;
        assert_eq!(mine["total"], wanted.len(), "{mine}");
        assert_eq!(mine["next_page"], Value::Null);
        let votes: Vec<&Value> = elements(&mine["votes"]).collect();
        assert_eq!(votes.len(), wanted.len(), "{mine}");
        for (vote, (decision, option, receipt)) in votes.iter().zip(&wanted) {
            assert_eq!(vote["decision_id"], decision.as_str(), "{mine}");
            assert_eq!(vote["title"], "Protect the old forest?");
            assert_eq!(vote["option"]["index"], *option);
            let label = ["protect", "log", "defer"][usize::from(*option)];
            assert_eq!(vote["option"]["label"], label);
            assert_eq!(&vote["receipt"], receipt, "the receipt is the cast's");
            // The links prove the vote: its inclusion proof, its checkpoint's anchor.
            let links = &vote["proof"]["links"];
            let (status, proof) = node.get_anonymous(links["proof"].as_str().unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{proof}");
            assert_eq!(proof["leaf_hash"], receipt["leaf_hash"]);
            assert_eq!(proof["index"], vote["proof"]["index"]);
            let (status, anchor) = node.get_anonymous(links["anchor"].as_str().unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{anchor}");
        }
        // Nothing of another voter's ballots is in the answer.
        let text = mine.to_string();
        for (other, _, _, _, receipt) in &receipts {
            if other != voter {
                let leaf = receipt["leaf"].as_str().unwrap();
                assert!(!text.contains(receipt["leaf_hash"].as_str().unwrap()));
                // Bytes 33..65 of a leaf: the voter's commitment.
                assert!(
                    !text.contains(&leaf[66..130]),
                    "{voter} sees {other}'s commitment"
                );
            }
        }
    }

    // Past the last page: nothing, the total still told; bad pages refused.
    let beyond = node.get_ok(&format!("{MY_VOTES}?page=2"), &cora).await;
    assert_eq!(
        (
            beyond["votes"].as_array().unwrap().len(),
            beyond["total"].as_u64()
        ),
        (0, Some(2))
    );
    for page in ["0", "10001", "x"] {
        assert_eq!(
            node.refusal(
                reqwest::Method::GET,
                &format!("{MY_VOTES}?page={page}"),
                Some(&cora),
                None
            )
            .await,
            (StatusCode::BAD_REQUEST, "page_out_of_range")
        );
    }

    // Nobody names whose votes to list: an admin, or another voter, asking for Cora's gets
    // refused, and the admin's own list is empty.
    for token in [&admin, &ezra] {
        for query in [format!("user_id={cora_id}"), format!("voter={cora_id}")] {
            assert_eq!(
                node.refusal(
                    reqwest::Method::GET,
                    &format!("{MY_VOTES}?{query}"),
                    Some(token),
                    None
                )
                .await,
                (StatusCode::BAD_REQUEST, "bad_request")
            );
        }
    }
    let admins = node.get_ok(MY_VOTES, &admin).await;
    assert_eq!(
        (
            admins["total"].as_u64(),
            admins["votes"].as_array().unwrap().len()
        ),
        (Some(0), 0)
    );
    assert_eq!(
        node.refusal(reqwest::Method::GET, MY_VOTES, None, None)
            .await,
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );

    // Erased, Cora's leftover token lists nothing.
    node.post_expecting(
        "/api/v1/admin/erase-voter",
        Some(&admin),
        json!({ "voter_id": cora_id }),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        node.refusal(reqwest::Method::GET, MY_VOTES, Some(&cora), None)
            .await,
        (StatusCode::UNAUTHORIZED, "account_erased")
    );
    node.node.shutdown().await.unwrap();
}

/// In a decision of a voter roll, the ballot is the entry's: whoever holds the entry lists
/// it (its votes are not the account's own in other decisions).
#[tokio::test(flavor = "multi_thread")]
async fn the_holder_of_a_roll_entry_lists_the_entrys_ballot() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let response = node
        .client
        .post(format!("{}/api/v1/admin/rolls?name=riverside", node.base))
        .bearer_auth(&admin)
        .header("content-type", "text/csv")
        .body("identifier,region\np0,north\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let roll: Value = response.json().await.unwrap();
    let code = roll["invitations"][0]["code"].as_str().unwrap().to_string();
    let body = json!({ "title": "Reopen the river path?", "region": "north", "options": ["yes", "no"], "closes_at": i64::MAX, "electorate": { "roll": roll["roll_id"] } });
    let decision = node
        .post_expecting(CREATE_DECISION, Some(&admin), body, StatusCode::CREATED)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let open = node.create_decision(&admin, 1).await;
    node.register("rhea").await;
    let (rhea, _) = node.login("rhea").await;
    node.post_expecting(
        "/api/v1/rolls/claim",
        Some(&rhea),
        json!({ "code": code }),
        StatusCode::OK,
    )
    .await;
    let mut receipts = Vec::new();
    for (decision, option) in [(&decision, 1u16), (&open, 0)] {
        receipts.push(
            node.post_expecting(
                CAST_VOTE,
                Some(&rhea),
                json!({ "decision_id": decision, "option": option }),
                StatusCode::CREATED,
            )
            .await,
        );
    }
    let mine = my_votes_once(&node, &rhea, 2, &["checkpointed", "anchored"]).await;
    let shown: Vec<&Value> = elements(&mine["votes"])
        .map(|vote| &vote["receipt"])
        .collect();
    assert_eq!(shown.len(), 2, "{mine}");
    for receipt in &receipts {
        assert!(shown.contains(&receipt), "{receipt} not in {mine}");
    }
    node.node.shutdown().await.unwrap();
}

/// Search through the API: words, filters and pages as the store test checks them, the
/// status each decision has now, its description; every bad parameter refused with its
/// own code.
#[tokio::test]
async fn decisions_are_searched_by_words_and_filters_in_pages() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    node.register("cora").await;
    let (admin, _) = node.login("root").await;
    let (cora, _) = node.login("cora").await;
    let now = canopy_schemas::clock::now_micros();
    let hour = 3_600_000_000;
    let mut made = Vec::new();
    for n in 0..12i64 {
        let (opens_at, closes_at) = match n % 3 {
            0 => (now + hour, now + 2 * hour),
            1 => (now - hour, now + hour),
            _ => (now - 2 * hour, now - hour),
        };
        let title = if n % 2 == 0 {
            "Widen the river path?"
        } else {
            "Repair the school roof?"
        };
        let body = json!({
            "title": title,
            "description": format!("Proposal {n}: costs and flooding risks."),
            "region": if n < 6 { "north" } else { "south" },
            "options": ["yes", "no"],
            "opens_at": opens_at,
            "closes_at": closes_at,
        });
        let created = node
            .post_expecting(CREATE_DECISION, Some(&admin), body, StatusCode::CREATED)
            .await;
        assert_eq!(
            created["description"],
            format!("Proposal {n}: costs and flooding risks.")
        );
        made.push(created);
    }
    let status_of = |d: &Value| -> &str {
        let (opens_at, closes_at) = (
            d["opens_at"].as_i64().unwrap(),
            d["closes_at"].as_i64().unwrap(),
        );
        let now = canopy_schemas::clock::now_micros();
        if now < opens_at {
            "scheduled"
        } else if now < closes_at {
            "open"
        } else {
            "closed"
        }
    };
    let ids = |answer: &Value| -> Vec<String> {
        elements(&answer["decisions"])
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    // Newest first: the order the decisions were made in, reversed (ties by id only
    // within a second, which the store test covers).
    let all = node.get_ok(&format!("{SEARCH}?per_page=100"), &cora).await;
    assert_eq!(all["total"], 12);
    for decision in elements(&all["decisions"]) {
        assert_eq!(decision["status"], status_of(decision), "{decision}");
        assert!(
            decision["description"]
                .as_str()
                .unwrap()
                .starts_with("Proposal")
        );
    }
    for (query, wanted) in [
        (
            "q=river",
            made.iter()
                .filter(|d| d["title"] == "Widen the river path?")
                .collect::<Vec<_>>(),
        ),
        (
            "q=flood%20school&region=south",
            made.iter()
                .filter(|d| d["title"] == "Repair the school roof?" && d["region"] == "south")
                .collect(),
        ),
        (
            "status=open",
            made.iter().filter(|d| status_of(d) == "open").collect(),
        ),
        ("status=final", Vec::new()),
        (
            "method=single_choice&region=north",
            made.iter().filter(|d| d["region"] == "north").collect(),
        ),
        (
            &format!("from={now}&q=roof") as &str,
            made.iter()
                .filter(|d| {
                    d["title"] == "Repair the school roof?"
                        && d["closes_at"].as_i64().unwrap() > now
                })
                .collect(),
        ),
    ] {
        let mut wanted_ids: Vec<String> = wanted
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        let order: Vec<String> = ids(&all);
        wanted_ids.sort_by_key(|id| order.iter().position(|o| o == id));
        let mut paged = Vec::new();
        let mut page = 1;
        loop {
            let answer = node
                .get_ok(&format!("{SEARCH}?{query}&per_page=2&page={page}"), &cora)
                .await;
            assert_eq!(answer["total"], wanted_ids.len(), "{query}: {answer}");
            paged.extend(ids(&answer));
            match answer["next_page"].as_i64() {
                Some(next) => page = next,
                None => break,
            }
        }
        assert_eq!(paged, wanted_ids, "{query}");
    }
    for (query, code) in [
        ("status=ongoing", "unknown_status"),
        ("method=borda", "unknown_method"),
        ("page=0", "page_out_of_range"),
        ("page=10001", "page_out_of_range"),
        ("per_page=101", "page_size_out_of_range"),
        ("from=yesterday", "bad_date"),
        ("from=10&to=5", "bad_date"),
        (&format!("q={}", "a".repeat(201)) as &str, "query_too_long"),
        ("sort=title", "bad_request"),
    ] {
        assert_eq!(
            node.refusal(
                reqwest::Method::GET,
                &format!("{SEARCH}?{query}"),
                Some(&cora),
                None
            )
            .await,
            (StatusCode::BAD_REQUEST, code),
            "{query}"
        );
    }
    let long = json!({ "title": "t", "description": "d".repeat(10_001), "options": ["a", "b"], "closes_at": i64::MAX });
    assert_eq!(
        node.post_refusal(CREATE_DECISION, Some(&admin), long).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "bad_request")
    );
    assert_eq!(
        node.refusal(reqwest::Method::GET, SEARCH, None, None).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    node.node.shutdown().await.unwrap();
}

/// A vote the record has taken but no checkpoint covers yet is `pending`: its proof link
/// answers 409 `not_checkpointed`, and it has no anchor link.
#[tokio::test(flavor = "multi_thread")]
async fn a_vote_no_checkpoint_covers_is_pending() {
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        config.record.record.checkpoint_interval = std::time::Duration::from_secs(3_600);
        config.record.record.checkpoint_every = 1_000;
    })
    .await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let decision = node.create_decision(&admin, 1).await;
    node.register("cora").await;
    let (cora, _) = node.login("cora").await;
    let receipt = node
        .post_expecting(
            CAST_VOTE,
            Some(&cora),
            json!({ "decision_id": decision, "option": 1 }),
            StatusCode::CREATED,
        )
        .await;
    let mine = my_votes_once(&node, &cora, 1, &["pending"]).await;
    let vote = &mine["votes"][0];
    assert_eq!(vote["receipt"], receipt);
    assert_eq!(vote["proof"]["checkpoint_size"], Value::Null);
    assert_eq!(vote["proof"]["links"].get("anchor"), None);
    assert_eq!(
        node.refusal(
            reqwest::Method::GET,
            vote["proof"]["links"]["proof"].as_str().unwrap(),
            None,
            None
        )
        .await,
        (StatusCode::CONFLICT, "not_checkpointed")
    );
    node.node.shutdown().await.unwrap();
}

/// Once a voter's leaf is in a written entry bundle the record no longer holds its entry:
/// `my-votes` reads the vote back from the log at the leaf's offset, and the receipt is
/// still the one its cast answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_vote_whose_bundle_is_written_is_read_back_from_the_log() {
    let node = TestNode::start(ApiConfig {
        body_limit: 1 << 20,
        ..ApiConfig::default()
    })
    .await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let decision = node.create_decision(&admin, 1).await;
    node.register("cora").await;
    node.register("ezra").await;
    let (cora, _) = node.login("cora").await;
    let (ezra, _) = node.login("ezra").await;
    // A full bundle of Cora's votes (leaves 0..256), then one of Ezra's after it.
    let votes: Vec<Value> = (0..256)
        .map(|n| json!({ "voter_token": cora, "decision_id": decision, "option": n % 3 }))
        .collect();
    let batch = node
        .post_expecting(
            "/api/v1/voting/cast-votes",
            Some(&admin),
            json!({ "votes": votes }),
            StatusCode::CREATED,
        )
        .await;
    let last = batch["receipts"][255].clone();
    node.post_expecting(
        CAST_VOTE,
        Some(&ezra),
        json!({ "decision_id": decision, "option": 0 }),
        StatusCode::CREATED,
    )
    .await;
    let mut mine = Value::Null;
    for _ in 0..300 {
        mine = node.get_ok(MY_VOTES, &cora).await;
        if mine["votes"][0]["proof"]["checkpoint_size"] == 257 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let vote = &mine["votes"][0];
    assert_eq!(vote["proof"]["checkpoint_size"], 257, "{mine}");
    assert_eq!(vote["proof"]["index"], 255);
    assert_eq!(vote["receipt"], last);
    assert_eq!(vote["option"]["index"], 255 % 3);
    node.node.shutdown().await.unwrap();
}
