//! Environmental readings: what a sensor measured, where and when, and the registry of the
//! sensors a deployment knows.
//!
//! Values are stored as integer micro-units ([`SensorReading::value_micro`]), so window sums
//! in the dataflow are exact and the incremental features equal a from-scratch computation
//! bit for bit, in any order. Event times are milliseconds since the Unix epoch.
//!
//! The canonical encoding of a reading (what the sensor log stores), version 1:
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1     1  metric      (Metric::code)
//!      2     1  quality     (Quality::code)
//!      3     8  value       (i64 micro-units, big-endian)
//!     11     8  observed_at (i64 milliseconds since the Unix epoch, big-endian)
//!     19     1  sensor id length s, then s bytes of UTF-8
//!   20+s     1  region length r, then r bytes of UTF-8
//! ```

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SchemaError;

pub const READING_ENCODING_VERSION: u8 = 1;
/// One million: values are stored in millionths of their unit.
pub const VALUE_SCALE: i64 = 1_000_000;
/// How far ahead of the receiving clock an event time may be (clock skew, not prophecy).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// Longest sensor id or region name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Milliseconds since the Unix epoch.
pub type EventTimeMs = i64;

/// What a sensor measures. Each metric has one canonical unit; readings in another unit are
/// refused rather than silently converted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Pm25,
    Pm10,
    No2,
    O3,
    So2,
    Co,
    Temperature,
    Humidity,
    Co2,
    Noise,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::Pm25,
        Metric::Pm10,
        Metric::No2,
        Metric::O3,
        Metric::So2,
        Metric::Co,
        Metric::Temperature,
        Metric::Humidity,
        Metric::Co2,
        Metric::Noise,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Pm25 => "pm25",
            Metric::Pm10 => "pm10",
            Metric::No2 => "no2",
            Metric::O3 => "o3",
            Metric::So2 => "so2",
            Metric::Co => "co",
            Metric::Temperature => "temperature",
            Metric::Humidity => "humidity",
            Metric::Co2 => "co2",
            Metric::Noise => "noise",
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Result<Metric, SchemaError> {
        Metric::ALL
            .get(usize::from(code))
            .copied()
            .ok_or_else(|| SchemaError::UnknownMetric(format!("code {code}")))
    }

    /// The unit readings of this metric are given in.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Pm25 | Metric::Pm10 | Metric::No2 | Metric::O3 | Metric::So2 => "µg/m³",
            Metric::Co => "mg/m³",
            Metric::Temperature => "°C",
            Metric::Humidity => "%",
            Metric::Co2 => "ppm",
            Metric::Noise => "dBA",
        }
    }

    /// Whether `unit` names this metric's unit. Air-quality exports spell µg/m³ many ways
    /// (ASCII `ug/m3`, the Greek mu, a superscript or a plain 3), all of them accepted.
    pub fn accepts_unit(self, unit: &str) -> bool {
        let normal: String = unit
            .trim()
            .chars()
            .map(|c| match c {
                'µ' | 'μ' => 'u',
                '³' => '3',
                '°' => 'd',
                c => c.to_ascii_lowercase(),
            })
            .filter(|c| !c.is_whitespace())
            .collect();
        let accepted: &[&str] = match self {
            Metric::Pm25 | Metric::Pm10 | Metric::No2 | Metric::O3 | Metric::So2 => {
                &["ug/m3", "ugm-3", "ug/m^3"]
            }
            Metric::Co => &["mg/m3", "mgm-3", "mg/m^3"],
            Metric::Temperature => &["dc", "c", "celsius", "degc"],
            Metric::Humidity => &["%", "%rh", "percent"],
            Metric::Co2 => &["ppm"],
            Metric::Noise => &["dba", "db(a)", "db"],
        };
        accepted.contains(&normal.as_str())
    }

    /// The physically plausible range of a reading, in the metric's unit; outside it the
    /// instrument is broken or the row is garbage.
    pub fn plausible_range(self) -> (f64, f64) {
        match self {
            Metric::Pm25 | Metric::Pm10 => (0.0, 5_000.0),
            Metric::No2 | Metric::O3 | Metric::So2 => (0.0, 10_000.0),
            Metric::Co => (0.0, 1_000.0),
            Metric::Temperature => (-90.0, 70.0),
            Metric::Humidity => (0.0, 100.0),
            Metric::Co2 => (0.0, 100_000.0),
            Metric::Noise => (0.0, 200.0),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = SchemaError;

    /// Canonical names, and the spellings common exports use (`pm2.5`, `pm2_5`, `temp`, …).
    fn from_str(name: &str) -> Result<Metric, SchemaError> {
        let normal = name
            .trim()
            .to_ascii_lowercase()
            .replace(['.', '_', ' '], "");
        let metric = match normal.as_str() {
            "pm25" => Metric::Pm25,
            "pm10" => Metric::Pm10,
            "no2" => Metric::No2,
            "o3" | "ozone" => Metric::O3,
            "so2" => Metric::So2,
            "co" => Metric::Co,
            "temperature" | "temp" => Metric::Temperature,
            "humidity" | "relativehumidity" | "rh" => Metric::Humidity,
            "co2" => Metric::Co2,
            "noise" | "sound" => Metric::Noise,
            _ => return Err(SchemaError::UnknownMetric(name.to_string())),
        };
        Ok(metric)
    }
}

/// How much a reading can be trusted, as the network reports it. Readings taken during
/// maintenance are kept in the log but left out of the features.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    #[default]
    Ok,
    Suspect,
    Maintenance,
}

impl Quality {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Result<Quality, SchemaError> {
        match code {
            0 => Ok(Quality::Ok),
            1 => Ok(Quality::Suspect),
            2 => Ok(Quality::Maintenance),
            other => Err(SchemaError::UnknownQuality(format!("code {other}"))),
        }
    }

    /// Whether the reading counts in window features.
    pub fn counts(self) -> bool {
        self != Quality::Maintenance
    }
}

impl FromStr for Quality {
    type Err = SchemaError;

    fn from_str(name: &str) -> Result<Quality, SchemaError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "ok" | "good" | "valid" => Ok(Quality::Ok),
            "suspect" | "questionable" => Ok(Quality::Suspect),
            "maintenance" | "calibration" | "calibrating" => Ok(Quality::Maintenance),
            _ => Err(SchemaError::UnknownQuality(name.to_string())),
        }
    }
}

/// One measurement, validated: metric known, unit right, value finite and plausible, event
/// time not in the future.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct SensorReading {
    pub sensor_id: String,
    pub region: String,
    pub metric: Metric,
    /// The value in millionths of the metric's unit.
    pub value_micro: i64,
    pub observed_at: EventTimeMs,
    pub quality: Quality,
}

/// A reading as it arrives, before validation: the unit is spelled out and the value is a
/// float that may be anything.
#[derive(Clone, Debug)]
pub struct RawReading<'a> {
    pub sensor_id: &'a str,
    /// The region the row names, if any; the registry's region is authoritative.
    pub region: Option<&'a str>,
    pub metric: &'a str,
    pub unit: Option<&'a str>,
    pub value: f64,
    pub observed_at: EventTimeMs,
    pub quality: Option<&'a str>,
}

impl SensorReading {
    /// The value in the metric's unit.
    pub fn value(&self) -> f64 {
        self.value_micro as f64 / VALUE_SCALE as f64
    }

    /// The canonical bytes of this reading (see the module docs).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(READING_ENCODING_VERSION);
        out.push(self.metric.code());
        out.push(self.quality.code());
        out.extend_from_slice(&self.value_micro.to_be_bytes());
        out.extend_from_slice(&self.observed_at.to_be_bytes());
        for name in [&self.sensor_id, &self.region] {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<SensorReading, SchemaError> {
        let short = || SchemaError::ReadingEncoding("truncated".into());
        let version = *bytes.first().ok_or_else(short)?;
        if version != READING_ENCODING_VERSION {
            return Err(SchemaError::ReadingEncoding(format!(
                "unsupported version {version}"
            )));
        }
        if bytes.len() < 20 {
            return Err(short());
        }
        let metric = Metric::from_code(bytes[1])?;
        let quality = Quality::from_code(bytes[2])?;
        let value_micro = i64::from_be_bytes(bytes[3..11].try_into().expect("8 bytes"));
        let observed_at = i64::from_be_bytes(bytes[11..19].try_into().expect("8 bytes"));
        let mut rest = &bytes[19..];
        let mut name = || -> Result<String, SchemaError> {
            let (&len, tail) = rest.split_first().ok_or_else(short)?;
            let len = usize::from(len);
            if tail.len() < len {
                return Err(short());
            }
            let text = std::str::from_utf8(&tail[..len])
                .map_err(|_| SchemaError::ReadingEncoding("a name is not UTF-8".into()))?;
            rest = &tail[len..];
            Ok(text.to_string())
        };
        let sensor_id = name()?;
        let region = name()?;
        if !rest.is_empty() {
            return Err(SchemaError::ReadingEncoding(format!(
                "{} bytes after the end",
                rest.len()
            )));
        }
        Ok(SensorReading {
            sensor_id,
            region,
            metric,
            value_micro,
            observed_at,
            quality,
        })
    }

    /// The dataflow's key for this reading's sensor.
    pub fn sensor_key(&self) -> u64 {
        name_key("sensor", &self.sensor_id)
    }

    /// The dataflow's key for this reading's region.
    pub fn region_key(&self) -> u64 {
        name_key("region", &self.region)
    }
}

/// A fixed 64-bit key for a sensor or region name: the dataflow carries keys, not strings.
/// A hash (not a registry counter) so every process and a Kafka producer agree without
/// coordination.
pub fn name_key(kind: &str, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"canopy/")
        .chain_update(kind.as_bytes())
        .chain_update(b"/v1\0")
        .chain_update(name.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where a sensor stands and what it reports.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Sensor {
    pub sensor_id: String,
    pub region: String,
    pub latitude: f64,
    pub longitude: f64,
    pub metrics: Vec<Metric>,
}

/// Checks a sensor's registration: names non-empty and short, coordinates on Earth, at
/// least one metric, none twice.
pub fn validate_sensor(sensor: &Sensor) -> Result<(), SchemaError> {
    check_name("sensor_id", &sensor.sensor_id)?;
    check_name("region", &sensor.region)?;
    if !(-90.0..=90.0).contains(&sensor.latitude) || !(-180.0..=180.0).contains(&sensor.longitude) {
        return Err(SchemaError::SensorLocation {
            latitude: sensor.latitude,
            longitude: sensor.longitude,
        });
    }
    let mut seen = sensor.metrics.clone();
    seen.sort();
    seen.dedup();
    if sensor.metrics.is_empty() || seen.len() != sensor.metrics.len() {
        return Err(SchemaError::SensorMetrics);
    }
    Ok(())
}

fn check_name(field: &'static str, name: &str) -> Result<(), SchemaError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(SchemaError::SensorName { field });
    }
    Ok(())
}

/// The sensors a deployment knows. Readings from a sensor not in it, or of a metric it does
/// not report, are refused.
#[derive(Clone, Debug, Default)]
pub struct SensorRegistry {
    sensors: HashMap<String, Sensor>,
}

impl SensorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a sensor (a sensor that moves to another region starts a new history
    /// there: its key stays, its region changes).
    pub fn insert(&mut self, sensor: Sensor) -> Result<(), SchemaError> {
        validate_sensor(&sensor)?;
        self.sensors.insert(sensor.sensor_id.clone(), sensor);
        Ok(())
    }

    pub fn get(&self, sensor_id: &str) -> Option<&Sensor> {
        self.sensors.get(sensor_id)
    }

    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }

    pub fn sensors(&self) -> impl Iterator<Item = &Sensor> {
        self.sensors.values()
    }

    /// Validates a raw reading against the registry at receiving time `now_ms`.
    pub fn validate(
        &self,
        raw: &RawReading<'_>,
        now_ms: EventTimeMs,
    ) -> Result<SensorReading, SchemaError> {
        let metric: Metric = raw.metric.parse()?;
        let sensor = self
            .sensors
            .get(raw.sensor_id)
            .ok_or_else(|| SchemaError::UnknownSensor(raw.sensor_id.to_string()))?;
        if let Some(region) = raw.region.filter(|r| !r.is_empty())
            && region != sensor.region
        {
            return Err(SchemaError::WrongRegion {
                sensor: sensor.sensor_id.clone(),
                registered: sensor.region.clone(),
                got: region.to_string(),
            });
        }
        if !sensor.metrics.contains(&metric) {
            return Err(SchemaError::MetricNotReported {
                sensor: sensor.sensor_id.clone(),
                metric,
            });
        }
        if let Some(unit) = raw.unit
            && !metric.accepts_unit(unit)
        {
            return Err(SchemaError::WrongUnit {
                metric,
                expected: metric.unit(),
                got: unit.to_string(),
            });
        }
        if !raw.value.is_finite() {
            return Err(SchemaError::NonFiniteValue);
        }
        let (low, high) = metric.plausible_range();
        if raw.value < low || raw.value > high {
            return Err(SchemaError::ImplausibleValue {
                metric,
                value: raw.value,
                low,
                high,
            });
        }
        if raw.observed_at > now_ms + MAX_FUTURE_SKEW_MS {
            return Err(SchemaError::ReadingInFuture {
                observed_at: raw.observed_at,
                now: now_ms,
            });
        }
        if raw.observed_at < 0 {
            return Err(SchemaError::ReadingBeforeEpoch(raw.observed_at));
        }
        let quality = match raw.quality {
            Some(text) => text.parse()?,
            None => Quality::Ok,
        };
        Ok(SensorReading {
            sensor_id: sensor.sensor_id.clone(),
            region: sensor.region.clone(),
            metric,
            value_micro: (raw.value * VALUE_SCALE as f64).round() as i64,
            observed_at: raw.observed_at,
            quality,
        })
    }
}

/// Parses an RFC 3339 UTC or offset timestamp (`2026-06-01T00:00:10.250Z`,
/// `2026-06-01T02:00:10+02:00`, a space instead of `T`) or integer epoch milliseconds, into
/// epoch milliseconds. Sub-millisecond digits are truncated.
pub fn parse_event_time(text: &str) -> Result<EventTimeMs, SchemaError> {
    let text = text.trim();
    let bad = || SchemaError::BadTimestamp(text.to_string());
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let bytes = text.as_bytes();
    if bytes.len() < 19 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' {
        return Err(bad());
    }
    if bytes[10] != b'T' && bytes[10] != b' ' && bytes[10] != b't' {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, SchemaError> {
        let part = text.get(range).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, b) in fraction.bytes().take(digits).enumerate() {
            if i < 3 {
                millis = millis * 10 + i64::from(b - b'0');
            }
        }
        millis *= 10i64.pow(3u32.saturating_sub(digits as u32));
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" | "" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let hours: i64 = zone[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = zone[4..6].parse().map_err(|_| bad())?;
            if &zone[3..4] != ":" || hours > 23 || minutes > 59 {
                return Err(bad());
            }
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
