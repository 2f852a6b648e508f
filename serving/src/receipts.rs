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
