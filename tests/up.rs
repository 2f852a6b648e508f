//! `canopy up` as an operator runs it: restarts (SIGKILL included) keep accounts, decisions
//! and every acknowledged vote; SIGTERM drains and leaves nothing half-written.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use canopy_ingest::{EntryLog, LogRecord, Position, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::VoteId;
use serde_json::{Value, json};

mod common;

use common::*;

fn stored_votes(data: &Path) -> HashMap<VoteId, Vec<Position>> {
    let log = SegmentLog::open(data.join("votes"), SegmentLogConfig::default()).unwrap();
    assert_eq!(log.recovery().torn_tail_bytes, 0);
    let records: Vec<LogRecord> = (0..log.partitions())
        .flat_map(|partition| log.read_votes(partition, 0, usize::MAX).unwrap())
        .collect();
    positions_by_vote(&records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_results_moving() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with(data.path(), port, &["--demo"]);
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let token = login(&client, &base, "root").await;
    let active = active_decisions(&client, &base, &token).await;
    // A decision of each voting method is open.
    let methods: std::collections::BTreeSet<&str> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|decision| decision["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["approval", "quadratic", "ranked_choice", "single_choice"].into(),
        "{active}"
    );
    let demo = active[0]["id"]
        .as_str()
        .expect("the demo decision is active")
        .to_string();
    let turnout = |results: &Value| results["turnout"].as_u64().unwrap_or(0);
    let read = || results(&client, &base, &demo, &token);
    let first = read().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = read().await;
    assert!(
        later["as_of"]["offset"].as_u64() > first["as_of"]["offset"].as_u64(),
        "{first} then {later}"
    );
    assert!(turnout(&later) > turnout(&first), "{later}");
    // The ranked decision's demo voters have been counted by instant runoff.
    let ranked = active
        .as_array()
        .unwrap()
        .iter()
        .find(|decision| decision["method"] == "ranked_choice")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ranked = results(&client, &base, &ranked, &token).await;
    assert!(turnout(&ranked) > 0, "{ranked}");
    assert!(!ranked["rounds"].as_array().unwrap().is_empty(), "{ranked}");
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_accounts_decisions_and_every_acknowledged_vote() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start(data.path(), port);
    wait_healthy(&client, &base).await;

    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let mut create = yes_or_no("Dam the creek?");
    create["quorum"] = json!(5);
    let decision_id = create_decision(&client, &base, &admin, create).await;
    // A decision closed early before the kill stays closed for the votes after it.
    let closed_id = create_decision(&client, &base, &admin, yes_or_no("Fell the elm?")).await;
    let (status, _) = post(
        &client,
        format!("{base}/api/v1/voting/decisions/{closed_id}/close"),
        Some(&admin),
        json!({}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let mut voters = Vec::new();
    for n in 0..12 {
        voters.push(register(&client, &base, &format!("voter{n}")).await);
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
                    let option = ((k + n as u32) % 2) as u16;
                    match try_cast(&client, &base, &token, &decision_id, option).await {
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
        acknowledged.extend(task.await.unwrap().iter().map(common::acknowledged));
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
    let active = active_decisions(&client, &base, &voter).await;
    assert_eq!(active[0]["id"], decision_id);
    let last = acknowledged.iter().map(|(_, p)| p.offset).max().unwrap();
    let results = results(&client, &base, &decision_id, &admin).await;
    assert!(
        results["as_of"]["offset"].as_u64().unwrap() > last,
        "{results}"
    );
    assert_eq!(results["turnout"], 12, "{results}");

    // The restart loaded every voter's salt and sealing key: the first votes after it read
    // neither from the store (the caches' misses stay at zero); and the gate knows the
    // closed decision before the first vote.
    let (status, refused) = try_cast(&client, &base, &voter, &closed_id, 0)
        .await
        .unwrap();
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("decision_closed")),
        "{refused}"
    );
    for n in 0..3 {
        let token = login(&client, &base, &format!("voter{n}")).await;
        cast(&client, &base, &token, &decision_id, 1).await;
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lookups = |result: &str| -> f64 {
        let series = format!("canopy_cache_lookups_total{{cache=\"salts\",result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0.0, |value| value.parse().unwrap())
    };
    assert_eq!(lookups("miss"), 0.0, "{metrics}");
    assert!(lookups("hit") >= 6.0, "{metrics}");

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
    let run =
        || serde_json::from_slice::<Value>(&canopy_ok(&["migrate"], data.path()).stdout).unwrap();
    assert_eq!(
        run()["applied"],
        json!([
            "0001_init",
            "0002_record",
            "0003_engine_state",
            "0004_sensors",
            "0005_audit_append_only",
            "0006_rolls",
            "0007_voter_keys",
            "0008_audit_keys",
            "0009_signin",
            "0010_sql_tokens",
            "0011_engine_state_parts",
            "0012_decision_search",
            "0013_decision_lifecycle",
            "0014_impact_statements"
        ])
    );
    assert_eq!(run()["applied"], json!([]));
}

/// Every file and folder under the data directory (the salts' database, the log, the keys,
/// the lake) is its user's alone, and a directory left open to others by an older install
/// is narrowed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with(&data, port, &["--demo", "--lake-flush-s", "0.2"]);
    wait_healthy(&client, &base).await;
    create_admin(&data);
    tokio::time::sleep(Duration::from_millis(800)).await;
    kill_9(&mut node);

    let mut seen = Vec::new();
    let mut folders = vec![data.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            // The node's own log of this test run is written by the test, not the node.
            if path.file_name().is_some_and(|n| n == "node.log") {
                continue;
            }
            assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
            if path.is_dir() {
                folders.push(path.clone());
            }
            seen.push(path);
        }
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "the data directory is {:o}",
        mode & 0o777
    );
    for expected in ["canopy.db", "votes", "keys", "lake"] {
        assert!(
            seen.iter()
                .any(|p| p.file_name().is_some_and(|n| n == expected)),
            "{expected} is not under the data directory: {seen:?}"
        );
    }
}

/// Starts `canopy up` with `args` and `RUST_LOG` (unset if `None`), waits until it is
/// healthy, stops it, and returns what it wrote to stderr.
async fn log_of_a_start(args: &[&str], rust_log: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("stderr.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_canopy"));
    command
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        // Without ONNX Runtime the node warns at start (canopy_node::sensors): a line to look for.
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut node = command.spawn().unwrap();
    wait_healthy(
        &canopy_testkit::http_client(),
        &format!("http://127.0.0.1:{port}"),
    )
    .await;
    kill_9(&mut node);
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_when_asked_and_filtered_by_rust_log() {
    let json = log_of_a_start(&["--log-format", "json"], None).await;
    let lines: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let warning = lines
        .iter()
        .find(|line| line["target"] == "canopy_node::sensors")
        .unwrap_or_else(|| panic!("no line of canopy_node::sensors in {json}"));
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert!(
        warning["fields"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("ONNX Runtime")),
        "{warning}"
    );
    assert!(warning["timestamp"].is_string(), "{warning}");

    let text = log_of_a_start(&[], None).await;
    assert!(
        text.lines()
            .any(|line| line.contains(" WARN canopy_node::sensors: no ONNX Runtime")),
        "{text}"
    );
    let errors_only = log_of_a_start(&[], Some("error")).await;
    assert!(!errors_only.contains("ONNX Runtime"), "{errors_only}");
    let this_module_off = log_of_a_start(&[], Some("info,canopy_node::sensors=off")).await;
    assert!(
        !this_module_off.contains("ONNX Runtime"),
        "{this_module_off}"
    );

    let bad_filter = log_of_a_start(&[], Some("info,=[bad")).await;
    assert!(
        bad_filter.contains("is not a log filter") && bad_filter.contains("ONNX Runtime"),
        "a filter that does not parse is said, and info kept: {bad_filter}"
    );
}
