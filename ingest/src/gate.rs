use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use canopy_schemas::{
    Decision, DecisionId, LoggedVote, Timestamp, validate_decision, validate_vote,
};

use crate::{IngestError, Position, VoteLog};

/// The only way votes should enter the log: every vote of a batch is checked against its
/// decision first, and a batch with one bad vote is refused whole, so nothing of it is
/// stored.
pub struct Gate<L: ?Sized> {
    log: Arc<L>,
    decisions: RwLock<HashMap<DecisionId, Decision>>,
}

impl<L: VoteLog + ?Sized> Gate<L> {
    pub fn new(log: Arc<L>) -> Self {
        Self {
            log,
            decisions: RwLock::new(HashMap::new()),
        }
    }

    pub fn log(&self) -> &Arc<L> {
        &self.log
    }

    /// Adds or replaces a decision. Once it has opened (`now >= opens_at`), its options,
    /// window start, weights and method are frozen: changing them mid-vote is refused.
    pub fn register(&self, decision: Decision, now: Timestamp) -> Result<(), IngestError> {
        validate_decision(&decision).map_err(|source| IngestError::InvalidDecision {
            decision: decision.id,
            source,
        })?;
        let mut decisions = self
            .decisions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = decisions.get(&decision.id) {
            let frozen_fields_changed = old.options != decision.options
                || old.weights != decision.weights
                || old.method != decision.method
                || old.opens_at != decision.opens_at;
            if now >= old.opens_at && frozen_fields_changed {
                return Err(IngestError::DecisionFrozen {
                    decision: decision.id,
                });
            }
        }
        decisions.insert(decision.id, decision);
        Ok(())
    }

    pub fn decision(&self, id: DecisionId) -> Option<Decision> {
        self.decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Validates every vote, then appends them all; returns once they are durable.
    pub fn submit(&self, votes: &[LoggedVote]) -> Result<Vec<Position>, IngestError> {
        self.validate(votes)?;
        self.log.append(votes)
    }

    /// [`submit`](Self::submit) for async callers.
    pub async fn submit_async(&self, votes: &[LoggedVote]) -> Result<Vec<Position>, IngestError> {
        self.validate(votes)?;
        self.log.append_async(votes).await
    }

    fn validate(&self, votes: &[LoggedVote]) -> Result<(), IngestError> {
        {
            let decisions = self
                .decisions
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (index, vote) in votes.iter().map(|logged| &logged.vote).enumerate() {
                let decision =
                    decisions
                        .get(&vote.decision_id)
                        .ok_or(IngestError::UnknownDecision {
                            index,
                            decision: vote.decision_id,
                        })?;
                validate_vote(decision, vote)
                    .map_err(|source| IngestError::InvalidVote { index, source })?;
            }
        }
        Ok(())
    }
}
