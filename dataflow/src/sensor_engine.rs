//! Runs the features dataflow over a sensor log on W worker threads of one process: worker
//! i reads partitions p ≡ i (mod W) from the start, every reading in log order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canopy_ingest::SensorLog;
use timely::Config;
use timely::worker::Worker;

use crate::DataflowError;
use crate::log_reader::PartitionCursors;
use crate::sensor_views::SensorViews;
use crate::sensor_windows::WindowConfig;
use crate::sensors::build_sensor_dataflow;
use crate::worker_pool::{StopFlag, WorkerPool, partitions_of};

#[derive(Clone, Debug)]
pub struct SensorEngineConfig {
    pub workers: usize,
    pub windows: WindowConfig,
    /// The most readings one partition adds to one epoch.
    pub max_epoch_records: usize,
    /// How long an idle worker sleeps before looking at the log again.
    pub idle_wait: Duration,
}

impl Default for SensorEngineConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            windows: WindowConfig::default(),
            max_epoch_records: 65_536,
            idle_wait: Duration::from_millis(5),
        }
    }
}

/// What every worker of a sensor engine is started with.
struct WorkerContext {
    config: SensorEngineConfig,
    log: Arc<dyn SensorLog>,
    views: Arc<SensorViews>,
    /// The epoch every worker seals up to; a worker that fed readings moves it on.
    epoch: AtomicU64,
}

pub struct SensorEngine {
    workers: WorkerPool,
}

impl std::fmt::Debug for SensorEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorEngine").finish_non_exhaustive()
    }
}

impl SensorEngine {
    pub fn start(
        config: SensorEngineConfig,
        log: Arc<dyn SensorLog>,
        views: Arc<SensorViews>,
    ) -> Result<Self, DataflowError> {
        config.windows.validate().map_err(DataflowError::Config)?;
        let threads = config.workers.max(1);
        let context = WorkerContext {
            config,
            log,
            views,
            epoch: AtomicU64::new(1),
        };
        let workers = WorkerPool::start(Config::process(threads), move |worker, stop| {
            drive_worker(worker, &context, stop)
        })?;
        Ok(Self { workers })
    }

    /// Whether a worker ended without being asked to (a corrupt log, a panic).
    pub fn has_stopped(&self) -> bool {
        self.workers.any_finished()
    }

    pub fn shutdown(self) -> Result<(), DataflowError> {
        self.workers.stop()
    }
}

/// One worker's life: read its partitions from the start into epochs, sealed in step with
/// the other workers.
fn drive_worker(
    worker: &mut Worker,
    context: &WorkerContext,
    stop: &StopFlag,
) -> Result<(), String> {
    let WorkerContext {
        config,
        log,
        views,
        epoch,
    } = context;
    let mut inputs = build_sensor_dataflow(worker, config.windows.clone(), Arc::clone(views));
    let mine = partitions_of(worker.index(), worker.peers(), log.partitions());
    let mut cursors = PartitionCursors::new(mine, |_| 0);
    for (partition, end) in cursors.ends() {
        inputs.note_end(partition, end);
    }
    let fail = |reason: String| {
        views.fail(reason.clone());
        Err(reason)
    };
    while !stop.is_raised() {
        let read = cursors.read_pass(&**log, config.max_epoch_records, |partition, batch, end| {
            for record in batch {
                inputs.push(record);
            }
            inputs.note_end(partition, end);
        });
        let fed = match read {
            Ok(fed) => fed,
            Err(error) => return fail(error.to_string()),
        };
        let current = inputs.current_epoch();
        if fed > 0 {
            epoch.fetch_max(current + 1, Ordering::AcqRel);
        }
        let target = epoch.load(Ordering::Acquire);
        if target > current {
            let sealed = inputs.seal_until(target);
            inputs.run_until_published(worker, sealed);
        } else {
            worker.step_or_park(Some(config.idle_wait));
        }
    }
    Ok(())
}
