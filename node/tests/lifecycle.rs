//! The decision lifecycle through the API (issue 19), as an attacker and a careless owner
//! would try it: only the owner or an admin edits, closes or cancels, and nothing changes
//! when anyone else tries; edits end when the decision opens; a cancel ends with the first
//! vote; a closed decision takes no vote and is found by its status.

mod common;

use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, TestNode, audit_entries, elements};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000_000;
const SEARCH: &str = "/api/v1/voting/decisions";

fn page(decision: &str) -> String {
    format!("{SEARCH}/{decision}")
}

fn close_path(decision: &str) -> String {
    format!("{SEARCH}/{decision}/close")
}

fn cancel_path(decision: &str) -> String {
    format!("{SEARCH}/{decision}/cancel")
}

/// A decision made by `token`: scheduled an hour from now, or (`open`) open now.
async fn create(node: &TestNode, token: &str, title: &str, open: bool) -> String {
    let now = canopy_schemas::clock::now_micros();
    let opens_at = if open { now } else { now + HOUR };
    let body = json!({ "title": title, "region": "north", "options": ["yes", "no"], "opens_at": opens_at, "closes_at": now + 2 * HOUR });
    let created = node
        .post_expecting(CREATE_DECISION, Some(token), body, StatusCode::CREATED)
        .await;
    created["id"].as_str().unwrap().to_string()
}

async fn patch(node: &TestNode, decision: &str, token: &str, body: Value) -> (StatusCode, Value) {
    node.request(Method::PATCH, &page(decision), Some(token), Some(body))
        .await
}

/// The ids a search answers.
async fn found(node: &TestNode, query: &str, token: &str) -> Vec<String> {
    let answer = node
        .get_ok(&format!("{SEARCH}?{query}&per_page=100"), token)
        .await;
    elements(&answer["decisions"])
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// Casts `option` and waits until the results include it; returns the receipt.
async fn vote(node: &TestNode, decision: &str, token: &str, option: u16) -> Value {
    let receipt = node
        .post_expecting(
            CAST_VOTE,
            Some(token),
            json!({ "decision_id": decision, "option": option }),
            StatusCode::CREATED,
        )
        .await;
    let offset = receipt["position"]["offset"].as_u64().unwrap();
    node.get_ok(
        &format!("/api/v1/voting/decision/{decision}/results?min_offset={offset}"),
        token,
    )
    .await;
    receipt
}

#[tokio::test]
async fn only_the_owner_or_an_admin_changes_a_decision() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("owner", Role::Operator).await;
    node.create("rival", Role::Operator).await;
    node.create("root", Role::Admin).await;
    node.register("cora").await;
    let (owner, _) = node.login("owner").await;
    let (rival, _) = node.login("rival").await;
    let (admin, _) = node.login("root").await;
    let (cora, _) = node.login("cora").await;
    let scheduled = create(&node, &owner, "Plant a hedge", false).await;
    let open = create(&node, &owner, "Pave the square", true).await;
    let before = (
        node.get_ok(&page(&scheduled), &cora).await,
        node.get_ok(&page(&open), &cora).await,
    );
    let records = node.log_records();

    for intruder in [&rival, &cora] {
        let edit = json!({ "title": "Pave the hedge", "weights": [1000000, 0, 0, 0] });
        for (method, path, body) in [
            (Method::PATCH, page(&scheduled), edit.clone()),
            (Method::PATCH, page(&open), edit),
            (Method::POST, close_path(&open), json!({})),
            (Method::POST, cancel_path(&scheduled), json!({})),
            (Method::POST, cancel_path(&open), json!({})),
        ] {
            assert_eq!(
                node.refusal(method.clone(), &path, Some(intruder), Some(body))
                    .await,
                (StatusCode::FORBIDDEN, "not_owner"),
                "{method} {path}"
            );
        }
    }
    // Nothing changed: not the decisions, not the log; each refusal is in the audit trail.
    let after = (
        node.get_ok(&page(&scheduled), &cora).await,
        node.get_ok(&page(&open), &cora).await,
    );
    assert_eq!(after, before);
    assert_eq!(node.log_records(), records);
    let trail = node.get_ok("/api/v1/audit/trail?limit=1000", &admin).await;
    let not_owner = elements(&trail["entries"])
        .filter(|e| e["action"] == "refused" && e["detail"].as_str().unwrap().contains("not_owner"))
        .count();
    assert_eq!(not_owner, 10, "{trail}");
    assert_eq!(audit_entries(&trail, "edit_decision"), 0);

    // An admin may do what the owner may.
    let (status, edited) = patch(
        &node,
        &scheduled,
        &admin,
        json!({ "title": "Plant two hedges" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["title"], "Plant two hedges");
    let closed = node
        .post_expecting(&close_path(&open), Some(&admin), json!({}), StatusCode::OK)
        .await;
    assert_eq!(
        (closed["status"].as_str(), closed["close"]["kind"].as_str()),
        (Some("closed"), Some("early"))
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_decision_is_edited_only_while_scheduled() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("owner", Role::Operator).await;
    node.create("root", Role::Admin).await;
    let (owner, _) = node.login("owner").await;
    let (admin, _) = node.login("root").await;
    let scheduled = create(&node, &owner, "Plant a hedge", false).await;

    let now = canopy_schemas::clock::now_micros();
    let edit = json!({
        "title": "Plant an orchard",
        "description": "Which fruit?",
        "options": ["apples", "pears", "plums"],
        "opens_at": now + 2 * HOUR,
        "closes_at": now + 3 * HOUR,
        "weights": [250000, 250000, 250000, 250000],
        "quorum": 10,
    });
    let (status, edited) = patch(&node, &scheduled, &owner, edit).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["status"], "scheduled");
    assert_eq!(edited["options"], json!(["apples", "pears", "plums"]));
    assert_eq!(edited["weights"], json!([250000, 250000, 250000, 250000]));
    assert_eq!(node.get_ok(&page(&scheduled), &owner).await, edited);
    // The search sees the new words; the history and the audit trail the edit.
    assert_eq!(
        found(&node, "q=orchard", &owner).await,
        vec![scheduled.clone()]
    );
    assert!(found(&node, "q=hedge", &owner).await.is_empty());
    let trail = node.get_ok("/api/v1/audit/trail?limit=1000", &admin).await;
    assert_eq!(audit_entries(&trail, "edit_decision"), 1);
    let history = node.node.state.store.history_page(0, 100).await.unwrap();
    let statuses: Vec<&str> = history.iter().map(|row| row.status.as_str()).collect();
    assert_eq!(statuses, vec!["created", "edited"]);

    // Refused edits change nothing: invalid, empty, unknown fields, malformed or huge bodies.
    for (body, expected) in [
        (
            json!({ "weights": [1, 2, 3, 4] }),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "weights_do_not_sum_to_one",
            ),
        ),
        (
            json!({ "options": ["only one"] }),
            (StatusCode::UNPROCESSABLE_ENTITY, "option_count"),
        ),
        (
            json!({ "closes_at": 0 }),
            (StatusCode::UNPROCESSABLE_ENTITY, "empty_window"),
        ),
        (
            json!({ "title": "Plant an orchard" }),
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
        (json!({}), (StatusCode::UNPROCESSABLE_ENTITY, "bad_request")),
        (
            json!({ "owner": "someone else" }),
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
        (
            json!({ "title": 7 }),
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
        (
            json!({ "description": "x".repeat(10_001) }),
            (StatusCode::UNPROCESSABLE_ENTITY, "bad_request"),
        ),
        (
            json!({ "description": "x".repeat(100_000) }),
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        ),
    ] {
        assert_eq!(
            node.refusal(
                Method::PATCH,
                &page(&scheduled),
                Some(&owner),
                Some(body.clone())
            )
            .await,
            expected,
            "{body:.80}"
        );
    }
    let malformed = node
        .client
        .patch(format!("{}{}", node.base, page(&scheduled)))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(node.get_ok(&page(&scheduled), &owner).await, edited);

    // Once open, nothing is editable: not the title, not the method or weights.
    let open = create(&node, &owner, "Pave the square", true).await;
    let before = node.get_ok(&page(&open), &owner).await;
    for body in [
        json!({ "title": "Pave it all" }),
        json!({ "weights": [1000000, 0, 0, 0] }),
        json!({ "opens_at": canopy_schemas::clock::now_micros() + HOUR }),
    ] {
        for token in [&owner, &admin] {
            assert_eq!(
                node.refusal(Method::PATCH, &page(&open), Some(token), Some(body.clone()))
                    .await,
                (StatusCode::CONFLICT, "decision_not_editable")
            );
        }
    }
    assert_eq!(node.get_ok(&page(&open), &owner).await, before);
    let missing = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        node.refusal(
            Method::PATCH,
            &page(&missing),
            Some(&owner),
            Some(json!({ "title": "x" }))
        )
        .await,
        (StatusCode::NOT_FOUND, "not_found")
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_closed_decision_takes_no_vote_and_is_found_closed() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("owner", Role::Operator).await;
    node.register("cora").await;
    node.register("vera").await;
    let (owner, _) = node.login("owner").await;
    let (cora, _) = node.login("cora").await;
    let (vera, _) = node.login("vera").await;
    let decision = create(&node, &owner, "Close the road?", true).await;
    let retry = json!({ "vote_id": "0f6d1b52-5b7e-4d0e-9a3e-2c1d7b9e4a61", "decision_id": decision, "option": 1 });
    let first = node
        .post_expecting(CAST_VOTE, Some(&cora), retry.clone(), StatusCode::CREATED)
        .await;
    vote(&node, &decision, &vera, 0).await;

    // Closing needs a body that parses, and a reason of at most 500 bytes.
    assert_eq!(
        node.post_refusal(
            &close_path(&decision),
            Some(&owner),
            json!({ "reason": "x".repeat(501) })
        )
        .await,
        (StatusCode::UNPROCESSABLE_ENTITY, "bad_request")
    );
    assert_eq!(
        node.post_refusal(
            &close_path(&decision),
            Some(&owner),
            json!({ "reason": "x".repeat(100_000) })
        )
        .await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    assert_eq!(
        node.post_refusal(&close_path(&decision), Some(&owner), json!({ "why": "no" }))
            .await,
        (StatusCode::UNPROCESSABLE_ENTITY, "bad_request")
    );
    let records = node.log_records();
    let closed = node
        .post_expecting(
            &close_path(&decision),
            Some(&owner),
            json!({ "reason": "the council decided" }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["close"]["kind"], "early");
    assert_eq!(
        node.log_records(),
        records + 1,
        "the close is one entry in the log"
    );
    assert_eq!(node.get_ok(&page(&decision), &cora).await, closed);

    // No new vote; a retry of a vote cast before the close still gets its receipt.
    for (token, option) in [(&cora, 0), (&vera, 1)] {
        assert_eq!(
            node.post_refusal(
                CAST_VOTE,
                Some(token),
                json!({ "decision_id": decision, "option": option })
            )
            .await,
            (StatusCode::CONFLICT, "decision_closed")
        );
    }
    let (status, again) = node.post(CAST_VOTE, Some(&cora), retry).await;
    assert_eq!((status, again), (StatusCode::CREATED, first));
    assert_eq!(node.log_records(), records + 1);

    // Closed is closed: a second close, a cancel, an edit are refused and append nothing.
    assert_eq!(
        node.post_refusal(&close_path(&decision), Some(&owner), json!({}))
            .await,
        (StatusCode::CONFLICT, "decision_not_open")
    );
    assert_eq!(
        node.post_refusal(&cancel_path(&decision), Some(&owner), json!({}))
            .await,
        (StatusCode::CONFLICT, "decision_closed")
    );
    assert_eq!(
        node.refusal(
            Method::PATCH,
            &page(&decision),
            Some(&owner),
            Some(json!({ "title": "Reopen" }))
        )
        .await,
        (StatusCode::CONFLICT, "decision_not_editable")
    );
    assert_eq!(node.log_records(), records + 1);

    // Found by its status, not among the open ones.
    assert_eq!(
        found(&node, "status=closed", &cora).await,
        vec![decision.clone()]
    );
    assert!(found(&node, "status=open", &cora).await.is_empty());
    let active = node.get_ok("/api/v1/voting/active-decisions", &cora).await;
    assert_eq!(active, json!([]));
    let cast_too_late =
        json!({ "votes": [{ "voter_token": vera, "decision_id": decision, "option": 0 }] });
    node.create("gateway", Role::Operator).await;
    let (gateway, _) = node.login("gateway").await;
    assert_eq!(
        node.post_refusal("/api/v1/voting/cast-votes", Some(&gateway), cast_too_late)
            .await,
        (StatusCode::CONFLICT, "decision_closed")
    );
    node.node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_decision_is_cancelled_only_before_its_first_vote() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("owner", Role::Operator).await;
    node.create("root", Role::Admin).await;
    node.register("cora").await;
    let (owner, _) = node.login("owner").await;
    let (admin, _) = node.login("root").await;
    let (cora, _) = node.login("cora").await;

    // Scheduled, or open without a vote: cancelled, and then closed to votes.
    let scheduled = create(&node, &owner, "Rename the park", false).await;
    let quiet = create(&node, &owner, "Move the market", true).await;
    for decision in [&scheduled, &quiet] {
        let cancelled = node
            .post_expecting(
                &cancel_path(decision),
                Some(&owner),
                json!({ "reason": "withdrawn" }),
                StatusCode::OK,
            )
            .await;
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(cancelled["close"]["kind"], "cancel");
        assert_eq!(cancelled["result"], Value::Null);
        assert_eq!(
            node.post_refusal(&cancel_path(decision), Some(&owner), json!({}))
                .await,
            (StatusCode::CONFLICT, "decision_closed")
        );
    }
    assert_eq!(
        node.post_refusal(
            CAST_VOTE,
            Some(&cora),
            json!({ "decision_id": quiet, "option": 0 })
        )
        .await,
        (StatusCode::CONFLICT, "decision_closed")
    );
    // A scheduled decision is not open: it cannot be closed early, only cancelled.
    let later = create(&node, &owner, "Light the bridge", false).await;
    assert_eq!(
        node.post_refusal(&close_path(&later), Some(&owner), json!({}))
            .await,
        (StatusCode::CONFLICT, "decision_not_open")
    );

    // Once a vote counts, a cancel would throw it away: refused, for the admin too.
    let voted = create(&node, &owner, "Plant trees", true).await;
    vote(&node, &voted, &cora, 1).await;
    let records = node.log_records();
    for token in [&owner, &admin] {
        assert_eq!(
            node.post_refusal(&cancel_path(&voted), Some(token), json!({}))
                .await,
            (StatusCode::CONFLICT, "decision_has_votes")
        );
    }
    assert_eq!(node.log_records(), records);
    assert_eq!(node.get_ok(&page(&voted), &cora).await["status"], "open");

    let mut cancelled = found(&node, "status=cancelled", &cora).await;
    cancelled.sort();
    let mut expected = vec![scheduled.clone(), quiet.clone()];
    expected.sort();
    assert_eq!(cancelled, expected);
    assert_eq!(
        found(&node, "status=open", &cora).await,
        vec![voted.clone()]
    );
    assert_eq!(found(&node, "status=scheduled", &cora).await, vec![later]);
    let trail = node.get_ok("/api/v1/audit/trail?limit=1000", &admin).await;
    assert_eq!(audit_entries(&trail, "cancel_decision"), 2);
    node.node.shutdown().await.unwrap();
}
