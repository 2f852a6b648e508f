//! Voter rolls: a decision that names one counts exactly the entries claimed with their
//! one-time invitations, one ballot per entry, whatever accounts an attacker registers.

mod common;

use std::collections::{BTreeMap, HashMap};

use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, TestNode, audit_entries, error_code};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CLAIM: &str = "/api/v1/rolls/claim";

/// Imports `csv` as a roll with `token`; the answer's status and body.
async fn import(node: &TestNode, token: &str, csv: &str) -> (StatusCode, Value) {
    let response = node
        .client
        .post(format!("{}/api/v1/admin/rolls?name=riverside", node.base))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A roll of `regions.len()` entries (`p0`, `p1`, …); its id and each entry's code.
async fn import_roll(node: &TestNode, token: &str, regions: &[&str]) -> (String, Vec<String>) {
    let mut csv = String::from("identifier,region\n");
    for (index, region) in regions.iter().enumerate() {
        csv.push_str(&format!("p{index},{region}\n"));
    }
    let (status, body) = import(node, token, &csv).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let codes = body["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(index, invitation)| {
            assert_eq!(invitation["identifier"], format!("p{index}"));
            invitation["code"].as_str().unwrap().to_string()
        })
        .collect();
    (body["roll_id"].as_str().unwrap().to_string(), codes)
}

async fn roll_decision(node: &TestNode, token: &str, roll: &str, electorate: Value) -> String {
    let mut electorate = electorate;
    electorate["roll"] = json!(roll);
    let body = json!({ "title": "Reopen the river path?", "region": "north", "options": ["yes", "no", "later"], "closes_at": i64::MAX, "electorate": electorate });
    node.post_expecting(CREATE_DECISION, Some(token), body, StatusCode::CREATED)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The decision's democratic count per option once the result has taken the vote at
/// `last_offset` of its partition (the last receipt's; none if nothing was cast).
async fn counts(
    node: &TestNode,
    token: &str,
    decision: &str,
    last_offset: Option<u64>,
) -> Vec<u64> {
    let freshness = last_offset.map_or(String::new(), |offset| format!("?min_offset={offset}"));
    let path = format!("/api/v1/voting/decision/{decision}/breakdown{freshness}");
    let breakdown = node.get_ok(&path, token).await;
    let mut counts = vec![0; 3];
    for cell in breakdown["cells"].as_array().unwrap() {
        assert_eq!(cell["component"], "democratic", "{breakdown}");
        counts[cell["option"].as_u64().unwrap() as usize] += cell["count"].as_u64().unwrap();
    }
    counts
}

/// The offset a receipt names.
fn offset(receipt: &Value) -> Option<u64> {
    receipt["position"]["offset"].as_u64()
}

async fn cast(node: &TestNode, token: &str, decision: &str, option: u16) -> (StatusCode, Value) {
    node.post(
        CAST_VOTE,
        Some(token),
        json!({ "decision_id": decision, "option": option }),
    )
    .await
}

/// The attack of the issue: sixty fresh accounts from one address vote on a roll decision
/// and count for nothing; an invitation works once, for one account; a claim taken back
/// stops counting for new votes and its entry's next holder replaces the ballot.
#[tokio::test]
async fn a_roll_decision_counts_claimed_entries_and_nothing_else() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("ops", Role::Operator).await;
    let (operator, _) = node.login("ops").await;
    let (roll, codes) = import_roll(&node, &operator, &["north", "north", "north"]).await;
    let decision = roll_decision(&node, &operator, &roll, json!({})).await;

    let before = node.log_records();
    for index in 0..60 {
        let name = format!("sock{index}");
        node.register(&name).await;
        let (token, _) = node.login(&name).await;
        let (status, body) = cast(&node, &token, &decision, 1).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "not_eligible")
        );
    }
    assert_eq!(node.log_records(), before, "a refused vote reached the log");

    node.register("ana").await;
    node.register("ben").await;
    let (ana, _) = node.login("ana").await;
    let (ben, _) = node.login("ben").await;
    let claimed = node
        .post_expecting(
            CLAIM,
            Some(&ana),
            json!({ "code": codes[0].to_lowercase() }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(claimed["roll_id"], json!(roll));
    assert_eq!(claimed["region"], "north");
    // The code is spent: for another account, and for the same one.
    for token in [&ben, &ana] {
        let refusal = node
            .post_refusal(CLAIM, Some(token), json!({ "code": codes[0] }))
            .await;
        assert_eq!(refusal, (StatusCode::NOT_FOUND, "invalid_invitation"));
    }
    // One entry per account and roll.
    let refusal = node
        .post_refusal(CLAIM, Some(&ana), json!({ "code": codes[1] }))
        .await;
    assert_eq!(refusal, (StatusCode::CONFLICT, "roll_already_claimed"));
    // A role that does not vote claims nothing.
    let refusal = node
        .post_refusal(CLAIM, Some(&operator), json!({ "code": codes[1] }))
        .await;
    assert_eq!(refusal, (StatusCode::FORBIDDEN, "forbidden"));

    let (status, receipt) = cast(&node, &ana, &decision, 0).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        counts(&node, &operator, &decision, offset(&receipt)).await,
        [1, 0, 0]
    );

    // The operator takes ana's claim back and hands the entry to ben.
    let reissued = node
        .post_expecting(
            &format!("/api/v1/admin/rolls/{roll}/reissue"),
            Some(&operator),
            json!({ "identifier": "p0" }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(reissued["revoked_claim"], true);
    let (status, body) = cast(&node, &ana, &decision, 2).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "not_eligible")
    );
    let new_code = reissued["code"].as_str().unwrap();
    node.post_expecting(
        CLAIM,
        Some(&ben),
        json!({ "code": new_code }),
        StatusCode::OK,
    )
    .await;
    let (status, receipt) = cast(&node, &ben, &decision, 1).await;
    assert_eq!(status, StatusCode::CREATED);
    // One entry, one ballot: ben's replaced the one cast through ana's claim.
    assert_eq!(
        counts(&node, &operator, &decision, offset(&receipt)).await,
        [0, 1, 0]
    );

    let summary = node
        .get_ok(&format!("/api/v1/admin/rolls/{roll}"), &operator)
        .await;
    assert_eq!(summary["summary"]["entries"], 3);
    assert_eq!(summary["summary"]["claimed"], 1);
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let trail = node.get_ok("/api/v1/audit/trail", &admin).await;
    assert_eq!(audit_entries(&trail, "import_roll"), 1);
    assert_eq!(audit_entries(&trail, "claim_roll_entry"), 2);
    assert_eq!(audit_entries(&trail, "reissue_roll_entry"), 1);
}

/// The entry's region stands for the voter's: a roll entry of another region than the
/// electorate's is refused like any voter of that region.
#[tokio::test]
async fn a_roll_entry_votes_only_in_its_region() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("ops", Role::Operator).await;
    let (operator, _) = node.login("ops").await;
    let (roll, codes) = import_roll(&node, &operator, &["north", "delta"]).await;
    let decision = roll_decision(&node, &operator, &roll, json!({ "regions": ["north"] })).await;
    let mut tokens = Vec::new();
    for (name, code) in ["nia", "dev"].iter().zip(&codes) {
        node.register(name).await;
        let (token, _) = node.login(name).await;
        node.post_expecting(CLAIM, Some(&token), json!({ "code": code }), StatusCode::OK)
            .await;
        tokens.push(token);
    }
    assert_eq!(
        cast(&node, &tokens[0], &decision, 0).await.0,
        StatusCode::CREATED
    );
    let (status, body) = cast(&node, &tokens[1], &decision, 0).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "not_eligible")
    );
}

/// Guessing codes is capped per account, refusals change nothing, and only operators and
/// admins import or reissue; a malformed or repeated roll is refused whole.
#[tokio::test]
async fn rolls_refuse_guessing_reaching_and_bad_input() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("ops", Role::Operator).await;
    let (operator, _) = node.login("ops").await;
    node.register("gus").await;
    let (guesser, _) = node.login("gus").await;
    let (roll, codes) = import_roll(&node, &operator, &["north"]).await;

    let mut refusals = HashMap::new();
    for attempt in 0..12 {
        let guess = format!("{:05}-00000-00000-0000{}", attempt, attempt % 10);
        let refusal = node
            .post_refusal(CLAIM, Some(&guesser), json!({ "code": guess }))
            .await;
        *refusals.entry(refusal.code).or_insert(0) += 1;
    }
    assert_eq!(
        refusals.get("invalid_invitation"),
        Some(&10),
        "{refusals:?}"
    );
    assert_eq!(
        refusals.get("too_many_claim_attempts"),
        Some(&2),
        "{refusals:?}"
    );
    // Even the right code waits out the limit.
    let refusal = node
        .post_refusal(CLAIM, Some(&guesser), json!({ "code": codes[0] }))
        .await;
    assert_eq!(
        refusal,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_claim_attempts")
    );
    let summary = node
        .get_ok(&format!("/api/v1/admin/rolls/{roll}"), &operator)
        .await;
    assert_eq!(summary["summary"]["claimed"], 0);

    let (status, body) = import(&node, &guesser, "identifier,region\nx,north\n").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let refusal = node
        .post_refusal(
            &format!("/api/v1/admin/rolls/{roll}/reissue"),
            Some(&guesser),
            json!({ "identifier": "p0" }),
        )
        .await;
    assert_eq!(refusal, (StatusCode::FORBIDDEN, "forbidden"));
    for (csv, status, code) in [
        (
            "identifier,region\na,north\na,delta\n",
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "identifier\na\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_roll",
        ),
        (
            "identifier,region\na,north\n\"b,north\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_roll",
        ),
        (
            "identifier,region\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_roll",
        ),
    ] {
        let (got, body) = import(&node, &operator, csv).await;
        assert_eq!((got, error_code(&body)), (status, code), "{csv:?}: {body}");
    }
    let huge = format!("identifier,region\n{}", "p,north\n".repeat(3 << 20));
    let (status, body) = import(&node, &operator, &huge).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let unknown_roll = json!({ "title": "t", "options": ["a", "b"], "closes_at": i64::MAX, "electorate": { "roll": uuid::Uuid::new_v4() } });
    let refusal = node
        .post_refusal(CREATE_DECISION, Some(&operator), unknown_roll)
        .await;
    assert_eq!(
        refusal,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_electorate")
    );
}

/// One step of the property test, over a roll of [`ENTRIES`] entries and [`ACCOUNTS`]
/// accounts.
#[derive(Clone, Debug)]
enum Step {
    Claim { account: usize, entry: usize },
    Reissue { entry: usize },
    Vote { account: usize, option: u16 },
}

const ENTRIES: usize = 4;
const ACCOUNTS: usize = 5;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..ACCOUNTS, 0..ENTRIES).prop_map(|(account, entry)| Step::Claim { account, entry }),
        (0..ENTRIES).prop_map(|entry| Step::Reissue { entry }),
        (0..ACCOUNTS, 0..3u16).prop_map(|(account, option)| Step::Vote { account, option }),
        (0..ACCOUNTS, 0..3u16).prop_map(|(account, option)| Step::Vote { account, option }),
    ]
}

/// The model: who holds which entry, each entry's current code, and each entry's ballot.
struct Model {
    codes: Vec<String>,
    holder: Vec<Option<usize>>,
    ballots: BTreeMap<usize, u16>,
}

async fn run_steps(node: &TestNode, operator: &str, tokens: &[String], steps: Vec<Step>) {
    let (roll, codes) = import_roll(node, operator, &["north"; ENTRIES]).await;
    let decision = roll_decision(node, operator, &roll, json!({})).await;
    let mut model = Model {
        codes,
        holder: vec![None; ENTRIES],
        ballots: BTreeMap::new(),
    };
    let mut last_offset = None;
    for step in steps {
        match step {
            Step::Claim { account, entry } => {
                let body = json!({ "code": model.codes[entry] });
                let (status, answer) = node.post(CLAIM, Some(&tokens[account]), body).await;
                let holds_one = model.holder.contains(&Some(account));
                let expected = match (model.holder[entry], holds_one) {
                    (Some(_), _) => (StatusCode::NOT_FOUND, "invalid_invitation"),
                    (None, true) => (StatusCode::CONFLICT, "roll_already_claimed"),
                    (None, false) => (StatusCode::OK, "<none>"),
                };
                assert_eq!(
                    (status, error_code(&answer)),
                    expected,
                    "{step:?}: {answer}"
                );
                if status == StatusCode::OK {
                    model.holder[entry] = Some(account);
                }
            }
            Step::Reissue { entry } => {
                let path = format!("/api/v1/admin/rolls/{roll}/reissue");
                let body = json!({ "identifier": format!("p{entry}") });
                let answer = node
                    .post_expecting(&path, Some(operator), body, StatusCode::OK)
                    .await;
                assert_eq!(answer["revoked_claim"], model.holder[entry].is_some());
                model.codes[entry] = answer["code"].as_str().unwrap().to_string();
                model.holder[entry] = None;
            }
            Step::Vote { account, option } => {
                let (status, answer) = cast(node, &tokens[account], &decision, option).await;
                match model.holder.iter().position(|h| *h == Some(account)) {
                    Some(entry) => {
                        assert_eq!(status, StatusCode::CREATED, "{step:?}: {answer}");
                        model.ballots.insert(entry, option);
                        last_offset = offset(&answer);
                    }
                    None => assert_eq!(
                        (status, error_code(&answer)),
                        (StatusCode::FORBIDDEN, "not_eligible"),
                        "{step:?}"
                    ),
                }
            }
        }
    }
    let mut recount = vec![0u64; 3];
    for option in model.ballots.values() {
        recount[usize::from(*option)] += 1;
    }
    assert_eq!(
        counts(node, operator, &decision, last_offset).await,
        recount,
        "{:?}",
        model.ballots
    );
}

/// For random rolls, claims, reissues (revocations) and votes, the tally equals a recount
/// that counts, per entry, the last vote cast while its caster held the entry.
#[test]
fn the_tally_equals_a_recount_of_eligible_votes() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (node, operator, tokens) = runtime.block_on(async {
        let node = TestNode::start_with(ApiConfig::default(), |config| {
            config.api.claims_per_account = Rate::per_hour(100_000);
            config.api.per_user = Rate {
                per_second: 10_000.0,
                burst: 10_000.0,
            };
        })
        .await;
        node.create("ops", Role::Operator).await;
        let (operator, _) = node.login("ops").await;
        let mut tokens = Vec::new();
        for account in 0..ACCOUNTS {
            let name = format!("voter{account}");
            node.create(&name, Role::Citizen).await;
            tokens.push(node.login(&name).await.0);
        }
        (node, operator, tokens)
    });
    let config = ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(step(), 1..30), |steps| {
            runtime.block_on(run_steps(&node, &operator, &tokens, steps));
            Ok(())
        })
        .unwrap();
}
