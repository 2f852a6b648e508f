//! Sensor features in Redis, for a cluster: every worker process copies what its
//! [`SensorViews`](canopy_dataflow::SensorViews) take (the windows of the regions its
//! workers own, their model scores, names, frontiers) and publishes alerts; any API replica
//! reads them ([`RedisSensorViews`]) and relays the alerts to its SSE subscribers.
//!
//! ```text
//!  <prefix>:sensors:series:<owner>:<metric>:<size>  sorted set  start ms → "count:baseline:json"
//!  <prefix>:sensors:model:<owner>:<metric>          sorted set  start ms → model score json
//!  <prefix>:sensors:metrics:<region>                set   metrics the region has windows of
//!  <prefix>:sensors:region_sensors:<region>         set   sensor keys of the region
//!  <prefix>:sensors:names                           hash  r<key> / s<key> → name
//!  <prefix>:sensors:frontier                        hash  partition → end (only raised)
//!  <prefix>:sensors:too_late                        hash  partition → count (only raised)
//!  <prefix>:sensors:failure, :model_unavailable     strings
//!  <prefix>:sensors:alerts                          pub/sub channel, one message per alert
//!  <prefix>:sensors:changes                         pub/sub channel, one message per epoch
//! ```
//!
//! An epoch's windows are written by one Lua script (atomic), and a window's state is only
//! replaced by a newer one: its reading count, then its baseline's, only grow along the log,
//! so a worker replaying the sensor topic after a restart cannot take a window back.

use std::time::{Duration, Instant};

use canopy_dataflow::{
    Alert, DataflowError, ModelScore, Owner, Retention, SensorMirror, SensorViewRead, WindowConfig,
    WindowKey, WindowSize, WindowStats, WindowUpdate, WindowView, ZScores,
};
use canopy_ingest::{Position, partition_for_region};
use canopy_schemas::{Metric, name_key};
use serde::{Deserialize, Serialize};

use crate::redis::{Connection, RAISE, unavailable};

/// A window as stored: what a reader needs of it besides its key.
#[derive(Serialize, Deserialize)]
struct StoredWindow {
    region: u64,
    stats: WindowStats,
    z: Option<ZScores>,
}

/// Replaces each window unless the stored state is newer, trims each series to its
/// retention, then notifies. KEYS: a series per update, then the changes channel. ARGV: the
/// short and long retention, then per update: start, count, baseline count, size (0 short,
/// 1 long), json.
const PUBLISH_WINDOWS: &str = "local n = #KEYS - 1 \
     for i = 1, n do \
       local base = 2 + (i - 1) * 5 \
       local start = ARGV[base + 1] \
       local count, baseline = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]) \
       local keep = tonumber(ARGV[1 + tonumber(ARGV[base + 4])]) \
       local stored = redis.call('ZRANGEBYSCORE', KEYS[i], start, start) \
       local newer = true \
       if stored[1] then \
         local c, b = string.match(stored[1], '^(%d+):(%d+):') \
         c, b = tonumber(c), tonumber(b) \
         if c > count or (c == count and b > baseline) then newer = false end \
       end \
       if newer then \
         redis.call('ZREMRANGEBYSCORE', KEYS[i], start, start) \
         redis.call('ZADD', KEYS[i], start, ARGV[base + 2] .. ':' .. ARGV[base + 3] .. ':' .. ARGV[base + 5]) \
         redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -(keep + 1)) \
       end \
     end \
     redis.call('PUBLISH', KEYS[n + 1], n) return 0";

fn owner_key(owner: Owner) -> String {
    match owner {
        Owner::Sensor(key) => format!("s{key:016x}"),
        Owner::Region(key) => format!("r{key:016x}"),
    }
}

fn size_name(size: WindowSize) -> &'static str {
    match size {
        WindowSize::Short => "short",
        WindowSize::Long => "long",
    }
}

/// The key names of one deployment's sensor views.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, name: &str) -> String {
        format!("{}:sensors:{name}", self.prefix)
    }

    fn series(&self, owner: Owner, metric: Metric, size: WindowSize) -> String {
        self.key(&format!(
            "series:{}:{}:{}",
            owner_key(owner),
            metric.as_str(),
            size_name(size)
        ))
    }

    fn model(&self, owner: Owner, metric: Metric) -> String {
        self.key(&format!("model:{}:{}", owner_key(owner), metric.as_str()))
    }

    fn metrics(&self, region: u64) -> String {
        self.key(&format!("metrics:r{region:016x}"))
    }

    fn region_sensors(&self, region: u64) -> String {
        self.key(&format!("region_sensors:r{region:016x}"))
    }
}

impl std::fmt::Debug for RedisSensorMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSensorMirror")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// A worker process's copy of its sensor views into Redis.
pub struct RedisSensorMirror {
    connection: Connection,
    keys: Keys,
    retention: Retention,
}

impl RedisSensorMirror {
    pub fn connect(url: &str, prefix: &str, retention: Retention) -> Result<Self, DataflowError> {
        Ok(Self {
            connection: Connection::open(url)?,
            keys: Keys {
                prefix: prefix.to_string(),
            },
            retention,
        })
    }

    /// Clears the failure a previous run of the cluster recorded.
    pub fn clear_failure(&self) -> Result<(), DataflowError> {
        let key = self.keys.key("failure");
        self.connection
            .run(|c| redis::cmd("DEL").arg(&key).query::<()>(c))
    }

    /// Every partition's frontier as the previous run left it: where this run's replay of
    /// the sensor topic reaches what readers have already seen.
    pub fn frontiers(&self) -> Result<std::collections::HashMap<u32, u64>, DataflowError> {
        let key = self.keys.key("frontier");
        self.connection
            .run(|c| redis::cmd("HGETALL").arg(&key).query(c))
    }

    /// Says why this process scores nothing with the model (or that it does, with None).
    pub fn model_unavailable(&self, reason: Option<&str>) -> Result<(), DataflowError> {
        let key = self.keys.key("model_unavailable");
        self.connection.run(|c| match reason {
            Some(reason) => redis::cmd("SET").arg(&key).arg(reason).query::<()>(c),
            None => redis::cmd("DEL").arg(&key).query::<()>(c),
        })
    }

    /// Sends an alert to every replica's subscribers.
    pub fn publish_alert(&self, alert: &Alert) {
        let channel = self.keys.key("alerts");
        let message = serde_json::to_string(alert).expect("an alert serializes");
        self.connection.write("an alert", |c| {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&message)
                .query::<()>(c)
        });
    }

    fn raise(&self, what: &str, hash: &str, field: u32, value: u64) {
        let script = redis::Script::new(RAISE);
        self.connection.write(what, |c| {
            script
                .key(hash)
                .arg(field)
                .arg(value)
                .invoke::<i64>(c)
                .map(|_| ())
        });
    }
}

impl SensorMirror for RedisSensorMirror {
    fn name_region(&self, key: u64, name: &str) {
        let names = self.keys.key("names");
        self.connection.write("a region name", |c| {
            redis::cmd("HSET")
                .arg(&names)
                .arg(format!("r{key:016x}"))
                .arg(name)
                .query::<()>(c)
        });
    }

    fn name_sensor(&self, key: u64, name: &str, region: u64) {
        let names = self.keys.key("names");
        let sensors = self.keys.region_sensors(region);
        self.connection.write("a sensor name", |c| {
            redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(&names)
                .arg(format!("s{key:016x}"))
                .arg(name)
                .ignore()
                .cmd("SADD")
                .arg(&sensors)
                .arg(format!("{key:016x}"))
                .ignore()
                .query::<()>(c)
        });
    }

    fn windows(&self, updates: &[WindowUpdate]) {
        if updates.is_empty() {
            return;
        }
        let mut region_metrics: Vec<(String, &'static str)> = updates
            .iter()
            .filter_map(|u| match u.key.owner {
                Owner::Region(region) => Some((self.keys.metrics(region), u.key.metric.as_str())),
                Owner::Sensor(_) => None,
            })
            .collect();
        region_metrics.sort_unstable();
        region_metrics.dedup();
        let encoded: Vec<(String, [String; 5])> = updates
            .iter()
            .map(|update| {
                let json = serde_json::to_string(&StoredWindow {
                    region: update.region,
                    stats: update.stats,
                    z: update.z,
                })
                .expect("a window serializes");
                let (count, baseline) = update.version();
                (
                    self.keys
                        .series(update.key.owner, update.key.metric, update.key.size),
                    [
                        update.key.start_ms.to_string(),
                        count.to_string(),
                        baseline.to_string(),
                        (update.key.size as u8).to_string(),
                        json,
                    ],
                )
            })
            .collect();
        if !region_metrics.is_empty() {
            self.connection.write("a region's metrics", |c| {
                let mut pipe = redis::pipe();
                for (key, metric) in &region_metrics {
                    pipe.cmd("SADD").arg(key).arg(*metric).ignore();
                }
                pipe.query::<()>(c)
            });
        }
        let changes = self.keys.key("changes");
        let script = redis::Script::new(PUBLISH_WINDOWS);
        let retention = self.retention;
        self.connection.write("an epoch's sensor windows", |c| {
            let mut invocation = script.prepare_invoke();
            for (series, _) in &encoded {
                invocation.key(series);
            }
            invocation
                .key(&changes)
                .arg(retention.short_windows)
                .arg(retention.long_windows);
            for (_, args) in &encoded {
                for arg in args {
                    invocation.arg(arg);
                }
            }
            invocation.invoke::<i64>(c).map(|_| ())
        });
    }

    fn advance(&self, partition: u32, end: u64) {
        self.raise(
            "a sensor frontier",
            &self.keys.key("frontier"),
            partition,
            end,
        );
    }

    fn too_late(&self, partition: u32, count: u64) {
        self.raise(
            "a too-late count",
            &self.keys.key("too_late"),
            partition,
            count,
        );
    }

    fn model_scores(&self, scores: &[(WindowKey, ModelScore)]) {
        if scores.is_empty() {
            return;
        }
        let keep = self.retention.short_windows;
        let encoded: Vec<(String, i64, String)> = scores
            .iter()
            .map(|(key, score)| {
                (
                    self.keys.model(key.owner, key.metric),
                    key.start_ms,
                    serde_json::to_string(score).expect("a score serializes"),
                )
            })
            .collect();
        self.connection.write("model scores", |c| {
            let mut pipe = redis::pipe();
            for (key, start, json) in &encoded {
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(key)
                    .arg(start)
                    .arg(start)
                    .ignore()
                    .cmd("ZADD")
                    .arg(key)
                    .arg(start)
                    .arg(json)
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(key)
                    .arg(0)
                    .arg(-(keep as i64) - 1)
                    .ignore();
            }
            pipe.query::<()>(c)
        });
    }

    fn fail(&self, reason: &str) {
        let key = self.keys.key("failure");
        self.connection.write("the sensor failure", |c| {
            redis::cmd("SET").arg(&key).arg(reason).query::<()>(c)
        });
    }
}

/// An API replica's reader of the sensor views the workers copy into Redis.
pub struct RedisSensorViews {
    connection: Connection,
    keys: Keys,
    config: WindowConfig,
    partitions: u32,
    poll: Duration,
}

impl std::fmt::Debug for RedisSensorViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSensorViews")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// A stored series member: `count:baseline:json`.
fn parse_member(member: &str) -> Result<StoredWindow, DataflowError> {
    let json = member
        .splitn(3, ':')
        .nth(2)
        .ok_or_else(|| DataflowError::ViewsUnavailable("a stored window is bad".into()))?;
    serde_json::from_str(json)
        .map_err(|e| DataflowError::ViewsUnavailable(format!("a stored window is bad: {e}")))
}

fn score_bound(ms: i64, open: bool) -> String {
    match ms {
        i64::MIN => "-inf".into(),
        i64::MAX => "+inf".into(),
        ms if open => format!("({ms}"),
        ms => ms.to_string(),
    }
}

impl RedisSensorViews {
    /// `partitions`: the sensor topic's; `config`: the workers' window lengths.
    pub fn connect(
        url: &str,
        prefix: &str,
        config: WindowConfig,
        partitions: u32,
    ) -> Result<Self, DataflowError> {
        Ok(Self {
            connection: Connection::open(url)?,
            keys: Keys {
                prefix: prefix.to_string(),
            },
            config,
            partitions,
            poll: Duration::from_millis(5),
        })
    }

    fn frontier_checked(&self, partition: u32) -> Result<u64, DataflowError> {
        let key = self.keys.key("frontier");
        let end: Option<u64> = self
            .connection
            .run(|c| redis::cmd("HGET").arg(&key).arg(partition).query(c))?;
        Ok(end.unwrap_or(0))
    }

    fn check(&self) -> Result<(), DataflowError> {
        match self.failure_checked()? {
            Some(reason) => Err(DataflowError::Stopped(reason)),
            None => Ok(()),
        }
    }

    fn failure_checked(&self) -> Result<Option<String>, DataflowError> {
        let key = self.keys.key("failure");
        self.connection
            .run(|c| redis::cmd("GET").arg(&key).query::<Option<String>>(c))
    }

    /// The model's scores of a sensor's short windows with `from <= start < until`.
    fn scores(
        &self,
        owner: Owner,
        metric: Metric,
        from: &str,
        until: &str,
    ) -> Result<std::collections::HashMap<i64, ModelScore>, DataflowError> {
        let key = self.keys.model(owner, metric);
        let rows: Vec<(String, f64)> = self.connection.run(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(from)
                .arg(until)
                .arg("WITHSCORES")
                .query(c)
        })?;
        rows.into_iter()
            .map(|(json, start)| {
                serde_json::from_str(&json)
                    .map(|score| (start as i64, score))
                    .map_err(|e| {
                        DataflowError::ViewsUnavailable(format!("a stored score is bad: {e}"))
                    })
            })
            .collect()
    }

    fn view(stored: StoredWindow, model: Option<ModelScore>) -> WindowView {
        WindowView {
            region: stored.region,
            stats: stored.stats,
            z: stored.z,
            model,
        }
    }

    fn scored(owner: Owner, size: WindowSize) -> bool {
        matches!(owner, Owner::Sensor(_)) && size == WindowSize::Short
    }
}

impl SensorViewRead for RedisSensorViews {
    fn config(&self) -> &WindowConfig {
        &self.config
    }

    fn as_of(&self, region: &str) -> Result<Position, DataflowError> {
        self.check()?;
        let partition = partition_for_region(region, self.partitions);
        Ok(Position {
            partition,
            offset: self.frontier_checked(partition)?,
        })
    }

    fn frontier(&self, partition: u32) -> u64 {
        self.frontier_checked(partition).unwrap_or(0)
    }

    fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), DataflowError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check()?;
            if self.frontier_checked(position.partition)? > position.offset {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DataflowError::Timeout {
                    position,
                    waited: timeout,
                });
            }
            std::thread::sleep(self.poll);
        }
    }

    fn region_metrics(&self, region: &str) -> Result<Vec<Metric>, DataflowError> {
        let key = self.keys.metrics(name_key("region", region));
        let names: Vec<String> = self
            .connection
            .run(|c| redis::cmd("SMEMBERS").arg(&key).query(c))?;
        let mut metrics: Vec<Metric> = names.iter().filter_map(|n| n.parse().ok()).collect();
        metrics.sort();
        Ok(metrics)
    }

    fn region_sensors(&self, region: &str) -> Result<Vec<(u64, String)>, DataflowError> {
        let key = self.keys.region_sensors(name_key("region", region));
        let sensors: Vec<String> = self
            .connection
            .run(|c| redis::cmd("SMEMBERS").arg(&key).query(c))?;
        let mut keys: Vec<u64> = sensors
            .iter()
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect();
        keys.sort_unstable();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names = self.keys.key("names");
        let found: Vec<Option<String>> = self.connection.run(|c| {
            let mut command = redis::cmd("HMGET");
            command.arg(&names);
            for key in &keys {
                command.arg(format!("s{key:016x}"));
            }
            command.query(c)
        })?;
        Ok(keys
            .into_iter()
            .zip(found)
            .filter_map(|(key, name)| name.map(|name| (key, name)))
            .collect())
    }

    fn latest(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
    ) -> Result<Option<(i64, WindowView)>, DataflowError> {
        let key = self.keys.series(owner, metric, size);
        let newest: Vec<(String, f64)> = self.connection.run(|c| {
            redis::cmd("ZRANGE")
                .arg(&key)
                .arg(-1)
                .arg(-1)
                .arg("WITHSCORES")
                .query(c)
        })?;
        let Some((member, start)) = newest.into_iter().next() else {
            return Ok(None);
        };
        let start = start as i64;
        let model = if Self::scored(owner, size) {
            let bound = start.to_string();
            self.scores(owner, metric, &bound, &bound)?.remove(&start)
        } else {
            None
        };
        Ok(Some((start, Self::view(parse_member(&member)?, model))))
    }

    fn windows(
        &self,
        owner: Owner,
        metric: Metric,
        size: WindowSize,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(i64, WindowView)>, DataflowError> {
        let key = self.keys.series(owner, metric, size);
        let (from, until) = (score_bound(from_ms, false), score_bound(until_ms, true));
        let rows: Vec<(String, f64)> = self.connection.run(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(&from)
                .arg(&until)
                .arg("WITHSCORES")
                .query(c)
        })?;
        let mut scores = if Self::scored(owner, size) && !rows.is_empty() {
            self.scores(owner, metric, &from, &until)?
        } else {
            Default::default()
        };
        rows.into_iter()
            .map(|(member, start)| {
                let start = start as i64;
                Ok((
                    start,
                    Self::view(parse_member(&member)?, scores.remove(&start)),
                ))
            })
            .collect()
    }

    fn too_late(&self) -> Result<u64, DataflowError> {
        let key = self.keys.key("too_late");
        let counts: Vec<u64> = self
            .connection
            .run(|c| redis::cmd("HVALS").arg(&key).query(c))?;
        Ok(counts.into_iter().sum())
    }

    fn failure(&self) -> Option<String> {
        self.failure_checked()
            .unwrap_or_else(|error| Some(format!("the sensor views are unreachable: {error}")))
    }

    fn model_unavailable(&self) -> Option<String> {
        let key = self.keys.key("model_unavailable");
        self.connection
            .run(|c| redis::cmd("GET").arg(&key).query::<Option<String>>(c))
            .unwrap_or_else(|error| Some(format!("unknown: Redis is unreachable: {error}")))
    }
}

/// Relays the alerts the workers publish to this replica's subscribers, until `closing`.
/// A thread: the Redis client here is synchronous. Alerts published while it reconnects are
/// missed (pub/sub keeps nothing); the audit trail has every one.
pub fn relay_alerts(
    url: &str,
    prefix: &str,
    alerts: tokio::sync::broadcast::Sender<Alert>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, DataflowError> {
    let client = crate::redis::client(url)?;
    let channel = Keys {
        prefix: prefix.to_string(),
    }
    .key("alerts");
    let (ready, subscribed) = std::sync::mpsc::channel::<Result<(), DataflowError>>();
    let thread = std::thread::Builder::new()
        .name("canopy-alert-relay".into())
        .spawn(move || {
            let mut ready = Some(ready);
            while !*closing.borrow() {
                let mut connection = match client.get_connection() {
                    Ok(connection) => connection,
                    Err(error) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Err(unavailable(error)));
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                // One PubSub for the connection's life: dropping it unsubscribes.
                let mut pubsub = connection.as_pubsub();
                // A short timeout, so the thread sees `closing` soon after shutdown begins.
                let subscribed = pubsub
                    .subscribe(&channel)
                    .and_then(|()| pubsub.set_read_timeout(Some(Duration::from_millis(200))));
                match (subscribed, ready.take()) {
                    (Ok(()), Some(ready)) => {
                        let _ = ready.send(Ok(()));
                    }
                    (Err(error), Some(ready)) => {
                        let _ = ready.send(Err(unavailable(error)));
                        return;
                    }
                    (Err(_), None) => {
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                    (Ok(()), None) => tracing::info!("the alert relay is back on Redis"),
                }
                while !*closing.borrow() {
                    match pubsub.get_message() {
                        Ok(message) => {
                            let Ok(payload) = message.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<Alert>(&payload) {
                                Ok(alert) => {
                                    let _ = alerts.send(alert);
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "an alert from Redis does not parse")
                                }
                            }
                        }
                        Err(error) if error.is_timeout() => {}
                        Err(error) => {
                            tracing::warn!(%error, "the alert relay lost Redis; reconnecting");
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| DataflowError::Start(e.to_string()))?;
    // Subscribed before returning, so no alert published after start-up is missed.
    subscribed
        .recv()
        .map_err(|_| DataflowError::Start("the alert relay ended at once".into()))??;
    Ok(thread)
}

#[cfg(test)]
mod tests {
    //! The copy against the in-process views it copies, on a real Redis
    //! (`CANOPY_TEST_REDIS`, scripts/test starts one).
    use std::sync::Arc;

    use canopy_dataflow::{
        AlertRules, SensorEngine, SensorEngineConfig, SensorMirror, SensorViewRead, SensorViews,
    };
    use canopy_ingest::{EntryLog, SegmentLogConfig, SensorSegmentLog};
    use canopy_schemas::{Quality, SensorReading};

    use super::*;

    const PARTITIONS: u32 = 2;

    fn config() -> WindowConfig {
        WindowConfig {
            sizes_ms: [60_000, 600_000],
            allowed_lateness_ms: 120_000,
            z_threshold: 3.0,
        }
    }

    /// Readings of 5 sensors in 3 regions, a clock moving forward and some readings late
    /// (a few too late for both their windows).
    fn readings(count: usize) -> Vec<SensorReading> {
        let sensors = ["s-a", "s-b", "s-c", "s-d", "s-e"];
        let regions = ["north", "north", "south", "south", "east"];
        let mut state = 7u64;
        let mut next = move |modulo: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % modulo
        };
        let mut clock = 1_780_000_000_000i64;
        (0..count)
            .map(|_| {
                clock += next(20_000) as i64;
                let sensor = next(5) as usize;
                let late = match next(8) {
                    0 => next(900_000) as i64,
                    1 | 2 => next(90_000) as i64,
                    _ => 0,
                };
                SensorReading {
                    sensor_id: sensors[sensor].into(),
                    region: regions[sensor].into(),
                    metric: Metric::Pm25,
                    value_micro: 10_000_000 + next(50_000_000) as i64,
                    observed_at: clock - late,
                    quality: Quality::Ok,
                }
            })
            .collect()
    }

    /// Runs the features engine over `readings` with its views copied to `prefix`; returns
    /// the in-process views once they hold every reading.
    fn run(prefix: &str, readings: &[SensorReading]) -> Arc<SensorViews> {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            SensorSegmentLog::open(
                dir.path(),
                SegmentLogConfig {
                    partitions: PARTITIONS,
                    ..SegmentLogConfig::default()
                },
            )
            .unwrap(),
        );
        for chunk in readings.chunks(50) {
            log.append(chunk).unwrap();
        }
        let retention = Retention {
            short_windows: 100_000,
            long_windows: 100_000,
        };
        let views = Arc::new(SensorViews::new(
            PARTITIONS,
            config(),
            retention,
            AlertRules::default(),
        ));
        let mirror = RedisSensorMirror::connect(&redis_url(), prefix, retention).unwrap();
        views.mirror_to(Arc::new(mirror) as Arc<dyn SensorMirror>);
        let engine = SensorEngine::start(
            SensorEngineConfig {
                workers: 2,
                windows: config(),
                max_epoch_records: 37,
                ..SensorEngineConfig::default()
            },
            Arc::clone(&log) as Arc<dyn canopy_ingest::SensorLog>,
            Arc::clone(&views),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        for partition in 0..PARTITIONS {
            let end = log.end_offset(partition).unwrap();
            while views.frontier(partition) < end {
                assert!(
                    Instant::now() < deadline,
                    "partition {partition} not caught up"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        engine.shutdown().unwrap();
        views
    }

    fn redis_url() -> String {
        std::env::var("CANOPY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
    }

    /// Every window of `expected` is in Redis as it is in process, and nothing else is.
    fn assert_copied(reader: &RedisSensorViews, expected: &SensorViews) {
        let all = expected.all_windows();
        let mut series: std::collections::BTreeSet<(Owner, Metric, WindowSize)> =
            Default::default();
        for key in all.keys() {
            series.insert((key.owner, key.metric, key.size));
        }
        let mut compared = 0;
        for (owner, metric, size) in series {
            let got = reader
                .windows(owner, metric, size, i64::MIN, i64::MAX)
                .unwrap();
            let want = expected.windows(owner, metric, size, i64::MIN, i64::MAX);
            assert_eq!(got.len(), want.len(), "{owner:?} {size:?}");
            for ((got_start, got), (want_start, want)) in got.iter().zip(&want) {
                assert_eq!(got_start, want_start);
                assert_eq!(got.stats, want.stats, "{owner:?} {size:?} at {got_start}");
                assert_eq!(
                    got.z.is_some(),
                    want.z.is_some(),
                    "{owner:?} at {got_start}"
                );
                if let (Some(got), Some(want)) = (got.z, want.z) {
                    assert!((got.mean - want.mean).abs() <= 1e-9 * want.mean.abs().max(1.0));
                    assert_eq!(got.flagged, want.flagged);
                }
                compared += 1;
            }
            let latest = reader
                .latest(owner, metric, size)
                .unwrap()
                .map(|(s, v)| (s, v.stats));
            let want_latest = expected
                .latest(owner, metric, size)
                .map(|(s, v)| (s, v.stats));
            assert_eq!(latest, want_latest);
        }
        assert!(compared > 100, "only {compared} windows compared");
        for region in ["north", "south", "east"] {
            assert_eq!(
                reader.region_metrics(region).unwrap(),
                expected.region_metrics(region)
            );
            assert_eq!(
                reader.region_sensors(region).unwrap(),
                expected.region_sensors(region)
            );
            assert_eq!(
                SensorViewRead::as_of(reader, region).unwrap(),
                expected.as_of(region)
            );
        }
        assert_eq!(
            SensorViewRead::too_late(reader).unwrap(),
            expected.too_late()
        );
        assert!(
            expected.too_late() > 0,
            "the readings should hold some too late"
        );
    }

    #[test]
    fn the_copy_equals_the_views_and_a_replay_does_not_take_it_back() {
        let prefix = format!("canopy-test-sensors-{}", uuid::Uuid::new_v4().simple());
        let readings = readings(1500);
        let full = run(&prefix, &readings);
        let reader =
            RedisSensorViews::connect(&redis_url(), &prefix, config(), PARTITIONS).unwrap();
        assert_copied(&reader, &full);
        // A restarted worker replays the log from the start: the older window states it
        // publishes on the way must not replace the newer ones.
        run(&prefix, &readings[..700]);
        assert_copied(&reader, &full);
        // A failure reaches readers; clearing it (a restart) lets them read again.
        let mirror =
            RedisSensorMirror::connect(&redis_url(), &prefix, Retention::default()).unwrap();
        mirror.fail("a test failure");
        assert!(
            reader
                .failure()
                .is_some_and(|r| r.contains("a test failure"))
        );
        assert!(matches!(
            SensorViewRead::as_of(&reader, "north"),
            Err(DataflowError::Stopped(_))
        ));
        mirror.clear_failure().unwrap();
        assert!(reader.failure().is_none());
    }
}
