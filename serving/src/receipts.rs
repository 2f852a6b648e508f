//! The casts this replica answered lately, by (voter, vote id): a retry that arrives before
//! the engine took the first delivery into the record still gets the first receipt. Older
//! retries are answered from the record itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use canopy_ingest::Position;
use canopy_schemas::LoggedVote;

/// How many recent casts are kept before the memory starts afresh.
const MAX_RECENT_CASTS: usize = 100_000;

#[derive(Debug)]
pub struct RecentCasts {
    casts: Mutex<HashMap<(u128, u128), (LoggedVote, Position)>>,
}

impl Default for RecentCasts {
    /// Sized for its limit at once: a map that doubles while every cast waits for its lock
    /// moved tens of thousands of entries in one go on a fresh node (the memory is only
    /// touched as casts fill it).
    fn default() -> Self {
        Self {
            casts: Mutex::new(HashMap::with_capacity(MAX_RECENT_CASTS)),
        }
    }
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
/// `vote_confirmed` once a checkpoint covers it. Minutes at most (in this process, or in
/// Redis for the replicas of a cluster), and forgotten on any erasure, like [`RecentCasts`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PendingConfirmation {
    pub account: uuid::Uuid,
    pub decision: canopy_schemas::DecisionId,
    pub vote_id: canopy_schemas::VoteId,
    pub leaf_hash: String,
    pub position: Position,
    /// When it was cast (Unix ms): the wait is counted from it on every replica.
    pub cast_at_ms: u64,
}

impl PendingConfirmation {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.cast_at_ms) >= CONFIRMATION_WAIT.as_millis() as u64
    }
}

/// Now, as Unix ms (a [`PendingConfirmation`]'s cast time).
pub fn now_ms() -> u64 {
    canopy_schemas::clock::now_millis().max(0) as u64
}

/// Where the replicas of a cluster keep the votes waiting for their confirmation (a node
/// wires Redis behind it): a voter's `/notifications` socket may be on another replica than
/// the one that took the vote. Every call blocks: make it off the async threads.
pub trait SharedConfirmations: Send + Sync {
    /// Adds votes noted on this replica.
    fn publish(&self, noted: &[PendingConfirmation]) -> Result<(), String>;
    /// The votes waiting for `accounts`, noted on any replica (expired ones may be among
    /// them).
    fn waiting_for(&self, accounts: &[uuid::Uuid]) -> Result<Vec<PendingConfirmation>, String>;
    /// Forgets every waiting vote (after an erasure).
    fn forget_all(&self) -> Result<(), String>;
}

/// The votes waiting for a `vote_confirmed`: noted by the cast, taken by the push loop.
pub struct PendingConfirmations {
    /// Noted here: every waiting vote in one process; in a cluster, those not published yet.
    pending: Mutex<std::collections::VecDeque<PendingConfirmation>>,
    /// In a cluster: the shared votes, and those this replica already pushed (each
    /// replica pushes to its own sockets, so none deletes a shared vote; they expire).
    shared: Option<Arc<dyn SharedConfirmations>>,
    pushed_here: Mutex<HashMap<canopy_schemas::VoteId, u64>>,
}

impl Default for PendingConfirmations {
    /// Sized for its limit at once, like [`RecentCasts`]: every cast notes a vote here.
    fn default() -> Self {
        Self {
            pending: Mutex::new(std::collections::VecDeque::with_capacity(
                MAX_PENDING_CONFIRMATIONS,
            )),
            shared: None,
            pushed_here: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for PendingConfirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingConfirmations")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl PendingConfirmations {
    /// Waiting votes shared with the other replicas through `shared`.
    pub fn shared(shared: Arc<dyn SharedConfirmations>) -> Self {
        Self {
            shared: Some(shared),
            ..Self::default()
        }
    }

    pub fn note(&self, confirmation: PendingConfirmation) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING_CONFIRMATIONS {
            pending.pop_front();
        }
        pending.push_back(confirmation);
    }

    /// Every vote of `accounts` still waiting and not yet pushed by this replica. In a
    /// cluster, first publishes the votes noted here since the last call (whoever listens).
    pub async fn waiting_for(
        &self,
        accounts: &std::collections::BTreeSet<uuid::Uuid>,
    ) -> Result<Vec<PendingConfirmation>, String> {
        let now = now_ms();
        let Some(shared) = self.shared.clone() else {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.retain(|waiting| !waiting.expired(now));
            return Ok(pending
                .iter()
                .filter(|waiting| accounts.contains(&waiting.account))
                .cloned()
                .collect());
        };
        let noted: Vec<PendingConfirmation> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let accounts: Vec<uuid::Uuid> = accounts.iter().copied().collect();
        let (waiting, unpublished) = tokio::task::spawn_blocking(move || {
            if !noted.is_empty()
                && let Err(error) = shared.publish(&noted)
            {
                return (Err(error), noted);
            }
            if accounts.is_empty() {
                return (Ok(Vec::new()), Vec::new());
            }
            (shared.waiting_for(&accounts), Vec::new())
        })
        .await
        .map_err(|error| error.to_string())?;
        if !unpublished.is_empty() {
            // Kept for the next round (Redis may be back by then).
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for vote in unpublished.into_iter().rev() {
                pending.push_front(vote);
            }
            pending.truncate(MAX_PENDING_CONFIRMATIONS);
        }
        let mut pushed = self
            .pushed_here
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pushed.retain(|_, cast_at_ms| {
            now.saturating_sub(*cast_at_ms) < CONFIRMATION_WAIT.as_millis() as u64
        });
        Ok(waiting?
            .into_iter()
            .filter(|waiting| !waiting.expired(now) && !pushed.contains_key(&waiting.vote_id))
            .collect())
    }

    /// Marks `confirmed` as pushed: dropped here, or (in a cluster) not pushed again by
    /// this replica.
    pub fn confirmed(&self, confirmed: &[PendingConfirmation]) {
        if self.shared.is_some() {
            let mut pushed = self
                .pushed_here
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pushed.len() + confirmed.len() > MAX_PENDING_CONFIRMATIONS {
                // Bounded like the waiting votes: forgetting risks a repeated
                // `vote_confirmed`, which a client takes as the same news.
                pushed.clear();
            }
            for vote in confirmed {
                pushed.insert(vote.vote_id, vote.cast_at_ms);
            }
            return;
        }
        let confirmed: std::collections::HashSet<canopy_schemas::VoteId> =
            confirmed.iter().map(|vote| vote.vote_id).collect();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|waiting| !confirmed.contains(&waiting.vote_id));
    }

    /// Forgets every waiting vote here and, in a cluster, the shared ones.
    pub async fn forget_all(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(shared) = self.shared.clone() {
            let forgot = tokio::task::spawn_blocking(move || shared.forget_all()).await;
            if !matches!(forgot, Ok(Ok(()))) {
                tracing::warn!(
                    "could not forget the shared votes waiting for confirmation; they expire within minutes"
                );
            }
        }
    }

    /// Forgets the votes noted here (another replica erased a voter and the shared ones).
    pub fn forget_local(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
