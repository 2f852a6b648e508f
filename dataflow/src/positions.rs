use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use crate::tally::Epoch;

/// For each partition, the log end offset each sealed epoch includes.
///
/// The worker that feeds a partition records its end when it seals an epoch; the sink that
/// publishes a decision's tally for that epoch (possibly on another worker) looks it up, so
/// every published view names exactly the log prefix it reflects.
#[derive(Debug)]
pub struct EpochPositions {
    partitions: u32,
    ends: Mutex<HashMap<u32, BTreeMap<Epoch, u64>>>,
}

impl EpochPositions {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions,
            ends: Mutex::new(HashMap::new()),
        }
    }

    /// The partition count of the log being tallied.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn record(&self, partition: u32, epoch: Epoch, end: u64) {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        let per_epoch = ends.entry(partition).or_default();
        if per_epoch.last_key_value().map(|(_, last)| *last) != Some(end) {
            per_epoch.insert(epoch, end);
        }
    }

    /// The end offset of `partition` as of `epoch` (0 if nothing was recorded by then).
    pub fn end_at(&self, partition: u32, epoch: Epoch) -> u64 {
        let ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        ends.get(&partition)
            .and_then(|per_epoch| per_epoch.range(..=epoch).next_back())
            .map_or(0, |(_, end)| *end)
    }

    /// Drops what no unpublished epoch can ask for: entries before `epoch`, but the latest.
    pub fn forget_before(&self, partition: u32, epoch: Epoch) {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(per_epoch) = ends.get_mut(&partition) else {
            return;
        };
        let Some((&keep, _)) = per_epoch.range(..epoch).next_back() else {
            return;
        };
        *per_epoch = per_epoch.split_off(&keep);
    }
}
