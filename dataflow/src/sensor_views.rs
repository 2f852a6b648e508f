//! Where sensor features go: the latest state of every recent window, tagged with the
//! sensor log position it includes, the model's verdicts on sensor windows, and threshold
//! alerts per region.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use canopy_ingest::{Position, partition_for_region};
use canopy_schemas::{Metric, name_key};
use foldhash::quality::FixedState;
use serde::{Deserialize, Serialize};

use crate::DataflowError;
use crate::sensor_windows::{
    Owner, WindowConfig, WindowKey, WindowSize, WindowStats, WindowUpdate, ZScores, floor_std,
};

/// The model's verdict on one sensor short window.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct ModelScore {
    /// Probability that the sensor is faulty in this window.
    pub p_fault: f32,
    pub flagged: bool,
    /// The feature vector it was given (f0..f4, see [`SensorViews::model_features`]).
    pub features: [f32; 5],
}

/// A window as readers see it.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct WindowView {
    pub region: u64,
    pub stats: WindowStats,
    pub z: Option<ZScores>,
    pub model: Option<ModelScore>,
}

/// A region crossed (or fell back below) a metric's alert threshold.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Alert {
    pub region: String,
    pub metric: Metric,
    /// "threshold_exceeded" or "threshold_cleared".
    pub kind: String,
    pub threshold: f64,
    /// The region's short-window mean that crossed it.
    pub value: f64,
    pub window_start_ms: i64,
    pub as_of: Position,
}

/// Per metric, the region short-window mean above which an alert is raised.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertRules {
    pub thresholds: HashMap<Metric, f64>,
}

impl AlertRules {
    /// Levels from the WHO 2021 air-quality guidelines' interim targets and common
    /// comfort limits; an operator overrides them.
    pub fn defaults() -> Self {
        Self {
            thresholds: HashMap::from([
                (Metric::Pm25, 75.0),
                (Metric::Pm10, 150.0),
                (Metric::No2, 200.0),
                (Metric::O3, 240.0),
                (Metric::So2, 500.0),
                (Metric::Co, 30.0),
                (Metric::Co2, 5_000.0),
                (Metric::Noise, 85.0),
            ]),
        }
    }
}

type AlertSink = Box<dyn Fn(Alert) + Send + Sync>;
type WindowSink = Box<dyn Fn(&[WindowUpdate]) + Send + Sync>;

/// What readers of sensor features ask: the in-process [`SensorViews`] (`canopy up`), or a
/// store the workers of a cluster copy theirs into (Redis, in the node crate).
pub trait SensorViewRead: Send + Sync {
    /// The window lengths (every reader reports a window's end).
    fn config(&self) -> &WindowConfig;
    /// The position a region's views include: its partition and the partition's frontier.
    fn as_of(&self, region: &str) -> Result<Position, DataflowError>;
    /// Every reading of `partition` below this is in the views (0 when unknown).
    fn frontier(&self, partition: u32) -> u64;
    /// Waits until the views include `position` (read your own readings), up to `timeout`.
    fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), DataflowError>;
    /// The metrics a region has windows of.
    fn region_metrics(&self, region: &str) -> Result<Vec<Metric>, DataflowError>;
    /// The sensors of a region (those that sent readings), with names.
    fn region_sensors(&self, region: &str) -> Result<Vec<(u64, String)>, DataflowError>;
    /// The newest window of a series.
    fn latest(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
    ) -> Result<Option<(i64, WindowView)>, DataflowError>;
    /// The windows of one series with `from_ms <= start < until_ms`, oldest first.
    fn windows(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(i64, WindowView)>, DataflowError>;
    /// Readings dropped because they came after their windows were final.
    fn too_late(&self) -> Result<u64, DataflowError>;
    /// Why the features dataflow stopped, if it did.
    fn failure(&self) -> Option<String>;
    /// Why the workers score nothing with the model, when the views know it.
    fn model_unavailable(&self) -> Option<String> {
        None
    }
}

/// Where a worker process copies what its views take, for readers in other processes: the
/// same calls the dataflow and the scorer make, in the same order.
pub trait SensorMirror: Send + Sync {
    fn name_region(&self, key: u64, name: &str);
    fn name_sensor(&self, key: u64, name: &str, region: u64);
    /// One complete epoch's window changes (before the partitions' frontiers move past it).
    fn windows(&self, updates: &[WindowUpdate]);
    fn advance(&self, partition: u32, end: u64);
    /// The count of too-late readings of `partition` so far.
    fn too_late(&self, partition: u32, count: u64);
    fn model_scores(&self, scores: &[(WindowKey, ModelScore)]);
    fn fail(&self, reason: &str);
}

/// How many windows of each size a series keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub short_windows: usize,
    pub long_windows: usize,
}

impl Default for Retention {
    /// A day of minutes, a month of hours.
    fn default() -> Self {
        Self {
            short_windows: 24 * 60,
            long_windows: 31 * 24,
        }
    }
}

type Series = BTreeMap<i64, WindowView>;
type SeriesKey = (Owner, Metric, WindowSize);
type SeriesMap = HashMap<SeriesKey, Series, FixedState>;

/// The series are spread over this many locks by owner, so that the workers publishing
/// their parts of an epoch, and readers, seldom wait for one another (one lock over all of
/// them was where two workers queued).
const SERIES_SHARDS: usize = 16;

fn series_key(key: &WindowKey) -> SeriesKey {
    (key.owner, key.metric, key.size)
}

fn shard_of(owner: Owner) -> usize {
    let (key, kind) = match owner {
        Owner::Sensor(key) => (key, 0),
        Owner::Region(key) => (key, 1),
    };
    (FixedState::with_seed(0).hash_one((key, kind)) as usize) % SERIES_SHARDS
}

/// f2 compares the spread of a sensor's last this-many short windows with its baseline's.
const RECENT_WINDOWS: i64 = 10;

#[derive(Default)]
struct Inner {
    frontier: Vec<u64>,
    region_names: HashMap<u64, String>,
    sensor_names: HashMap<u64, String>,
    region_sensors: HashMap<u64, BTreeSet<u64>>,
    /// Sensor short windows changed since the scorer last looked.
    unscored: HashSet<WindowKey>,
    /// Per (region, metric): whether its newest short window is above the threshold.
    above: HashMap<(u64, Metric), bool>,
    /// Too-late readings per partition.
    too_late: HashMap<u32, u64>,
    failure: Option<String>,
}

/// The sink of the features dataflow and the source of `/api/v1/data/*`.
pub struct SensorViews {
    partitions: u32,
    config: WindowConfig,
    retention: Retention,
    rules: AlertRules,
    /// Every series, by [`shard_of`] its owner. A shard's lock is never held with another's
    /// or with `inner`'s.
    series: Box<[Mutex<SeriesMap>]>,
    inner: Mutex<Inner>,
    advanced: Condvar,
    alert_sink: Mutex<Option<AlertSink>>,
    /// See every epoch's window changes before they are applied (the analytics lake).
    window_sinks: Mutex<Vec<WindowSink>>,
    /// In a worker process of a cluster: where everything is copied for the API replicas.
    mirror: Mutex<Option<Arc<dyn SensorMirror>>>,
    /// Whether a scorer takes the changed windows; without one they are not collected
    /// (the set would only grow).
    scoring: AtomicBool,
}

impl std::fmt::Debug for SensorViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorViews")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl SensorViews {
    pub fn new(
        partitions: u32,
        config: WindowConfig,
        retention: Retention,
        rules: AlertRules,
    ) -> Self {
        Self {
            partitions,
            config,
            retention,
            rules,
            series: (0..SERIES_SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(FixedState::with_seed(0))))
                .collect(),
            inner: Mutex::new(Inner {
                frontier: vec![0; partitions as usize],
                ..Inner::default()
            }),
            advanced: Condvar::new(),
            alert_sink: Mutex::new(None),
            window_sinks: Mutex::new(Vec::new()),
            mirror: Mutex::new(None),
            scoring: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_shard(&self, shard: usize) -> MutexGuard<'_, SeriesMap> {
        self.series[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `read` of one series, under its shard's lock.
    fn with_series<T>(&self, key: SeriesKey, read: impl FnOnce(&Series) -> T) -> Option<T> {
        self.lock_shard(shard_of(key.0)).get(&key).map(read)
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn rules(&self) -> &AlertRules {
        &self.rules
    }

    /// Where alerts go (the server pushes them to subscribers and the audit trail).
    pub fn on_alert(&self, sink: impl Fn(Alert) + Send + Sync + 'static) {
        *self
            .alert_sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(sink));
    }

    /// Where every epoch's window changes also go (the analytics lake keeps final windows);
    /// each call adds a sink.
    pub fn on_windows(&self, sink: impl Fn(&[WindowUpdate]) + Send + Sync + 'static) {
        self.window_sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(sink));
    }

    /// Copies everything these views take from now on to `mirror` (attach it before the
    /// engine starts, so the copy misses nothing).
    pub fn mirror_to(&self, mirror: Arc<dyn SensorMirror>) {
        *self.mirror.lock().unwrap_or_else(PoisonError::into_inner) = Some(mirror);
    }

    fn mirror(&self) -> Option<Arc<dyn SensorMirror>> {
        self.mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn region_name(&self, key: u64) -> Option<String> {
        self.lock().region_names.get(&key).cloned()
    }

    pub fn name_region(&self, key: u64, name: &str) {
        self.lock().region_names.insert(key, name.to_string());
        if let Some(mirror) = self.mirror() {
            mirror.name_region(key, name);
        }
    }

    pub fn name_sensor(&self, key: u64, name: &str, region: u64) {
        {
            let mut inner = self.lock();
            inner.sensor_names.insert(key, name.to_string());
            inner.region_sensors.entry(region).or_default().insert(key);
        }
        if let Some(mirror) = self.mirror() {
            mirror.name_sensor(key, name, region);
        }
    }

    /// From now on, collect the sensor windows each epoch changes for a scorer to take.
    pub fn collect_unscored(&self) {
        self.scoring.store(true, Ordering::Release);
    }

    /// Applies one complete epoch of window changes.
    pub fn publish(&self, updates: Vec<WindowUpdate>) {
        for sink in self
            .window_sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            sink(&updates);
        }
        if let Some(mirror) = self.mirror() {
            mirror.windows(&updates);
        }
        let scoring = self.scoring.load(Ordering::Acquire);
        let mut by_shard: Vec<Vec<WindowUpdate>> = vec![Vec::new(); SERIES_SHARDS];
        for update in updates {
            by_shard[shard_of(update.key.owner)].push(update);
        }
        let mut unscored = Vec::new();
        let mut newest_region_windows: HashMap<(u64, Metric), i64, FixedState> =
            HashMap::with_hasher(FixedState::with_seed(0));
        for (shard, mut updates) in by_shard.into_iter().enumerate() {
            if updates.is_empty() {
                continue;
            }
            // In key order a series is looked up once and its windows go in ascending.
            updates.sort_unstable_by_key(|update| update.key);
            let mut series_map = self.lock_shard(shard);
            for group in updates.chunk_by(|a, b| series_key(&a.key) == series_key(&b.key)) {
                let first = group[0].key;
                let series = series_map.entry(series_key(&first)).or_default();
                for update in group {
                    let view = series.entry(update.key.start_ms).or_insert(WindowView {
                        region: update.region,
                        stats: update.stats,
                        z: None,
                        model: None,
                    });
                    view.stats = update.stats;
                    view.z = update.z;
                }
                let keep = match first.size {
                    WindowSize::Short => self.retention.short_windows,
                    WindowSize::Long => self.retention.long_windows,
                };
                while series.len() > keep {
                    series.pop_first();
                }
                match first.owner {
                    Owner::Sensor(_) if scoring && first.size == WindowSize::Short => {
                        unscored.extend(group.iter().map(|update| update.key));
                    }
                    Owner::Region(region) if first.size == WindowSize::Short => {
                        let newest = group.iter().map(|update| update.key.start_ms).max();
                        let slot = newest_region_windows
                            .entry((region, first.metric))
                            .or_insert(i64::MIN);
                        *slot = (*slot).max(newest.unwrap_or(i64::MIN));
                    }
                    _ => {}
                }
            }
        }
        // Each region's newest short window as published, read before `inner` is locked.
        let newest: Vec<(u64, Metric, i64, f64)> = newest_region_windows
            .into_keys()
            .filter(|(_, metric)| self.rules.thresholds.contains_key(metric))
            .filter_map(|(region, metric)| {
                let (start, mean) = self
                    .with_series(
                        (Owner::Region(region), metric, WindowSize::Short),
                        |series| {
                            series
                                .last_key_value()
                                .map(|(start, view)| (*start, view.stats.mean()))
                        },
                    )
                    .flatten()?;
                Some((region, metric, start, mean))
            })
            .collect();
        let mut alerts = Vec::new();
        {
            let mut inner = self.lock();
            inner.unscored.extend(unscored);
            for (region, metric, start, mean) in newest {
                if let Some(alert) = self.check_threshold(&mut inner, region, metric, start, mean) {
                    alerts.push(alert);
                }
            }
        }
        if !alerts.is_empty()
            && let Some(sink) = self
                .alert_sink
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            for alert in alerts {
                sink(alert);
            }
        }
    }

    /// Compares the region's newest short window with the metric's threshold; an alert when
    /// it crossed since the last look.
    fn check_threshold(
        &self,
        inner: &mut Inner,
        region: u64,
        metric: Metric,
        start: i64,
        value: f64,
    ) -> Option<Alert> {
        let threshold = *self.rules.thresholds.get(&metric)?;
        let above = value > threshold;
        let was_above = inner.above.insert((region, metric), above).unwrap_or(false);
        if above == was_above {
            return None;
        }
        let name = inner.region_names.get(&region)?.clone();
        let partition = partition_for_region(&name, self.partitions);
        Some(Alert {
            as_of: Position {
                partition,
                offset: inner.frontier[partition as usize],
            },
            region: name,
            metric,
            kind: if above {
                "threshold_exceeded"
            } else {
                "threshold_cleared"
            }
            .into(),
            threshold,
            value,
            window_start_ms: start,
        })
    }

    /// Declares every reading of `partition` below `end` reflected in the views.
    pub fn advance(&self, partition: u32, end: u64) {
        {
            let mut inner = self.lock();
            if let Some(slot) = inner.frontier.get_mut(partition as usize)
                && end > *slot
            {
                *slot = end;
                self.advanced.notify_all();
            }
        }
        if let Some(mirror) = self.mirror() {
            mirror.advance(partition, end);
        }
    }

    /// Records that `count` readings of `partition` so far came too late.
    pub fn note_too_late(&self, partition: u32, count: u64) {
        let changed = {
            let mut inner = self.lock();
            let slot = inner.too_late.entry(partition).or_insert(0);
            let changed = count > *slot;
            *slot = (*slot).max(count);
            changed
        };
        if changed && let Some(mirror) = self.mirror() {
            mirror.too_late(partition, count);
        }
    }

    /// Readings dropped because they came after their windows were final.
    pub fn too_late(&self) -> u64 {
        self.lock().too_late.values().sum()
    }

    pub fn fail(&self, reason: String) {
        if let Some(mirror) = self.mirror() {
            mirror.fail(&reason);
        }
        self.lock().failure = Some(reason);
        self.advanced.notify_all();
    }

    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// The position a region's views include: its partition and the partition's frontier.
    pub fn as_of(&self, region: &str) -> Position {
        let partition = partition_for_region(region, self.partitions);
        Position {
            partition,
            offset: self.lock().frontier[partition as usize],
        }
    }

    pub fn frontier(&self, partition: u32) -> u64 {
        self.lock()
            .frontier
            .get(partition as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until the views include `position` (read your own readings), up to `timeout`.
    pub fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if let Some(reason) = &inner.failure {
                return Err(reason.clone());
            }
            if inner
                .frontier
                .get(position.partition as usize)
                .copied()
                .unwrap_or(0)
                > position.offset
            {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            inner = self
                .advanced
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The windows of one series with `from_ms <= start < until_ms`, oldest first.
    pub fn windows(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
        from_ms: i64,
        until_ms: i64,
    ) -> Vec<(i64, WindowView)> {
        self.with_series((owner, metric, size), |series| {
            series
                .range(from_ms..until_ms)
                .map(|(start, view)| (*start, *view))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The newest window of a series.
    pub fn latest(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
    ) -> Option<(i64, WindowView)> {
        self.with_series((owner, metric, size), |series| {
            series.last_key_value().map(|(s, v)| (*s, *v))
        })
        .flatten()
    }

    /// Every window the views hold, for tests that compare with a recomputation.
    pub fn all_windows(&self) -> BTreeMap<WindowKey, WindowView> {
        let mut all = BTreeMap::new();
        for shard in 0..SERIES_SHARDS {
            for ((owner, metric, size), series) in self.lock_shard(shard).iter() {
                for (start, view) in series {
                    all.insert(
                        WindowKey {
                            owner: *owner,
                            metric: *metric,
                            size: *size,
                            start_ms: *start,
                        },
                        *view,
                    );
                }
            }
        }
        all
    }

    /// The metrics a region has windows of.
    pub fn region_metrics(&self, region: &str) -> Vec<Metric> {
        let owner = Owner::Region(name_key("region", region));
        let mut metrics: Vec<Metric> = self
            .lock_shard(shard_of(owner))
            .keys()
            .filter(|(series_owner, _, _)| *series_owner == owner)
            .map(|(_, metric, _)| *metric)
            .collect();
        metrics.sort();
        metrics.dedup();
        metrics
    }

    /// The sensors of a region (those that sent readings), with names.
    pub fn region_sensors(&self, region: &str) -> Vec<(u64, String)> {
        let key = name_key("region", region);
        let inner = self.lock();
        inner
            .region_sensors
            .get(&key)
            .map(|sensors| {
                sensors
                    .iter()
                    .filter_map(|s| inner.sensor_names.get(s).map(|n| (*s, n.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn sensor_name(&self, key: u64) -> Option<String> {
        self.lock().sensor_names.get(&key).cloned()
    }

    /// Takes the sensor short windows changed since the last call (the scorer's work list).
    pub fn take_unscored(&self) -> Vec<WindowKey> {
        let mut keys: Vec<WindowKey> = self.lock().unscored.drain().collect();
        keys.sort();
        keys
    }

    /// The model's input for a sensor short window (all as in `models/anomaly/README.md`):
    /// B = the sensor's previous long window, R = the region's
    /// same short window, P = R without this sensor, RB = the region's previous long window,
    /// C = the sensor's last ten short windows, w−9 … w.
    /// f0 = (w.mean − B.mean)/sB, f1 = max |extreme − B.mean|/sB, f2 = ln((C.std + 0.001) /
    /// (sB + 0.001)), f3 = (w.mean − P.mean)/floor_std(P), f4 = (R.mean − RB.mean)/
    /// floor_std(RB). None without a baseline of 2 readings.
    pub fn model_features(&self, key: &WindowKey) -> Option<[f32; 5]> {
        let long = self.config.sizes_ms[WindowSize::Long as usize];
        let hour = key.start_ms.div_euclid(long) * long;
        let get = |owner: Owner, size: WindowSize, start: i64| {
            self.with_series((owner, key.metric, size), |s| {
                s.get(&start).map(|v| v.stats)
            })
            .flatten()
        };
        let short = self.config.sizes_ms[WindowSize::Short as usize];
        // The window and the last ten minutes through it (its recent spread): a detector
        // must not look ahead.
        let (window, region, recent) = self
            .with_series((key.owner, key.metric, WindowSize::Short), |series| {
                let view = series.get(&key.start_ms)?;
                let mut recent = view.stats;
                for (_, earlier) in
                    series.range(key.start_ms - (RECENT_WINDOWS - 1) * short..key.start_ms)
                {
                    recent.merge(&earlier.stats);
                }
                Some((view.stats, view.region, recent))
            })
            .flatten()?;
        let baseline = get(key.owner, WindowSize::Long, hour - long).filter(|b| b.count >= 2)?;
        let region_window = get(Owner::Region(region), WindowSize::Short, key.start_ms)?;
        let region_baseline = get(Owner::Region(region), WindowSize::Long, hour - long);
        let spread = floor_std(baseline.std_dev(), baseline.mean());
        let f0 = (window.mean() - baseline.mean()) / spread;
        let f1 = (window.max_value() - baseline.mean())
            .abs()
            .max((window.min_value() - baseline.mean()).abs())
            / spread;
        let f2 = ((recent.std_dev() + 1e-3) / (spread + 1e-3)).ln();
        let f3 = leave_one_out(&region_window, &window).map_or(0.0, |(mean, std)| {
            (window.mean() - mean) / floor_std(std, mean)
        });
        let f4 = region_baseline.filter(|b| b.count >= 2).map_or(0.0, |b| {
            (region_window.mean() - b.mean()) / floor_std(b.std_dev(), b.mean())
        });
        Some([f0, f1, f2, f3, f4].map(|f| f as f32))
    }

    /// Stores the model's verdicts.
    pub fn set_model_scores(&self, scores: Vec<(WindowKey, ModelScore)>) {
        if let Some(mirror) = self.mirror() {
            mirror.model_scores(&scores);
        }
        for (key, score) in scores {
            if let Some(view) = self
                .lock_shard(shard_of(key.owner))
                .get_mut(&(key.owner, key.metric, key.size))
                .and_then(|s| s.get_mut(&key.start_ms))
            {
                view.model = Some(score);
            }
        }
    }
}

/// Mean and standard deviation of `all` without the readings of `part` (in the unit).
fn leave_one_out(all: &WindowStats, part: &WindowStats) -> Option<(f64, f64)> {
    let count = all.count.checked_sub(part.count).filter(|n| *n > 0)?;
    let n = count as f64;
    let scale = canopy_schemas::VALUE_SCALE as f64;
    let sum = (all.sum - part.sum) as f64 / scale;
    let sum_sq = (all.sum_sq - part.sum_sq) as f64 / (scale * scale);
    let mean = sum / n;
    Some((mean, (sum_sq / n - mean * mean).max(0.0).sqrt()))
}

impl SensorViewRead for SensorViews {
    fn config(&self) -> &WindowConfig {
        &self.config
    }

    fn as_of(&self, region: &str) -> Result<Position, DataflowError> {
        Ok(SensorViews::as_of(self, region))
    }

    fn frontier(&self, partition: u32) -> u64 {
        SensorViews::frontier(self, partition)
    }

    fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), DataflowError> {
        SensorViews::wait_for(self, position, timeout).map_err(|reason| match self.failure() {
            Some(_) => DataflowError::Stopped(reason),
            None => DataflowError::Timeout {
                position,
                waited: timeout,
            },
        })
    }

    fn region_metrics(&self, region: &str) -> Result<Vec<Metric>, DataflowError> {
        Ok(SensorViews::region_metrics(self, region))
    }

    fn region_sensors(&self, region: &str) -> Result<Vec<(u64, String)>, DataflowError> {
        Ok(SensorViews::region_sensors(self, region))
    }

    fn latest(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
    ) -> Result<Option<(i64, WindowView)>, DataflowError> {
        Ok(SensorViews::latest(self, owner, metric, size))
    }

    fn windows(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(i64, WindowView)>, DataflowError> {
        Ok(SensorViews::windows(
            self, owner, metric, size, from_ms, until_ms,
        ))
    }

    fn too_late(&self) -> Result<u64, DataflowError> {
        Ok(SensorViews::too_late(self))
    }

    fn failure(&self) -> Option<String> {
        SensorViews::failure(self)
    }
}
