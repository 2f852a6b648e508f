//! What a Kafka log's reader does with records Canopy's producers did not sign, or that are
//! not entries at all (a real tansu broker, CANOPY_TEST_KAFKA; a topic per test): each goes
//! to `<topic>.dead-letter` with its reason, partition and offset, once, and the reader
//! goes on past it, the good records read back at their acknowledged positions.
//!
//! The bad records are produced with a plain rdkafka producer, as any client of the broker
//! could; the replays copy a record Canopy signed (value and signature header) elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use canopy_ingest::*;
use canopy_schemas::*;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;
use common::vote;

fn broker() -> String {
    std::env::var("CANOPY_TEST_KAFKA").expect(
        "CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test installs and starts \
         tansu and sets it)",
    )
}

fn topic() -> String {
    format!("canopy-dlq-{}", uuid::Uuid::new_v4().simple())
}

const KEY: [u8; 32] = [0x42; 32];
const PARTITIONS: u32 = 3;

fn config(topic: &str, key: [u8; 32]) -> KafkaConfig {
    KafkaConfig {
        partitions: PARTITIONS,
        ..KafkaConfig::new(broker(), topic, LogKey::from_bytes(key))
    }
}

/// A producer of the broker's own, signing nothing.
fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Produces `value` (with `key` and a `canopy-mac` header if given) to `partition` and
/// returns the offset the broker took it at.
fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    partition: u32,
    key: Option<&[u8]>,
    value: &[u8],
    mac: Option<&[u8]>,
) -> u64 {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition as i32)
        .payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(mac) = mac {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: MAC_HEADER,
            value: Some(mac),
        }));
    }
    let delivery = futures_executor::block_on(producer.send(record, Duration::from_secs(10)))
        .map_err(|(error, _)| error)
        .unwrap();
    delivery.offset as u64
}

/// The value and signature of the record at `offset` of `partition`, as the broker holds it.
fn signed_record(topic: &str, partition: u32, offset: u64) -> (Vec<u8>, Vec<u8>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .set("group.id", "canopy-test-raw")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(
            topic,
            partition as i32,
            rdkafka::Offset::Offset(offset as i64),
        )
        .unwrap();
    consumer.assign(&assignment).unwrap();
    loop {
        let message = consumer
            .poll(Duration::from_secs(10))
            .expect("the record arrives")
            .unwrap();
        if message.offset() as u64 != offset {
            continue;
        }
        let mac = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == MAC_HEADER))
            .and_then(|h| h.value)
            .expect("Canopy's producer signs")
            .to_vec();
        return (message.payload().unwrap().to_vec(), mac);
    }
}

/// A decision whose votes go to `partition`.
fn decision_in(partition: u32) -> u128 {
    (1..)
        .find(|d| partition_for(DecisionId(*d), PARTITIONS) == partition)
        .unwrap()
}

/// A bad record produced: the reason it must be refused for, its value and key.
type BadRecord = (&'static str, Vec<u8>, Option<Vec<u8>>);

/// The kinds of record the stream mixes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Good,
    Garbage,
    Truncated,
    Unsigned,
    InvalidWeight,
    OtherKey,
    ReplayedFromOtherPartition,
    ReplayedFromOtherTopic,
}

const KINDS: [Kind; 8] = [
    Kind::Good,
    Kind::Garbage,
    Kind::Truncated,
    Kind::Unsigned,
    Kind::InvalidWeight,
    Kind::OtherKey,
    Kind::ReplayedFromOtherPartition,
    Kind::ReplayedFromOtherTopic,
];

/// Every kind of bad record, mixed at random with good votes in one partition: the reader
/// hands over exactly the good ones at their acknowledged positions, its `next` reaches the
/// partition's end (a batch of refused records only still moves on), and the dead-letter
/// topic holds each bad record once with its reason, partition, offset, key and value.
/// Reading again from the start in the same process writes nothing new; another process
/// (a restarted worker) writes them again, at the same partition and offset.
#[test]
fn bad_records_are_dead_lettered_once_and_the_reader_goes_on() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let topic = topic();
    let log = KafkaLog::connect(config(&topic, KEY)).unwrap();
    let impostor = KafkaLog::connect(config(&topic, [0x17; 32])).unwrap();
    let producer = raw_producer();
    let partition = 1;
    let here = decision_in(partition);
    let elsewhere = decision_in(2);

    // Signed records to replay: one of another partition of this topic, one of this
    // partition of another topic signed with the same key.
    let other_partition = log.append_votes(&[vote(elsewhere, 900, 900)]).unwrap()[0];
    let replay_partition = signed_record(&topic, 2, other_partition.offset);
    let other_topic = self::topic();
    let sibling = KafkaLog::connect(config(&other_topic, KEY)).unwrap();
    let at = sibling.append_votes(&[vote(here, 901, 901)]).unwrap()[0];
    let replay_topic = signed_record(&other_topic, partition, at.offset);

    let mut good = Vec::new();
    let mut bad: BTreeMap<u64, BadRecord> = BTreeMap::new();
    for n in 0..80u128 {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let logged = vote(here, n % 7, 1_000 + n);
        let encoded = logged.encode().to_vec();
        let key = DecisionId(here).0.to_be_bytes().to_vec();
        let mut raw = |reason: &'static str, value: Vec<u8>, mac: Option<&[u8]>| {
            let offset = produce_raw(&producer, &topic, partition, Some(&key), &value, mac);
            bad.insert(offset, (reason, value, Some(key.clone())));
        };
        match kind {
            Kind::Good => {
                let position = log.append_votes(&[logged]).unwrap()[0];
                good.push((position, logged));
            }
            Kind::Garbage => {
                let len = rng.random_range(0..200);
                raw(
                    "undecodable",
                    (0..len).map(|_| rng.random()).collect(),
                    None,
                )
            }
            Kind::Truncated => {
                let mut cut = encoded[..rng.random_range(1..encoded.len())].to_vec();
                // Cut to the length of a version-1 entry it is one (without the sealed
                // voter), which decodes: one byte less is not.
                if LoggedVote::is_version_1(&cut) {
                    cut.pop();
                }
                raw("undecodable", cut, None)
            }
            Kind::Unsigned => raw("unsigned", encoded, None),
            Kind::InvalidWeight => {
                let mut invalid = logged;
                invalid.vote.weight = Weight(0);
                raw("invalid", invalid.encode().to_vec(), None)
            }
            Kind::OtherKey => {
                let position = impostor.append_votes(&[logged]).unwrap()[0];
                assert_eq!(position.partition, partition);
                bad.insert(position.offset, ("bad_signature", encoded, Some(key)));
            }
            Kind::ReplayedFromOtherPartition => raw(
                "bad_signature",
                replay_partition.0.clone(),
                Some(&replay_partition.1),
            ),
            Kind::ReplayedFromOtherTopic => raw(
                "bad_signature",
                replay_topic.0.clone(),
                Some(&replay_topic.1),
            ),
        }
    }
    let end = log.end_offset(partition).unwrap();
    assert_eq!(
        end as usize,
        good.len() + bad.len(),
        "every record is counted in the end"
    );

    // Read as the engine does: in small batches, each from where the last one stopped.
    let read_all = |log: &KafkaLog, rng: &mut rand::rngs::StdRng| {
        let mut from = 0;
        let mut records = Vec::new();
        while from < end {
            let batch = log
                .read_batch(partition, from, rng.random_range(1..6))
                .unwrap();
            assert!(
                batch.next > from,
                "a read at {from} (end {end}) did not move on"
            );
            assert!(
                batch
                    .records
                    .iter()
                    .all(|r| r.position().offset < batch.next)
            );
            records.extend(batch.records);
            from = batch.next;
        }
        assert_eq!(from, end);
        records
    };
    let records = read_all(&log, &mut rng);
    let got: Vec<(Position, LoggedVote)> = records
        .iter()
        .filter_map(VoteLogRecord::vote)
        .map(|r| (r.position, r.logged()))
        .collect();
    assert_eq!(
        got, good,
        "the good records, at their acknowledged positions"
    );
    // The other partition still holds its (good) vote.
    assert_eq!(log.read(2, 0, 10).unwrap().len(), 1);

    let expected: BTreeSet<(u64, String)> = bad
        .iter()
        .map(|(offset, (reason, _, _))| (*offset, reason.to_string()))
        .collect();
    let letters = log.read_dead_letters().unwrap();
    let found: BTreeSet<(u64, String)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.partition, partition);
            let (_, value, key) = &bad[&l.offset];
            assert_eq!(
                &l.value, value,
                "the value as received, offset {}",
                l.offset
            );
            assert_eq!(&l.key, key);
            (l.offset, l.reason.clone())
        })
        .collect();
    assert_eq!(found, expected);
    assert_eq!(letters.len(), bad.len(), "each bad record once");
    assert_eq!(log.dead_letters(), bad.len() as u64);
    eprintln!("{} good, {} dead-lettered", good.len(), bad.len());

    // Again from the start in this process: the same records, no new dead letters.
    assert_eq!(read_all(&log, &mut rng), records);
    assert_eq!(log.read_dead_letters().unwrap().len(), bad.len());
    assert_eq!(log.dead_letters(), bad.len() as u64);

    // Another process reading from the start writes them again: a dead letter may repeat
    // (after a restart), and its partition and offset say it is the same record.
    let restarted = KafkaLog::connect(config(&topic, KEY)).unwrap();
    assert_eq!(read_all(&restarted, &mut rng), records);
    let again = restarted.read_dead_letters().unwrap();
    assert_eq!(again.len(), 2 * bad.len());
    assert_eq!(again[bad.len()..], letters[..]);
}

/// The dead-letter topic cannot be written (it does not exist and this log may not create
/// it): the read fails, transiently, and does not go past the bad record; once the topic
/// exists, the next read writes the dead letter and goes on.
#[test]
fn a_read_does_not_pass_a_record_its_dead_letter_was_not_taken_for() {
    let topic = topic();
    let writer = KafkaLog::connect(config(&topic, KEY)).unwrap();
    let reader = KafkaLog::connect(KafkaConfig {
        create_topic: false,
        ..config(&topic, KEY)
    })
    .unwrap();
    let partition = 0;
    let decision = decision_in(partition);
    let first = writer.append_votes(&[vote(decision, 1, 1)]).unwrap()[0];
    let garbage = produce_raw(&raw_producer(), &topic, partition, None, b"garbage", None);
    let last = writer.append_votes(&[vote(decision, 2, 2)]).unwrap()[0];

    for _ in 0..2 {
        let error = reader.read_batch(partition, 0, 10).unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains("dead-letter"), "{error}");
    }
    // The record before it is read alone, and a read from the bad record fails.
    let batch = reader.read_batch(partition, 0, 1).unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].position(), first);
    assert!(reader.read_batch(partition, batch.next, 10).is_err());
    assert_eq!(reader.dead_letters(), 0);

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let dead = format!("{topic}.dead-letter");
    futures_executor::block_on(admin.create_topics(
        [&NewTopic::new(&dead, 1, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let batch = loop {
        match reader.read_batch(partition, batch.next, 10) {
            Ok(batch) => break batch,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("{error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(
        batch
            .records
            .iter()
            .map(|r| r.position())
            .collect::<Vec<_>>(),
        [last]
    );
    assert_eq!(batch.next, last.offset + 1);
    let letters = reader.read_dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].reason.as_str(), letters[0].offset),
        ("undecodable", garbage)
    );
}

/// The sensor topic alike: a reading from a plain producer, one without a sensor and garbage
/// are refused; Canopy's own readings are read.
#[test]
fn sensor_records_not_from_canopy_are_dead_lettered() {
    let topic = topic();
    let log = KafkaSensorLog::connect(KafkaConfig {
        partitions: 1,
        ..KafkaConfig::new(broker(), &topic, LogKey::from_bytes(KEY))
    })
    .unwrap();
    let reading = |value_micro: i64| SensorReading {
        sensor_id: "s-1".into(),
        region: "north".into(),
        metric: Metric::No2,
        value_micro,
        observed_at: 1_780_000_000_000,
        quality: Quality::Ok,
    };
    let producer = raw_producer();
    let encode = |r: &SensorReading| {
        let mut out = Vec::new();
        r.encode_into(&mut out);
        out
    };
    let good = EntryLog::append(&log, &[reading(1_000_000)]).unwrap()[0];
    let unsigned = produce_raw(
        &producer,
        &topic,
        0,
        None,
        &encode(&reading(2_000_000)),
        None,
    );
    let nameless = SensorReading {
        sensor_id: String::new(),
        ..reading(3_000_000)
    };
    let nameless = produce_raw(&producer, &topic, 0, None, &encode(&nameless), None);
    let garbage = produce_raw(&producer, &topic, 0, None, &[1, 2, 3], None);
    let batch = EntryLog::read_batch(&log, 0, 0, 100).unwrap();
    assert_eq!(
        batch
            .records
            .iter()
            .map(|r| r.position())
            .collect::<Vec<_>>(),
        [good]
    );
    assert_eq!(batch.next, garbage + 1);
    let letters: Vec<(String, u64)> = log
        .read_dead_letters()
        .unwrap()
        .into_iter()
        .map(|l| (l.reason, l.offset))
        .collect();
    assert_eq!(
        letters,
        [
            ("unsigned".to_string(), unsigned),
            ("invalid".to_string(), nameless),
            ("undecodable".to_string(), garbage),
        ]
    );
}

/// A flood: thousands of garbage records in a row are all dead-lettered, once, and the
/// good vote behind them is read; prints how fast the reader goes through them.
#[test]
fn a_flood_of_garbage_is_dead_lettered_and_read_past() {
    const FLOOD: u64 = 5_000;
    let topic = topic();
    let log = KafkaLog::connect(config(&topic, KEY)).unwrap();
    let partition = 0;
    let producer = raw_producer();
    let deliveries: Vec<_> = (0..FLOOD)
        .map(|n| {
            let value = n.to_be_bytes();
            loop {
                let record = FutureRecord::<[u8], [u8]>::to(&topic)
                    .partition(partition as i32)
                    .payload(&value[..]);
                match producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
        .collect();
    for delivery in deliveries {
        futures_executor::block_on(delivery).unwrap().unwrap();
    }
    let good = log
        .append_votes(&[vote(decision_in(partition), 1, 1)])
        .unwrap()[0];
    assert_eq!(good.offset, FLOOD);

    let started = std::time::Instant::now();
    let (mut from, mut records) = (0, Vec::new());
    while from <= good.offset {
        let batch = log.read_batch(partition, from, 1_000).unwrap();
        records.extend(batch.records);
        from = batch.next;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        records.iter().map(|r| r.position()).collect::<Vec<_>>(),
        [good]
    );
    assert_eq!(log.dead_letters(), FLOOD);
    let letters = log.read_dead_letters().unwrap();
    assert_eq!(
        letters.iter().map(|l| l.offset).collect::<BTreeSet<_>>(),
        (0..FLOOD).collect()
    );
    assert!(letters.iter().all(|l| l.reason == "undecodable"));
    eprintln!(
        "{FLOOD} garbage records dead-lettered and read past in {elapsed:?} ({:.0}/s)",
        FLOOD as f64 / elapsed.as_secs_f64()
    );
}
