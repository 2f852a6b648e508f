//! The fold that keeps each voter's current vote.

use std::collections::{HashMap, HashSet};

use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use differential_dataflow::hashable::Hashable;
use foldhash::quality::FixedState;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use super::checkpoint::CapturedState;
use crate::arithmetic::Ballot;
use crate::epoch::{Epoch, EpochBuffer, RESTORE_EPOCH};
use crate::state::StateEntry;

/// (decision, voter).
pub(super) type VoteKey = (u128, u128);

/// Per (decision, voter), the current vote: among first deliveries of each vote id, the one
/// with the highest log offset. Emits a retraction of the voter's previous vote and the new
/// one whenever it changes.
///
/// The vote input only ever grows (the log is append-only), so "latest" is a fold with O(1)
/// work per ballot, kept in two hash maps. Each epoch is applied once it is complete, in log
/// order (by offset), whichever worker fed which record; this relies on each partition
/// being fed in offset order across epochs, which the engine and the benchmark do. A
/// differential `reduce` computes the same thing but rescans a voter's whole history
/// whenever it changes: it measured as half the server's CPU under a stream of changed
/// votes, and is quadratic in the votes of one voter.
pub(super) fn latest_vote_per_voter<'scope>(
    votes: VecCollection<'scope, Epoch, (VoteKey, Ballot), i64>,
    capture: Option<CapturedState>,
) -> VecCollection<'scope, Epoch, (VoteKey, Ballot), i64> {
    type Update = ((VoteKey, Ballot), Epoch, i64);
    votes
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            Exchange::new(|update: &Update| (update.0).0.hashed()),
            "LatestVotePerVoter",
            |_capability, _info| {
                let mut latest = LatestVotes::new(capture);
                let mut pending: EpochBuffer<(VoteKey, Ballot)> = EpochBuffer::default();
                move |(input, frontier), output| {
                    input.for_each(|capability, updates| {
                        pending.hold_updates(&capability, updates, |vote, diff| {
                            debug_assert!(diff > 0, "the vote input is append-only");
                            vote
                        })
                    });
                    while let Some(complete) =
                        pending.pop_complete(|epoch| frontier.less_equal(epoch))
                    {
                        let mut session = output.session(&complete.capability);
                        latest.apply(complete.epoch, complete.records, |change| {
                            session.give(change)
                        });
                    }
                }
            },
        )
        .as_collection()
}

/// One worker's share of the fold: the vote ids it has seen and each voter's current ballot.
struct LatestVotes {
    seen: HashSet<(VoteKey, u128), FixedState>,
    latest: HashMap<VoteKey, Ballot, FixedState>,
    capture: Option<CapturedState>,
}

impl LatestVotes {
    fn new(capture: Option<CapturedState>) -> Self {
        Self {
            seen: HashSet::with_hasher(FixedState::with_seed(0)),
            latest: HashMap::with_hasher(FixedState::with_seed(0)),
            capture,
        }
    }

    /// Applies one complete epoch's ballots in log order, giving each change of a voter's
    /// current vote to `give` as a retraction and an addition.
    fn apply(
        &mut self,
        time: Epoch,
        mut ballots: Vec<(VoteKey, Ballot)>,
        mut give: impl FnMut(((VoteKey, Ballot), Epoch, i64)),
    ) {
        ballots.sort_unstable_by_key(|(_, ballot)| ballot.offset);
        for (key, ballot) in ballots {
            if !self.seen.insert((key, ballot.vote_id)) {
                continue;
            }
            if let Some(capture) = self.capture.as_ref()
                && time != RESTORE_EPOCH
            {
                capture.borrow_mut().push((
                    time,
                    StateEntry::Ballot {
                        decision: key.0,
                        voter: key.1,
                        ballot,
                    },
                ));
            }
            match self.latest.get_mut(&key) {
                Some(current) if current.offset >= ballot.offset => {}
                Some(current) => {
                    give(((key, *current), time, -1));
                    give(((key, ballot), time, 1));
                    *current = ballot;
                }
                None => {
                    give(((key, ballot), time, 1));
                    self.latest.insert(key, ballot);
                }
            }
        }
    }
}
