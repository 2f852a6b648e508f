//! The cluster, run as an operator would: `canopy worker` processes over a Kafka topic
//! (tansu), PostgreSQL and Redis, with the recount of the topic as the oracle.
//!
//! - A worker process killed with SIGKILL mid-stream takes its cluster down (its peer exits
//!   on its own); restarted, the cluster resumes from its checkpoint and nothing is lost or
//!   counted twice.
//! - Rescaling from 1 process to 2 and back resumes from the checkpoint each time.
//! - One process and a 2-process × 2-thread cluster give identical tallies, checkpoints and
//!   Merkle roots.

mod common;

use common::cluster::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_dataflow::{Tally, ViewStore, recount, recount_trees};
use canopy_ingest::{EntryLog, KafkaLog};
use canopy_schemas::*;
use canopy_serving::store::MetadataStore;

/// Tallies equal the recount; every stored checkpoint is a prefix of the oracle tree, and
/// (after the time-based cut) the latest covers all of it. Returns what was compared.
async fn check(
    deployment: &Deployment,
    log: &KafkaLog,
    what: &str,
) -> (
    BTreeMap<DecisionId, Tally>,
    BTreeMap<DecisionId, (i64, String)>,
) {
    let records = topic_records(log);
    let expected = recount(&records, &decisions());
    let views = deployment.views();
    let mut tallies = BTreeMap::new();
    for decision in decisions() {
        let view = views.get(decision.id).unwrap();
        let as_of = view.as_ref().map(|v| v.as_of);
        let tally = view.map(|v| v.tally);
        assert_eq!(
            tally.as_ref(),
            expected.get(&decision.id),
            "{what}: decision {} (as of {as_of:?}, log ends {:?}) differs from the recount",
            decision.id,
            (0..PARTITIONS)
                .map(|p| log.end_offset(p).unwrap())
                .collect::<Vec<_>>()
        );
        tallies.insert(decision.id, tally.unwrap());
    }
    let trees = recount_trees(&records);
    let store = deployment.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut latest = BTreeMap::new();
    for (decision, tree) in &trees {
        loop {
            let checkpoints = store.checkpoints(*decision).await.unwrap();
            for checkpoint in &checkpoints {
                let root = tree.root_at(checkpoint.tree_size as u64).unwrap();
                assert_eq!(
                    checkpoint.root,
                    hex::encode(root),
                    "{what}: checkpoint {} of {decision} is not a prefix of the oracle tree",
                    checkpoint.tree_size
                );
            }
            if let Some(last) = checkpoints.last()
                && last.tree_size as u64 == tree.size()
            {
                latest.insert(*decision, (last.tree_size, last.root.clone()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no checkpoint of {decision} covers all {} leaves",
                tree.size()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (tallies, latest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_sigkill_and_rescaling_and_equals_one_process() {
    let topic = format!("canopy-cluster-{}", uuid::Uuid::new_v4().simple());
    let log = Arc::new(KafkaLog::connect(test_kafka_config(&topic)).unwrap());
    let cluster = Deployment::new(&topic);
    register_decisions(&cluster.store().await).await;

    let first = votes(1, 1500, &[]);
    produce(&log, &first);

    // One process of two threads.
    let mut workers = cluster.start(1, 2, "a");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "1 process");
    check(&cluster, &log, "1 process").await;
    stop(&mut workers);

    // Rescaled to two processes while votes kept coming; it resumes from the checkpoint.
    produce(&log, &votes(2, 600, &first));
    let mut workers = cluster.start(2, 2, "b");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "2 processes");
    for process in 0..2 {
        assert!(
            cluster
                .log("b", process)
                .contains("resuming from an engine checkpoint"),
            "process {process} of the rescaled cluster replayed instead of resuming:\n{}",
            cluster.log("b", process)
        );
    }

    // SIGKILL one process while votes are produced: the other stops on its own.
    let producer = {
        let log = Arc::clone(&log);
        let earlier = first.clone();
        std::thread::spawn(move || produce(&log, &votes(3, 2000, &earlier)))
    };
    std::thread::sleep(Duration::from_millis(300));
    common::kill_9(&mut workers[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = workers[0].try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving process did not stop after its peer was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the survivor must report the failure");
    producer.join().unwrap();

    // Restarted, the cluster resumes from its checkpoint: nothing lost, nothing doubled.
    let mut workers = cluster.start(2, 2, "c");
    wait_until_caught_up(
        &log,
        &cluster.views(),
        &mut workers,
        "restarted after SIGKILL",
    );
    // The views may have been caught up already (the killed cluster took every vote before
    // it died), so the restarted process may not have written its first lines yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .log("c", 0)
        .contains("resuming from an engine checkpoint")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted cluster replayed instead of resuming:\n{}",
            cluster.log("c", 0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&cluster, &log, "restarted after SIGKILL").await;
    stop(&mut workers);

    // And back to one process.
    produce(&log, &votes(4, 500, &first));
    let mut workers = cluster.start(1, 2, "d");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "back to 1 process");
    let (cluster_tallies, cluster_checkpoints) = check(&cluster, &log, "back to 1 process").await;
    stop(&mut workers);

    // The same topic from scratch, through one single-threaded process and through a
    // 2-process × 2-thread cluster, gives the same tallies and the same checkpoints.
    for (processes, threads) in [(1, 1), (2, 2)] {
        let what = format!("{processes} × {threads} from scratch");
        let fresh = Deployment::new(&topic);
        register_decisions(&fresh.store().await).await;
        let mut workers = fresh.start(processes, threads, "fresh");
        wait_until_caught_up(&log, &fresh.views(), &mut workers, &what);
        let (tallies, checkpoints) = check(&fresh, &log, &what).await;
        stop(&mut workers);
        assert_eq!(tallies, cluster_tallies, "{what}");
        assert_eq!(checkpoints, cluster_checkpoints, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicas_share_results_and_survive_the_loss_of_one() {
    use serde_json::Value;
    let topic = format!("canopy-serve-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    let log = KafkaLog::connect(test_kafka_config(&topic)).unwrap();
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(1, 2, "w");
    // Replica A makes the shared keys; B starts once they exist.
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = reqwest::Client::new();
    let mut replica_a = Running(vec![start_serve(&deployment, port_a, "a")]);
    common::wait_healthy(&client, &base_a).await;
    let mut replica_b = Running(vec![start_serve(&deployment, port_b, "b")]);
    common::wait_healthy(&client, &base_b).await;

    let admin = common::login(&client, &base_a, "root").await;
    let decision = common::create_decision(
        &client,
        &base_a,
        &admin,
        common::yes_or_no("Restore the dunes?"),
    )
    .await;
    let mut voters = Vec::new();
    for n in 0..6 {
        let name = format!("serve-voter{n}");
        common::sign_up(&client, &base_b, &name).await;
        voters.push(common::login(&client, &base_a, &name).await);
    }
    // A vote cast on one replica is in the results read on the other (read your writes).
    for (n, token) in voters.iter().enumerate() {
        let (cast_on, read_on) = if n % 2 == 0 {
            (&base_a, &base_b)
        } else {
            (&base_b, &base_a)
        };
        let receipt = common::cast(&client, cast_on, token, &decision, (n % 2) as u16).await;
        let offset = receipt["position"]["offset"].as_u64().unwrap();
        let results: Value = common::get_json(
            &client,
            format!("{read_on}/api/v1/voting/decision/{decision}/results?min_offset={offset}"),
            token,
        )
        .await;
        assert!(
            results["as_of"]["offset"]
                .as_u64()
                .is_some_and(|seen| seen > offset),
            "a vote cast on one replica is missing from the other's results: {results}"
        );
    }

    // Replica A is lost; B keeps answering, and what it acknowledges is counted.
    common::kill_9(&mut replica_a[0]);
    for (n, token) in voters.iter().enumerate() {
        common::cast(&client, &base_b, token, &decision, ((n + 1) % 2) as u16).await;
    }
    wait_until_caught_up(
        &log,
        &deployment.views(),
        &mut workers,
        "after losing a replica",
    );
    let records = topic_records(&log);
    assert_eq!(
        records.len(),
        12,
        "every acknowledged vote is in the topic once"
    );
    let store = deployment.store().await;
    let expected = recount(&records, &store.decisions().await.unwrap());
    let id = DecisionId::from(uuid::Uuid::parse_str(&decision).unwrap());
    let results = common::results(&client, &base_b, &decision, &voters[0]).await;
    assert_eq!(results["turnout"], expected[&id].turnout, "{results}");
    assert_eq!(results["turnout"], 6, "{results}");
    // A replica reads the record from the record store's tiles: a leaf that is in no
    // decision's log is not found (not "not here").
    let response = client
        .get(format!(
            "{base_b}/api/v1/audit/decisions/{decision}/proof?leaf={}",
            "00".repeat(32)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    common::kill_9(&mut replica_b[0]);
    stop(&mut workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_rate_limits_and_erasures() {
    let topic = format!("canopy-share-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = reqwest::Client::new();
    // 4 requests/s per user, bursts of 8, for the whole cluster.
    let _replica_a = Running(vec![start_serve_with_rate(&deployment, port_a, "a", 4.0)]);
    common::wait_healthy(&client, &base_a).await;
    let _replica_b = Running(vec![start_serve_with_rate(&deployment, port_b, "b", 4.0)]);
    common::wait_healthy(&client, &base_b).await;
    // Both have counted each other (heartbeats every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let admin = common::login(&client, &base_a, "root").await;
    let decision = common::create_decision(
        &client,
        &base_a,
        &admin,
        common::yes_or_no("Share the limits?"),
    )
    .await;
    let mut tokens = Vec::new();
    for name in ["share-reader", "share-voter"] {
        common::sign_up(&client, &base_b, name).await;
        tokens.push(common::login(&client, &base_a, name).await);
    }
    let (reader, voter) = (&tokens[0], &tokens[1]);

    // A user spreading requests over both replicas gets the cluster's burst, not twice it.
    let mut accepted = 0;
    for n in 0..24 {
        let base = if n % 2 == 0 { &base_a } else { &base_b };
        let status = client
            .get(format!("{base}/api/v1/voting/active-decisions"))
            .bearer_auth(reader)
            .send()
            .await
            .unwrap()
            .status();
        match status.as_u16() {
            200 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (6..=10).contains(&accepted),
        "{accepted} of 24 requests accepted; the cluster's burst is 8 (16 if each replica kept all of it)"
    );

    // An erasure on A reaches B's caches: B no longer takes the erased account's votes.
    let cast_on_b = || common::cast(&client, &base_b, voter, &decision, 0);
    let before = common::commitment(&cast_on_b().await);
    assert_eq!(
        common::commitment(&cast_on_b().await),
        before,
        "one salt per voter"
    );
    let (status, body) =
        common::erase_voter(&client, &base_a, &admin, &common::subject(voter)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, refusal) = common::try_cast(&client, &base_b, voter, &decision, 0)
        .await
        .unwrap();
    assert_eq!(
        status, 401,
        "replica B still takes the erased account's votes: {refusal}"
    );
}

/// The record from any replica: proofs are answered from the record store's tiles (the
/// workers write them), before and after a worker is SIGKILLed and the cluster restarted;
/// a consistency proof across the restart verifies; the tiles answer under the spec's paths
/// and `canopy verify --tiles` checks a vote against them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_proves_every_vote_from_tiles_across_a_worker_sigkill() {
    use serde_json::Value;
    let topic = format!("canopy-tiles-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(2, 1, "t1");
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let bases = [
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    ];
    let client = reqwest::Client::new();
    let _replica_a = Running(vec![start_serve(&deployment, port_a, "ta")]);
    common::wait_healthy(&client, &bases[0]).await;
    let _replica_b = Running(vec![start_serve(&deployment, port_b, "tb")]);
    common::wait_healthy(&client, &bases[1]).await;
    let admin = common::login(&client, &bases[0], "root").await;
    let decision = common::create_decision(
        &client,
        &bases[0],
        &admin,
        common::yes_or_no("Prove it anywhere?"),
    )
    .await;
    let mut voters = Vec::new();
    for n in 0..4 {
        let name = format!("tile-voter{n}");
        common::sign_up(&client, &bases[n % 2], &name).await;
        voters.push(common::login(&client, &bases[n % 2], &name).await);
    }
    let key: Value =
        common::get_public_json(&client, format!("{}/api/v1/audit/key", bases[1])).await;
    let key = key["key"].as_str().unwrap().to_string();
    let files = tempfile::tempdir().unwrap();

    // Votes through both replicas; each proof, asked of the other replica, verifies.
    let mut leaves = Vec::new();
    for n in 0..8 {
        let receipt = common::cast(
            &client,
            &bases[n % 2],
            &voters[n % 4],
            &decision,
            (n % 2) as u16,
        )
        .await;
        leaves.push(receipt["leaf_hash"].as_str().unwrap().to_string());
    }
    let mut before = None;
    for (n, leaf) in leaves.iter().enumerate() {
        let proof = proof_from_replica(&client, &bases[(n + 1) % 2], &decision, leaf).await;
        verify_proof(files.path(), &proof, &key);
        before = Some(proof);
    }
    let before = before.unwrap();
    let earlier_note = files.path().join("earlier.note");
    std::fs::write(&earlier_note, before["checkpoint"].as_str().unwrap()).unwrap();
    let earlier_size = before["tree_size"].as_u64().unwrap();

    // A worker is SIGKILLed; its peer stops; the cluster is restarted and votes go on.
    common::kill_9(&mut workers[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers[0].try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the surviving worker did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut workers = deployment.start(2, 1, "t2");
    for n in 0..6 {
        let receipt = common::cast(
            &client,
            &bases[n % 2],
            &voters[n % 4],
            &decision,
            (n % 2) as u16,
        )
        .await;
        leaves.push(receipt["leaf_hash"].as_str().unwrap().to_string());
    }
    let mut after = None;
    for (n, leaf) in leaves.iter().enumerate() {
        let proof = proof_from_replica(&client, &bases[n % 2], &decision, leaf).await;
        verify_proof(files.path(), &proof, &key);
        after = Some(proof);
    }
    let after = after.unwrap();
    let later_size = after["tree_size"].as_u64().unwrap();
    assert_eq!(later_size, 14, "every acknowledged vote is a leaf once");

    // The record only grew across the restart: a replica's consistency proof says so.
    let later = files.path().join("later.json");
    std::fs::write(&later, after.to_string()).unwrap();
    let (status, verdict) = canopy_line(&[
        "verify",
        later.to_str().unwrap(),
        "--key",
        &key,
        "--previous",
        earlier_note.to_str().unwrap(),
        "--node",
        &bases[0],
    ]);
    assert_eq!(status, 0, "{verdict}");
    assert!(
        verdict.contains(&format!("+consistency({earlier_size}->{later_size})")),
        "{verdict}"
    );

    // The tiles themselves, under the spec's paths, from a replica; and checked from them.
    let tlog = format!("{}/api/v1/audit/decisions/{decision}/tlog", bases[1]);
    let note = client
        .get(format!("{tlog}/checkpoint"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(note.lines().nth(1), Some("14"), "{note}");
    let tile = client
        .get(format!("{tlog}/tile/0/000.p/14"))
        .send()
        .await
        .unwrap();
    assert_eq!(tile.status(), 200);
    assert_eq!(tile.bytes().await.unwrap().len(), 14 * 32);
    let bad = client
        .get(format!("{tlog}/tile/0/14"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let (status, verdict) = canopy_line(&[
        "verify",
        "--tiles",
        &format!("{tlog}/"),
        "--decision",
        &decision,
        "--leaf",
        &leaves[3],
        "--key",
        &key,
    ]);
    assert_eq!(status, 0, "{verdict}");
    assert!(
        verdict.contains("index=3 size=14 from tiles +entry"),
        "{verdict}"
    );

    // What a proof from a replica costs once its tiles are cached (a debug build).
    let mut took = Vec::new();
    for n in 0..200 {
        let leaf = &leaves[n % leaves.len()];
        let started = Instant::now();
        let response = client
            .get(format!(
                "{}/api/v1/audit/decisions/{decision}/proof?leaf={leaf}",
                bases[n % 2]
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "proofs from replicas: p50 {:?}, p99 {:?} (200 requests, 14 leaves, debug build)",
        took[100], took[197]
    );
    stop(&mut workers);
}
