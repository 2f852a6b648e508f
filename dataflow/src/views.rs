//! Where results go: a [`ViewStore`] holds the latest tally of each decision, tagged with
//! the log position it includes, and lets a reader wait for "at least position p".
//!
//! Two ways to wait: [`ViewStore::wait_for`] blocks its thread (the dataflow's tests, tools),
//! [`wait_included`] parks a task instead, woken by the store's change counter
//! ([`ViewStore::changes`]) or, for a store that cannot notify, by polling; the API uses it,
//! so a thousand waiting readers hold no thread.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use canopy_ingest::Position;
use canopy_schemas::DecisionId;
use serde::{Deserialize, Serialize};

use crate::DataflowError;
use crate::arithmetic::Tally;

/// One decision's result as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    pub decision: DecisionId,
    pub tally: Tally,
    /// Every record of `as_of.partition` below `as_of.offset` is counted; none above.
    pub as_of: Position,
}

/// Whether a reader who wrote at `position` sees their record: the partition's frontier
/// passed it, or the decision's view was published as of a later offset of that partition.
pub fn includes_position(frontier: u64, view: Option<&DecisionView>, position: Position) -> bool {
    let view_end = view
        .filter(|v| v.as_of.partition == position.partition)
        .map_or(0, |v| v.as_of.offset);
    frontier > position.offset || view_end > position.offset
}

/// The loop behind every store's [`ViewStore::wait_for`]: looks until the view includes
/// `position` or `timeout` has passed. `look` reads the partition's frontier and the view
/// through `held` (a lock guard, or nothing); `pause` waits at most the time left for them
/// to change and hands `held` back.
pub fn wait_until_included<H>(
    position: Position,
    timeout: Duration,
    mut held: H,
    mut look: impl FnMut(&H) -> Result<(u64, Option<DecisionView>), DataflowError>,
    mut pause: impl FnMut(H, Duration) -> H,
) -> Result<Option<DecisionView>, DataflowError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (frontier, view) = look(&held)?;
        if includes_position(frontier, view.as_ref(), position) {
            return Ok(view);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(DataflowError::Timeout {
                position,
                waited: timeout,
            });
        }
        held = pause(held, deadline - now);
    }
}

/// A change the dataflow publishes: a decision's new tally (or its removal) as of a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewUpdate {
    pub decision: DecisionId,
    pub tally: Option<Tally>,
    pub as_of: Position,
}

/// What a reader of the views gets: a decision's view, none before its first vote, or why
/// the views cannot answer.
pub type ViewRead = Result<Option<DecisionView>, DataflowError>;

/// The sink of the tally dataflow and the source of every result a reader sees.
pub trait ViewStore: Send + Sync {
    /// Replaces the views of the decisions in `updates`; the updates of one call are one
    /// complete epoch of the dataflow.
    fn publish(&self, updates: Vec<ViewUpdate>);

    /// Declares every record of `partition` below `end` reflected in the published views.
    fn advance(&self, partition: u32, end: u64);

    /// Marks the store unusable: the dataflow stopped (for instance on a corrupt log), and
    /// serving its last views as current would be a lie.
    fn fail(&self, reason: String);

    /// Why the store was failed, if it was.
    fn failure(&self) -> Option<String>;

    /// Every record of `partition` below this offset is reflected in the views.
    fn frontier(&self, partition: u32) -> u64;

    /// The current view of `decision`, if it has one.
    fn get(&self, decision: DecisionId) -> Result<Option<DecisionView>, DataflowError>;

    /// Waits until the view of `decision` includes the record at `position` (read your own
    /// vote), up to `timeout`. Blocks the calling thread; async callers use [`wait_included`].
    fn wait_for(&self, decision: DecisionId, position: Position, timeout: Duration) -> ViewRead;

    /// A counter that moves whenever a view, a frontier or the failure may have changed;
    /// `None` when the store cannot tell (readers then poll it).
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// How often [`wait_included`] looks again at a store that gives no change notices: soon at
/// first (a vote is usually counted within milliseconds), then less often.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(250);

/// Waits, without holding a thread, until the view of `decision` includes the record at
/// `position`, up to `timeout`: [`ViewStore::wait_for`] for async callers.
pub async fn wait_included(
    views: &dyn ViewStore,
    decision: DecisionId,
    position: Position,
    timeout: Duration,
) -> ViewRead {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = views.changes();
    let mut poll = FIRST_POLL;
    loop {
        // Marked seen before the look: a change after it wakes the wait below.
        if let Some(changes) = changes.as_mut() {
            changes.borrow_and_update();
        }
        // The frontier before the view: a store publishes an epoch's views with its
        // frontier at once, so a view read after a frontier past the position includes it.
        // Read the other way round, a publish in between paired an older view with a newer
        // frontier and answered a read-your-writes wait without the caller's vote.
        let frontier = views.frontier(position.partition);
        let view = views.get(decision)?;
        if includes_position(frontier, view.as_ref(), position) {
            return Ok(view);
        }
        let timed_out = DataflowError::Timeout {
            position,
            waited: timeout,
        };
        match changes.as_mut() {
            Some(changes) => match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The store is gone: nothing will change any more.
                Ok(Err(_)) | Err(_) => return Err(timed_out),
            },
            None => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(timed_out);
                }
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + poll)).await;
                poll = (poll * 2).min(LONGEST_POLL);
            }
        }
    }
}

/// The in-process [`ViewStore`]: a map under a mutex, with a condition variable for waiting
/// threads and a change counter for waiting tasks.
#[derive(Debug)]
pub struct InMemoryViews {
    state: Mutex<ViewsState>,
    changed: Condvar,
    version: watch::Sender<u64>,
}

impl Default for InMemoryViews {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: Condvar::new(),
            version: watch::Sender::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct ViewsState {
    views: HashMap<DecisionId, (Tally, Position)>,
    frontier: HashMap<u32, u64>,
    failure: Option<String>,
}

impl InMemoryViews {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, ViewsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every waiter, threads and tasks.
    fn notify(&self) {
        self.changed.notify_all();
        self.version
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Every decision's current view; for tests and snapshots.
    pub fn all(&self) -> Result<Vec<DecisionView>, DataflowError> {
        let state = self.lock();
        state.check()?;
        Ok(state
            .views
            .keys()
            .filter_map(|decision| state.view(*decision))
            .collect())
    }
}

impl ViewsState {
    fn check(&self) -> Result<(), DataflowError> {
        match &self.failure {
            Some(reason) => Err(DataflowError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// A decision's view, its position moved up to the partition frontier: a view that no
    /// later epoch changed is still exact as of the frontier.
    fn view(&self, decision: DecisionId) -> Option<DecisionView> {
        let (tally, as_of) = self.views.get(&decision)?;
        let frontier = self.frontier.get(&as_of.partition).copied().unwrap_or(0);
        Some(DecisionView {
            decision,
            tally: tally.clone(),
            as_of: Position {
                partition: as_of.partition,
                offset: as_of.offset.max(frontier),
            },
        })
    }
}

impl ViewStore for InMemoryViews {
    fn publish(&self, updates: Vec<ViewUpdate>) {
        let mut state = self.lock();
        for update in updates {
            match update.tally {
                Some(tally) => {
                    state.views.insert(update.decision, (tally, update.as_of));
                }
                None => {
                    state.views.remove(&update.decision);
                }
            }
        }
        drop(state);
        self.notify();
    }

    fn advance(&self, partition: u32, end: u64) {
        let mut state = self.lock();
        let slot = state.frontier.entry(partition).or_insert(0);
        *slot = (*slot).max(end);
        drop(state);
        self.notify();
    }

    fn fail(&self, reason: String) {
        self.lock().failure = Some(reason);
        self.notify();
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.version.subscribe())
    }

    fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    fn frontier(&self, partition: u32) -> u64 {
        self.lock().frontier.get(&partition).copied().unwrap_or(0)
    }

    fn get(&self, decision: DecisionId) -> Result<Option<DecisionView>, DataflowError> {
        let state = self.lock();
        state.check()?;
        Ok(state.view(decision))
    }

    fn wait_for(&self, decision: DecisionId, position: Position, timeout: Duration) -> ViewRead {
        // The guard stays held from one look to the wait, so no change slips in between.
        wait_until_included(
            position,
            timeout,
            self.lock(),
            |state| {
                state.check()?;
                let frontier = state.frontier.get(&position.partition).copied();
                Ok((frontier.unwrap_or(0), state.view(decision)))
            },
            |state, left| {
                self.changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            },
        )
    }
}
