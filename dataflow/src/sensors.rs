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
//!  "WindowFeatures" exchange by partition (a logged reading stays on the worker that reads
//!      its region's partition, on any process, so a region's windows, names, alerts and
//!      scores live in one place; readings fed without a position go by (region, metric)):
//!      per complete epoch add each reading to
//!      its sensor's and its region's short and long window (integer sums: exact in any
//!      order); re-derive the z-scores of the sensor's short windows whose window or
//!      baseline (the sensor's previous long window) changed
//!      ▼
//!  "PublishFeatures": SensorViews::publish, one complete epoch at a time
//!  log ends (partition, end) ─ broadcast ─▶ "SensorSignals": an epoch some worker fed is
//!      one every worker must seal past (in a cluster, other processes learn it this way)
//! ```
//!
//! The windows' arithmetic lives in the sensor_windows module; this one wires it into
//! timely operators and feeds them.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use canopy_ingest::SensorRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::{Broadcast, Input as TimelyInput};
use timely::worker::Worker;

use crate::epoch::{Epoch, EpochBuffer, epoch_of};
use crate::sensor_views::SensorViews;
use crate::sensor_windows::{FeedReading, LatenessGate, WindowConfig, WindowState, WindowUpdate};

/// Where a reading fed without a log position goes: `(region, metric)` readings of
/// different epochs reach the same worker.
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
    /// Each reading with the worker index it is routed by (see the module's picture).
    readings: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u64, FeedReading)>>>,
    /// (partition, end) of the partitions this worker fed, sent when an epoch is sealed.
    ends_input: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u32, u64)>>>,
    sent_ends: HashMap<u32, u64>,
    /// The epoch this worker must seal past for what any worker fed to complete.
    wanted: Rc<Cell<Epoch>>,
    /// Too-late counts already handed to the views, per partition.
    reported_too_late_by_partition: HashMap<u32, u64>,
    probe: ProbeHandle<Epoch>,
    config: WindowConfig,
    gate: LatenessGate,
    /// Sensor and region keys by name: hashing every reading's names costs more than the
    /// window arithmetic.
    sensor_keys: HashMap<String, u64>,
    region_keys: HashMap<String, u64>,
    /// Partition ends already handed to the views.
    published_ends: HashMap<u32, u64>,
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
    let wanted: Rc<Cell<Epoch>> = Rc::default();
    let signal = Rc::clone(&wanted);
    let (readings, ends_input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
        let (input, readings) = TimelyInput::new_input::<(u64, FeedReading)>(&scope);
        let (ends_input, ends) = TimelyInput::new_input::<(u32, u64)>(&scope);
        // Ends are sent only when they move: a message at epoch e means some worker fed e.
        ends.broadcast()
            .sink(Pipeline, "SensorSignals", move |(input, _frontier)| {
                input.for_each(|time, ends| {
                    if !ends.is_empty() {
                        signal.set(signal.get().max(epoch_of(&time) + 1));
                    }
                    ends.clear();
                });
            });
        let probe = ProbeHandle::new();
        readings
            .unary_frontier::<CapacityContainerBuilder<Vec<WindowUpdate>>, _, _, _>(
                Exchange::new(|(worker, _): &(u64, FeedReading)| *worker),
                "WindowFeatures",
                move |_capability, _info| {
                    let mut state = WindowState::new();
                    let mut pending: EpochBuffer<(u64, FeedReading)> = EpochBuffer::default();
                    move |(input, frontier), output| {
                        input.for_each(|capability, readings| {
                            pending.hold_batch(&capability, readings)
                        });
                        while let Some(complete) =
                            pending.pop_complete(|epoch| frontier.less_equal(epoch))
                        {
                            let readings: Vec<FeedReading> =
                                complete.records.iter().map(|(_, r)| *r).collect();
                            let updates = state.apply(&operator_config, &readings);
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
        (input, ends_input, probe)
    });
    SensorInputs {
        readings,
        ends_input,
        sent_ends: HashMap::new(),
        wanted,
        reported_too_late_by_partition: HashMap::new(),
        probe,
        config,
        gate: LatenessGate::default(),
        sensor_keys: HashMap::new(),
        region_keys: HashMap::new(),
        published_ends: HashMap::new(),
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
        // The worker that reads the partition keeps its windows (Exchange takes it mod peers).
        self.readings.send((
            u64::from(partition),
            FeedReading {
                region,
                sensor,
                metric: reading.metric,
                value: reading.value_micro,
                observed_at: reading.observed_at,
                offset: record.position.offset,
                open,
                watermark,
            },
        ));
    }

    /// Feeds a reading whose keys and lateness are already decided (the benchmark).
    pub fn push_feed(&mut self, reading: FeedReading) {
        self.readings.send((route(&reading), reading));
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
        for (partition, end) in &self.ends {
            if self.sent_ends.get(partition) != Some(end) {
                self.ends_input.send((*partition, *end));
                self.sent_ends.insert(*partition, *end);
            }
        }
        if next > sealed {
            self.readings.advance_to(next);
            self.ends_input.advance_to(next);
        }
        self.readings.flush();
        self.ends_input.flush();
        sealed
    }

    /// The epoch this worker must seal up to so that every epoch another worker fed, on any
    /// process, can complete.
    pub fn wanted_epoch(&self) -> Epoch {
        self.wanted.get()
    }

    /// Whether `epoch` is in the views (on every worker).
    pub fn is_published(&self, epoch: Epoch) -> bool {
        !self.probe.less_equal(&epoch)
    }

    pub fn current_epoch(&self) -> Epoch {
        *self.readings.time()
    }

    /// Steps `worker` until `epoch` is in the views, then moves the views' frontier.
    pub fn run_until_published(&mut self, worker: &mut Worker, epoch: Epoch) {
        while self.probe.less_equal(&epoch) {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        self.publish_frontier();
    }

    /// Tells the views that this worker's partitions are in them up to their ends as of the
    /// last published epoch. Call once [`is_published`](Self::is_published).
    pub fn publish_frontier(&mut self) {
        for (partition, count) in &self.gate.too_late_by_partition {
            if self.reported_too_late_by_partition.get(partition) != Some(count) {
                self.views.note_too_late(*partition, *count);
                self.reported_too_late_by_partition
                    .insert(*partition, *count);
            }
        }
        for (partition, end) in &self.ends {
            if self.published_ends.get(partition) != Some(end) {
                self.views.advance(*partition, *end);
                self.published_ends.insert(*partition, *end);
            }
        }
    }
}
