//! `canopy up` as an operator runs it: restarts (SIGKILL included) keep accounts, decisions
//! and every acknowledged vote; SIGTERM drains and leaves nothing half-written.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use canopy_ingest::{EntryLog, Position, SegmentLog, SegmentLogConfig};
use canopy_schemas::VoteId;
use serde_json::{Value, json};

mod common;

use common::*;

fn stored_votes(data: &Path) -> HashMap<VoteId, Vec<Position>> {
    let log = SegmentLog::open(data.join("votes"), SegmentLogConfig::default()).unwrap();
    assert_eq!(log.recovery().torn_tail_bytes, 0);
    let mut stored: HashMap<VoteId, Vec<Position>> = HashMap::new();
    for partition in 0..log.partitions() {
        for record in log.read(partition, 0, usize::MAX).unwrap() {
            stored
                .entry(record.vote.vote_id)
                .or_default()
                .push(record.position);
        }
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_results_moving() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut node = start_with(data.path(), port, &["--demo"]);
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let token = login(&client, &base, "root").await;
    let active = get_json(
        &client,
        format!("{base}/api/v1/voting/active-decisions"),
        &token,
    )
    .await;
    let demo = active[0]["id"]
        .as_str()
        .expect("the demo decision is active")
        .to_string();
    let turnout = |results: &Value| results["turnout"].as_u64().unwrap_or(0);
    let read = || async {
        get_json(
            &client,
            format!("{base}/api/v1/voting/decision/{demo}/results"),
            &token,
        )
        .await
    };
    let first = read().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = read().await;
    assert!(
        later["as_of"]["offset"].as_u64() > first["as_of"]["offset"].as_u64(),
        "{first} then {later}"
    );
    assert!(turnout(&later) > turnout(&first), "{later}");
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_accounts_decisions_and_every_acknowledged_vote() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut node = start(data.path(), port);
    wait_healthy(&client, &base).await;

    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let create = json!({ "title": "Dam the creek?", "options": ["yes", "no"], "closes_at": i64::MAX, "quorum": 5 });
    let (status, decision) = post(
        &client,
        format!("{base}/api/v1/voting/decision/create"),
        Some(&admin),
        create,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{decision}");
    let decision_id = decision["id"].as_str().unwrap().to_string();
    let mut voters = Vec::new();
    for n in 0..12 {
        let username = format!("voter{n}");
        let (status, _) = post(
            &client,
            format!("{base}/api/v1/auth/register"),
            None,
            json!({ "username": username, "password": PASSWORD }),
        )
        .await
        .unwrap();
        assert_eq!(status, 201);
        voters.push(login(&client, &base, &username).await);
    }

    // Voters cast as fast as they can; the node is killed with SIGKILL mid-stream.
    let casting: Vec<_> = voters
        .iter()
        .enumerate()
        .map(|(n, token)| {
            let (client, base, token, decision_id) = (
                client.clone(),
                base.clone(),
                token.clone(),
                decision_id.clone(),
            );
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..10_000u32 {
                    let body = json!({ "decision_id": decision_id, "option": (k + n as u32) % 2 });
                    match post(
                        &client,
                        format!("{base}/api/v1/voting/cast-vote"),
                        Some(&token),
                        body,
                    )
                    .await
                    {
                        Ok((201, receipt)) => acked.push(receipt),
                        Ok((status, body)) => panic!("cast refused with {status}: {body}"),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    kill_9(&mut node);
    let mut acknowledged: Vec<(VoteId, Position)> = Vec::new();
    for task in casting {
        for receipt in task.await.unwrap() {
            let id: uuid::Uuid = receipt["vote_id"].as_str().unwrap().parse().unwrap();
            let position: Position = serde_json::from_value(receipt["position"].clone()).unwrap();
            acknowledged.push((VoteId::from(id), position));
        }
    }
    assert!(
        acknowledged.len() > 50,
        "only {} votes were acknowledged before the kill",
        acknowledged.len()
    );

    // After the restart: the account logs in, the decision is there, and once the node says
    // it is ready, plain results (no minimum position asked) include the last acknowledged
    // vote: readiness waits for the replay of the log.
    let mut node = start(data.path(), port);
    wait_healthy(&client, &base).await;
    let admin = login(&client, &base, "root").await;
    let voter = login(&client, &base, "voter0").await;
    let active = get_json(
        &client,
        format!("{base}/api/v1/voting/active-decisions"),
        &voter,
    )
    .await;
    assert_eq!(active[0]["id"], decision_id);
    let last = acknowledged.iter().map(|(_, p)| p.offset).max().unwrap();
    let results = get_json(
        &client,
        format!("{base}/api/v1/voting/decision/{decision_id}/results"),
        &admin,
    )
    .await;
    assert!(
        results["as_of"]["offset"].as_u64().unwrap() > last,
        "{results}"
    );
    assert_eq!(results["turnout"], 12, "{results}");

    // SIGTERM: stops accepting, finishes what is in flight, exits cleanly.
    let pid = node.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = node.wait().unwrap();
    assert!(status.success(), "canopy up exited with {status}");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut node.stdout.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("stopped cleanly"), "{said}");

    let stored = stored_votes(data.path());
    for (vote_id, position) in &acknowledged {
        assert_eq!(
            stored.get(vote_id),
            Some(&vec![*position]),
            "acknowledged vote {vote_id} is not stored exactly once"
        );
    }
}

#[test]
fn migrate_applies_each_migration_once() {
    let data = tempfile::tempdir().unwrap();
    let run = || {
        let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
            .args(["migrate", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    assert_eq!(
        run()["applied"],
        json!([
            "0001_init",
            "0002_record",
            "0003_engine_state",
            "0004_sensors"
        ])
    );
    assert_eq!(run()["applied"], json!([]));
}
