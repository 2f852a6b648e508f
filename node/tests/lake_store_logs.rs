//! The audit trail in the analytics lake (issue 19): what callers do through the API (an
//! admin creating a decision and verifying an expert, a voter signing in and voting)
//! reaches `audit_trail` within a flush, entry for entry as `GET /api/v1/audit/trail` shows
//! it; the decision's creation reaches `decision_history`, its creator named by the same
//! pseudonym; auditors and admins ask SQL of the trail, analysts do not see it; and a
//! restart copies no entry twice.

mod common;

use std::time::{Duration, Instant};

use canopy_node::NodeConfig;
use canopy_node::lake::LakeSettings;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, TestNode, elements, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn with_lake(config: &mut NodeConfig) {
    let mut lake = LakeSettings::new(config.data_dir.join("lake"));
    lake.flush_interval = Duration::from_millis(100);
    config.lake = Some(lake);
}

/// POSTs a statement; returns the status and the body's JSON lines (or its error).
async fn sql(node: &TestNode, token: &str, statement: &str) -> (StatusCode, Vec<Value>) {
    let response = node
        .client
        .post(format!("{}/api/v1/analytics/sql", node.base))
        .bearer_auth(token)
        .json(&json!({ "sql": statement }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    let lines = body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (status, lines)
}

/// The whole trail as the auditors' route pages it.
async fn trail_from_the_route(node: &TestNode, token: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = node
            .get_ok(&format!("/api/v1/audit/trail?after={after}"), token)
            .await;
        assert_eq!(page["chain_intact"], true, "{page}");
        entries.extend(elements(&page["entries"]).cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

/// The lake's audit trail, oldest first, in the route's terms (`at` in microseconds).
async fn trail_from_the_lake(node: &TestNode, token: &str) -> Vec<Value> {
    let (status, rows) = sql(
        node,
        token,
        "SELECT seq, CAST(at AS BIGINT) AS at, actor, action, detail, prev_hash, hash, hmac \
         FROM audit_trail ORDER BY seq",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rows:?}");
    rows
}

/// Every entry of the lake is the route's entry of its seq, field for field, the lake holds
/// a prefix of the trail (each entry once), and it reaches at least `at_least`.
fn is_prefix_of_the_route(lake: &[Value], route: &[Value], at_least: usize) {
    assert!(lake.len() >= at_least, "{} < {at_least}", lake.len());
    assert!(lake.len() <= route.len());
    for (row, entry) in lake.iter().zip(route) {
        for field in [
            "seq",
            "at",
            "actor",
            "action",
            "detail",
            "prev_hash",
            "hash",
            "hmac",
        ] {
            // JSON lines leave a null column out.
            let lake_value = row.get(field).unwrap_or(&Value::Null);
            assert_eq!(lake_value, &entry[field], "{field} of {entry}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue_19_what_callers_do_reaches_the_lakes_audit_trail_for_auditors() {
    let node = TestNode::start_with(ApiConfig::default(), with_lake).await;
    let root = node.create("root", Role::Admin).await;
    node.create("iris", Role::Auditor).await;
    node.create("ana", Role::Analyst).await;
    let (admin, _) = node.login("root").await;
    let (auditor, _) = node.login("iris").await;
    let (analyst, _) = node.login("ana").await;
    let decision = node.create_decision(&admin, 1).await;
    let expert = node.register("erin").await;
    node.post_expecting(
        "/api/v1/auth/verify-expert",
        Some(&admin),
        json!({ "user_id": expert, "role": "expert", "weight": 2.5 }),
        StatusCode::OK,
    )
    .await;
    node.register("cora").await;
    let (voter, _) = node.login("cora").await;
    node.post_expecting(
        CAST_VOTE,
        Some(&voter),
        json!({ "decision_id": decision, "option": 1 }),
        StatusCode::CREATED,
    )
    .await;
    let route_now = trail_from_the_route(&node, &auditor).await;

    // Every query is itself audited, so the route runs ahead of the lake: the lake is a
    // prefix of it, up to at least what was done before.
    let lake = wait_until_at_least(&node, &auditor, route_now.len()).await;
    let route = trail_from_the_route(&node, &auditor).await;
    is_prefix_of_the_route(&lake, &route, route_now.len());
    for action in ["register", "login", "create_decision", "verify_user"] {
        assert!(lake.iter().any(|row| row["action"] == action), "{action}");
    }
    // A decision created by the admin, named by the admin's pseudonym only.
    let created = lake
        .iter()
        .find(|row| row["action"] == "create_decision")
        .unwrap();
    assert!(created["detail"].as_str().unwrap().contains(&decision));
    assert!(!created["actor"].as_str().unwrap().contains("root"));

    // The decision's creation is in its history, its creator named as in the audit trail.
    let started = Instant::now();
    let history = loop {
        let (status, history) = sql(
            &node,
            &analyst,
            &format!(
                "SELECT status, actor FROM decision_history WHERE decision_id = '{decision}' \
                 ORDER BY seq"
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{history:?}");
        if !history.is_empty() {
            break history;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no history");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history[0]["status"], "created", "{history:?}");
    assert_eq!(history[0]["actor"], created["actor"], "{history:?}");
    assert!(
        !history[0]["actor"]
            .as_str()
            .unwrap()
            .contains(&root.to_string())
    );

    // Admins read it too; analysts do not see the table, citizens ask no SQL at all.
    let (status, rows) = sql(&node, &admin, "SELECT COUNT(*) AS n FROM audit_trail").await;
    assert_eq!(status, StatusCode::OK, "{rows:?}");
    assert!(rows[0]["n"].as_u64().unwrap() >= lake.len() as u64);
    let (status, body) = sql(&node, &analyst, "SELECT COUNT(*) FROM audit_trail").await;
    assert_eq!(
        (status, error_code(&body[0])),
        (StatusCode::UNPROCESSABLE_ENTITY, "sql"),
        "{body:?}"
    );
    let (status, body) = sql(&node, &analyst, "SELECT COUNT(*) AS n FROM votes").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let (status, body) = sql(&node, &auditor, "SELECT COUNT(*) AS n FROM votes").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
    let (status, _) = sql(&node, &voter, "SELECT COUNT(*) FROM audit_trail").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A restart (the shutdown flushes, the start reads the marks) copies nothing twice.
    let TestNode {
        node: running, dir, ..
    } = node;
    running.shutdown().await.unwrap();
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    with_lake(&mut config);
    let restarted = canopy_node::Node::start(config).await.unwrap();
    let node = TestNode {
        base: format!("http://{}", restarted.addr),
        node: restarted,
        client: canopy_testkit::http_client(),
        dir,
    };
    let (auditor, _) = node.login("iris").await;
    // The login after the restart reaches the lake after every entry before it.
    let lake = wait_until_at_least(&node, &auditor, route.len() + 1).await;
    let seqs: Vec<i64> = lake
        .iter()
        .map(|row| row["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    is_prefix_of_the_route(
        &lake,
        &trail_from_the_route(&node, &auditor).await,
        route.len() + 1,
    );
    node.node.shutdown().await.unwrap();
}

/// Waits until the lake's trail holds at least `entries` entries; returns it.
async fn wait_until_at_least(node: &TestNode, token: &str, entries: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let rows = trail_from_the_lake(node, token).await;
        if rows.len() >= entries {
            return rows;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
