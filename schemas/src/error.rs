use crate::{Component, DecisionId, Method, Metric};

/// Why a decision or a vote was refused, or why bytes failed to decode.
///
/// Every variant has a stable machine-readable [`code`](SchemaError::code) that the API
/// returns unchanged; messages are for people and may be reworded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error("a decision needs between 2 and {max} options, got {got}")]
    OptionCount { got: usize, max: usize },
    #[error("option {index} is empty or longer than 200 bytes")]
    OptionLabel { index: usize },
    #[error("option {label:?} appears twice")]
    DuplicateOption { label: String },
    #[error("the title is empty or longer than 500 bytes")]
    Title,
    #[error("the electorate is malformed: {0}")]
    Electorate(&'static str),
    #[error("not eligible: {reason}")]
    NotEligible { reason: String },
    #[error("the window closes ({closes_at}) before it opens ({opens_at})")]
    EmptyWindow { opens_at: i64, closes_at: i64 },
    #[error(
        "a quadratic decision gives each voter 1 to 10000 credits and any other method none, \
         not {credits} for {method}"
    )]
    Credits { method: Method, credits: u32 },
    #[error("component weights sum to {sum_millionths} millionths, not 1000000")]
    WeightsDoNotSumToOne { sum_millionths: u64 },
    #[error("vote is for decision {got}, not {expected}")]
    WrongDecision {
        expected: DecisionId,
        got: DecisionId,
    },
    #[error("option {option} is not one of the decision's {options} options")]
    UnknownOption { option: u16, options: usize },
    #[error("a {ballot} ballot for a {decision} decision")]
    WrongMethod { decision: Method, ballot: Method },
    #[error("the ballot spends {spent} credits, more than the decision's {credits}")]
    OverBudget { spent: u32, credits: u32 },
    #[error("invalid ballot: {0}")]
    InvalidBallot(String),
    #[error("the ballot's bytes are not canonical: {0}")]
    BallotEncoding(&'static str),
    #[error("vote cast at {cast_at} is outside the decision's window [{opens_at}, {closes_at})")]
    OutsideWindow {
        cast_at: i64,
        opens_at: i64,
        closes_at: i64,
    },
    #[error("weight {millionths} millionths is out of range for the {component} component")]
    WeightOutOfRange {
        component: Component,
        millionths: u32,
    },
    #[error("the {component} component has weight 0 in this decision, so it takes no votes")]
    IneligibleComponent { component: Component },
    #[error("encoded vote is {got} bytes, expected {expected}")]
    EncodingLength { got: usize, expected: usize },
    #[error("unsupported vote encoding version {0}")]
    EncodingVersion(u8),
    #[error("unknown component code {0}")]
    UnknownComponent(u8),
    #[error("unknown voting method code {0}")]
    UnknownMethod(u8),
    #[error("unknown metric {0:?}")]
    UnknownMetric(String),
    #[error("unknown quality flag {0:?} (ok, suspect or maintenance)")]
    UnknownQuality(String),
    #[error("sensor {0:?} is not registered")]
    UnknownSensor(String),
    #[error("sensor {sensor:?} is registered in region {registered:?}, not {got:?}")]
    WrongRegion {
        sensor: String,
        registered: String,
        got: String,
    },
    #[error("sensor {sensor:?} does not report {metric}")]
    MetricNotReported { sensor: String, metric: Metric },
    #[error("{metric} is measured in {expected}, not {got:?}")]
    WrongUnit {
        metric: Metric,
        expected: &'static str,
        got: String,
    },
    #[error("the value is not a finite number")]
    NonFiniteValue,
    #[error("{value} is outside the plausible range of {metric} [{low}, {high}]")]
    ImplausibleValue {
        metric: Metric,
        value: f64,
        low: f64,
        high: f64,
    },
    #[error("observed at {observed_at} ms, more than 5 minutes after now ({now} ms)")]
    ReadingInFuture { observed_at: i64, now: i64 },
    #[error("observed at {0} ms, before 1970")]
    ReadingBeforeEpoch(i64),
    #[error("{0:?} is not an RFC 3339 timestamp or epoch milliseconds")]
    BadTimestamp(String),
    #[error("a reading's {0}")]
    ReadingEncoding(String),
    #[error("the {field} is empty, longer than 128 bytes or holds control characters")]
    SensorName { field: &'static str },
    #[error("latitude {latitude} / longitude {longitude} is not on Earth")]
    SensorLocation { latitude: f64, longitude: f64 },
    #[error("a sensor reports one or more metrics, each once")]
    SensorMetrics,
}

impl SchemaError {
    /// A stable, machine-readable code for this error (snake_case, never reworded).
    pub fn code(&self) -> &'static str {
        match self {
            Self::OptionCount { .. } => "option_count",
            Self::OptionLabel { .. } => "option_label",
            Self::DuplicateOption { .. } => "duplicate_option",
            Self::Title => "invalid_title",
            Self::Electorate(_) => "invalid_electorate",
            Self::NotEligible { .. } => "not_eligible",
            Self::EmptyWindow { .. } => "empty_window",
            Self::Credits { .. } => "invalid_credits",
            Self::WeightsDoNotSumToOne { .. } => "weights_do_not_sum_to_one",
            Self::WrongDecision { .. } => "wrong_decision",
            Self::UnknownOption { .. } => "unknown_option",
            Self::WrongMethod { .. } => "wrong_method",
            Self::OverBudget { .. } => "over_budget",
            Self::InvalidBallot(_) => "invalid_ballot",
            Self::BallotEncoding(_) => "ballot_encoding",
            Self::OutsideWindow { .. } => "outside_window",
            Self::WeightOutOfRange { .. } => "weight_out_of_range",
            Self::IneligibleComponent { .. } => "ineligible_component",
            Self::EncodingLength { .. } => "encoding_length",
            Self::EncodingVersion(_) => "encoding_version",
            Self::UnknownComponent(_) => "unknown_component",
            Self::UnknownMethod(_) => "unknown_method",
            Self::UnknownMetric(_) => "unknown_metric",
            Self::UnknownQuality(_) => "unknown_quality",
            Self::UnknownSensor(_) => "unknown_sensor",
            Self::WrongRegion { .. } => "wrong_region",
            Self::MetricNotReported { .. } => "metric_not_reported",
            Self::WrongUnit { .. } => "wrong_unit",
            Self::NonFiniteValue => "non_finite_value",
            Self::ImplausibleValue { .. } => "implausible_value",
            Self::ReadingInFuture { .. } => "reading_in_future",
            Self::ReadingBeforeEpoch(_) => "reading_before_epoch",
            Self::BadTimestamp(_) => "bad_timestamp",
            Self::ReadingEncoding(_) => "reading_encoding",
            Self::SensorName { .. } => "sensor_name",
            Self::SensorLocation { .. } => "sensor_location",
            Self::SensorMetrics => "sensor_metrics",
        }
    }
}
