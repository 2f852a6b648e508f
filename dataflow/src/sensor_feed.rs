//! The features dataflow as a passenger of the tally engine: built on the same timely
//! workers (in a cluster, the same processes), fed from the sensor log's partitions the
//! worker owns, sealed with the tally's epochs.
//!
//! Sensor state is not checkpointed: a start reads the sensor log from offset 0 (windows are
//! a function of the readings in the log). Where a previous run's views had got to, the
//! replay cuts an epoch, so what a view store receives after that point is new.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_ingest::SensorLog;
use timely::worker::Worker;

use crate::epoch::Epoch;
use crate::log_reader::PartitionCursors;
use crate::sensor_views::SensorViews;
use crate::sensor_windows::WindowConfig;
use crate::sensors::{SensorInputs, build_sensor_dataflow};

/// What a tally engine needs to run the features dataflow beside the tally.
#[derive(Clone)]
pub struct SensorFeed {
    pub log: Arc<dyn SensorLog>,
    /// This process's views: the windows of the regions its workers own.
    pub views: Arc<SensorViews>,
    pub windows: WindowConfig,
    /// The most readings one partition adds to one epoch.
    pub max_epoch_records: usize,
    /// Per partition, the offset a previous run's views had reached (a cluster's frontier in
    /// Redis): the replay ends an epoch exactly there.
    pub replayed_until: HashMap<u32, u64>,
}

impl std::fmt::Debug for SensorFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorFeed")
            .field("partitions", &self.log.partitions())
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

/// One worker's share of the features dataflow.
pub(crate) struct SensorWorker {
    inputs: SensorInputs,
    /// One cursor per owned partition, so each may stop at its own replay point.
    cursors: Vec<(u32, PartitionCursors)>,
    feed: SensorFeed,
}

impl SensorWorker {
    /// Builds the features dataflow on `worker` (every worker of the computation must) and
    /// sets it to read the partitions `owned` from the start.
    pub(crate) fn build(worker: &mut Worker, feed: &SensorFeed, owned: Vec<u32>) -> Self {
        let mut inputs =
            build_sensor_dataflow(worker, feed.windows.clone(), Arc::clone(&feed.views));
        let cursors = owned
            .into_iter()
            .map(|partition| (partition, PartitionCursors::new(vec![partition], |_| 0)))
            .collect::<Vec<_>>();
        for (partition, _) in &cursors {
            inputs.note_end(*partition, 0);
        }
        Self {
            inputs,
            cursors,
            feed: feed.clone(),
        }
    }

    /// Reads what is new in the owned partitions into the current epoch; returns how many
    /// readings it fed.
    pub(crate) fn read(&mut self) -> Result<usize, String> {
        let mut fed = 0;
        for (partition, cursors) in &mut self.cursors {
            let next = cursors.ends().next().map_or(0, |(_, next)| next);
            let mut max = self.feed.max_epoch_records;
            if let Some(until) = self.feed.replayed_until.get(partition)
                && next < *until
            {
                max = max.min((*until - next) as usize);
            }
            let inputs = &mut self.inputs;
            fed += cursors
                .read_pass(&*self.feed.log, max, |partition, batch, end| {
                    for record in batch {
                        inputs.push(record);
                    }
                    inputs.note_end(partition, end);
                })
                .map_err(|error| format!("reading the sensor log: {error}"))?;
        }
        Ok(fed)
    }

    pub(crate) fn wanted_epoch(&self) -> Epoch {
        self.inputs.wanted_epoch()
    }

    pub(crate) fn seal_until(&mut self, next: Epoch) -> Epoch {
        self.inputs.seal_until(next)
    }

    /// Steps `worker` until `epoch` is in the views, then moves their frontiers.
    pub(crate) fn run_until_published(&mut self, worker: &mut Worker, epoch: Epoch) {
        self.inputs.run_until_published(worker, epoch);
    }
}
