//! Each agent's assessment for fixed inputs, recomputed here from the formulas the README
//! states (written out again, not through the crate's helpers), and the ballots they cast.

use std::collections::BTreeMap;

use canopy_agents::{
    Agent, Dependency, Distribution, EconomicAnalysis, EnvironmentalImpact, ImpactStatement,
    IncomeGroup, IndicatorFacts, LandUseChange, LandUseFacts, MetricEffect, MetricFacts,
    OptionPlan, Permit, PermitStatus, Proposal, RegionEvidence, SocialJustice,
    TechnicalVerification, WeatherFacts, ballot_for, consensus_of,
};
use canopy_schemas::{Ballot, Method};
use proptest::prelude::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn evidence() -> RegionEvidence {
    RegionEvidence {
        region: "north".into(),
        metrics: vec![
            MetricFacts {
                metric: "pm25".into(),
                hours: 240,
                mean: Some(30.0),
                anomalies: 12,
            },
            MetricFacts {
                metric: "no2".into(),
                hours: 0,
                mean: None,
                anomalies: 0,
            },
        ],
        weather: WeatherFacts {
            days: 365,
            mean_tmax_c: Some(27.5),
            mean_tmin_c: Some(15.0),
            mean_prcp_mm: Some(2.1),
        },
        land_use: LandUseFacts {
            boundary_km2: 400.0,
            by_class: BTreeMap::from([
                ("forest".to_string(), 50.0),
                ("residential".to_string(), 80.0),
                ("water".to_string(), 10.0),
            ]),
        },
        indicators: IndicatorFacts {
            population: Some(2_000_000.0),
            gdp_per_capita_usd: Some(20_000.0),
            poverty_percent: Some(25.0),
            unemployment_percent: Some(8.0),
        },
        rows: Vec::new(),
        missing: Vec::new(),
        read_at: 0,
    }
}

fn plan() -> OptionPlan {
    OptionPlan {
        option: 0,
        summary: "low-emission zone and tree planting".into(),
        effects: vec![
            MetricEffect {
                metric: "pm25".into(),
                change_percent: -20.0,
                certainty: 0.8,
            },
            MetricEffect {
                metric: "temperature".into(),
                change_percent: -2.0,
                certainty: 0.5,
            },
        ],
        land_use: vec![LandUseChange {
            from: "residential".into(),
            to: "park".into(),
            area_km2: 3.0,
        }],
        cost_usd: 5_000_000.0,
        budget_usd: 4_000_000.0,
        annual_benefit_usd: 900_000.0,
        jobs_created: 40,
        jobs_lost: 10,
        timeline_months: 24,
        dependencies: vec![
            Dependency {
                name: "bus fleet".into(),
                ready: true,
            },
            Dependency {
                name: "grid upgrade".into(),
                ready: false,
            },
        ],
        permits: vec![
            Permit {
                name: "environmental".into(),
                status: PermitStatus::Granted,
            },
            Permit {
                name: "traffic".into(),
                status: PermitStatus::Pending,
            },
            Permit {
                name: "heritage".into(),
                status: PermitStatus::NotApplied,
            },
        ],
        distribution: vec![
            Distribution {
                region: "north".into(),
                income_group: IncomeGroup::Low,
                cost_share: 0.2,
                benefit_share: 0.5,
            },
            Distribution {
                region: "north".into(),
                income_group: IncomeGroup::Middle,
                cost_share: 0.3,
                benefit_share: 0.3,
            },
            Distribution {
                region: "south".into(),
                income_group: IncomeGroup::High,
                cost_share: 0.5,
                benefit_share: 0.2,
            },
        ],
    }
}

fn proposal(method: Method) -> Proposal {
    let mut decision = canopy_testkit::decision_in(1, "north");
    decision.options = vec!["adopt".into(), "reject".into(), "defer".into()];
    decision.method = method;
    decision.credits = if method == Method::Quadratic { 10 } else { 0 };
    Proposal::new(
        decision,
        ImpactStatement {
            plans: vec![plan()],
        },
    )
    .unwrap()
}

#[test]
fn environmental_impact_matches_the_reference() {
    let assessment = EnvironmentalImpact.assess(&proposal(Method::SingleChoice), &evidence(), None);
    // pm25: 30 / 15 = 2 → +0.4 benefit; width (1-0.8)*0.4 + 0.1/sqrt(1+10) + noisy*0.4
    let pm25 = 0.2 * 2.0;
    let pm25_width = 0.2 * pm25 + 0.1 / 11f64.sqrt() + 12.0 / (12.0 + 240.0 * 60.0 + 1.0) * pm25;
    // temperature: no sensor mean → severity 1, hot region (27.5 °C) → 1.5; no hours: data 0.1
    let temperature = 0.02 * 1.5;
    let temperature_width = 0.5 * temperature + 0.1;
    // residential → park: 3 km² over 60 km² of natural land (forest 50 + water 10)
    let land = 3.0 / 60.0;
    let total = pm25 + temperature + land;
    let low = (pm25 - pm25_width) + (temperature - temperature_width) + 0.8 * land;
    let high = (pm25 + pm25_width) + (temperature + temperature_width) + 1.2 * land;
    let adopt = assessment.scores[0];
    assert!(
        close(adopt.score, total.tanh()),
        "{adopt:?} vs {}",
        total.tanh()
    );
    assert!(
        close(adopt.low, low.tanh()) && close(adopt.high, high.tanh()),
        "{adopt:?}"
    );
    assert!(adopt.low <= adopt.score && adopt.score <= adopt.high);
    assert_eq!(
        (assessment.scores[1].score, assessment.scores[2].score),
        (0.0, 0.0)
    );
    assert_eq!(assessment.recommended, 0);
    assert_eq!(assessment.impacts.len(), 3);
    // temperature has no measurements in the region: said so
    assert!(
        assessment
            .findings
            .iter()
            .any(|f| f.code == "no_measurements" && f.message.contains("temperature"))
    );
}

#[test]
fn economic_analysis_matches_the_reference() {
    let assessment = EconomicAnalysis.assess(&proposal(Method::SingleChoice), &evidence(), None);
    let annuity: f64 = (1..=10).map(|year| 1.03f64.powi(-year)).sum();
    let benefit = 900_000.0 * annuity;
    let npv = benefit - 5_000_000.0;
    let jobs = 30.0 * 20_000.0 * 0.5 * (1.0 + 8.0 / 10.0);
    let scale = 5_000_000.0 + benefit;
    let adopt = assessment.scores[0];
    assert!(
        close(adopt.score, ((npv + jobs) / scale).tanh()),
        "{adopt:?}"
    );
    assert!(close(
        adopt.low,
        ((0.7 * benefit - 1.3 * 5e6 + jobs) / scale).tanh()
    ));
    assert!(close(
        adopt.high,
        ((1.1 * benefit - 0.9 * 5e6 + jobs) / scale).tanh()
    ));
    let figures = &assessment.details["options"][0];
    assert!(close(figures["npv_usd"].as_f64().unwrap(), npv));
    assert!(close(
        figures["share_of_regional_gdp"].as_f64().unwrap(),
        npv / (2e6 * 2e4)
    ));
    assert_eq!(figures["jobs_net"], 30);
}

#[test]
fn social_justice_matches_the_reference() {
    let assessment = SocialJustice.assess(&proposal(Method::SingleChoice), &evidence(), None);
    // low: (0.5-0.2)*1, middle: 0, high: (0.2-0.5)*0 → 0.3; poverty 25 % → ×1.5
    let adopt = assessment.scores[0];
    assert!(close(adopt.score, 0.45), "{adopt:?}");
    assert!(close(adopt.low, 0.35) && close(adopt.high, 0.55));
    // south bears more than it gets, outside the decision's region
    assert!(
        assessment
            .findings
            .iter()
            .any(|f| f.code == "burden_outside_region" && f.message.contains("south"))
    );
    assert!(
        !assessment
            .findings
            .iter()
            .any(|f| f.code == "low_income_burdened")
    );
}

#[test]
fn technical_verification_names_each_failed_rule() {
    let assessment =
        TechnicalVerification.assess(&proposal(Method::SingleChoice), &evidence(), None);
    let mut codes: Vec<&str> = assessment.findings.iter().map(|f| f.code).collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "budget_below_cost",
            "dependency_not_ready",
            "permit_not_applied"
        ]
    );
    // 3 fixed rules + 2 dependencies + 3 permits checked, 3 failed
    assert!(close(assessment.scores[0].score, 1.0 - 2.0 * 3.0 / 8.0));
    // the status quo needs nothing
    assert_eq!(assessment.scores[1].score, 1.0);
    assert_eq!(assessment.recommended, 1);
}

#[test]
fn ballots_follow_the_method() {
    let assessment = EnvironmentalImpact.assess(&proposal(Method::SingleChoice), &evidence(), None);
    let single = proposal(Method::SingleChoice);
    assert_eq!(
        ballot_for(&single.decision, &assessment.scores).unwrap(),
        Ballot::single_choice(0).unwrap()
    );
    let approval = proposal(Method::Approval);
    assert_eq!(
        ballot_for(&approval.decision, &assessment.scores).unwrap(),
        Ballot::approval(&[0]).unwrap()
    );
    let ranked = proposal(Method::RankedChoice);
    assert_eq!(
        ballot_for(&ranked.decision, &assessment.scores).unwrap(),
        Ballot::ranked_choice(&[0, 1, 2]).unwrap()
    );
    let quadratic = proposal(Method::Quadratic);
    assert_eq!(
        ballot_for(&quadratic.decision, &assessment.scores).unwrap(),
        Ballot::quadratic(&[(0, 3)]).unwrap()
    );
}

#[test]
fn invalid_statements_are_refused() {
    let decision = proposal(Method::SingleChoice).decision;
    let refused = |statement: ImpactStatement| {
        let error = Proposal::new(decision.clone(), statement).unwrap_err();
        assert_eq!(error.code(), "invalid_impact_statement");
        error.to_string()
    };
    let mut beyond = plan();
    beyond.option = 3;
    assert!(
        refused(ImpactStatement {
            plans: vec![beyond]
        })
        .contains("3 options")
    );
    assert!(
        refused(ImpactStatement {
            plans: vec![plan(), plan()]
        })
        .contains("at most one plan")
    );
    let mut shares = plan();
    shares.distribution[0].cost_share = 0.9;
    assert!(
        refused(ImpactStatement {
            plans: vec![shares]
        })
        .contains("sum to")
    );
    let mut negative = plan();
    negative.cost_usd = f64::NAN;
    refused(ImpactStatement {
        plans: vec![negative],
    });
    let mut certainty = plan();
    certainty.effects[0].certainty = 1.5;
    refused(ImpactStatement {
        plans: vec![certainty],
    });
    let mut many = plan();
    many.permits = (0..65)
        .map(|i| Permit {
            name: format!("p{i}"),
            status: PermitStatus::Granted,
        })
        .collect();
    refused(ImpactStatement { plans: vec![many] });
}

proptest! {
    /// Whatever the plan, every score lies in [-1, 1] within its own interval, and the
    /// consensus is the mean of the four.
    #[test]
    fn scores_are_bounded_and_the_consensus_is_their_mean(
        change in -100.0f64..1000.0, certainty in 0.0f64..=1.0, cost in 0.0f64..1e9,
        benefit in 0.0f64..1e8, budget in 0.0f64..1e9, low_benefit in 0.0f64..=1.0,
    ) {
        let mut plan = plan();
        plan.effects[0].change_percent = change;
        plan.effects[0].certainty = certainty;
        plan.cost_usd = cost;
        plan.budget_usd = budget;
        plan.annual_benefit_usd = benefit;
        plan.distribution = vec![
            Distribution { region: "north".into(), income_group: IncomeGroup::Low, cost_share: 0.5, benefit_share: low_benefit },
            Distribution { region: "north".into(), income_group: IncomeGroup::High, cost_share: 0.5, benefit_share: 1.0 - low_benefit },
        ];
        let mut decision = canopy_testkit::decision_in(1, "north");
        decision.options = vec!["adopt".into(), "reject".into()];
        let proposal = Proposal::new(decision, ImpactStatement { plans: vec![plan] }).unwrap();
        let agents = canopy_agents::all_agents();
        let assessments: Vec<_> = agents.iter().map(|a| a.assess(&proposal, &evidence(), None)).collect();
        for assessment in &assessments {
            for score in &assessment.scores {
                prop_assert!((-1.0..=1.0).contains(&score.score), "{score:?}");
                prop_assert!(score.low <= score.score + 1e-12 && score.score <= score.high + 1e-12, "{:?} {score:?}", assessment.agent);
            }
        }
        let consensus = consensus_of(&assessments, 2);
        for option in 0..2 {
            let mean = assessments.iter().map(|a| a.scores[option].score).sum::<f64>() / 4.0;
            prop_assert!(close(consensus.mean_scores[option], mean));
        }
    }
}
