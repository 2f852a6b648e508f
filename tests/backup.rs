//! Backups and restore as an operator runs them: the drill (a node destroyed under load,
//! brought back from its scheduled backups, every vote acknowledged before the last
//! backup still there, exactly once), a PostgreSQL store through a bucket with a
//! passphrase and an incremental backup, and the refusals (a wrong key, an occupied
//! target, a tampered chunk).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_ingest::{EntryLog, Position, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::VoteId;
use common::cluster::Database;
use common::*;
use serde_json::Value;

fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A new identity under `dir` and its recipient.
fn keygen(dir: &Path) -> (PathBuf, String) {
    let identity = dir.join("backup-identity.txt");
    let output = canopy()
        .args(["backup-keygen", "--output"])
        .arg(&identity)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let recipient = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    (identity, recipient)
}

/// `canopy restore` of the latest backup in `repo` into `target`, opened with `identity`.
fn restore_with_identity(repo: &Path, identity: &Path, target: &Path) -> Output {
    canopy()
        .args(["restore", "--from"])
        .arg(repo)
        .arg("--identity")
        .arg(identity)
        .arg("--data-dir")
        .arg(target)
        .output()
        .unwrap()
}

fn last_json_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "{e}: {stdout} / {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn must_succeed(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Fails with `expected` in its message, and leaves no half-restored directory behind.
fn must_refuse(output: Output, expected: &str, target: &Path) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it succeeded: {stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    assert!(
        !target.with_extension("restoring").exists(),
        "a half-restored directory was left behind"
    );
}

fn finished_backups(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("backups"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// A vote the test was told was stored, and when it was told.
#[derive(Clone, Copy)]
struct Acknowledged {
    vote: VoteId,
    position: Position,
    at_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_destroyed_under_load_comes_back_from_its_backups_with_every_vote_acknowledged_before_the_last_one()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let repo = dir.path().join("backups");
    let (identity, recipient) = keygen(dir.path());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start(&data, port);
    wait_healthy(&client, &base).await;
    create_admin(&data);
    let admin = login(&client, &base, "root").await;
    let mut decisions = Vec::new();
    for n in 0..3 {
        decisions
            .push(create_decision(&client, &base, &admin, yes_or_no(&format!("drill {n}"))).await);
    }
    let mut voters = Vec::new();
    for n in 0..8 {
        voters.push(register(&client, &base, &format!("drill-voter-{n}")).await);
    }

    let backup_log = std::fs::File::create(dir.path().join("backup.log")).unwrap();
    let metrics_port = free_port();
    let mut scheduled: Child = canopy()
        .args(["backup", "--to"])
        .arg(&repo)
        .args([
            "--recipient",
            &recipient,
            "--backup-every",
            "1s",
            "--full-every",
            "4",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--data-dir")
        .arg(&data)
        .stderr(backup_log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Load: every voter casts again and again (each cast a new vote and a new leaf).
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (n, token) in voters.iter().enumerate() {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let (decisions, acknowledged, stop) =
            (decisions.clone(), acknowledged.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut round = n;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let decision = &decisions[round % decisions.len()];
                if let Ok((201, receipt)) =
                    try_cast(&client, &base, &token, decision, (round % 2) as u16).await
                {
                    let (vote, position) = common::acknowledged(&receipt);
                    acknowledged.lock().unwrap().push(Acknowledged {
                        vote,
                        position,
                        at_ms: now_ms(),
                    });
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished_backups(&repo) < 5 {
        assert!(
            Instant::now() < deadline,
            "five backups were not taken in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The scheduled backups report themselves to Prometheus. A backup's summary reaches
    // the repository a moment before its figures are recorded, so the count may lag the
    // summaries just seen by one.
    fn figure_in(metrics: &str, name: &str) -> Option<f64> {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    }
    let reported_by = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = client
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {}",
                    std::fs::read_to_string(dir.path().join("backup.log")).unwrap_or_default()
                )
            })
            .text()
            .await
            .unwrap();
        let counted = figure_in(&metrics, "canopy_backup_duration_seconds_count");
        if counted.is_some_and(|count| count >= 5.0) || Instant::now() > reported_by {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let figure = |name: &str| -> f64 {
        figure_in(&metrics, name).unwrap_or_else(|| panic!("{name} is not in {metrics}"))
    };
    assert!(
        figure("canopy_backup_duration_seconds_count") >= 5.0,
        "{metrics}"
    );
    assert_eq!(figure("canopy_backup_failures_total"), 0.0, "{metrics}");
    assert!(
        figure("canopy_backup_written_bytes_total") > 0.0,
        "{metrics}"
    );
    let last_success = figure("canopy_backup_last_success_timestamp_seconds");
    assert!(
        last_success * 1000.0 > (now_ms() - 60_000) as f64,
        "{metrics}"
    );
    // Destroyed mid-flight: the node, the backups, the data directory.
    kill_9(&mut node);
    let killed_at_ms = now_ms();
    kill_9(&mut scheduled);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    std::fs::remove_dir_all(&data).unwrap();

    let recovery = Instant::now();
    let restored = must_succeed(restore_with_identity(&repo, &identity, &data));
    let restore_seconds = recovery.elapsed().as_secs_f64();
    let summary = last_json_line(&restored);
    let backup_started_ms = summary["backup"]["started_at_ms"].as_u64().unwrap();
    let mut node = start(&data, port);
    wait_healthy(&client, &base).await;
    let rto = recovery.elapsed().as_secs_f64();
    // The restored node answers: the admin signs in, the decisions are there.
    let admin = login(&client, &base, "root").await;
    for decision in &decisions {
        let results = common::results(&client, &base, decision, &admin).await;
        assert!(results.get("error").is_none(), "{results}");
    }
    kill_9(&mut node);

    let log = SegmentLog::open(data.join("votes"), SegmentLogConfig::default()).unwrap();
    let records: Vec<_> = (0..log.partitions())
        .flat_map(|p| log.read_votes(p, 0, usize::MAX).unwrap())
        .collect();
    let stored = positions_by_vote(&records);
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<&Acknowledged> = acknowledged
        .iter()
        .filter(|a| a.at_ms < backup_started_ms)
        .collect();
    assert!(
        before.len() > 50,
        "too little load before the backup: {}",
        before.len()
    );
    for vote in &before {
        assert_eq!(
            stored.get(&vote.vote),
            Some(&vec![vote.position]),
            "a vote acknowledged before the backup began is not stored exactly once"
        );
    }
    let lost: Vec<&Acknowledged> = acknowledged
        .iter()
        .filter(|a| !stored.contains_key(&a.vote))
        .collect();
    for vote in &lost {
        assert!(vote.at_ms >= backup_started_ms);
    }
    eprintln!(
        "drill: {} votes acknowledged, {} before the restored backup ({} kind, {} files); \
         RTO {rto:.2} s (restore {restore_seconds:.2} s, then replay to ready); RPO: {} \
         acknowledged votes lost, all after the backup began, {} ms before the kill",
        acknowledged.len(),
        before.len(),
        summary["backup"]["kind"],
        summary["files"],
        lost.len(),
        killed_at_ms - backup_started_ms
    );
}

/// `canopy <args>` with a passphrase and moto's credentials in the environment.
fn with_bucket(args: &[&str], passphrase: &str) -> Command {
    let endpoint = std::env::var("CANOPY_TEST_S3").expect(
        "CANOPY_TEST_S3 must name an S3-compatible server's endpoint (scripts/test starts one)",
    );
    let mut command = canopy();
    command
        .args(args)
        .env("CANOPY_BACKUP_PASSPHRASE", passphrase)
        .env("AWS_ACCESS_KEY_ID", "canopy-test")
        .env("AWS_SECRET_ACCESS_KEY", "canopy-test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ENDPOINT_URL", endpoint);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_node_comes_back_from_a_bucket_full_then_incremental_and_refuses_what_it_must()
{
    let bucket = std::env::var("CANOPY_TEST_S3_BUCKET").unwrap_or_else(|_| "canopy-test".into());
    let repo = format!("s3://{bucket}/backups-{}", uuid::Uuid::new_v4().simple());
    let passphrase = "a long passphrase for tests";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let database = Database::create();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with(&data, port, &["--database-url", &database.url]);
    wait_healthy(&client, &base).await;
    create_admin_with(&data, &["--database-url", &database.url]);
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("kept")).await;
    let mut voters = Vec::new();
    for n in 0..4 {
        let token = register(&client, &base, &format!("kept-voter-{n}")).await;
        cast(&client, &base, &token, &decision, (n % 2) as u16).await;
        voters.push(token);
    }
    let backup = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--to",
            &repo,
            "--scrypt-work-factor",
            "10",
            "--data-dir",
        ];
        args.push(data.to_str().unwrap());
        args.extend_from_slice(&["--database-url", &database.url]);
        args.extend_from_slice(extra);
        last_json_line(&must_succeed(
            with_bucket(&args, passphrase).output().unwrap(),
        ))
    };
    let full = backup(&[]);
    assert_eq!(full["kind"], "full");
    assert_eq!(full["store"], "postgres");
    // A vote changed and another account after the full backup: the incremental one has them.
    cast(&client, &base, &voters[0], &decision, 1).await;
    register(&client, &base, "after-the-full-backup").await;
    let incremental = backup(&["--incremental"]);
    assert_eq!(incremental["kind"], "incremental");
    assert_eq!(incremental["chain"], full["chain"]);
    assert!(
        incremental["written_bytes"].as_u64() < full["written_bytes"].as_u64(),
        "the incremental backup wrote as much as the full one: {incremental} / {full}"
    );
    let before = common::results(&client, &base, &decision, &admin).await;
    kill_9(&mut node);

    let restored_data = dir.path().join("restored");
    let restore = |data: &Path, database_url: &str, passphrase: &str| {
        with_bucket(
            &[
                "restore",
                "--from",
                &repo,
                "--database-url",
                database_url,
                "--data-dir",
            ],
            passphrase,
        )
        .arg(data)
        .output()
        .unwrap()
    };
    let fresh = Database::create();
    must_refuse(
        restore(&restored_data, &fresh.url, "not the passphrase"),
        "does not open",
        &restored_data,
    );
    // Into the database it came from (rows there): refused, nothing written to the folder.
    must_refuse(
        restore(&restored_data, &database.url, passphrase),
        "already holds rows",
        &restored_data,
    );
    assert!(!restored_data.exists());
    // Into a database a newer Canopy migrated (one migration more): refused by name.
    let newer = Database::create();
    must_succeed(
        canopy()
            .args(["migrate", "--database-url", &newer.url])
            .output()
            .unwrap(),
    );
    common::cluster::psql_in(
        &newer.url,
        "INSERT INTO canopy_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)",
    );
    must_refuse(
        restore(&restored_data, &newer.url, passphrase),
        "restore with the Canopy version that took the backup",
        &restored_data,
    );
    assert!(!restored_data.exists());
    must_refuse(
        restore(&data, &fresh.url, passphrase),
        "is not empty",
        &data,
    );
    let summary = last_json_line(&must_succeed(restore(
        &restored_data,
        &fresh.url,
        passphrase,
    )));
    assert_eq!(summary["backup"]["id"], incremental["id"]);

    let mut node = start_with(&restored_data, port, &["--database-url", &fresh.url]);
    wait_healthy(&client, &base).await;
    let admin = login(&client, &base, "root").await;
    login(&client, &base, "after-the-full-backup").await;
    let after = common::results(&client, &base, &decision, &admin).await;
    assert_eq!(after["options"], before["options"], "{after} / {before}");
    assert_eq!(after["turnout"], before["turnout"], "{after} / {before}");
    kill_9(&mut node);
}

#[test]
fn a_tampered_or_swapped_chunk_fails_the_restore_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let repo = dir.path().join("backups");
    let (identity, recipient) = keygen(dir.path());
    let port = free_port();
    let mut node = start(&data, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !data.join("canopy.db").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    must_succeed(
        canopy()
            .args(["backup", "--recipient", &recipient, "--to"])
            .arg(&repo)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap(),
    );
    kill_9(&mut node);
    let restore = |target: &Path| restore_with_identity(&repo, &identity, target);
    let mut chunks: Vec<PathBuf> = walk(&repo.join("chunks"));
    chunks.sort();
    assert!(chunks.len() >= 2);
    let target = dir.path().join("restored");
    // Two chunks swapped: each opens (the same chain's key) but holds the other's bytes.
    let (first, second) = (chunks[0].clone(), chunks[1].clone());
    let held = dir.path().join("held");
    std::fs::rename(&first, &held).unwrap();
    std::fs::rename(&second, &first).unwrap();
    std::fs::rename(&held, &second).unwrap();
    must_refuse(restore(&target), "holds other bytes", &target);
    assert!(!target.exists());
    std::fs::rename(&first, &held).unwrap();
    std::fs::rename(&second, &first).unwrap();
    std::fs::rename(&held, &second).unwrap();
    // One byte flipped in a sealed chunk.
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    must_refuse(restore(&target), "is damaged", &target);
    assert!(!target.exists());
    bytes[last] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    // Another identity opens nothing.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_identity, _) = keygen(&other);
    let output = restore_with_identity(&repo, &other_identity, &target);
    must_refuse(output, "does not open", &target);
    must_succeed(restore(&target));
    assert!(target.join("canopy.db").is_file());
    assert!(target.join("keys").is_dir());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
