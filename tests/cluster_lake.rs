//! The analytics lake on the cluster, run as an operator would: `canopy worker` processes
//! write one lake in an S3-compatible bucket (moto), each the log partitions its workers
//! read and the tally changes they publish, process 0 the decisions, the record's
//! checkpoints and compaction; a `canopy serve` replica answers SQL over it (HTTP and the
//! PostgreSQL port) and day trends.
//!
//! Through a SIGKILL of a worker, its restart and a rescale 1 → 2 → 1 processes, with the
//! recount of the topic as the oracle: every record of the topic is in `votes` exactly once,
//! per decision, and the newest `tally_changes` row of each cell is the recount's cell.

mod common;

use common::cluster::*;
use common::lake::{lake_env, s3};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_analytics::{LakeLocation, LakeQuery, LakeSql, OutputFormat, render};
use canopy_dataflow::recount;
use canopy_ingest::{KafkaLog, LogRecord};
use canopy_serving::store::MetadataStore;

/// [`Deployment::start`] with the lake's variables.
fn start_workers(
    deployment: &Deployment,
    processes: usize,
    threads: usize,
    run: &str,
    env: &[(String, String)],
) -> Running {
    deployment.start_with_env(processes, threads, run, env)
}

fn start_replica(
    deployment: &Deployment,
    port: u16,
    pg_port: u16,
    env: &[(String, String)],
) -> Child {
    let log = std::fs::File::create(deployment.dir.path().join("serve-lake.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["serve", "--config"])
        .arg(&deployment.config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--pg-listen", &format!("127.0.0.1:{pg_port}")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The rows of a query as CSV lines (header first).
async fn csv(sql: &LakeSql, statement: &str) -> Vec<Vec<String>> {
    let batches = sql
        .query(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let text = String::from_utf8(render(&batches, OutputFormat::Csv).unwrap()).unwrap();
    text.lines()
        .skip(1)
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

/// Per decision: (records in the topic, distinct vote ids among them).
fn expected_votes(records: &[LogRecord]) -> BTreeMap<String, (u64, u64)> {
    let mut ids: BTreeMap<String, (u64, BTreeSet<_>)> = BTreeMap::new();
    for record in records {
        let entry = ids.entry(record.vote.decision_id.to_string()).or_default();
        entry.0 += 1;
        entry.1.insert(record.vote.vote_id);
    }
    ids.into_iter()
        .map(|(decision, (records, distinct))| (decision, (records, distinct.len() as u64)))
        .collect()
}

/// Per decision, as the lake's `votes` counts it: (rows, distinct vote ids).
async fn lake_votes(sql: &LakeSql) -> BTreeMap<String, (u64, u64)> {
    csv(
        sql,
        "SELECT decision_id, COUNT(*), COUNT(DISTINCT vote_id) FROM votes GROUP BY decision_id",
    )
    .await
    .into_iter()
    .map(|row| {
        (
            row[0].clone(),
            (row[1].parse().unwrap(), row[2].parse().unwrap()),
        )
    })
    .collect()
}

/// A tally cell as the lake names it: (decision, option, component).
type Cell = (String, String, String);

/// Per cell: (count, weight) of the recount; empty cells left out.
fn expected_cells(records: &[LogRecord]) -> BTreeMap<Cell, (u64, u64)> {
    let mut cells = BTreeMap::new();
    for (decision, tally) in recount(records, &decisions()) {
        for cell in &tally.cells {
            if cell.count > 0 {
                cells.insert(
                    (
                        decision.to_string(),
                        cell.option.to_string(),
                        cell.component.as_str().to_string(),
                    ),
                    (cell.count, cell.weight_sum),
                );
            }
        }
    }
    cells
}

/// The lake's newest row of each cell (by `as_of_offset`), empty cells left out; rows of
/// one cell at the same position must agree.
async fn lake_cells(sql: &LakeSql) -> BTreeMap<Cell, (u64, u64)> {
    let rows = csv(
        sql,
        "SELECT decision_id, option, component, count, weight_millionths, as_of_offset \
         FROM tally_changes",
    )
    .await;
    let mut newest: HashMap<Cell, (u64, (u64, u64))> = HashMap::new();
    for row in rows {
        let cell = (row[0].clone(), row[1].clone(), row[2].clone());
        let values: (u64, u64) = (row[3].parse().unwrap(), row[4].parse().unwrap());
        let offset: u64 = row[5].parse().unwrap();
        match newest.get(&cell) {
            Some((seen, known)) if *seen == offset => assert_eq!(
                *known, values,
                "two different states of {cell:?} as of the same offset {offset}"
            ),
            Some((seen, _)) if *seen > offset => {}
            _ => {
                newest.insert(cell, (offset, values));
            }
        }
    }
    newest
        .into_iter()
        .filter(|(_, (_, (count, _)))| *count > 0)
        .map(|(cell, (_, values))| (cell, values))
        .collect()
}

/// Waits until the lake holds every record of the topic and the recount's tallies.
async fn wait_for_lake(sql: &LakeSql, log: &KafkaLog, workers: &mut [Child], what: &str) {
    let records = topic_records(log);
    let (votes, cells) = (expected_votes(&records), expected_cells(&records));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (seen_votes, seen_cells) = (lake_votes(sql).await, lake_cells(sql).await);
        // More rows than the topic has records is a row written twice: never wait it out.
        for (decision, &(rows, _)) in &seen_votes {
            let wanted = votes.get(decision).map_or(0, |v| v.0);
            assert!(
                rows <= wanted,
                "{what}: {rows} votes rows of {decision}, the topic has {wanted}"
            );
        }
        if seen_votes == votes && seen_cells == cells {
            return;
        }
        for worker in workers.iter_mut() {
            if let Some(status) = worker.try_wait().unwrap() {
                panic!("{what}: a worker exited ({status}) before the lake caught up");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the lake did not catch up with the topic:\n votes {seen_votes:?}\n \
             wanted {votes:?}\n cells {seen_cells:?}\n wanted {cells:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_writes_one_lake_exactly_once_and_a_replica_answers_sql() {
    let topic = format!("canopy-lake-{}", uuid::Uuid::new_v4().simple());
    let log = Arc::new(KafkaLog::connect(test_kafka_config(&topic)).unwrap());
    let deployment = Deployment::new(&topic);
    register_decisions(&deployment.store().await).await;
    create_admin_in(&deployment);
    let url = s3::s3_url();
    let env = lake_env(&url);
    let sql = LakeSql::open(LakeLocation::s3(&url, s3::s3_options()).unwrap())
        .await
        .unwrap();

    let first = votes(11, 1200, &[]);
    produce(&log, &first);

    // One process writes all of it.
    let mut workers = start_workers(&deployment, 1, 2, "a", &env);
    wait_until_caught_up(&log, &deployment.views(), &mut workers, "1 process");
    wait_for_lake(&sql, &log, &mut workers, "1 process").await;
    stop(&mut workers);

    // Two processes: each writes its partitions and the changes it publishes, continuing
    // where the single process's files end.
    produce(&log, &votes(12, 600, &first));
    let mut workers = start_workers(&deployment, 2, 2, "b", &env);
    wait_until_caught_up(&log, &deployment.views(), &mut workers, "2 processes");
    wait_for_lake(&sql, &log, &mut workers, "2 processes").await;

    // SIGKILL one process while votes come in: whatever it had not flushed, and whatever
    // its peer had not, is written after the restart, and nothing twice.
    let producer = {
        let log = Arc::clone(&log);
        let earlier = first.clone();
        std::thread::spawn(move || produce(&log, &votes(13, 2000, &earlier)))
    };
    std::thread::sleep(Duration::from_millis(400));
    common::kill_9(&mut workers[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers[0].try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the surviving process did not stop after its peer was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    producer.join().unwrap();
    let mut workers = start_workers(&deployment, 2, 2, "c", &env);
    wait_until_caught_up(&log, &deployment.views(), &mut workers, "after SIGKILL");
    wait_for_lake(&sql, &log, &mut workers, "after SIGKILL").await;
    stop(&mut workers);

    // Back to one process: it takes over the other's partitions and decisions.
    produce(&log, &votes(14, 500, &first));
    let mut workers = start_workers(&deployment, 1, 2, "d", &env);
    wait_until_caught_up(&log, &deployment.views(), &mut workers, "back to 1 process");
    wait_for_lake(&sql, &log, &mut workers, "back to 1 process").await;

    // Process 1 numbered its files in a sequence of its own, and process 0 (compacting
    // every few flushes) merges them too.
    let location = LakeLocation::s3(&url, s3::s3_options()).unwrap();
    let merged = |key: &String| {
        let name = key.rsplit('/').next().unwrap();
        let mut parts = name.trim_end_matches(".parquet").split('-').skip(1);
        let (space, first, last) = (parts.next(), parts.next(), parts.next());
        space == Some("s1") && first != last
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listing = location.clone();
        let tally_files = tokio::task::spawn_blocking(move || listing.table_files("tally_changes"))
            .await
            .unwrap()
            .unwrap();
        let of = |space: &str| {
            tally_files
                .iter()
                .filter(|key| key.contains(&format!("/part-{space}-")))
                .count()
        };
        assert!(
            of("s1") > 0,
            "no tally_changes file of process 1: {tally_files:?}"
        );
        assert!(
            of("s") > 0,
            "no tally_changes file of process 0: {tally_files:?}"
        );
        if of("s1") < 2 || tally_files.iter().any(merged) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "process 0 merged none of process 1's files: {tally_files:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Only process 0 writes the record's checkpoints: each once, each one the store holds.
    let store = deployment.store().await;
    for decision in decisions() {
        let stored: BTreeSet<String> = store
            .checkpoints(decision.id)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.tree_size.to_string())
            .collect();
        let in_lake = csv(
            &sql,
            &format!(
                "SELECT tree_size, COUNT(*) FROM checkpoints WHERE decision_id = '{}' \
                 GROUP BY tree_size",
                decision.id
            ),
        )
        .await;
        assert!(
            !in_lake.is_empty(),
            "no checkpoint of {} in the lake",
            decision.id
        );
        for row in in_lake {
            assert_eq!(
                row[1], "1",
                "checkpoint {} of {} twice",
                row[0], decision.id
            );
            assert!(
                stored.contains(&row[0]),
                "checkpoint {} not in the store",
                row[0]
            );
        }
    }

    // A replica with no engine answers over the same lake: HTTP as an admin, and psql.
    let (port, pg_port) = (common::free_port(), common::free_port());
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let _replica = Running::new(vec![start_replica(&deployment, port, pg_port, &env)]);
    common::wait_healthy(&client, &base).await;
    let admin = common::login(&client, &base, "root").await;
    let records = topic_records(&log);
    let ask = |statement: String| {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        async move { common::lake::sql_csv(&client, &base, &admin, &statement).await }
    };
    let total = ask("SELECT COUNT(*) AS n FROM votes".into()).await;
    assert_eq!(total, format!("n\n{}\n", records.len()));
    let distinct_positions = ask(
        "SELECT COUNT(*) AS n FROM (SELECT DISTINCT log_partition, log_offset FROM votes)".into(),
    )
    .await;
    assert_eq!(distinct_positions, format!("n\n{}\n", records.len()));
    for (decision, (rows, first_deliveries)) in expected_votes(&records) {
        let answer = ask(format!(
            "SELECT COUNT(*) AS n, COUNT(DISTINCT vote_id) AS d FROM votes \
             WHERE decision_id = '{decision}'"
        ))
        .await;
        assert_eq!(
            answer,
            format!("n,d\n{rows},{first_deliveries}\n"),
            "{decision}"
        );
    }
    // New files show in the replica's next query: more votes, another flush.
    produce(&log, &votes(15, 300, &first));
    wait_until_caught_up(&log, &deployment.views(), &mut workers, "more votes");
    wait_for_lake(&sql, &log, &mut workers, "more votes").await;
    let records = topic_records(&log);
    let total = ask("SELECT COUNT(*) AS n FROM votes".into()).await;
    assert_eq!(
        total,
        format!("n\n{}\n", records.len()),
        "the replica missed new files"
    );

    // Day trends of a decision, from the lake.
    let decision = decisions()[0].id;
    let trends = common::get_json(
        &client,
        format!("{base}/api/v1/data/historical-trends?decision_id={decision}&bucket=day"),
        &admin,
    )
    .await;
    assert_eq!(trends["source"], "lake", "{trends}");
    let points: Vec<&serde_json::Value> = match &trends["points"] {
        serde_json::Value::Array(points) => points.iter().collect(),
        serde_json::Value::Object(points) => points.values().collect(),
        other => panic!("points: {other}"),
    };
    let in_trends: u64 = points.iter().filter_map(|p| p["votes"].as_u64()).sum();
    assert!(in_trends > 0, "day trends of {decision}: {trends}");

    // The PostgreSQL port, with an SQL token.
    let token: serde_json::Value = client
        .post(format!("{base}/api/v1/analytics/sql-tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "cluster lake test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = token["token"].as_str().expect("an SQL token").to_string();
    let psql = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={pg_port} user=root dbname=canopy sslmode=disable"
        ))
        .args(["-At", "-c", "SELECT COUNT(*) FROM votes"])
        .env("PGPASSWORD", &secret)
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout).trim(),
        records.len().to_string()
    );
    stop(&mut workers);
}
