//! Golden SQL: the `.slt` files in `tests/golden/` run against a lake built by the lake's
//! own writers from the committed data set in `testdata/golden/`. A query block's rows must
//! equal the file's (sorted first under `rowsort`); `statement error <code>` must be refused
//! with that code. `CANOPY_GOLDEN_BLESS=1` writes the rows a run got back into the files.

use std::path::Path;

use canopy_analytics::{DecisionLake, LakeConfig, LakeQuery, LakeSql, VoteLake};
use canopy_ingest::{LogRecord, Position, partition_for};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, Method, Vote, VoteId, VoterCommitment,
    VoterId, VoterSalt, Weight, parse_event_time,
};

const PARTITIONS: u32 = 4;

fn data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn build_lake(root: &Path) {
    let config = LakeConfig::new(root);
    let decisions: Vec<Decision> = data("decisions.csv")
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Decision {
                electorate: Default::default(),
                credits: 0,
                id: DecisionId(f[0].parse().unwrap()),
                title: f[1].into(),
                description: String::new(),
                region: f[2].into(),
                options: f[3].split('|').map(String::from).collect(),
                opens_at: 0,
                closes_at: i64::MAX,
                weights: ComponentWeights::DEFAULT,
                quorum: 3,
                method: Method::SingleChoice,
            }
        })
        .collect();
    DecisionLake::open(config.clone())
        .unwrap()
        .write_snapshot(&decisions)
        .unwrap();
    let mut partitions: Vec<Vec<LogRecord>> = vec![Vec::new(); PARTITIONS as usize];
    for line in data("votes.csv").lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let component = Component::ALL
            .into_iter()
            .find(|c| c.as_str() == f[4])
            .unwrap_or_else(|| panic!("component {}", f[4]));
        let vote = Vote {
            vote_id: VoteId(f[2].parse().unwrap()),
            decision_id: DecisionId(f[0].parse().unwrap()),
            voter_id: VoterId(f[1].parse().unwrap()),
            ballot: canopy_schemas::Ballot::single_choice(f[3].parse().unwrap()).unwrap(),
            component,
            weight: Weight(f[5].parse().unwrap()),
            cast_at: parse_event_time(f[6]).unwrap() * 1000,
        };
        let partition = partition_for(vote.decision_id, PARTITIONS);
        let records = &mut partitions[partition as usize];
        records.push(LogRecord {
            sealed_voter: canopy_schemas::SealedVoter::NONE,
            leaf_version: canopy_schemas::LeafVersion::V2,
            position: Position {
                partition,
                offset: records.len() as u64,
            },
            vote,
            commitment: VoterCommitment::new(&VoterSalt([7; 32]), vote.voter_id, vote.decision_id),
        });
    }
    let votes = VoteLake::open(config).unwrap();
    for (partition, records) in partitions.iter().enumerate() {
        votes.write_range(partition as u32, records).unwrap();
    }
}

fn render(batches: &[arrow_array::RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| {
                arrow_cast::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                    .unwrap()
            })
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns.iter().map(|c| c.value(row).to_string()).collect();
            rows.push(cells.join(" "));
        }
    }
    rows
}

#[tokio::test]
async fn golden_sql_over_the_committed_data_set() {
    let dir = tempfile::tempdir().unwrap();
    build_lake(dir.path());
    let sql = LakeSql::open(dir.path()).await.unwrap();
    let bless = std::env::var_os("CANOPY_GOLDEN_BLESS").is_some();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "slt") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            out.push_str(line);
            out.push('\n');
            if let Some(code) = line.strip_prefix("statement error ") {
                let mut statement = String::new();
                while let Some(l) = lines.next_if(|l| !l.trim().is_empty()) {
                    statement.push_str(l);
                    statement.push('\n');
                    out.push_str(l);
                    out.push('\n');
                }
                let error = sql.query(&statement).await.expect_err(&statement);
                assert_eq!(
                    error.code(),
                    code.trim(),
                    "{}: {statement}: {error}",
                    path.display()
                );
                checked += 1;
            } else if let Some(spec) = line.strip_prefix("query ") {
                let sort = spec.split_whitespace().any(|w| w == "rowsort");
                let mut statement = String::new();
                for l in lines.by_ref() {
                    out.push_str(l);
                    out.push('\n');
                    if l == "----" {
                        break;
                    }
                    statement.push_str(l);
                    statement.push('\n');
                }
                let mut expected = Vec::new();
                while let Some(l) = lines.next_if(|l| !l.trim().is_empty()) {
                    expected.push(l.to_string());
                }
                let batches = sql
                    .query(&statement)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {statement}: {e}", path.display()));
                let mut got = render(&batches);
                if sort {
                    got.sort();
                }
                if bless {
                    for row in &got {
                        out.push_str(row);
                        out.push('\n');
                    }
                } else {
                    assert!(
                        !expected.is_empty(),
                        "{}: no expected rows for {statement}",
                        path.display()
                    );
                    assert_eq!(got, expected, "{}: {statement}", path.display());
                }
                checked += 1;
            }
        }
        if bless {
            std::fs::write(&path, out).unwrap();
        }
    }
    assert!(checked >= 10, "{checked} golden checks");
}
