//!
//! SQL over the lake: a recount in SQL over the votes table reproduces every decision's
//! tally as the engine's recount computes it from the log (first delivery of each vote id,
//! then each voter's latest vote), and the lake is read-only to SQL.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use canopy_analytics::{LakeConfig, LakeSql, VoteLake, sync_votes};
use canopy_dataflow::recount;
use canopy_ingest::{SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, LoggedVote, Method, Vote, VoteId, VoterId,
    VoterSalt, Weight,
};
use rand::{Rng, SeedableRng};

const START: i64 = 1_780_272_000_000_000; // 2026-06-01T00:00:00Z

fn decision(id: u128) -> Decision {
    Decision {
        id: DecisionId(id),
        title: format!("decision {id}"),
        region: "north".into(),
        options: vec!["a".into(), "b".into(), "c".into()],
        opens_at: 0,
        closes_at: i64::MAX,
        weights: ComponentWeights::DEFAULT,
        quorum: 10,
        method: Method::SingleChoice,
    }
}

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
        let voter = VoterId(rng.random_range(0..150));
        let vote = Vote {
            vote_id: VoteId(rng.random()),
            decision_id: DecisionId(rng.random_range(1..5)),
            voter_id: voter,
            option: rng.random_range(0..3),
            component: [
                Component::Democratic,
                Component::Expert,
                Component::Community,
            ][rng.random_range(0..3)],
            weight: Weight(rng.random_range(1..3_000_000)),
            cast_at: START + rng.random_range(0..3 * 86_400_000_000),
        };
        out.push(LoggedVote::new(vote, &VoterSalt([voter.0 as u8; 32])));
    }
    out
}

/// The tally in SQL: first delivery of each (decision, voter, vote id), then per
/// (decision, voter) the one with the highest offset, counted per (option, component).
const RECOUNT: &str = "
    WITH first AS (
        SELECT decision_id, voter_commitment, vote_id, MIN(log_offset) AS log_offset
        FROM votes GROUP BY decision_id, voter_commitment, vote_id
    ), latest AS (
        SELECT decision_id, voter_commitment, MAX(log_offset) AS log_offset
        FROM first GROUP BY decision_id, voter_commitment
    )
    SELECT v.decision_id, v.option, v.component,
           COUNT(*) AS voters, SUM(v.weight_millionths) AS weight
    FROM votes v JOIN latest l
      ON v.decision_id = l.decision_id AND v.log_offset = l.log_offset
    GROUP BY v.decision_id, v.option, v.component
    ORDER BY v.decision_id, v.option, v.component";

type Cells = BTreeMap<(String, i64, String), (i64, i64)>;

fn cells_of(batches: &[RecordBatch]) -> Cells {
    let mut cells = Cells::new();
    for batch in batches {
        let text = |i: usize| arrow_cast_to_strings(batch.column(i).as_ref());
        let (decisions, options, components) = (text(0), text(1), text(2));
        let voters = batch.column(3).as_primitive::<Int64Type>();
        let weights = batch.column(4).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            cells.insert(
                (
                    decisions[row].clone(),
                    options[row].parse().unwrap(),
                    components[row].clone(),
                ),
                (voters.value(row), weights.value(row)),
            );
        }
    }
    cells
}

/// Any string or integer column as text (DataFusion may read strings as views).
fn arrow_cast_to_strings(array: &dyn arrow_array::Array) -> Vec<String> {
    let display = arrow_cast::display::ArrayFormatter::try_new(array, &Default::default()).unwrap();
    (0..array.len())
        .map(|i| display.value(i).to_string())
        .collect()
}

#[tokio::test]
async fn a_recount_in_sql_over_the_lake_equals_the_tally() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path().join("log"), SegmentLogConfig::default()).unwrap();
    log.append(&stream(5, 4_000)).unwrap();
    let lake = VoteLake::open(LakeConfig::new(dir.path().join("lake"))).unwrap();
    sync_votes(&lake, &log, 700).unwrap();

    let mut records = Vec::new();
    for partition in 0..log.partitions() {
        records.extend(log.read(partition, 0, usize::MAX).unwrap());
    }
    let decisions: Vec<Decision> = (1..5).map(decision).collect();
    let mut expected = Cells::new();
    for (id, tally) in recount(records.iter(), &decisions) {
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
    assert!(expected.len() > 20);

    let sql = LakeSql::open(&dir.path().join("lake")).await.unwrap();
    let got = cells_of(&sql.query(RECOUNT).await.unwrap());
    assert_eq!(got, expected);

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

    // New files show in the next query (no stale listing).
    log.append(&stream(6, 500)).unwrap();
    sync_votes(&lake, &log, 700).unwrap();
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
