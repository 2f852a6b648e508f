//! The tally engine: W timely worker threads that tail a vote log into the tally dataflow.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use canopy_ingest::VoteLog;
use canopy_schemas::Decision;
use timely::execute::{Config, execute};

use crate::DataflowError;
use crate::positions::EpochPositions;
use crate::record::VoteRecord;
use crate::tally::build_tally_dataflow;
use crate::views::ViewStore;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Worker threads.
    pub workers: usize,
    /// The most records a worker reads from one partition into one epoch. Large epochs
    /// amortise the dataflow's per-epoch cost while catching up; a tailing engine sees small
    /// ones anyway.
    pub max_epoch_records: usize,
    /// How long an idle worker parks before it looks at the log again.
    pub idle_wait: Duration,
    /// After a small epoch, how long a worker rests before reading again. Adds at most this
    /// much to the time a vote takes to show in results, and saves the CPU that many tiny
    /// epochs cost under a steady trickle.
    pub min_epoch_gap: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            max_epoch_records: 100_000,
            idle_wait: Duration::from_millis(1),
            min_epoch_gap: Duration::from_micros(500),
        }
    }
}

/// How often worker 0 applies the record's time-based checkpoint rule.
const RECORD_TICK: Duration = Duration::from_millis(100);

struct Shared {
    shutdown: AtomicBool,
    /// The epoch every worker's input should have reached: raised by a worker that fed
    /// something, followed by the others.
    epoch: AtomicU64,
    new_decisions: Mutex<Vec<Decision>>,
}

/// Runs the tally dataflow over a vote log until shut down, publishing into a view store.
///
/// It replays the log from the start (a later issue adds checkpoints), then follows it.
/// If the log cannot be read (corruption), the engine stops and fails the view store, so
/// no reader is served a result that silently misses votes.
pub struct TallyEngine {
    shared: Arc<Shared>,
    /// In a mutex only so the engine is `Sync` and can sit in shared server state.
    guards: Mutex<Option<timely::communication::WorkerGuards<Result<(), String>>>>,
}

impl std::fmt::Debug for TallyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TallyEngine").finish_non_exhaustive()
    }
}

impl TallyEngine {
    pub fn start(
        config: EngineConfig,
        log: Arc<dyn VoteLog>,
        views: Arc<dyn ViewStore>,
        record: Option<Arc<VoteRecord>>,
        decisions: Vec<Decision>,
    ) -> Result<Self, DataflowError> {
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            new_decisions: Mutex::new(decisions),
        });
        let partitions = log.partitions();
        let positions = Arc::new(EpochPositions::new(partitions));
        let worker_shared = Arc::clone(&shared);
        let workers = config.workers.max(1);
        let guards = execute(Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let mut inputs = build_tally_dataflow(
                worker,
                Arc::clone(&views),
                Arc::clone(&positions),
                record.clone(),
            );
            let mut last_cut_check = Instant::now();
            let mine: Vec<u32> = (0..partitions)
                .filter(|p| *p as usize % peers == index)
                .collect();
            let mut next = vec![0u64; mine.len()];
            while !worker_shared.shutdown.load(Ordering::Acquire) {
                // Decisions enter through worker 0; the dataflow routes them by key.
                let new: Vec<Decision> = match index {
                    0 => std::mem::take(
                        &mut *worker_shared
                            .new_decisions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner),
                    ),
                    _ => Vec::new(),
                };
                for decision in &new {
                    inputs.upsert_decision(decision);
                }
                let mut fed = new.len();
                for (slot, partition) in mine.iter().enumerate() {
                    let batch = match log.read(*partition, next[slot], config.max_epoch_records) {
                        Ok(batch) => batch,
                        Err(error) => {
                            let reason = error.to_string();
                            views.fail(reason.clone());
                            return Err(reason);
                        }
                    };
                    for record in &batch {
                        inputs.push(record);
                    }
                    if let Some(last) = batch.last() {
                        next[slot] = last.position.offset + 1;
                    }
                    inputs.note_end(*partition, next[slot]);
                    fed += batch.len();
                }
                // An epoch is sealed only when some worker has something new; the others
                // follow the shared epoch, so the frontier moves and an idle engine rests.
                if fed > 0 {
                    worker_shared
                        .epoch
                        .fetch_max(inputs.current_epoch() + 1, Ordering::AcqRel);
                }
                // The time-based checkpoint rule and the record's health, a few times a second.
                if let Some(record) = record.as_ref().filter(|_| index == 0)
                    && last_cut_check.elapsed() >= RECORD_TICK
                {
                    last_cut_check = Instant::now();
                    if let Some(reason) = record.failure() {
                        views.fail(reason.clone());
                        return Err(reason);
                    }
                    record.cut_due(last_cut_check);
                }
                let target = worker_shared.epoch.load(Ordering::Acquire);
                if target > inputs.current_epoch() {
                    inputs.seal_until(target);
                    inputs.run_until_published(worker, target - 1);
                    // A trickle makes tiny epochs, each paying the dataflow's fixed cost:
                    // rest a moment so the next one gathers more.
                    if fed < config.max_epoch_records / 100 {
                        worker.step_or_park(Some(config.min_epoch_gap));
                    }
                } else {
                    worker.step_or_park(Some(config.idle_wait));
                }
            }
            Ok(())
        })
        .map_err(DataflowError::Start)?;
        Ok(Self {
            shared,
            guards: Mutex::new(Some(guards)),
        })
    }

    /// Adds a decision, or replaces its parameters; takes effect in the next epoch.
    pub fn register(&self, decision: Decision) {
        self.shared
            .new_decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(decision);
    }

    /// Stops the workers and waits for them; reports a worker that stopped on an error.
    pub fn shutdown(mut self) -> Result<(), DataflowError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), DataflowError> {
        self.shared.shutdown.store(true, Ordering::Release);
        let Some(guards) = self
            .guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        for result in guards.join() {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(DataflowError::Stopped(reason)),
                Err(panic) => return Err(DataflowError::WorkerPanicked(panic)),
            }
        }
        Ok(())
    }
}

impl Drop for TallyEngine {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
