//! The vote log on a real Kafka-protocol broker (tansu, started by scripts/test; its address
//! in CANOPY_TEST_KAFKA). Each test uses a topic of its own.

use std::sync::Arc;

use canopy_ingest::*;
use canopy_schemas::*;

mod common;
use common::{append_and_read_back, read_partition, vote};

fn broker() -> String {
    std::env::var("CANOPY_TEST_KAFKA").expect(
        "CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test installs and starts \
         tansu and sets it)",
    )
}

fn topic() -> String {
    format!("canopy-test-{}", uuid::Uuid::new_v4().simple())
}

fn config(topic: &str, partitions: u32) -> KafkaConfig {
    KafkaConfig {
        partitions,
        ..KafkaConfig::new(broker(), topic, LogKey::from_bytes([3; 32]))
    }
}

#[test]
fn acknowledged_votes_read_back_in_order_at_their_positions() {
    let topic = topic();
    let log = KafkaLog::connect(config(&topic, 3)).unwrap();
    let votes: Vec<LoggedVote> = (0..120).map(|n| vote(n % 5, n, n)).collect();
    append_and_read_back(&log, &votes);

    // A second connection (another process) sees the same log; async appends continue it.
    let again = Arc::new(KafkaLog::connect(config(&topic, 3)).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let more: Vec<LoggedVote> = (200..210).map(|n| vote(1, n, n)).collect();
    let appended = runtime.block_on(again.append_votes_async(&more)).unwrap();
    let partition = partition_for(DecisionId(1), 3);
    let records = read_partition(again.as_ref(), partition);
    assert_eq!(records.last().unwrap().position, *appended.last().unwrap());
    assert_eq!(records.last().unwrap().logged(), more[9]);
}

#[test]
fn a_topic_that_does_not_match_the_configuration_is_refused() {
    let topic = topic();
    KafkaLog::connect(config(&topic, 2)).unwrap();
    let error = KafkaLog::connect(config(&topic, 4)).unwrap_err();
    assert_eq!(error.code(), "kafka_topic", "{error}");
    assert!(error.to_string().contains("2 partitions"), "{error}");

    let missing = KafkaConfig {
        create_topic: false,
        ..config(&self::topic(), 2)
    };
    let error = KafkaLog::connect(missing).unwrap_err();
    assert_eq!(error.code(), "kafka_topic", "{error}");

    // Created with min.insync.replicas 1: a log that needs 2 refuses it.
    let weak = self::topic();
    KafkaLog::connect(config(&weak, 2)).unwrap();
    let error = KafkaLog::connect(KafkaConfig {
        min_insync_replicas: 2,
        ..config(&weak, 2)
    })
    .unwrap_err();
    assert_eq!(error.code(), "kafka_topic", "{error}");
    assert!(
        error.to_string().contains("min.insync.replicas is 1"),
        "{error}"
    );
}

#[test]
fn reading_a_partition_that_does_not_exist_is_an_error() {
    let log = KafkaLog::connect(config(&topic(), 2)).unwrap();
    assert_eq!(log.read(2, 0, 10).unwrap_err().code(), "no_such_partition");
    assert!(log.read(0, 0, 10).unwrap().is_empty());
}

/// Readings on a Kafka topic keyed by region: each region in the partition the embedded log
/// would give it, read back in order.
#[test]
fn sensor_readings_on_kafka_read_back_by_region() {
    let topic = topic();
    let log = KafkaSensorLog::connect(config(&topic, 3)).unwrap();
    let readings: Vec<SensorReading> = (0..45)
        .map(|n| SensorReading {
            sensor_id: format!("s-{}", n % 4),
            region: ["north", "south", "harbour"][n as usize % 3].into(),
            metric: Metric::No2,
            value_micro: n * 250_000,
            observed_at: 1_780_000_000_000 + n * 1_000,
            quality: Quality::Ok,
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let positions = runtime
        .block_on(EntryLog::append_async(&log, &readings))
        .unwrap();
    for (reading, position) in readings.iter().zip(&positions) {
        assert_eq!(position.partition, partition_for_region(&reading.region, 3));
    }
    for partition in 0..3 {
        let records = EntryLog::read(&log, partition, 0, 1_000).unwrap();
        assert_eq!(
            records.len() as u64,
            EntryLog::end_offset(&log, partition).unwrap()
        );
        let expected: Vec<&SensorReading> = readings
            .iter()
            .filter(|r| partition_for_region(&r.region, 3) == partition)
            .collect();
        let got: Vec<&SensorReading> = records.iter().map(|r| &r.reading).collect();
        assert_eq!(got, expected);
    }
}
