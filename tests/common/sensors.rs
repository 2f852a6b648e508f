//! Sensors on a cluster, for the tests: registered sensors in a few regions, deterministic
//! readings posted through serve replicas, and the oracle, `recompute_features` over the
//! sensor topic itself, against what the workers put in Redis, a replica's trends and the
//! lake's final windows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canopy_dataflow::{
    LatenessGate, Owner, SensorViewRead, WindowConfig, WindowSize, WindowStats, ZScores,
    recompute_features,
};
use canopy_ingest::{EntryLog, KafkaSensorLog, Position, SensorRecord, partition_for_region};
use canopy_node::redis_sensors::RedisSensorViews;
use canopy_schemas::{Metric, name_key};
use serde_json::{Value, json};

use super::cluster::{Deployment, PARTITIONS, Running, redis_url, test_kafka_config};

pub const REGIONS: [&str; 4] = ["north", "south", "east", "hot"];
pub const SENSORS_PER_REGION: usize = 2;

pub fn sensor_name(region: &str, n: usize) -> String {
    format!("{region}-{n}")
}

/// The deployment's sensor topic (`<topic>-sensors`), read with the deployments' key.
pub fn sensor_log(topic: &str) -> KafkaSensorLog {
    KafkaSensorLog::connect(test_kafka_config(&format!("{topic}-sensors"))).unwrap()
}

/// The features the deployment's workers keep in Redis.
pub fn sensor_views(deployment: &Deployment) -> RedisSensorViews {
    RedisSensorViews::connect(
        &redis_url(),
        &deployment.prefix,
        WindowConfig::default(),
        PARTITIONS,
    )
    .unwrap()
}

/// Registers every sensor of [`REGIONS`] (pm25) through the replica at `base`.
pub async fn register_sensors(client: &reqwest::Client, base: &str, admin: &str) {
    for region in REGIONS {
        for n in 0..SENSORS_PER_REGION {
            let (status, body) = super::post(
                client,
                format!("{base}/api/v1/data/sensors"),
                Some(admin),
                json!({
                    "sensor_id": sensor_name(region, n),
                    "region": region,
                    "latitude": 52.0,
                    "longitude": 4.0,
                    "metrics": ["pm25"],
                }),
            )
            .await
            .unwrap();
            assert_eq!(status, 201, "{body}");
        }
    }
}

/// The readings of one phase: every sensor every 30 s over `[from_min, to_min)` minutes after
/// `base`, pm25 around 20 µg/m³ (around 120 in region "hot" while `hot`), and `late` readings
/// per sensor stamped `late_by_min` minutes before the phase (late or too late).
pub fn phase(
    base: i64,
    (from_min, to_min): (i64, i64),
    hot: bool,
    (late, late_by_min): (usize, i64),
    seed: u64,
) -> Vec<Value> {
    let mut state = seed | 1;
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 1000) as f64 / 100.0
    };
    let mut readings = Vec::new();
    let mut t = base + from_min * 60_000;
    while t < base + to_min * 60_000 {
        for region in REGIONS {
            for n in 0..SENSORS_PER_REGION {
                let level = if hot && region == "hot" { 120.0 } else { 20.0 };
                readings.push(json!({
                    "sensor_id": sensor_name(region, n),
                    "region": region,
                    "metric": "pm25",
                    "value": level + noise(),
                    "timestamp": t,
                }));
            }
        }
        t += 30_000;
    }
    for i in 0..late {
        for region in REGIONS {
            for n in 0..SENSORS_PER_REGION {
                readings.push(json!({
                    "sensor_id": sensor_name(region, n),
                    "region": region,
                    "metric": "pm25",
                    "value": 20.0 + noise(),
                    "timestamp": base + (from_min - late_by_min) * 60_000 + i as i64 * 1_000,
                }));
            }
        }
    }
    readings
}

/// Posts `readings` in chunks of 200, each of which must be accepted whole (201); returns
/// where the sensor log holds each accepted reading, as the answers say.
pub async fn post_readings(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    readings: &[Value],
) -> Vec<Position> {
    let mut positions = Vec::with_capacity(readings.len());
    for chunk in readings.chunks(200) {
        let (status, body) = super::post(
            client,
            format!("{base}/api/v1/data/process-sensor-data"),
            Some(token),
            Value::Array(chunk.to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{body}");
        let stored: Vec<Position> = serde_json::from_value(body["positions"].clone()).unwrap();
        assert_eq!(
            body["accepted"].as_u64(),
            Some(stored.len() as u64),
            "{body}"
        );
        positions.extend(stored);
    }
    positions
}

pub fn sensor_records(log: &KafkaSensorLog) -> Vec<SensorRecord> {
    (0..PARTITIONS)
        .flat_map(|p| log.read(p, 0, usize::MAX).unwrap())
        .collect()
}

/// Waits until the features in Redis are as of the end of every sensor-topic partition;
/// returns how long that took.
pub fn wait_until_sensors_caught_up(
    log: &KafkaSensorLog,
    views: &RedisSensorViews,
    workers: &mut Running,
    what: &str,
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).unwrap();
        while views.frontier(partition) < end {
            workers.assert_none_exited(&format!("{what}, before the features caught up"));
            assert!(
                Instant::now() < deadline,
                "{what}: the features did not catch up with partition {partition} (at {} of {end})",
                views.frontier(partition)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    started.elapsed()
}

type Series = BTreeMap<i64, (WindowStats, Option<ZScores>)>;

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every window and z-score in Redis equals the recomputation over the sensor topic, and so
/// does the count of too-late readings. Returns how many windows were compared.
pub fn check_features(log: &KafkaSensorLog, views: &RedisSensorViews, what: &str) -> usize {
    let config = WindowConfig::default();
    let records = sensor_records(log);
    let expected = recompute_features(&config, PARTITIONS, &records);
    let mut series: BTreeMap<(Owner, Metric, WindowSize), Series> = BTreeMap::new();
    for (key, window) in &expected {
        series
            .entry((key.owner, key.metric, key.size))
            .or_default()
            .insert(key.start_ms, *window);
    }
    // Every series the readings name, so a window Redis has and the oracle lacks is seen.
    for region in REGIONS {
        for size in WindowSize::BOTH {
            let owners = std::iter::once(Owner::Region(name_key("region", region))).chain(
                (0..SENSORS_PER_REGION)
                    .map(|n| Owner::Sensor(name_key("sensor", &sensor_name(region, n)))),
            );
            for owner in owners {
                series.entry((owner, Metric::Pm25, size)).or_default();
            }
        }
    }
    let mut compared = 0;
    for ((owner, metric, size), want) in &series {
        let got = views
            .windows(*owner, *metric, *size, i64::MIN, i64::MAX)
            .unwrap();
        let got_starts: Vec<i64> = got.iter().map(|(start, _)| *start).collect();
        let want_starts: Vec<i64> = want.keys().copied().collect();
        assert_eq!(
            got_starts, want_starts,
            "{what}: the windows of {owner:?} {size:?} differ from the recomputation"
        );
        for (start, view) in &got {
            let (stats, z) = &want[start];
            assert_eq!(
                &view.stats, stats,
                "{what}: window {owner:?} {size:?} at {start} differs from the recomputation"
            );
            match (view.z, z) {
                (None, None) => {}
                (Some(got), Some(want)) => assert!(
                    close(got.mean, want.mean)
                        && close(got.max_abs, want.max_abs)
                        && got.flagged == want.flagged,
                    "{what}: the z-scores of {owner:?} at {start}: {got:?}, recomputed {want:?}"
                ),
                (got, want) => panic!(
                    "{what}: the z-scores of {owner:?} at {start}: {got:?}, recomputed {want:?}"
                ),
            }
            compared += 1;
        }
    }
    let mut gate = LatenessGate::default();
    for record in &records {
        let reading = &record.reading;
        if reading.quality.counts() {
            let partition = partition_for_region(&reading.region, PARTITIONS);
            gate.admit(&config, partition, reading.observed_at);
        }
    }
    assert_eq!(
        views.too_late().unwrap(),
        gate.too_late,
        "{what}: too-late readings"
    );
    compared
}

/// A replica's minute trends of a region equal the recomputation.
pub async fn check_trends(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    log: &KafkaSensorLog,
    region: &str,
) {
    let expected = recompute_features(&WindowConfig::default(), PARTITIONS, &sensor_records(log));
    let owner = Owner::Region(name_key("region", region));
    let want: Vec<(i64, u64, f64)> = expected
        .iter()
        .filter(|(key, _)| key.owner == owner && key.size == WindowSize::Short)
        .map(|(key, (stats, _))| (key.start_ms, stats.count, stats.mean()))
        .collect();
    let trends = super::get_json(
        client,
        format!("{base}/api/v1/data/historical-trends?region={region}&metric=pm25&bucket=minute"),
        token,
    )
    .await;
    let got: Vec<(i64, u64, f64)> = trends["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points: {trends}"))
        .iter()
        .map(|p| {
            (
                p["start"].as_i64().unwrap(),
                p["count"].as_u64().unwrap(),
                p["mean"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{region}: {trends}");
    for (got, want) in got.iter().zip(&want) {
        assert!(
            got.0 == want.0 && got.1 == want.1 && close(got.2, want.2),
            "{region}: trend point {got:?}, recomputed {want:?}"
        );
    }
}

/// A window as the lake's `window_features` names it: region, sensor ("" for the region's
/// own window), width in seconds, start in ms.
pub type LakeWindow = (String, String, i64, i64);

/// The windows the lake must hold once its writers have flushed: those of the
/// recomputation that are final, i.e. whose end plus the allowed lateness the newest reading
/// of their region has reached (no reading can change them any more).
pub fn final_windows(log: &KafkaSensorLog) -> BTreeMap<LakeWindow, WindowStats> {
    let config = WindowConfig::default();
    let expected = recompute_features(&config, PARTITIONS, &sensor_records(log));
    let mut region_of: BTreeMap<Owner, (&str, String)> = BTreeMap::new();
    for region in REGIONS {
        region_of.insert(
            Owner::Region(name_key("region", region)),
            (region, "".into()),
        );
        for n in 0..SENSORS_PER_REGION {
            let sensor = sensor_name(region, n);
            region_of.insert(Owner::Sensor(name_key("sensor", &sensor)), (region, sensor));
        }
    }
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for (key, (stats, _)) in &expected {
        let (region, _) = &region_of[&key.owner];
        let seen = newest.entry(region).or_insert(i64::MIN);
        *seen = (*seen).max(stats.last_at);
    }
    expected
        .iter()
        .filter_map(|(key, (stats, _))| {
            let (region, sensor) = &region_of[&key.owner];
            let width = config.sizes_ms[key.size as usize];
            let closes = key.start_ms + width + config.allowed_lateness_ms;
            (newest[region] >= closes).then(|| {
                (
                    (
                        region.to_string(),
                        sensor.clone(),
                        width / 1000,
                        key.start_ms,
                    ),
                    *stats,
                )
            })
        })
        .collect()
}
