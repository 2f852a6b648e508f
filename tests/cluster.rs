//! The cluster, run as an operator would: `canopy worker` processes over a Kafka topic
//! (tansu), PostgreSQL and Redis, with the recount of the topic as the oracle.
//!
//! - A worker process killed with SIGKILL mid-stream takes its cluster down (its peer exits
//!   on its own); restarted, the cluster resumes from its checkpoint and nothing is lost or
//!   counted twice.
//! - Rescaling from 1 process to 2 and back resumes from the checkpoint each time.
//! - One process and a 2-process × 2-thread cluster give identical tallies, checkpoints and
//!   Merkle roots.
//! - A decision closing on a cluster (two workers, two serve replicas casting until the
//!   end, votes produced straight to the topic after the close as a replica with a slow
//!   clock would): the signed final result equals a recount of the votes before the close,
//!   its checkpoint is exactly their tree and the close, and `canopy verify --tally`
//!   passes on it and fails for an altered statement or a dropped leaf.
//! - The whole system at once (votes and readings through two serve replicas, the record's
//!   tiles and the lake in an S3 bucket on moto): every receipt proves from a replica, the
//!   features equal the recomputation and the lake holds every acknowledged vote and reading
//!   once, across a rescale 1 → 2 → 1 processes and a SIGKILL of a worker.

mod common;

use common::cluster::*;
use common::lake::{lake_and_tiles_env, s3, sql_rows};
use common::sensors::{
    LakeWindow, REGIONS, SENSORS_PER_REGION, check_features, check_trends, close, final_windows,
    phase, post_readings, register_sensors, sensor_log, sensor_views, wait_until_sensors_caught_up,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_dataflow::{Tally, ViewStore, recount, recount_trees};
use canopy_ingest::{EntryLog, KafkaLog, Positioned};
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
    let client = canopy_testkit::http_client();
    let mut replica_a = Running::new(vec![start_serve(&deployment, port_a, "a")]);
    common::wait_healthy(&client, &base_a).await;
    let mut replica_b = Running::new(vec![start_serve(&deployment, port_b, "b")]);
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
    let client = canopy_testkit::http_client();
    // 4 requests/s per user, bursts of 8, for the whole cluster.
    let _replica_a = Running::new(vec![start_serve_with_rate(&deployment, port_a, "a", 4.0)]);
    common::wait_healthy(&client, &base_a).await;
    let _replica_b = Running::new(vec![start_serve_with_rate(&deployment, port_b, "b", 4.0)]);
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
    let client = canopy_testkit::http_client();
    let _replica_a = Running::new(vec![start_serve(&deployment, port_a, "ta")]);
    common::wait_healthy(&client, &bases[0]).await;
    let _replica_b = Running::new(vec![start_serve(&deployment, port_b, "tb")]);
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

/// A vote the API acknowledged (201): who cast what, and the receipt.
struct AcknowledgedVote {
    decision: String,
    voter: usize,
    vote_id: String,
    option: u16,
    position: canopy_ingest::Position,
    leaf_hash: String,
}

/// Everything the replicas acknowledged: the oracle of what the record and the lake hold.
#[derive(Default)]
struct Acknowledged {
    votes: Vec<AcknowledgedVote>,
    /// Where the sensor log holds each accepted reading, as the answers said.
    readings: Vec<canopy_ingest::Position>,
}

/// The test's accounts and the decisions they vote in.
struct Participants {
    admin: String,
    voters: Vec<String>,
    decisions: Vec<String>,
}

/// One step's traffic through both replicas at once: `readings` posted a minute's worth
/// at a time, alternately to each replica (in time order, so few readings are late), while
/// `votes` votes are cast on both, by the voters in turn, in both decisions.
async fn traffic(
    client: &reqwest::Client,
    bases: &[String; 2],
    who: &Participants,
    readings: &[serde_json::Value],
    votes: usize,
    step: usize,
    acknowledged: &mut Acknowledged,
) {
    let posting = async {
        let per_minute = 2 * REGIONS.len() * SENSORS_PER_REGION;
        let mut positions = Vec::new();
        for (n, minute) in readings.chunks(per_minute).enumerate() {
            let base = &bases[(n + step) % 2];
            positions.extend(post_readings(client, base, &who.admin, minute).await);
        }
        positions
    };
    let casting = async {
        let mut cast = Vec::new();
        for n in 0..votes {
            let voter = (n + step) % who.voters.len();
            let decision = &who.decisions[n % who.decisions.len()];
            let option = ((n / 2 + step) % 2) as u16;
            let base = &bases[(n + n / 2 + step) % 2];
            let receipt = common::cast(client, base, &who.voters[voter], decision, option).await;
            cast.push(AcknowledgedVote {
                decision: decision.clone(),
                voter,
                vote_id: receipt["vote_id"].as_str().unwrap().to_string(),
                option,
                position: serde_json::from_value(receipt["position"].clone()).unwrap(),
                leaf_hash: receipt["leaf_hash"].as_str().unwrap().to_string(),
            });
        }
        cast
    };
    let (positions, cast) = tokio::join!(posting, casting);
    acknowledged.readings.extend(positions);
    acknowledged.votes.extend(cast);
}

/// Waits until the tallies and the features are as of the end of both topics.
fn wait_until_everything_caught_up(
    deployment: &Deployment,
    topic: &str,
    workers: &mut Running,
    what: &str,
) {
    let votes = KafkaLog::connect(test_kafka_config(topic)).unwrap();
    wait_until_caught_up(&votes, &deployment.views(), workers, what);
    let readings = sensor_log(topic);
    wait_until_sensors_caught_up(&readings, &sensor_views(deployment), workers, what);
}

/// Every acknowledged vote's proof, asked of the replicas in turn (shifted by `step`),
/// verifies with `canopy verify`; each decision's last proof is of a tree of exactly its
/// acknowledged votes. Returns that last proof per decision.
async fn verify_every_receipt(
    client: &reqwest::Client,
    bases: &[String; 2],
    files: &std::path::Path,
    key: &str,
    acknowledged: &Acknowledged,
    step: usize,
) -> BTreeMap<String, serde_json::Value> {
    let mut last = BTreeMap::new();
    for (n, vote) in acknowledged.votes.iter().enumerate() {
        let base = &bases[(n + step + 1) % 2];
        let proof = proof_from_replica(client, base, &vote.decision, &vote.leaf_hash).await;
        verify_proof(files, &proof, key);
        last.insert(vote.decision.clone(), proof);
    }
    for (decision, proof) in &last {
        let cast = acknowledged
            .votes
            .iter()
            .filter(|vote| &vote.decision == decision)
            .count();
        assert_eq!(
            proof["tree_size"].as_u64(),
            Some(cast as u64),
            "step {step}: every acknowledged vote of {decision} is a leaf once"
        );
    }
    last
}

/// Waits until the lake, asked through a replica, holds as many votes and readings as were
/// acknowledged and as many windows as are final; more is a row written twice, which is
/// never waited out.
async fn wait_for_lake(
    client: &reqwest::Client,
    base: &str,
    analyst: &str,
    wanted: [usize; 3],
    workers: &mut Running,
) {
    let tables = ["votes", "sensor_readings", "window_features"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = [0; 3];
        for (n, table) in tables.iter().enumerate() {
            let statement = format!("SELECT COUNT(*) FROM {table}");
            let rows = sql_rows(client, base, analyst, &statement).await;
            seen[n] = rows[0][0].parse().unwrap();
            assert!(
                seen[n] <= wanted[n],
                "{} rows in {table}, {} wanted: a row written twice",
                seen[n],
                wanted[n]
            );
        }
        if seen == wanted {
            return;
        }
        workers.assert_none_exited("before the lake caught up");
        assert!(
            Instant::now() < deadline,
            "the lake did not catch up: {seen:?} rows in {tables:?}, {wanted:?} wanted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The whole system on a cluster, as an operator runs it: the record's tiles and the lake
/// in an S3 bucket (moto), two serve replicas taking readings and votes at once, the
/// workers rescaled 1 → 2 processes, one of them SIGKILLed mid-traffic and the cluster
/// restarted, then back to 1. At every step each receipt's proof, from a replica, verifies
/// with `canopy verify` and the features equal the recomputation over the sensor topic; a
/// consistency proof across the rescale verifies; at the end SQL on a replica counts every
/// acknowledged vote and reading once and holds each final window once, as recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_system_survives_sigkill_and_rescaling_on_a_cluster() {
    let started = Instant::now();
    let topic = format!("canopy-whole-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    create_account_in(&deployment, "analyst", "analyst");
    let env = lake_and_tiles_env(&s3::s3_url());
    let readings_log = sensor_log(&topic);
    let features = sensor_views(&deployment);
    let mut workers = deployment.start_with_env(1, 2, "a", &env);
    let ports = [common::free_port(), common::free_port()];
    let bases = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let client = canopy_testkit::http_client();
    // Replica A makes the shared keys; B starts once they exist.
    let mut replicas = Running::new(Vec::new());
    for (n, name) in ["wa", "wb"].into_iter().enumerate() {
        replicas.push(start_serve_with_env(&deployment, ports[n], name, &env));
        common::wait_healthy(&client, &bases[n]).await;
    }

    let admin = common::login(&client, &bases[0], "root").await;
    register_sensors(&client, &bases[0], &admin).await;
    let registered = Instant::now();
    let mut decisions = Vec::new();
    for title in ["Plant the square?", "Close the bridge to cars?"] {
        let body = common::yes_or_no(title);
        decisions.push(common::create_decision(&client, &bases[0], &admin, body).await);
    }
    let mut voters = Vec::new();
    for n in 0..4 {
        let name = format!("whole-voter{n}");
        common::sign_up(&client, &bases[n % 2], &name).await;
        voters.push(common::login(&client, &bases[(n + 1) % 2], &name).await);
    }
    let who = Participants {
        admin,
        voters,
        decisions,
    };
    let analyst = common::login(&client, &bases[1], "analyst").await;
    let key: serde_json::Value =
        common::get_public_json(&client, format!("{}/api/v1/audit/key", bases[1])).await;
    let key = key["key"].as_str().unwrap().to_string();
    let files = tempfile::tempdir().unwrap();
    // Replica B learns the sensors registered through A from the store within a second.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(registered.elapsed())).await;
    let now = canopy_schemas::clock::now_millis();
    let hour = (now - 4 * 3_600_000) / 3_600_000 * 3_600_000;
    let mut acknowledged = Acknowledged::default();
    let steps = [
        "1 process",
        "rescaled to 2 processes",
        "restarted after SIGKILL",
        "back to 1 process",
    ];

    // One process of two threads.
    let readings = phase(hour, (0, 15), false, (0, 0), 1);
    traffic(&client, &bases, &who, &readings, 6, 0, &mut acknowledged).await;
    wait_until_everything_caught_up(&deployment, &topic, &mut workers, steps[0]);
    let earlier = verify_every_receipt(&client, &bases, files.path(), &key, &acknowledged, 0).await;
    check_features(&readings_log, &features, steps[0]);
    stop(&mut workers);

    // Two processes: they resume from the single process's checkpoint.
    let mut workers = deployment.start_with_env(2, 1, "b", &env);
    let readings = phase(hour, (15, 30), false, (2, 2), 2);
    traffic(&client, &bases, &who, &readings, 6, 1, &mut acknowledged).await;
    wait_until_everything_caught_up(&deployment, &topic, &mut workers, steps[1]);
    verify_every_receipt(&client, &bases, files.path(), &key, &acknowledged, 1).await;
    check_features(&readings_log, &features, steps[1]);

    // SIGKILL one process as soon as the replicas have acknowledged a burst of readings
    // and votes (the workers are still taking it in), and more comes in while its peer
    // stops on its own: the replicas go on acknowledging, the restarted cluster takes it all.
    let readings = phase(hour, (30, 38), false, (0, 0), 3);
    traffic(&client, &bases, &who, &readings, 3, 2, &mut acknowledged).await;
    common::kill_9(&mut workers[1]);
    let readings = phase(hour, (38, 45), false, (0, 0), 5);
    traffic(&client, &bases, &who, &readings, 3, 3, &mut acknowledged).await;
    wait_for_exit(&mut workers[0], "after SIGKILL");
    let mut workers = deployment.start_with_env(2, 1, "c", &env);
    wait_until_everything_caught_up(&deployment, &topic, &mut workers, steps[2]);
    verify_every_receipt(&client, &bases, files.path(), &key, &acknowledged, 2).await;
    check_features(&readings_log, &features, steps[2]);
    stop(&mut workers);

    // Back to one process; the last readings include some too late for any window.
    let mut workers = deployment.start_with_env(1, 2, "d", &env);
    let readings = phase(hour, (45, 60), false, (2, 70), 4);
    traffic(&client, &bases, &who, &readings, 6, 3, &mut acknowledged).await;
    wait_until_everything_caught_up(&deployment, &topic, &mut workers, steps[3]);
    let later = verify_every_receipt(&client, &bases, files.path(), &key, &acknowledged, 3).await;
    let compared = check_features(&readings_log, &features, steps[3]);
    assert!(compared > 300, "only {compared} windows compared");
    check_trends(&client, &bases[0], &who.admin, &readings_log, "north").await;
    check_trends(&client, &bases[1], &who.admin, &readings_log, "hot").await;

    // The record only grew across the rescale and the SIGKILL: a replica's consistency
    // proof from each decision's first checkpoint to its last verifies.
    assert_eq!(
        earlier.len(),
        who.decisions.len(),
        "both decisions had votes at first"
    );
    for (decision, before) in &earlier {
        let after = &later[decision];
        let (from, to) = (before["tree_size"].as_u64(), after["tree_size"].as_u64());
        let (from, to) = (from.unwrap(), to.unwrap());
        assert!(from < to, "{decision}: {from} → {to}");
        let note = files.path().join(format!("earlier-{decision}.note"));
        std::fs::write(&note, before["checkpoint"].as_str().unwrap()).unwrap();
        let proof = files.path().join(format!("later-{decision}.json"));
        std::fs::write(&proof, after.to_string()).unwrap();
        let (status, verdict) = canopy_line(&[
            "verify",
            proof.to_str().unwrap(),
            "--key",
            &key,
            "--previous",
            note.to_str().unwrap(),
            "--node",
            &bases[0],
        ]);
        assert_eq!(status, 0, "{verdict}");
        assert!(
            verdict.contains(&format!("+consistency({from}->{to})")),
            "{verdict}"
        );
    }

    // SQL on a replica, as an analyst: every acknowledged vote and reading exactly once,
    // and every final window once, as the recomputation has it.
    let windows = final_windows(&readings_log);
    let wanted = [
        acknowledged.votes.len(),
        acknowledged.readings.len(),
        windows.len(),
    ];
    wait_for_lake(&client, &bases[1], &analyst, wanted, &mut workers).await;
    let sql = |statement: &'static str| sql_rows(&client, &bases[1], &analyst, statement);
    let mut expected: Vec<Vec<String>> = acknowledged
        .votes
        .iter()
        .map(|vote| {
            vec![
                vote.position.partition.to_string(),
                vote.position.offset.to_string(),
                vote.decision.clone(),
                vote.vote_id.clone(),
                vote.option.to_string(),
            ]
        })
        .collect();
    expected.sort_by_key(|row| {
        (
            row[0].parse::<u32>().unwrap(),
            row[1].parse::<u64>().unwrap(),
        )
    });
    let rows = sql(
        "SELECT log_partition, log_offset, decision_id, vote_id, option FROM votes \
         ORDER BY log_partition, log_offset",
    )
    .await;
    assert_eq!(
        rows, expected,
        "the lake's votes are the acknowledged votes"
    );
    // A voter is one commitment per decision, however often they changed their vote.
    let mut voters_by_decision: BTreeMap<&str, std::collections::BTreeSet<usize>> = BTreeMap::new();
    for vote in &acknowledged.votes {
        voters_by_decision
            .entry(&vote.decision)
            .or_default()
            .insert(vote.voter);
    }
    let rows = sql(
        "SELECT decision_id, COUNT(DISTINCT voter_commitment) FROM votes \
         GROUP BY decision_id ORDER BY decision_id",
    )
    .await;
    let expected: Vec<Vec<String>> = voters_by_decision
        .iter()
        .map(|(decision, voters)| vec![decision.to_string(), voters.len().to_string()])
        .collect();
    assert_eq!(rows, expected, "voters per decision");
    for (decision, voters) in &voters_by_decision {
        let results = common::results(&client, &bases[0], decision, &who.admin).await;
        assert_eq!(results["turnout"], voters.len(), "{results}");
    }
    let mut expected: Vec<Vec<String>> = acknowledged
        .readings
        .iter()
        .map(|p| vec![p.partition.to_string(), p.offset.to_string()])
        .collect();
    expected.sort_by_key(|row| {
        (
            row[0].parse::<u32>().unwrap(),
            row[1].parse::<u64>().unwrap(),
        )
    });
    let rows = sql(
        "SELECT log_partition, log_offset FROM sensor_readings ORDER BY log_partition, log_offset",
    )
    .await;
    assert_eq!(
        rows, expected,
        "the lake's readings are the accepted readings"
    );
    let rows = sql(
        "SELECT region, sensor, width_s, CAST(window_start AS BIGINT), count, mean \
         FROM window_features",
    )
    .await;
    let mut in_lake = BTreeMap::new();
    for row in rows {
        let window: LakeWindow = (
            row[0].clone(),
            row[1].clone(),
            row[2].parse().unwrap(),
            row[3].parse::<i64>().unwrap() / 1000,
        );
        let values: (u64, f64) = (row[4].parse().unwrap(), row[5].parse().unwrap());
        assert!(
            in_lake.insert(window.clone(), values).is_none(),
            "window {window:?} twice in the lake"
        );
    }
    assert_eq!(
        in_lake.keys().collect::<Vec<_>>(),
        windows.keys().collect::<Vec<_>>(),
        "the lake's windows are the final windows of the recomputation"
    );
    for (window, stats) in &windows {
        let (count, mean) = in_lake[window];
        assert!(
            count == stats.count && close(mean, stats.mean()),
            "window {window:?}: {count} readings, mean {mean} in the lake; recomputed {stats:?}"
        );
    }
    stop(&mut workers);
    eprintln!(
        "the whole system: {} votes, {} readings, {} final windows in {:.1} s",
        acknowledged.votes.len(),
        acknowledged.readings.len(),
        windows.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Casts `option`s on `decision` as `token` on `base` until the replica refuses (the window
/// or the decision closed); returns how many it acknowledged.
async fn cast_until_refused(base: String, token: String, decision: String, seed: u16) -> usize {
    let client = canopy_testkit::http_client();
    let mut accepted = 0;
    for n in 0.. {
        match common::try_cast(&client, &base, &token, &decision, (seed + n) % 2).await {
            Ok((201, _)) => accepted += 1,
            Ok((status, body)) => {
                assert!(
                    [409, 422].contains(&status),
                    "a cast near the close got {status} {body}"
                );
                return accepted;
            }
            Err(error) => panic!("a cast near the close failed: {error}"),
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_racing_votes_on_a_cluster_gives_a_result_anyone_recounts() {
    use serde_json::Value;
    let topic = format!("canopy-close-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    let log = KafkaLog::connect(test_kafka_config(&topic)).unwrap();
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(2, 1, "w");
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = canopy_testkit::http_client();
    let mut replica_a = Running::new(vec![start_serve(&deployment, port_a, "a")]);
    common::wait_healthy(&client, &base_a).await;
    let mut replica_b = Running::new(vec![start_serve(&deployment, port_b, "b")]);
    common::wait_healthy(&client, &base_b).await;
    let admin = common::login(&client, &base_a, "root").await;
    let mut voters = Vec::new();
    for n in 0..8 {
        let name = format!("close-voter{n}");
        common::sign_up(&client, &base_b, &name).await;
        voters.push(common::login(&client, &base_a, &name).await);
    }
    let closes_at = canopy_schemas::clock::now_micros() + 6_000_000;
    let decision = common::create_decision(
        &client,
        &base_a,
        &admin,
        serde_json::json!({ "title": "Close the quarry?", "options": ["yes", "no"], "closes_at": closes_at }),
    )
    .await;
    let id = DecisionId::from(uuid::Uuid::parse_str(&decision).unwrap());

    // Every voter casts on both replicas, changing their vote, until they are refused.
    let casters: Vec<_> = voters
        .iter()
        .enumerate()
        .flat_map(|(n, token)| {
            [&base_a, &base_b].map(|base| {
                tokio::spawn(cast_until_refused(
                    base.clone(),
                    token.clone(),
                    decision.clone(),
                    n as u16,
                ))
            })
        })
        .collect();
    let mut acknowledged = 0;
    for caster in casters {
        acknowledged += caster.await.unwrap();
    }
    assert!(
        acknowledged >= voters.len(),
        "too few votes before the close"
    );

    // The close is in the topic; a replica with a slow clock still appends votes after it,
    // stamped before closes_at: none of them may count.
    let deadline = Instant::now() + Duration::from_secs(30);
    let close_offset = loop {
        let closes: Vec<u64> = topic_entries(&log)
            .iter()
            .filter_map(|entry| match entry {
                canopy_ingest::VoteLogRecord::Close(close) if close.close.decision == id => {
                    Some(close.position.offset)
                }
                _ => None,
            })
            .collect();
        if let Some(first) = closes.into_iter().min() {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "no close entry reached the topic"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let late: Vec<LoggedVote> = (0..20u8)
        .map(|n| {
            canopy_testkit::logged(
                Vote {
                    vote_id: VoteId::new_random(),
                    decision_id: id,
                    voter_id: VoterId(u128::from(n % 10)),
                    ballot: Ballot::single_choice(u16::from(n % 2)).unwrap(),
                    component: Component::Democratic,
                    weight: Weight::ONE,
                    cast_at: closes_at - 1,
                },
                n,
            )
        })
        .collect();
    produce(&log, &late);

    // The result becomes final; every replica answers it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let answer: Value = loop {
        let answer = common::get_json(
            &client,
            format!("{base_b}/api/v1/voting/decisions/{decision}"),
            &admin,
        )
        .await;
        if answer["status"] == "final" {
            // The figure the README quotes: how long after closes_at the result is final.
            let after = canopy_schemas::clock::now_micros() - closes_at;
            eprintln!("final {} ms after closes_at", after / 1_000);
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the decision did not become final: {answer}\n{}",
            deployment.log("w", 0)
        );
        workers.assert_none_exited("while the decision closes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The oracle: the topic's votes before the first close, recounted, read once the
    // workers have caught up and the test's own reads reach as far as theirs (a consumer's
    // fetch may lag the broker).
    let views = deployment.views();
    wait_until_caught_up(&log, &views, &mut workers, "after the close");
    let deadline = Instant::now() + Duration::from_secs(30);
    let entries = loop {
        let entries = topic_entries(&log);
        let complete = (0..PARTITIONS).all(|partition| {
            let read = entries
                .iter()
                .filter(|entry| entry.position().partition == partition)
                .count() as u64;
            read >= views.frontier(partition)
        });
        if complete {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "the topic reads short of the workers' frontier"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after_close = entries
        .iter()
        .filter_map(canopy_ingest::VoteLogRecord::vote)
        .filter(|record| record.vote.decision_id == id && record.position.offset > close_offset)
        .count();
    assert!(after_close >= late.len(), "the late votes are in the topic");
    let store = deployment.store().await;
    let expected = recount(
        canopy_dataflow::counted_votes(&entries),
        &store.decisions().await.unwrap(),
    );
    let tree = &canopy_dataflow::recount_log_trees(&entries)[&id];
    let result = &answer["result"]["result"];
    let tally: Tally = serde_json::from_value(result["tally"].clone()).unwrap();
    assert_eq!(&tally, &expected[&id], "{answer}");
    assert_eq!(result["tree_size"], tree.size(), "{answer}");
    assert_eq!(result["root"], hex::encode(tree.root()), "{answer}");
    assert_eq!(result["close"]["offset"], close_offset, "{answer}");

    // Anyone recounts it from the published leaves, trusting the key they were given.
    let key: Value = common::get_public_json(&client, format!("{base_a}/api/v1/audit/key")).await;
    let key = key["key"].as_str().unwrap().to_string();
    let statement_url = format!("{base_a}/api/v1/audit/decisions/{decision}/result");
    let tiles_url = format!("{base_a}/api/v1/audit/decisions/{decision}/tlog/");
    let (status, verdict) = canopy_line(&[
        "verify",
        "--tally",
        &statement_url,
        "--tiles",
        &tiles_url,
        "--key",
        &key,
    ]);
    assert_eq!(status, 0, "{verdict}");
    assert!(verdict.starts_with("OK tally"), "{verdict}");

    // An altered tally no longer carries the record's signature.
    let statement = answer["result"]["statement"].as_str().unwrap();
    let turnout = format!("\"turnout\":{}", tally.turnout);
    assert!(statement.contains(&turnout), "{statement}");
    let altered = deployment.dir.path().join("altered-statement.txt");
    std::fs::write(
        &altered,
        statement.replace(&turnout, &format!("\"turnout\":{}", tally.turnout + 1)),
    )
    .unwrap();
    let (status, verdict) = canopy_line(&[
        "verify",
        "--tally",
        altered.to_str().unwrap(),
        "--tiles",
        &tiles_url,
        "--key",
        &key,
    ]);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL bad_signature"), "{verdict}");

    // A record store missing a leaf does not recount to the statement.
    let tiles = deployment.dir.path().join("data").join("record-tiles");
    let copy = deployment.dir.path().join("record-tiles-without-a-leaf");
    copy_dir(&tiles, &copy);
    let bundles = copy
        .join("decision")
        .join(&decision)
        .join("tile")
        .join("entries");
    let bundle = last_bundle(&bundles);
    let bytes = std::fs::read(&bundle).unwrap();
    let entries_read = canopy_chain::tiles::decode_bundle(&bytes).unwrap();
    let kept: Vec<&[u8]> = entries_read.iter().skip(1).copied().collect();
    std::fs::write(&bundle, canopy_chain::tiles::encode_bundle(kept).unwrap()).unwrap();
    let statement_file = deployment.dir.path().join("statement.txt");
    std::fs::write(&statement_file, statement).unwrap();
    let (status, verdict) = canopy_line(&[
        "verify",
        "--tally",
        statement_file.to_str().unwrap(),
        "--tiles",
        copy.to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL"), "{verdict}");

    common::kill_9(&mut replica_a[0]);
    common::kill_9(&mut replica_b[0]);
    stop(&mut workers);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The entry bundle holding a log's last leaves: the deepest file under `entries/` in
/// path order (the partial bundle `N.p/W` of the highest N, its widest W).
fn last_bundle(entries: &std::path::Path) -> std::path::PathBuf {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    files(entries, &mut found);
    found
        .into_iter()
        .max_by_key(|path| {
            let width = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.parse::<u32>().ok())
                .unwrap_or(256);
            (path.parent().map(std::path::Path::to_path_buf), width)
        })
        .expect("the decision has entry bundles")
}
