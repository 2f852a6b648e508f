//! Historical trends from the lake: buckets of a region's (or a sensor's) readings, or of a
//! decision's votes, over any range. The SQL is built here, from typed arguments, so callers
//! never format SQL text; every value is quoted as a SQL string literal.

use canopy_schemas::{DecisionId, Metric};

use crate::AnalyticsError;
use crate::sql::{BatchEncoder, LakeQuery, OutputFormat};

/// The bucket widths the lake answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrendBucket {
    Hour,
    Day,
    Week,
}

impl TrendBucket {
    /// `hour`, `day` or `week`; anything else is not a lake bucket.
    pub fn parse(bucket: &str) -> Option<Self> {
        match bucket {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
        }
    }

    fn width_ms(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
            Self::Week => 7 * 86_400_000,
        }
    }

    /// Where the bucket holding `ms` starts: `date_trunc`'s boundaries (weeks start on
    /// Monday, and 1970-01-01 was a Thursday).
    fn start_of(self, ms: i64) -> i64 {
        let origin = match self {
            Self::Week => -3 * 86_400_000,
            _ => 0,
        };
        (ms - origin).div_euclid(self.width_ms()) * self.width_ms() + origin
    }
}

/// What a trends question is about.
#[derive(Clone, Copy, Debug)]
pub enum TrendsSubject<'a> {
    Sensors {
        region: &'a str,
        metric: Metric,
        sensor: Option<&'a str>,
    },
    /// A decision's votes and voters, each (bucket, option) shown only when at least
    /// `min_voters` distinct voters are in it. No weights: the lake keeps none per vote.
    Decision {
        decision: DecisionId,
        min_voters: u64,
    },
}

/// A time range in epoch milliseconds, either end open.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeRange {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl TimeRange {
    /// The range grown outwards to whole buckets, so that no answer tells apart votes of
    /// one bucket by when they were cast.
    pub fn whole_buckets(self, bucket: TrendBucket) -> Self {
        Self {
            from_ms: self.from_ms.map(|from| bucket.start_of(from)),
            to_ms: self.to_ms.map(|to| {
                let start = bucket.start_of(to);
                if start == to {
                    to
                } else {
                    start.saturating_add(bucket.width_ms())
                }
            }),
        }
    }
}

fn sql_text(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn range_condition(column: &str, range: TimeRange) -> String {
    let mut parts = Vec::new();
    if let Some(from) = range.from_ms {
        parts.push(format!(
            "{column} >= to_timestamp_micros({})",
            from.saturating_mul(1000)
        ));
    }
    if let Some(to) = range.to_ms {
        parts.push(format!(
            "{column} < to_timestamp_micros({})",
            to.saturating_mul(1000)
        ));
    }
    if parts.is_empty() {
        "TRUE".into()
    } else {
        parts.join(" AND ")
    }
}

/// The query behind [`trend_points`]. Readings taken during maintenance are left out, as
/// the features leave them out.
pub fn trends_sql(subject: TrendsSubject<'_>, bucket: TrendBucket, range: TimeRange) -> String {
    let unit = bucket.as_str();
    match subject {
        TrendsSubject::Sensors {
            region,
            metric,
            sensor,
        } => format!(
            "SELECT date_trunc('{unit}', observed_at) AS bucket_start, COUNT(*) AS count, \
             AVG(value) AS mean, STDDEV_POP(value) AS std_dev, MIN(value) AS min, MAX(value) AS max \
             FROM sensor_readings WHERE region = {region} AND metric = {metric} {sensor} \
             AND quality <> 'maintenance' AND {range} \
             GROUP BY 1 ORDER BY 1",
            region = sql_text(region),
            metric = sql_text(metric.as_str()),
            sensor = sensor
                .map(|s| format!("AND sensor = {}", sql_text(s)))
                .unwrap_or_default(),
            range = range_condition("observed_at", range),
        ),
        TrendsSubject::Decision {
            decision,
            min_voters,
        } => format!(
            "SELECT date_trunc('{unit}', cast_hour) AS bucket_start, option, COUNT(*) AS votes, \
             COUNT(DISTINCT voter_commitment) AS voters \
             FROM votes WHERE decision_id = {decision} AND {range} \
             GROUP BY 1, 2 HAVING COUNT(DISTINCT voter_commitment) >= {min_voters} ORDER BY 1, 2",
            decision = sql_text(&decision.to_string()),
            // Buckets are whole hours or more, so the hour a vote holds decides its bucket.
            range = range_condition("cast_hour", range.whole_buckets(bucket)),
        ),
    }
}

/// The buckets, oldest first, each a JSON object of the query's columns.
pub async fn trend_points(
    sql: &dyn LakeQuery,
    subject: TrendsSubject<'_>,
    bucket: TrendBucket,
    range: TimeRange,
) -> Result<Vec<serde_json::Value>, AnalyticsError> {
    let batches = sql.query(&trends_sql(subject, bucket, range)).await?;
    let mut encoder = BatchEncoder::new(OutputFormat::Json);
    let mut points = Vec::new();
    for batch in &batches {
        let lines = encoder.encode(batch)?;
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let point = serde_json::from_slice(line)
                .map_err(|e| AnalyticsError::Sql(format!("encoding a trend point: {e}")))?;
            points.push(point);
        }
    }
    Ok(points)
}
