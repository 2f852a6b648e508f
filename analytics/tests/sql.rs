//!
//! SQL over the lake: a recount in SQL over the lake reproduces every decision's tally as
//! the engine's recount computes it from the log: the voters per cell from `votes` (first
//! delivery of each vote id, then each voter's latest vote), the weight from the newest
//! row of the cell in `tally_changes` (`votes` keeps no weight, issue 16), the two tables
//! agreeing on every count. And the lake is read-only to SQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use canopy_analytics::{
    LakeConfig, LakeLocation, LakeQuery, LakeSql, LakeViews, LakeWriter, TallyChange,
    TallyChangeLake, VoteLake, sync_votes,
};
use canopy_dataflow::{EngineConfig, InMemoryViews, TallyEngine, ViewStore, recount};
use canopy_ingest::{EntryLog, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::{Component, Decision, LoggedVote};
use rand::{Rng, SeedableRng};

#[path = "common/votes.rs"]
mod random_votes;
use random_votes::{DAY_MICROS, START, VoteSpace, random_vote};

fn decision(id: u128) -> Decision {
    canopy_testkit::decision_in(id, "north")
}

const SPACE: VoteSpace = VoteSpace {
    voters: 0..150,
    decisions: 1..5,
    components: &[
        Component::Democratic,
        Component::Expert,
        Component::Community,
    ],
    weights: 1..3_000_000,
    days: 3,
};

/// Voters who change their minds, and deliveries repeated (a client retry).
fn stream(seed: u64, count: usize) -> Vec<LoggedVote> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out: Vec<LoggedVote> = Vec::new();
    for _ in 0..count {
        if !out.is_empty() && rng.random_bool(0.1) {
            let again = out[rng.random_range(0..out.len())];
            out.push(again);
            continue;
        }
        out.push(random_vote(&mut rng, &SPACE));
    }
    out
}

/// Voters per cell, from `votes`: first delivery of each (decision, voter, vote id), then
/// per (decision, voter) the one with the highest offset, counted per (option, component).
const COUNTS: &str = "
    WITH first AS (
        SELECT decision_id, voter_commitment, vote_id, MIN(log_offset) AS log_offset
        FROM votes GROUP BY decision_id, voter_commitment, vote_id
    ), latest AS (
        SELECT decision_id, voter_commitment, MAX(log_offset) AS log_offset
        FROM first GROUP BY decision_id, voter_commitment
    )
    SELECT v.decision_id, v.option, v.component, COUNT(*) AS voters
    FROM votes v JOIN latest l
      ON v.decision_id = l.decision_id AND v.log_offset = l.log_offset
    GROUP BY v.decision_id, v.option, v.component";

/// The tally as of the newest row of each cell in `tally_changes`.
const REPLAY: &str = "
    SELECT decision_id, option, component, count, weight_millionths FROM (
        SELECT *, ROW_NUMBER() OVER (
            PARTITION BY decision_id, option, component ORDER BY as_of_offset DESC) AS newest
        FROM tally_changes)
    WHERE newest = 1 AND count > 0";

/// The recount from the lake: per cell the voters counted from `votes` beside the count
/// and weight `tally_changes` published; a cell only one of them has is a row with NULLs.
fn recount_sql() -> String {
    format!(
        "WITH counted AS ({COUNTS}), published AS ({REPLAY})
         SELECT COALESCE(c.decision_id, p.decision_id), COALESCE(c.option, p.option),
                COALESCE(c.component, p.component), c.voters, p.count, p.weight_millionths
         FROM counted c FULL JOIN published p
           ON c.decision_id = p.decision_id AND c.option = p.option
          AND c.component = p.component"
    )
}

type Cell = (String, i64, String);
type Cells = BTreeMap<Cell, (i64, i64)>;
type Counts = BTreeMap<Cell, i64>;

/// The cells of a query's first three columns, each with the integer columns after them
/// (NULL as `None`).
fn rows_of(batches: &[RecordBatch]) -> Vec<(Cell, Vec<Option<i64>>)> {
    let mut rows = Vec::new();
    for batch in batches {
        let text = |i: usize| arrow_cast_to_strings(batch.column(i).as_ref());
        let (decisions, options, components) = (text(0), text(1), text(2));
        let values: Vec<_> = (3..batch.num_columns())
            .map(|i| batch.column(i).as_primitive::<Int64Type>())
            .collect();
        for row in 0..batch.num_rows() {
            let cell = (
                decisions[row].clone(),
                options[row].parse().unwrap(),
                components[row].clone(),
            );
            let values = values
                .iter()
                .map(|column| column.is_valid(row).then(|| column.value(row)))
                .collect();
            rows.push((cell, values));
        }
    }
    rows
}

/// The tally the lake recounts: voters from `votes`, weights from `tally_changes`; panics
/// where the two tables disagree on a cell's count or only one of them has it.
async fn recount_from_the_lake(sql: &LakeSql) -> Cells {
    let mut cells = Cells::new();
    for (cell, values) in rows_of(&sql.query(&recount_sql()).await.unwrap()) {
        let [voters, published, weight] = values[..] else {
            panic!("{values:?}")
        };
        assert_eq!(
            voters, published,
            "{cell:?}: voters in votes, count in tally_changes"
        );
        cells.insert(cell, (voters.unwrap(), weight.unwrap()));
    }
    cells
}

/// Cells of a query answering (cell, count, weight) or (cell, count).
fn cells_of(batches: &[RecordBatch]) -> Cells {
    rows_of(batches)
        .into_iter()
        .map(|(cell, values)| {
            (
                cell,
                (values[0].unwrap(), values.get(1).map_or(0, |w| w.unwrap())),
            )
        })
        .collect()
}

fn counts_of(cells: &Cells) -> Counts {
    cells
        .iter()
        .map(|(cell, (count, _))| (cell.clone(), *count))
        .collect()
}

/// Any string or integer column as text (DataFusion may read strings as views).
fn arrow_cast_to_strings(array: &dyn arrow_array::Array) -> Vec<String> {
    let display = arrow_cast::display::ArrayFormatter::try_new(array, &Default::default()).unwrap();
    (0..array.len())
        .map(|i| display.value(i).to_string())
        .collect()
}

/// A lake in a temporary folder, or under a prefix of its own in the test bucket.
fn lake_location(dir: &tempfile::TempDir, store: Store) -> LakeLocation {
    match store {
        Store::Local => LakeLocation::Local(dir.path().join("lake")),
        Store::S3 => common::s3_lake(),
    }
}

#[derive(Clone, Copy)]
enum Store {
    Local,
    S3,
}

#[path = "common/s3.rs"]
mod common;

/// Each test, against a local folder and against an S3-compatible server.
macro_rules! on_both_stores {
    ($($body:ident => $local:ident, $s3:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $local() {
            $body(Store::Local).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $s3() {
            $body(Store::S3).await;
        }
    )*};
}

on_both_stores! {
    recount_equals_the_tally => a_recount_in_sql_over_the_lake_equals_the_tally,
        a_recount_in_sql_over_a_lake_in_s3_equals_the_tally;
    tally_changes_replay => tally_changes_replay_to_the_live_tally_and_a_restart_writes_none_twice,
        tally_changes_in_s3_replay_and_a_restart_writes_none_twice;
    compaction => compaction_merges_small_files_and_no_row_counts_twice,
        compaction_in_s3_merges_small_files_and_no_row_counts_twice;
}

async fn recount_equals_the_tally(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let location = lake_location(&dir, store);
    let log =
        Arc::new(SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap());
    log.append_votes(&stream(5, 4_000)).unwrap();
    let lake = VoteLake::open(LakeConfig::new(location.clone())).unwrap();
    sync_votes(&lake, log.as_ref(), 700).unwrap();

    let decisions: Vec<Decision> = (1..5).map(decision).collect();
    let mut tally_lake = TallyChangeLake::open(LakeConfig::new(location.clone())).unwrap();
    tally_lake.append(engine_changes(&log, &decisions)).unwrap();
    let expected = recounted(&log, &decisions);
    assert!(expected.len() > 20);

    let sql = LakeSql::open(location).await.unwrap();
    assert_eq!(recount_from_the_lake(&sql).await, expected);

    // The date column comes from the folders and prunes: three days, every vote once.
    let per_day = sql
        .query("SELECT date, COUNT(*) AS n FROM votes GROUP BY date ORDER BY date")
        .await
        .unwrap();
    let total: i64 = per_day
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, 4_000);
    assert_eq!(per_day.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    // A filter on the date reads only the folders it leaves, and counts what it should.
    let mut by_day = [0i64; 3];
    for partition in 0..log.partitions() {
        for record in log.read_votes(partition, 0, usize::MAX).unwrap() {
            by_day[((record.vote.cast_at - START) / DAY_MICROS) as usize] += 1;
        }
    }
    for (filter, expected, folders) in [
        ("date = DATE '2026-06-02'", by_day[1], vec!["2026-06-02"]),
        ("date = '2026-06-03'", by_day[2], vec!["2026-06-03"]),
        ("'2026-06-02' < date", by_day[2], vec!["2026-06-03"]),
        (
            "date <= DATE '2026-06-02'",
            by_day[0] + by_day[1],
            vec!["2026-06-01", "2026-06-02"],
        ),
        (
            "date BETWEEN '2026-06-02' AND '2026-06-09'",
            by_day[1] + by_day[2],
            vec!["2026-06-02", "2026-06-03"],
        ),
        (
            "date > '2026-06-01' AND date < '2026-06-03'",
            by_day[1],
            vec!["2026-06-02"],
        ),
        (
            "date = '2026-06-01' OR date = '2026-06-03'",
            by_day[0] + by_day[2],
            vec!["2026-06-01", "2026-06-02", "2026-06-03"],
        ),
        ("date >= '2026-07-01'", 0, vec![]),
    ] {
        let statement = format!("SELECT COUNT(*) FROM votes WHERE {filter}");
        assert_eq!(count(&sql, &statement).await, expected, "{filter}");
        let plan = sql.query(&format!("EXPLAIN {statement}")).await.unwrap();
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        for day in ["2026-06-01", "2026-06-02", "2026-06-03"] {
            assert_eq!(
                plan.contains(&format!("date={day}")),
                folders.contains(&day),
                "{filter} reading {day}: {plan}"
            );
        }
    }

    // New files show in the next query (no stale listing).
    log.append_votes(&stream(6, 500)).unwrap();
    sync_votes(&lake, log.as_ref(), 700).unwrap();
    let count = sql.query("SELECT COUNT(*) FROM votes").await.unwrap();
    assert_eq!(
        count[0].column(0).as_primitive::<Int64Type>().value(0),
        4_500
    );
}

#[tokio::test]
async fn sql_cannot_change_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let sql = LakeSql::open(dir.path()).await.unwrap();
    for statement in [
        "CREATE TABLE x (a INT)",
        "DROP TABLE votes",
        "INSERT INTO votes SELECT * FROM votes",
        "SET datafusion.execution.batch_size = 1",
        "CREATE EXTERNAL TABLE y STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let error = sql.query(statement).await.unwrap_err();
        assert_eq!(error.code(), "sql_not_read_only", "{statement}: {error}");
    }
    assert!(sql.query("SELECT COUNT(*) FROM votes").await.is_ok());
    let error = sql.query("SELECT nonsense FROM nowhere").await.unwrap_err();
    assert_eq!(error.code(), "sql");
}

fn recounted(log: &SegmentLog, decisions: &[Decision]) -> Cells {
    let mut records = Vec::new();
    for partition in 0..log.partitions() {
        records.extend(log.read_votes(partition, 0, usize::MAX).unwrap());
    }
    let mut expected = Cells::new();
    for (id, tally) in recount(records.iter(), decisions) {
        for cell in tally.cells {
            expected.insert(
                (
                    id.to_string(),
                    i64::from(cell.option),
                    cell.component.to_string(),
                ),
                (cell.count as i64, cell.weight_sum as i64),
            );
        }
    }
    expected
}

/// Runs the engine over the whole log with the lake's recorder in front of its views, and
/// returns the tally changes it published.
fn engine_changes(log: &Arc<SegmentLog>, decisions: &[Decision]) -> Vec<TallyChange> {
    let views = Arc::new(InMemoryViews::new());
    let recorder = Arc::new(LakeViews::new(views.clone()));
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log.clone() as Arc<dyn VoteLog>,
        recorder.clone() as Arc<dyn ViewStore>,
        None,
        decisions.to_vec(),
    )
    .unwrap();
    for partition in 0..log.partitions() {
        let end = log.end_offset(partition).unwrap();
        let started = std::time::Instant::now();
        while views.frontier(partition) < end {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the engine fell behind"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    engine.shutdown().unwrap();
    recorder.take_changes()
}

async fn tally_changes_replay(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let location = lake_location(&dir, store);
    let log =
        Arc::new(SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap());
    let decisions: Vec<Decision> = (1..5).map(decision).collect();
    log.append_votes(&stream(11, 3_000)).unwrap();
    let config = LakeConfig::new(location.clone());
    let sql = LakeSql::open(location).await.unwrap();

    let changes = engine_changes(&log, &decisions);
    let mut lake = TallyChangeLake::open(config.clone()).unwrap();
    assert!(lake.append(changes).unwrap() > 0);
    assert_eq!(
        cells_of(&sql.query(REPLAY).await.unwrap()),
        recounted(&log, &decisions)
    );
    let rows_before = count(&sql, "SELECT COUNT(*) FROM tally_changes").await;

    // A restart replays the log: everything it publishes again is at or below the marks.
    drop(lake);
    let mut lake = TallyChangeLake::open(config.clone()).unwrap();
    assert_eq!(lake.append(engine_changes(&log, &decisions)).unwrap(), 0);
    assert_eq!(
        count(&sql, "SELECT COUNT(*) FROM tally_changes").await,
        rows_before
    );

    // More votes: their changes are written, and the replay still equals the tally.
    log.append_votes(&stream(12, 1_000)).unwrap();
    assert!(lake.append(engine_changes(&log, &decisions)).unwrap() > 0);
    assert_eq!(
        cells_of(&sql.query(REPLAY).await.unwrap()),
        recounted(&log, &decisions)
    );
}

async fn count(sql: &LakeSql, statement: &str) -> i64 {
    sql.query(statement).await.unwrap()[0]
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0)
}

async fn compaction(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let location = lake_location(&dir, store);
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append_votes(&stream(21, 3_000)).unwrap();
    let sql = LakeSql::open(location.clone()).await.unwrap();
    let files = || location.table_files("votes").unwrap().len();
    let exact = "SELECT COUNT(*) FROM (SELECT DISTINCT log_partition, log_offset FROM votes)";

    // Small ranges: many small files.
    let mut config = LakeConfig::new(location.clone());
    config.compact_grace = Duration::from_secs(3600);
    let lake = VoteLake::open(config.clone()).unwrap();
    sync_votes(&lake, &log, 100).unwrap();
    let small = files();
    assert!(small > 30, "{small} files");

    // Merged, with the merged files kept for the grace period: each row still counts once.
    let (merged, deleted) = lake.compact().unwrap();
    assert!(merged >= small as u64 / 2, "{merged} merged");
    assert_eq!(deleted, 0);
    assert!(files() > small);
    assert_eq!(count(&sql, "SELECT COUNT(*) FROM votes").await, 3_000);
    assert_eq!(count(&sql, exact).await, 3_000);

    // Past the grace period the superseded files go.
    config.compact_grace = Duration::ZERO;
    let lake = VoteLake::open(config.clone()).unwrap();
    let (_, deleted) = lake.compact().unwrap();
    assert_eq!(deleted, merged);
    assert!(files() < small);
    assert_eq!(count(&sql, "SELECT COUNT(*) FROM votes").await, 3_000);

    // A restart after compaction goes on after the merged ranges, with nothing twice.
    log.append_votes(&stream(22, 700)).unwrap();
    let lake = VoteLake::open(config).unwrap();
    sync_votes(&lake, &log, 100).unwrap();
    assert_eq!(count(&sql, "SELECT COUNT(*) FROM votes").await, 3_700);
    assert_eq!(count(&sql, exact).await, 3_700);
    let decisions: Vec<Decision> = (1..5).map(decision).collect();
    assert_eq!(
        counts_of(&cells_of(&sql.query(COUNTS).await.unwrap())),
        counts_of(&recounted(&log, &decisions))
    );
}

/// A store that cannot be reached fails with `lake_store`, for writes and for queries.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_fails_with_its_own_code() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut options = common::s3_options();
    options.retain(|(key, _)| *key != "aws_endpoint");
    options.push(("aws_endpoint", endpoint));
    let location = LakeLocation::s3("s3://nowhere/lake", options).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append_votes(&stream(31, 10)).unwrap();
    // Opening the table already lists it (for files of an earlier layout), so the write
    // may fail there or at the copy.
    let error = VoteLake::open(LakeConfig::new(location.clone()))
        .and_then(|lake| sync_votes(&lake, &log, 100))
        .unwrap_err();
    assert_eq!(error.code(), "lake_store", "{error}");

    let sql = LakeSql::open(location).await.unwrap();
    let error = sql.query("SELECT COUNT(*) FROM votes").await.unwrap_err();
    assert_eq!(error.code(), "lake_store", "{error}");
}

mod recount_property {
    //! Issue 16: the lake's recount (voters from `votes`, weights from `tally_changes`)
    //! equals the engine's tally after every flush, whatever the votes, their weights, the
    //! changes of mind, the redeliveries and the sizes of the ranges copied. Beside it, a
    //! node's writer with a random k gates the same changes: each row it shows is the
    //! recount of the log up to the row's position, and two rows of a cell are k voters
    //! apart, across restarts of the writer too.

    use super::*;
    use canopy_schemas::{DecisionId, Vote, VoteId, VoterId, Weight};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Cast {
            decision: u128,
            voter: u8,
            option: u16,
            component: usize,
            weight: u32,
            minute: i64,
        },
        /// An earlier vote delivered again.
        Redeliver { back: usize },
        /// The node flushes: the engine catches up and the lake copies what is new.
        Flush,
        /// The gated writer stops and opens again (what a node's restart does to it).
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (
                (1u128..4, 0u8..8, 0u16..3),
                (0..Component::ALL.len(), 1u32..5_000_000, 0i64..3 * 24 * 60),
            )
                .prop_map(|((decision, voter, option), (component, weight, minute))| {
                    Step::Cast { decision, voter, option, component, weight, minute }
                }),
            2 => (0usize..30).prop_map(|back| Step::Redeliver { back }),
            1 => Just(Step::Flush),
            1 => Just(Step::Restart),
        ]
    }

    /// The vote a `Cast` step casts, with vote id `id`.
    fn logged_vote(step: &Step, id: u128) -> Option<LoggedVote> {
        let &Step::Cast {
            decision,
            voter,
            option,
            component,
            weight,
            minute,
        } = step
        else {
            return None;
        };
        let component = Component::ALL[component];
        // A verified weight belongs to the voter; the democratic component weighs one.
        let weight = if component == Component::Democratic {
            Weight::ONE
        } else {
            Weight(weight)
        };
        let vote = Vote {
            vote_id: VoteId(id),
            decision_id: DecisionId(decision),
            voter_id: VoterId(u128::from(voter)),
            ballot: canopy_schemas::Ballot::single_choice(option).unwrap(),
            component,
            weight,
            cast_at: START + minute * 60_000_000,
        };
        Some(canopy_testkit::logged(vote, voter))
    }

    /// The gated lake's rows, each cell's in the order they were shown.
    const GATED_ROWS: &str = "SELECT decision_id, option, component, count, weight_millionths,
            CAST(as_of_partition AS BIGINT), as_of_offset
        FROM tally_changes ORDER BY decision_id, option, component, as_of_offset";

    /// Each row the gate let through is the cell as a recount of the log up to the row's
    /// position gives it, and its count is at least `min_group` from the row before (none:
    /// zero), so the difference of any two is at least that many voters' votes.
    fn shown_rows_are_recounts_k_apart(
        shown: &[RecordBatch],
        log: &SegmentLog,
        decisions: &[Decision],
        min_group: u64,
    ) -> Result<(), TestCaseError> {
        let mut records = Vec::new();
        for partition in 0..log.partitions() {
            records.extend(log.read_votes(partition, 0, usize::MAX).unwrap());
        }
        let mut before: Counts = Counts::new();
        for (cell, values) in rows_of(shown) {
            let [Some(count), Some(weight), Some(partition), Some(offset)] = values[..] else {
                panic!("{values:?}")
            };
            let previous = before.insert(cell.clone(), count).unwrap_or(0);
            if min_group > 1 {
                prop_assert!(
                    (count - previous).unsigned_abs() >= min_group,
                    "{cell:?}: {previous} then {count} voters, k = {min_group}"
                );
            }
            let prefix = records.iter().filter(|r| {
                r.position.partition != partition as u32 || (r.position.offset as i64) < offset
            });
            let recounted = recount(prefix, decisions)
                .into_iter()
                .flat_map(|(id, tally)| {
                    tally.cells.into_iter().map(move |c| {
                        (
                            (id.to_string(), i64::from(c.option), c.component.to_string()),
                            (c.count as i64, c.weight_sum as i64),
                        )
                    })
                })
                .find(|(recounted_cell, _)| *recounted_cell == cell)
                .map_or((0, 0), |(_, values)| values);
            prop_assert_eq!(recounted, (count, weight), "{:?} as of {}", cell, offset);
        }
        Ok(())
    }

    /// Waits until the engine has published everything the log holds.
    fn caught_up(log: &SegmentLog, views: &InMemoryViews) {
        let started = std::time::Instant::now();
        for partition in 0..log.partitions() {
            let end = log.end_offset(partition).unwrap();
            while views.frontier(partition) < end {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the engine fell behind"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    proptest! {
        // Each case runs an engine and a query per flush: a dozen cases, about a hundred checks.
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn issue_16_the_recount_from_the_lake_equals_the_engines_tally(
            steps in proptest::collection::vec(step(), 1..150),
            range_rows in 1usize..60,
            min_group in 1u64..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let log = Arc::new(
                SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap(),
            );
            let decisions: Vec<Decision> = (1..4).map(decision).collect();
            let views = Arc::new(InMemoryViews::new());
            let recorder = Arc::new(LakeViews::new(views.clone()));
            let engine = TallyEngine::start(
                EngineConfig::default(),
                log.clone() as Arc<dyn VoteLog>,
                recorder.clone() as Arc<dyn ViewStore>,
                None,
                decisions.clone(),
            )
            .unwrap();
            let config = LakeConfig::new(dir.path().join("lake"));
            let votes = VoteLake::open(config.clone()).unwrap();
            let mut cursor = canopy_analytics::SyncCursor::default();
            let mut tally = TallyChangeLake::open(config).unwrap();
            let sql = LakeSql::new(dir.path().join("lake"), Default::default());
            let gated_config = LakeConfig {
                min_group_voters: min_group,
                ..LakeConfig::new(dir.path().join("gated"))
            };
            let mut gated = LakeWriter::open(gated_config.clone()).unwrap();
            let gated_sql = LakeSql::new(dir.path().join("gated"), Default::default());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();

            let mut cast: Vec<LoggedVote> = Vec::new();
            let mut pending: Vec<LoggedVote> = Vec::new();
            for step in steps.iter().chain([&Step::Flush]) {
                match step {
                    Step::Redeliver { back } if !cast.is_empty() => {
                        pending.push(cast[cast.len() - 1 - back % cast.len()]);
                    }
                    Step::Redeliver { .. } => {}
                    Step::Restart => {
                        drop(gated);
                        gated = LakeWriter::open(gated_config.clone()).unwrap();
                    }
                    Step::Cast { .. } => {
                        let vote = logged_vote(step, cast.len() as u128).expect("a cast");
                        cast.push(vote);
                        pending.push(vote);
                    }
                    Step::Flush => {
                        if !pending.is_empty() {
                            log.append_votes(&std::mem::take(&mut pending)).unwrap();
                        }
                        caught_up(&log, &views);
                        canopy_analytics::sync_log(&votes, log.as_ref(), range_rows, &mut cursor)
                            .unwrap();
                        let changes = recorder.take_changes();
                        tally.append(changes.clone()).unwrap();
                        gated.write_tally_changes(changes).unwrap();
                        let got = runtime.block_on(recount_from_the_lake(&sql));
                        prop_assert_eq!(got, recounted(&log, &decisions));
                        let shown = runtime.block_on(gated_sql.query(GATED_ROWS)).unwrap();
                        shown_rows_are_recounts_k_apart(&shown, &log, &decisions, min_group)?;
                    }
                }
            }
            engine.shutdown().unwrap();
        }
    }
}
