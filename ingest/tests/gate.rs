use std::sync::Arc;

use canopy_ingest::*;
use canopy_schemas::*;

fn decision() -> Decision {
    Decision {
        electorate: Default::default(),
        credits: 0,
        id: DecisionId(42),
        title: "Close the quarry road?".into(),
        description: String::new(),
        region: "north".into(),
        options: vec!["yes".into(), "no".into()],
        opens_at: 1_000,
        closes_at: 2_000,
        weights: ComponentWeights::DEFAULT,
        quorum: 3,
        method: Method::SingleChoice,
    }
}

fn logged(vote: Vote) -> LoggedVote {
    LoggedVote::new(vote, &VoterSalt([1; 32]))
}

fn vote(n: u128) -> Vote {
    Vote {
        vote_id: VoteId(n),
        decision_id: DecisionId(42),
        voter_id: VoterId(n),
        ballot: Ballot::single_choice(0).unwrap(),
        component: Component::Democratic,
        weight: Weight::ONE,
        cast_at: 1_500,
    }
}

#[test]
fn bad_votes_are_refused_before_they_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap());
    let gate = Gate::new(Arc::clone(&log));
    gate.register(decision(), 0).unwrap();
    let partition = log.partition_of(DecisionId(42));

    gate.submit(&[logged(vote(1))]).unwrap();
    let cases = [
        (
            Vote {
                ballot: Ballot::single_choice(2).unwrap(),
                ..vote(2)
            },
            "unknown_option",
        ),
        (
            Vote {
                cast_at: 2_000,
                ..vote(2)
            },
            "outside_window",
        ),
        (
            Vote {
                component: Component::Expert,
                weight: Weight(MAX_WEIGHT + 1),
                ..vote(2)
            },
            "weight_out_of_range",
        ),
        (
            Vote {
                weight: Weight(3_000_000),
                ..vote(2)
            },
            "weight_out_of_range",
        ),
        (
            Vote {
                decision_id: DecisionId(43),
                ..vote(2)
            },
            "unknown_decision",
        ),
    ];
    for (bad, code) in cases {
        // One bad vote in a batch refuses the whole batch: the good vote beside it is not stored.
        let error = gate.submit(&[logged(vote(3)), logged(bad)]).unwrap_err();
        assert_eq!(error.code(), code, "{error}");
        assert!(matches!(
            error,
            IngestError::InvalidVote { index: 1, .. }
                | IngestError::UnknownDecision { index: 1, .. }
        ));
    }
    assert_eq!(
        log.end_offset(partition).unwrap(),
        1,
        "nothing refused reached the log"
    );
}

#[test]
fn an_open_decision_cannot_change_its_weights_or_options() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(Arc::new(
        SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap(),
    ));
    gate.register(decision(), 0).unwrap();
    let reweighted = Decision {
        weights: ComponentWeights([1_000_000, 0, 0, 0]),
        ..decision()
    };
    // Before it opens, the owner may still change it.
    gate.register(reweighted.clone(), 999).unwrap();
    let error = gate.register(decision(), 1_000).unwrap_err();
    assert_eq!(error.code(), "decision_frozen");
    assert_eq!(gate.decision(DecisionId(42)).unwrap(), reweighted);
    // The title may still be corrected.
    gate.register(
        Decision {
            title: "Close the old quarry road?".into(),
            ..reweighted
        },
        1_500,
    )
    .unwrap();
    let invalid = Decision {
        options: vec!["only".into()],
        ..decision()
    };
    assert_eq!(
        gate.register(invalid, 0).unwrap_err().code(),
        "option_count"
    );
}

#[test]
fn a_closed_decision_takes_no_more_votes_and_its_close_is_in_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn VoteLog> =
        Arc::new(SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap());
    let gate = Gate::new(Arc::clone(&log));
    gate.register(decision(), 1_000).unwrap();
    gate.submit(&[logged(vote(1))]).unwrap();
    let close = DecisionClose {
        decision: DecisionId(42),
        kind: CloseKind::Early,
        at: 1_600,
        by: 7,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let at = runtime.block_on(gate.close_async(close)).unwrap();
    assert_eq!(at.partition, log.partition_of(DecisionId(42)));
    assert_eq!(at.offset, 1, "after the vote, in the decision's partition");
    let error = gate.submit(&[logged(vote(2))]).unwrap_err();
    assert_eq!(error.code(), "decision_closed");
    let entries = log.read(at.partition, 0, 10).unwrap();
    assert_eq!(entries.len(), 2, "the refused vote was not appended");
    assert_eq!(
        entries[1],
        VoteLogRecord::Close(CloseRecord {
            position: at,
            close
        })
    );
}

/// Every method's decision registers; a ballot of another method than its decision's, an
/// option it does not have, or more credits than a quadratic decision gives is refused with
/// its code before the log, which holds exactly the good ballots.
#[test]
fn each_method_takes_its_own_ballots_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap());
    let gate = Gate::new(Arc::clone(&log));
    let of = |method, credits| Decision {
        method,
        credits,
        ..decision()
    };
    gate.register(of(Method::Quadratic, 9), 0).unwrap();
    let partition = log.partition_of(DecisionId(42));
    let with = |n, ballot| logged(Vote { ballot, ..vote(n) });
    let good = with(1, Ballot::quadratic(&[(0, 2), (1, 2)]).unwrap());
    gate.submit(&[good]).unwrap();
    let refused = [
        (Ballot::quadratic(&[(0, 3), (1, 1)]).unwrap(), "over_budget"),
        (Ballot::approval(&[0, 1]).unwrap(), "wrong_method"),
        (Ballot::quadratic(&[(2, 1)]).unwrap(), "unknown_option"),
    ];
    for (ballot, code) in refused {
        let error = gate.submit(&[with(2, ballot)]).unwrap_err();
        assert_eq!(error.code(), code, "{ballot:?}");
    }
    let held = log.read_votes(partition, 0, 10).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].vote.ballot, good.vote.ballot);
    for method in [Method::SingleChoice, Method::Approval, Method::RankedChoice] {
        let decision = Decision {
            id: DecisionId(43 + u128::from(method.code())),
            ..of(method, 0)
        };
        gate.register(decision, 0).unwrap();
    }
    // Credits are frozen with the method once the decision opens.
    let error = gate.register(of(Method::Quadratic, 10), 1_000).unwrap_err();
    assert_eq!(error.code(), "decision_frozen");
}
