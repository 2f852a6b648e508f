//! The analysis agents through a running node: an analysis shows each assessment with its
//! evidence and versions; invoking the agents casts exactly one vote per agent in the
//! environmental-data component (replaced on a re-run), visible in the breakdown, provable
//! in the record and traced in the audit trail; external data imported over HTTP becomes
//! the agents' evidence; and every role reaching past itself is refused, changing nothing.

mod common;

use std::time::Duration;

use canopy_node::lake::LakeSettings;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NOAA: &str = include_str!("../../analytics/testdata/external/noaa_ghcnd_USW00094728.csv");
const WORLD_BANK: &str =
    include_str!("../../analytics/testdata/external/worldbank_SP.POP.TOTL.csv");
const ANALYZE: &str = "/api/v1/agents/analyze-proposal";
const INVOKE: &str = "/api/v1/agents/invoke-consensus";

async fn node_with_lake() -> TestNode {
    TestNode::start_with(ApiConfig::default(), |config| {
        let mut lake = LakeSettings::new(config.data_dir.join("lake"));
        lake.flush_interval = Duration::from_millis(100);
        config.lake = Some(lake);
    })
    .await
}

fn statement() -> Value {
    json!({ "plans": [{
        "option": 0,
        "summary": "a low-emission zone",
        "effects": [{ "metric": "pm25", "change_percent": -20.0, "certainty": 0.8 }],
        "cost_usd": 2_000_000.0, "budget_usd": 2_500_000.0, "annual_benefit_usd": 400_000.0,
        "jobs_created": 25, "timeline_months": 18,
        "permits": [{ "name": "traffic", "status": "granted" }],
        "distribution": [
            { "region": "north", "income_group": "low", "cost_share": 0.2, "benefit_share": 0.5 },
            { "region": "north", "income_group": "high", "cost_share": 0.8, "benefit_share": 0.5 }
        ]
    }]})
}

async fn decision_with_statement(node: &TestNode, token: &str, weights: Option<Value>) -> String {
    let mut body = json!({
        "title": "A low-emission zone?", "region": "north", "options": ["adopt", "reject"],
        "closes_at": i64::MAX, "impact_statement": statement(),
    });
    if let Some(weights) = weights {
        body["weights"] = weights;
    }
    let created = node
        .post_expecting(CREATE_DECISION, Some(token), body, StatusCode::CREATED)
        .await;
    created["id"].as_str().unwrap().to_string()
}

async fn breakdown_after(node: &TestNode, token: &str, decision: &str, receipt: &Value) -> Value {
    let offset = receipt["position"]["offset"].as_u64().unwrap();
    node.get_ok(
        &format!("/api/v1/voting/decision/{decision}/breakdown?min_offset={offset}"),
        token,
    )
    .await
}

fn environmental_count(breakdown: &Value) -> u64 {
    elements(&breakdown["cells"])
        .filter(|c| c["component"] == "environmental_data")
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn invoking_the_agents_casts_one_vote_each_counted_and_provable() {
    let node = node_with_lake().await;
    node.create("olga", Role::Operator).await;
    node.create("root", Role::Admin).await;
    let (operator, _) = node.login("olga").await;
    let (admin, _) = node.login("root").await;
    let decision = decision_with_statement(&node, &operator, None).await;

    let first = node
        .post_expecting(
            INVOKE,
            Some(&operator),
            json!({ "decision_id": decision }),
            StatusCode::CREATED,
        )
        .await;
    let votes = first["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 4, "{first}");
    let agents: Vec<&str> = votes.iter().map(|v| v["agent"].as_str().unwrap()).collect();
    assert_eq!(
        agents,
        [
            "environmental-impact",
            "economic-analysis",
            "social-justice",
            "technical-verification"
        ]
    );
    // Each ballot is the agent's best option.
    for (vote, assessment) in votes
        .iter()
        .zip(elements(&first["analysis"]["assessments"]))
    {
        assert_eq!(
            vote["ballot"]["option"], assessment["recommended"],
            "{vote} {assessment}"
        );
    }
    let last = votes
        .iter()
        .max_by_key(|v| v["receipt"]["position"]["offset"].as_u64())
        .unwrap();
    let breakdown = breakdown_after(&node, &operator, &decision, &last["receipt"]).await;
    assert_eq!(environmental_count(&breakdown), 4, "{breakdown}");
    assert_eq!(breakdown["turnout_by_component"][3], 4);

    // A re-run replaces the agents' votes: still one per agent.
    let again = node
        .post_expecting(
            INVOKE,
            Some(&operator),
            json!({ "decision_id": decision }),
            StatusCode::CREATED,
        )
        .await;
    let last = elements(&again["votes"])
        .max_by_key(|v| v["receipt"]["position"]["offset"].as_u64())
        .unwrap();
    let breakdown = breakdown_after(&node, &operator, &decision, &last["receipt"]).await;
    assert_eq!(environmental_count(&breakdown), 4, "{breakdown}");
    assert_eq!(breakdown["turnout_by_component"][3], 4);

    // Each vote is in the record: its leaf has an inclusion proof once checkpointed.
    for vote in elements(&again["votes"]) {
        let path = format!(
            "/api/v1/audit/decisions/{decision}/proof?leaf={}",
            vote["receipt"]["leaf_hash"].as_str().unwrap()
        );
        let mut proved = false;
        for _ in 0..200 {
            let (status, _) = node.get_anonymous(&path).await;
            if status == StatusCode::OK {
                proved = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(proved, "no proof for {vote}");
    }
    // The audit trail names each agent, its version, the ballot and the leaf.
    let trail = node.get_ok("/api/v1/audit/trail?limit=1000", &admin).await;
    assert_eq!(audit_entries(&trail, "agent_vote"), 8, "{trail}");
    let entry = elements(&trail["entries"])
        .find(|e| e["action"] == "agent_vote")
        .unwrap();
    let detail: Value = match &entry["detail"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    assert_eq!(detail["decision_id"], decision.as_str());
    assert!(
        detail["leaf_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{detail}"
    );
    assert!(detail["version"].as_str().is_some());

    // Agents' accounts never sign in, whatever password is tried.
    let credentials = json!({ "username": "agent:environmental-impact", "password": PASSWORD });
    assert_eq!(
        node.post_refusal(LOGIN, None, credentials).await,
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );

    // Voters read the recommendations: the assessments, consensus and versions.
    node.register("cid-voter").await;
    let (voter, _) = node.login("cid-voter").await;
    let recommendations = node
        .get_ok(
            &format!("/api/v1/agents/recommendations/{decision}"),
            &voter,
        )
        .await;
    assert_eq!(recommendations["assessments"].as_array().unwrap().len(), 4);
    assert!(recommendations["versions"].as_array().unwrap().len() >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_change_nothing() {
    let node = node_with_lake().await;
    node.create("olga", Role::Operator).await;
    node.create("ana", Role::Analyst).await;
    let (operator, _) = node.login("olga").await;
    let (analyst, _) = node.login("ana").await;
    node.register("cid-voter").await;
    let (citizen, _) = node.login("cid-voter").await;
    let decision = decision_with_statement(&node, &operator, None).await;
    let records = node.log_records();

    // Roles reaching past themselves.
    let invoke = json!({ "decision_id": decision });
    assert_eq!(
        node.post_refusal(INVOKE, Some(&citizen), invoke.clone())
            .await,
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert_eq!(
        node.post_refusal(INVOKE, Some(&analyst), invoke.clone())
            .await,
        (StatusCode::FORBIDDEN, "forbidden")
    );
    assert_eq!(
        node.post_refusal(INVOKE, None, invoke.clone()).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert_eq!(
        node.post_refusal(ANALYZE, Some(&citizen), invoke.clone())
            .await,
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let status = node
        .refusal(
            reqwest::Method::GET,
            "/api/v1/agents/agents/social-justice/status",
            Some(&citizen),
            None,
        )
        .await;
    assert_eq!(status, (StatusCode::FORBIDDEN, "forbidden"));

    // A decision that gives the environmental-data component no weight takes no agent vote.
    let no_agents =
        decision_with_statement(&node, &operator, Some(json!([500000, 300000, 200000, 0]))).await;
    assert_eq!(
        node.post_refusal(INVOKE, Some(&operator), json!({ "decision_id": no_agents }))
            .await,
        (StatusCode::UNPROCESSABLE_ENTITY, "ineligible_component")
    );
    // A decision without a statement, an unknown decision, an unknown agent.
    let bare = node.create_decision(&operator, 0).await;
    assert_eq!(
        node.post_refusal(INVOKE, Some(&operator), json!({ "decision_id": bare }))
            .await,
        (StatusCode::NOT_FOUND, "not_found")
    );
    let unknown = json!({ "decision_id": "00000000-0000-4000-8000-000000000000" });
    assert_eq!(
        node.post_refusal(ANALYZE, Some(&analyst), unknown)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let agent = node
        .refusal(
            reqwest::Method::GET,
            "/api/v1/agents/agents/oracle/status",
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(agent, (StatusCode::NOT_FOUND, "not_found"));

    // Malformed and hostile statements: an option out of range, shares not summing to 1,
    // a field the schema does not have.
    for (pointer, value) in [
        ("/plans/0/option", json!(9)),
        ("/plans/0/distribution/0/cost_share", json!(0.9)),
        ("/plans/0/secret_ballot", json!(true)),
    ] {
        let mut hostile = statement();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        hostile.pointer_mut(parent).unwrap()[field] = value;
        let refused = node
            .post_refusal(
                ANALYZE,
                Some(&analyst),
                json!({ "decision_id": decision, "impact_statement": hostile }),
            )
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{pointer}"
        );
        if !pointer.ends_with("secret_ballot") {
            assert_eq!(refused.code, "invalid_impact_statement", "{pointer}");
        }
    }
    let mut bad_create = json!({ "title": "x", "region": "north", "options": ["a", "b"], "closes_at": i64::MAX, "impact_statement": statement() });
    bad_create["impact_statement"]["plans"][0]["option"] = json!(2);
    assert_eq!(
        node.post_refusal(CREATE_DECISION, Some(&operator), bad_create)
            .await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_impact_statement")
    );
    // A huge statement is cut off by the body limit: a 413, or the connection closed while
    // the rest of the body was still being sent (the server stops reading at the limit).
    // Sent from a client of its own: the server closes that connection, and the shared
    // client's pool would hand it to the next request.
    let huge = json!({ "decision_id": decision, "impact_statement": { "plans": [{ "option": 0, "summary": "x".repeat(200_000) }] } });
    let sent = canopy_testkit::http_client()
        .post(format!("{}{ANALYZE}", node.base))
        .bearer_auth(&analyst)
        .json(&huge)
        .send()
        .await;
    if let Ok(response) = sent {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    // A closed decision takes no agent vote.
    node.post_expecting(
        &format!("/api/v1/voting/decisions/{decision}/close"),
        Some(&operator),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        node.post_refusal(INVOKE, Some(&operator), json!({ "decision_id": decision }))
            .await,
        (StatusCode::CONFLICT, "decision_closed")
    );
    assert_eq!(node.log_records(), records + 1, "only the close was logged");

    // The analyst may still analyse (the agents read, they do not vote).
    let analysis = node
        .post_expecting(
            ANALYZE,
            Some(&analyst),
            json!({ "decision_id": decision }),
            StatusCode::OK,
        )
        .await;
    let versions: Vec<&str> = elements(&analysis["versions"])
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        versions.contains(&"environmental-impact@1.0.0"),
        "{versions:?}"
    );
    let status = node
        .get_ok(
            "/api/v1/agents/agents/environmental-impact/status",
            &analyst,
        )
        .await;
    assert_eq!(status["version"], "1.0.0");
    assert!(status["calls"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["p95_ms"].as_f64().is_some(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_weather_becomes_the_environmental_agents_evidence() {
    let node = node_with_lake().await;
    node.create("olga", Role::Operator).await;
    node.register("cid-voter").await;
    let (operator, _) = node.login("olga").await;
    let (citizen, _) = node.login("cid-voter").await;
    let import = |token: String, query: &'static str, body: &'static str| {
        let request = node
            .client
            .post(format!("{}/api/v1/data/import?{query}", node.base))
            .bearer_auth(token)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = import(citizen.clone(), "source=noaa", NOAA).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, body) = import(operator.clone(), "source=gdelt", NOAA).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "unknown_source")
    );

    // A malformed file: the bad lines named, nothing written.
    let broken: &'static str = Box::leak(NOAA.replacen(",TMAX,", ",TMAX,warm", 1).into_boxed_str());
    let (status, body) = import(
        operator.clone(),
        "source=noaa&regions=USW00094728:north",
        broken,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "import_refused"),
        "{body}"
    );
    assert!(
        body["report"]["errors"][0]["line"].as_u64().is_some(),
        "{body}"
    );
    let lake = node.dir.path().join("lake/weather_daily");
    let files = |dir: &std::path::Path| {
        walk(dir)
            .into_iter()
            .filter(|p| p.ends_with(".parquet"))
            .count()
    };
    assert_eq!(files(&lake), 0);

    // While another import runs, one more is refused before its body is read.
    let analytics = node.node.state.analytics.clone().unwrap();
    let running = analytics.importing.lock().await;
    let response = node
        .client
        .post(format!(
            "{}/api/v1/data/import?source=noaa&regions=USW00094728:north",
            node.base
        ))
        .bearer_auth(&operator)
        .body(NOAA)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "import_in_progress");
    drop(running);
    assert_eq!(files(&lake), 0);

    let (status, report) = import(
        operator.clone(),
        "source=noaa&regions=USW00094728:north",
        NOAA,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(report["rows_imported"].as_u64().unwrap() > 0);
    let (status, again) = import(
        operator.clone(),
        "source=noaa&regions=USW00094728:north",
        NOAA,
    )
    .await;
    assert_eq!(
        (status, &again["already_imported"]),
        (StatusCode::OK, &json!(true)),
        "{again}"
    );
    assert_eq!(files(&lake), 1);

    // The station-days of north reach the environmental agent's evidence.
    let days = noaa_days(NOAA, "USW00094728");
    node.create("ana", Role::Analyst).await;
    let (analyst, _) = node.login("ana").await;
    let decision = decision_with_statement(&node, &operator, None).await;
    let analysis = node
        .post_expecting(
            ANALYZE,
            Some(&analyst),
            json!({ "decision_id": decision }),
            StatusCode::OK,
        )
        .await;
    let environmental = &analysis["assessments"][0];
    let weather = elements(&environmental["evidence"])
        .find(|e| e["table"] == "weather_daily")
        .unwrap();
    assert_eq!(weather["rows"].as_u64().unwrap(), days, "{environmental}");

    // Germany's indicators, imported as north's, reach the economic agent: every year
    // with a value, and no table the agents could not read.
    let (status, report) = import(
        operator.clone(),
        "source=worldbank&regions=DEU:north",
        WORLD_BANK,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let analysis = node
        .post_expecting(
            ANALYZE,
            Some(&analyst),
            json!({ "decision_id": decision }),
            StatusCode::OK,
        )
        .await;
    for assessment in elements(&analysis["assessments"]) {
        assert_eq!(assessment["missing"], json!([]), "{assessment}");
    }
    let economic = elements(&analysis["assessments"])
        .find(|a| a["agent"] == "economic-analysis")
        .unwrap();
    let indicators = elements(&economic["evidence"])
        .find(|e| e["table"] == "indicators")
        .unwrap();
    assert_eq!(
        indicators["rows"].as_u64().unwrap(),
        world_bank_values(WORLD_BANK, "DEU"),
        "{economic}"
    );
}

/// The years with a value in a World Bank bulk CSV's row for `country`, counted from its text.
fn world_bank_values(text: &str, country: &str) -> u64 {
    let row = text
        .lines()
        .find(|line| line.split("\",\"").nth(1) == Some(country))
        .expect("the country's row");
    row.split("\",\"")
        .skip(4)
        .filter(|value| !value.trim_matches(['"', ',']).is_empty())
        .count() as u64
}

/// The distinct dates a by-station file has for `station`, counted from its text.
fn noaa_days(text: &str, station: &str) -> u64 {
    let dates: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            (cells.first() == Some(&station)
                && cells.len() > 3
                && cells[5].is_empty()
                && cells[3] != "-9999"
                && ["TMAX", "TMIN", "TAVG", "PRCP", "SNOW"].contains(&cells[2]))
            .then_some(cells[1])
        })
        .collect();
    dates.len() as u64
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_no_room_for_another_analysis_says_busy_and_when_to_retry() {
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        config.agents.max_running = 0;
    })
    .await;
    node.create("olga", Role::Operator).await;
    let (operator, _) = node.login("olga").await;
    let decision = decision_with_statement(&node, &operator, None).await;
    let records = node.log_records();
    for route in [ANALYZE, INVOKE] {
        let response = node
            .client
            .post(format!("{}{route}", node.base))
            .bearer_auth(&operator)
            .json(&json!({ "decision_id": decision }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{route}"
        );
        assert_eq!(response.headers()["retry-after"], "1", "{route}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "busy", "{route}");
    }
    assert_eq!(node.log_records(), records, "a busy invoke casts nothing");
}
