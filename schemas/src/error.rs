use crate::{Component, DecisionId};

/// Why a decision or a vote was refused, or why bytes failed to decode.
///
/// Every variant has a stable machine-readable [`code`](SchemaError::code) that the API
/// returns unchanged; messages are for people and may be reworded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("a decision needs between 2 and {max} options, got {got}")]
    OptionCount { got: usize, max: usize },
    #[error("option {index} is empty or longer than 200 bytes")]
    OptionLabel { index: usize },
    #[error("option {label:?} appears twice")]
    DuplicateOption { label: String },
    #[error("the title is empty or longer than 500 bytes")]
    Title,
    #[error("the window closes ({closes_at}) before it opens ({opens_at})")]
    EmptyWindow { opens_at: i64, closes_at: i64 },
    #[error("component weights sum to {sum_millionths} millionths, not 1000000")]
    WeightsDoNotSumToOne { sum_millionths: u64 },
    #[error("vote is for decision {got}, not {expected}")]
    WrongDecision {
        expected: DecisionId,
        got: DecisionId,
    },
    #[error("option {option} is not one of the decision's {options} options")]
    UnknownOption { option: u16, options: usize },
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
}

impl SchemaError {
    /// A stable, machine-readable code for this error (snake_case, never reworded).
    pub fn code(&self) -> &'static str {
        match self {
            Self::OptionCount { .. } => "option_count",
            Self::OptionLabel { .. } => "option_label",
            Self::DuplicateOption { .. } => "duplicate_option",
            Self::Title => "invalid_title",
            Self::EmptyWindow { .. } => "empty_window",
            Self::WeightsDoNotSumToOne { .. } => "weights_do_not_sum_to_one",
            Self::WrongDecision { .. } => "wrong_decision",
            Self::UnknownOption { .. } => "unknown_option",
            Self::OutsideWindow { .. } => "outside_window",
            Self::WeightOutOfRange { .. } => "weight_out_of_range",
            Self::IneligibleComponent { .. } => "ineligible_component",
            Self::EncodingLength { .. } => "encoding_length",
            Self::EncodingVersion(_) => "encoding_version",
            Self::UnknownComponent(_) => "unknown_component",
        }
    }
}
