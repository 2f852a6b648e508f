use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use canopy_ingest::*;
use canopy_schemas::*;

mod common;
use common::{append_and_read_back, vote};

fn config(partitions: u32, segment_bytes: u64) -> SegmentLogConfig {
    SegmentLogConfig {
        partitions,
        segment_bytes,
        retention: Retention::Forever,
    }
}

fn read_all(log: &SegmentLog, partition: u32) -> Result<Vec<LogRecord>, IngestError> {
    let mut out = Vec::new();
    let mut from = log.earliest_offset(partition)?;
    loop {
        let batch = log.read_votes(partition, from, 1000)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        from = last.position.offset + 1;
        out.extend(batch);
    }
}

/// Frame header (8), partition and offset (12), the logged vote (152).
const FRAME: u64 = 8 + 12 + canopy_schemas::LOGGED_VOTE_LEN as u64;

fn header(partitions: u64) -> u64 {
    24 + 8 * partitions
}

/// Writes `bytes` at `offset` of `file`, as a crash or a failing disk would leave them.
fn overwrite(file: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

/// Opens a one-partition log of small segments and appends `count` votes one at a time
/// (a round each), so that they spread over several segments.
fn one_vote_per_round(dir: &Path, count: u128) -> SegmentLog {
    let log = SegmentLog::open(dir, config(1, 1024)).unwrap();
    for n in 0..count {
        log.append_votes(&[vote(1, n, n)]).unwrap();
    }
    log
}

#[test]
fn appended_votes_read_back_in_order_at_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path(), config(4, 1 << 20)).unwrap();
    let votes: Vec<LoggedVote> = (0..200).map(|n| vote(n % 7, n, n)).collect();
    append_and_read_back(&log, &votes);
}

#[test]
fn concurrent_appenders_share_fsyncs_and_get_distinct_positions() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SegmentLog::open(dir.path(), config(2, 64 << 10)).unwrap());
    let threads: Vec<_> = (0..16u128)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..300u128)
                    .map(|n| {
                        (
                            log.append_votes(&[vote(n % 5, t, t * 1000 + n)]).unwrap()[0],
                            t * 1000 + n,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(Position, u128)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let distinct: HashSet<Position> = acked.iter().map(|(p, _)| *p).collect();
    assert_eq!(distinct.len(), acked.len());
    let stored: Vec<LogRecord> = (0..2).flat_map(|p| read_all(&log, p).unwrap()).collect();
    assert_eq!(stored.len(), acked.len());
    for (position, id) in acked {
        let record = stored.iter().find(|r| r.position == position).unwrap();
        assert_eq!(record.vote.vote_id, VoteId(id));
    }
    assert!(
        segment_files(dir.path()).unwrap().len() > 1,
        "small segments roll over"
    );
}

#[test]
fn reopening_keeps_every_vote_and_continues_the_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SegmentLog::open(dir.path(), config(1, 4096)).unwrap();
        log.append_votes(&(0..100).map(|n| vote(1, n, n)).collect::<Vec<_>>())
            .unwrap();
    }
    // The partition count is the log's own: a different configured count does not re-shard it.
    let log = SegmentLog::open(dir.path(), config(8, 4096)).unwrap();
    assert_eq!(log.partitions(), 1);
    assert_eq!(log.recovery(), &Recovery::default());
    assert_eq!(
        log.append_votes(&[vote(1, 500, 500)]).unwrap()[0].offset,
        100
    );
    let records = read_all(&log, 0).unwrap();
    assert_eq!(records.len(), 101);
    assert_eq!(log.verify().unwrap(), 101);
}

/// A new log's first round finds its room already written: the zeros ahead of the data are
/// made (and made durable) by the open, not under the first vote, and still read as the
/// end of the log.
#[test]
fn a_new_log_is_zeroed_ahead_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path(), config(1, 64 << 20)).unwrap();
    let (segment, data_end) = log.tail();
    let zeroed = fs::metadata(&segment).unwrap().len();
    assert_eq!(
        zeroed,
        header(1) + (8 << 20),
        "one chunk of zeros after the header"
    );
    assert_eq!(data_end, header(1));
    log.append_votes(&[vote(1, 1, 1)]).unwrap();
    assert_eq!(log.tail().1, header(1) + FRAME);
    assert_eq!(fs::metadata(&segment).unwrap().len(), zeroed);
    drop(log);
    let log = SegmentLog::open(dir.path(), config(1, 64 << 20)).unwrap();
    assert_eq!(log.recovery(), &Recovery::default());
    assert_eq!(log.verify().unwrap(), 1);
    // A segment smaller than a chunk is zeroed to its size, no further.
    let small = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(small.path(), config(1, 4096)).unwrap();
    assert_eq!(fs::metadata(log.tail().0).unwrap().len(), 4096);
}

/// Appends `votes` one round at a time, closes the log, and returns where its data ends.
fn append_and_close(dir: &Path, cfg: SegmentLogConfig, votes: &[LoggedVote]) -> (PathBuf, u64) {
    let log = SegmentLog::open(dir, cfg).unwrap();
    log.append_votes(votes).unwrap();
    log.tail()
}

#[test]
fn a_torn_tail_is_cut_on_open_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let votes: Vec<LoggedVote> = (0..10).map(|n| vote(1, n, n)).collect();
    let (segment, end) = append_and_close(dir.path(), config(1, 1 << 20), &votes);
    assert_eq!(end, header(1) + 10 * FRAME);
    // A crash mid-write: the last frame's final 30 bytes never reached the disk (the
    // segment was written with zeros ahead of the data, so zeros are what is there).
    overwrite(&segment, end - 30, &[0u8; 30]);
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    let torn = log.recovery().torn_tail_bytes;
    assert!(torn > 0 && torn <= FRAME - 30, "{torn}");
    assert_eq!(log.end_offset(0).unwrap(), 9);
    assert_eq!(read_all(&log, 0).unwrap().len(), 9);
    assert_eq!(log.tail(), (segment.clone(), end - FRAME));
    assert_eq!(log.append_votes(&[vote(1, 99, 99)]).unwrap()[0].offset, 9);
    drop(log);
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    assert_eq!(log.recovery(), &Recovery::default());
    let records = read_all(&log, 0).unwrap();
    assert_eq!(records.len(), 10);
    assert_eq!(records[9].vote.vote_id, VoteId(99));
}

#[test]
fn garbage_after_the_last_frame_is_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let votes: Vec<LoggedVote> = (0..5).map(|n| vote(1, n, n)).collect();
    let (segment, end) = append_and_close(dir.path(), config(1, 1 << 20), &votes);
    let garbage = [0x00, 0x00, 0x00, 0x40, 1, 2, 3];
    overwrite(&segment, end, &garbage);
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    assert_eq!(log.recovery().torn_tail_bytes, 7);
    assert_eq!(log.verify().unwrap(), 5);
    drop(log);
    // Wiped, not just skipped: the next open finds nothing to repair.
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    assert_eq!(log.recovery(), &Recovery::default());
}

#[test]
fn a_stale_frame_behind_a_torn_one_never_comes_back() {
    // A round of two frames was torn: the first damaged, the second intact. After recovery
    // both are wiped, so when a shorter round is written over them and the node crashes
    // again, the stale second frame cannot be read as the next record.
    let dir = tempfile::tempdir().unwrap();
    let votes: Vec<LoggedVote> = (0..12).map(|n| vote(1, n, n)).collect();
    let (segment, end) = append_and_close(dir.path(), config(1, 1 << 20), &votes);
    overwrite(&segment, end - 2 * FRAME + 30, &[0xFF]);
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    assert_eq!(log.end_offset(0).unwrap(), 10);
    assert_eq!(log.recovery().torn_tail_bytes, 2 * FRAME);
    log.append_votes(&[vote(1, 500, 500)]).unwrap();
    drop(log);
    let log = SegmentLog::open(dir.path(), config(1, 1 << 20)).unwrap();
    let records = read_all(&log, 0).unwrap();
    assert_eq!(records.len(), 11);
    assert_eq!(records[10].vote.vote_id, VoteId(500));
}

#[test]
fn a_flipped_byte_in_an_old_segment_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(one_vote_per_round(dir.path(), 100));
    let first = segment_files(dir.path()).unwrap().remove(0);
    // Inside the payload of the second frame.
    overwrite(&first, header(1) + FRAME + 40, &[0xFF]);
    let error = SegmentLog::open(dir.path(), config(1, 1024)).unwrap_err();
    assert_eq!(error.code(), "log_corrupt");
    let message = error.to_string();
    assert!(
        message.contains("checksum mismatch")
            && message.contains("offset 1")
            && message.contains("00000000000000000000.seg"),
        "{message}"
    );
}

#[test]
fn a_flipped_byte_after_open_is_caught_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path(), config(2, 1 << 20)).unwrap();
    log.append_votes(&(0..20).map(|n| vote(n % 2, n, n)).collect::<Vec<_>>())
        .unwrap();
    let segment = segment_files(dir.path()).unwrap().remove(0);
    overwrite(&segment, header(2) + 5 * FRAME + 30, &[0xAA]);
    let partition = (0..2)
        .find(|p| log.read(*p, 0, 100).is_err())
        .expect("one partition reads the damaged frame");
    let error = log.read(partition, 0, 100).unwrap_err();
    assert_eq!(error.code(), "log_corrupt");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
    assert_eq!(log.verify().unwrap_err().code(), "log_corrupt");
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(one_vote_per_round(dir.path(), 100));
    fs::remove_file(&segment_files(dir.path()).unwrap()[1]).unwrap();
    let error = SegmentLog::open(dir.path(), config(1, 1024)).unwrap_err();
    assert_eq!(error.code(), "log_corrupt");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn retention_deletes_whole_sealed_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SegmentLogConfig {
        partitions: 1,
        segment_bytes: 1024,
        retention: Retention::MaxBytes(3000),
    };
    let log = SegmentLog::open(dir.path(), cfg.clone()).unwrap();
    for n in 0..200 {
        log.append_votes(&[vote(1, n, n)]).unwrap();
    }
    let earliest = log.earliest_offset(0).unwrap();
    assert!(earliest > 0, "old segments are gone");
    drop(log);
    // Offsets are never reused: the log reopens where it was.
    let log = SegmentLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.earliest_offset(0).unwrap(), earliest);
    assert_eq!(log.end_offset(0).unwrap(), 200);
    let sealed_bytes: u64 = segment_files(dir.path())
        .unwrap()
        .iter()
        .rev()
        .skip(1)
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(sealed_bytes <= 3000, "{sealed_bytes}");
    assert_eq!(log.read(0, 0, 10).unwrap_err().code(), "log_trimmed");
    let kept = read_all(&log, 0).unwrap();
    assert_eq!(kept.first().unwrap().position.offset, earliest);
    assert_eq!(kept.last().unwrap().position.offset, 199);
}

#[test]
fn delete_before_keeps_the_segment_holding_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = one_vote_per_round(dir.path(), 100);
    let before = segment_files(dir.path()).unwrap().len();
    let deleted = log.delete_before(&[50]).unwrap();
    assert!(deleted > 0);
    assert_eq!(segment_files(dir.path()).unwrap().len(), before - deleted);
    let earliest = log.earliest_offset(0).unwrap();
    assert!(earliest <= 50);
    assert_eq!(log.read_votes(0, 50, 1).unwrap()[0].position.offset, 50);
    let sealed = segment_files(dir.path()).unwrap().len() - 1;
    assert_eq!(log.delete_before(&[u64::MAX]).unwrap(), sealed);
    assert_eq!(
        segment_files(dir.path()).unwrap().len(),
        1,
        "the active segment always stays"
    );
    assert_eq!(log.read_votes(0, 99, 1).unwrap()[0].position.offset, 99);
}

/// Open files of this process that were deleted from `dir`.
fn deleted_files_held_open(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.starts_with(&*dir.to_string_lossy()) && target.ends_with(" (deleted)")
        })
        .count()
}

/// A reader's cursor keeps its segment open between polls; deleting that segment lets go
/// of it at once, so its space is freed even if the partition is never read again.
#[test]
fn deleted_segments_are_not_held_open_by_read_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let log = one_vote_per_round(dir.path(), 100);
    assert_eq!(log.read_votes(0, 0, 10).unwrap().len(), 10);
    assert_eq!(deleted_files_held_open(dir.path()), 0);
    assert!(log.delete_before(&[50]).unwrap() > 0);
    assert_eq!(deleted_files_held_open(dir.path()), 0);
    assert_eq!(log.read_votes(0, 50, 1).unwrap()[0].position.offset, 50);
}

#[test]
fn an_unknown_directory_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("log.meta"), "something else\n").unwrap();
    assert_eq!(
        SegmentLog::open(dir.path(), config(1, 1024))
            .unwrap_err()
            .code(),
        "bad_log"
    );
}

#[test]
fn a_segment_whose_header_never_became_durable_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(one_vote_per_round(dir.path(), 30));
    let next = segment_files(dir.path()).unwrap().len();
    // A crash right after the rollover created the file: its length is there, its bytes not.
    let torn = dir.path().join(format!("{:020}.seg", 30));
    fs::write(&torn, vec![0u8; header(1) as usize]).unwrap();
    let log = SegmentLog::open(dir.path(), config(1, 1024)).unwrap();
    assert_eq!(log.recovery().removed_empty_segments, vec![torn]);
    assert_eq!(segment_files(dir.path()).unwrap().len(), next);
    assert_eq!(log.verify().unwrap(), 30);
    assert_eq!(log.append_votes(&[vote(1, 99, 99)]).unwrap()[0].offset, 30);
}

#[test]
fn async_appends_resolve_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SegmentLog::open(dir.path(), config(4, 4096)).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked: Vec<(Position, u128)> = runtime.block_on(async {
        let tasks: Vec<_> = (0..200u128)
            .map(|n| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let votes = [vote(n % 9, n, n)];
                    let position = log.append_votes_async(&votes).await.unwrap()[0];
                    // Durable means readable: the end offset has already moved past it.
                    assert!(log.end_offset(position.partition).unwrap() > position.offset);
                    (position, n)
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.push(task.await.unwrap());
        }
        acked
    });
    for (position, n) in acked {
        assert_eq!(
            log.read_votes(position.partition, position.offset, 1)
                .unwrap()[0]
                .vote
                .vote_id,
            VoteId(n)
        );
    }
    drop(log);
    let log = SegmentLog::open(dir.path(), config(4, 4096)).unwrap();
    assert_eq!(log.verify().unwrap(), 200);
}

/// A log that fails (here: its folder is gone when a segment rolls over) answers every
/// async appender waiting on it, whether its frames were in the failed round or queued
/// behind it, with its failure; none waits forever, and none is told its vote is durable
/// when it is not.
#[test]
fn async_appenders_hear_of_a_failure_rather_than_wait_forever() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("log");
    let log = Arc::new(SegmentLog::open(&folder, config(2, 2048)).unwrap());
    // One round that fills the active segment past its size, so the very next round must
    // roll over, into a folder that is gone by then.
    let filling: Vec<_> = (0..40u128).map(|n| vote(1, n, n)).collect();
    log.append_votes(&filling).unwrap();
    assert!(
        log.tail().1 >= 2048,
        "the filling round did not fill the segment"
    );
    fs::remove_dir_all(&folder).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcomes: Vec<Result<Position, IngestError>> = runtime.block_on(async {
        let tasks: Vec<_> = (100..500u128)
            .map(|n| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let votes = [vote(n % 5, n, n)];
                    let appended = log.append_votes_async(&votes);
                    tokio::time::timeout(std::time::Duration::from_secs(10), appended)
                        .await
                        .expect("an appender waited 10 s for a log that had failed")
                        .map(|positions| positions[0])
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    });
    let failed = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(IngestError::Failed { .. })))
        .count();
    assert!(failed > 0, "no appender heard of the failure");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(_) | Err(IngestError::Failed { .. }))),
        "an appender got another error: {outcomes:?}"
    );
    for position in outcomes.iter().flatten() {
        assert!(log.end_offset(position.partition).unwrap() > position.offset);
    }
}

fn reading(region: &str, n: i64) -> SensorReading {
    SensorReading {
        sensor_id: format!("{region}-{}", n % 3),
        region: region.into(),
        metric: Metric::Pm25,
        value_micro: n * 1_000_001,
        observed_at: 1_780_000_000_000 + n * 10_000,
        quality: if n % 7 == 0 {
            Quality::Suspect
        } else {
            Quality::Ok
        },
    }
}

/// The sensor log is the same segment format with readings as payload: each region's
/// readings in one partition, in order, back byte for byte after a reopen; a vote log's
/// directory is not taken for a sensor log.
#[test]
fn sensor_readings_read_back_by_region_partition_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let readings: Vec<SensorReading> = (0..60)
        .map(|n| reading(["north", "south", "harbour"][n as usize % 3], n))
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    {
        let log = SensorSegmentLog::open(dir.path().join("sensors"), config(4, 1 << 20)).unwrap();
        let positions = runtime
            .block_on(EntryLog::append_async(&log, &readings))
            .unwrap();
        for (reading, position) in readings.iter().zip(&positions) {
            assert_eq!(position.partition, partition_for_region(&reading.region, 4));
        }
    }
    let log = SensorSegmentLog::open(dir.path().join("sensors"), config(4, 1 << 20)).unwrap();
    let mut back = Vec::new();
    for partition in 0..4 {
        let records = EntryLog::read(&log, partition, 0, 1_000).unwrap();
        assert_eq!(
            records.len() as u64,
            EntryLog::end_offset(&log, partition).unwrap()
        );
        for (offset, record) in records.iter().enumerate() {
            assert_eq!(record.position.offset, offset as u64);
        }
        let regions: HashSet<&str> = records.iter().map(|r| r.reading.region.as_str()).collect();
        assert!(regions.len() <= 3);
        back.extend(records.into_iter().map(|r| r.reading));
    }
    back.sort_by_key(|r| r.observed_at);
    assert_eq!(back, readings);

    drop(SegmentLog::open(dir.path().join("votes"), config(4, 1 << 20)).unwrap());
    let error = SensorSegmentLog::open(dir.path().join("votes"), config(4, 1 << 20)).unwrap_err();
    assert!(
        error.to_string().contains("not a canopy sensor log"),
        "{error}"
    );
}

/// A log is open in one process at a time: a second open (a `canopy tally` beside a running
/// node) is refused instead of recovering a tail the first is writing.
#[test]
fn a_log_open_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path(), config(2, 1 << 20)).unwrap();
    log.append_votes(&[vote(1, 1, 1)]).unwrap();
    let error = SegmentLog::open(dir.path(), config(2, 1 << 20)).unwrap_err();
    assert_eq!(error.code(), "bad_log");
    assert!(error.to_string().contains("another process"), "{error}");
    drop(log);
    let again = SegmentLog::open(dir.path(), config(2, 1 << 20)).unwrap();
    assert_eq!(
        again.end_offset(partition_for(DecisionId(1), 2)).unwrap(),
        1
    );
}

/// A vote as the log format 3 stored it: the voter's id in the clear, then the commitment.
#[derive(Clone, PartialEq)]
struct FormatThreeVote {
    vote: Vote,
    commitment: VoterCommitment,
}

struct FormatThreeRecord(Position);

impl From<(Position, FormatThreeVote)> for FormatThreeRecord {
    fn from((position, _): (Position, FormatThreeVote)) -> Self {
        Self(position)
    }
}

impl Positioned for FormatThreeRecord {
    fn position(&self) -> Position {
        self.0
    }
}

impl LogEntry for FormatThreeVote {
    const KIND: &'static str = "vote";
    type Record = FormatThreeRecord;
    type PartitionKey<'a> = DecisionId;
    const LOG_FORMAT: u32 = 3;

    fn partition_key(&self) -> DecisionId {
        self.vote.decision_id
    }
    fn partition_for_key(decision: DecisionId, partitions: u32) -> u32 {
        partition_for(decision, partitions)
    }
    fn key(&self) -> Vec<u8> {
        Vec::new()
    }
    fn encode_into(&self, out: &mut Vec<u8>) {
        // The vote encoding of that format's time, version 1: a single-choice option.
        let vote = &self.vote;
        let Ballot::SingleChoice(option) = vote.ballot else {
            panic!("format 3 held single-choice votes only");
        };
        out.push(1);
        out.extend_from_slice(&vote.vote_id.0.to_be_bytes());
        out.extend_from_slice(&vote.decision_id.0.to_be_bytes());
        out.extend_from_slice(&vote.voter_id.0.to_be_bytes());
        out.extend_from_slice(&u16::from(option).to_be_bytes());
        out.push(vote.component as u8);
        out.extend_from_slice(&vote.weight.0.to_be_bytes());
        out.extend_from_slice(&vote.cast_at.to_be_bytes());
        out.extend_from_slice(&self.commitment.0);
    }
    fn decode(_: &[u8]) -> Result<Self, String> {
        Err("written only".into())
    }
}

/// A log of format 3 holds voters' ids in the clear; opening it with this build rewrites
/// every entry (format 4): no voter id is left in any file, every entry keeps its position
/// and commitment, and its ballot is keyed by the commitment's pseudonym, as new entries are.
#[test]
fn a_format_three_log_is_upgraded_on_open_and_keeps_no_voter_id() {
    let dir = tempfile::tempdir().unwrap();
    let voters: Vec<u128> = (1..=5)
        .map(|n| 0x5eed_0000_0000_0000_0000_0000_0000_0000 + n)
        .collect();
    let old: Vec<FormatThreeVote> = (0..40u128)
        .map(|n| {
            let logged = vote(1 + n % 3, voters[(n % 5) as usize], n);
            let vote = Vote {
                voter_id: VoterId(voters[(n % 5) as usize]),
                ..logged.vote
            };
            FormatThreeVote {
                vote,
                commitment: logged.commitment,
            }
        })
        .collect();
    {
        let log = SegmentEntryLog::<FormatThreeVote>::open(dir.path(), config(2, 2048)).unwrap();
        for chunk in old.chunks(7) {
            log.append(chunk).unwrap();
        }
    }
    let holds_a_voter_id = || {
        fs::read_dir(dir.path()).unwrap().any(|entry| {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            voters
                .iter()
                .any(|v| bytes.windows(16).any(|w| w == v.to_be_bytes()))
        })
    };
    assert!(
        holds_a_voter_id(),
        "the format-3 log should hold the ids this test looks for"
    );

    let log = SegmentLog::open(dir.path(), config(2, 2048)).unwrap();
    assert!(!holds_a_voter_id(), "a voter id survived the upgrade");
    let meta = fs::read_to_string(dir.path().join("log.meta")).unwrap();
    assert!(meta.starts_with("canopy-vote-log 4\n"), "{meta}");
    let mut upgraded: Vec<LogRecord> = (0..2).flat_map(|p| read_all(&log, p).unwrap()).collect();
    upgraded.sort_by_key(|r| r.vote.vote_id);
    assert_eq!(upgraded.len(), old.len());
    for (record, before) in upgraded.iter().zip(&old) {
        assert_eq!(record.commitment, before.commitment);
        assert_eq!(record.vote.voter_id, before.commitment.pseudonym());
        assert_eq!(
            Vote {
                voter_id: before.vote.voter_id,
                ..record.vote
            },
            before.vote
        );
        assert_eq!(record.sealed_voter, SealedVoter::NONE);
        // Rewritten, it keeps the leaf its record was built with.
        assert_eq!(record.leaf_version, LeafVersion::V1);
        let fresh = vote(before.vote.decision_id.0, before.vote.voter_id.0, 0);
        assert_eq!(
            fresh.vote.voter_id, record.vote.voter_id,
            "new votes key the ballot the same way"
        );
    }
    // The log goes on where it was, and opening it again changes nothing.
    let positions = log.append_votes(&[vote(1, 9, 1000)]).unwrap();
    drop(log);
    let again = SegmentLog::open(dir.path(), config(2, 2048)).unwrap();
    assert_eq!(again.verify().unwrap(), old.len() as u64 + 1);
    assert_eq!(
        again
            .read(positions[0].partition, positions[0].offset, 1)
            .unwrap()
            .len(),
        1
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(48))]

    /// Readers poll while appends go on, as the engine and the lake writer do: in batches
    /// of any size, mostly going on from where they stopped (the log keeps that segment
    /// open between polls), sometimes going back to an earlier offset or starting over in
    /// another segment. Every batch is the partition's votes in order, across rollovers.
    #[test]
    fn polling_readers_see_every_vote_in_order_across_rollovers(
        steps in proptest::collection::vec(
            (0usize..25, 0u32..3, 1usize..40, proptest::option::weighted(0.2, 0u64..1_000)),
            1..60,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // About 20 votes to a segment: most runs cross several.
        let log = SegmentLog::open(dir.path(), config(3, header(3) + 20 * FRAME)).unwrap();
        let mut appended: Vec<Vec<u128>> = vec![Vec::new(); 3];
        let mut next_read = [0u64; 3];
        let mut id = 0u128;
        for (appends, partition, max, back_to) in steps {
            let votes: Vec<LoggedVote> = (0..appends)
                .map(|_| {
                    id += 1;
                    vote(id % 5, id % 11, id)
                })
                .collect();
            for (position, vote) in log.append_votes(&votes).unwrap().into_iter().zip(&votes) {
                let ids = &mut appended[position.partition as usize];
                proptest::prop_assert_eq!(position.offset, ids.len() as u64);
                ids.push(vote.vote.vote_id.0);
            }
            let ids = &appended[partition as usize];
            let from = match back_to {
                Some(offset) => offset % (ids.len() as u64 + 1),
                None => next_read[partition as usize],
            };
            let batch = log.read_votes(partition, from, max).unwrap();
            let expected: Vec<u128> = ids.iter().skip(from as usize).take(max).copied().collect();
            let read: Vec<u128> = batch.iter().map(|r| r.vote.vote_id.0).collect();
            proptest::prop_assert_eq!(&read, &expected);
            for (k, record) in batch.iter().enumerate() {
                proptest::prop_assert_eq!(record.position.offset, from + k as u64);
            }
            next_read[partition as usize] = from + read.len() as u64;
        }
    }
}
