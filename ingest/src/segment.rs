//! The embedded vote log: one write-ahead stream of segment files shared by all partitions.
//!
//! ```text
//! <dir>/log.meta                  "canopy-vote-log 4\npartitions <N>\n" (sensor log: 3)
//! <dir>/00000000000000000000.seg  named by the sequence number of its first frame
//!    header  8 bytes "CNPYWAL3" + first sequence number (u64 BE) + partition count P
//!            (u32 BE) + P × the partition's next offset when the segment began (u64 BE)
//!            + CRC32C of all of that (u32 BE)
//!    frame   4 bytes body length n (u32 BE) + 4 bytes CRC32C(length ‖ body) (u32 BE)
//!            body: partition (u32 BE) + offset (u64 BE) + the logged vote (the vote's
//!            canonical encoding, then the voter's 32-byte commitment)
//! ```
//!
//! Partitions are logical: each has its own dense offsets (0, 1, 2, ...), but all share one
//! file, so one `fdatasync` makes a whole round of appends durable whatever partitions they
//! went to. (A file per partition costs one device flush per partition per round; measured
//! here, 8 partitions ran at a third of the speed of one. See ARCHITECTURE.md.)
//!
//! One committer thread takes everything appenders queued since its last round, writes it
//! with one `write`, syncs once, and only then wakes the appenders of that round (group
//! commit). On open, every segment is checked frame by frame: a bad frame in the last
//! segment starts a torn tail, which is wiped; a bad frame anywhere else is corruption, and
//! the log refuses to open rather than serve a history with a hole in it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

use std::marker::PhantomData;

use canopy_schemas::{SensorReading, VoteLogEntry};

use crate::{AppendFuture, EntriesRead, EntryLog, IngestError, LogEntry, Position};

const META_FILE: &str = "log.meta";
const LOCK_FILE: &str = "log.lock";
/// The oldest log format this build opens; a log of it is upgraded in place on open.
const OLDEST_FORMAT: u32 = 3;
const SEGMENT_MAGIC: &[u8; 8] = b"CNPYWAL3";
const FRAME_HEADER_LEN: usize = 8;
const BODY_PREFIX_LEN: usize = 12;
/// How far ahead of the data a segment is written with zeros.
const ZERO_CHUNK: u64 = 8 << 20;
/// The largest single write of zeros.
const ZERO_WRITE: usize = 1 << 20;
/// Far above any vote encoding; a longer length field means a damaged frame.
const MAX_BODY: u32 = 1 << 20;

/// When sealed segments are deleted. The active segment is never deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep everything (the default: the log is the source of truth).
    #[default]
    Forever,
    /// Keep at most this many bytes of sealed segments, oldest deleted first.
    MaxBytes(u64),
}

#[derive(Clone, Debug)]
pub struct SegmentLogConfig {
    /// Partitions of a new log. An existing log keeps the count it was created with.
    pub partitions: u32,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    pub retention: Retention,
}

impl Default for SegmentLogConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            segment_bytes: 64 << 20,
            retention: Retention::Forever,
        }
    }
}

/// What opening the log had to repair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut from the end of the last segment: a round that was never acknowledged.
    pub torn_tail_bytes: u64,
    /// Segment files that held no complete header (a crash during rollover) and were removed.
    pub removed_empty_segments: Vec<PathBuf>,
}

/// The embedded, file-backed [`VoteLog`](crate::VoteLog).
pub type SegmentLog = SegmentEntryLog<VoteLogEntry>;
/// The embedded, file-backed [`SensorLog`](crate::SensorLog): the same segment format,
/// readings as payload.
pub type SensorSegmentLog = SegmentEntryLog<SensorReading>;

/// A durable, partitioned, append-only log of entries of one kind, in segment files.
pub struct SegmentEntryLog<E: LogEntry> {
    dir: PathBuf,
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
    recovery: Recovery,
    entries: PhantomData<fn() -> E>,
    /// Held (an advisory lock) while the log is open.
    _lock: File,
}

impl<E: LogEntry> std::fmt::Debug for SegmentEntryLog<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentEntryLog")
            .field("kind", &E::KIND)
            .field("dir", &self.dir)
            .field("partitions", &self.shared.partition_count)
            .finish()
    }
}

/// What appenders, readers and the committer thread share.
struct Shared {
    dir: PathBuf,
    /// Bytes of a segment header; fixed by the partition count.
    header_len: u64,
    config: SegmentLogConfig,
    partition_count: u32,
    segments: RwLock<Vec<SegmentMeta>>,
    /// Per partition: where the last read stopped, so a sequential reader never rescans.
    read_cursors: Vec<Mutex<Option<ReadCursor>>>,
    queue: Mutex<Queue>,
    /// Wakes the committer when something is queued or the log closes.
    queued: Condvar,
    /// Per partition, every offset below this is durable. Appenders poll it when woken.
    durable_ends: Vec<AtomicU64>,
    /// Set once the committer gave up; the reason is in the queue.
    failed: AtomicBool,
    /// Bumped after every round; appenders sleep on it (a futex) until their round is
    /// durable. One wake-all system call frees a whole round, and no woken appender has to
    /// queue on the mutex again just to learn that it may go.
    rounds: AtomicU32,
    /// Where the data ends: the active segment (by first sequence number) and its length.
    tail: (AtomicU64, AtomicU64),
    /// The same news for async appenders: the round number after each round.
    round_watch: tokio::sync::watch::Sender<u32>,
    /// A fault no test can cause from outside: the committer panics at its next round.
    #[cfg(test)]
    panic_next_round: AtomicBool,
}

/// Fails the log if the committer thread unwinds: its appenders are woken to an error
/// rather than left waiting for a round that never comes (the round's `watch` sender lives
/// on in `Shared`, so its receivers would not hear the thread end).
struct FailOnUnwind<'a>(&'a Shared);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail("the log's committer thread panicked".to_string());
            self.0.publish_round();
        }
    }
}

/// A segment and, per partition, the offsets it holds.
#[derive(Clone, Debug)]
struct SegmentMeta {
    first_sequence: u64,
    /// Per partition, the next offset when the segment began: what survives of a
    /// partition's numbering when retention has deleted all its records.
    starts: Vec<u64>,
    ranges: BTreeMap<u32, (u64, u64)>,
}

impl SegmentMeta {
    fn new(first_sequence: u64, starts: Vec<u64>) -> Self {
        Self {
            first_sequence,
            starts,
            ranges: BTreeMap::new(),
        }
    }

    fn note(&mut self, partition: u32, first: u64, last: u64) {
        let range = self.ranges.entry(partition).or_insert((first, last));
        range.0 = range.0.min(first);
        range.1 = range.1.max(last);
    }
}

struct Queue {
    /// Frames queued for the next round, already encoded.
    pending: Vec<u8>,
    pending_frames: u64,
    /// Per partition, the offset the next queued record gets.
    next_offsets: Vec<u64>,
    failure: Option<String>,
    closing: bool,
    /// The committer is asleep on `queued`; only then does an appender pay for a wake-up.
    committer_idle: bool,
}

/// What one read of a segment asks of the file at a time. A reader polls for the records
/// that became durable since its last read, often a few dozen frames; a buffer of 1 MiB
/// made each poll copy a whole MiB of the file (the zeros written ahead of the data
/// included), and under load those copies were a sixth of the server's CPU.
const READ_BUFFER: usize = 64 * 1024;

/// Where a partition's last read stopped, with its segment still open: a reader that polls
/// every few milliseconds would otherwise pay an `open`, a seek and a `close` each time.
#[derive(Clone)]
struct ReadCursor {
    segment: u64,
    byte: u64,
    next_offset: u64,
    file: Arc<File>,
}

/// Reads a file from a position with `pread`: no seek per poll, and two readers of one
/// partition (the engine and the lake writer) holding the cursor's file at once do not move
/// each other's position.
struct ReadAt<'f> {
    file: &'f File,
    position: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read_at(buf, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

impl<E: LogEntry> SegmentEntryLog<E> {
    /// Opens the log in `dir`, creating it if it does not exist. Checks every frame, cuts a
    /// torn tail, and refuses a log with damage anywhere else.
    pub fn open(dir: impl AsRef<Path>, config: SegmentLogConfig) -> Result<Self, IngestError> {
        let dir = dir.as_ref().to_path_buf();
        if config.partitions == 0 {
            return Err(IngestError::BadLog {
                path: dir,
                reason: "a log needs at least one partition".into(),
            });
        }
        fs::create_dir_all(&dir).map_err(IngestError::io(&dir))?;
        // One process at a time: opening recovers the tail, which would cut a round another
        // process is writing (a `canopy tally` or `lake sync` beside a running node).
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(IngestError::io(&lock_path))?;
        lock.try_lock().map_err(|_| IngestError::BadLog {
            path: dir.clone(),
            reason: "another process has this log open (a running node?); stop it first".into(),
        })?;
        let (partition_count, format) =
            read_or_create_meta(&dir, config.partitions, E::KIND, E::LOG_FORMAT)?;
        if format < E::LOG_FORMAT {
            upgrade_entries::<E>(&dir, partition_count)?;
            write_meta(&dir, E::KIND, E::LOG_FORMAT, partition_count)?;
        }
        let mut recovery = Recovery::default();
        let mut recovered = recover(&dir, partition_count, &mut recovery)?;
        // The first round's room is zeroed now rather than under the first vote: on a new
        // log that round otherwise writes and flushes 8 MiB of zeros (16–30 ms here).
        let active = &mut recovered.active;
        if active.len < config.segment_bytes
            && active.ensure_zeroed(active.len + 1, config.segment_bytes)?
        {
            active
                .file
                .sync_data()
                .map_err(IngestError::io(&active.path))?;
        }
        let tail = (
            AtomicU64::new(recovered.active.first_sequence),
            AtomicU64::new(recovered.active.len),
        );
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            header_len: header_len(partition_count),
            config,
            partition_count,
            segments: RwLock::new(recovered.segments),
            read_cursors: (0..partition_count).map(|_| Mutex::new(None)).collect(),
            durable_ends: recovered
                .ends
                .iter()
                .map(|end| AtomicU64::new(*end))
                .collect(),
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                pending_frames: 0,
                next_offsets: recovered.ends,
                failure: None,
                closing: false,
                committer_idle: false,
            }),
            queued: Condvar::new(),
            failed: AtomicBool::new(false),
            rounds: AtomicU32::new(0),
            tail,
            round_watch: tokio::sync::watch::Sender::new(0),
            #[cfg(test)]
            panic_next_round: AtomicBool::new(false),
        });
        let committer_shared = Arc::clone(&shared);
        let active = recovered.active;
        let committer = std::thread::Builder::new()
            .name("canopy-log-commit".into())
            .spawn(move || committer_shared.run_committer(active))
            .map_err(IngestError::io(&dir))?;
        Ok(Self {
            dir,
            shared,
            committer: Some(committer),
            recovery,
            entries: PhantomData,
            _lock: lock,
        })
    }

    /// The active segment and where its data ends (the zeros after it are room to grow):
    /// where the next frame will be written.
    pub fn tail(&self) -> (PathBuf, u64) {
        let first = self.shared.tail.0.load(Ordering::Acquire);
        (
            segment_path(&self.dir, first),
            self.shared.tail.1.load(Ordering::Acquire),
        )
    }

    /// What opening had to repair.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes the oldest sealed segments whose records are all covered: every record of
    /// partition p in them lies below `covered[p]` (for instance, a checkpoint's positions).
    /// Returns how many segments were deleted.
    pub fn delete_before(&self, covered: &[u64]) -> Result<usize, IngestError> {
        let mut segments = self.shared.write_segments();
        let mut deleted = 0;
        while segments.len() > 1 {
            let all_covered = segments[0].ranges.iter().all(|(partition, (_, last))| {
                covered.get(*partition as usize).is_some_and(|c| *last < *c)
            });
            if !all_covered {
                break;
            }
            let path = segment_path(&self.dir, segments[0].first_sequence);
            fs::remove_file(&path).map_err(IngestError::io(&path))?;
            segments.remove(0);
            deleted += 1;
        }
        let first_kept = segments[0].first_sequence;
        drop(segments);
        self.shared.release_cursors_before(first_kept);
        Ok(deleted)
    }

    /// Reads every durable record of every partition again, checking every frame: the way
    /// to ask "is this log still sound?" without serving anything. Returns the record count.
    pub fn verify(&self) -> Result<u64, IngestError> {
        let mut total = 0;
        for partition in 0..self.shared.partition_count {
            let mut from = self.earliest_offset(partition)?;
            loop {
                let batch = self.read_entries(partition, from, 65_536)?;
                let Some((last, _)) = batch.last() else { break };
                from = last.offset + 1;
                total += batch.len() as u64;
            }
        }
        Ok(total)
    }

    /// The first offset of `partition` that retention has kept.
    pub fn earliest_offset(&self, partition: u32) -> Result<u64, IngestError> {
        self.check_partition(partition)?;
        Ok(self.shared.read_segments()[0].starts[partition as usize])
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> Result<u64, IngestError> {
        let segments = self.shared.read_segments();
        let mut total = 0;
        for segment in segments.iter() {
            let path = segment_path(&self.dir, segment.first_sequence);
            total += fs::metadata(&path).map_err(IngestError::io(&path))?.len();
        }
        Ok(total)
    }

    fn check_partition(&self, partition: u32) -> Result<(), IngestError> {
        IngestError::unless_partition_exists(partition, self.shared.partition_count)
    }
}

impl<E: LogEntry> EntryLog<E> for SegmentEntryLog<E> {
    fn partitions(&self) -> u32 {
        self.shared.partition_count
    }

    fn append(&self, entries: &[E]) -> Result<Vec<Position>, IngestError> {
        let (positions, waits) = self.enqueue(entries)?;
        loop {
            let round = self.shared.rounds.load(Ordering::Acquire);
            if self.shared.durable(&waits)? {
                return Ok(positions);
            }
            atomic_wait::wait(&self.shared.rounds, round);
        }
    }

    fn append_async<'a>(&'a self, entries: &'a [E]) -> AppendFuture<'a> {
        Box::pin(async move {
            let mut rounds = self.shared.round_watch.subscribe();
            let (positions, waits) = self.enqueue(entries)?;
            loop {
                if self.shared.durable(&waits)? {
                    return Ok(positions);
                }
                if rounds.changed().await.is_err() {
                    // The committer is gone: the log closed or failed after this round.
                    return match self.shared.durable(&waits)? {
                        true => Ok(positions),
                        false => Err(IngestError::Closed),
                    };
                }
            }
        })
    }

    fn read_entries(&self, partition: u32, from: u64, max: usize) -> EntriesRead<E> {
        self.check_partition(partition)?;
        let end = self.shared.durable_ends[partition as usize].load(Ordering::Acquire);
        let until = end.min(from.saturating_add(max as u64));
        if from >= until {
            return Ok(Vec::new());
        }
        self.shared.read(partition, from, until)
    }

    fn end_offset(&self, partition: u32) -> Result<u64, IngestError> {
        self.check_partition(partition)?;
        Ok(self.shared.durable_ends[partition as usize].load(Ordering::Acquire))
    }
}

impl<E: LogEntry> SegmentEntryLog<E> {
    /// Queues `entries` for the next round; returns their positions and, per partition
    /// touched, the end offset that must become durable.
    #[allow(clippy::type_complexity)]
    fn enqueue(&self, entries: &[E]) -> Result<(Vec<Position>, Vec<(u32, u64)>), IngestError> {
        let partition_count = self.shared.partition_count;
        let mut positions = Vec::with_capacity(entries.len());
        let mut waits: Vec<(u32, u64)> = Vec::with_capacity(1);
        let wake_committer = {
            let mut queue = self.shared.lock_queue();
            if let Some(reason) = &queue.failure {
                return Err(IngestError::Failed {
                    reason: reason.clone(),
                });
            }
            if queue.closing {
                return Err(IngestError::Closed);
            }
            for entry in entries {
                let partition = entry.partition(partition_count);
                let offset = queue.next_offsets[partition as usize];
                queue.next_offsets[partition as usize] += 1;
                encode_frame(
                    partition,
                    offset,
                    |out| entry.encode_into(out),
                    &mut queue.pending,
                );
                positions.push(Position { partition, offset });
                match waits.iter_mut().find(|(p, _)| *p == partition) {
                    Some(wait) => wait.1 = offset + 1,
                    None => waits.push((partition, offset + 1)),
                }
            }
            queue.pending_frames += entries.len() as u64;
            std::mem::take(&mut queue.committer_idle)
        };
        if wake_committer {
            self.shared.queued.notify_one();
        }
        Ok((positions, waits))
    }
}

impl<E: LogEntry> Drop for SegmentEntryLog<E> {
    /// Stops accepting appends, lets the committer make what is queued durable, and waits.
    fn drop(&mut self) {
        self.shared.lock_queue().closing = true;
        self.shared.queued.notify_all();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every (partition, end) is durable; the log's failure if it failed first.
    fn durable(&self, waits: &[(u32, u64)]) -> Result<bool, IngestError> {
        if waits
            .iter()
            .all(|(p, end)| self.durable_ends[*p as usize].load(Ordering::Acquire) >= *end)
        {
            return Ok(true);
        }
        if self.failed.load(Ordering::Acquire) {
            let reason = self.lock_queue().failure.clone().unwrap_or_default();
            return Err(IngestError::Failed { reason });
        }
        Ok(false)
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<SegmentMeta>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Vec<SegmentMeta>> {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The group commit loop: take everything queued, write it, make it durable, wake its
    /// appenders; meanwhile the next round queues up.
    fn run_committer(self: Arc<Self>, mut active: ActiveSegment) {
        let _unwinding = FailOnUnwind(&self);
        let mut round = Vec::new();
        loop {
            let (round_frames, round_ends) = {
                let mut queue = self.lock_queue();
                while !queue.closing && queue.pending.is_empty() {
                    queue.committer_idle = true;
                    queue = self
                        .queued
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                queue.committer_idle = false;
                if queue.pending.is_empty() {
                    return;
                }
                std::mem::swap(&mut round, &mut queue.pending);
                (
                    std::mem::take(&mut queue.pending_frames),
                    queue.next_offsets.clone(),
                )
            };
            #[cfg(test)]
            if self.panic_next_round.swap(false, Ordering::AcqRel) {
                panic!("a fault injected into the committer");
            }
            let written = self.write_round(&mut active, &round, round_frames, &round_ends);
            metrics::histogram!("canopy_log_flush_entries").record(round_frames as f64);
            round.clear();
            match written {
                Ok(()) => {
                    for (partition, end) in round_ends.iter().enumerate() {
                        self.durable_ends[partition].store(*end, Ordering::Release);
                    }
                }
                Err(error) => self.fail(error.to_string()),
            }
            self.publish_round();
            if self.failed.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Tells every appender, sync and async, that a round ended.
    fn publish_round(&self) {
        let round = self.rounds.fetch_add(1, Ordering::AcqRel) + 1;
        atomic_wait::wake_all(&self.rounds);
        self.round_watch.send_replace(round);
    }

    /// Fails the log: appenders hear the reason when next woken, later appends are refused.
    fn fail(&self, reason: String) {
        self.lock_queue().failure.get_or_insert(reason);
        self.failed.store(true, Ordering::Release);
    }

    fn write_round(
        &self,
        active: &mut ActiveSegment,
        frames: &[u8],
        frame_count: u64,
        ends: &[u64],
    ) -> Result<(), IngestError> {
        if active.len >= self.config.segment_bytes {
            let starts: Vec<u64> = self
                .durable_ends
                .iter()
                .map(|end| end.load(Ordering::Acquire))
                .collect();
            *active = ActiveSegment::create(&self.dir, active.next_sequence, &starts)?;
            self.write_segments()
                .push(SegmentMeta::new(active.next_sequence, starts));
            self.enforce_retention()?;
        }
        active.ensure_zeroed(active.len + frames.len() as u64, self.config.segment_bytes)?;
        active
            .file
            .write_all_at(frames, active.len)
            .map_err(IngestError::io(&active.path))?;
        active
            .file
            .sync_data()
            .map_err(IngestError::io(&active.path))?;
        active.len += frames.len() as u64;
        self.tail.0.store(active.first_sequence, Ordering::Release);
        self.tail.1.store(active.len, Ordering::Release);
        active.next_sequence += frame_count;
        let mut segments = self.write_segments();
        let meta = segments.last_mut().expect("the active segment is listed");
        for (partition, end) in ends.iter().enumerate() {
            let start = self.durable_ends[partition].load(Ordering::Acquire);
            if *end > start {
                meta.note(partition as u32, start, end - 1);
            }
        }
        Ok(())
    }

    fn enforce_retention(&self) -> Result<(), IngestError> {
        let Retention::MaxBytes(limit) = self.config.retention else {
            return Ok(());
        };
        let mut segments = self.write_segments();
        let sealed = &segments[..segments.len() - 1];
        let mut sizes = Vec::with_capacity(sealed.len());
        for segment in sealed {
            let path = segment_path(&self.dir, segment.first_sequence);
            sizes.push(fs::metadata(&path).map_err(IngestError::io(&path))?.len());
        }
        let mut total: u64 = sizes.iter().sum();
        let mut delete = 0;
        while total > limit && delete < sizes.len() {
            total -= sizes[delete];
            delete += 1;
        }
        for segment in segments.drain(..delete) {
            let path = segment_path(&self.dir, segment.first_sequence);
            fs::remove_file(&path).map_err(IngestError::io(&path))?;
        }
        let first_kept = segments[0].first_sequence;
        drop(segments);
        self.release_cursors_before(first_kept);
        Ok(())
    }

    /// Closes the segments read cursors hold open that were deleted, so their disk space is
    /// freed now, not at the partition's next read (an idle partition has none).
    fn release_cursors_before(&self, first_kept: u64) {
        for cursor in &self.read_cursors {
            let mut cursor = cursor.lock().unwrap_or_else(PoisonError::into_inner);
            if cursor.as_ref().is_some_and(|c| c.segment < first_kept) {
                *cursor = None;
            }
        }
    }

    /// Reads records [from, until) of `partition`, all known durable.
    fn read<E: LogEntry>(
        &self,
        partition: u32,
        from: u64,
        until: u64,
    ) -> Result<Vec<(Position, E)>, IngestError> {
        // Per segment: its first sequence number and this partition's (first, last) offsets in it.
        type PartitionRanges = Vec<(u64, Option<(u64, u64)>)>;
        let (segments, earliest): (PartitionRanges, u64) = {
            let segments = self.read_segments();
            let ranges = segments
                .iter()
                .map(|s| (s.first_sequence, s.ranges.get(&partition).copied()))
                .collect();
            (ranges, segments[0].starts[partition as usize])
        };
        if from < earliest {
            return Err(IngestError::Trimmed {
                partition,
                offset: from,
                earliest,
            });
        }
        // Start at the segment holding `from`, or where the last read of this partition
        // stopped if that is on the way.
        let mut start = segments
            .iter()
            .position(|(_, range)| range.is_some_and(|(_, last)| last >= from))
            .map(|index| (index, self.header_len, 0));
        let cursor = self.read_cursors[partition as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut open_file = None;
        if let (Some(cursor), Some((index, _, _))) = (cursor, start) {
            let cursor_index = segments
                .iter()
                .position(|(first, _)| *first == cursor.segment);
            if cursor_index == Some(index) && cursor.next_offset <= from {
                start = Some((index, cursor.byte, cursor.next_offset));
                open_file = Some(cursor.file);
            }
        }
        let Some((mut index, mut byte, _)) = start else {
            return Err(IngestError::Corrupt {
                partition,
                segment: self.dir.clone(),
                byte: 0,
                offset: from,
                reason: "no segment holds this durable offset".into(),
            });
        };
        let mut out = Vec::with_capacity((until - from).min(65_536) as usize);
        let mut next = from;
        let mut body = Vec::with_capacity(128);
        while next < until {
            let Some((first_sequence, _)) = segments.get(index) else {
                return Err(IngestError::Corrupt {
                    partition,
                    segment: self.dir.clone(),
                    byte: 0,
                    offset: next,
                    reason: format!("the log ends before offset {until}"),
                });
            };
            let path = segment_path(&self.dir, *first_sequence);
            let file = match open_file
                .take()
                .map_or_else(|| File::open(&path).map(Arc::new), Ok)
            {
                Ok(file) => file,
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    return Err(IngestError::Trimmed {
                        partition,
                        offset: next,
                        earliest: next + 1,
                    });
                }
                Err(error) => {
                    return Err(IngestError::Io {
                        path,
                        source: error,
                    });
                }
            };
            let mut reader = BufReader::with_capacity(
                READ_BUFFER,
                ReadAt {
                    file: &file,
                    position: byte,
                },
            );
            let corrupt = |byte: u64, offset: u64, reason: String| IngestError::Corrupt {
                partition,
                segment: path.clone(),
                byte,
                offset,
                reason,
            };
            loop {
                let frame = read_frame(&mut reader, &mut body).map_err(IngestError::io(&path))?;
                match frame {
                    FrameRead::Frame {
                        partition: p,
                        offset,
                    } => {
                        byte += (FRAME_HEADER_LEN + body.len()) as u64;
                        if p != partition || offset < from {
                            continue;
                        }
                        if offset != next {
                            return Err(corrupt(
                                byte,
                                next,
                                format!("found offset {offset} where {next} belongs"),
                            ));
                        }
                        let entry = E::decode(&body[BODY_PREFIX_LEN..])
                            .map_err(|reason| corrupt(byte, next, reason))?;
                        out.push((Position { partition, offset }, entry));
                        next += 1;
                        if next == until {
                            break;
                        }
                    }
                    FrameRead::End => {
                        index += 1;
                        byte = self.header_len;
                        break;
                    }
                    FrameRead::Damaged(reason) => return Err(corrupt(byte, next, reason)),
                }
            }
            if next == until {
                *self.read_cursors[partition as usize]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(ReadCursor {
                    segment: *first_sequence,
                    byte,
                    next_offset: next,
                    file,
                });
            }
        }
        Ok(out)
    }
}

struct ActiveSegment {
    path: PathBuf,
    file: File,
    /// Where the next frame goes: the end of the data.
    len: u64,
    /// The file is written with zeros up to here (durably, once a round has synced).
    zeroed_end: u64,
    /// The sequence number of its first frame: its name.
    first_sequence: u64,
    /// The sequence number the next frame written will have.
    next_sequence: u64,
}

impl ActiveSegment {
    fn create(dir: &Path, first_sequence: u64, starts: &[u64]) -> Result<Self, IngestError> {
        let path = segment_path(dir, first_sequence);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(IngestError::io(&path))?;
        let header = encode_header(first_sequence, starts);
        file.write_all_at(&header, 0)
            .map_err(IngestError::io(&path))?;
        file.sync_all().map_err(IngestError::io(&path))?;
        sync_dir(dir)?;
        Ok(Self {
            path,
            file,
            len: header.len() as u64,
            zeroed_end: header.len() as u64,
            first_sequence,
            next_sequence: first_sequence,
        })
    }

    /// Makes sure the file is written (with zeros) up to `needed`, a chunk ahead at a time
    /// but not past the segment's size. Overwriting blocks that already exist lets
    /// `fdatasync` skip the journal commit that a growing file needs: measured here, 64
    /// appenders went from 86–110 k to 136–149 k appends/s (PostgreSQL pre-zeroes its WAL
    /// segments for the same reason).
    /// Returns whether it wrote any.
    fn ensure_zeroed(&mut self, needed: u64, segment_bytes: u64) -> Result<bool, IngestError> {
        if needed <= self.zeroed_end {
            return Ok(false);
        }
        let target = needed.max((self.zeroed_end + ZERO_CHUNK).min(segment_bytes));
        let zeros = vec![0u8; ZERO_WRITE.min((target - self.zeroed_end) as usize)];
        while self.zeroed_end < target {
            let n = zeros.len().min((target - self.zeroed_end) as usize);
            self.file
                .write_all_at(&zeros[..n], self.zeroed_end)
                .map_err(IngestError::io(&self.path))?;
            self.zeroed_end += n as u64;
        }
        Ok(true)
    }
}

fn header_len(partitions: u32) -> u64 {
    8 + 8 + 4 + 8 * u64::from(partitions) + 4
}

fn encode_header(first_sequence: u64, starts: &[u64]) -> Vec<u8> {
    let mut header = Vec::with_capacity(header_len(starts.len() as u32) as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&first_sequence.to_be_bytes());
    header.extend_from_slice(&(starts.len() as u32).to_be_bytes());
    for start in starts {
        header.extend_from_slice(&start.to_be_bytes());
    }
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_be_bytes());
    header
}

/// The partition starts of a segment header, if it is intact and matches the segment's name.
fn decode_header(header: &[u8], first_sequence: u64, partitions: u32) -> Option<Vec<u64>> {
    let (content, crc) = header.split_at(header.len().checked_sub(4)?);
    let intact = crc32c::crc32c(content).to_be_bytes() == crc
        && &content[..8] == SEGMENT_MAGIC
        && content[8..16] == first_sequence.to_be_bytes()
        && content[16..20] == partitions.to_be_bytes();
    intact.then(|| {
        content[20..]
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect()
    })
}

fn segment_path(dir: &Path, first_sequence: u64) -> PathBuf {
    dir.join(format!("{first_sequence:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), IngestError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IngestError::io(dir))
}

fn encode_frame(
    partition: u32,
    offset: u64,
    write_payload: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    write_payload(out);
    let len = ((out.len() - start - FRAME_HEADER_LEN) as u32).to_be_bytes();
    out[start..start + 4].copy_from_slice(&len);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &out[start + FRAME_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

enum FrameRead {
    Frame {
        partition: u32,
        offset: u64,
    },
    /// Clean end of the file, at a frame boundary.
    End,
    Damaged(String),
}

/// Reads one frame into `body` (partition, offset and payload), checking its checksum.
fn read_frame(reader: &mut impl Read, body: &mut Vec<u8>) -> std::io::Result<FrameRead> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let got = read_full(reader, &mut header)?;
    // The end of the data: the end of the file, or the zeros written ahead of it.
    if got == 0 || (got == FRAME_HEADER_LEN && header == [0u8; FRAME_HEADER_LEN]) {
        return Ok(FrameRead::End);
    }
    if got < FRAME_HEADER_LEN {
        return Ok(FrameRead::Damaged(format!(
            "a frame header is cut short after {got} bytes"
        )));
    }
    let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    if len as usize <= BODY_PREFIX_LEN || len > MAX_BODY {
        return Ok(FrameRead::Damaged(format!(
            "a frame claims an impossible length of {len} bytes"
        )));
    }
    body.resize(len as usize, 0);
    let got = read_full(reader, body)?;
    if got < len as usize {
        return Ok(FrameRead::Damaged(format!(
            "a frame of {len} bytes is cut short after {got}"
        )));
    }
    if crc32c::crc32c_append(crc32c::crc32c(&header[0..4]), body) != crc {
        return Ok(FrameRead::Damaged("checksum mismatch".into()));
    }
    Ok(FrameRead::Frame {
        partition: u32::from_be_bytes(body[0..4].try_into().expect("4 bytes")),
        offset: u64::from_be_bytes(body[4..12].try_into().expect("8 bytes")),
    })
}

/// The offset of the last byte in [from, to) of `file` that is not zero.
fn last_nonzero_byte(file: &File, from: u64, to: u64) -> std::io::Result<Option<u64>> {
    let mut buffer = vec![0u8; ZERO_WRITE];
    let mut last = None;
    let mut at = from;
    while at < to {
        let n = buffer.len().min((to - at) as usize);
        file.read_exact_at(&mut buffer[..n], at)?;
        if let Some(i) = buffer[..n].iter().rposition(|b| *b != 0) {
            last = Some(at + i as u64);
        }
        at += n as u64;
    }
    Ok(last)
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(got)
}

/// The log's partition count and format version, written for a new log.
fn read_or_create_meta(
    dir: &Path,
    partitions: u32,
    kind: &str,
    format: u32,
) -> Result<(u32, u32), IngestError> {
    let path = dir.join(META_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let bad = |reason: &str| IngestError::BadLog {
                path: path.clone(),
                reason: reason.into(),
            };
            let mut lines = text.lines();
            let found = lines
                .next()
                .and_then(|line| line.strip_prefix(&format!("canopy-{kind}-log ")))
                .and_then(|version| version.parse::<u32>().ok())
                .filter(|version| (OLDEST_FORMAT..=format).contains(version))
                .ok_or_else(|| {
                    bad(&format!(
                        "not a canopy {kind} log of a version this build reads"
                    ))
                })?;
            let partitions = lines
                .next()
                .and_then(|line| line.strip_prefix("partitions "))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("the partition count is missing or invalid"))?;
            Ok((partitions, found))
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {
            write_meta(dir, kind, format, partitions)?;
            Ok((partitions, format))
        }
        Err(error) => Err(IngestError::Io {
            path,
            source: error,
        }),
    }
}

fn write_meta(dir: &Path, kind: &str, format: u32, partitions: u32) -> Result<(), IngestError> {
    let path = dir.join(META_FILE);
    let temp = dir.join(format!("{META_FILE}.tmp"));
    let mut file = File::create(&temp).map_err(IngestError::io(&temp))?;
    write!(
        file,
        "canopy-{kind}-log {format}\npartitions {partitions}\n"
    )
    .map_err(IngestError::io(&temp))?;
    file.sync_all().map_err(IngestError::io(&temp))?;
    fs::rename(&temp, &path).map_err(IngestError::io(&path))?;
    sync_dir(dir)
}

/// Rewrites every segment with each entry as this build writes it ([`LogEntry::upgrade`]),
/// one segment at a time into a new file renamed over the old. Positions, sequence numbers
/// and headers stay; only payloads change. What follows a damaged frame is copied as it
/// is, for recovery to judge. Safe to repeat after a crash: a current entry is kept.
fn upgrade_entries<E: LogEntry>(dir: &Path, partitions: u32) -> Result<(), IngestError> {
    let header_len = header_len(partitions) as usize;
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(IngestError::io(dir))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    paths.sort();
    let mut upgraded = 0u64;
    for path in &paths {
        let bytes = fs::read(path).map_err(IngestError::io(path))?;
        if bytes.len() <= header_len {
            continue;
        }
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2);
        out.extend_from_slice(&bytes[..header_len]);
        let mut reader = &bytes[header_len..];
        let mut body = Vec::with_capacity(256);
        loop {
            let before = reader.len();
            match read_frame(&mut reader, &mut body).map_err(IngestError::io(path))? {
                FrameRead::Frame { partition, offset } => {
                    let payload = &body[BODY_PREFIX_LEN..];
                    let new_payload = E::upgrade(payload);
                    upgraded += u64::from(new_payload.is_some());
                    let payload = new_payload.as_deref().unwrap_or(payload);
                    encode_frame(
                        partition,
                        offset,
                        |out| out.extend_from_slice(payload),
                        &mut out,
                    );
                }
                FrameRead::End => break,
                FrameRead::Damaged(_) => {
                    let at = bytes.len() - before;
                    out.extend_from_slice(&bytes[at..]);
                    break;
                }
            }
        }
        let temp = path.with_extension("seg.upgrade");
        let mut file = File::create(&temp).map_err(IngestError::io(&temp))?;
        file.write_all(&out).map_err(IngestError::io(&temp))?;
        file.sync_all().map_err(IngestError::io(&temp))?;
        fs::rename(&temp, path).map_err(IngestError::io(path))?;
    }
    sync_dir(dir)?;
    if upgraded > 0 {
        tracing::info!(
            dir = %dir.display(),
            entries = upgraded,
            segments = paths.len(),
            "upgraded the {} log's entries to format {}",
            E::KIND,
            E::LOG_FORMAT
        );
    }
    Ok(())
}

struct Recovered {
    segments: Vec<SegmentMeta>,
    ends: Vec<u64>,
    active: ActiveSegment,
}

/// Scans every segment: builds each one's per-partition offset ranges, checks that each
/// partition's offsets run on without a gap, wipes the torn tail of the last segment.
fn recover(dir: &Path, partitions: u32, recovery: &mut Recovery) -> Result<Recovered, IngestError> {
    let header_len = header_len(partitions);
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(IngestError::io(dir))? {
        let entry = entry.map_err(IngestError::io(dir))?;
        let name = entry.file_name();
        if let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    // A last segment whose header never became durable holds no records: a crash mid-rollover
    // (the file may even have its full length but not yet its contents).
    while let Some(&last) = firsts.last() {
        let path = segment_path(dir, last);
        let len = fs::metadata(&path).map_err(IngestError::io(&path))?.len();
        let header_written = len > header_len
            || len == header_len
                && fs::read(&path)
                    .map(|header| decode_header(&header, last, partitions).is_some())
                    .map_err(IngestError::io(&path))?;
        if header_written {
            break;
        }
        fs::remove_file(&path).map_err(IngestError::io(&path))?;
        recovery.removed_empty_segments.push(path);
        firsts.pop();
    }
    let mut ends: Option<Vec<u64>> = None;
    let mut segments = Vec::with_capacity(firsts.len());
    let mut body = Vec::with_capacity(128);
    let mut expected_sequence = None;
    for (index, first) in firsts.iter().enumerate() {
        let is_last = index + 1 == firsts.len();
        let path = segment_path(dir, *first);
        let corrupt =
            |byte: u64, partition: u32, offset: u64, reason: String| IngestError::Corrupt {
                partition,
                segment: path.clone(),
                byte,
                offset,
                reason,
            };
        if let Some(expected) = expected_sequence.filter(|expected| *expected != *first) {
            return Err(corrupt(
                0,
                0,
                0,
                format!(
                    "a segment is missing before this one (expected one starting at frame {expected})"
                ),
            ));
        }
        let file = File::open(&path).map_err(IngestError::io(&path))?;
        let file_len = file.metadata().map_err(IngestError::io(&path))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = vec![0u8; header_len as usize];
        let got = read_full(&mut reader, &mut header).map_err(IngestError::io(&path))?;
        let Some(starts) = decode_header(&header[..got], *first, partitions) else {
            return Err(corrupt(
                0,
                0,
                0,
                "the segment header is damaged or does not match its name".into(),
            ));
        };
        if ends.as_ref().is_some_and(|ends| *ends != starts) {
            return Err(corrupt(
                0,
                0,
                0,
                "the segment does not continue where the one before it ended".into(),
            ));
        }
        let mut partition_ends = starts.clone();
        let mut meta = SegmentMeta::new(*first, starts);
        let (mut byte, mut sequence) = (header_len, *first);
        loop {
            match read_frame(&mut reader, &mut body).map_err(IngestError::io(&path))? {
                FrameRead::Frame { partition, offset } => {
                    let in_order = partition_ends.get(partition as usize) == Some(&offset);
                    if !in_order {
                        if is_last {
                            break;
                        }
                        return Err(corrupt(
                            byte,
                            partition,
                            offset,
                            format!("partition {partition} offset {offset} is out of sequence"),
                        ));
                    }
                    partition_ends[partition as usize] = offset + 1;
                    meta.note(partition, offset, offset);
                    byte += (FRAME_HEADER_LEN + body.len()) as u64;
                    sequence += 1;
                }
                FrameRead::End => break,
                FrameRead::Damaged(reason) => {
                    if is_last {
                        break;
                    }
                    let (partition, offset) = next_expected(&partition_ends, &meta);
                    return Err(corrupt(
                        byte,
                        partition,
                        offset,
                        format!("{reason} (frame {} of the segment)", sequence - first),
                    ));
                }
            }
        }
        drop(reader);
        if is_last && byte < file_len {
            // Everything after the last whole frame was never acknowledged: wipe it, so no
            // stale frame can ever be read after the new ones written over it.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(IngestError::io(&path))?;
            if let Some(last_nonzero) =
                last_nonzero_byte(&file, byte, file_len).map_err(IngestError::io(&path))?
            {
                let zeros = vec![0u8; (last_nonzero + 1 - byte) as usize];
                file.write_all_at(&zeros, byte)
                    .map_err(IngestError::io(&path))?;
                file.sync_all().map_err(IngestError::io(&path))?;
                recovery.torn_tail_bytes = last_nonzero + 1 - byte;
            }
        }
        ends = Some(partition_ends);
        expected_sequence = Some(sequence);
        segments.push((meta, byte, sequence));
    }
    let (ends, active) = match (ends, segments.last()) {
        (Some(ends), Some((meta, len, next_sequence))) => {
            let path = segment_path(dir, meta.first_sequence);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(IngestError::io(&path))?;
            let zeroed_end = file
                .metadata()
                .map_err(IngestError::io(&path))?
                .len()
                .max(*len);
            (
                ends,
                ActiveSegment {
                    path,
                    file,
                    len: *len,
                    zeroed_end,
                    first_sequence: meta.first_sequence,
                    next_sequence: *next_sequence,
                },
            )
        }
        _ => {
            let starts = vec![0; partitions as usize];
            let active = ActiveSegment::create(dir, 0, &starts)?;
            segments.push((SegmentMeta::new(0, starts.clone()), active.len, 0));
            (starts, active)
        }
    };
    Ok(Recovered {
        segments: segments.into_iter().map(|(meta, _, _)| meta).collect(),
        ends,
        active,
    })
}

/// For an error message: the partition and offset most likely lost at a damaged frame
/// (the partition with the most records in the segment, at its next offset).
fn next_expected(ends: &[u64], meta: &SegmentMeta) -> (u32, u64) {
    let busiest = meta
        .ranges
        .iter()
        .max_by_key(|(_, (first, last))| last - first)
        .map_or(0, |(p, _)| *p);
    (busiest, ends.get(busiest as usize).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_schemas::{
        Ballot, Component, DecisionId, LoggedVote, Vote, VoteId, VoterId, VoterSalt, Weight,
    };

    fn vote(n: u128) -> VoteLogEntry {
        let vote = Vote {
            vote_id: VoteId(n),
            decision_id: DecisionId(1),
            voter_id: VoterId(n),
            ballot: Ballot::single_choice(0).unwrap(),
            component: Component::Democratic,
            weight: Weight::ONE,
            cast_at: 1_500,
        };
        VoteLogEntry::Vote(LoggedVote::new(vote, &VoterSalt([7; 32])))
    }

    /// A committer that panics fails the log: appenders waiting on its round, sync and
    /// async, get the reason instead of waiting forever, and later appends are refused.
    #[test]
    fn a_committer_that_panics_fails_the_log_and_frees_its_appenders() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(
            SegmentEntryLog::<VoteLogEntry>::open(dir.path(), SegmentLogConfig::default()).unwrap(),
        );
        let first = log.append(&[vote(0)]).unwrap()[0];
        log.shared.panic_next_round.store(true, Ordering::Release);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sync_log = Arc::clone(&log);
        let (sync_sender, sync_outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || sync_sender.send(sync_log.append(&[vote(1)])));
        let async_outcome = runtime.block_on(async {
            let entries = [vote(2)];
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                log.append_async(&entries),
            )
            .await
            .expect("an async appender waited 10 s for a committer that had panicked")
        });
        let sync_outcome = sync_outcome
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a thread appender waited 10 s for a committer that had panicked");
        for outcome in [async_outcome, sync_outcome] {
            match outcome {
                Err(IngestError::Failed { reason }) => assert!(reason.contains("panicked")),
                other => panic!("expected the log's failure, got {other:?}"),
            }
        }
        assert!(matches!(
            log.append(&[vote(3)]),
            Err(IngestError::Failed { .. })
        ));
        assert_eq!(
            log.end_offset(first.partition).unwrap(),
            first.offset + 1,
            "the vote before the fault stays durable"
        );
    }
}
