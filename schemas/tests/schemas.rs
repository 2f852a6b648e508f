use canopy_schemas::*;
use proptest::prelude::*;

fn decision() -> Decision {
    Decision {
        electorate: Default::default(),
        credits: 0,
        id: DecisionId(7),
        title: "Restore the wetland?".into(),
        description: String::new(),
        region: "delta".into(),
        options: vec!["yes".into(), "no".into(), "defer".into()],
        opens_at: 1_000,
        closes_at: 2_000,
        weights: ComponentWeights::DEFAULT,
        quorum: 10,
        method: Method::SingleChoice,
    }
}

fn vote() -> Vote {
    Vote {
        vote_id: VoteId(1),
        decision_id: DecisionId(7),
        voter_id: VoterId(2),
        option: 1,
        component: Component::Expert,
        weight: Weight(2_500_000),
        cast_at: 1_500,
    }
}

fn any_vote() -> impl Strategy<Value = Vote> {
    (
        any::<u128>(),
        any::<u128>(),
        any::<u128>(),
        any::<u16>(),
        0u8..4,
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(v, d, voter, option, c, w, t)| Vote {
            vote_id: VoteId(v),
            decision_id: DecisionId(d),
            voter_id: VoterId(voter),
            option,
            component: Component::from_code(c).unwrap(),
            weight: Weight(w),
            cast_at: t,
        })
}

/// The pinned hex of [`vote()`] as both stable encodings lay it out: version, vote id,
/// decision id, then `who` (the voter id in a vote, its commitment in a leaf), option,
/// component, weight and cast time.
fn pinned_vote_hex(who: &str) -> String {
    [
        "01",
        "00000000000000000000000000000001",
        "00000000000000000000000000000007",
        who,
        "0001",
        "01",
        "002625a0",
        "00000000000005dc",
    ]
    .concat()
}

proptest! {
    #[test]
    fn encoding_round_trips(v in any_vote()) {
        prop_assert_eq!(Vote::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn decoding_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = Vote::decode(&bytes);
    }
}

/// The encoding is hashed into the public record: pin its exact bytes so that any change
/// to the layout shows up here and is made as a new version instead.
#[test]
fn encoding_v1_is_stable() {
    let bytes = vote().encode();
    let hex = hex::encode(bytes);
    assert_eq!(hex, pinned_vote_hex("00000000000000000000000000000002"));
}

#[test]
fn decode_refuses_unknown_version_length_and_component() {
    let mut bytes = vote().encode();
    bytes[0] = 2;
    assert_eq!(Vote::decode(&bytes).unwrap_err().code(), "encoding_version");
    let bytes = vote().encode();
    assert_eq!(
        Vote::decode(&bytes[..63]).unwrap_err().code(),
        "encoding_length"
    );
    let mut bytes = vote().encode();
    bytes[51] = 9;
    assert_eq!(
        Vote::decode(&bytes).unwrap_err().code(),
        "unknown_component"
    );
}

#[test]
fn a_good_vote_passes() {
    validate_decision(&decision()).unwrap();
    validate_vote(&decision(), &vote()).unwrap();
}

#[test]
fn bad_votes_get_typed_errors() {
    let d = decision();
    let cases: Vec<(Vote, &str)> = vec![
        (
            Vote {
                option: 3,
                ..vote()
            },
            "unknown_option",
        ),
        (
            Vote {
                cast_at: 999,
                ..vote()
            },
            "outside_window",
        ),
        (
            Vote {
                cast_at: 2_000,
                ..vote()
            },
            "outside_window",
        ),
        (
            Vote {
                weight: Weight(0),
                ..vote()
            },
            "weight_out_of_range",
        ),
        (
            Vote {
                weight: Weight(MAX_WEIGHT + 1),
                ..vote()
            },
            "weight_out_of_range",
        ),
        (
            Vote {
                component: Component::Democratic,
                weight: Weight(2_000_000),
                ..vote()
            },
            "weight_out_of_range",
        ),
        (
            Vote {
                decision_id: DecisionId(8),
                ..vote()
            },
            "wrong_decision",
        ),
    ];
    for (bad, code) in cases {
        assert_eq!(validate_vote(&d, &bad).unwrap_err().code(), code, "{bad:?}");
    }
    let no_env = Decision {
        weights: ComponentWeights([500_000, 500_000, 0, 0]),
        ..decision()
    };
    let env_vote = Vote {
        component: Component::EnvironmentalData,
        ..vote()
    };
    assert_eq!(
        validate_vote(&no_env, &env_vote).unwrap_err().code(),
        "ineligible_component"
    );
}

#[test]
fn bad_decisions_get_typed_errors() {
    let cases: Vec<(Decision, &str)> = vec![
        (
            Decision {
                options: vec!["only".into()],
                ..decision()
            },
            "option_count",
        ),
        (
            Decision {
                options: vec!["a".into(), "a".into()],
                ..decision()
            },
            "duplicate_option",
        ),
        (
            Decision {
                options: vec!["a".into(), " ".into()],
                ..decision()
            },
            "option_label",
        ),
        (
            Decision {
                closes_at: 1_000,
                ..decision()
            },
            "empty_window",
        ),
        (
            Decision {
                weights: ComponentWeights([400_000, 300_000, 200_000, 0]),
                ..decision()
            },
            "weights_do_not_sum_to_one",
        ),
        (
            Decision {
                title: "".into(),
                ..decision()
            },
            "invalid_title",
        ),
    ];
    for (bad, code) in cases {
        assert_eq!(validate_decision(&bad).unwrap_err().code(), code);
    }
}

#[test]
fn ids_serialize_as_uuids() {
    let json = serde_json::to_string(&vote()).unwrap();
    assert!(
        json.contains("\"vote_id\":\"00000000-0000-0000-0000-000000000001\""),
        "{json}"
    );
    let back: Vote = serde_json::from_str(&json).unwrap();
    assert_eq!(back, vote());
}

/// The leaf encoding is what the public record hashes: pin it byte for byte, commitment
/// included (its value computed independently with Python's hashlib).
#[test]
fn leaf_encoding_v1_is_stable() {
    let logged = LoggedVote::new(vote(), &VoterSalt([0x11; 32]));
    let hex = hex::encode(logged.leaf_data());
    assert_eq!(
        hex,
        pinned_vote_hex("e490c54503e4e96da6ba0bc5cbd624b762d394993020b07e04af3c9a5001916a")
    );
}

proptest! {
    /// The log keeps a vote and its commitment exactly; the leaf never holds the voter id;
    /// a commitment is fixed by (salt, voter, decision) and changes with each of them.
    #[test]
    fn logged_votes_round_trip_and_commitments_separate(v in any_vote(), salt in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
        let logged = LoggedVote::new(v, &VoterSalt(salt));
        prop_assert_eq!(LoggedVote::decode(&logged.encode()).unwrap(), logged);
        let leaf = logged.leaf_data();
        prop_assert_eq!(&leaf[33..65], &logged.commitment.0[..]);
        // A published leaf reads back as the ballot it stands for (the sealed voter, which
        // no leaf holds, stays sealed in the log only).
        prop_assert_eq!(LoggedVote::from_leaf_data(&leaf).unwrap(), logged);
        prop_assert_eq!(LoggedVote::new(v, &VoterSalt(salt)).commitment, logged.commitment);
        if other != salt {
            prop_assert_ne!(LoggedVote::new(v, &VoterSalt(other)).commitment, logged.commitment);
        }
        let elsewhere = Vote { decision_id: DecisionId(v.decision_id.0 ^ 1), ..v };
        prop_assert_ne!(LoggedVote::new(elsewhere, &VoterSalt(salt)).commitment, logged.commitment);
    }
}

#[test]
fn a_leaf_of_the_wrong_length_version_or_component_is_refused() {
    let leaf = LoggedVote::new(vote(), &VoterSalt([0; 32])).leaf_data();
    let code = |bytes: &[u8]| LoggedVote::from_leaf_data(bytes).unwrap_err().code();
    assert_eq!(code(&leaf[..79]), "encoding_length");
    let mut longer = leaf.to_vec();
    longer.push(0);
    assert_eq!(code(&longer), "encoding_length");
    let mut other_version = leaf;
    other_version[0] = 2;
    assert_eq!(code(&other_version), "encoding_version");
    let mut unknown_component = leaf;
    unknown_component[67] = 9;
    assert_eq!(code(&unknown_component), "unknown_component");
}

#[test]
fn a_logged_vote_of_the_wrong_length_is_refused() {
    let bytes = LoggedVote::new(vote(), &VoterSalt([0; 32])).encode();
    assert_eq!(
        LoggedVote::decode(&bytes[..95]).unwrap_err().code(),
        "encoding_length"
    );
}
