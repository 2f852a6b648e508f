//! PostgreSQL's JDBC driver (pgjdbc) with a SQL token: a parameterised query, run plain and
//! server-prepared, and the metadata calls BI tools make first.
//!
//! Needs `java` (17 or later, which runs a single source file) and the driver's jar, from
//! `CANOPY_TEST_JDBC_JAR` or Debian's libpostgresql-jdbc-java (scripts/test installs it).

mod common;

use std::path::{Path, PathBuf};

use common::{Fixture, TOKEN};

fn jdbc_jar() -> PathBuf {
    let jar = std::env::var_os("CANOPY_TEST_JDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"));
    assert!(
        jar.is_file(),
        "{} is missing: these tests need PostgreSQL's JDBC driver (Debian: apt-get install \
         libpostgresql-jdbc-java default-jdk-headless, or set CANOPY_TEST_JDBC_JAR)",
        jar.display()
    );
    jar
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_runs_a_parameterised_query_and_reads_metadata() {
    let jar = jdbc_jar();
    let fixture = Fixture::start().await;
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/canopy?sslmode=disable&connectTimeout=10",
        fixture.port()
    );
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/JdbcQueries.java");
    let mut command = std::process::Command::new("java");
    command.arg("-cp").arg(&jar).arg(&program).args([
        url.as_str(),
        "analyst",
        TOKEN,
        &fixture.decision,
        &fixture.option.to_string(),
    ]);
    let stdout = common::run(command).await;
    for run in 0..4 {
        let rows: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("row {run} ")))
            .collect();
        assert_eq!(rows, fixture.expected, "run {run}: {stdout}");
    }
    assert!(stdout.contains("\ntable votes\n"), "{stdout}");
    for column in ["decision_id|text", "option|int4", "cast_hour|timestamptz"] {
        assert!(
            stdout.contains(&format!("\ncolumn {column}\n")),
            "{column}: {stdout}"
        );
    }
}
