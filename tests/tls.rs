//! TLS to the services Canopy reaches out to, each a local server that takes TLS only,
//! with a certificate from a CA of the test's own.

mod common;

use std::process::{Command, Output};

use canopy_node::redis::ReplicaCoordinator;
use common::tls::{TestCa, TlsPostgres, TlsRedis};
use common::*;

fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_store_on_postgresql_over_verified_tls_and_a_plain_connection_is_refused()
{
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let server = TlsPostgres::start(&ca);
    let url = |query: &str| {
        format!(
            "postgres://postgres@localhost:{}/postgres?{query}",
            server.port
        )
    };
    let verified = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca.ca.display()
    ));

    // Plain: the server's pg_hba rejects it, and the error says why.
    let plain = canopy()
        .args(["migrate", "--database-url", &url("sslmode=disable")])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("no encryption"),
        "{}",
        stderr(&plain)
    );
    // TLS without the CA: the certificate is not trusted.
    let untrusted = canopy()
        .args(["migrate", "--database-url", &url("sslmode=verify-full")])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).to_lowercase().contains("certificate"),
        "{}",
        stderr(&untrusted)
    );

    // Verified TLS: a node runs on it, accounts and decisions included.
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut node = start_with(&data, port, &["--database-url", &verified]);
    wait_healthy(&client, &base).await;
    let voter = register(&client, &base, "over-tls").await;
    let (status, body) = post(
        &client,
        format!("{base}/api/v1/auth/login"),
        None,
        serde_json::json!({ "username": "over-tls", "password": "not the password" }),
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(!voter.is_empty());
    kill_9(&mut node);
}

#[test]
fn the_cluster_reaches_redis_over_verified_tls_and_a_plain_connection_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let server = TlsRedis::start(&ca);
    let prefix = format!("canopy-tls-{}", uuid::Uuid::new_v4().simple());
    let verified = format!(
        "rediss://localhost:{}/?sslrootcert={}",
        server.port,
        ca.ca.display()
    );
    // Two replicas announce themselves through the TLS server and see each other.
    let first = ReplicaCoordinator::connect(&verified, &prefix).unwrap();
    let second = ReplicaCoordinator::connect(&verified, &prefix).unwrap();
    first.heartbeat().unwrap();
    let (live, _) = second.heartbeat().unwrap();
    assert_eq!(live, 2);

    let plain =
        ReplicaCoordinator::connect(&format!("redis://localhost:{}/", server.port), &prefix)
            .and_then(|c| c.heartbeat());
    let error = plain
        .expect_err("a plain connection to a TLS-only Redis must fail")
        .to_string();
    assert!(error.contains("rediss://"), "{error}");
    let untrusted =
        ReplicaCoordinator::connect(&format!("rediss://localhost:{}/", server.port), &prefix)
            .err()
            .expect("a certificate from an unknown CA must be refused")
            .to_string();
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );
    let missing = ReplicaCoordinator::connect(
        &format!(
            "rediss://localhost:{}/?sslrootcert=/nonexistent/ca.pem",
            server.port
        ),
        &prefix,
    )
    .err()
    .expect("a missing CA file must be refused")
    .to_string();
    assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    eprintln!("refusals: plain: {error}\nunknown CA: {untrusted}\nmissing CA file: {missing}");
}
