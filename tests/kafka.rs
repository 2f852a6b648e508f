//! `canopy up` with its vote log on Kafka (a real tansu broker): votes cast through the API
//! are in the topic at their acknowledged positions, a killed node comes back with every
//! acknowledged vote from the topic, and with the broker gone a vote is refused, never
//! acknowledged.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use canopy_ingest::{KafkaConfig, KafkaLog, Position, VoteLog};
use common::*;
use serde_json::{Value, json};

fn broker() -> String {
    std::env::var("CANOPY_TEST_KAFKA")
        .expect("CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test starts tansu)")
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

async fn cast(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    decision: &str,
    option: u16,
) -> (u16, Value) {
    post(
        client,
        format!("{base}/api/v1/voting/cast-vote"),
        Some(token),
        json!({ "decision_id": decision, "option": option }),
    )
    .await
    .unwrap()
}

async fn setup(
    client: &reqwest::Client,
    base: &str,
    data: &std::path::Path,
) -> (String, Vec<String>) {
    create_admin(data);
    let admin = login(client, base, "root").await;
    let (status, decision) = post(
        client,
        format!("{base}/api/v1/voting/decision/create"),
        Some(&admin),
        json!({ "title": "Protect the estuary?", "options": ["yes", "no"], "closes_at": i64::MAX }),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{decision}");
    let mut voters = Vec::new();
    for n in 0..5 {
        let name = format!("kafka-voter{n}");
        let (status, _) = post(
            client,
            format!("{base}/api/v1/auth/register"),
            None,
            json!({ "username": name, "password": PASSWORD }),
        )
        .await
        .unwrap();
        assert_eq!(status, 201);
        voters.push(login(client, base, &name).await);
    }
    (decision["id"].as_str().unwrap().to_string(), voters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_kafka_keeps_every_acknowledged_vote_across_a_kill() {
    let brokers = broker();
    let topic = format!("canopy-up-{}", uuid::Uuid::new_v4().simple());
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut node = start_with(data.path(), port, &kafka_args(&brokers, &topic));
    wait_healthy(&client, &base).await;
    let (decision, voters) = setup(&client, &base, data.path()).await;

    let mut acknowledged: HashMap<String, Position> = HashMap::new();
    for round in 0..4u16 {
        for token in &voters {
            let (status, receipt) = cast(&client, &base, token, &decision, round % 2).await;
            assert_eq!(status, 201, "{receipt}");
            let position: Position = serde_json::from_value(receipt["position"].clone()).unwrap();
            acknowledged.insert(receipt["vote_id"].as_str().unwrap().to_string(), position);
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
        ..KafkaConfig::new(brokers.clone(), topic.clone())
    })
    .unwrap();
    let mut stored: HashMap<String, Vec<Position>> = HashMap::new();
    for partition in 0..4 {
        for record in log.read(partition, 0, usize::MAX).unwrap() {
            stored
                .entry(record.vote.vote_id.to_string())
                .or_default()
                .push(record.position);
        }
    }
    for (vote, position) in &acknowledged {
        assert_eq!(stored.get(vote), Some(&vec![*position]), "vote {vote}");
    }

    // The restarted node replays the topic: the results count every voter's latest vote.
    let mut node = start_with(data.path(), port, &kafka_args(&brokers, &topic));
    wait_healthy(&client, &base).await;
    let admin = login(&client, &base, "root").await;
    let results = get_json(
        &client,
        format!("{base}/api/v1/voting/decision/{decision}/results"),
        &admin,
    )
    .await;
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

fn start_broker(port: u16) -> Child {
    Command::new("tansu")
        .args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu on PATH (scripts/test installs it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_gone_a_vote_is_refused_not_acknowledged() {
    let broker_port = free_port();
    let mut broker = start_broker(broker_port);
    std::thread::sleep(Duration::from_millis(500));
    let brokers = format!("127.0.0.1:{broker_port}");
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut node = start_with(data.path(), port, &kafka_args(&brokers, "canopy.votes"));
    wait_healthy(&client, &base).await;
    let (decision, voters) = setup(&client, &base, data.path()).await;
    let (status, _) = cast(&client, &base, &voters[0], &decision, 0).await;
    assert_eq!(status, 201);

    kill_9(&mut broker);
    let (status, body) = cast(&client, &base, &voters[1], &decision, 0).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "kafka", "{body}");
    kill_9(&mut node);
}
