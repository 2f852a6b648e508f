use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use canopy_schemas::{
    Decision, DecisionClose, DecisionId, LoggedVote, Timestamp, VoteLogEntry, validate_decision,
    validate_vote,
};

use crate::{IngestError, Position, VoteLog};

/// The only way votes should enter the log: every vote of a batch is checked against its
/// decision first, and a batch with one bad vote is refused whole, so nothing of it is
/// stored. A decision closed through this gate, or told closed by the store, takes no more
/// votes (the engine drops any that race the close in the log anyway: this only spares
/// them the trip).
pub struct Gate<L: ?Sized> {
    log: Arc<L>,
    decisions: RwLock<HashMap<DecisionId, Decision>>,
    closed: RwLock<HashSet<DecisionId>>,
}

impl<L: VoteLog + ?Sized> Gate<L> {
    pub fn new(log: Arc<L>) -> Self {
        Self {
            log,
            decisions: RwLock::new(HashMap::new()),
            closed: RwLock::new(HashSet::new()),
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
                || old.credits != decision.credits
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
        self.log.append_votes(votes)
    }

    /// [`submit`](Self::submit) for async callers.
    pub async fn submit_async(&self, votes: &[LoggedVote]) -> Result<Vec<Position>, IngestError> {
        self.validate(votes)?;
        let started = std::time::Instant::now();
        let appended = self.log.append_votes_async(votes).await;
        metrics::histogram!("canopy_log_append_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        appended
    }

    /// Appends `close` to its decision's partition and returns its position once durable:
    /// from there on no vote of the decision counts, on any worker. Closing a closed
    /// decision appends again; only the first close in the log has effect.
    pub async fn close_async(&self, close: DecisionClose) -> Result<Position, IngestError> {
        self.note_closed(close.decision);
        let positions = self.log.append_async(&[VoteLogEntry::Close(close)]).await?;
        Ok(positions[0])
    }

    /// Refuses the decision's votes from now on (its close is in the log already).
    pub fn note_closed(&self, decision: DecisionId) {
        self.closed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(decision);
    }

    pub fn is_closed(&self, decision: DecisionId) -> bool {
        self.closed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&decision)
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
        {
            let closed = self.closed.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((index, vote)) = votes
                .iter()
                .map(|logged| &logged.vote)
                .enumerate()
                .find(|(_, vote)| closed.contains(&vote.decision_id))
            {
                return Err(IngestError::DecisionClosed {
                    index,
                    decision: vote.decision_id,
                });
            }
        }
        Ok(())
    }
}
