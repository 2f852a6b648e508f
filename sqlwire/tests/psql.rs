//! The real `psql` (simple protocol, text results) and tokio-postgres (extended protocol,
//! binary results) against a [`PgServer`] over a small lake, with [`LakeSql::query`] as the
//! oracle for what the rows must be.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use canopy_analytics::{
    LakeConfig, LakeQuery, LakeSql, MAX_SQL_THREADS, PARTITIONS_PER_THREAD, SqlLimits, VoteLake,
};
use canopy_ingest::{LogRecord, Position};
use canopy_schemas::{
    Component, DecisionId, Vote, VoteId, VoterCommitment, VoterId, VoterSalt, Weight,
};
use canopy_sqlwire::scram::{Candidates, ScramVerifier};
use canopy_sqlwire::{Admission, Credentials, Pending, PgServer, PortOptions, Session, SignIn};
use tokio_postgres::error::SqlState;

const START: i64 = 1_780_272_000_000_000; // 2026-06-01T00:00:00Z
/// Partition 2 holds one decision's votes only, in one file, in offset order: more rows
/// than a query's partitions times DataFusion's 8 192-row batches, so that a query's last
/// batch is never the first its partition sends (see
/// `an_error_after_rows_were_sent_still_reaches_the_client`).
const LONG_PARTITION_VOTES: u64 = 40_000;
const _: () = assert!(
    LONG_PARTITION_VOTES as usize > MAX_SQL_THREADS * PARTITIONS_PER_THREAD * 8_192,
    "the long partition must span more batches than a query has partitions"
);

/// The analyst's password, the only one [`OnlyAnalyst`] accepts.
const PASSWORD: &str = "s3cret";

/// The analyst, by a SCRAM verifier of [`PASSWORD`]; any other name gets a verifier nothing
/// matches.
struct OnlyAnalyst;

#[async_trait::async_trait]
impl Credentials for OnlyAnalyst {
    async fn admit(&self, attempt: &SignIn) -> Admission {
        let secret = match attempt.user.as_str() {
            "analyst" => PASSWORD,
            _ => "no one knows this",
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

struct Fixture {
    _dir: tempfile::TempDir,
    lake: LakeSql,
    server: PgServer,
    votes: u64,
}

impl Fixture {
    async fn start() -> Self {
        Self::with_limits(SqlLimits::default()).await
    }

    async fn with_limits(limits: SqlLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let votes = write_votes(dir.path());
        let lake = LakeSql::new(dir.path(), limits);
        let server = PgServer::start(
            "127.0.0.1:0".parse().unwrap(),
            lake.clone(),
            Arc::new(OnlyAnalyst),
            PortOptions::default(),
        )
        .await
        .unwrap();
        Self {
            _dir: dir,
            lake,
            server,
            votes,
        }
    }

    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    /// `psql -X -At -c <sql> -c …` as analyst with `password`.
    async fn psql(&self, password: &str, statements: &[&str]) -> Output {
        let mut command = std::process::Command::new(psql_path());
        command
            .args(["-X", "-At", "-v", "VERBOSITY=verbose", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port().to_string(),
                "-U",
                "analyst",
                "-d",
                "canopy",
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        for sql in statements {
            command.args(["-c", sql]);
        }
        tokio::task::spawn_blocking(move || command.output().expect("running psql"))
            .await
            .unwrap()
    }

    /// Runs `statements` as the analyst, which must succeed; returns what psql printed.
    async fn psql_ok(&self, statements: &[&str]) -> String {
        let output = self.psql(PASSWORD, statements).await;
        assert!(output.status.success(), "psql failed: {}", stderr(&output));
        stdout(&output)
    }

    /// Runs `statements` as the analyst, which must fail; returns what psql complained.
    async fn psql_refused(&self, statements: &[&str]) -> String {
        let output = self.psql(PASSWORD, statements).await;
        assert!(!output.status.success(), "{statements:?} succeeded");
        stderr(&output)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port())
            .user("analyst")
            .password(PASSWORD)
            .dbname("canopy")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

/// `psql` from PATH, else the newest `/usr/lib/postgresql/*/bin/psql`.
fn psql_path() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("psql"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(psql) = on_path {
        return psql;
    }
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let psql = entry.path().join("bin/psql");
            psql.is_file().then_some((version, psql))
        })
        .collect();
    installed.sort();
    match installed.pop() {
        Some((_, psql)) => psql,
        None => panic!(
            "these tests need the PostgreSQL client `psql`, on PATH or in \
             /usr/lib/postgresql/<version>/bin (Debian/Ubuntu: apt-get install postgresql-client)"
        ),
    }
}

fn record(partition: u32, offset: u64, decision: u128, cast_at: i64) -> LogRecord {
    let voter_id = VoterId(u128::from(offset % 701) + 1);
    let decision_id = DecisionId(decision);
    LogRecord {
        sealed_voter: canopy_schemas::SealedVoter::NONE,
        leaf_version: canopy_schemas::LeafVersion::V2,
        position: Position { partition, offset },
        vote: Vote {
            vote_id: VoteId(u128::from(partition) << 64 | u128::from(offset)),
            decision_id,
            voter_id,
            ballot: canopy_schemas::Ballot::single_choice((offset * 7 % 3) as u16).unwrap(),
            component: [
                Component::Democratic,
                Component::Expert,
                Component::Community,
            ][(offset % 3) as usize],
            weight: Weight(1_000_000 + (offset % 5) as u32 * 250_000),
            cast_at,
        },
        commitment: VoterCommitment::new(&VoterSalt([1; 32]), voter_id, decision_id),
    }
}

/// Two partitions of votes over five decisions, one second apart from START, and a third
/// partition of one decision's votes; returns how many votes there are.
fn write_votes(root: &Path) -> u64 {
    let lake = VoteLake::open(LakeConfig::new(root)).unwrap();
    let mut total = 0;
    for partition in 0..2u32 {
        let records: Vec<LogRecord> = (0..3_000u64)
            .map(|offset| {
                let decision = u128::from((offset + u64::from(partition)) % 5 + 1);
                record(
                    partition,
                    offset,
                    decision,
                    START + offset as i64 * 1_000_000,
                )
            })
            .collect();
        total += records.len() as u64;
        lake.write_range(partition, &records).unwrap();
    }
    let records: Vec<LogRecord> = (0..LONG_PARTITION_VOTES)
        .map(|offset| record(2, offset, 9, START + offset as i64 * 1_000))
        .collect();
    total += records.len() as u64;
    lake.write_range(2, &records).unwrap();
    total
}

/// The single number a `SELECT count(*) …` answers over the extended protocol.
async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Rows as psql's unaligned output prints them: cells joined by `|`.
fn unaligned(batches: &[RecordBatch]) -> String {
    let mut out = String::new();
    for batch in batches {
        let columns: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).unwrap())
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = columns.iter().map(|c| c.value(row).to_string()).collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_counts_the_votes() {
    let fixture = Fixture::start().await;
    let printed = fixture.psql_ok(&["SELECT count(*) FROM votes"]).await;
    assert_eq!(printed, format!("{}\n", fixture.votes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_group_by_equals_the_lakes_own_answer() {
    let fixture = Fixture::start().await;
    let sql = "SELECT decision_id, option, component, count(*) AS votes, \
               max(log_offset) AS last_offset, count(DISTINCT voter_commitment) AS voters \
               FROM votes GROUP BY decision_id, option, component \
               ORDER BY decision_id, option, component";
    let printed = fixture.psql_ok(&[sql]).await;
    let expected = unaligned(&fixture.lake.query(sql).await.unwrap());
    assert!(expected.lines().count() >= 6 * 3, "{expected}");
    assert_eq!(printed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_postgresql_text_formats() {
    let fixture = Fixture::start().await;
    let sql = "SELECT min(cast_hour), max(date), CAST(12.5 AS DECIMAL(10, 3)), \
               min(option) = 0, CAST(0.00001 AS DOUBLE), CAST(NULL AS INT), \
               min(voter_commitment) IS NOT NULL, arrow_cast(18446744073709551615, 'UInt64'), \
               X'00ff' FROM votes";
    assert_eq!(
        fixture.psql_ok(&[sql]).await,
        "2026-06-01 00:00:00+00|2026-06-01|12.500|t|1e-05||t|18446744073709551615|\\x00ff\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused() {
    let fixture = Fixture::start().await;
    let output = fixture.psql("wrong", &["SELECT count(*) FROM votes"]).await;
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(
        stderr.contains("password authentication failed for user \"analyst\""),
        "{stderr}"
    );
    assert!(stdout(&output).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_as_read_only() {
    let fixture = Fixture::start().await;
    for sql in [
        "CREATE TABLE x (a int)",
        "INSERT INTO votes SELECT * FROM votes",
        "COPY votes TO '/tmp/canopy-sqlwire-copy.csv'",
        "COPY (SELECT 1) TO STDOUT",
    ] {
        let stderr = fixture.psql_refused(&[sql]).await;
        assert!(
            stderr.contains("25006: sql_not_read_only"),
            "{sql}: {stderr}"
        );
    }
    assert!(!Path::new("/tmp/canopy-sqlwire-copy.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_carry_the_code_and_a_sqlstate() {
    let fixture = Fixture::start().await;
    for (sql, expected) in [
        ("SELEC count(*) FROM votes", "42601: sql:"),
        ("SELECT count(*) FROM ballots", "42P01: sql:"),
        ("SELECT nope FROM votes", "42703: sql:"),
        (
            "SHOW work_mem",
            "42704: unrecognized configuration parameter \"work_mem\"",
        ),
    ] {
        let stderr = fixture.psql_refused(&[sql]).await;
        assert!(stderr.contains(expected), "{sql}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_keep_the_session_going() {
    let fixture = Fixture::start().await;
    let printed = fixture
        .psql_ok(&[
            "SET extra_float_digits = 3",
            ";",
            "SHOW server_version",
            "BEGIN",
            "SELECT count(*) FROM votes WHERE log_partition = 2",
            "COMMIT",
            "show client_encoding; SHOW transaction isolation level",
            "SHOW standard_conforming_strings",
            "ROLLBACK",
            "SELECT 1; SELECT 2",
        ])
        .await;
    assert_eq!(
        printed,
        format!(
            "SET\n15.0 (canopy)\nBEGIN\n{LONG_PARTITION_VOTES}\nCOMMIT\nUTF8\nread committed\non\nROLLBACK\n1\n2\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_block_refuses_statements_until_it_ends() {
    let fixture = Fixture::start().await;
    let output = fixture
        .psql(
            PASSWORD,
            &["BEGIN", "SELEC 1", "SELECT 1", "COMMIT", "SELECT 2"],
        )
        .await;
    // psql goes on after errors (no ON_ERROR_STOP) but reports the last one in its status.
    assert_eq!(stdout(&output), "BEGIN\nROLLBACK\n2\n");
    let stderr = stderr(&output);
    assert!(stderr.contains("42601: sql:"), "{stderr}");
    assert!(
        stderr.contains("25P02: current transaction is aborted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_returns_typed_values() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;

    let count = count(&client, "SELECT count(*) FROM votes").await;
    assert_eq!(count, fixture.votes as i64);

    let sql = "SELECT decision_id, min(cast_hour) AS first, count(*) AS votes \
               FROM votes GROUP BY decision_id ORDER BY decision_id";
    let rows = client.query(sql, &[]).await.unwrap();
    let oracle = unaligned(&fixture.lake.query(sql).await.unwrap());
    assert_eq!(rows.len(), 6);
    assert_eq!(rows.len(), oracle.lines().count());
    for (row, expected) in rows.iter().zip(oracle.lines()) {
        let decision: String = row.get("decision_id");
        let first: SystemTime = row.get("first");
        let votes: i64 = row.get("votes");
        let cells: Vec<&str> = expected.split('|').collect();
        assert_eq!(decision, cells[0]);
        assert_eq!(votes.to_string(), cells[2]);
        // The lake prints the instant as RFC 3339; the wire carried it as µs since 2000.
        let micros = first
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        assert!(micros >= START, "{micros}");
        assert!(cells[1].starts_with("2026-06-01T"), "{}", cells[1]);
    }
    let first: SystemTime = rows[0].get("first");
    assert_eq!(
        first,
        SystemTime::UNIX_EPOCH + Duration::from_micros(START as u64)
    );

    let row = client
        .query_one(
            "SELECT option, option = 1 AS is_one, voter_commitment, \
             CAST(log_offset AS DOUBLE) / 2 AS half_offset, log_partition \
             FROM votes WHERE log_partition = 0 AND log_offset = 4",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>("option"), 1);
    assert!(row.get::<_, bool>("is_one"));
    assert_eq!(row.get::<_, Vec<u8>>("voter_commitment").len(), 32);
    assert_eq!(row.get::<_, f64>("half_offset"), 2.0);
    assert_eq!(row.get::<_, i32>("log_partition"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_binds_parameters() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;
    let sql = "SELECT count(*) FROM votes WHERE option = $1 AND log_partition = $2";
    let oracle = count(
        &client,
        "SELECT count(*) FROM votes WHERE option = 1 AND log_partition = 0",
    )
    .await;
    assert!(oracle > 0);
    // Typed at Parse, sent in binary (what tokio-postgres does).
    let statement = client
        .prepare_typed(
            sql,
            &[
                tokio_postgres::types::Type::INT4,
                tokio_postgres::types::Type::INT8,
            ],
        )
        .await
        .unwrap();
    let row = client.query_one(&statement, &[&1i32, &0i64]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), oracle);
    // A text parameter carrying SQL is a value, not SQL.
    let statement = client
        .prepare_typed(
            "SELECT count(*) FROM votes WHERE decision_id = $1",
            &[tokio_postgres::types::Type::TEXT],
        )
        .await
        .unwrap();
    let injected = "x' OR '1'='1";
    let row = client.query_one(&statement, &[&injected]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_refuses_what_it_cannot_do() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;

    let error = client
        .query("CREATE TABLE x (a int)", &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    assert!(
        format!("{error:?}").contains("sql_not_read_only"),
        "{error:?}"
    );

    // The session is still usable.
    let n = count(
        &client,
        "SELECT count(*) FROM votes WHERE log_partition = 2",
    )
    .await;
    assert_eq!(n, LONG_PARTITION_VOTES as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_return_rows_in_pieces() {
    let fixture = Fixture::start().await;
    let mut client = fixture.client().await;
    let transaction = client.transaction().await.unwrap();
    let portal = transaction
        .bind(
            "SELECT log_offset FROM votes WHERE log_partition = 0 ORDER BY log_offset",
            &[],
        )
        .await
        .unwrap();
    let mut offsets = Vec::new();
    loop {
        let rows = transaction.query_portal(&portal, 700).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 700);
        offsets.extend(rows.iter().map(|row| row.get::<_, i64>(0)));
    }
    transaction.commit().await.unwrap();
    assert_eq!(offsets, (0..3_000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_rows_were_sent_still_reaches_the_client() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;
    // The last row in log order divides by zero. The rows are numbered after one sort, but
    // the division runs after the numbered batches are dealt round-robin to the plan's
    // partitions, which answer in whatever order they finish: the row that fails
    // must be in a later batch than its partition's first, or the error can come first.
    let sql = format!(
        "SELECT log_offset, \
           100 / (CAST(ROW_NUMBER() OVER (ORDER BY log_offset) AS BIGINT) - {LONG_PARTITION_VOTES}) AS x \
         FROM votes WHERE log_partition = 2"
    );
    let sql = sql.as_str();
    let rows = client
        .query_raw(sql, std::iter::empty::<i32>())
        .await
        .unwrap();
    futures::pin_mut!(rows);
    let mut received = 0;
    let error = loop {
        match futures::StreamExt::next(&mut rows).await {
            Some(Ok(_)) => received += 1,
            Some(Err(error)) => break error,
            None => panic!("the query ended without its error after {received} rows"),
        }
    };
    assert!(received > 0, "no rows came before the error");
    assert_eq!(error.code(), Some(&SqlState::DIVISION_BY_ZERO), "{error:?}");
    assert!(format!("{error:?}").contains("sql: "), "{error:?}");

    let stderr = fixture.psql_refused(&[sql]).await;
    assert!(stderr.contains("22012: sql:"), "{stderr}");
}

/// A stopped query ends well before its minutes of work would have.
fn assert_stopped_soon(started: std::time::Instant) {
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

/// Minutes of work, in small steps (a nested-loop join would be slow too, but its steps take
/// seconds each, and a query is only stopped between steps).
const SLOW: &str = "SELECT sum(value % 7) FROM generate_series(1, 100000000000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_query() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;
    let cancel = client.cancel_token();
    // Sent until the query ends: under load the query may not have started at the first
    // one, and a cancel request for an idle session does nothing.
    let canceller = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
    });
    let started = std::time::Instant::now();
    let error = client.query(SLOW, &[]).await.unwrap_err();
    canceller.abort();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    assert_stopped_soon(started);
    // The connection carries on.
    let n = count(&client, "SELECT count(*) FROM votes").await;
    assert_eq!(n, fixture.votes as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lakes_time_limit_applies() {
    let fixture = Fixture::with_limits(SqlLimits {
        timeout: Duration::from_millis(500),
        ..SqlLimits::default()
    })
    .await;
    let started = std::time::Instant::now();
    let output = fixture.psql(PASSWORD, &[SLOW]).await;
    assert_stopped_soon(started);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("57014: query_timeout"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting() {
    let fixture = Fixture::start().await;
    let addr = fixture.server.local_addr();
    let Fixture { server, _dir, .. } = fixture;
    server.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describes_a_table() {
    let fixture = Fixture::start().await;
    let printed = fixture.psql_ok(&["\\d votes"]).await;
    // `-At` prints the rows without the title and the header.
    let columns: Vec<&str> = printed.lines().collect();
    let schema = fixture
        .lake
        .execute("SELECT * FROM votes LIMIT 0")
        .await
        .unwrap()
        .schema();
    assert_eq!(columns.len(), schema.fields().len(), "{printed}");
    for (line, field) in columns.iter().zip(schema.fields()) {
        assert!(line.starts_with(&format!("{}|", field.name())), "{printed}");
    }
    for expected in [
        "decision_id|text|",
        "vote_id|text|",
        "voter_commitment|bytea|",
        "option|integer|",
        "component|text|",
        "cast_hour|timestamp with time zone|",
        "log_offset|bigint|",
    ] {
        assert!(
            columns.iter().any(|line| line.starts_with(expected)),
            "{expected} in {printed}"
        );
    }
    let listed = fixture.psql_ok(&["\\dt"]).await;
    assert!(listed.contains("public|votes|table|"), "{listed}");
    // A pattern, and a table that is not there (psql's own message, exit status 1).
    let printed = fixture.psql_ok(&["\\d vot*"]).await;
    assert!(
        printed
            .lines()
            .any(|line| line.starts_with("decision_id|text|")),
        "{printed}"
    );
    let stderr = fixture.psql_refused(&["\\d ballots"]).await;
    assert!(
        stderr.contains("Did not find any relation named \"ballots\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untyped_parameters_take_the_type_of_where_they_stand() {
    let fixture = Fixture::start().await;
    let client = fixture.client().await;
    // Prepared without types: the server says what each parameter is, and tokio-postgres
    // encodes the values by that (an i32 for a TEXT parameter would not be sent at all).
    let statement = client
        .prepare(
            "SELECT count(*) FROM votes \
             WHERE option = $1 AND log_offset < $2 AND decision_id <> $3 AND $4 = $4",
        )
        .await
        .unwrap();
    use tokio_postgres::types::Type;
    assert_eq!(
        statement.params(),
        &[Type::INT4, Type::INT8, Type::TEXT, Type::TEXT]
    );
    let oracle = count(
        &client,
        "SELECT count(*) FROM votes WHERE option = 1 AND log_offset < 100 AND decision_id <> 'x'",
    )
    .await;
    assert!(oracle > 0);
    let row = client
        .query_one(&statement, &[&1i32, &100i64, &"x", &"y"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), oracle);
}
