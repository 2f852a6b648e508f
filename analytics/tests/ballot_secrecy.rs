//! Issue 16, ballot secrecy in the lake: analysts (a role below admin) must not be able to
//! link one expert's votes across decisions, nor find a vote by the moment it was cast.
//!
//! The lake here holds what a node's would: the votes of five experts of distinct weights
//! and of ten citizens in three decisions, the tally changes the engine published after
//! each vote, and checkpoints cut at times of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use canopy_analytics::{
    CheckpointEntry, CheckpointLake, LakeConfig, LakeQuery, LakeReader, LakeSql, LakeViews,
    LakeWriter, TallyChange, TallyChangeLake, VoteLake, sync_votes,
};
use canopy_dataflow::{EngineConfig, InMemoryViews, TallyEngine, ViewStore};
use canopy_ingest::{SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::{Component, Decision, Vote, Weight};

const HOUR_MICROS: i64 = 3_600_000_000;
/// 2026-06-01T00:00:00Z.
const START: i64 = 1_780_272_000_000_000;
const DECISIONS: [u128; 3] = [1, 2, 3];
/// Verified weights, one per expert, all different: each would name its expert.
const EXPERT_WEIGHTS: [u32; 5] = [600_000, 1_500_000, 2_250_000, 3_000_000, 4_750_000];
const CITIZENS: u128 = 10;
/// k of the lake's gate on tally changes.
const MIN_GROUP: u64 = 2;

/// Who cast a vote, as the test knows and the lake must not tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Person {
    Expert(usize),
    Citizen(u128),
}

/// The votes, in the order they are cast, with who cast each. Decisions take turns, and
/// each vote is published before the next is cast; decisions 1 and 3 are voted on in the
/// same hour, so the hour names no expert either.
fn ballots() -> Vec<(Vote, Person)> {
    let mut out = Vec::new();
    for (turn, decision) in DECISIONS.into_iter().enumerate() {
        let hour = START + (decision as i64 % 2) * HOUR_MICROS;
        // The experts come in another order in each decision: an order kept from decision
        // to decision would link through the log offset (see the lake's known limits).
        for place in 0..EXPERT_WEIGHTS.len() {
            let expert = (place + 2 * turn) % EXPERT_WEIGHTS.len();
            let weight = EXPERT_WEIGHTS[expert];
            let vote = Vote {
                cast_at: hour + (expert as i64 * 7 + turn as i64) * 60_000_000 + 123_457,
                ..canopy_testkit::expert_vote(
                    out.len() as u128 + 1,
                    decision,
                    100 + expert as u128,
                    ((expert + turn) % 3) as u16,
                    Weight(weight),
                )
            };
            out.push((vote, Person::Expert(expert)));
        }
        for citizen in 0..CITIZENS {
            let vote = Vote {
                cast_at: hour + citizen as i64 * 250_000_000 + 31,
                ..canopy_testkit::vote(
                    out.len() as u128 + 1,
                    decision,
                    citizen + 1,
                    (citizen % 3) as u16,
                )
            };
            out.push((vote, Person::Citizen(citizen)));
        }
    }
    out
}

/// A lake of [`ballots`]: votes copied from the log, the tally changes the engine
/// published after each vote, and a checkpoint per decision.
fn secrecy_lake(root: &Path) -> Vec<(Vote, Person)> {
    let ballots = ballots();
    let log = Arc::new(SegmentLog::open(root.join("log"), SegmentLogConfig::default()).unwrap());
    let decisions: Vec<Decision> = DECISIONS
        .into_iter()
        .map(canopy_testkit::decision)
        .collect();
    let views = Arc::new(InMemoryViews::new());
    let recorder = Arc::new(LakeViews::new(views.clone()));
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log.clone() as Arc<dyn VoteLog>,
        recorder.clone() as Arc<dyn ViewStore>,
        None,
        decisions,
    )
    .unwrap();
    // One vote at a time, each published before the next comes: a quiet day's pace.
    for (vote, person) in &ballots {
        let salt = match person {
            Person::Expert(expert) => 100 + *expert as u8,
            Person::Citizen(citizen) => *citizen as u8,
        };
        let positions = log
            .append_votes(&[canopy_testkit::logged(*vote, salt)])
            .unwrap();
        let position = positions[0];
        let started = std::time::Instant::now();
        while views.frontier(position.partition) <= position.offset {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the engine fell behind"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    engine.shutdown().unwrap();

    let config = LakeConfig::new(root.join("lake"));
    sync_votes(
        &VoteLake::open(config.clone()).unwrap(),
        log.as_ref(),
        1_000,
    )
    .unwrap();
    // What a node writes: the changes its gate lets through. k = 2, as the default of 5
    // would show none of these small cells at all.
    let mut writer = LakeWriter::open(LakeConfig {
        min_group_voters: MIN_GROUP,
        ..config.clone()
    })
    .unwrap();
    assert!(writer.write_tally_changes(recorder.take_changes()).unwrap() > 0);
    drop(writer);
    let checkpoints = DECISIONS
        .into_iter()
        .map(|decision| CheckpointEntry {
            decision_id: canopy_schemas::DecisionId(decision).to_string(),
            tree_size: 15,
            root: "00".repeat(32),
            note: "a signed note".into(),
            log_partition: 0,
            log_offset: 15,
            // A second after the last vote, as a lone leaf's checkpoint is.
            cut_at: START + HOUR_MICROS + 1_000_017,
        })
        .collect();
    let mut checkpoint_lake = CheckpointLake::open(config).unwrap();
    assert_eq!(checkpoint_lake.append(checkpoints).unwrap(), 3);
    ballots
}

async fn sql_over(root: &Path) -> LakeSql {
    LakeSql::open(root.join("lake")).await.unwrap()
}

/// Every cell of a result as text, row by row, with the column names.
fn text_rows(batches: &[RecordBatch]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for batch in batches {
        names = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| {
                arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                    .unwrap()
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c.value(row).to_string()).collect());
        }
    }
    (names, rows)
}

/// The pairs a linking query finds: its rows whose second column (decisions) exceeds one.
/// A query the lake cannot answer (the column is gone) finds none.
async fn linked(sql: &LakeSql, query: &str) -> Vec<Vec<String>> {
    match sql.query(query).await {
        Ok(batches) => {
            let (_, rows) = text_rows(&batches);
            rows.into_iter()
                .filter(|row| row[1].parse::<i64>().unwrap() > 1)
                .collect()
        }
        Err(error) => {
            assert_eq!(error.code(), "sql", "{query}: {error}");
            Vec::new()
        }
    }
}

/// The query of the issue: an expert's weight is the same in every decision, so grouping
/// the experts' votes by it pairs each expert's votes across decisions.
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_the_expert_weight_links_no_votes_across_decisions() {
    let dir = tempfile::tempdir().unwrap();
    secrecy_lake(dir.path());
    let sql = sql_over(dir.path()).await;
    let pairs = linked(
        &sql,
        "SELECT weight_millionths, COUNT(DISTINCT decision_id) FROM votes \
         WHERE component = 'expert' GROUP BY 1",
    )
    .await;
    assert_eq!(pairs, Vec::<Vec<String>>::new());
    // Whatever the weight may be called now, and any class of it.
    for column in ["weight", "weight_class", "weight_millionths", "weight_sum"] {
        let pairs = linked(
            &sql,
            &format!(
                "SELECT {column}, COUNT(DISTINCT decision_id) FROM votes \
                 WHERE component = 'expert' GROUP BY 1"
            ),
        )
        .await;
        assert_eq!(pairs, Vec::<Vec<String>>::new(), "{column}");
    }
}

/// The general form: no column of `votes` has a value that only one expert's votes share
/// across decisions. (Values shared by several experts, such as an option or an hour in
/// which several voted, name no one.)
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_no_column_of_votes_singles_out_an_expert_across_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let ballots = secrecy_lake(dir.path());
    let who: BTreeMap<String, Person> = ballots
        .iter()
        .map(|(vote, person)| (vote.vote_id.to_string(), *person))
        .collect();
    let sql = sql_over(dir.path()).await;
    let (names, rows) = text_rows(
        &sql.query("SELECT * FROM votes WHERE component = 'expert'")
            .await
            .unwrap(),
    );
    assert_eq!(rows.len(), EXPERT_WEIGHTS.len() * DECISIONS.len());
    let column = |name: &str| names.iter().position(|n| n == name).unwrap();
    let (decision, vote_id) = (column("decision_id"), column("vote_id"));
    for (index, name) in names.iter().enumerate() {
        if index == decision {
            continue;
        }
        // Per value of the column: the decisions and the people among its votes.
        let mut groups: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<Person>)> = BTreeMap::new();
        for row in &rows {
            let group = groups.entry(row[index].as_str()).or_default();
            group.0.insert(row[decision].as_str());
            group.1.insert(who[&row[vote_id]]);
        }
        for (value, (decisions, people)) in groups {
            assert!(
                decisions.len() < 2 || people.len() > 1,
                "{name} = {value} holds only {people:?}'s votes, in decisions {decisions:?}"
            );
        }
    }
}

/// Timestamp columns of tables about no voter: a decision's window and its status changes,
/// sensors' times.
const NOT_ABOUT_VOTERS: [(&str, &str); 6] = [
    ("decisions", "opens_at"),
    ("decisions", "closes_at"),
    ("decision_history", "at"),
    ("sensor_readings", "observed_at"),
    ("window_features", "window_start"),
    ("window_features", "window_end"),
];

/// No time in the lake that is about votes is finer than the hour: not when a vote was
/// cast, nor when the tally it changed was published, nor when the checkpoint after it
/// was cut (each of those, to the second, would find the vote of someone whose moment of
/// voting is known). A new time column fails here until it is either hours or listed in
/// [`NOT_ABOUT_VOTERS`].
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_no_time_about_votes_is_finer_than_the_hour() {
    let dir = tempfile::tempdir().unwrap();
    secrecy_lake(dir.path());
    let sql = sql_over(dir.path()).await;
    let (_, columns) = text_rows(
        &sql.query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1, 2",
        )
        .await
        .unwrap(),
    );
    let tables: BTreeSet<&str> = columns.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(tables, LakeReader::Analyst.tables().collect());
    let mut checked = 0;
    for column in &columns {
        let (table, name, kind) = (&column[0], &column[1], &column[2]);
        if !kind.starts_with("Timestamp") {
            assert!(!name.ends_with("_at"), "{table}.{name} is a time as {kind}");
            continue;
        }
        if NOT_ABOUT_VOTERS.contains(&(table.as_str(), name.as_str())) {
            continue;
        }
        let count = |query: String| {
            let sql = &sql;
            async move {
                sql.query(&query).await.unwrap()[0]
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .value(0)
            }
        };
        let rows = count(format!("SELECT COUNT(*) FROM {table}")).await;
        assert!(rows > 0, "{table} is empty: nothing checked");
        let finer = count(format!(
            "SELECT COUNT(*) FROM {table} WHERE CAST({name} AS BIGINT) % {HOUR_MICROS} <> 0"
        ))
        .await;
        assert_eq!(
            finer, 0,
            "{table}.{name}: {finer} of {rows} rows finer than the hour"
        );
        checked += 1;
    }
    // votes.cast_hour, tally_changes.published_hour, checkpoints.cut_hour.
    assert_eq!(checked, 3);
}

/// `tally_changes` as layout 2 kept it recorded the tally after every published epoch, so on
/// a quiet day a cell's consecutive rows differed by one vote, and the difference was that
/// expert's weight: the same pairing as the weight column's, one window function away. The
/// gate shows a cell's new state only once k voters moved it: the differences are sums of
/// at least k experts' weights.
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_tally_changes_differences_link_no_votes_across_decisions() {
    let dir = tempfile::tempdir().unwrap();
    secrecy_lake(dir.path());
    let sql = sql_over(dir.path()).await;
    let pairs = linked(
        &sql,
        "SELECT gained, COUNT(DISTINCT decision_id) FROM (
             SELECT decision_id,
                    weight_millionths - LAG(weight_millionths, 1, 0) OVER cell AS gained,
                    count - LAG(count, 1, 0) OVER cell AS joined
             FROM tally_changes WHERE component = 'expert'
             WINDOW cell AS (PARTITION BY decision_id, option, component ORDER BY as_of_offset))
         WHERE joined = 1 GROUP BY 1",
    )
    .await;
    assert_eq!(pairs, Vec::<Vec<String>>::new());
    // Expert cells are shown, each difference k or more experts together.
    let (_, steps) = text_rows(
        &sql.query(
            "SELECT joined FROM (
                 SELECT count - LAG(count, 1, 0) OVER (
                     PARTITION BY decision_id, option, component ORDER BY as_of_offset) AS joined
                 FROM tally_changes WHERE component = 'expert')",
        )
        .await
        .unwrap(),
    );
    assert!(!steps.is_empty(), "no expert cell shown: nothing checked");
    for step in steps {
        assert!(
            step[0].parse::<i64>().unwrap().unsigned_abs() >= MIN_GROUP,
            "{step:?}"
        );
    }
}

/// A lake of layout 2 kept every change: opened by a node, the rows its gate would not have
/// let through are left out (the share column with them), and what stays is each cell's
/// changes k voters apart, the marks kept.
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_a_lake_of_every_change_keeps_only_what_the_gate_lets_through() {
    use arrow_array::TimestampMicrosecondArray;
    use arrow_array::{ArrayRef, Date32Array, Int32Array, Int64Array, StringArray};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("lake/tally_changes/date=2026-06-01");
    std::fs::create_dir_all(&folder).unwrap();
    // One expert cell gaining a voter at each of offsets 1..=7, in two files.
    let write = |file: u64, offsets: std::ops::RangeInclusive<i64>| {
        let rows = offsets.clone().count();
        let int64 = |values: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(values)) };
        let batch = RecordBatch::try_from_iter([
            (
                "decision_id",
                Arc::new(StringArray::from(vec!["d"; rows])) as ArrayRef,
            ),
            ("option", Arc::new(Int32Array::from(vec![1; rows]))),
            (
                "component",
                Arc::new(StringArray::from(vec!["expert"; rows])),
            ),
            ("count", int64(offsets.clone().collect())),
            (
                "weight_millionths",
                int64(offsets.clone().map(|o| o * 1_100_000).collect()),
            ),
            ("share_ppb", int64(vec![1_000_000_000; rows])),
            ("as_of_partition", Arc::new(Int32Array::from(vec![0; rows]))),
            ("as_of_offset", int64(offsets.clone().collect())),
            (
                "published_hour",
                Arc::new(TimestampMicrosecondArray::from(vec![START; rows]).with_timezone("UTC")),
            ),
            ("date", Arc::new(Date32Array::from(vec![20_605; rows]))),
        ])
        .unwrap();
        let properties = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "canopy.marks".into(),
                format!(r#"{{"p0":{}}}"#, offsets.end()),
            )]))
            .build();
        let path = folder.join(format!("part-s-{file:020}-{file:020}.parquet"));
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            batch.schema(),
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    };
    write(0, 1..=4);
    write(1, 5..=7);
    std::fs::create_dir_all(dir.path().join("lake/tally_changes/_layout")).unwrap();
    std::fs::write(dir.path().join("lake/tally_changes/_layout/v2"), "layout 2").unwrap();

    let config = LakeConfig {
        min_group_voters: 3,
        ..LakeConfig::new(dir.path().join("lake"))
    };
    let lake = TallyChangeLake::open(config.clone()).unwrap();
    assert_eq!(lake.mark("p0"), Some(7));
    let sql = sql_over(dir.path()).await;
    let (names, rows) = text_rows(
        &sql.query("SELECT * FROM tally_changes ORDER BY as_of_offset")
            .await
            .unwrap(),
    );
    assert!(!names.contains(&"share_ppb".to_string()), "{names:?}");
    let counts: Vec<&str> = rows.iter().map(|row| row[3].as_str()).collect();
    // From none: 3 voters, then 6; the 7th is one voter on from the 6th.
    assert_eq!(counts, ["3", "6"]);
    // A node writing on: the gate knows the lake shows 6, so 8 waits and 9 is shown.
    drop(lake);
    let mut writer = LakeWriter::open(config).unwrap();
    let change = |count: i64| TallyChange {
        decision_id: "d".into(),
        option: 1,
        component: "expert",
        count,
        weight_millionths: count * 1_100_000,
        as_of_partition: 0,
        as_of_offset: 10 + count as u64,
        published_at: START,
    };
    assert_eq!(writer.write_tally_changes(vec![change(8)]).unwrap(), 0);
    drop(writer);
    let mut writer = LakeWriter::open(LakeConfig {
        min_group_voters: 3,
        ..LakeConfig::new(dir.path().join("lake"))
    })
    .unwrap();
    assert_eq!(writer.write_tally_changes(vec![change(8)]).unwrap(), 0);
    assert_eq!(writer.write_tally_changes(vec![change(9)]).unwrap(), 1);
}

/// A `tally_changes` file an earlier version wrote (layout 1, `published_at` to the
/// microsecond) is refused to readers, then rewritten in place when the table is opened:
/// the hour instead, and the marks in its footer kept, so a restart still writes nothing
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn issue_16_an_old_tally_changes_file_is_rewritten_with_its_marks() {
    use arrow_array::{
        ArrayRef, Date32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;

    let dir = tempfile::tempdir().unwrap();
    let published_at = START + 5 * HOUR_MICROS + 4_321;
    let int64 = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v])) };
    let batch = RecordBatch::try_from_iter([
        (
            "decision_id",
            Arc::new(StringArray::from(vec!["d"])) as ArrayRef,
        ),
        ("option", Arc::new(Int32Array::from(vec![1]))),
        ("component", Arc::new(StringArray::from(vec!["expert"]))),
        ("count", int64(1)),
        ("weight_millionths", int64(2_500_000)),
        ("share_ppb", int64(1_000_000_000)),
        ("as_of_partition", Arc::new(Int32Array::from(vec![0]))),
        ("as_of_offset", int64(8)),
        (
            "published_at",
            Arc::new(TimestampMicrosecondArray::from(vec![published_at]).with_timezone("UTC")),
        ),
        ("date", Arc::new(Date32Array::from(vec![20_605]))),
    ])
    .unwrap();
    let folder = dir.path().join("lake/tally_changes/date=2026-06-01");
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join(format!("part-s-{:020}-{:020}.parquet", 0, 0));
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "canopy.marks".into(),
            r#"{"p0":8}"#.to_string(),
        )]))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        batch.schema(),
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let sql = sql_over(dir.path()).await;
    let error = sql
        .query("SELECT COUNT(*) FROM tally_changes")
        .await
        .unwrap_err();
    assert_eq!(error.code(), "lake_old_layout", "{error}");

    // k = 1: the gate lets every change through, and this test is about the hour.
    let config = LakeConfig {
        min_group_voters: 1,
        ..LakeConfig::new(dir.path().join("lake"))
    };
    let lake = TallyChangeLake::open(config.clone()).unwrap();
    assert_eq!(lake.mark("p0"), Some(8));
    let (_, rows) = text_rows(
        &sql.query(
            "SELECT CAST(published_hour AS BIGINT), weight_millionths, as_of_offset \
             FROM tally_changes",
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        rows,
        vec![vec![
            (START + 5 * HOUR_MICROS).to_string(),
            "2500000".to_string(),
            "8".to_string()
        ]]
    );
    // Opened again, nothing is left to rewrite, and the marks still hold.
    drop(lake);
    let lake = TallyChangeLake::open(config).unwrap();
    assert_eq!(lake.mark("p0"), Some(8));
}

#[test]
fn the_ballots_are_what_the_tests_say() {
    let ballots = ballots();
    let experts: Vec<_> = ballots
        .iter()
        .filter(|(vote, _)| vote.component == Component::Expert)
        .collect();
    assert_eq!(experts.len(), EXPERT_WEIGHTS.len() * DECISIONS.len());
    // Each hour holds several experts' votes, and hours hold votes of more than one decision.
    let mut per_hour: BTreeMap<i64, (BTreeSet<u128>, BTreeSet<Person>)> = BTreeMap::new();
    for (vote, person) in &experts {
        let hour = per_hour
            .entry(vote.cast_at.div_euclid(HOUR_MICROS))
            .or_default();
        hour.0.insert(vote.decision_id.0);
        hour.1.insert(*person);
    }
    assert!(per_hour.values().all(|(_, people)| people.len() > 1));
    assert!(per_hour.values().any(|(decisions, _)| decisions.len() > 1));
    // Every expert in every decision, each weight once.
    let weights: BTreeSet<u32> = experts.iter().map(|(vote, _)| vote.weight.0).collect();
    assert_eq!(weights.len(), EXPERT_WEIGHTS.len());
}
