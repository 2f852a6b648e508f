//! The sensor features' values and arithmetic, apart from any dataflow: tumbling event-time
//! windows per (sensor, metric) and per (region, metric), z-scores against a sensor's
//! trailing baseline, the lateness gate that makes a window final, and the windows of one
//! worker's (region, metric) groups.
//!
//! Everything summed is an integer (values in micro-units), so the incremental windows equal
//! [`recompute_features`], the from-scratch oracle, bit for bit.

use std::collections::{BTreeMap, HashMap, HashSet};

use canopy_ingest::{SensorRecord, partition_for_region};
use canopy_schemas::{Metric, VALUE_SCALE};
use foldhash::quality::FixedState;
use serde::{Deserialize, Serialize};

/// Window lengths and lateness.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowConfig {
    /// The short and the long tumbling window, in milliseconds (1 minute and 1 hour by
    /// default). The long one must be a multiple of the short one.
    pub sizes_ms: [i64; 2],
    /// How long after a window's end a reading may still correct it.
    pub allowed_lateness_ms: i64,
    /// A short window is flagged when one of its readings lies this many standard
    /// deviations from its sensor's baseline.
    pub z_threshold: f64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            sizes_ms: [60_000, 3_600_000],
            allowed_lateness_ms: 5 * 60_000,
            z_threshold: 4.0,
        }
    }
}

impl WindowConfig {
    /// Refuses sizes that are not positive or do not nest.
    pub fn validate(&self) -> Result<(), String> {
        let [short, long] = self.sizes_ms;
        if short <= 0 || long <= 0 || long % short != 0 || long == short {
            return Err(format!(
                "window sizes must be positive and the long ({long} ms) a multiple of the short \
                 ({short} ms)"
            ));
        }
        if self.allowed_lateness_ms < 0 {
            return Err("the allowed lateness cannot be negative".into());
        }
        if !self.z_threshold.is_finite() || self.z_threshold <= 0.0 {
            return Err("the z-score threshold must be a positive number".into());
        }
        Ok(())
    }
}

/// Index into [`WindowConfig::sizes_ms`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSize {
    Short = 0,
    Long = 1,
}

impl WindowSize {
    pub const BOTH: [WindowSize; 2] = [WindowSize::Short, WindowSize::Long];
}

/// Whose window: one sensor's readings, or all of a region's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Owner {
    Sensor(u64),
    Region(u64),
}

/// A window's identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct WindowKey {
    pub owner: Owner,
    pub metric: Metric,
    pub size: WindowSize,
    pub start_ms: i64,
}

/// What the dataflow needs of one reading.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct FeedReading {
    pub region: u64,
    pub sensor: u64,
    pub metric: Metric,
    /// Micro-units.
    pub value: i64,
    pub observed_at: i64,
    /// Breaks ties for "last" between readings of the same instant.
    pub offset: u64,
    /// Whether the reading's short and long windows still take it (not final on arrival).
    pub open: [bool; 2],
    /// Its partition's watermark when it arrived: windows final by it can be forgotten.
    pub watermark: i64,
}

impl FeedReading {
    /// The windows the reading changes: of each size still open, its sensor's and its
    /// region's.
    pub fn open_windows(&self, config: &WindowConfig) -> impl Iterator<Item = WindowKey> {
        let reading = *self;
        let sizes_ms = config.sizes_ms;
        WindowSize::BOTH
            .into_iter()
            .filter(move |size| reading.open[*size as usize])
            .flat_map(move |size| {
                let start_ms = window_start(reading.observed_at, sizes_ms[size as usize]);
                [Owner::Sensor(reading.sensor), Owner::Region(reading.region)].map(|owner| {
                    WindowKey {
                        owner,
                        metric: reading.metric,
                        size,
                        start_ms,
                    }
                })
            })
    }
}

/// Count, sums and extremes of a window's readings, in integer micro-units.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WindowStats {
    pub count: u64,
    pub sum: i128,
    pub sum_sq: i128,
    pub min: i64,
    pub max: i64,
    /// The value of the reading with the latest event time (then the highest log offset).
    pub last: i64,
    pub last_at: i64,
    last_offset: u64,
}

impl WindowStats {
    /// A window holding one reading.
    pub fn single(value: i64, at: i64, offset: u64) -> Self {
        Self {
            count: 1,
            sum: i128::from(value),
            sum_sq: i128::from(value) * i128::from(value),
            min: value,
            max: value,
            last: value,
            last_at: at,
            last_offset: offset,
        }
    }

    /// Adds one reading.
    pub fn add(&mut self, value: i64, at: i64, offset: u64) {
        self.count += 1;
        self.sum += i128::from(value);
        self.sum_sq += i128::from(value) * i128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if (at, offset) > (self.last_at, self.last_offset) {
            self.last = value;
            self.last_at = at;
            self.last_offset = offset;
        }
    }

    /// Adds another window's readings (of the same sensor or region).
    pub fn merge(&mut self, other: &WindowStats) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if (other.last_at, other.last_offset) > (self.last_at, self.last_offset) {
            self.last = other.last;
            self.last_at = other.last_at;
            self.last_offset = other.last_offset;
        }
    }

    /// The mean, in the metric's unit.
    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.count as f64 / VALUE_SCALE as f64
    }

    /// The population variance, in the unit squared, from the integer sums: n·Σx² − (Σx)²
    /// is exact, so the same readings give the same variance in any order.
    pub fn variance(&self) -> f64 {
        let n = i128::from(self.count);
        let spread = n
            .checked_mul(self.sum_sq)
            .and_then(|nss| nss.checked_sub(self.sum * self.sum))
            .map_or_else(
                || {
                    let mean = self.sum as f64 / n as f64;
                    (self.sum_sq as f64 / n as f64 - mean * mean).max(0.0) * (n * n) as f64
                },
                |spread| spread.max(0) as f64,
            );
        spread / (n * n) as f64 / (VALUE_SCALE as f64 * VALUE_SCALE as f64)
    }

    pub fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }

    pub fn min_value(&self) -> f64 {
        self.min as f64 / VALUE_SCALE as f64
    }

    pub fn max_value(&self) -> f64 {
        self.max as f64 / VALUE_SCALE as f64
    }

    pub fn last_value(&self) -> f64 {
        self.last as f64 / VALUE_SCALE as f64
    }
}

/// The standard deviation a z-score divides by: never below 1% of the mean or 0.001, so a
/// flat baseline does not turn the smallest wiggle into an alarm.
pub fn floor_std(std_dev: f64, mean: f64) -> f64 {
    std_dev.max(0.01 * mean.abs()).max(1e-3)
}

/// A short window's readings against the sensor's baseline (its previous long window).
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct ZScores {
    /// The mean of its readings' z-scores (the z-score of the window mean).
    pub mean: f64,
    /// The largest |z| among its readings.
    pub max_abs: f64,
    pub flagged: bool,
}

/// The z-scores of `window` against `baseline`; none without a baseline of 2 readings.
pub fn z_scores(
    window: &WindowStats,
    baseline: Option<&WindowStats>,
    threshold: f64,
) -> Option<ZScores> {
    let baseline = baseline.filter(|b| b.count >= 2)?;
    let (mean, spread) = (
        baseline.mean(),
        floor_std(baseline.std_dev(), baseline.mean()),
    );
    let max_abs = (window.max_value() - mean)
        .abs()
        .max((window.min_value() - mean).abs())
        / spread;
    Some(ZScores {
        mean: (window.mean() - mean) / spread,
        max_abs,
        flagged: max_abs > threshold,
    })
}

/// One window's new state, as the dataflow publishes it.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct WindowUpdate {
    pub key: WindowKey,
    pub region: u64,
    pub stats: WindowStats,
    /// Sensor short windows only, once the sensor has a baseline.
    pub z: Option<ZScores>,
    /// How many readings the baseline the z-scores were taken against held (0 without).
    /// With `stats.count` it orders a window's states: both only grow along the log, so a
    /// store can refuse an older state republished by a replay.
    pub baseline_count: u64,
}

impl WindowUpdate {
    /// Orders the states of one window along the log (see `baseline_count`).
    pub fn version(&self) -> (u64, u64) {
        (self.stats.count, self.baseline_count)
    }
}

fn window_start(at: i64, size_ms: i64) -> i64 {
    at.div_euclid(size_ms) * size_ms
}

/// Decides, in log order per partition, which windows a reading may still change.
#[derive(Clone, Debug, Default)]
pub struct LatenessGate {
    watermarks: HashMap<u32, i64>,
    /// Readings that arrived after both their windows were final.
    pub too_late: u64,
    /// The same, per partition: a function of the partition's log prefix, so a replay on
    /// any number of workers reaches the same counts.
    pub too_late_by_partition: HashMap<u32, u64>,
}

impl LatenessGate {
    /// The reading's open windows (short, long) and the watermark it saw; `None` when both
    /// are final.
    pub fn admit(
        &mut self,
        config: &WindowConfig,
        partition: u32,
        observed_at: i64,
    ) -> Option<([bool; 2], i64)> {
        let watermark = self.watermarks.entry(partition).or_insert(i64::MIN);
        let seen = *watermark;
        let open = WindowSize::BOTH.map(|size| {
            let length = config.sizes_ms[size as usize];
            let end = window_start(observed_at, length) + length;
            seen < end.saturating_add(config.allowed_lateness_ms)
        });
        *watermark = seen.max(observed_at);
        if open == [false, false] {
            self.too_late += 1;
            *self.too_late_by_partition.entry(partition).or_insert(0) += 1;
            return None;
        }
        Some((open, seen.max(observed_at)))
    }
}

/// The windows of one (region, metric) group, on the worker that owns it.
#[derive(Default)]
pub(crate) struct WindowState {
    windows: HashMap<WindowKey, (u64, WindowStats), FixedState>,
    /// The newest watermark each region's readings carried.
    watermarks: HashMap<u64, i64>,
    applied_since_sweep: usize,
}

impl WindowState {
    pub(crate) fn new() -> Self {
        Self {
            windows: HashMap::with_hasher(FixedState::with_seed(0)),
            ..Self::default()
        }
    }

    /// Adds one epoch's readings; returns the windows that changed, with their z-scores.
    pub(crate) fn apply(
        &mut self,
        config: &WindowConfig,
        readings: &[FeedReading],
    ) -> Vec<WindowUpdate> {
        let mut changed: HashSet<WindowKey, FixedState> =
            HashSet::with_hasher(FixedState::with_seed(0));
        for reading in readings {
            for key in reading.open_windows(config) {
                self.windows
                    .entry(key)
                    .and_modify(|(_, stats)| {
                        stats.add(reading.value, reading.observed_at, reading.offset)
                    })
                    .or_insert_with(|| {
                        (
                            reading.region,
                            WindowStats::single(reading.value, reading.observed_at, reading.offset),
                        )
                    });
                changed.insert(key);
            }
            let watermark = self.watermarks.entry(reading.region).or_insert(i64::MIN);
            *watermark = (*watermark).max(reading.watermark);
        }
        // A changed long window is the baseline of the next hour's short windows.
        let [short, long] = config.sizes_ms;
        let rebaselined: Vec<WindowKey> = changed
            .iter()
            .filter(|k| k.size == WindowSize::Long && matches!(k.owner, Owner::Sensor(_)))
            .flat_map(|k| {
                let next_hour = k.start_ms + long;
                (0..long / short).map(move |i| WindowKey {
                    size: WindowSize::Short,
                    start_ms: next_hour + i * short,
                    ..*k
                })
            })
            .filter(|k| self.windows.contains_key(k))
            .collect();
        changed.extend(rebaselined);
        let updates = changed
            .into_iter()
            .map(|key| {
                let (region, stats) = self.windows[&key];
                let (z, baseline_count) = self.z_of(config, &key, &stats);
                WindowUpdate {
                    key,
                    region,
                    stats,
                    z,
                    baseline_count,
                }
            })
            .collect();
        self.applied_since_sweep += readings.len();
        if self.applied_since_sweep >= 50_000 {
            self.forget_final(config);
        }
        updates
    }

    /// The z-scores of a sensor short window, and the size of the baseline they used.
    fn z_of(
        &self,
        config: &WindowConfig,
        key: &WindowKey,
        stats: &WindowStats,
    ) -> (Option<ZScores>, u64) {
        if key.size != WindowSize::Short || !matches!(key.owner, Owner::Sensor(_)) {
            return (None, 0);
        }
        let long = config.sizes_ms[WindowSize::Long as usize];
        let baseline = WindowKey {
            size: WindowSize::Long,
            start_ms: window_start(key.start_ms, long) - long,
            ..*key
        };
        let baseline = self.windows.get(&baseline).map(|(_, b)| b);
        (
            z_scores(stats, baseline, config.z_threshold),
            baseline.map_or(0, |b| b.count),
        )
    }

    /// Drops windows no reading can change any more and no open window needs as a
    /// baseline: short windows once final, long ones once the next long window is final.
    fn forget_final(&mut self, config: &WindowConfig) {
        self.applied_since_sweep = 0;
        let watermarks = &self.watermarks;
        self.windows.retain(|key, (region, _)| {
            let length = config.sizes_ms[key.size as usize];
            let mut needed_until = key.start_ms + length + config.allowed_lateness_ms;
            if key.size == WindowSize::Long {
                needed_until += length;
            }
            watermarks.get(region).is_none_or(|w| *w < needed_until)
        });
    }
}

/// Computes every window and z-score from scratch: the oracle the dataflow is held to.
/// `records` are in log order per partition (partitions may interleave).
pub fn recompute_features(
    config: &WindowConfig,
    partitions: u32,
    records: &[SensorRecord],
) -> BTreeMap<WindowKey, (WindowStats, Option<ZScores>)> {
    let mut gate = LatenessGate::default();
    let mut windows: BTreeMap<WindowKey, WindowStats> = BTreeMap::new();
    for record in records {
        let reading = &record.reading;
        if !reading.quality.counts() {
            continue;
        }
        let partition = partition_for_region(&reading.region, partitions);
        let Some((open, _)) = gate.admit(config, partition, reading.observed_at) else {
            continue;
        };
        for size in WindowSize::BOTH {
            if !open[size as usize] {
                continue;
            }
            let start_ms = window_start(reading.observed_at, config.sizes_ms[size as usize]);
            for owner in [
                Owner::Sensor(reading.sensor_key()),
                Owner::Region(reading.region_key()),
            ] {
                let key = WindowKey {
                    owner,
                    metric: reading.metric,
                    size,
                    start_ms,
                };
                let (value, at, offset) = (
                    reading.value_micro,
                    reading.observed_at,
                    record.position.offset,
                );
                windows
                    .entry(key)
                    .and_modify(|s| s.add(value, at, offset))
                    .or_insert_with(|| WindowStats::single(value, at, offset));
            }
        }
    }
    let long = config.sizes_ms[WindowSize::Long as usize];
    windows
        .iter()
        .map(|(key, stats)| {
            let z = match (key.size, key.owner) {
                (WindowSize::Short, Owner::Sensor(_)) => {
                    let baseline = WindowKey {
                        size: WindowSize::Long,
                        start_ms: window_start(key.start_ms, long) - long,
                        ..*key
                    };
                    z_scores(stats, windows.get(&baseline), config.z_threshold)
                }
                _ => None,
            };
            (*key, (*stats, z))
        })
        .collect()
}
