//! A poisoned votes topic does not stop the cluster: a stock Kafka client (Python
//! `confluent-kafka`, CANOPY_TEST_KAFKA_PYTHON) produces garbage, truncated votes, forged
//! votes (well-formed, without a signature, with a made-up one, with a signature taken from
//! another record) and replays of Canopy's own records into other partitions, between votes
//! produced through Canopy. The 2-process worker cluster keeps running and catches up with
//! the topic's end, its tallies equal the recount of Canopy's votes only, and the
//! dead-letter topic holds each bad record with its reason, partition and offset.

mod common;

use common::cluster::*;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};

use canopy_dataflow::{ViewStore, recount};
use canopy_ingest::{KafkaLog, Position, VoteLog, partition_for};
use canopy_schemas::*;
use serde_json::{Value, json};

/// Produces each of `actions` in order with confluent-kafka and returns, per action, the
/// partition and offset the broker took it at.
///   {"op": "raw", "partition", "key"?, "value", "mac"?}   (hex)
///   {"op": "replay", "from": [p, o], "partition"}    a record's key, value and headers, elsewhere
///   {"op": "graft", "from": [p, o], "partition", "key", "value"}   its headers on another value
const PRODUCER: &str = r#"
import json, sys
from confluent_kafka import Consumer, Producer, TopicPartition

job = json.load(sys.stdin)
topic = job["topic"]
consumer = Consumer({"bootstrap.servers": job["brokers"], "group.id": "poison-test",
                     "enable.auto.commit": False})

def record_at(partition, offset):
    consumer.assign([TopicPartition(topic, partition, offset)])
    while True:
        message = consumer.poll(10)
        if message is None:
            sys.exit(f"no record at {partition}/{offset}")
        if message.error() is None and message.offset() == offset:
            return message

producer = Producer({"bootstrap.servers": job["brokers"], "acks": "all"})
for action in job["actions"]:
    op, partition = action["op"], action["partition"]
    unhex = lambda name: bytes.fromhex(action[name]) if action.get(name) is not None else None
    if op == "raw":
        key, value = unhex("key"), unhex("value")
        headers = [("canopy-mac", unhex("mac"))] if action.get("mac") is not None else None
    else:
        source = record_at(*action["from"])
        headers = source.headers()
        if op == "replay":
            key, value = source.key(), source.value()
        else:
            key, value = unhex("key"), unhex("value")
    taken = []
    producer.produce(topic, value=value, key=key, partition=partition, headers=headers,
                     on_delivery=lambda error, message: taken.append((error, message)))
    producer.flush(10)
    error, message = taken[0]
    if error is not None:
        sys.exit(f"producing {op}: {error}")
    print(json.dumps([message.partition(), message.offset()]), flush=True)
"#;

fn run_producer(topic: &str, actions: &[Value]) -> Vec<Position> {
    let python = std::env::var("CANOPY_TEST_KAFKA_PYTHON").expect(
        "CANOPY_TEST_KAFKA_PYTHON must name a python with confluent-kafka (scripts/test installs it)",
    );
    let mut child = Command::new(python)
        .args(["-c", PRODUCER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let job = json!({ "brokers": common::broker(), "topic": topic, "actions": actions });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the Python producer failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (partition, offset): (u32, u64) = serde_json::from_str(line).unwrap();
            Position { partition, offset }
        })
        .collect()
}

/// A forged vote: well-formed, for a registered decision, by a voter no real vote comes
/// from, all for option 2, so that counting any of them would show in the tallies.
fn forged_vote(n: u128) -> LoggedVote {
    let decisions = decisions();
    let vote = Vote {
        vote_id: VoteId(0xF0F0_0000 + n),
        decision_id: decisions[n as usize % decisions.len()].id,
        voter_id: VoterId(10_000 + n),
        ballot: Ballot::single_choice(2).unwrap(),
        component: Component::Democratic,
        weight: Weight::ONE,
        cast_at: 1,
    };
    LoggedVote::new(vote, &VoterSalt([11; 32]))
}

/// The bad records to produce, each with the reason it must be refused for. `signed` is a
/// record Canopy appended (a signature to steal and a record to replay).
fn poison(round: u128, signed: Position) -> Vec<(Value, &'static str)> {
    let mut out = Vec::new();
    for n in round * 10..round * 10 + 4 {
        let forged = forged_vote(n);
        let partition = partition_for(forged.vote.decision_id, PARTITIONS);
        let key = hex::encode(forged.vote.decision_id.0.to_be_bytes());
        let value = hex::encode(forged.encode());
        let garbage: Vec<u8> = (0..(n as usize * 7 % 90))
            .map(|i| (i * 31 + 7) as u8)
            .collect();
        out.push((
            json!({"op": "raw", "partition": partition, "value": hex::encode(garbage)}),
            "undecodable",
        ));
        out.push((
            json!({"op": "raw", "partition": partition, "key": key,
                   "value": hex::encode(&forged.encode()[..40])}),
            "undecodable",
        ));
        out.push((
            json!({"op": "raw", "partition": partition, "key": key, "value": value}),
            "unsigned",
        ));
        out.push((
            json!({"op": "raw", "partition": partition, "key": key, "value": value,
                   "mac": hex::encode([n as u8; 32])}),
            "bad_signature",
        ));
        out.push((
            json!({"op": "graft", "from": [signed.partition, signed.offset],
                   "partition": partition, "key": key, "value": value}),
            "bad_signature",
        ));
        let mut heavy = forged;
        heavy.vote.weight = Weight(MAX_WEIGHT + 1);
        out.push((
            json!({"op": "raw", "partition": partition, "key": key,
                   "value": hex::encode(heavy.encode())}),
            "invalid",
        ));
    }
    out.push((
        json!({"op": "replay", "from": [signed.partition, signed.offset],
               "partition": (signed.partition + 1) % PARTITIONS}),
        "bad_signature",
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_topic_does_not_stop_the_cluster() {
    let topic = format!("canopy-poison-{}", uuid::Uuid::new_v4().simple());
    let log = KafkaLog::connect(test_kafka_config(&topic)).unwrap();
    let cluster = Deployment::new(&topic);
    register_decisions(&cluster.store().await).await;
    let mut workers = cluster.start(2, 1, "p");

    let first = votes(1, 600, &[]);
    let signed = log.append_votes(&first[..1]).unwrap()[0];
    produce(&log, &first[1..]);
    let mut expected_letters: BTreeMap<Position, &str> = BTreeMap::new();
    // Poison between Canopy's votes and after the last of them (a partition's end is a
    // refused record: the cluster must still reach it).
    for round in 0..2 {
        let (actions, reasons): (Vec<Value>, Vec<&str>) = poison(round, signed).into_iter().unzip();
        let positions = run_producer(&topic, &actions);
        assert_eq!(positions.len(), actions.len());
        expected_letters.extend(positions.into_iter().zip(reasons));
        if round == 0 {
            produce(&log, &votes(2, 600, &first));
        }
    }
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "a poisoned topic");
    for (process, worker) in workers.iter_mut().enumerate() {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "worker {process} stopped:\n{}",
            cluster.log("p", process)
        );
    }

    // The tallies: the recount of Canopy's votes; none of the forged votes is in it.
    let records = topic_records(&log);
    let ours: HashSet<VoteId> = first
        .iter()
        .chain(&votes(2, 600, &first))
        .map(|v| v.vote.vote_id)
        .collect();
    assert!(records.iter().all(|r| ours.contains(&r.vote.vote_id)));
    assert_eq!(
        records
            .iter()
            .map(|r| r.vote.vote_id)
            .collect::<HashSet<_>>(),
        ours,
        "every vote produced through Canopy is read"
    );
    let expected = recount(&records, &decisions());
    let views = cluster.views();
    for decision in decisions() {
        let view = views.get(decision.id).unwrap();
        assert_eq!(
            view.map(|v| v.tally).as_ref(),
            expected.get(&decision.id),
            "decision {}",
            decision.id
        );
    }

    // The dead-letter topic: every bad record, with its reason, partition and offset.
    let letters = log.read_dead_letters().unwrap();
    let found: BTreeMap<Position, &str> = letters
        .iter()
        .map(|l| {
            let position = Position {
                partition: l.partition,
                offset: l.offset,
            };
            (position, l.reason.as_str())
        })
        .collect();
    assert_eq!(found, expected_letters);
    assert_eq!(
        letters.len(),
        expected_letters.len(),
        "each bad record once (no worker restarted)"
    );
    let reasons: BTreeSet<&str> = found.values().copied().collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["bad_signature", "invalid", "undecodable", "unsigned"])
    );
    let logs = cluster.log("p", 0) + &cluster.log("p", 1);
    assert!(
        logs.contains("dead-letter") && logs.contains("bad_signature"),
        "the workers log each refusal:\n{logs}"
    );
    eprintln!(
        "{} votes read, {} records dead-lettered",
        records.len(),
        letters.len()
    );
    stop(&mut workers);
}
