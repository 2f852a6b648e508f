//! The sensor features dataflow against its from-scratch oracle: for random reading streams
//! with out-of-order and late arrivals, fed in random epochs over two workers, the published
//! windows and z-scores equal a recomputation over the log prefix after every epoch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use canopy_dataflow::{
    AlertRules, Owner, Retention, SensorEngine, SensorEngineConfig, SensorViews, WindowConfig,
    WindowKey, WindowSize, WindowStats, ZScores, build_sensor_dataflow, recompute_features,
};
use canopy_ingest::{
    KafkaConfig, KafkaSensorLog, Position, SegmentLogConfig, SensorLog, SensorRecord,
    SensorSegmentLog, partition_for_region,
};
use canopy_schemas::{Metric, Quality, SensorReading};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const PARTITIONS: u32 = 2;
const T0: i64 = 1_780_000_000_000;

fn config() -> WindowConfig {
    WindowConfig {
        // Short windows of 1 minute and long ones of 10, so a few hundred readings span
        // several baselines.
        sizes_ms: [60_000, 600_000],
        allowed_lateness_ms: 120_000,
        z_threshold: 3.0,
    }
}

/// (sensor index, metric index, time step, lateness, value, maintenance?)
type Draw = (usize, usize, i64, i64, i64, bool);

fn draws() -> impl Strategy<Value = Vec<Draw>> {
    prop::collection::vec(
        (
            0..5usize,
            0..2usize,
            0..20_000i64,
            prop_oneof![4 => Just(0i64), 3 => 0..90_000i64, 1 => 0..900_000i64],
            -50_000_000..200_000_000i64,
            prop::bool::weighted(0.05),
        ),
        1..400,
    )
}

/// Turns draws into a log: each partition's offsets dense, event times wandering back by the
/// drawn lateness from a clock that moves forward.
fn log_of(draws: &[Draw]) -> Vec<SensorRecord> {
    let sensors = ["s-a", "s-b", "s-c", "s-d", "s-e"];
    let regions = ["north", "north", "south", "south", "east"];
    let metrics = [Metric::Pm25, Metric::Temperature];
    let mut clock = T0;
    let mut next_offset = [0u64; PARTITIONS as usize];
    draws
        .iter()
        .map(|(sensor, metric, step, late, value, maintenance)| {
            clock += step;
            let region = regions[*sensor];
            let partition = partition_for_region(region, PARTITIONS);
            let offset = next_offset[partition as usize];
            next_offset[partition as usize] += 1;
            SensorRecord {
                position: Position { partition, offset },
                reading: SensorReading {
                    sensor_id: sensors[*sensor].into(),
                    region: region.into(),
                    metric: metrics[*metric],
                    value_micro: *value,
                    observed_at: clock - late,
                    quality: if *maintenance {
                        Quality::Maintenance
                    } else {
                        Quality::Ok
                    },
                },
            }
        })
        .collect()
}

type Published = BTreeMap<WindowKey, (WindowStats, Option<ZScores>)>;

/// Runs the dataflow on two workers, worker 0 feeding `records` cut into epochs at `cuts`;
/// returns what the views held after each epoch.
fn run(records: Vec<SensorRecord>, cuts: Vec<usize>) -> Vec<(usize, Published)> {
    let views = Arc::new(SensorViews::new(
        PARTITIONS,
        config(),
        Retention {
            short_windows: usize::MAX,
            long_windows: usize::MAX,
        },
        AlertRules::default(),
    ));
    let seen: Arc<Mutex<Vec<(usize, Published)>>> = Arc::default();
    let (records, cuts) = (Arc::new(records), Arc::new(cuts));
    let (worker_views, worker_seen) = (Arc::clone(&views), Arc::clone(&seen));
    timely::execute(timely::Config::process(2), move |worker| {
        let mut inputs = build_sensor_dataflow(worker, config(), Arc::clone(&worker_views));
        let mut from = 0;
        for (epoch, cut) in cuts.iter().enumerate() {
            if worker.index() == 0 {
                for record in &records[from..*cut] {
                    inputs.push(record);
                }
            }
            let sealed = inputs.seal_until(epoch as u64 + 1);
            inputs.run_until_published(worker, sealed);
            if worker.index() == 0 {
                let published = worker_views
                    .all_windows()
                    .into_iter()
                    .map(|(key, view)| (key, (view.stats, view.z)))
                    .collect();
                worker_seen.lock().unwrap().push((*cut, published));
            }
            from = *cut;
        }
    })
    .unwrap()
    .join()
    .into_iter()
    .for_each(|result| result.unwrap());
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

fn cuts_of(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    cuts.push(len);
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_windows_equal_a_recomputation_after_every_epoch(
        draws in draws(),
        raw_cuts in prop::collection::vec(0..10_000usize, 0..8),
    ) {
        let records = log_of(&draws);
        let cuts = cuts_of(records.len(), &raw_cuts);
        let observed = run(records.clone(), cuts);
        for (upto, published) in observed {
            let expected = recompute_features(&config(), PARTITIONS, &records[..upto]);
            prop_assert_eq!(&published, &expected, "after {} readings", upto);
        }
    }
}

/// A late reading corrects the window it belongs to while the allowed lateness lasts, and
/// is counted as too late (changing nothing) once the window is final.
#[test]
fn late_readings_correct_open_windows_and_leave_final_ones_alone() {
    let reading = |offset: u64, at: i64, value: i64| SensorRecord {
        position: Position {
            partition: partition_for_region("north", PARTITIONS),
            offset,
        },
        reading: SensorReading {
            sensor_id: "s-a".into(),
            region: "north".into(),
            metric: Metric::Pm25,
            value_micro: value,
            observed_at: at,
            quality: Quality::Ok,
        },
    };
    let minute = |m: i64| T0 - T0 % 600_000 + m * 60_000;
    let records = vec![
        reading(0, minute(0) + 1_000, 10_000_000),
        reading(1, minute(3), 20_000_000),
        // 3 minutes after the first window closed: within the 2-minute lateness of its
        // 10-minute window, past that of its 1-minute window.
        reading(2, minute(0) + 2_000, 30_000_000),
        reading(3, minute(20), 40_000_000),
        // Both its windows are final by now.
        reading(4, minute(0) + 3_000, 50_000_000),
    ];
    let observed = run(records.clone(), vec![2, 3, 5]);
    let key = |size, start| WindowKey {
        owner: Owner::Sensor(records[0].reading.sensor_key()),
        metric: Metric::Pm25,
        size,
        start_ms: start,
    };
    let last = &observed.last().unwrap().1;
    assert_eq!(last[&key(WindowSize::Short, minute(0))].0.count, 1);
    let long = last[&key(WindowSize::Long, minute(0))].0;
    assert_eq!(
        long.count, 3,
        "the late reading joined the open 10-minute window"
    );
    assert_eq!(long.max, 30_000_000);
    assert_eq!(
        observed[1].1[&key(WindowSize::Long, minute(0))].0.count,
        3,
        "corrected in the epoch it arrived"
    );
}

/// The engine over a real sensor log: readings appended before it starts and while it runs
/// are all in the views once its frontier reaches the log's ends, and the views equal the
/// recomputation over what the log holds.
fn engine_equals_the_recomputation(log: Arc<dyn SensorLog>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let draws: Vec<Draw> = (0..600)
        .map(|_| {
            (
                rng.random_range(0..5),
                rng.random_range(0..2),
                rng.random_range(0..20_000),
                if rng.random_bool(0.1) {
                    rng.random_range(0..300_000)
                } else {
                    0
                },
                rng.random_range(0..100_000_000),
                rng.random_bool(0.03),
            )
        })
        .collect();
    let readings: Vec<SensorReading> = log_of(&draws).into_iter().map(|r| r.reading).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(log.append_async(&readings[..300]))
        .unwrap();
    let views = Arc::new(SensorViews::new(
        log.partitions(),
        config(),
        Retention::default(),
        AlertRules::default(),
    ));
    let engine = SensorEngine::start(
        SensorEngineConfig {
            workers: 2,
            windows: config(),
            ..SensorEngineConfig::default()
        },
        Arc::clone(&log),
        Arc::clone(&views),
    )
    .unwrap();
    runtime
        .block_on(log.append_async(&readings[300..]))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stored = Vec::new();
    for partition in 0..log.partitions() {
        let end = log.end_offset(partition).unwrap();
        while views.frontier(partition) < end {
            assert!(
                std::time::Instant::now() < deadline,
                "partition {partition} not caught up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut from = 0;
        while from < end {
            let batch = log.read(partition, from, 1_000).unwrap();
            from = batch.last().unwrap().position.offset + 1;
            stored.extend(batch);
        }
    }
    assert_eq!(stored.len(), readings.len());
    let published: Published = views
        .all_windows()
        .into_iter()
        .map(|(key, view)| (key, (view.stats, view.z)))
        .collect();
    assert_eq!(
        published,
        recompute_features(&config(), log.partitions(), &stored)
    );
    engine.shutdown().unwrap();
}

#[test]
fn the_engine_over_the_segment_sensor_log_equals_the_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let log = SensorSegmentLog::open(
        dir.path(),
        SegmentLogConfig {
            partitions: PARTITIONS,
            ..SegmentLogConfig::default()
        },
    )
    .unwrap();
    engine_equals_the_recomputation(Arc::new(log));
}

/// Readings on a Kafka topic keyed by region (a real tansu broker, started by scripts/test).
#[test]
fn the_engine_over_a_kafka_topic_keyed_by_region_equals_the_recomputation() {
    let broker = std::env::var("CANOPY_TEST_KAFKA")
        .expect("CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test starts tansu)");
    let topic = format!("canopy-sensors-{}", uuid::Uuid::new_v4().simple());
    let log = KafkaSensorLog::connect(KafkaConfig {
        partitions: PARTITIONS,
        ..KafkaConfig::new(broker, topic, canopy_ingest::LogKey::from_bytes([7; 32]))
    })
    .unwrap();
    engine_equals_the_recomputation(Arc::new(log));
}
