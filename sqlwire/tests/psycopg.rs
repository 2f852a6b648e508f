//! psycopg 3, the Python driver, binding parameters in text and binary, prepared and not,
//! against a [`PgServer`] over a small lake; the lake's own answer is the oracle for the rows.
//!
//! The Python with psycopg comes from `CANOPY_TEST_PYTHON` (scripts/test makes a virtualenv
//! with `psycopg[binary]` and sets it).
//!
//! [`PgServer`]: canopy_sqlwire::PgServer

mod common;

use std::path::Path;

use common::{Fixture, TOKEN};

fn python() -> String {
    std::env::var("CANOPY_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "CANOPY_TEST_PYTHON is not set: it must name a Python with psycopg 3 installed \
             (scripts/test makes one: python3 -m venv DIR && DIR/bin/pip install \
             'psycopg[binary]==3.2.13', then CANOPY_TEST_PYTHON=DIR/bin/python)"
        )
    })
}

/// One JSON string value of the script's output object, as a list of lines.
fn json_rows(output: &str, key: &str) -> Vec<String> {
    let start = output
        .find(&format!("\"{key}\": ["))
        .unwrap_or_else(|| panic!("no {key} in {output}"))
        + key.len()
        + 5;
    let end = start + output[start..].find(']').unwrap();
    output[start..end]
        .split("\", \"")
        .map(|cell| cell.trim_matches('"').to_owned())
        .filter(|cell| !cell.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_binds_text_and_binary_parameters_prepared_and_not() {
    let python = python();
    let fixture = Fixture::start().await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=analyst password={TOKEN} dbname=canopy sslmode=disable \
         connect_timeout=10",
        fixture.port()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/psycopg_params.py");
    let mut command = std::process::Command::new(&python);
    command
        .arg(&script)
        .args([&conninfo, &fixture.decision, &fixture.option.to_string()]);
    let stdout = common::run(command).await;
    for case in [
        "text",
        "text_prepared",
        "binary",
        "binary_prepared",
        "text_unprepared",
    ] {
        assert_eq!(
            json_rows(&stdout, case),
            fixture.expected,
            "{case}: {stdout}"
        );
    }
    assert!(stdout.contains("\"injected_count\": 0"), "{stdout}");
    assert!(
        stdout.contains("\"untyped_not_a_number\": \"22P02\""),
        "{stdout}"
    );
    fixture.server.shutdown().await.unwrap();
}
