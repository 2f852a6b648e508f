//! The agents: each a versioned analyser with a declared input contract, behind one trait.
//! An agent is a pure function of the proposal, the region's evidence and the vote so far,
//! so an assessment can be recomputed from what it shows.

use canopy_dataflow::Tally;
use canopy_schemas::Component;
use serde::Serialize;

use crate::evidence::{EvidenceRow, RegionEvidence};
use crate::statement::{OptionPlan, PermitStatus, Proposal};

/// The four agents, by their ids in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentId {
    EnvironmentalImpact,
    EconomicAnalysis,
    SocialJustice,
    TechnicalVerification,
}

impl AgentId {
    pub const ALL: [AgentId; 4] = [
        Self::EnvironmentalImpact,
        Self::EconomicAnalysis,
        Self::SocialJustice,
        Self::TechnicalVerification,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnvironmentalImpact => "environmental-impact",
            Self::EconomicAnalysis => "economic-analysis",
            Self::SocialJustice => "social-justice",
            Self::TechnicalVerification => "technical-verification",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|id| id.as_str() == text)
    }
}

/// What an agent reads: the statement's fields, the lake's tables, and whether it weighs
/// the vote so far.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct InputContract {
    pub statement_fields: Vec<&'static str>,
    pub lake_tables: Vec<&'static str>,
    pub vote_so_far: bool,
}

/// An option's score: -1 (harmful) to 1 (beneficial), with the interval the agent's
/// uncertainty gives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OptionScore {
    pub option: u16,
    pub score: f64,
    pub low: f64,
    pub high: f64,
}

/// One declared effect as the environmental agent weighs it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricImpact {
    pub option: u16,
    pub metric: String,
    /// Benefit (positive: the metric moves the healthy way), before squashing.
    pub impact: f64,
    pub low: f64,
    pub high: f64,
    /// The region's mean over the guideline, which scales the change (1 without data).
    pub severity: f64,
}

/// Something an agent found: a failed rule, a burden, a gap in its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Finding {
    pub option: Option<u16>,
    pub code: &'static str,
    pub message: String,
}

/// What an agent concluded about a proposal, and what it used.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Assessment {
    pub agent: AgentId,
    pub version: &'static str,
    /// One per option, in option order.
    pub scores: Vec<OptionScore>,
    /// The option with the highest score (the lowest index on a tie).
    pub recommended: u16,
    /// The environmental agent's per-metric impacts (empty for the others).
    pub impacts: Vec<MetricImpact>,
    pub findings: Vec<Finding>,
    /// The agent's own figures (net present value, equity, rules checked, …).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The lake rows it read.
    pub evidence: Vec<EvidenceRow>,
    /// Tables it would have read but could not.
    pub missing: Vec<String>,
}

/// An analyser.
pub trait Agent: Send + Sync {
    fn id(&self) -> AgentId;
    fn version(&self) -> &'static str;
    fn contract(&self) -> InputContract;
    fn assess(
        &self,
        proposal: &Proposal,
        evidence: &RegionEvidence,
        tally: Option<&Tally>,
    ) -> Assessment;
}

/// The four agents, in [`AgentId::ALL`]'s order.
pub fn all_agents() -> Vec<Box<dyn Agent>> {
    vec![
        Box::new(EnvironmentalImpact),
        Box::new(EconomicAnalysis),
        Box::new(SocialJustice),
        Box::new(TechnicalVerification),
    ]
}

/// The highest-scoring option, the lowest index on a tie.
fn best(scores: &[OptionScore]) -> u16 {
    let mut best = 0;
    for (index, score) in scores.iter().enumerate() {
        if score.score > scores[best].score {
            best = index;
        }
    }
    best as u16
}

fn assessment(
    agent: &dyn Agent,
    scores: Vec<OptionScore>,
    evidence: &RegionEvidence,
    tables: &[&str],
) -> Assessment {
    let recommended = best(&scores);
    Assessment {
        agent: agent.id(),
        version: agent.version(),
        scores,
        recommended,
        impacts: Vec::new(),
        findings: Vec::new(),
        details: serde_json::Value::Null,
        evidence: evidence
            .rows
            .iter()
            .filter(|row| tables.contains(&row.table.as_str()))
            .cloned()
            .collect(),
        missing: evidence
            .missing
            .iter()
            .filter(|m| tables.iter().any(|t| m.starts_with(&format!("{t}:"))))
            .cloned()
            .collect(),
    }
}

/// Guideline levels (WHO air-quality guidelines' annual or 8-hour levels, in the metric's
/// canonical unit) against which the region's mean is a severity.
pub fn guideline(metric: &str) -> Option<f64> {
    match metric {
        "pm25" => Some(15.0),
        "pm10" => Some(45.0),
        "no2" => Some(25.0),
        "o3" => Some(100.0),
        "so2" => Some(40.0),
        "co" => Some(4.0),
        "noise" => Some(55.0),
        "temperature" => Some(25.0),
        _ => None,
    }
}

/// The environmental consequences: each declared metric effect scaled by how far the
/// region's measured level is above its guideline, land taken from or given back to
/// natural use against the region's natural land, and hot regions weighing temperature
/// more.
#[derive(Clone, Copy, Debug)]
pub struct EnvironmentalImpact;

impl EnvironmentalImpact {
    /// A metric's severity: the region's mean over its guideline, within [0.5, 3]; 1 where
    /// either is unknown. A region whose summers average above 25 °C weighs temperature
    /// 1.5 times.
    pub fn severity(metric: &str, evidence: &RegionEvidence) -> f64 {
        let measured = evidence.metric(metric).and_then(|m| m.mean);
        let mut severity = match (guideline(metric), measured) {
            (Some(level), Some(mean)) if level > 0.0 => (mean / level).clamp(0.5, 3.0),
            _ => 1.0,
        };
        if metric == "temperature" && evidence.weather.mean_tmax_c.is_some_and(|t| t > 25.0) {
            severity *= 1.5;
        }
        severity
    }

    /// The half-width of an effect's interval: what the statement is unsure of, and less the
    /// more hours the sensors have seen, more the more of their minutes were anomalous.
    pub fn uncertainty(
        impact: f64,
        certainty: f64,
        metric: &str,
        evidence: &RegionEvidence,
    ) -> f64 {
        let (hours, anomalies) = evidence
            .metric(metric)
            .map_or((0, 0), |m| (m.hours, m.anomalies));
        let data = 0.1 / (1.0 + hours as f64 / 24.0).sqrt();
        let noisy = anomalies as f64 / (anomalies as f64 + hours as f64 * 60.0 + 1.0);
        impact.abs() * (1.0 - certainty) + data + noisy * impact.abs()
    }

    fn plan_impacts(plan: &OptionPlan, evidence: &RegionEvidence) -> Vec<MetricImpact> {
        let mut impacts = Vec::new();
        for effect in &plan.effects {
            let severity = Self::severity(&effect.metric, evidence);
            let impact = -effect.change_percent / 100.0 * severity;
            let width = Self::uncertainty(impact, effect.certainty, &effect.metric, evidence);
            impacts.push(MetricImpact {
                option: plan.option,
                metric: effect.metric.clone(),
                impact,
                low: impact - width,
                high: impact + width,
                severity,
            });
        }
        let natural = evidence.land_use.natural_km2().max(1.0);
        for change in &plan.land_use {
            let from_natural = is_natural(&change.from);
            let to_natural = is_natural(&change.to);
            let impact = match (from_natural, to_natural) {
                (true, false) => -change.area_km2 / natural,
                (false, true) => change.area_km2 / natural,
                _ => 0.0,
            };
            impacts.push(MetricImpact {
                option: plan.option,
                metric: format!("land_use:{}->{}", change.from, change.to),
                impact,
                low: impact - 0.2 * impact.abs(),
                high: impact + 0.2 * impact.abs(),
                severity: 1.0,
            });
        }
        impacts
    }
}

fn is_natural(class: &str) -> bool {
    crate::evidence::LandUseFacts::NATURAL.contains(&class)
}

impl Agent for EnvironmentalImpact {
    fn id(&self) -> AgentId {
        AgentId::EnvironmentalImpact
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn contract(&self) -> InputContract {
        InputContract {
            statement_fields: vec!["effects", "land_use"],
            lake_tables: vec!["window_features", "weather_daily", "regions"],
            vote_so_far: false,
        }
    }
    fn assess(
        &self,
        proposal: &Proposal,
        evidence: &RegionEvidence,
        _: Option<&Tally>,
    ) -> Assessment {
        let mut impacts = Vec::new();
        let scores = (0..proposal.options())
            .map(|option| {
                let mine = proposal
                    .plan(option)
                    .map(|plan| Self::plan_impacts(plan, evidence))
                    .unwrap_or_default();
                let sum = |f: fn(&MetricImpact) -> f64| mine.iter().map(f).sum::<f64>();
                let score = OptionScore {
                    option,
                    score: sum(|i| i.impact).tanh(),
                    low: sum(|i| i.low).tanh(),
                    high: sum(|i| i.high).tanh(),
                };
                impacts.extend(mine);
                score
            })
            .collect();
        let mut out = assessment(self, scores, evidence, &self.contract().lake_tables);
        for plan in &proposal.statement.plans {
            for effect in &plan.effects {
                if evidence.metric(&effect.metric).is_none_or(|m| m.hours == 0) {
                    out.findings.push(Finding {
                        option: Some(plan.option),
                        code: "no_measurements",
                        message: format!(
                            "the region's sensors have no hourly {} windows in the last 30 days: \
                             the effect is weighed without a measured level",
                            effect.metric
                        ),
                    });
                }
            }
        }
        out.details = serde_json::json!({
            "natural_land_km2": evidence.land_use.natural_km2(),
            "mean_tmax_c": evidence.weather.mean_tmax_c,
        });
        out.impacts = impacts;
        out
    }
}

/// Ten years at 3 %: what a yearly benefit is worth today.
pub const ANNUITY_YEARS: i32 = 10;
pub const DISCOUNT_RATE: f64 = 0.03;

pub fn annuity_factor() -> f64 {
    (1.0 - (1.0 + DISCOUNT_RATE).powi(-ANNUITY_YEARS)) / DISCOUNT_RATE
}

/// The economic implications: net present value over ten years, with costs overrunning by
/// up to 30 % and benefits falling short by up to 30 % as its low end, and jobs valued at
/// half the region's income per head, more where unemployment is high.
#[derive(Clone, Copy, Debug)]
pub struct EconomicAnalysis;

/// Income per head and unemployment assumed where the lake has no indicators.
pub const DEFAULT_GDP_PER_CAPITA: f64 = 10_000.0;
pub const DEFAULT_UNEMPLOYMENT: f64 = 5.0;

impl EconomicAnalysis {
    /// (net present value, its low end, its high end, the jobs' value) of `plan`.
    pub fn figures(plan: &OptionPlan, evidence: &RegionEvidence) -> (f64, f64, f64, f64) {
        let annuity = annuity_factor();
        let benefit = plan.annual_benefit_usd * annuity;
        let npv = benefit - plan.cost_usd;
        let low = 0.7 * benefit - 1.3 * plan.cost_usd;
        let high = 1.1 * benefit - 0.9 * plan.cost_usd;
        let income = evidence
            .indicators
            .gdp_per_capita_usd
            .unwrap_or(DEFAULT_GDP_PER_CAPITA);
        let unemployment = evidence
            .indicators
            .unemployment_percent
            .unwrap_or(DEFAULT_UNEMPLOYMENT);
        let jobs = f64::from(plan.jobs_created) - f64::from(plan.jobs_lost);
        let jobs_value = jobs * income * 0.5 * (1.0 + unemployment / 10.0);
        (npv, low, high, jobs_value)
    }
}

impl Agent for EconomicAnalysis {
    fn id(&self) -> AgentId {
        AgentId::EconomicAnalysis
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn contract(&self) -> InputContract {
        InputContract {
            statement_fields: vec![
                "cost_usd",
                "annual_benefit_usd",
                "jobs_created",
                "jobs_lost",
            ],
            lake_tables: vec!["indicators"],
            vote_so_far: false,
        }
    }
    fn assess(
        &self,
        proposal: &Proposal,
        evidence: &RegionEvidence,
        _: Option<&Tally>,
    ) -> Assessment {
        let mut details = Vec::new();
        let scores = (0..proposal.options())
            .map(|option| {
                let Some(plan) = proposal.plan(option) else {
                    return OptionScore {
                        option,
                        score: 0.0,
                        low: 0.0,
                        high: 0.0,
                    };
                };
                let (npv, low, high, jobs) = Self::figures(plan, evidence);
                let scale = (plan.cost_usd + plan.annual_benefit_usd * annuity_factor()).max(1.0);
                let regional_gdp = evidence
                    .indicators
                    .population
                    .zip(evidence.indicators.gdp_per_capita_usd)
                    .map(|(people, income)| people * income);
                details.push(serde_json::json!({
                    "option": option, "npv_usd": npv, "npv_low_usd": low, "npv_high_usd": high,
                    "jobs_net": i64::from(plan.jobs_created) - i64::from(plan.jobs_lost),
                    "jobs_value_usd": jobs,
                    "share_of_regional_gdp": regional_gdp.map(|gdp| npv / gdp),
                }));
                OptionScore {
                    option,
                    score: ((npv + jobs) / scale).tanh(),
                    low: ((low + jobs) / scale).tanh(),
                    high: ((high + jobs) / scale).tanh(),
                }
            })
            .collect();
        let mut out = assessment(self, scores, evidence, &self.contract().lake_tables);
        out.details = serde_json::json!({ "options": details, "annuity_factor": annuity_factor() });
        out
    }
}

/// Who bears the costs and who benefits: benefits to lower income groups count for more,
/// costs to them count against, amplified where poverty is high; the vote so far is checked
/// for whether those affected have been heard.
#[derive(Clone, Copy, Debug)]
pub struct SocialJustice;

/// Poverty assumed where the lake has no indicator (percent of people under $2.15 a day).
pub const DEFAULT_POVERTY: f64 = 10.0;

impl SocialJustice {
    /// The plan's equity: Σ benefit share × group weight − Σ cost share × group weight.
    pub fn equity(plan: &OptionPlan) -> f64 {
        plan.distribution
            .iter()
            .map(|d| (d.benefit_share - d.cost_share) * d.income_group.equity_weight())
            .sum()
    }

    pub fn amplification(evidence: &RegionEvidence) -> f64 {
        1.0 + evidence
            .indicators
            .poverty_percent
            .unwrap_or(DEFAULT_POVERTY)
            / 50.0
    }
}

impl Agent for SocialJustice {
    fn id(&self) -> AgentId {
        AgentId::SocialJustice
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn contract(&self) -> InputContract {
        InputContract {
            statement_fields: vec!["distribution"],
            lake_tables: vec!["indicators"],
            vote_so_far: true,
        }
    }
    fn assess(
        &self,
        proposal: &Proposal,
        evidence: &RegionEvidence,
        tally: Option<&Tally>,
    ) -> Assessment {
        let amplification = Self::amplification(evidence);
        let mut findings = Vec::new();
        let scores = (0..proposal.options())
            .map(|option| {
                let Some(plan) = proposal.plan(option) else {
                    return OptionScore { option, score: 0.0, low: 0.0, high: 0.0 };
                };
                if plan.distribution.is_empty() {
                    if plan.cost_usd > 0.0 {
                        findings.push(Finding {
                            option: Some(option),
                            code: "no_distribution",
                            message: "the plan costs money but does not say who pays or who benefits".into(),
                        });
                    }
                    return OptionScore { option, score: 0.0, low: -0.5, high: 0.5 };
                }
                for entry in &plan.distribution {
                    if entry.income_group == crate::IncomeGroup::Low && entry.cost_share > entry.benefit_share {
                        findings.push(Finding {
                            option: Some(option),
                            code: "low_income_burdened",
                            message: format!(
                                "low-income households of {} bear {:.0} % of the cost and get {:.0} % of the benefit",
                                entry.region, entry.cost_share * 100.0, entry.benefit_share * 100.0
                            ),
                        });
                    }
                    if entry.region != proposal.decision.region && entry.cost_share > entry.benefit_share {
                        findings.push(Finding {
                            option: Some(option),
                            code: "burden_outside_region",
                            message: format!("{} bears more of the cost than it benefits, outside the decision's region", entry.region),
                        });
                    }
                }
                let score = (Self::equity(plan) * amplification).clamp(-1.0, 1.0);
                OptionScore {
                    option,
                    score,
                    low: (score - 0.1).max(-1.0),
                    high: (score + 0.1).min(1.0),
                }
            })
            .collect();
        let mut out = assessment(self, scores, evidence, &self.contract().lake_tables);
        let turnout = tally.map(|t| t.turnout_by_component).unwrap_or_default();
        let community = Component::Community.index();
        if proposal.decision.weights.of(Component::Community) > 0
            && turnout[community] == 0
            && turnout.iter().sum::<u64>() > 0
        {
            findings.push(Finding {
                option: None,
                code: "affected_unheard",
                message: "no affected stakeholder has voted yet, though others have".into(),
            });
        }
        out.findings = findings;
        out.details = serde_json::json!({
            "amplification": amplification,
            "turnout_by_component": turnout,
        });
        out
    }
}

/// Feasibility: the budget covers the cost, the timeline is declared and under ten years,
/// every dependency is ready, no permit is denied or not applied for. Each failed rule is
/// named; an option's score is 1 − 2 × failed / checked.
#[derive(Clone, Copy, Debug)]
pub struct TechnicalVerification;

impl TechnicalVerification {
    /// The rules `plan` fails, and how many it was checked against.
    pub fn failed_rules(plan: &OptionPlan) -> (Vec<Finding>, usize) {
        let option = Some(plan.option);
        let mut failed = Vec::new();
        let mut checked = 0;
        let mut rule = |ok: bool, code: &'static str, message: String| {
            checked += 1;
            if !ok {
                failed.push(Finding {
                    option,
                    code,
                    message,
                });
            }
        };
        rule(
            plan.budget_usd >= plan.cost_usd,
            "budget_below_cost",
            format!(
                "the budget ({:.0} USD) does not cover the cost ({:.0} USD)",
                plan.budget_usd, plan.cost_usd
            ),
        );
        let does_something =
            plan.cost_usd > 0.0 || !plan.effects.is_empty() || !plan.land_use.is_empty();
        rule(
            !does_something || plan.timeline_months >= 1,
            "no_timeline",
            "the plan declares no timeline".into(),
        );
        rule(
            plan.timeline_months <= 120,
            "timeline_too_long",
            format!("{} months is over ten years", plan.timeline_months),
        );
        for dependency in &plan.dependencies {
            rule(
                dependency.ready,
                "dependency_not_ready",
                format!("{} is not in place", dependency.name),
            );
        }
        for permit in &plan.permits {
            let (ok, code) = match permit.status {
                PermitStatus::Granted | PermitStatus::Pending => (true, ""),
                PermitStatus::Denied => (false, "permit_denied"),
                PermitStatus::NotApplied => (false, "permit_not_applied"),
            };
            rule(
                ok,
                if ok { "permit" } else { code },
                format!("permit {}: {:?}", permit.name, permit.status),
            );
        }
        (failed, checked)
    }
}

impl Agent for TechnicalVerification {
    fn id(&self) -> AgentId {
        AgentId::TechnicalVerification
    }
    fn version(&self) -> &'static str {
        "1.0.0"
    }
    fn contract(&self) -> InputContract {
        InputContract {
            statement_fields: vec![
                "cost_usd",
                "budget_usd",
                "timeline_months",
                "dependencies",
                "permits",
            ],
            lake_tables: vec![],
            vote_so_far: false,
        }
    }
    fn assess(
        &self,
        proposal: &Proposal,
        evidence: &RegionEvidence,
        _: Option<&Tally>,
    ) -> Assessment {
        let mut findings = Vec::new();
        let mut checks = Vec::new();
        let scores = (0..proposal.options())
            .map(|option| {
                let Some(plan) = proposal.plan(option) else {
                    return OptionScore { option, score: 1.0, low: 1.0, high: 1.0 };
                };
                let (failed, checked) = Self::failed_rules(plan);
                let score = 1.0 - 2.0 * failed.len() as f64 / checked.max(1) as f64;
                checks.push(serde_json::json!({ "option": option, "checked": checked, "failed": failed.len() }));
                findings.extend(failed);
                OptionScore { option, score, low: score, high: score }
            })
            .collect();
        let mut out = assessment(self, scores, evidence, &self.contract().lake_tables);
        out.findings = findings;
        out.details = serde_json::json!({ "rules": checks });
        out
    }
}
