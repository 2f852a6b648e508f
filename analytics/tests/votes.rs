//! The votes table of the lake against the vote log it is copied from: every logged vote
//! exactly once, with its fields (the voter only as its commitment, the time only as its
//! hour), across restarts after a crash that left a range half-written.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use canopy_analytics::{LakeConfig, VoteLake, sync_votes};
use canopy_ingest::{EntryLog, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::{Component, LoggedVote};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::SeedableRng;

#[path = "common/votes.rs"]
mod random_votes;
use random_votes::{DAY_MICROS, START, VoteSpace, random_vote};

/// A row as the lake holds it: (partition, offset) → (decision, vote id, commitment,
/// option, component, cast hour).
type Row = (String, String, Vec<u8>, i32, String, i64);

const HOUR_MICROS: i64 = 3_600_000_000;

fn votes(seed: u64, count: usize) -> Vec<LoggedVote> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let space = VoteSpace {
        voters: 0..200,
        decisions: 1..6,
        components: &[Component::Democratic, Component::Expert],
        weights: 1..2_000_000,
        // Four days, so a range spans several date folders.
        days: 4,
    };
    (0..count).map(|_| random_vote(&mut rng, &space)).collect()
}

/// The files of the table's date folders (its `_layout` marker is not one of them).
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for date in std::fs::read_dir(dir).unwrap() {
        let date = date.unwrap().path();
        if !date
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("date=")
        {
            continue;
        }
        for file in std::fs::read_dir(&date).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

/// Every row of the lake, keyed by its log position; panics on a position seen twice.
fn lake_rows(dir: &Path) -> BTreeMap<(i32, i64), Row> {
    let mut rows = BTreeMap::new();
    // As a reader does: only `*.parquet` counts.
    for path in parquet_files(dir)
        .into_iter()
        .filter(|p| p.extension().unwrap() == "parquet")
    {
        let date = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut previous: Option<(String, i64)> = None;
        for batch in reader {
            let batch = batch.unwrap();
            let strings = |i: usize| batch.column(i).as_string::<i32>().clone();
            let (decision, vote, component) = (strings(0), strings(1), strings(4));
            let commitment = batch.column(2).as_fixed_size_binary().clone();
            let option = batch.column(3).as_primitive::<Int32Type>().clone();
            let cast_hour = batch
                .column(5)
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let partition = batch.column(6).as_primitive::<Int32Type>().clone();
            let offset = batch.column(7).as_primitive::<Int64Type>().clone();
            for i in 0..batch.num_rows() {
                let key = (decision.value(i).to_string(), offset.value(i));
                assert!(
                    previous.as_ref().is_none_or(|p| *p < key),
                    "sorted by decision, offset"
                );
                previous = Some(key);
                let day = (cast_hour.value(i) - START).div_euclid(DAY_MICROS);
                assert_eq!(date, format!("date=2026-06-0{}", day + 1));
                let row = (
                    decision.value(i).to_string(),
                    vote.value(i).to_string(),
                    commitment.value(i).to_vec(),
                    option.value(i),
                    component.value(i).to_string(),
                    cast_hour.value(i),
                );
                let position = (partition.value(i), offset.value(i));
                assert!(rows.insert(position, row).is_none(), "{position:?} twice");
            }
        }
    }
    rows
}

fn log_rows(log: &dyn VoteLog) -> BTreeMap<(i32, i64), Row> {
    let mut rows = BTreeMap::new();
    for partition in 0..log.partitions() {
        for record in log.read_votes(partition, 0, usize::MAX).unwrap() {
            let v = record.vote;
            rows.insert(
                (partition as i32, record.position.offset as i64),
                (
                    v.decision_id.to_string(),
                    v.vote_id.to_string(),
                    record.commitment.0.to_vec(),
                    single_choice_option(&v.ballot),
                    v.component.to_string(),
                    v.cast_at.div_euclid(HOUR_MICROS) * HOUR_MICROS,
                ),
            );
        }
    }
    rows
}

#[test]
fn the_lake_holds_every_logged_vote_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append_votes(&votes(1, 3_000)).unwrap();
    let lake = VoteLake::open(LakeConfig {
        row_group_rows: 256,
        ..LakeConfig::new(dir.path().join("lake"))
    })
    .unwrap();
    let report = sync_votes(&lake, &log, 500).unwrap();
    assert_eq!(report.rows, 3_000);
    assert_eq!(report.rewritten_ranges, 0);
    assert_eq!(
        lake_rows(&dir.path().join("lake").join("votes")),
        log_rows(&log)
    );
    // The voter never appears in clear: the commitment is there, and no column holds an
    // id, a weight or an exact time.
    let file = parquet_files(&dir.path().join("lake").join("votes")).remove(0);
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap()).unwrap();
    let names: Vec<&str> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("voter_id") || n.contains("weight") || *n == "cast_at"),
        "{names:?}"
    );

    // Nothing new: a second sync writes the last ranges again, identical, and adds nothing.
    let again = sync_votes(&lake, &log, 500).unwrap();
    assert_eq!(again.rows, 0);
    let used = (0..log.partitions())
        .filter(|p| log.end_offset(*p).unwrap() > 0)
        .count();
    assert_eq!(again.rewritten_ranges, used as u64);
    assert_eq!(
        lake_rows(&dir.path().join("lake").join("votes")),
        log_rows(&log)
    );
}

/// A crash mid-range: one date's file of the last range never written, another half
/// written as a temporary file. After a restart the lake has every vote exactly once, and no
/// temporary file is left.
#[test]
fn a_restart_after_a_crash_leaves_no_gap_and_no_row_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append_votes(&votes(2, 2_000)).unwrap();
    let config = LakeConfig::new(dir.path().join("lake"));
    let lake = VoteLake::open(config.clone()).unwrap();
    sync_votes(&lake, &log, 400).unwrap();
    // The crash: the newest range of some partition lost one of its date files.
    let files = parquet_files(&dir.path().join("lake").join("votes"));
    let victim = files
        .iter()
        .max_by_key(|f| f.file_name().unwrap().to_owned())
        .unwrap()
        .clone();
    std::fs::rename(&victim, victim.with_extension("parquet.tmp")).unwrap();
    assert_ne!(
        lake_rows(&dir.path().join("lake").join("votes")),
        log_rows(&log),
        "the crash lost rows"
    );
    drop(lake);

    log.append_votes(&votes(3, 1_500)).unwrap();
    let lake = VoteLake::open(config).unwrap();
    let report = sync_votes(&lake, &log, 400).unwrap();
    assert!(report.rewritten_ranges > 0);
    assert_eq!(
        lake_rows(&dir.path().join("lake").join("votes")),
        log_rows(&log)
    );
    assert!(
        parquet_files(&dir.path().join("lake").join("votes"))
            .iter()
            .all(|f| f.extension().unwrap() == "parquet"),
        "a temporary file was left"
    );
}

/// A file as a lake before issue 16 wrote it (layout 1): the exact weight and `cast_at` to
/// the microsecond. `records` are one day's of the range `first..=last` of `partition`.
fn write_layout_1_file(
    votes: &Path,
    (partition, first, last): (u32, u64, u64),
    records: &[canopy_ingest::LogRecord],
) {
    use std::sync::Arc;

    use arrow_array::{
        ArrayRef, Date32Array, FixedSizeBinaryArray, Int32Array, Int64Array, RecordBatch,
        StringArray, TimestampMicrosecondArray,
    };

    let day = records[0].vote.cast_at.div_euclid(DAY_MICROS) as i32;
    let text = |f: fn(&canopy_ingest::LogRecord) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("decision_id", text(|r| r.vote.decision_id.to_string())),
        ("vote_id", text(|r| r.vote.vote_id.to_string())),
        (
            "voter_commitment",
            Arc::new(
                FixedSizeBinaryArray::try_from_iter(records.iter().map(|r| r.commitment.0))
                    .unwrap(),
            ),
        ),
        (
            "option",
            Arc::new(Int32Array::from_iter_values(
                records.iter().map(|r| single_choice_option(&r.vote.ballot)),
            )),
        ),
        ("component", text(|r| r.vote.component.as_str().to_string())),
        (
            "weight_millionths",
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| i64::from(r.vote.weight.0)),
            )),
        ),
        (
            "cast_at",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.vote.cast_at))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "log_partition",
            Arc::new(Int32Array::from_iter_values(
                records.iter().map(|r| r.position.partition as i32),
            )),
        ),
        (
            "log_offset",
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.position.offset as i64),
            )),
        ),
        (
            "date",
            Arc::new(Date32Array::from_iter_values(records.iter().map(|_| day))),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let folder = votes.join(format!("date=2026-06-0{}", day - records_day_zero() + 1));
    std::fs::create_dir_all(&folder).unwrap();
    let name = format!("part-p{partition:04}-{first:020}-{last:020}.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        File::create(folder.join(name)).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// The day number of 2026-06-01, [`START`]'s day.
fn records_day_zero() -> i32 {
    START.div_euclid(DAY_MICROS) as i32
}

/// Issue 16: a lake an earlier version wrote keeps each vote's weight and exact time. A
/// reader refuses it with `lake_old_layout` rather than serve it; opening it to write
/// rewrites every file in place, after which it holds what a fresh copy of the log would,
/// and copying goes on after it with nothing twice.
#[test]
fn issue_16_a_lake_of_the_old_layout_is_refused_then_rewritten_in_place() {
    use canopy_analytics::{LakeQuery, LakeSql};

    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append_votes(&votes(4, 1_200)).unwrap();
    let votes_dir = dir.path().join("lake").join("votes");
    for partition in 0..log.partitions() {
        let records = log.read_votes(partition, 0, usize::MAX).unwrap();
        let Some(last) = records.last().map(|r| r.position.offset) else {
            continue;
        };
        // A range per partition, cut into its days as the old writer did.
        let mut by_day: BTreeMap<i64, Vec<_>> = BTreeMap::new();
        for record in records {
            by_day
                .entry(record.vote.cast_at.div_euclid(DAY_MICROS))
                .or_default()
                .push(record);
        }
        for day in by_day.values() {
            write_layout_1_file(&votes_dir, (partition, 0, last), day);
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sql = runtime
        .block_on(LakeSql::open(dir.path().join("lake")))
        .unwrap();
    let error = runtime
        .block_on(sql.query("SELECT COUNT(*) FROM votes"))
        .unwrap_err();
    assert_eq!(error.code(), "lake_old_layout", "{error}");
    assert!(error.to_string().contains("canopy lake sync"), "{error}");

    let lake = VoteLake::open(LakeConfig::new(dir.path().join("lake"))).unwrap();
    assert_eq!(lake_rows(&votes_dir), log_rows(&log));
    for file in parquet_files(&votes_dir) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&file).unwrap()).unwrap();
        assert_eq!(
            builder.schema().fields(),
            canopy_analytics::vote_schema().fields(),
            "{}",
            file.display()
        );
    }
    let batches = runtime
        .block_on(sql.query("SELECT COUNT(*) FROM votes"))
        .unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1_200
    );

    // Opened again: nothing to rewrite. More votes are copied after the rewritten ranges.
    drop(lake);
    log.append_votes(&votes(5, 300)).unwrap();
    let lake = VoteLake::open(LakeConfig::new(dir.path().join("lake"))).unwrap();
    let report = sync_votes(&lake, &log, 500).unwrap();
    assert_eq!(report.rows, 300);
    assert_eq!(lake_rows(&votes_dir), log_rows(&log));
}

/// The `option` column: a single-choice ballot's option, -1 for any other ballot.
fn single_choice_option(ballot: &canopy_schemas::Ballot) -> i32 {
    match ballot {
        canopy_schemas::Ballot::SingleChoice(option) => i32::from(*option),
        _ => -1,
    }
}
