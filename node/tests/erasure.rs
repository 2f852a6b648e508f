//! Erasure that erases: after an admin erases an account, no file of the node (log,
//! database, record, lake, audit trail) links the person to a ballot, and every proof of
//! their ballots still verifies.

mod common;

use std::path::Path;
use std::time::Duration;

use canopy_node::lake::LakeSettings;
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{CAST_VOTE, CREATE_DECISION, TestNode, error_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every file under `dir` that holds `needle`, with the byte it starts at.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path)
            && let Some(at) = bytes.windows(needle.len()).position(|w| w == needle)
        {
            found.push((path.display().to_string(), at));
        }
    }
    found
}

/// Polls the record until the receipt's leaf is covered by a checkpoint; the proof.
async fn proof_of(node: &TestNode, receipt: &Value) -> Value {
    let path = format!(
        "/api/v1/audit/decisions/{}/proof?leaf={}",
        receipt["decision_id"].as_str().unwrap(),
        receipt["leaf_hash"].as_str().unwrap()
    );
    for _ in 0..200 {
        let (status, body) = node.get_anonymous(&path).await;
        if status == StatusCode::OK {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no checkpoint covered {receipt}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_voter_leaves_no_link_in_any_file_and_every_proof_still_verifies() {
    let node = TestNode::start_with(ApiConfig::default(), |config| {
        let mut lake = LakeSettings::new(config.data_dir.join("lake"));
        lake.flush_interval = Duration::from_millis(100);
        config.lake = Some(lake);
    })
    .await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let username = "vera-erasable-7c1f";
    let vera = node.register(username).await;
    let (token, _) = node.login(username).await;

    // One open decision and one counting a roll, whose entry vera claims.
    let csv = "identifier,region\nresident-4711,north\nresident-4712,north\n";
    let imported: Value = node
        .client
        .post(format!("{}/api/v1/admin/rolls?name=north", node.base))
        .bearer_auth(&admin)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roll = imported["roll_id"].as_str().unwrap().to_string();
    let code = imported["invitations"][0]["code"].as_str().unwrap();
    node.post_expecting(
        "/api/v1/rolls/claim",
        Some(&token),
        json!({ "code": code }),
        StatusCode::OK,
    )
    .await;
    let mut receipts = Vec::new();
    for electorate in [json!({}), json!({ "roll": roll })] {
        let body = json!({ "title": "Close the quarry road?", "region": "north", "options": ["yes", "no"], "closes_at": i64::MAX, "electorate": electorate });
        let decision = node
            .post_expecting(CREATE_DECISION, Some(&admin), body, StatusCode::CREATED)
            .await["id"]
            .clone();
        let vote = json!({ "decision_id": decision, "option": 1 });
        receipts.push(
            node.post_expecting(CAST_VOTE, Some(&token), vote, StatusCode::CREATED)
                .await,
        );
    }
    let proofs_before: Vec<Value> = futures_proofs(&node, &receipts).await;

    // What links vera to her ballots, read before the erasure.
    let store = node.node.state.store.as_ref();
    let entry = store
        .roll_claim(roll.parse().unwrap(), vera)
        .await
        .unwrap()
        .unwrap()
        .entry;
    let secrets = [
        (
            "account salt",
            store.voter_salt(vera, 0).await.unwrap().to_vec(),
        ),
        (
            "roll entry salt",
            store.voter_salt(entry, 0).await.unwrap().to_vec(),
        ),
        (
            "sealing key",
            store.voter_key(vera, 0).await.unwrap().unwrap().to_vec(),
        ),
    ];
    let pseudonym = store.user_pseudonym(vera).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the lake takes the votes

    let erased = node
        .post_expecting(
            "/api/v1/admin/erase-voter",
            Some(&admin),
            json!({ "voter_id": vera }),
            StatusCode::OK,
        )
        .await;
    assert_eq!(erased["erased"], true);
    // The account is gone: it neither signs in nor votes, even with a token issued before.
    let (status, body) = node
        .post(
            "/api/v1/auth/login",
            None,
            json!({ "username": username, "password": common::api::PASSWORD }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "bad_credentials")
    );
    let vote = json!({ "decision_id": receipts[0]["decision_id"], "option": 0 });
    let refusal = node.post_refusal(CAST_VOTE, Some(&token), vote).await;
    assert_eq!(refusal, (StatusCode::UNAUTHORIZED, "account_erased"));

    // Every proof still verifies: the same leaf, index and root.
    let proofs_after = futures_proofs(&node, &receipts).await;
    for (before, after) in proofs_before.iter().zip(&proofs_after) {
        assert_eq!(before["index"], after["index"]);
        assert_eq!(before["leaf_hash"], after["leaf_hash"]);
    }
    // The trail keeps naming vera's pseudonym (it is append-only), but nothing maps it to
    // her any more.
    let trail = node.get_ok("/api/v1/audit/trail", &admin).await;
    assert_eq!(trail["chain_intact"], true, "{trail}");
    assert!(trail.to_string().contains(&pseudonym), "{trail}");
    assert_eq!(
        node.node.state.store.user_pseudonym(vera).await.unwrap(),
        canopy_serving::store::UNKNOWN_USER_PSEUDONYM
    );

    // Shut down, so every file the node keeps is written, then search every byte.
    let data_dir = node.dir.path().to_path_buf();
    let TestNode {
        node: running,
        dir: _dir,
        ..
    } = node;
    running.shutdown().await.unwrap();
    let lake_votes = files_holding(&data_dir.join("lake").join("votes"), b"PAR1");
    assert!(
        !lake_votes.is_empty(),
        "the lake holds no votes: the search below would prove nothing"
    );
    let mut needles: Vec<(&str, Vec<u8>)> = vec![
        ("voter id (bytes)", vera.as_bytes().to_vec()),
        ("voter id (text)", vera.to_string().into_bytes()),
        ("voter id (hex)", vera.simple().to_string().into_bytes()),
        ("username", username.as_bytes().to_vec()),
    ];
    for (what, secret) in &secrets {
        needles.push((what, secret.clone()));
        needles.push((what, hex::encode(secret).into_bytes()));
    }
    for (what, needle) in needles {
        let found = files_holding(&data_dir, &needle);
        assert!(
            found.is_empty(),
            "the {what} survived the erasure in {found:?}"
        );
    }
}

/// The proof of each receipt, once checkpoints cover them.
async fn futures_proofs(node: &TestNode, receipts: &[Value]) -> Vec<Value> {
    let mut proofs = Vec::new();
    for receipt in receipts {
        proofs.push(proof_of(node, receipt).await);
    }
    proofs
}

/// A voter's sealing key and salt are made with the account (registered, or created as a
/// voting role), so no first vote waits for the store's writer; an account that cannot
/// vote gets neither. Erasure still takes them.
#[tokio::test(flavor = "multi_thread")]
async fn voters_get_their_secrets_with_the_account_and_erasure_still_takes_them() {
    let node = TestNode::start(ApiConfig::default()).await;
    node.create("root", Role::Admin).await;
    let (admin, _) = node.login("root").await;
    let registered = node.register("rhea-registers-31").await;
    let created = node.create("cato-created-31", Role::Expert).await;
    let operator = node.create("otto-operates-31", Role::Operator).await;
    let store = node.node.state.store.as_ref();
    let keys = store.voter_secrets_after(true, None, 1_000).await.unwrap();
    let salts = store.voter_secrets_after(false, None, 1_000).await.unwrap();
    let has = |secrets: &[(uuid::Uuid, [u8; 32])], id| secrets.iter().any(|(v, _)| *v == id);
    for voter in [registered, created] {
        assert!(has(&keys, voter), "a voter's sealing key before any vote");
        assert!(has(&salts, voter), "a voter's salt before any vote");
    }
    assert!(!has(&keys, operator) && !has(&salts, operator));

    let salt_before = store.existing_voter_salt(registered).await.unwrap();
    let (token, _) = node.login("rhea-registers-31").await;
    let decision = node.create_decision(&admin, 1).await;
    node.post_expecting(
        CAST_VOTE,
        Some(&token),
        json!({ "decision_id": decision, "option": 0 }),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        store.existing_voter_salt(registered).await.unwrap(),
        salt_before,
        "the first vote uses the salt made at registration"
    );

    node.post_expecting(
        "/api/v1/admin/erase-voter",
        Some(&admin),
        json!({ "voter_id": registered }),
        StatusCode::OK,
    )
    .await;
    assert_eq!(store.existing_voter_salt(registered).await.unwrap(), None);
    let keys = store.voter_secrets_after(true, None, 1_000).await.unwrap();
    assert!(!has(&keys, registered));
}
