//! What the driver tests share: a lake of votes, a server over it that admits the analyst
//! by a SQL token, and the lake's rows as text to compare drivers' rows with.

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use canopy_analytics::{LakeConfig, LakeQuery, LakeSql, SqlLimits, VoteLake};
use canopy_ingest::{LogRecord, Position};
use canopy_schemas::{
    Component, DecisionId, Vote, VoteId, VoterCommitment, VoterId, VoterSalt, Weight,
};
use canopy_sqlwire::scram::{Candidates, ScramVerifier};
use canopy_sqlwire::{Admission, Credentials, Pending, PgServer, PortOptions, Session, SignIn};

/// The analyst's SQL token, used as the password.
pub const TOKEN: &str = "Xk2v9Qm4rT7yW1zA8cE5gJ0lN3pS6uB2";

pub struct OnlyAnalyst;

#[async_trait::async_trait]
impl Credentials for OnlyAnalyst {
    async fn admit(&self, attempt: &SignIn) -> Admission {
        let secret = if attempt.user == "analyst" {
            TOKEN
        } else {
            "-"
        };
        let verifier = ScramVerifier::derive(secret, b"sixteen byte salt", 4096);
        Admission::Verify {
            candidates: Candidates {
                salt: verifier.salt,
                iterations: verifier.iterations,
                verifiers: vec![("token".to_owned(), verifier.stored_key, verifier.server_key)],
            },
            pending: Box::new(()),
        }
    }

    async fn settle(&self, _: &SignIn, _: Pending, token: Option<&str>) -> Option<String> {
        token.map(|_| "analyst".to_owned())
    }

    async fn statement(&self, _: &Session, _: &str) {}
}

/// Two partitions of votes over five decisions.
pub fn write_votes(root: &Path) {
    let lake = VoteLake::open(LakeConfig::new(root)).unwrap();
    for partition in 0..2u32 {
        let records: Vec<LogRecord> = (0..2_000u64)
            .map(|offset| {
                let voter_id = VoterId(u128::from(offset % 701) + 1);
                let decision_id = DecisionId(u128::from((offset + u64::from(partition)) % 5 + 1));
                LogRecord {
                    sealed_voter: canopy_schemas::SealedVoter::NONE,
                    leaf_version: canopy_schemas::LeafVersion::V2,
                    position: Position { partition, offset },
                    vote: Vote {
                        vote_id: VoteId(u128::from(partition) << 64 | u128::from(offset)),
                        decision_id,
                        voter_id,
                        ballot: canopy_schemas::Ballot::single_choice((offset * 7 % 3) as u16)
                            .unwrap(),
                        component: [
                            Component::Democratic,
                            Component::Expert,
                            Component::Community,
                        ][(offset % 3) as usize],
                        weight: Weight(1_000_000),
                        cast_at: 1_780_272_000_000_000 + offset as i64 * 1_000_000,
                    },
                    commitment: VoterCommitment::new(&VoterSalt([1; 32]), voter_id, decision_id),
                }
            })
            .collect();
        lake.write_range(partition, &records).unwrap();
    }
}

/// Rows as `|`-joined cells, as the Python script prints them.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns.iter().map(|c| c.value(row).to_string()).collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// A server over a fresh lake, the lake, its directory (kept until dropped), the decision
/// and option the drivers query, and the rows the lake holds for them.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub server: PgServer,
    pub decision: String,
    pub option: u16,
    pub expected: Vec<String>,
}

/// The query the drivers run with their parameters, here with the values written in.
pub const QUERY: &str = "SELECT log_partition, log_offset, option, component FROM votes \
                         WHERE decision_id = '{decision}' AND option = {option} \
                         ORDER BY log_partition, log_offset LIMIT 40";

impl Fixture {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_votes(dir.path());
        let lake = LakeSql::new(dir.path(), SqlLimits::default());
        let server = PgServer::start(
            "127.0.0.1:0".parse().unwrap(),
            lake.clone(),
            Arc::new(OnlyAnalyst),
            PortOptions::default(),
        )
        .await
        .unwrap();
        let decision = rows(
            &lake
                .query("SELECT decision_id FROM votes ORDER BY decision_id LIMIT 1 OFFSET 2000")
                .await
                .unwrap(),
        )
        .remove(0);
        let option = 2;
        let sql = QUERY
            .replace("{decision}", &decision)
            .replace("{option}", &option.to_string());
        let expected = rows(&lake.query(&sql).await.unwrap());
        assert_eq!(expected.len(), 40, "{expected:?}");
        Self {
            _dir: dir,
            server,
            decision,
            option,
            expected,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.local_addr().port()
    }
}

/// Runs `command`, which must succeed; returns what it printed.
pub async fn run(mut command: std::process::Command) -> String {
    command.env_remove("PGSERVICE").env_remove("PGOPTIONS");
    let program = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("running {program}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
