//! Ballots: every valid ballot's 32 bytes decode to itself, no other 32 bytes decode at all,
//! the JSON form reads the documented shapes, and each refusal carries its stable code.

use std::collections::{BTreeMap, BTreeSet};

use canopy_schemas::*;
use proptest::prelude::*;

/// A ballot as the voter meant it, before any encoding: what the tests compare against.
#[derive(Clone, Debug, PartialEq)]
enum Marks {
    Single(u16),
    Approve(BTreeSet<u16>),
    Rank(Vec<u16>),
    Allocate(BTreeMap<u16, u16>),
}

impl Marks {
    fn method(&self) -> Method {
        match self {
            Marks::Single(_) => Method::SingleChoice,
            Marks::Approve(_) => Method::Approval,
            Marks::Rank(_) => Method::RankedChoice,
            Marks::Allocate(_) => Method::Quadratic,
        }
    }

    fn ballot(&self) -> Ballot {
        match self {
            Marks::Single(option) => Ballot::single_choice(*option),
            Marks::Approve(options) => {
                Ballot::approval(&options.iter().copied().collect::<Vec<_>>())
            }
            Marks::Rank(preferences) => Ballot::ranked_choice(preferences),
            Marks::Allocate(votes) => {
                Ballot::quadratic(&votes.iter().map(|(o, v)| (*o, *v)).collect::<Vec<_>>())
            }
        }
        .expect("the marks are valid")
    }

    /// What the ballot reads back as, from its public accessors.
    fn read_back(ballot: &Ballot) -> Marks {
        match ballot {
            Ballot::SingleChoice(option) => Marks::Single(u16::from(*option)),
            Ballot::Approval(approvals) => Marks::Approve(approvals.iter().collect()),
            Ballot::RankedChoice(ranking) => Marks::Rank(ranking.preferences().collect()),
            Ballot::Quadratic(allocation) => Marks::Allocate(allocation.iter().collect()),
        }
    }
}

fn any_marks() -> impl Strategy<Value = Marks> {
    let all_options: Vec<u16> = (0..256).collect();
    prop_oneof![
        (0u16..256).prop_map(Marks::Single),
        prop_oneof![
            proptest::collection::btree_set(0u16..256, 1..8),
            proptest::sample::subsequence(all_options.clone(), 1..=256)
                .prop_map(|options| options.into_iter().collect()),
        ]
        .prop_map(Marks::Approve),
        proptest::sample::subsequence(all_options, 1..=MAX_RANKS)
            .prop_shuffle()
            .prop_map(Marks::Rank),
        proptest::collection::btree_map(0u16..256, 1u16..=255, 1..=MAX_ALLOCATIONS)
            .prop_map(Marks::Allocate),
    ]
}

fn any_method() -> impl Strategy<Value = Method> {
    proptest::sample::select(Method::ALL.to_vec())
}

/// The layout of the module docs, read literally: whether `bytes` is the encoding of some
/// ballot of `method`.
fn is_canonical(method: Method, bytes: &[u8; 32]) -> bool {
    let n = usize::from(bytes[0]);
    let zero_after = |end: usize| bytes[end..].iter().all(|b| *b == 0);
    match method {
        Method::SingleChoice => zero_after(1),
        Method::Approval => bytes.iter().any(|b| *b != 0),
        Method::RankedChoice => {
            let ranks = bytes.get(1..1 + n).unwrap_or(&[]);
            (1..=31).contains(&n)
                && ranks.iter().collect::<BTreeSet<_>>().len() == n
                && zero_after(1 + n)
        }
        Method::Quadratic => {
            if !(1..=15).contains(&n) {
                return false;
            }
            let pairs: Vec<&[u8]> = bytes[1..1 + 2 * n].chunks(2).collect();
            pairs.iter().all(|pair| pair[1] >= 1)
                && pairs.windows(2).all(|w| w[0][0] < w[1][0])
                && zero_after(1 + 2 * n)
        }
    }
}

/// 32 bytes near a valid encoding (one byte changed) or anywhere at all: both sides of
/// [`is_canonical`] come up often.
fn any_bytes() -> impl Strategy<Value = (Method, [u8; 32])> {
    prop_oneof![
        (any_method(), any::<[u8; 32]>()),
        (any_marks(), 0usize..32, any::<u8>()).prop_map(|(marks, at, value)| {
            let mut bytes = marks.ballot().encode();
            bytes[at] = value;
            (marks.method(), bytes)
        }),
        (any_marks(), 0usize..32, 0usize..32).prop_map(|(marks, a, b)| {
            let mut bytes = marks.ballot().encode();
            bytes.swap(a, b);
            (marks.method(), bytes)
        }),
    ]
}

fn rotated<T>(by: u64, mut list: Vec<T>) -> Vec<T> {
    let len = list.len().max(1);
    list.rotate_left((by as usize) % len);
    list
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn a_ballot_decodes_from_its_bytes_and_reads_back_as_marked(marks in any_marks()) {
        let ballot = marks.ballot();
        prop_assert_eq!(ballot.method(), marks.method());
        prop_assert_eq!(Marks::read_back(&ballot), marks.clone());
        let bytes = ballot.encode();
        prop_assert!(is_canonical(marks.method(), &bytes));
        prop_assert_eq!(Ballot::decode(marks.method(), &bytes), Ok(ballot));
        let json = serde_json::to_string(&ballot).unwrap();
        prop_assert_eq!(serde_json::from_str::<Ballot>(&json).unwrap(), ballot);
    }

    /// Exactly the canonical bytes decode, and they decode to the ballot they encode: no
    /// two byte strings stand for one ballot.
    #[test]
    fn only_canonical_bytes_decode((method, bytes) in any_bytes()) {
        match Ballot::decode(method, &bytes) {
            Ok(ballot) => {
                prop_assert!(is_canonical(method, &bytes), "{method} decoded {bytes:?}");
                prop_assert_eq!(ballot.method(), method);
                prop_assert_eq!(ballot.encode(), bytes);
            }
            Err(error) => {
                prop_assert!(!is_canonical(method, &bytes), "{method} refused {bytes:?}: {error}");
                prop_assert!(
                    ["invalid_ballot", "ballot_encoding"].contains(&error.code()),
                    "{}", error.code()
                );
            }
        }
    }

    /// The order a voter lists approvals or allocations in does not matter; the ranking's
    /// order does.
    #[test]
    fn only_a_ranking_keeps_its_order(marks in any_marks(), seed in any::<u64>()) {
        match &marks {
            Marks::Approve(options) => {
                let listed = rotated(seed, options.iter().copied().collect());
                prop_assert_eq!(Ballot::approval(&listed).unwrap(), marks.ballot());
            }
            Marks::Allocate(votes) => {
                let listed = rotated(seed, votes.iter().map(|(o, v)| (*o, *v)).collect());
                prop_assert_eq!(Ballot::quadratic(&listed).unwrap(), marks.ballot());
            }
            Marks::Rank(preferences) if preferences.len() > 1 => {
                let reordered = rotated(seed, preferences.clone());
                prop_assert_eq!(
                    Ballot::ranked_choice(&reordered).unwrap() == marks.ballot(),
                    reordered == *preferences
                );
            }
            _ => {}
        }
    }
}

#[test]
fn the_layout_is_pinned() {
    let hex = |ballot: Ballot| hex::encode(ballot.encode());
    let zeros = |n: usize| "00".repeat(n);
    assert_eq!(
        hex(Ballot::single_choice(2).unwrap()),
        format!("02{}", zeros(31))
    );
    // Options 0, 3 and 9: bits 0 and 3 of byte 0, bit 1 of byte 1; option 255: bit 7 of byte 31.
    assert_eq!(
        hex(Ballot::approval(&[9, 255, 0, 3]).unwrap()),
        format!("0902{}80", zeros(29))
    );
    assert_eq!(
        hex(Ballot::ranked_choice(&[2, 0, 1]).unwrap()),
        format!("03020001{}", zeros(28))
    );
    assert_eq!(
        hex(Ballot::quadratic(&[(2, 1), (0, 3)]).unwrap()),
        format!("0200030201{}", zeros(27))
    );
}

#[test]
fn the_json_form_is_one_shape_per_method() {
    let read = |json: &str| serde_json::from_str::<Ballot>(json);
    let shapes = [
        (r#"{"option":2}"#, Ballot::single_choice(2).unwrap()),
        (r#"{"approve":[0,3]}"#, Ballot::approval(&[3, 0]).unwrap()),
        (
            r#"{"ranking":[2,0,1]}"#,
            Ballot::ranked_choice(&[2, 0, 1]).unwrap(),
        ),
        (
            r#"{"allocation":[[0,3],[2,1]]}"#,
            Ballot::quadratic(&[(2, 1), (0, 3)]).unwrap(),
        ),
    ];
    for (json, ballot) in shapes {
        assert_eq!(read(json).unwrap(), ballot, "{json}");
        assert_eq!(serde_json::to_string(&ballot).unwrap(), json);
    }
    assert_eq!(
        read(r#"{"approve":[3,0]}"#).unwrap(),
        Ballot::approval(&[0, 3]).unwrap()
    );
    for refused in [
        r#"{"approve":[]}"#,
        r#"{"approve":[1,1]}"#,
        r#"{"option":256}"#,
        r#"{"ranking":[0,1,0]}"#,
        r#"{"allocation":[[0,0]]}"#,
        r#"{"allocation":[[0,1],[0,2]]}"#,
        r#"{"allocation":[[0,256]]}"#,
        r#"{"choice":1}"#,
        r#"{"option":1,"approve":[1]}"#,
        r#"[1]"#,
    ] {
        assert!(read(refused).is_err(), "{refused} was read");
    }
}

fn decision(method: Method, credits: u32) -> Decision {
    Decision {
        electorate: Default::default(),
        credits,
        id: DecisionId(7),
        title: "Restore the wetland?".into(),
        description: String::new(),
        region: "delta".into(),
        options: vec!["yes".into(), "no".into(), "defer".into()],
        opens_at: 1_000,
        closes_at: 2_000,
        weights: ComponentWeights::DEFAULT,
        quorum: 10,
        method,
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, SchemaError>) -> &'static str {
    result.expect_err("refused").code()
}

#[test]
fn only_a_quadratic_decision_has_credits() {
    for method in Method::ALL {
        for credits in [0, 1, 100, MAX_CREDITS, MAX_CREDITS + 1] {
            let quadratic = method == Method::Quadratic;
            let allowed = if quadratic {
                (1..=MAX_CREDITS).contains(&credits)
            } else {
                credits == 0
            };
            let result = validate_decision(&decision(method, credits));
            assert_eq!(result.is_ok(), allowed, "{method} with {credits} credits");
            if !allowed {
                assert_eq!(code(result), "invalid_credits");
            }
        }
    }
}

#[test]
fn methods_are_named_alike_everywhere() {
    for method in Method::ALL {
        assert_eq!(Method::parse(method.as_str()), Some(method));
        assert_eq!(
            serde_json::to_string(&method).unwrap(),
            format!("\"{method}\"")
        );
    }
    assert_eq!(
        Method::ALL.map(Method::as_str),
        ["single_choice", "approval", "ranked_choice", "quadratic"]
    );
}

#[test]
fn a_ballot_is_checked_against_its_decision() {
    let approval = decision(Method::Approval, 0);
    assert_eq!(
        validate_ballot(&approval, &Ballot::approval(&[0, 2]).unwrap()),
        Ok(())
    );
    assert_eq!(
        code(validate_ballot(
            &approval,
            &Ballot::single_choice(0).unwrap()
        )),
        "wrong_method"
    );
    assert_eq!(
        code(validate_ballot(
            &approval,
            &Ballot::approval(&[0, 3]).unwrap()
        )),
        "unknown_option"
    );
    let ranked = decision(Method::RankedChoice, 0);
    assert_eq!(
        validate_ballot(&ranked, &Ballot::ranked_choice(&[2, 0]).unwrap()),
        Ok(())
    );
    assert_eq!(
        validate_ballot(&ranked, &Ballot::ranked_choice(&[3, 0]).unwrap()),
        Err(SchemaError::UnknownOption {
            option: 3,
            options: 3
        })
    );
    let single = decision(Method::SingleChoice, 0);
    assert_eq!(
        code(validate_ballot(&single, &Ballot::single_choice(3).unwrap())),
        "unknown_option"
    );
    // 3² + 1² = 10 credits: exactly the budget passes, one credit more does not.
    let quadratic = decision(Method::Quadratic, 10);
    let ten = Ballot::quadratic(&[(0, 3), (2, 1)]).unwrap();
    let eleven = Ballot::quadratic(&[(0, 3), (1, 1), (2, 1)]).unwrap();
    assert_eq!(validate_ballot(&quadratic, &ten), Ok(()));
    assert_eq!(
        validate_ballot(&quadratic, &eleven),
        Err(SchemaError::OverBudget {
            spent: 11,
            credits: 10
        })
    );
    assert_eq!(code(validate_ballot(&quadratic, &eleven)), "over_budget");
}

#[test]
fn malformed_ballots_are_refused_with_their_codes() {
    let too_many_ranks: Vec<u16> = (0..32).collect();
    let too_many_allocations: Vec<(u16, u16)> = (0..16).map(|o| (o, 1)).collect();
    for refused in [
        Ballot::single_choice(256),
        Ballot::approval(&[]),
        Ballot::approval(&[4, 4]),
        Ballot::ranked_choice(&[]),
        Ballot::ranked_choice(&too_many_ranks),
        Ballot::ranked_choice(&[1, 2, 1]),
        Ballot::quadratic(&[]),
        Ballot::quadratic(&too_many_allocations),
        Ballot::quadratic(&[(1, 0)]),
        Ballot::quadratic(&[(1, 256)]),
        Ballot::quadratic(&[(1, 1), (1, 2)]),
    ] {
        assert_eq!(code(refused), "invalid_ballot");
    }
    // Bytes: a ranking's count past the 31 ranks, trailing garbage, unsorted pairs.
    let mut bytes = [0u8; 32];
    bytes[0] = 32;
    assert_eq!(
        code(Ballot::decode(Method::RankedChoice, &bytes)),
        "ballot_encoding"
    );
    let mut trailing = Ballot::ranked_choice(&[1]).unwrap().encode();
    trailing[31] = 1;
    assert_eq!(
        code(Ballot::decode(Method::RankedChoice, &trailing)),
        "ballot_encoding"
    );
    let mut unsorted = [0u8; 32];
    unsorted[..5].copy_from_slice(&[2, 5, 1, 3, 1]);
    assert_eq!(
        code(Ballot::decode(Method::Quadratic, &unsorted)),
        "ballot_encoding"
    );
    assert_eq!(
        code(Ballot::decode(Method::Approval, &[0; 32])),
        "invalid_ballot"
    );
}
