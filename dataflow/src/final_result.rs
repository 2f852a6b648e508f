//! A decision's final result as a statement anyone can recount: signed with the record's
//! key, it names the decision, where in the log it closed, the checkpoint (size and root)
//! of exactly the leaves counted, and the tally. [`recount_leaves`] rebuilds both the tree
//! and the tally from the decision's published leaves alone, so a checker needs no server's
//! word for either.
//!
//! The statement is a C2SP signed note whose body is two lines:
//!
//! ```text
//! <origin prefix>/decision/<uuid>/result
//! {"decision":…,"method":…,"close":{…},"tree_size":…,"root":"<hex>","tally":{…},"outcome":…}
//! ```

use std::collections::HashMap;

use canopy_chain::{Hash, MerkleLog, NoteSigner, NoteVerifier, leaf_hash, open_note};
use canopy_schemas::{
    CloseKind, ComponentWeights, Decision, DecisionClose, DecisionId, LoggedVote, Method,
    VoterCommitment,
};
use serde::{Deserialize, Serialize};

use crate::DataflowError;
use crate::arithmetic::{DecisionParams, Tally};
use crate::methods::{CountedBallot, Outcome, count_decision};

/// Where in the log a decision closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClosePoint {
    pub partition: u32,
    pub offset: u64,
    pub kind: CloseKind,
}

/// A decision's final result: what the statement signs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FinalResult {
    pub decision: DecisionId,
    pub method: Method,
    pub options: Vec<String>,
    pub weights: ComponentWeights,
    pub quorum: u64,
    /// The per-voter credit budget of a quadratic decision (0 otherwise).
    pub credits: u32,
    pub close: ClosePoint,
    /// The checkpoint of exactly the counted votes' leaves.
    pub tree_size: u64,
    /// Its root, hex.
    pub root: String,
    pub tally: Tally,
    pub outcome: Outcome,
}

impl FinalResult {
    /// The result of `decision` closed at `close`, from its tally and the checkpoint that
    /// covers exactly the leaves before the close.
    pub fn new(
        decision: &Decision,
        close: ClosePoint,
        tree_size: u64,
        root: Hash,
        tally: Tally,
    ) -> Self {
        Self {
            decision: decision.id,
            method: decision.method,
            options: decision.options.clone(),
            weights: decision.weights,
            quorum: decision.quorum,
            credits: decision.credits,
            close,
            tree_size,
            root: hex::encode(root),
            outcome: Outcome::of(&tally),
            tally,
        }
    }

    /// The parameters the tally was counted with.
    pub fn params(&self) -> DecisionParams {
        DecisionParams {
            options: self.options.len() as u16,
            weights: self.weights,
            quorum: self.quorum,
            method: self.method,
            credits: self.credits,
        }
    }

    fn origin(decision: DecisionId, origin_prefix: &str) -> String {
        format!("{origin_prefix}/decision/{decision}/result")
    }

    /// The signed statement.
    pub fn sign(&self, origin_prefix: &str, signer: &NoteSigner) -> String {
        let json = serde_json::to_string(self).expect("a result serializes");
        signer.sign_note(&format!(
            "{}\n{json}\n",
            Self::origin(self.decision, origin_prefix)
        ))
    }

    /// The result a statement signed by `verifier` states; refused when the signature, the
    /// shape or the origin's decision does not check.
    pub fn open(statement: &str, verifier: &NoteVerifier) -> Result<Self, DataflowError> {
        let bad = |why: String| DataflowError::BadResult(why);
        let body = open_note(statement, verifier)
            .map_err(|error| bad(format!("the statement's signature: {error}")))?;
        let (origin, json) = body
            .trim_end_matches('\n')
            .split_once('\n')
            .ok_or_else(|| bad("the statement has no result line".into()))?;
        let result: FinalResult = serde_json::from_str(json)
            .map_err(|error| bad(format!("the result line is not a result: {error}")))?;
        if !origin.ends_with(&format!("/decision/{}/result", result.decision)) {
            return Err(bad(format!(
                "the origin {origin:?} is not decision {}'s result",
                result.decision
            )));
        }
        Ok(result)
    }
}

/// What a recount from the leaves finds: the tree they make and the tally they count to.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LeafRecount {
    pub tree_size: u64,
    pub root: Hash,
    pub tally: Tally,
    /// The close leaf, which may only be the last.
    pub close: Option<DecisionClose>,
}

/// Rebuilds a decision's tree and tally from its leaf encodings in tree order: each voter
/// (commitment) counts with their last leaf, exactly as the engine counts each voter's
/// latest vote, by the decision's method (a ranked tally with its rounds). Refuses a leaf that is not a leaf of `decision`, and any leaf after the
/// close leaf.
pub fn recount_leaves<'a>(
    decision: DecisionId,
    params: &DecisionParams,
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> Result<LeafRecount, DataflowError> {
    let mut tree = MerkleLog::default();
    let mut latest: HashMap<VoterCommitment, CountedBallot> = HashMap::new();
    let mut close = None;
    for (index, entry) in entries.into_iter().enumerate() {
        if close.is_some() {
            return Err(DataflowError::BadResult(format!(
                "leaf {index} comes after the decision's close"
            )));
        }
        if DecisionClose::is_close_leaf(entry) {
            let read = DecisionClose::from_leaf_data(entry)
                .map_err(|error| DataflowError::BadResult(format!("leaf {index}: {error}")))?;
            if read.decision != decision {
                return Err(DataflowError::BadResult(format!(
                    "leaf {index} closes decision {}, not {decision}",
                    read.decision
                )));
            }
            tree.append_hash(leaf_hash(entry));
            close = Some(read);
            continue;
        }
        let logged = LoggedVote::from_leaf_data(entry)
            .map_err(|error| DataflowError::BadResult(format!("leaf {index}: {error}")))?;
        if logged.vote.decision_id != decision {
            return Err(DataflowError::BadResult(format!(
                "leaf {index} is a vote in decision {}, not {decision}",
                logged.vote.decision_id
            )));
        }
        tree.append_hash(leaf_hash(entry));
        let vote = logged.vote;
        latest.insert(
            logged.commitment,
            CountedBallot {
                component: vote.component,
                weight: vote.weight.0,
                ballot: vote.ballot,
            },
        );
    }
    Ok(LeafRecount {
        tree_size: tree.size(),
        root: tree.root(),
        tally: count_decision(params, latest.into_values()).into_tally(),
        close,
    })
}

#[cfg(test)]
mod tests {
    use canopy_schemas::{
        Ballot, Component, Electorate, Vote, VoteId, VoterId, VoterSalt, Weight, validate_decision,
    };

    use super::*;

    fn decision() -> Decision {
        let decision = Decision {
            id: DecisionId(9),
            title: "t".into(),
            description: String::new(),
            region: String::new(),
            options: vec!["a".into(), "b".into(), "c".into()],
            opens_at: 0,
            closes_at: 10,
            weights: ComponentWeights::DEFAULT,
            quorum: 2,
            method: Method::SingleChoice,
            credits: 0,
            electorate: Electorate::default(),
        };
        validate_decision(&decision).unwrap();
        decision
    }

    fn leaf(voter: u8, option: u16, component: Component, weight: u32) -> Vec<u8> {
        let vote = Vote {
            vote_id: VoteId::new_random(),
            decision_id: DecisionId(9),
            voter_id: VoterId(u128::from(voter)),
            ballot: Ballot::single_choice(option).unwrap(),
            component,
            weight: Weight(weight),
            cast_at: 1,
        };
        LoggedVote::new(vote, &VoterSalt([voter; 32]))
            .leaf_data()
            .to_vec()
    }

    fn close_leaf() -> Vec<u8> {
        DecisionClose {
            decision: DecisionId(9),
            kind: CloseKind::Schedule,
            at: 10,
            by: 0,
        }
        .leaf_data()
        .to_vec()
    }

    /// A voter's last leaf counts; the close leaf ends the tree; the statement reads back
    /// only with the record's key and only as written.
    #[test]
    fn a_signed_result_opens_with_its_key_and_recounts_from_its_leaves() {
        let decision = decision();
        let params = DecisionParams::from(&decision);
        let leaves = [
            leaf(1, 0, Component::Democratic, 1_000_000),
            leaf(2, 1, Component::Democratic, 1_000_000),
            leaf(1, 1, Component::Democratic, 1_000_000),
            leaf(3, 2, Component::Expert, 2_500_000),
            close_leaf(),
        ];
        let recount =
            recount_leaves(decision.id, &params, leaves.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(recount.tree_size, 5);
        assert_eq!(recount.tally.turnout, 3);
        assert!(recount.close.is_some());
        let option_1: u64 = recount
            .tally
            .cells
            .iter()
            .filter(|cell| cell.option == 1)
            .map(|cell| cell.count)
            .sum();
        assert_eq!(option_1, 2, "voter 1's second vote replaced their first");
        let result = FinalResult::new(
            &decision,
            ClosePoint {
                partition: 0,
                offset: 4,
                kind: CloseKind::Schedule,
            },
            recount.tree_size,
            recount.root,
            recount.tally.clone(),
        );
        let signer = NoteSigner::from_seed("canopy.test", &[3; 32]).unwrap();
        let statement = result.sign("canopy.test", &signer);
        assert_eq!(
            FinalResult::open(&statement, &signer.verifier()).unwrap(),
            result
        );
        let stranger = NoteSigner::from_seed("canopy.test", &[4; 32]).unwrap();
        assert!(FinalResult::open(&statement, &stranger.verifier()).is_err());
        let altered = statement.replace("\"turnout\":3", "\"turnout\":4");
        assert_ne!(altered, statement);
        assert!(FinalResult::open(&altered, &signer.verifier()).is_err());
    }

    proptest::proptest! {
        /// A statement with any byte changed either no longer opens, or says exactly what
        /// the signed one said: nobody alters a result and keeps the record's signature.
        #[test]
        fn an_altered_statement_never_opens_to_another_result(
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let decision = decision();
            let leaves = [leaf(1, 0, Component::Democratic, 1_000_000), close_leaf()];
            let params = DecisionParams::from(&decision);
            let recount =
                recount_leaves(decision.id, &params, leaves.iter().map(Vec::as_slice)).unwrap();
            let result = FinalResult::new(
                &decision,
                ClosePoint { partition: 0, offset: 1, kind: CloseKind::Early },
                recount.tree_size,
                recount.root,
                recount.tally,
            );
            let signer = NoteSigner::from_seed("canopy.test", &[3; 32]).unwrap();
            let mut bytes = result.sign("canopy.test", &signer).into_bytes();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(altered) = String::from_utf8(bytes)
                && let Ok(opened) = FinalResult::open(&altered, &signer.verifier())
            {
                proptest::prop_assert_eq!(opened, result);
            }
        }
    }

    /// A ranked decision's leaves recount by instant runoff: each voter's last ranking,
    /// the rounds in the tally, the outcome read from the last round.
    #[test]
    fn a_ranked_decisions_leaves_recount_by_instant_runoff() {
        let decision = Decision {
            method: Method::RankedChoice,
            ..decision()
        };
        let params = DecisionParams::from(&decision);
        let ranked = |voter: u8, ranking: &[u16]| {
            let vote = Vote {
                vote_id: VoteId::new_random(),
                decision_id: DecisionId(9),
                voter_id: VoterId(u128::from(voter)),
                ballot: Ballot::ranked_choice(ranking).unwrap(),
                component: Component::Democratic,
                weight: Weight(1_000_000),
                cast_at: 1,
            };
            LoggedVote::new(vote, &VoterSalt([voter; 32]))
                .leaf_data()
                .to_vec()
        };
        let leaves = [
            ranked(1, &[0, 1]),
            ranked(2, &[1]),
            ranked(3, &[2, 1]),
            ranked(2, &[1, 0]),
            ranked(4, &[0]),
            ranked(5, &[0, 2]),
            close_leaf(),
        ];
        let recount =
            recount_leaves(decision.id, &params, leaves.iter().map(Vec::as_slice)).unwrap();
        let latest =
            [(&[0u16, 1][..]), &[1, 0], &[2, 1], &[0], &[0, 2]].map(|ranking| CountedBallot {
                component: Component::Democratic,
                weight: 1_000_000,
                ballot: Ballot::ranked_choice(ranking).unwrap(),
            });
        let expected = count_decision(&params, latest).into_tally();
        assert_eq!(recount.tally, expected);
        // 3, 1, 1 first preferences: 2 goes (the tie for last broken by index), its
        // ballot moves to 1, then 1 goes.
        assert_eq!(recount.tally.rounds.len(), 3, "{:?}", recount.tally.rounds);
        assert_eq!(recount.tally.rounds[0].eliminated, Some(2));
        assert!(recount.tally.rounds[0].tie_broken);
        assert_eq!(recount.tally.rounds[1].eliminated, Some(1));
        assert_eq!(Outcome::of(&recount.tally), Outcome::Winner { option: 0 });
    }

    #[test]
    fn leaves_after_the_close_or_of_another_decision_are_refused() {
        let params = DecisionParams::from(&decision());
        let after_close = [close_leaf(), leaf(1, 0, Component::Democratic, 1_000_000)];
        let error = recount_leaves(
            DecisionId(9),
            &params,
            after_close.iter().map(Vec::as_slice),
        )
        .unwrap_err();
        assert_eq!(error.code(), "bad_result");
        let foreign = [leaf(1, 0, Component::Democratic, 1_000_000)];
        assert!(recount_leaves(DecisionId(8), &params, foreign.iter().map(Vec::as_slice)).is_err());
    }
}
