//! The sensor features dataflow: tumbling event-time windows per (sensor, metric) and per
//! (region, metric), each reading's z-score against its sensor's trailing baseline, late
//! readings correcting the windows they belong to until an allowed lateness makes a window
//! final.
//!
//! ```text
//!  SensorLog partition p ─▶ SensorInputs::push (worker p mod W)
//!      │ keys (sensor, region) hashed once; per partition an event-time watermark
//!      │ (the largest event time the partition's earlier readings carried); a window
//!      │ whose end + allowed lateness ≤ watermark is final and takes no more readings
//!      ▼
//!  "WindowFeatures" exchange by (region, metric): per complete epoch add each reading to
//!      its sensor's and its region's short and long window (integer sums: exact in any
//!      order); re-derive the z-scores of the sensor's short windows whose window or
//!      baseline (the sensor's previous long window) changed
//!      ▼
//!  "PublishFeatures": SensorViews::publish, one complete epoch at a time
//! ```
//!
//! The windows' arithmetic lives in the sensor_windows module; this one wires it into
//! timely operators and feeds them.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_ingest::SensorRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::Input as TimelyInput;
use timely::worker::Worker;

use crate::epoch::{Epoch, EpochBuffer};
use crate::sensor_views::SensorViews;
use crate::sensor_windows::{FeedReading, LatenessGate, WindowConfig, WindowState, WindowUpdate};

/// Whether `(region, metric)` readings of different epochs reach the same worker.
fn route(reading: &FeedReading) -> u64 {
    reading.region ^ (u64::from(reading.metric.code()).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The key of `name`, computed (and announced) once.
fn cached_key(
    cache: &mut HashMap<String, u64>,
    name: &str,
    first: impl FnOnce(&str) -> u64,
) -> u64 {
    if let Some(key) = cache.get(name) {
        return *key;
    }
    let key = first(name);
    cache.insert(name.to_string(), key);
    key
}

/// One worker's handles on the features dataflow.
pub struct SensorInputs {
    readings: InputHandle<Epoch, CapacityContainerBuilder<Vec<FeedReading>>>,
    probe: ProbeHandle<Epoch>,
    config: WindowConfig,
    gate: LatenessGate,
    /// Sensor and region keys by name: hashing every reading's names costs more than the
    /// window arithmetic.
    sensor_keys: HashMap<String, u64>,
    region_keys: HashMap<String, u64>,
    /// Too-late readings already counted in the views.
    reported_too_late: u64,
    views: Arc<SensorViews>,
    /// End offsets of the partitions this worker fed, as of the current epoch.
    ends: HashMap<u32, u64>,
}

/// Builds the features dataflow on `worker`; results go to `views`.
pub fn build_sensor_dataflow(
    worker: &mut Worker,
    config: WindowConfig,
    views: Arc<SensorViews>,
) -> SensorInputs {
    let sink = Arc::clone(&views);
    let operator_config = config.clone();
    let (readings, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
        let (input, readings) = TimelyInput::new_input::<FeedReading>(&scope);
        let probe = ProbeHandle::new();
        readings
            .unary_frontier::<CapacityContainerBuilder<Vec<WindowUpdate>>, _, _, _>(
                Exchange::new(route),
                "WindowFeatures",
                move |_capability, _info| {
                    let mut state = WindowState::new();
                    let mut pending: EpochBuffer<FeedReading> = EpochBuffer::default();
                    move |(input, frontier), output| {
                        input.for_each(|capability, readings| {
                            pending.hold_batch(&capability, readings)
                        });
                        while let Some(complete) =
                            pending.pop_complete(|epoch| frontier.less_equal(epoch))
                        {
                            let updates = state.apply(&operator_config, &complete.records);
                            if !updates.is_empty() {
                                output
                                    .session(&complete.capability)
                                    .give_iterator(updates.into_iter());
                            }
                        }
                    }
                },
            )
            .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "PublishFeatures",
                move |_capability, _info| {
                    // Holding each epoch's capability until it is published keeps the probe
                    // behind it: "published" then means in the views, not just delivered.
                    let mut pending: EpochBuffer<WindowUpdate> = EpochBuffer::default();
                    move |(input, frontier), _output| {
                        input.for_each(|capability, updates| {
                            pending.hold_batch(&capability, updates)
                        });
                        while let Some(complete) =
                            pending.pop_complete(|epoch| frontier.less_equal(epoch))
                        {
                            sink.publish(complete.records);
                        }
                    }
                },
            )
            .probe_with(&probe);
        (input, probe)
    });
    SensorInputs {
        readings,
        probe,
        config,
        gate: LatenessGate::default(),
        sensor_keys: HashMap::new(),
        region_keys: HashMap::new(),
        reported_too_late: 0,
        views,
        ends: HashMap::new(),
    }
}

impl SensorInputs {
    /// Feeds one logged reading into the current epoch (in log order per partition).
    pub fn push(&mut self, record: &SensorRecord) {
        let reading = &record.reading;
        let partition = record.position.partition;
        let end = self.ends.entry(partition).or_insert(0);
        *end = (*end).max(record.position.offset + 1);
        if !reading.quality.counts() {
            return;
        }
        let Some((open, watermark)) = self
            .gate
            .admit(&self.config, partition, reading.observed_at)
        else {
            return;
        };
        let views = &self.views;
        let region = cached_key(&mut self.region_keys, &reading.region, |name| {
            let key = reading.region_key();
            views.name_region(key, name);
            key
        });
        let sensor = cached_key(&mut self.sensor_keys, &reading.sensor_id, |name| {
            let key = reading.sensor_key();
            views.name_sensor(key, name, region);
            key
        });
        self.readings.send(FeedReading {
            region,
            sensor,
            metric: reading.metric,
            value: reading.value_micro,
            observed_at: reading.observed_at,
            offset: record.position.offset,
            open,
            watermark,
        });
    }

    /// Feeds a reading whose keys and lateness are already decided (the benchmark).
    pub fn push_feed(&mut self, reading: FeedReading) {
        self.readings.send(reading);
    }

    /// Records that `partition` was read up to `end` (nothing new may have come).
    pub fn note_end(&mut self, partition: u32, end: u64) {
        let known = self.ends.entry(partition).or_insert(0);
        *known = (*known).max(end);
    }

    /// Readings dropped because both their windows were final when they arrived.
    pub fn too_late(&self) -> u64 {
        self.gate.too_late
    }

    /// Closes the current epoch; returns it.
    pub fn seal_until(&mut self, next: Epoch) -> Epoch {
        let sealed = *self.readings.time();
        if next > sealed {
            self.readings.advance_to(next);
        }
        self.readings.flush();
        sealed
    }

    pub fn current_epoch(&self) -> Epoch {
        *self.readings.time()
    }

    /// Steps `worker` until `epoch` is in the views, then moves the views' frontier.
    pub fn run_until_published(&mut self, worker: &mut Worker, epoch: Epoch) {
        while self.probe.less_equal(&epoch) {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        for (partition, end) in &self.ends {
            self.views.advance(*partition, *end);
        }
        self.views
            .note_too_late(self.gate.too_late - self.reported_too_late);
        self.reported_too_late = self.gate.too_late;
    }
}
