//! The casts this replica answered lately, by (voter, vote id): a retry that arrives before
//! the engine took the first delivery into the record still gets the first receipt. Older
//! retries are answered from the record itself.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use canopy_ingest::Position;
use canopy_schemas::LoggedVote;

/// How many recent casts are kept before the memory starts afresh.
const MAX_RECENT_CASTS: usize = 100_000;

#[derive(Debug, Default)]
pub struct RecentCasts {
    casts: Mutex<HashMap<(u128, u128), (LoggedVote, Position)>>,
}

impl RecentCasts {
    pub fn remember(&self, logged: &LoggedVote, position: Position) {
        let mut casts = self.casts.lock().unwrap_or_else(PoisonError::into_inner);
        if casts.len() >= MAX_RECENT_CASTS {
            // Forgetting is safe: the record answers for every cast the engine has taken,
            // which by now includes all but the newest.
            casts.clear();
        }
        let key = (logged.vote.voter_id.0, logged.vote.vote_id.0);
        casts.entry(key).or_insert((*logged, position));
    }

    /// Forgets every cast (after an erasure: nothing of the erased voter stays, even here).
    pub fn forget_all(&self) {
        self.casts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    pub fn get(&self, voter: u128, vote_id: u128) -> Option<(LoggedVote, Position)> {
        let casts = self.casts.lock().unwrap_or_else(PoisonError::into_inner);
        casts.get(&(voter, vote_id)).copied()
    }
}

/// How many votes may wait for their confirmation at once; past it the oldest are dropped
/// (their voters still see the status in `my-votes`).
const MAX_PENDING_CONFIRMATIONS: usize = 100_000;
/// How long a vote waits for its confirmation to be pushed; checkpoints come within
/// seconds, so a vote still waiting after this is told through `my-votes` instead.
pub const CONFIRMATION_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A vote cast through this replica, for its voter's `/notifications` socket: pushed as
/// `vote_confirmed` once a checkpoint covers it. In memory only, minutes at most, and
/// forgotten on any erasure, like [`RecentCasts`].
#[derive(Clone, Debug)]
pub struct PendingConfirmation {
    pub account: uuid::Uuid,
    pub decision: canopy_schemas::DecisionId,
    pub vote_id: canopy_schemas::VoteId,
    pub leaf_hash: String,
    pub position: Position,
    pub cast: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct PendingConfirmations {
    pending: Mutex<std::collections::VecDeque<PendingConfirmation>>,
}

impl PendingConfirmations {
    pub fn note(&self, confirmation: PendingConfirmation) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_CONFIRMATIONS {
            pending.pop_front();
        }
        pending.push_back(confirmation);
    }

    /// Every vote still waiting, the expired ones dropped.
    pub fn waiting(&self) -> Vec<PendingConfirmation> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|waiting| waiting.cast.elapsed() < CONFIRMATION_WAIT);
        pending.iter().cloned().collect()
    }

    /// Drops the votes `confirmed` names (by vote id), once pushed.
    pub fn confirmed(&self, confirmed: &[canopy_schemas::VoteId]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|waiting| !confirmed.contains(&waiting.vote_id));
    }

    pub fn forget_all(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
