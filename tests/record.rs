//! The vote record end to end, as voters and auditors meet it: votes cast through the API
//! land in their decision's Merkle log, checkpoints are anchored (on a real EVM node, or in
//! the local journal), and a proof checks out with `canopy verify` and on chain. Erasing a
//! voter keeps every proof valid and leaves the voter unfindable; a restart keeps the record.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::anvil::*;
use common::*;
use serde_json::{Value, json};

fn canopy(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

/// The node's answer to an anonymous request for the proof of `leaf`.
async fn proof_of(client: &reqwest::Client, base: &str, decision: &str, leaf: &str) -> Value {
    get_public_json(
        client,
        format!("{base}/api/v1/audit/decisions/{decision}/proof?leaf={leaf}"),
    )
    .await
}

/// Polls the proof of `leaf` until it is anchored and, if given, at least `min_size` big.
async fn anchored_proof(
    client: &reqwest::Client,
    base: &str,
    decision: &str,
    leaf: &str,
    min_size: u64,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = proof_of(client, base, decision, leaf).await;
        if !last["anchor"].is_null() && last["tree_size"].as_u64().unwrap_or(0) >= min_size {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the vote was not anchored in time; last answer: {last}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn open_decision(client: &reqwest::Client, base: &str, admin: &str) -> String {
    create_decision(client, base, admin, yes_or_no("Reopen the salmon run?")).await
}

/// `canopy verify` of `proof_file` against the checkpoint note in `previous`, asking `node`
/// for the consistency proof and `rpc` for the anchor.
fn verify_grown_from(
    proof_file: &str,
    key: &str,
    previous: &str,
    node: &str,
    rpc: &str,
) -> (i32, String) {
    canopy(&[
        "verify",
        proof_file,
        "--key",
        key,
        "--previous",
        previous,
        "--node",
        node,
        "--rpc",
        rpc,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_are_anchored_on_chain_and_proofs_verify_there_and_offline() {
    let anvil = start_anvil();
    let contract = deploy_contract(&anvil);

    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let evm_args = evm_args("0.5", &anvil.url, &contract);
    let mut node = start_with(data.path(), port, &evm_args);
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = open_decision(&client, &base, &admin).await;
    let key = client
        .get(format!("{base}/api/v1/audit/key"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();

    let mut voters = Vec::new();
    let mut receipts = Vec::new();
    for n in 0..6 {
        let token = register(&client, &base, &format!("voter{n}")).await;
        receipts.push(cast(&client, &base, &token, &decision, (n % 2) as u16).await);
        voters.push(token);
    }
    // A changed vote is a new leaf with the same commitment: the record keeps both.
    let changed = cast(&client, &base, &voters[0], &decision, 1).await;
    assert_eq!(commitment(&changed), commitment(&receipts[0]));
    for (token, receipt) in voters.iter().zip(&receipts) {
        let voter_hex = subject(token).replace('-', "");
        assert!(
            !receipt["leaf"].as_str().unwrap().contains(&voter_hex),
            "a leaf names its voter"
        );
    }

    // The first vote's proof, once anchored, verifies offline, on chain, and by URL.
    let leaf = receipts[0]["leaf_hash"].as_str().unwrap().to_string();
    let proof = anchored_proof(&client, &base, &decision, &leaf, 0).await;
    assert!(
        proof["anchor"]["target"]
            .as_str()
            .unwrap()
            .starts_with("evm:0x")
    );
    let proof_file = write(files.path(), "proof.json", &proof.to_string());
    let (status, verdict) = canopy(&[
        "verify",
        &proof_file,
        "--key",
        &key,
        "--leaf",
        &leaf,
        "--rpc",
        &anvil.url,
    ]);
    assert_eq!(status, 0, "{verdict}");
    assert!(
        verdict.starts_with("OK ") && verdict.contains("+on-chain"),
        "{verdict}"
    );
    let url = format!("{base}/api/v1/audit/decisions/{decision}/proof?leaf={leaf}");
    let (status, verdict) = canopy(&["verify", &url, "--key", &key, "--rpc", &anvil.url]);
    assert_eq!(status, 0, "{verdict}");

    // Tampered proofs fail, each with its reason.
    let other_leaf = receipts[1]["leaf_hash"].as_str().unwrap();
    let mut forged = proof.clone();
    forged["leaf_hash"] = json!(other_leaf);
    let forged_file = write(files.path(), "forged.json", &forged.to_string());
    let (status, verdict) = canopy(&["verify", &forged_file, "--key", &key]);
    assert_eq!((status, &verdict[..5]), (1, "FAIL "), "{verdict}");
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", &key, "--leaf", other_leaf]);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL wrong_leaf"), "{verdict}");
    let foreign_key = "someone.else+9e2f2ee9+AcsYYz1GI+H1NdsFe8SAfR+z2c8+KDzuNU1NOZMgA7XX";
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", foreign_key]);
    assert_eq!(status, 1, "{verdict}");
    let mut rerooted = proof.clone();
    rerooted["anchor"]["batch_root"] = json!("00".repeat(32));
    let rerooted_file = write(files.path(), "rerooted.json", &rerooted.to_string());
    let (status, verdict) = canopy(&["verify", &rerooted_file, "--key", &key]);
    assert!(
        status == 1 && verdict.starts_with("FAIL bad_anchor"),
        "{verdict}"
    );

    // The record only grows: a later checkpoint is consistent with the one seen first.
    let first_size = proof["tree_size"].as_u64().unwrap();
    let previous = write(
        files.path(),
        "previous.note",
        proof["checkpoint"].as_str().unwrap(),
    );
    let late = register(&client, &base, "late").await;
    cast(&client, &base, &late, &decision, 0).await;
    let later = anchored_proof(&client, &base, &decision, &leaf, first_size + 1).await;
    let later_file = write(files.path(), "later.json", &later.to_string());
    let (status, verdict) = verify_grown_from(&later_file, &key, &previous, &base, &anvil.url);
    assert_eq!(status, 0, "{verdict}");
    assert!(verdict.contains("+consistency"), "{verdict}");

    // Erasure: the account, its salt and key go; every proof still verifies; the erased
    // account casts nothing more.
    let erased_voter = subject(&voters[0]);
    let (status, body) = erase_voter(&client, &base, &admin, &erased_voter).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = erase_voter(&client, &base, &voters[1], &erased_voter).await;
    assert_eq!(status, 403, "{body}");
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", &key, "--rpc", &anvil.url]);
    assert_eq!(
        status, 0,
        "an earlier proof broke with the erasure: {verdict}"
    );
    let (status, refusal) = try_cast(&client, &base, &voters[0], &decision, 0)
        .await
        .unwrap();
    assert_eq!(status, 401, "an erased account still votes: {refusal}");
    assert_eq!(refusal["error"]["code"], "account_erased");
    let audit = get_json(&client, format!("{base}/api/v1/audit/trail"), &admin).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "erase_voter"),
        "the erasure is audited"
    );

    // A restart rebuilds the record from the log: the same proof, the same checkpoints,
    // and new checkpoints consistent with the old ones.
    kill_9(&mut node);
    let mut node = start_with(data.path(), port, &evm_args);
    wait_healthy(&client, &base).await;
    let replayed = anchored_proof(&client, &base, &decision, &leaf, 0).await;
    assert_eq!(replayed["index"], proof["index"]);
    let latest_before = later["tree_size"].as_u64().unwrap();
    let newer = register(&client, &base, "after-restart").await;
    cast(&client, &base, &newer, &decision, 1).await;
    let grown = anchored_proof(&client, &base, &decision, &leaf, latest_before + 1).await;
    let grown_file = write(files.path(), "grown.json", &grown.to_string());
    let previous = write(
        files.path(),
        "later.note",
        later["checkpoint"].as_str().unwrap(),
    );
    let (status, verdict) = verify_grown_from(&grown_file, &key, &previous, &base, &anvil.url);
    assert_eq!(status, 0, "{verdict}");
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchoring_waits_out_a_chain_outage_and_loses_nothing() {
    let chain_dir = tempfile::tempdir().unwrap();
    let state = chain_dir.path().join("anvil-state.json");
    let state = state.to_str().unwrap();
    let chain_port = free_port().to_string();
    let anvil = start_anvil_with(&["--port", &chain_port, "--state", state]);
    let contract = deploy_contract(&anvil);
    let rpc = anvil.url.clone();

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with(data.path(), port, &evm_args("0.3", &rpc, &contract));
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = open_decision(&client, &base, &admin).await;
    let voter = register(&client, &base, "steady").await;
    let first = cast(&client, &base, &voter, &decision, 0).await;
    anchored_proof(
        &client,
        &base,
        &decision,
        first["leaf_hash"].as_str().unwrap(),
        0,
    )
    .await;

    // The chain goes away (anvil saves its state on SIGTERM); votes are still taken.
    let mut anvil = anvil;
    Command::new("kill")
        .args(["-TERM", &anvil.child.id().to_string()])
        .status()
        .unwrap();
    anvil.child.wait().unwrap();
    let second = cast(&client, &base, &voter, &decision, 1).await;
    let leaf = second["leaf_hash"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = proof_of(&client, &base, &decision, &leaf).await;
    assert!(
        waiting["anchor"].is_null(),
        "anchored without a chain: {waiting}"
    );

    // The chain comes back where it was; the pending batch is sent again and lands.
    let anvil = start_anvil_with(&["--port", &chain_port, "--state", state]);
    assert_eq!(anvil.url, rpc);
    let proof = anchored_proof(&client, &base, &decision, &leaf, 2).await;
    let files = tempfile::tempdir().unwrap();
    let proof_file = write(files.path(), "proof.json", &proof.to_string());
    let key = proof["key"].as_str().unwrap().to_string();
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", &key, "--rpc", &rpc]);
    assert_eq!(status, 0, "{verdict}");
    assert!(verdict.contains("+on-chain"), "{verdict}");
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_chain_checkpoints_are_anchored_in_the_signed_local_journal() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with(data.path(), port, &["--anchor-interval-s", "0.2"]);
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = open_decision(&client, &base, &admin).await;
    let voter = register(&client, &base, "solo").await;
    let receipt = cast(&client, &base, &voter, &decision, 0).await;
    let leaf = receipt["leaf_hash"].as_str().unwrap();

    let proof = anchored_proof(&client, &base, &decision, leaf, 0).await;
    assert_eq!(proof["anchor"]["target"], "journal");
    let key = proof["key"].as_str().unwrap().to_string();
    let proof_file = write(files.path(), "proof.json", &proof.to_string());
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", &key]);
    assert_eq!(status, 0, "{verdict}");
    assert!(verdict.contains("+anchor(journal, signed)"), "{verdict}");
    let (status, verdict) = canopy(&["verify", &proof_file, "--key", &key, "--rpc", &base]);
    assert_eq!(status, 1, "a journal anchor is not on chain: {verdict}");
    // The bare C2SP bundle checks with the receipt's leaf and the key.
    let bundle_file = write(
        files.path(),
        "proof.bundle",
        proof["bundle"].as_str().unwrap(),
    );
    let (status, verdict) = canopy(&["verify", &bundle_file, "--key", &key, "--leaf", leaf]);
    assert_eq!(status, 0, "{verdict}");
    let (status, verdict) = canopy(&["verify", &bundle_file, "--key", &key]);
    assert_eq!(status, 1, "{verdict}");
    let (status, verdict) = canopy(&["verify", "/nonexistent/proof.json"]);
    assert!(
        status == 2 && verdict.starts_with("FAIL unreadable"),
        "{verdict}"
    );

    // The checkpoint list and the anchor endpoint agree with the proof.
    let checkpoints = get_json(
        &client,
        format!("{base}/api/v1/audit/decisions/{decision}/checkpoints"),
        &admin,
    )
    .await;
    let size = proof["tree_size"].as_u64().unwrap();
    assert!(
        checkpoints["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["tree_size"] == size && c["note"] == proof["checkpoint"])
    );
    let anchor = get_json(
        &client,
        format!("{base}/api/v1/audit/decisions/{decision}/checkpoints/{size}/anchor"),
        &admin,
    )
    .await;
    assert_eq!(anchor["batch_root"], proof["anchor"]["batch_root"]);
    let journal = std::fs::read_to_string(data.path().join("anchors/journal.jsonl")).unwrap();
    assert!(
        journal
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .any(|entry| entry["note"] == proof["anchor"]["batch_note"]),
        "the proof's batch is a line of the journal"
    );

    // Bad requests get codes and change nothing.
    let bad = client
        .get(format!(
            "{base}/api/v1/audit/decisions/{decision}/proof?leaf=zz"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    let unknown = client
        .get(format!(
            "{base}/api/v1/audit/decisions/{decision}/proof?leaf={}",
            "ab".repeat(32)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let beyond = get_public_json(
        &client,
        format!("{base}/api/v1/audit/decisions/{decision}/consistency?from=1&to=999"),
    )
    .await;
    assert_eq!(beyond["error"]["code"], "size_beyond_log");
    kill_9(&mut node);
}
