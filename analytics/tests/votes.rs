//! The votes table of the lake against the vote log it is copied from: every logged vote
//! exactly once, with its fields (the voter only as its commitment), across restarts after a
//! crash that left a range half-written.

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

/// A row as the lake holds it: (partition, offset) → (decision, vote id, commitment hex,
/// option, component, weight, cast_at).
type Row = (String, String, Vec<u8>, i32, String, i64, i64);

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

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for date in std::fs::read_dir(dir).unwrap() {
        let date = date.unwrap().path();
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
            let weight = batch.column(5).as_primitive::<Int64Type>().clone();
            let cast_at = batch
                .column(6)
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let partition = batch.column(7).as_primitive::<Int32Type>().clone();
            let offset = batch.column(8).as_primitive::<Int64Type>().clone();
            for i in 0..batch.num_rows() {
                let key = (decision.value(i).to_string(), offset.value(i));
                assert!(
                    previous.as_ref().is_none_or(|p| *p < key),
                    "sorted by decision, offset"
                );
                previous = Some(key);
                let day = (cast_at.value(i) - START).div_euclid(DAY_MICROS);
                assert_eq!(date, format!("date=2026-06-0{}", day + 1));
                let row = (
                    decision.value(i).to_string(),
                    vote.value(i).to_string(),
                    commitment.value(i).to_vec(),
                    option.value(i),
                    component.value(i).to_string(),
                    weight.value(i),
                    cast_at.value(i),
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
        for record in log.read(partition, 0, usize::MAX).unwrap() {
            let v = record.vote;
            rows.insert(
                (partition as i32, record.position.offset as i64),
                (
                    v.decision_id.to_string(),
                    v.vote_id.to_string(),
                    record.commitment.0.to_vec(),
                    i32::from(v.option),
                    v.component.to_string(),
                    i64::from(v.weight.0),
                    v.cast_at,
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
    log.append(&votes(1, 3_000)).unwrap();
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
    // The voter never appears in clear: the commitment is there, and no column holds an id.
    let file = parquet_files(&dir.path().join("lake").join("votes")).remove(0);
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap()).unwrap();
    let names: Vec<&str> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert!(!names.iter().any(|n| n.contains("voter_id")), "{names:?}");

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
    log.append(&votes(2, 2_000)).unwrap();
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

    log.append(&votes(3, 1_500)).unwrap();
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
