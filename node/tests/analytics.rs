//! The analytics lake through a running node: votes cast over the API reach the lake within
//! a flush; analysts (and only they, with admins) ask SQL over HTTP and get rows streamed as
//! JSON lines or CSV; a recount in SQL equals the live results; refusals carry their codes;
//! trends by day come from the lake; and a shutdown flushes what was published.

mod common;

use std::time::Duration;

use canopy_analytics::{LakeLocation, LakeQuery};
use canopy_node::lake::LakeSettings;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, TestNode, elements};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A lake at `location` flushed every 100 ms, so that votes reach it within a test's patience.
fn quickly_flushed_lake(location: impl Into<LakeLocation>) -> LakeSettings {
    let mut lake = LakeSettings::new(location);
    lake.flush_interval = Duration::from_millis(100);
    lake
}

/// A node with a lake; its trends and tally changes show every group (the smallest group
/// size has tests of its own).
async fn start() -> TestNode {
    let api = ApiConfig {
        trend_min_voters: 1,
        ..ApiConfig::default()
    };
    TestNode::start_with(api, |config| {
        let mut lake = quickly_flushed_lake(config.data_dir.join("lake"));
        lake.sql.timeout = Duration::from_secs(2);
        lake.min_group_voters = 1;
        config.lake = Some(lake);
    })
    .await
}

/// An admin opens a decision (quorum 2) and an analyst logs in; returns (the analyst's
/// token, the decision).
async fn decision_and_analyst(node: &TestNode) -> (String, String) {
    node.create("root", Role::Admin).await;
    node.create("ana", Role::Analyst).await;
    let (admin, _) = node.login("root").await;
    let (analyst, _) = node.login("ana").await;
    let decision = node.create_decision(&admin, 2).await;
    (analyst, decision)
}

/// The decision's votes per day, which must come from the lake.
async fn trends_from_the_lake(node: &TestNode, token: &str, decision: &str) -> Value {
    let trends = node
        .get_ok(
            &format!("/api/v1/data/historical-trends?decision_id={decision}&bucket=day"),
            token,
        )
        .await;
    assert_eq!(trends["source"], "lake");
    trends
}

/// POSTs a statement; returns the status and the body's lines.
async fn sql(node: &TestNode, token: &str, statement: &str, format: &str) -> (StatusCode, String) {
    let response = node
        .client
        .post(format!("{}/api/v1/analytics/sql", node.base))
        .bearer_auth(token)
        .json(&json!({ "sql": statement, "format": format }))
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

fn json_lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Casts a vote, which must be accepted.
async fn cast(node: &TestNode, token: &str, decision: &str, option: u32) {
    let vote = json!({ "decision_id": decision, "option": option });
    node.post_expecting(CAST_VOTE, Some(token), vote, StatusCode::CREATED)
        .await;
}

/// Waits until the lake holds `count` votes.
async fn wait_for_votes(node: &TestNode, token: &str, count: u64) {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = sql(node, token, "SELECT COUNT(*) AS n FROM votes", "json").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if json_lines(&body)[0]["n"] == json!(count) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the lake has {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analysts_ask_sql_of_what_voters_cast() {
    let node = start().await;
    let (analyst, decision) = decision_and_analyst(&node).await;
    let mut voters = Vec::new();
    for name in ["cora", "dana", "emil", "fynn", "gert"] {
        node.register(name).await;
        voters.push(node.login(name).await.0);
    }
    // Cora changes her mind: her latest vote counts.
    for (token, option) in voters.iter().zip([0, 1, 1, 2, 1]).chain([(&voters[0], 2)]) {
        cast(&node, token, &decision, option).await;
    }
    wait_for_votes(&node, &analyst, 6).await;

    // The region comes from the decisions table; the voter only as a commitment.
    let (status, body) = sql(
        &node,
        &analyst,
        "SELECT d.region, COUNT(DISTINCT v.voter_commitment) AS voters \
         FROM votes v JOIN decisions d USING (decision_id) GROUP BY d.region",
        "json",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        json_lines(&body),
        vec![json!({ "region": "north", "voters": 5 })]
    );

    // The tally changes replay to the live result.
    let results = node
        .get_ok(
            &format!("/api/v1/voting/decision/{decision}/results"),
            &analyst,
        )
        .await;
    let started = std::time::Instant::now();
    let replayed = loop {
        let (status, body) = sql(
            &node,
            &analyst,
            "SELECT option, SUM(count) AS voters FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY decision_id, option, component
                                             ORDER BY as_of_offset DESC) AS newest
                FROM tally_changes) WHERE newest = 1 GROUP BY option ORDER BY option",
            "csv",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body == "option,voters\n0,0\n1,3\n2,2\n" || started.elapsed() > Duration::from_secs(20) {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        replayed, "option,voters\n0,0\n1,3\n2,2\n",
        "live: {results}"
    );
    assert_eq!(results["turnout"], json!(5), "{results}");

    // Trends per decision and day, from the lake.
    let trends = trends_from_the_lake(&node, &analyst, &decision).await;
    let votes: u64 = elements(&trends["points"])
        .map(|p| p["votes"].as_u64().unwrap())
        .sum();
    assert_eq!(votes, 6, "{trends}");
    // Votes and voters per bucket; the lake keeps no weight per vote (issue 16).
    assert!(
        elements(&trends["points"]).all(|p| p.get("weight_millionths").is_none()),
        "{trends}"
    );

    // Refusals, each with its code, changing nothing.
    let (status, body) = sql(&node, &voters[1], "SELECT 1", "json").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (statement, code) in [
        ("DROP TABLE votes", "sql_not_read_only"),
        ("SELECT * FROM nowhere", "sql"),
        (
            "SELECT COUNT(*) FROM generate_series(1, 100000000000)",
            "query_timeout",
        ),
    ] {
        let (status, body) = sql(&node, &analyst, statement, "json").await;
        let text = if status == StatusCode::OK {
            // A timeout after the stream began ends the body with an error line.
            json_lines(&body).last().cloned().unwrap()
        } else {
            serde_json::from_str(&body).unwrap()
        };
        assert_eq!(text["error"]["code"], code, "{statement}: {status} {body}");
    }
    let (status, body) = sql(&node, &analyst, "SELECT 1", "xml").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    wait_for_votes(&node, &analyst, 6).await;
    node.node.shutdown().await.unwrap();
}

#[path = "../../analytics/tests/common/s3.rs"]
mod s3;

/// The same lake on an S3-compatible store: votes reach the bucket, SQL and trends read
/// from it, and after shutdown the bucket holds every vote (the last flush included).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_keeps_its_lake_in_an_s3_bucket() {
    let url = s3::s3_url();
    let location = LakeLocation::s3(&url, s3::s3_options()).unwrap();
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        config.lake = Some(quickly_flushed_lake(location.clone()));
    })
    .await;
    let (analyst, decision) = decision_and_analyst(&node).await;
    for (name, option) in [("cora", 0), ("dana", 1), ("emil", 1)] {
        node.register(name).await;
        let (token, _) = node.login(name).await;
        cast(&node, &token, &decision, option).await;
    }
    wait_for_votes(&node, &analyst, 3).await;
    let (status, body) = sql(
        &node,
        &analyst,
        "SELECT option, COUNT(*) AS n FROM votes GROUP BY option ORDER BY option",
        "csv",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "option,n\n0,1\n1,2\n");
    trends_from_the_lake(&node, &analyst, &decision).await;

    // The last vote lands just before shutdown; the final flush still puts it in the bucket.
    node.register("fynn").await;
    let (token, _) = node.login("fynn").await;
    cast(&node, &token, &decision, 0).await;
    node.node.shutdown().await.unwrap();
    let files = location.table_files("votes").unwrap();
    assert!(
        !files.is_empty() && files.iter().all(|f| f.starts_with("votes/date=")),
        "{files:?}"
    );
    let lake = canopy_analytics::LakeSql::open(location).await.unwrap();
    let rows = lake.query("SELECT COUNT(*) AS n FROM votes").await.unwrap();
    let text = canopy_analytics::render(&rows, canopy_analytics::OutputFormat::Csv).unwrap();
    assert_eq!(String::from_utf8(text).unwrap(), "n\n4\n");
}

/// With `lake.pg_listen` the node serves the same lake over the PostgreSQL protocol: an
/// analyst signs in with an SQL token issued over HTTP (SCRAM), never the account password;
/// the count there equals the votes cast; a revoked token and a citizen are refused; the
/// sign-ins, the failure and the query are in the audit trail; the port closes with the node.
#[tokio::test(flavor = "multi_thread")]
async fn the_node_serves_its_lake_over_the_postgresql_protocol() {
    use sqlx::Connection;

    let node = TestNode::start_with(ApiConfig::default(), |config| {
        let mut lake = quickly_flushed_lake(config.data_dir.join("lake"));
        lake.pg_listen = Some("127.0.0.1:0".parse().unwrap());
        config.lake = Some(lake);
    })
    .await;
    let port = node.node.sql_addr().expect("a PostgreSQL port").port();
    let (analyst, decision) = decision_and_analyst(&node).await;
    for (name, option) in [("cora", 1), ("dana", 0)] {
        node.register(name).await;
        let (citizen, _) = node.login(name).await;
        cast(&node, &citizen, &decision, option).await;
    }
    wait_for_votes(&node, &analyst, 2).await;

    let issued = node
        .post_expecting(
            "/api/v1/analytics/sql-tokens",
            Some(&analyst),
            json!({ "name": "psql", "expires_in_s": 3600 }),
            StatusCode::CREATED,
        )
        .await;
    let token = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 32);
    let (_, listed) = node.get("/api/v1/analytics/sql-tokens", &analyst).await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&token),
        "the list shows the secret"
    );

    let url = |user: &str, secret: &str| {
        format!(
            "postgres://{user}:{}@127.0.0.1:{port}/canopy?sslmode=disable",
            secret.replace(' ', "%20")
        )
    };
    let mut connection = sqlx::PgConnection::connect(&url("ana", &token))
        .await
        .unwrap();
    let (votes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM votes")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(votes, 2);
    connection.close().await.unwrap();
    assert!(
        sqlx::PgConnection::connect(&url("ana", common::api::PASSWORD))
            .await
            .is_err(),
        "the account password signed in to the SQL port"
    );
    assert!(
        sqlx::PgConnection::connect(&url("cora", common::api::PASSWORD))
            .await
            .is_err(),
        "a citizen signed in to the SQL port"
    );
    let id = issued["id"].as_str().unwrap();
    let revoked = node
        .client
        .delete(format!("{}/api/v1/analytics/sql-tokens/{id}", node.base))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert!(
        sqlx::PgConnection::connect(&url("ana", &token))
            .await
            .is_err(),
        "a revoked token signed in"
    );
    let trail = node.node.state.store.audit_trail().await.unwrap();
    let actions: Vec<&str> = trail.iter().map(|entry| entry.action.as_str()).collect();
    for action in [
        "sql_token_created",
        "sql_port_sign_in",
        "sql_port_query",
        "sql_port_sign_in_failed",
        "sql_token_revoked",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let query = trail.iter().find(|e| e.action == "sql_port_query").unwrap();
    assert!(
        query.detail.contains("SELECT COUNT(*) FROM votes"),
        "{}",
        query.detail
    );
    assert!(
        !query.actor.contains("ana"),
        "the trail names the analyst: {}",
        query.actor
    );

    node.node.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the SQL port outlived the node"
    );
}

/// A decision's trends cannot single out a ballot: a range narrower than a bucket answers
/// for the whole bucket (so bisecting by time learns nothing), and an option chosen by fewer
/// than `trend_min_voters` voters in a bucket is not shown.
#[tokio::test(flavor = "multi_thread")]
async fn decision_trends_hide_small_groups_and_sub_bucket_times() {
    let api = ApiConfig {
        trend_min_voters: 3,
        ..ApiConfig::default()
    };
    let node = TestNode::start_with(api, |config| {
        config.lake = Some(quickly_flushed_lake(config.data_dir.join("lake")));
    })
    .await;
    let (analyst, decision) = decision_and_analyst(&node).await;
    let before_the_votes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (name, option) in [
        ("cora", 1),
        ("dana", 1),
        ("emil", 1),
        ("fynn", 0),
        ("gert", 0),
    ] {
        node.register(name).await;
        let (token, _) = node.login(name).await;
        cast(&node, &token, &decision, option).await;
    }
    wait_for_votes(&node, &analyst, 5).await;
    let (citizen, _) = node.login("cora").await;
    // The lake holds only the hour of a vote; the test's clock just before the votes (or
    // the hour's start, if an hour began in between) is an instant of the votes' hour.
    let cast_at: i64 = {
        let (status, body) = sql(
            &node,
            &analyst,
            "SELECT CAST(MIN(cast_hour) AS BIGINT) / 1000 AS ms FROM votes",
            "json",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let hour = json_lines(&body)[0]["ms"].as_i64().unwrap();
        assert_eq!(hour.rem_euclid(3_600_000), 0, "{body}");
        hour.max(before_the_votes)
    };
    let trends = async |query: String| {
        let path = format!("/api/v1/data/historical-trends?decision_id={decision}&{query}");
        node.get_ok(&path, &citizen).await["points"].clone()
    };
    let whole_hour = trends("bucket=hour".into()).await;
    let shown: Vec<(u64, u64)> = elements(&whole_hour)
        .map(|p| (p["option"].as_u64().unwrap(), p["voters"].as_u64().unwrap()))
        .collect();
    assert_eq!(shown, vec![(1, 3)], "{whole_hour}");
    // Bisecting down to a millisecond answers with the same whole bucket, every time.
    for (from, to) in [
        (cast_at, cast_at + 1),
        (cast_at - 1, cast_at),
        (cast_at + 1, cast_at + 2),
    ] {
        let narrow = trends(format!("bucket=hour&from={from}&to={to}")).await;
        let hour_start = cast_at - cast_at.rem_euclid(3_600_000);
        let expected = if to <= hour_start {
            json!([])
        } else {
            whole_hour.clone()
        };
        assert_eq!(narrow, expected, "from {from} to {to}");
    }
    let (status, body) = node
        .get(
            &format!("/api/v1/data/historical-trends?decision_id={decision}&bucket=minute"),
            &citizen,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    node.node.shutdown().await.unwrap();
}
