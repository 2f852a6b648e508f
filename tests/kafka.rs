//! `canopy up` with its vote log on Kafka (a real tansu broker): votes cast through the API
//! are in the topic at their acknowledged positions, a killed node comes back with every
//! acknowledged vote from the topic, and with the broker gone a vote is refused, never
//! acknowledged.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use canopy_ingest::{KafkaConfig, KafkaLog, LogKey, LogRecord, Position, VoteLog};
use canopy_schemas::VoteId;
use common::*;
use serde_json::Value;

/// The key the node at `data` signs its records with (it made it on its first start).
fn node_log_key(data: &Path) -> LogKey {
    let bytes = std::fs::read(data.join("keys/log-hmac.key")).unwrap();
    LogKey::from_bytes(bytes.try_into().expect("a 32-byte key"))
}

fn kafka_args<'a>(brokers: &'a str, topic: &'a str) -> [&'a str; 6] {
    [
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        topic,
        "--kafka-partitions",
        "4",
    ]
}

/// A `canopy up` with its vote log on `topic` at `brokers`, an admin, a yes/no decision
/// and five signed-in voters.
struct VotingNode {
    data: tempfile::TempDir,
    port: u16,
    base: String,
    client: reqwest::Client,
    node: Child,
    decision: String,
    voters: Vec<String>,
}

async fn start_voting_node(brokers: &str, topic: &str) -> VotingNode {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let node = start_with(data.path(), port, &kafka_args(brokers, topic));
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Protect the estuary?")).await;
    let mut voters = Vec::new();
    for n in 0..5 {
        voters.push(register(&client, &base, &format!("kafka-voter{n}")).await);
    }
    VotingNode {
        data,
        port,
        base,
        client,
        node,
        decision,
        voters,
    }
}

impl VotingNode {
    /// The answer to a cast of `option` by the node's voter number `voter`.
    async fn try_cast(&self, voter: usize, option: u16) -> (u16, Value) {
        try_cast(
            &self.client,
            &self.base,
            &self.voters[voter],
            &self.decision,
            option,
        )
        .await
        .unwrap()
    }
}

/// Where the topic holds each vote, read from all four partitions.
fn topic_positions(log: &KafkaLog) -> (HashMap<VoteId, Vec<Position>>, Vec<LogRecord>) {
    let records: Vec<LogRecord> = (0..4)
        .flat_map(|partition| log.read_votes(partition, 0, usize::MAX).unwrap())
        .collect();
    (positions_by_vote(&records), records)
}

/// The broker the test runs, killed when the test ends however it ends (an idle tansu with
/// SQLite storage keeps a third of a core busy).
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tansu on `port` with `storage` (`memory://…` or `sqlite://…`), from `dir`: tansu takes
/// a database path relative to its working directory.
fn start_broker(port: u16, storage: &str, dir: &Path) -> Broker {
    let tansu = std::env::var("CANOPY_TANSU").unwrap_or_else(|_| "tansu".to_string());
    let listener = format!("tcp://127.0.0.1:{port}");
    Command::new(tansu)
        .current_dir(dir)
        .args(["broker", "--storage-engine", storage])
        .args(["--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Broker)
        .expect("tansu with its libsql storage (scripts/test installs it and sets CANOPY_TANSU)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_kafka_keeps_every_acknowledged_vote_across_a_kill() {
    let brokers = broker();
    let topic = format!("canopy-up-{}", uuid::Uuid::new_v4().simple());
    let VotingNode {
        data,
        port,
        base,
        client,
        mut node,
        decision,
        voters,
    } = start_voting_node(&brokers, &topic).await;

    let mut acknowledged: HashMap<VoteId, Position> = HashMap::new();
    for round in 0..4u16 {
        for token in &voters {
            let receipt = cast(&client, &base, token, &decision, round % 2).await;
            let (vote, position) = common::acknowledged(&receipt);
            acknowledged.insert(vote, position);
        }
    }
    assert!(
        !data.path().join("votes").exists(),
        "the log is on Kafka, not under the data directory"
    );
    kill_9(&mut node);

    // Every acknowledged vote is in the topic, once, at its acknowledged position.
    let log = KafkaLog::connect(KafkaConfig {
        partitions: 4,
        create_topic: false,
        write_dead_letters: false,
        ..KafkaConfig::new(brokers.clone(), topic.clone(), node_log_key(data.path()))
    })
    .unwrap();
    let (stored, _) = topic_positions(&log);
    for (vote, position) in &acknowledged {
        assert_eq!(stored.get(vote), Some(&vec![*position]), "vote {vote}");
    }

    // The restarted node replays the topic: the results count every voter's latest vote.
    let mut node = start_with(data.path(), port, &kafka_args(&brokers, &topic));
    wait_healthy(&client, &base).await;
    let admin = login(&client, &base, "root").await;
    let results = results(&client, &base, &decision, &admin).await;
    assert_eq!(results["turnout"], 5, "{results}");
    assert_eq!(
        results["as_of"]["offset"], 20,
        "all 20 votes replayed: {results}"
    );
    // The last round was option 1 for everyone: option 0 has no current vote left.
    assert_eq!(results["options"][0]["composite"], 0.0, "{results}");
    assert!(
        results["options"][1]["composite"].as_f64().unwrap() > 0.0,
        "{results}"
    );
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_gone_a_vote_is_refused_not_acknowledged() {
    let broker_dir = tempfile::tempdir().unwrap();
    let (mut broker, _, mut voting) =
        start_broker_and_voting_node("memory://tansu/", broker_dir.path()).await;
    let (status, _) = voting.try_cast(0, 0).await;
    assert_eq!(status, 201);

    kill_9(&mut broker.0);
    let (status, body) = voting.try_cast(1, 0).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "kafka", "{body}");
    kill_9(&mut voting.node);
}

/// Topics in tansu's SQLite storage survive a restart of the broker.
const DURABLE_STORAGE: &str = "sqlite://tansu.db";

fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A broker of the test's own (one it may kill), on a free port with `storage` kept in
/// `dir`, and a voting node on its `canopy.votes` topic.
async fn start_broker_and_voting_node(storage: &str, dir: &Path) -> (Broker, u16, VotingNode) {
    let port = free_port();
    let broker = start_broker(port, storage, dir);
    wait_for_port(port);
    let voting = start_voting_node(&format!("127.0.0.1:{port}"), "canopy.votes").await;
    (broker, port, voting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_under_load_loses_no_acknowledged_vote() {
    let broker_dir = tempfile::tempdir().unwrap();
    let (mut broker, broker_port, voting) =
        start_broker_and_voting_node(DURABLE_STORAGE, broker_dir.path()).await;
    let VotingNode {
        data,
        base,
        client,
        mut node,
        decision,
        voters,
        ..
    } = voting;

    // Five voters cast without pause while the broker is killed and, 2 s later, restarted.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked_after_restart = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let casters: Vec<_> = voters
        .iter()
        .enumerate()
        .map(|(n, token)| {
            let (client, base, token, decision) = (
                client.clone(),
                base.clone(),
                token.clone(),
                decision.clone(),
            );
            let running = std::sync::Arc::clone(&running);
            let (restarted, acked_after_restart) = (
                std::sync::Arc::clone(&restarted),
                std::sync::Arc::clone(&acked_after_restart),
            );
            tokio::spawn(async move {
                let mut outcomes: Vec<(u16, Value)> = Vec::new();
                let mut round = n as u16;
                while running.load(std::sync::atomic::Ordering::Acquire) {
                    round += 1;
                    let after_restart = restarted.load(std::sync::atomic::Ordering::Acquire);
                    let outcome = try_cast(&client, &base, &token, &decision, round % 2)
                        .await
                        .unwrap();
                    if after_restart && outcome.0 == 201 {
                        acked_after_restart.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_9(&mut broker.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker = start_broker(broker_port, DURABLE_STORAGE, broker_dir.path());
    wait_for_port(broker_port);
    restarted.store(true, std::sync::atomic::Ordering::Release);
    // Longer than an append may wait (10 s), so casts refused during the outage are
    // followed by casts after it, and until casts begun after the restart are acknowledged
    // again: on a loaded machine the restarted broker and the clients' reconnects take
    // seconds more (seen: 20 s was not always enough while other tests ran).
    let restarted_at = std::time::Instant::now();
    while restarted_at.elapsed() < Duration::from_secs(12)
        || (acked_after_restart.load(std::sync::atomic::Ordering::Acquire) < 10
            && restarted_at.elapsed() < Duration::from_secs(90))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.store(false, std::sync::atomic::Ordering::Release);
    let mut acknowledged: HashMap<VoteId, Position> = HashMap::new();
    let mut refused = 0;
    let mut after_refusal = 0;
    for caster in casters {
        let mut seen_refusal = false;
        for (status, body) in caster.await.unwrap() {
            match status {
                201 => {
                    let (vote, position) = common::acknowledged(&body);
                    acknowledged.insert(vote, position);
                    after_refusal += usize::from(seen_refusal);
                }
                503 => {
                    eprintln!("refused: {body}");
                    assert_eq!(body["error"]["code"], "kafka", "{body}");
                    refused += 1;
                    seen_refusal = true;
                }
                other => panic!("a cast answered {other}: {body}"),
            }
        }
    }
    assert!(!acknowledged.is_empty());
    assert!(
        after_refusal > 0 || refused == 0,
        "casts succeed again once the broker is back ({refused} refused); the node's log:\n{}",
        node_log(data.path(), 40)
    );

    // Every acknowledged vote is in the topic at its acknowledged position.
    let log = KafkaLog::connect(KafkaConfig {
        partitions: 4,
        create_topic: false,
        write_dead_letters: false,
        ..KafkaConfig::new(
            format!("127.0.0.1:{broker_port}"),
            "canopy.votes".to_string(),
            node_log_key(data.path()),
        )
    })
    .unwrap();
    let (stored, records) = topic_positions(&log);
    for (vote, position) in &acknowledged {
        let at = stored.get(vote).map(Vec::as_slice).unwrap_or_default();
        assert!(
            at.contains(position),
            "acknowledged vote {vote} at {position:?} is not in the topic there ({at:?})"
        );
    }
    // And the node's results count the topic exactly as a recount does.
    let admin = login(&client, &base, "root").await;
    let last = records.iter().map(|r| r.position.offset).max().unwrap();
    let breakdown = get_json(
        &client,
        format!("{base}/api/v1/voting/decision/{decision}/breakdown?min_offset={last}"),
        &admin,
    )
    .await;
    assert!(
        breakdown["as_of"]["offset"]
            .as_u64()
            .is_some_and(|seen| seen > last),
        "{breakdown}"
    );
    // The recount: each voter's vote with the highest offset, among first deliveries.
    let mut seen = std::collections::HashSet::new();
    let mut latest: HashMap<_, &LogRecord> = HashMap::new();
    let mut sorted: Vec<&LogRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.position.offset);
    for record in sorted {
        if seen.insert(record.vote.vote_id) {
            latest.insert(record.vote.voter_id, record);
        }
    }
    let mut expected = [0u64; 2];
    for record in latest.values() {
        let canopy_schemas::Ballot::SingleChoice(option) = record.vote.ballot else {
            panic!("the test casts single-choice ballots only");
        };
        expected[usize::from(option)] += 1;
    }
    let mut counted = [0u64; 2];
    for cell in breakdown["cells"].as_array().unwrap() {
        counted[cell["option"].as_u64().unwrap() as usize] += cell["count"].as_u64().unwrap();
    }
    assert_eq!(counted, expected, "{breakdown}");
    eprintln!(
        "acknowledged {}, refused {refused}, stored {} records",
        acknowledged.len(),
        records.len()
    );
    kill_9(&mut node);
    drop(broker);
}
