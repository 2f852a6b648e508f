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
        ballot: Ballot::SingleChoice(1),
        component: Component::Expert,
        weight: Weight(2_500_000),
        cast_at: 1_500,
    }
}

fn any_ballot() -> impl Strategy<Value = Ballot> {
    prop_oneof![
        (0u16..256).prop_map(|option| Ballot::single_choice(option).unwrap()),
        proptest::collection::btree_set(0u16..256, 1..8).prop_map(|options| {
            Ballot::approval(&options.into_iter().collect::<Vec<_>>()).unwrap()
        }),
        proptest::sample::subsequence((0u16..256).collect::<Vec<_>>(), 1..=MAX_RANKS)
            .prop_shuffle()
            .prop_map(|ranking| Ballot::ranked_choice(&ranking).unwrap()),
        proptest::collection::btree_map(0u16..256, 1u16..=255, 1..=MAX_ALLOCATIONS)
            .prop_map(|votes| Ballot::quadratic(&votes.into_iter().collect::<Vec<_>>()).unwrap()),
    ]
}

fn any_vote() -> impl Strategy<Value = Vote> {
    (
        any::<u128>(),
        any::<u128>(),
        any::<u128>(),
        any_ballot(),
        0u8..4,
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(v, d, voter, ballot, c, w, t)| Vote {
            vote_id: VoteId(v),
            decision_id: DecisionId(d),
            voter_id: VoterId(voter),
            ballot,
            component: Component::from_code(c).unwrap(),
            weight: Weight(w),
            cast_at: t,
        })
}

/// The pinned hex of [`vote()`] in the version-1 encodings: version, vote id, decision id,
/// then `who` (the voter id in a vote, its commitment in a leaf), option, component, weight
/// and cast time.
fn pinned_v1_hex(who: &str) -> String {
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

/// A ranked ballot (2, then 0) as the version-2 encodings lay it out: method 2, the ballot's
/// 32 bytes (count, options, zeros).
const RANKED_2_0_HEX: &str = "020202000000000000000000000000000000000000000000000000000000000000";

fn ranked_vote() -> Vote {
    Vote {
        ballot: Ballot::ranked_choice(&[2, 0]).unwrap(),
        ..vote()
    }
}

/// The commitment of voter 2 in decision 7 under salt 0x11…, computed independently with
/// Python's hashlib.
const COMMITMENT_HEX: &str = "e490c54503e4e96da6ba0bc5cbd624b762d394993020b07e04af3c9a5001916a";

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

/// The encoding is what the log keeps: pin its exact bytes so that any change to the layout
/// shows up here and is made as a new version instead.
#[test]
fn encoding_v2_is_stable() {
    let hex = hex::encode(ranked_vote().encode());
    let expected = [
        "02",
        "00000000000000000000000000000001",
        "00000000000000000000000000000007",
        "00000000000000000000000000000002",
        RANKED_2_0_HEX,
        "01",
        "002625a0",
        "00000000000005dc",
    ]
    .concat();
    assert_eq!(hex, expected);
}

/// A version-1 vote (the log's entries from before the voting methods) still reads, as the
/// single-choice ballot it was.
#[test]
fn encoding_v1_still_reads() {
    let bytes = hex::decode(pinned_v1_hex("00000000000000000000000000000002")).unwrap();
    assert_eq!(Vote::decode(&bytes).unwrap(), vote());
    let mut beyond = bytes.clone();
    beyond[49..51].copy_from_slice(&256u16.to_be_bytes());
    assert_eq!(Vote::decode(&beyond).unwrap_err().code(), "invalid_ballot");
}

#[test]
fn decode_refuses_unknown_version_length_component_method_and_ballot() {
    let code = |bytes: &[u8]| Vote::decode(bytes).unwrap_err().code();
    let bytes = ranked_vote().encode();
    let mut other = bytes;
    other[0] = 3;
    assert_eq!(code(&other), "encoding_version");
    assert_eq!(code(&bytes[..94]), "encoding_length");
    assert_eq!(code(&bytes[..64]), "encoding_length");
    let mut other = bytes;
    other[82] = 9;
    assert_eq!(code(&other), "unknown_component");
    let mut other = bytes;
    other[49] = 4;
    assert_eq!(code(&other), "unknown_method");
    // The same bytes read as another method's ballot are not that ballot's encoding.
    let mut other = bytes;
    other[49] = Method::Quadratic.code();
    assert!(matches!(code(&other), "invalid_ballot" | "ballot_encoding"));
    let mut other = bytes;
    other[53] = 1;
    assert_eq!(code(&other), "ballot_encoding");
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
                ballot: Ballot::SingleChoice(3),
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
/// included. It holds no cast time.
#[test]
fn leaf_encoding_v2_is_stable() {
    let logged = LoggedVote::new(ranked_vote(), &VoterSalt([0x11; 32]));
    let expected = [
        "02",
        "00000000000000000000000000000001",
        "00000000000000000000000000000007",
        COMMITMENT_HEX,
        RANKED_2_0_HEX,
        "01",
        "002625a0",
    ]
    .concat();
    assert_eq!(hex::encode(&logged.leaf_data()[..]), expected);
}

/// A vote logged before the voting methods keeps its version-1 leaf, read from the log or
/// from the leaf and written back again: a record rebuilt from an old log has the leaves
/// (and the roots) it was anchored with.
#[test]
fn a_version_1_era_vote_keeps_its_version_1_leaf() {
    let v1_leaf = hex::decode(pinned_v1_hex(COMMITMENT_HEX)).unwrap();
    let from_leaf = LoggedVote::from_leaf_data(&v1_leaf).unwrap();
    assert_eq!(from_leaf.leaf_version, LeafVersion::V1);
    assert_eq!(&from_leaf.leaf_data()[..], &v1_leaf[..]);
    // The same vote as a version-2 log entry (152 bytes: the version-1 vote, the commitment,
    // a sealed voter; the voter field holds the pseudonym, the commitment's first half),
    // rewritten as itself and leafed as version 1.
    let mut entry = hex::decode(pinned_v1_hex(&COMMITMENT_HEX[..32])).unwrap();
    entry.extend_from_slice(&hex::decode(COMMITMENT_HEX).unwrap());
    entry.extend_from_slice(&[7; SEALED_VOTER_LEN]);
    assert_eq!(entry.len(), LOGGED_VOTE_V2_LEN);
    let logged = LoggedVote::decode(&entry).unwrap();
    assert_eq!(logged.vote.ballot, Ballot::SingleChoice(1));
    assert_eq!(logged.encode(), entry);
    assert_eq!(&logged.leaf_data()[..], &v1_leaf[..]);
    // A vote logged now is leafed as version 2, single choice or not.
    let now = LoggedVote::new(vote(), &VoterSalt([0x11; 32]));
    assert_eq!(now.leaf_data()[0], LEAF_ENCODING_VERSION);
    assert_eq!(now.leaf_data().len(), LEAF_ENCODING_LEN);
    assert_eq!(now.encode().len(), LOGGED_VOTE_LEN);
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
        // A published leaf reads back as the ballot it stands for, with no cast time (the
        // sealed voter, which no leaf holds, stays sealed in the log only).
        let untimed = LoggedVote { vote: Vote { cast_at: 0, ..logged.vote }, ..logged };
        prop_assert_eq!(LoggedVote::from_leaf_data(&leaf).unwrap(), untimed);
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
    assert_eq!(code(&leaf[..102]), "encoding_length");
    assert_eq!(code(&leaf[..80]), "encoding_length");
    let mut longer = leaf.to_vec();
    longer.push(0);
    assert_eq!(code(&longer), "encoding_length");
    let mut other_version = leaf.to_vec();
    other_version[0] = 3;
    assert_eq!(code(&other_version), "encoding_version");
    let mut unknown_component = leaf.to_vec();
    unknown_component[98] = 9;
    assert_eq!(code(&unknown_component), "unknown_component");
    let mut unknown_method = leaf.to_vec();
    unknown_method[65] = 9;
    assert_eq!(code(&unknown_method), "unknown_method");
}

#[test]
fn a_logged_vote_of_the_wrong_length_is_refused() {
    let bytes = LoggedVote::new(vote(), &VoterSalt([0; 32])).encode();
    assert_eq!(
        LoggedVote::decode(&bytes[..182]).unwrap_err().code(),
        "encoding_length"
    );
}
