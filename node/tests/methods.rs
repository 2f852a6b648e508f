//! The voting methods through the API (issue 19). A decision of each method takes the
//! ballots of its method and refuses every other shape with a stable code, appending
//! nothing; its results equal a recount of the ballots cast, by the method's reference rules
//! (ranked choice with its rounds), a changed ballot replacing the voter's first; and an
//! early close turns them into the signed final result, whose tally is that recount.

mod common;

use std::time::{Duration, Instant};

use canopy_dataflow::{CountedBallot, DecisionParams, count_decision};
use canopy_schemas::{Ballot, Component, ComponentWeights, Method, Weight};
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, TestNode};
use reqwest::StatusCode;
use serde_json::{Value, json};

const OPTIONS: [&str; 4] = ["reefs", "dunes", "ladders", "peat"];
const CREDITS: u32 = 9;

/// Each voter's ballots in the order cast (the last counts), as the API's JSON and as the
/// ballot they mark.
fn ballots(method: Method) -> Vec<Vec<(Value, Ballot)>> {
    let single = |o: u16| (json!({ "option": o }), Ballot::single_choice(o).unwrap());
    let approve = |o: &[u16]| (json!({ "approve": o }), Ballot::approval(o).unwrap());
    let rank = |o: &[u16]| (json!({ "ranking": o }), Ballot::ranked_choice(o).unwrap());
    let spend = |o: &[(u16, u16)]| {
        let pairs: Vec<[u16; 2]> = o.iter().map(|(a, b)| [*a, *b]).collect();
        (
            json!({ "allocation": pairs }),
            Ballot::quadratic(o).unwrap(),
        )
    };
    match method {
        Method::SingleChoice => vec![
            vec![single(0)],
            vec![single(1), single(0)],
            vec![single(1)],
            vec![single(2)],
        ],
        Method::Approval => vec![
            vec![approve(&[0, 1])],
            vec![approve(&[1]), approve(&[1, 2, 3])],
            vec![approve(&[1, 3])],
            vec![approve(&[0])],
        ],
        // Round one: 0 and 2 have two each, 1 has one, 3 none; 3 goes, then 1, whose ballot
        // moves to 2, which then leads 0 and wins.
        Method::RankedChoice => vec![
            vec![rank(&[0, 1])],
            vec![rank(&[2]), rank(&[2, 0])],
            vec![rank(&[1, 2])],
            vec![rank(&[0])],
            vec![rank(&[2, 3, 1])],
        ],
        Method::Quadratic => vec![
            vec![spend(&[(0, 3)])],
            vec![spend(&[(1, 1)]), spend(&[(1, 2), (2, 2)])],
            vec![spend(&[(2, 1), (3, 1)])],
        ],
    }
}

/// Ballots the decision of `method` must refuse, with the code each gets.
fn refused(method: Method) -> Vec<(Value, &'static str)> {
    let mut cases = vec![
        // Two forms at once, or none.
        (json!({ "option": 0, "approve": [0] }), "invalid_ballot"),
        (json!({}), "invalid_ballot"),
        // Beyond the 256 options any decision may have, and past this one's four.
        (
            json!({ "approve": (0..1_000).collect::<Vec<u16>>() }),
            "invalid_ballot",
        ),
    ];
    let other = match method {
        Method::SingleChoice => json!({ "ranking": [0, 1] }),
        _ => json!({ "option": 0 }),
    };
    cases.push((other, "wrong_method"));
    cases.extend(match method {
        Method::SingleChoice => vec![(json!({ "option": 4 }), "unknown_option")],
        Method::Approval => vec![
            (json!({ "approve": [] }), "invalid_ballot"),
            (json!({ "approve": [1, 1] }), "invalid_ballot"),
            (json!({ "approve": [0, 7] }), "unknown_option"),
        ],
        Method::RankedChoice => vec![
            (json!({ "ranking": [] }), "invalid_ballot"),
            (json!({ "ranking": [2, 0, 2] }), "invalid_ballot"),
            (json!({ "ranking": [9] }), "unknown_option"),
        ],
        Method::Quadratic => vec![
            (json!({ "allocation": [[0, 3], [1, 1]] }), "over_budget"),
            (json!({ "allocation": [[0, 0]] }), "invalid_ballot"),
            (json!({ "allocation": [[0, 1], [0, 1]] }), "invalid_ballot"),
            (json!({ "allocation": [[5, 1]] }), "unknown_option"),
        ],
    });
    cases
}

async fn create(node: &TestNode, token: &str, method: Method) -> String {
    let now = canopy_schemas::clock::now_micros();
    let credits = if method == Method::Quadratic {
        CREDITS
    } else {
        0
    };
    let body = json!({ "title": format!("Fund the {method} way"), "region": "north", "options": OPTIONS, "opens_at": now, "closes_at": now + 3_600_000_000i64, "quorum": 3, "method": method, "credits": credits });
    let created = node
        .post_expecting(CREATE_DECISION, Some(token), body, StatusCode::CREATED)
        .await;
    assert_eq!(created["method"], json!(method));
    assert_eq!(created["credits"], json!(credits));
    created["id"].as_str().unwrap().to_string()
}

/// The public final result's statement once it is there: its result line as JSON.
async fn final_result(node: &TestNode, decision: &str) -> Value {
    let path = format!("{}/api/v1/audit/decisions/{decision}/result", node.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = node.client.get(&path).send().await.unwrap();
        if response.status() == StatusCode::OK {
            let statement = response.text().await.unwrap();
            let line = statement.lines().nth(1).unwrap().to_string();
            return serde_json::from_str(&line).unwrap();
        }
        assert!(Instant::now() < deadline, "no final result for {decision}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_method_counts_its_ballots_and_refuses_the_rest() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("owner", Role::Operator).await;
    let (owner, _) = node.login("owner").await;
    let mut voters = Vec::new();
    for n in 0..5 {
        let name = format!("voter{n}");
        node.register(&name).await;
        voters.push(node.login(&name).await.0);
    }
    // A scheduled decision changes method only with credits that fit it.
    let now = canopy_schemas::clock::now_micros();
    let hour = 3_600_000_000i64;
    let scheduled = node
        .post_expecting(
            CREATE_DECISION,
            Some(&owner),
            json!({ "title": "Later", "options": OPTIONS, "opens_at": now + hour, "closes_at": now + 2 * hour }),
            StatusCode::CREATED,
        )
        .await;
    let page = format!(
        "/api/v1/voting/decisions/{}",
        scheduled["id"].as_str().unwrap()
    );
    let patch = |body: Value| node.request(reqwest::Method::PATCH, &page, Some(&owner), Some(body));
    let (status, without_credits) = patch(json!({ "method": "quadratic" })).await;
    assert_eq!(
        (status, &without_credits["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_credits"))
    );
    let (status, edited) = patch(json!({ "method": "quadratic", "credits": 25 })).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        (&edited["method"], &edited["credits"]),
        (&json!("quadratic"), &json!(25))
    );

    for method in Method::ALL {
        let decision = create(&node, &owner, method).await;
        let before = node.log_records();
        for (ballot, code) in refused(method) {
            let mut body = ballot.clone();
            body["decision_id"] = json!(decision);
            let refusal = node.post_refusal(CAST_VOTE, Some(&voters[0]), body).await;
            assert_eq!(
                refusal,
                (StatusCode::UNPROCESSABLE_ENTITY, code),
                "{method}: {ballot}"
            );
        }
        assert_eq!(
            node.log_records(),
            before,
            "{method}: a refusal appends nothing"
        );

        let mut last_offset = 0;
        let mut counted = Vec::new();
        for (voter, cast) in ballots(method).iter().enumerate() {
            for (json, _) in cast {
                let mut body = json.clone();
                body["decision_id"] = json!(decision);
                let receipt = node
                    .post_expecting(CAST_VOTE, Some(&voters[voter]), body, StatusCode::CREATED)
                    .await;
                last_offset = last_offset.max(receipt["position"]["offset"].as_u64().unwrap());
            }
            counted.push(CountedBallot {
                component: Component::Democratic,
                weight: Weight::ONE.0,
                ballot: cast.last().unwrap().1,
            });
        }
        let params = DecisionParams {
            options: OPTIONS.len() as u16,
            weights: ComponentWeights::DEFAULT,
            quorum: 3,
            method,
            credits: if method == Method::Quadratic {
                CREDITS
            } else {
                0
            },
        };
        let expected = count_decision(&params, counted);
        let results = node
            .get_ok(
                &format!("/api/v1/voting/decision/{decision}/results?min_offset={last_offset}"),
                &voters[0],
            )
            .await;
        assert_eq!(results["method"], json!(method));
        assert_eq!(
            results["turnout"],
            json!(expected.tally.turnout),
            "{method}"
        );
        for (option, shown) in results["options"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                shown["composite"].as_f64().unwrap(),
                expected.tally.composite(option as u16),
                "{method}, option {option}: {results}"
            );
        }
        assert_eq!(results["leading"], json!(expected.outcome), "{method}");
        assert_eq!(
            results["rounds"].as_array().unwrap().len(),
            expected.rounds.len(),
            "{method}: {results}"
        );
        if method == Method::RankedChoice {
            assert_eq!(results["rounds"][0]["eliminated"], json!(3));
            assert_eq!(results["rounds"][1]["eliminated"], json!(1));
            assert_eq!(results["leading"], json!({ "kind": "winner", "option": 2 }));
        }

        node.post_expecting(
            &format!("/api/v1/voting/decisions/{decision}/close"),
            Some(&owner),
            json!({ "reason": "counted" }),
            StatusCode::OK,
        )
        .await;
        let result = final_result(&node, &decision).await;
        assert_eq!(result["method"], json!(method));
        assert_eq!(result["outcome"], json!(expected.outcome), "{method}");
        assert_eq!(
            result["tally"],
            serde_json::to_value(expected.clone().into_tally()).unwrap(),
            "{method}: the final tally is the recount, rounds and all"
        );
        // One leaf per cast ballot, and the close.
        let casts: usize = ballots(method).iter().map(Vec::len).sum();
        assert_eq!(result["tree_size"], json!(casts + 1), "{method}");
    }
    // Voter 1 voted in every decision: their receipts list each current ballot in its
    // method's shape, with the time it was cast (from the log; the leaf holds none).
    let mine = node.get_ok("/api/v1/voting/my-votes", &voters[1]).await;
    let listed = mine["votes"].as_array().unwrap();
    assert_eq!(listed.len(), Method::ALL.len(), "{mine}");
    for method in Method::ALL {
        let (json, _) = ballots(method)[1].last().unwrap().clone();
        let entry = listed
            .iter()
            .find(|entry| entry["title"] == json!(format!("Fund the {method} way")))
            .unwrap();
        assert_eq!(entry["ballot"], json, "{method}: {entry}");
        assert!(entry["cast_at"].as_i64().unwrap() > 0, "{entry}");
    }
    node.node.shutdown().await.unwrap();
}
