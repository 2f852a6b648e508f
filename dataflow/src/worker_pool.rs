//! The skeleton both engines run on: timely worker threads started once, asked to stop
//! through one flag, and joined with the first error or panic reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use timely::communication::WorkerGuards;
use timely::execute::{Config, execute};
use timely::worker::Worker;

use crate::DataflowError;

/// Tells a worker whether its engine wants it to stop.
#[derive(Clone, Default)]
pub(crate) struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub(crate) fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The worker threads of a running timely computation. Dropping the pool stops them.
pub(crate) struct WorkerPool {
    stop: StopFlag,
    /// In a mutex only so an engine is `Sync` and can sit in shared server state.
    guards: Mutex<Option<WorkerGuards<Result<(), String>>>>,
}

impl WorkerPool {
    /// Starts the workers `config` describes, each running `drive` until it returns; a
    /// worker returns once its [`StopFlag`] is raised, or with the reason it failed.
    pub(crate) fn start<F>(config: Config, drive: F) -> Result<Self, DataflowError>
    where
        F: Fn(&mut Worker, &StopFlag) -> Result<(), String> + Send + Sync + 'static,
    {
        let stop = StopFlag::default();
        let worker_stop = stop.clone();
        let guards = execute(config, move |worker| drive(worker, &worker_stop))
            .map_err(DataflowError::Start)?;
        Ok(Self {
            stop,
            guards: Mutex::new(Some(guards)),
        })
    }

    /// Whether a worker has ended (failed, panicked, lost a peer process).
    pub(crate) fn any_finished(&self) -> bool {
        self.guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|guards| guards.guards().iter().any(|g| g.is_finished()))
    }

    /// Asks every worker to stop and waits for them; reports the first that stopped on an
    /// error or panicked.
    pub(crate) fn stop(&self) -> Result<(), DataflowError> {
        self.stop.raise();
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

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The partitions worker `index` of `peers` reads: p ≡ index (mod peers).
pub(crate) fn partitions_of(index: usize, peers: usize, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .filter(|p| *p as usize % peers == index)
        .collect()
}
