//! The sensor features dataflow against its from-scratch oracle: for random reading streams
//! with out-of-order and late arrivals, fed in random epochs over two workers, the published
//! windows and z-scores equal a recomputation over the log prefix after every epoch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use canopy_dataflow::{
    AlertRules, Owner, Retention, SensorViews, WindowConfig, WindowKey, WindowSize, WindowStats,
    ZScores, build_sensor_dataflow, recompute_features,
};
use canopy_ingest::{Position, SensorRecord, partition_for_region};
use canopy_schemas::{Metric, Quality, SensorReading};
use proptest::prelude::*;

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
        let mut inputs =
            build_sensor_dataflow(worker, config(), PARTITIONS, Arc::clone(&worker_views));
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
