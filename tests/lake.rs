//! The lake from the command line, on an S3-compatible store configured the way operators
//! configure it (the `AWS_*` variables): `canopy lake sync --lake s3://…` copies a stopped
//! node's log into the bucket, `canopy sql --lake s3://…` reads it back, and a location
//! the lake cannot use is refused before anything is written.

use std::path::Path;
use std::process::{Command, Output};

#[path = "../analytics/tests/common/s3.rs"]
mod s3;

fn canopy(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_canopy"));
    command.args(args);
    for (key, value) in s3::s3_options() {
        // aws_endpoint → AWS_ENDPOINT: the names object_store reads from the environment.
        command.env(key.to_ascii_uppercase(), value);
    }
    command.output().unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn lake_sync_and_sql_work_on_an_s3_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let loadgen = canopy(&[
        "loadgen",
        "--data-dir",
        data,
        "--votes",
        "5000",
        "--decisions",
        "3",
        "--partitions",
        "2",
    ]);
    stdout_of(&loadgen);
    let url = s3::s3_url();
    let sync = canopy(&["lake", "sync", "--data-dir", data, "--lake", &url]);
    stdout_of(&sync);
    assert!(
        String::from_utf8_lossy(&sync.stderr).contains("5000 new votes"),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert!(!Path::new(data).join("lake").exists(), "wrote locally");

    let count = |statement: &str| {
        stdout_of(&canopy(&[
            "sql", statement, "--lake", &url, "--format", "csv",
        ]))
    };
    assert_eq!(count("SELECT COUNT(*) AS n FROM votes"), "n\n5000\n");
    assert_eq!(
        count("SELECT COUNT(DISTINCT decision_id) AS n FROM votes"),
        "n\n3\n"
    );

    // Synced again: nothing new, nothing twice.
    stdout_of(&canopy(&[
        "lake",
        "sync",
        "--data-dir",
        data,
        "--lake",
        &url,
    ]));
    assert_eq!(count("SELECT COUNT(*) AS n FROM votes"), "n\n5000\n");
}

#[test]
fn a_lake_location_it_cannot_use_is_refused() {
    for location in ["gs://bucket/lake", "s3:///no-bucket"] {
        let output = canopy(&["sql", "SELECT 1", "--lake", location]);
        assert!(!output.status.success(), "{location}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("lake location"), "{location}: {stderr}");
    }
}
