//! The consensus model as ONNX Runtime runs it here: the same probabilities the training
//! script's onnxruntime gave for the committed held-out rows; the features computed from a
//! tally; the registry's rollout share and its automatic rollback of a planted bad version.

use std::path::PathBuf;

use canopy_agents::{
    BUILT_IN_MODELS, ConsensusModel, FEATURES, ModelRegistry, PredictionInputs, RolloutPolicy,
    features_of,
};
use canopy_dataflow::{CellTally, Tally};
use canopy_schemas::{Component, ComponentWeights};

const PARITY: &str = include_str!("../../models/consensus/testdata/parity.csv");

fn library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .expect("ORT_DYLIB_PATH must name ONNX Runtime's library (scripts/test sets it via scripts/onnxruntime)")
}

fn built_in(version: &str) -> ConsensusModel {
    let (_, bytes) = BUILT_IN_MODELS.iter().find(|(v, _)| *v == version).unwrap();
    ConsensusModel::from_bytes(&library(), version, bytes).unwrap()
}

#[test]
fn the_models_give_the_training_scripts_probabilities() {
    let mut lines = PARITY.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let first_feature = column("f0");
    let models = [
        (built_in("consensus-1"), column("p_v1")),
        (built_in("consensus-2"), column("p_v2")),
    ];
    let mut rows = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let mut features = [0f32; FEATURES];
        for (i, feature) in features.iter_mut().enumerate() {
            *feature = cells[first_feature + i].parse().unwrap();
        }
        for (model, expected) in &models {
            let got = model.raw(&[features]).unwrap()[0];
            let want: f64 = cells[*expected].parse().unwrap();
            assert!(
                (got - want).abs() < 1e-5,
                "{}: {got} vs {want} for {line}",
                model.version()
            );
        }
        rows += 1;
    }
    assert!(rows >= 20, "{rows} parity rows");
}

fn tally() -> Tally {
    let cell = |option, component, count, weight_sum, share_ppb| CellTally {
        option,
        component,
        count,
        weight_sum,
        share_ppb,
    };
    Tally {
        cells: vec![
            cell(0, Component::Democratic, 6, 6_000_000, 600_000_000),
            cell(0, Component::Expert, 1, 2_000_000, 1_000_000_000),
            cell(1, Component::Democratic, 4, 4_000_000, 400_000_000),
        ],
        // 0.4 × 0.6 + 0.3 × 1 = 0.54; 0.4 × 0.4 = 0.16
        composite_ppb: vec![540_000_000, 160_000_000],
        turnout: 11,
        turnout_by_component: [10, 1, 0, 0],
        quorum: 0,
        quorum_met: true,
        rounds: Vec::new(),
    }
}

#[test]
fn features_come_from_the_tally_as_the_training_script_defines_them() {
    let mut decision = canopy_testkit::decision_in(1, "north");
    decision.options = vec!["yes".into(), "no".into()];
    decision.opens_at = 1_000;
    decision.closes_at = 11_000;
    decision.weights = ComponentWeights::DEFAULT;
    let tally = tally();
    let inputs = PredictionInputs {
        decision: &decision,
        tally: Some(&tally),
        now: 3_500,
        agent_scores: &[0.25, -0.5],
    };
    let rows = features_of(&inputs);
    let expected: [[f64; FEATURES]; 2] = [
        [
            0.25,
            0.54,
            0.38,
            0.6,
            1.0,
            0.0,
            0.0,
            12f64.ln(),
            2.0,
            0.25,
            0.4,
            0.3,
            0.2,
            0.1,
        ],
        [
            0.25,
            0.16,
            -0.38,
            0.4,
            0.0,
            0.0,
            0.0,
            12f64.ln(),
            2.0,
            -0.5,
            0.4,
            0.3,
            0.2,
            0.1,
        ],
    ];
    for (row, want) in rows.iter().zip(expected) {
        for (i, (got, want)) in row.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "f{i}: {got} vs {want}"
            );
        }
    }
}

fn decision_and_tally() -> (canopy_schemas::Decision, Tally) {
    let mut decision = canopy_testkit::decision_in(1, "north");
    decision.options = vec!["yes".into(), "no".into()];
    (decision, tally())
}

#[test]
fn a_candidate_takes_its_share_and_is_compared() {
    let registry = ModelRegistry::new(RolloutPolicy {
        candidate_share: 0.1,
        ..RolloutPolicy::default()
    });
    registry.register(built_in("consensus-1"));
    registry.register(built_in("consensus-2"));
    registry.set_candidate(Some("consensus-2")).unwrap();
    let (decision, tally) = decision_and_tally();
    let mut by_candidate = 0;
    for _ in 0..1000 {
        let inputs = PredictionInputs {
            decision: &decision,
            tally: Some(&tally),
            now: decision.opens_at,
            agent_scores: &[],
        };
        let (prediction, rollback) = registry.predict(&inputs).unwrap();
        assert!(rollback.is_none());
        assert!((prediction.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        by_candidate += usize::from(prediction.model_version == "consensus-2");
    }
    assert_eq!(by_candidate, 100);
    let status = registry.status();
    let candidate = status.iter().find(|s| s.version == "consensus-2").unwrap();
    assert_eq!(
        (candidate.role, candidate.figures.calls),
        ("candidate", 100)
    );
    assert!(candidate.mean_divergence.is_some());
    assert!(candidate.figures.p95_ms.is_some());
}

#[test]
fn a_planted_bad_version_is_rolled_back() {
    let policy = RolloutPolicy {
        candidate_share: 0.1,
        min_calls: 20,
        ..RolloutPolicy::default()
    };
    let registry = ModelRegistry::new(policy);
    registry.register(built_in("consensus-1"));
    // The anomaly model: an ONNX file that loads but takes 5 features, so every run fails.
    let bad = include_bytes!("../../models/anomaly/anomaly.onnx");
    registry.register(ConsensusModel::from_bytes(&library(), "consensus-bad", bad).unwrap());
    registry.set_candidate(Some("consensus-bad")).unwrap();
    let (decision, tally) = decision_and_tally();
    let mut rollbacks = Vec::new();
    for _ in 0..1000 {
        let inputs = PredictionInputs {
            decision: &decision,
            tally: Some(&tally),
            now: decision.opens_at,
            agent_scores: &[],
        };
        let (prediction, rollback) = registry.predict(&inputs).unwrap();
        // Every caller still gets the current version's answer.
        assert_eq!(prediction.model_version, "consensus-1");
        rollbacks.extend(rollback);
    }
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert!(
        rollbacks[0].reason.contains("error rate"),
        "{}",
        rollbacks[0].reason
    );
    assert_eq!(registry.candidate(), None);
    let status = registry.status();
    let bad = status
        .iter()
        .find(|s| s.version == "consensus-bad")
        .unwrap();
    assert_eq!(
        (bad.role, bad.figures.calls, bad.figures.errors),
        ("rolled_back", 20, 20)
    );
}

#[test]
fn a_slow_version_is_rolled_back_by_its_latency() {
    // A p95 limit no model meets: the latency rule alone takes the candidate out.
    let policy = RolloutPolicy {
        candidate_share: 0.5,
        min_calls: 10,
        max_p95_ms: 0.0,
        ..RolloutPolicy::default()
    };
    let registry = ModelRegistry::new(policy);
    registry.register(built_in("consensus-1"));
    registry.register(built_in("consensus-2"));
    registry.set_candidate(Some("consensus-2")).unwrap();
    let (decision, tally) = decision_and_tally();
    let mut rollbacks = Vec::new();
    for _ in 0..100 {
        let inputs = PredictionInputs {
            decision: &decision,
            tally: Some(&tally),
            now: decision.opens_at,
            agent_scores: &[],
        };
        rollbacks.extend(registry.predict(&inputs).unwrap().1);
    }
    assert_eq!(rollbacks.len(), 1);
    assert!(
        rollbacks[0].reason.contains("p95 latency"),
        "{}",
        rollbacks[0].reason
    );
    assert_eq!(registry.candidate(), None);
}
