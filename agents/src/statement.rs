//! A proposal is a decision plus the impact statement its owner submits with it: per
//! option, what adopting it would do (its plan). An option without a plan is the status
//! quo: no effects, no cost.

use canopy_schemas::Decision;
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The most plans, effects, land-use changes, dependencies, permits and distribution
/// entries a statement may hold (each list), so that an analysis stays cheap.
pub const MAX_ITEMS: usize = 64;
/// The longest text field, in bytes.
pub const MAX_TEXT: usize = 2_000;

/// What each option of a decision would do if adopted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpactStatement {
    /// One plan per option that changes anything; an option without one is the status quo.
    pub plans: Vec<OptionPlan>,
}

/// One option's plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionPlan {
    /// The option's index in the decision.
    pub option: u16,
    #[serde(default)]
    pub summary: String,
    /// Declared effects on measured metrics (the sensor network's names: pm25, no2, …).
    #[serde(default)]
    pub effects: Vec<MetricEffect>,
    #[serde(default)]
    pub land_use: Vec<LandUseChange>,
    /// One-off cost, in US dollars.
    #[serde(default)]
    pub cost_usd: f64,
    /// The money set aside for it, in US dollars.
    #[serde(default)]
    pub budget_usd: f64,
    /// Yearly benefit once running (savings, health costs avoided), in US dollars.
    #[serde(default)]
    pub annual_benefit_usd: f64,
    #[serde(default)]
    pub jobs_created: u32,
    #[serde(default)]
    pub jobs_lost: u32,
    /// Months from adoption to completion.
    #[serde(default)]
    pub timeline_months: u32,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    #[serde(default)]
    pub permits: Vec<Permit>,
    /// Who bears the cost and who benefits, by region and income group.
    #[serde(default)]
    pub distribution: Vec<Distribution>,
}

/// A declared change of a metric, in percent of its current level (negative: lower).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricEffect {
    pub metric: String,
    pub change_percent: f64,
    /// How sure the statement is of it, 0 to 1.
    pub certainty: f64,
}

/// Land turned from one use to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LandUseChange {
    /// OpenStreetMap's land-use class before and after (forest, farmland, residential, …).
    pub from: String,
    pub to: String,
    pub area_km2: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub name: String,
    /// Whether what it depends on is in place.
    pub ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermitStatus {
    Granted,
    Pending,
    Denied,
    NotApplied,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Permit {
    pub name: String,
    pub status: PermitStatus,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum IncomeGroup {
    Low,
    Middle,
    High,
}

impl IncomeGroup {
    /// How much a cost or benefit to this group counts for equity: the least well-off most.
    pub fn equity_weight(self) -> f64 {
        match self {
            Self::Low => 1.0,
            Self::Middle => 0.5,
            Self::High => 0.0,
        }
    }
}

/// A share of the plan's cost and of its benefit falling on one region's income group.
/// Over a plan's entries, each kind of share sums to 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    pub region: String,
    pub income_group: IncomeGroup,
    pub cost_share: f64,
    pub benefit_share: f64,
}

/// The decision and its statement, checked against each other.
#[derive(Clone, Debug)]
pub struct Proposal {
    pub decision: Decision,
    pub statement: ImpactStatement,
}

impl Proposal {
    /// `statement` for `decision`, once [`ImpactStatement::validate`] passes.
    pub fn new(decision: Decision, statement: ImpactStatement) -> Result<Self, AgentError> {
        statement.validate(decision.options.len())?;
        Ok(Self {
            decision,
            statement,
        })
    }

    /// The plan of `option`, if it has one (else it is the status quo).
    pub fn plan(&self, option: u16) -> Option<&OptionPlan> {
        self.statement.plans.iter().find(|p| p.option == option)
    }

    pub fn options(&self) -> u16 {
        self.decision.options.len() as u16
    }
}

fn invalid(message: String) -> AgentError {
    AgentError::InvalidStatement(message)
}

fn finite_at_least(what: &str, value: f64, least: f64) -> Result<(), AgentError> {
    if value.is_finite() && value >= least {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} must be a number ≥ {least}, not {value}"
        )))
    }
}

fn short_text(what: &str, text: &str) -> Result<(), AgentError> {
    if text.len() > MAX_TEXT {
        return Err(invalid(format!("{what} is longer than {MAX_TEXT} bytes")));
    }
    Ok(())
}

fn few<T>(what: &str, items: &[T]) -> Result<(), AgentError> {
    if items.len() > MAX_ITEMS {
        return Err(invalid(format!("{what}: at most {MAX_ITEMS} entries")));
    }
    Ok(())
}

impl ImpactStatement {
    /// Checks the statement for a decision of `options` options: plans for existing options,
    /// each at most once; finite, non-negative amounts; certainties in [0, 1]; each kind of
    /// distribution share summing to 1 (within 0.001) when given.
    pub fn validate(&self, options: usize) -> Result<(), AgentError> {
        few("plans", &self.plans)?;
        let mut seen = std::collections::BTreeSet::new();
        for plan in &self.plans {
            let at = format!("plan for option {}", plan.option);
            if usize::from(plan.option) >= options {
                return Err(invalid(format!("{at}: the decision has {options} options")));
            }
            if !seen.insert(plan.option) {
                return Err(invalid(format!("{at}: an option has at most one plan")));
            }
            short_text(&format!("{at}: summary"), &plan.summary)?;
            few(&format!("{at}: effects"), &plan.effects)?;
            few(&format!("{at}: land_use"), &plan.land_use)?;
            few(&format!("{at}: dependencies"), &plan.dependencies)?;
            few(&format!("{at}: permits"), &plan.permits)?;
            few(&format!("{at}: distribution"), &plan.distribution)?;
            finite_at_least(&format!("{at}: cost_usd"), plan.cost_usd, 0.0)?;
            finite_at_least(&format!("{at}: budget_usd"), plan.budget_usd, 0.0)?;
            finite_at_least(
                &format!("{at}: annual_benefit_usd"),
                plan.annual_benefit_usd,
                0.0,
            )?;
            for effect in &plan.effects {
                short_text(&format!("{at}: metric"), &effect.metric)?;
                if !effect.change_percent.is_finite()
                    || effect.change_percent < -100.0
                    || effect.change_percent > 1000.0
                {
                    return Err(invalid(format!(
                        "{at}: the change of {} must be between -100 and 1000 percent",
                        effect.metric
                    )));
                }
                if !(0.0..=1.0).contains(&effect.certainty) {
                    return Err(invalid(format!(
                        "{at}: the certainty of {} must be between 0 and 1",
                        effect.metric
                    )));
                }
            }
            for change in &plan.land_use {
                short_text(&format!("{at}: land use"), &change.from)?;
                short_text(&format!("{at}: land use"), &change.to)?;
                finite_at_least(&format!("{at}: land use area_km2"), change.area_km2, 0.0)?;
            }
            for item in plan
                .dependencies
                .iter()
                .map(|d| &d.name)
                .chain(plan.permits.iter().map(|p| &p.name))
            {
                short_text(&format!("{at}: name"), item)?;
            }
            if !plan.distribution.is_empty() {
                for entry in &plan.distribution {
                    short_text(&format!("{at}: region"), &entry.region)?;
                    finite_at_least(&format!("{at}: cost_share"), entry.cost_share, 0.0)?;
                    finite_at_least(&format!("{at}: benefit_share"), entry.benefit_share, 0.0)?;
                }
                let costs: f64 = plan.distribution.iter().map(|d| d.cost_share).sum();
                let benefits: f64 = plan.distribution.iter().map(|d| d.benefit_share).sum();
                for (kind, sum) in [("cost_share", costs), ("benefit_share", benefits)] {
                    if (sum - 1.0).abs() > 1e-3 {
                        return Err(invalid(format!(
                            "{at}: the {kind}s of its distribution sum to {sum}, not 1"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
