//! How a worker of either engine reads its share of a log: each of its partitions from the
//! offset it reached, a transient error (a broker that is away) waited out and the read
//! tried again on the next pass, so nothing is skipped.

use std::time::Duration;

use canopy_ingest::{EntryLog, IngestError, LogEntry};

/// How long a worker waits before reading again after a transient log error.
const TRANSIENT_RETRY: Duration = Duration::from_millis(200);

/// The partitions one worker reads, and the offset to read next in each.
#[derive(Default)]
pub(crate) struct PartitionCursors {
    partitions: Vec<u32>,
    next: Vec<u64>,
}

impl PartitionCursors {
    /// Reads `partitions`, each from the offset `start` gives it.
    pub(crate) fn new(partitions: Vec<u32>, start: impl Fn(u32) -> u64) -> Self {
        let next = partitions.iter().map(|p| start(*p)).collect();
        Self { partitions, next }
    }

    /// Each partition and the offset it is read from next.
    pub(crate) fn ends(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.partitions
            .iter()
            .copied()
            .zip(self.next.iter().copied())
    }

    /// One pass over the partitions: reads up to `max` new records of each and hands them to
    /// `take` with the partition and its new end (the offset after the last record read,
    /// handed over or refused). A partition whose read fails transiently is left for the
    /// next pass, after a short wait; any other error ends the pass. Returns how many
    /// offsets the pass moved past.
    pub(crate) fn read_pass<E, L>(
        &mut self,
        log: &L,
        max: usize,
        mut take: impl FnMut(u32, &[E::Record], u64),
    ) -> Result<usize, IngestError>
    where
        E: LogEntry,
        L: EntryLog<E> + ?Sized,
    {
        let mut read = 0;
        for (partition, next) in self.partitions.iter().copied().zip(&mut self.next) {
            let batch = match log.read_batch(partition, *next, max) {
                Ok(batch) => batch,
                // A broker that is away: results wait (reads of a position time out) and
                // the worker tries again; nothing is skipped.
                Err(error) if error.is_transient() => {
                    tracing::warn!(
                        partition,
                        %error,
                        "reading the {} log failed; retrying",
                        E::KIND
                    );
                    std::thread::sleep(TRANSIENT_RETRY);
                    continue;
                }
                Err(error) => return Err(error),
            };
            // Records the log refused (dead letters) still move the partition on, and count
            // as read so that the epoch holding the new end is sealed.
            read += (batch.next.saturating_sub(*next) as usize).max(batch.records.len());
            *next = batch.next.max(*next);
            take(partition, &batch.records, *next);
        }
        Ok(read)
    }
}
