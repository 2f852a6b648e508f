//! TLS to the services Canopy reaches out to, each a local server that takes TLS only,
//! with a certificate from a CA of the test's own.

mod common;

use std::process::{Command, Output};

use canopy_node::redis::ReplicaCoordinator;
use common::anvil::{deploy_contract, evm_args, start_anvil};
use common::tls::{TestCa, TlsKafka, TlsPostgres, TlsProxy, TlsRedis};
use common::*;
use std::time::{Duration, Instant};

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
    let client = canopy_testkit::http_client();
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

/// Starts `canopy up` with `extra` and `env`, which must fail at start; its output.
fn up_must_fail(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let data = dir.join(format!("refused-{}", uuid::Uuid::new_v4().simple()));
    let mut child = canopy()
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&data)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        if Instant::now() > deadline {
            kill_9(&mut child);
            panic!("canopy up {extra:?} started when it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_are_anchored_over_https_through_the_second_endpoint_when_the_first_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let anvil = start_anvil();
    let contract = deploy_contract(&anvil);
    let anvil_port: u16 = anvil.url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = TlsProxy::start(&ca, anvil_port);
    let trust_the_ca = [("SSL_CERT_FILE", ca.ca.to_str().unwrap())];

    // Plain HTTP to the TLS endpoint, and TLS without the CA among the roots: refused at start.
    let plain = format!("http://localhost:{}", proxy.port);
    let refused = up_must_fail(dir.path(), &evm_args("1", &plain, &contract), &trust_the_ca);
    assert!(refused.contains("evm_unreachable"), "{refused}");
    let verified = format!("https://localhost:{}", proxy.port);
    let untrusted = up_must_fail(dir.path(), &evm_args("1", &verified, &contract), &[]);
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );
    eprintln!("refusals:\n{refused}\n{untrusted}");

    // The first endpoint is down; the second, over verified TLS, anchors.
    let endpoints = format!("https://localhost:{},{verified}", free_port());
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with_env(
        &data,
        port,
        &evm_args("0.5", &endpoints, &contract),
        &trust_the_ca,
    );
    wait_healthy(&client, &base).await;
    create_admin(&data);
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("over https")).await;
    let voter = register(&client, &base, "https-voter").await;
    let receipt = cast(&client, &base, &voter, &decision, 0).await;
    let leaf = receipt["leaf_hash"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let proof = loop {
        let proof = get_public_json(
            &client,
            format!("{base}/api/v1/audit/decisions/{decision}/proof?leaf={leaf}"),
        )
        .await;
        if !proof["anchor"].is_null() {
            break proof;
        }
        assert!(
            Instant::now() < deadline,
            "not anchored in time: {proof}\n{}",
            node_log(&data, 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        proof["anchor"]["target"]
            .as_str()
            .unwrap()
            .starts_with("evm"),
        "{proof}"
    );
    kill_9(&mut node);
}

/// Waits until `decision`'s results count one vote (it went through the log and the
/// dataflow).
async fn counted_once(client: &reqwest::Client, base: &str, decision: &str, admin: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = common::results(client, base, decision, admin).await;
        if results["turnout"] == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the vote was not counted: {results}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_go_through_kafka_over_verified_tls_and_a_plain_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let broker = TlsKafka::start(&ca);
    let topic = format!("canopy-tls-{}", uuid::Uuid::new_v4().simple());
    let kafka = ["--kafka-brokers", &broker.brokers, "--kafka-topic", &topic];
    let ca_file = ca.ca.to_str().unwrap();

    // Plain to the TLS listener, and TLS without the CA: the node does not start.
    let plain = up_must_fail(dir.path(), &kafka, &[]);
    assert!(plain.contains("security_protocol"), "{plain}");
    let untrusted = up_must_fail(
        dir.path(),
        &kafka,
        &[("CANOPY_KAFKA__SECURITY_PROTOCOL", "ssl")],
    );
    assert!(untrusted.contains("kafka.ca_file"), "{untrusted}");
    // A CA file for a plain connection is a mistake in the configuration, said at once.
    let misconfigured = up_must_fail(dir.path(), &kafka, &[("CANOPY_KAFKA__CA_FILE", ca_file)]);
    assert!(misconfigured.contains("is not ssl"), "{misconfigured}");
    eprintln!("refusals:\n{plain}\n{untrusted}");

    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let tls = [
        ("CANOPY_KAFKA__SECURITY_PROTOCOL", "ssl"),
        ("CANOPY_KAFKA__CA_FILE", ca_file),
    ];
    let mut node = start_with_env(&data, port, &kafka, &tls);
    wait_healthy(&client, &base).await;
    create_admin(&data);
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("over kafka tls")).await;
    let voter = register(&client, &base, "kafka-tls-voter").await;
    let receipt = cast(&client, &base, &voter, &decision, 1).await;
    assert!(!receipt["position"].is_null(), "{receipt}");
    counted_once(&client, &base, &decision, &admin).await;
    kill_9(&mut node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_scram_takes_the_right_password_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path());
    let broker = TlsKafka::start_with(&ca, Some(("canopy", "a scram password")));
    let topic = format!("canopy-scram-{}", uuid::Uuid::new_v4().simple());
    let kafka = ["--kafka-brokers", &broker.brokers, "--kafka-topic", &topic];
    let ca_file = ca.ca.to_str().unwrap();
    let sasl = |password: &'static str| {
        [
            ("CANOPY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("CANOPY_KAFKA__CA_FILE", ca_file),
            ("CANOPY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("CANOPY_KAFKA__SASL_USERNAME", "canopy"),
            ("CANOPY_KAFKA__SASL_PASSWORD", password),
        ]
    };
    // tansu lets a failed SCRAM exchange through; the client checks the server's proof,
    // which only the right password's keys produce, and gives up.
    let refused = up_must_fail(dir.path(), &kafka, &sasl("not the password"));
    assert!(refused.contains("SASL credentials"), "{refused}");
    let incomplete = up_must_fail(
        dir.path(),
        &kafka,
        &[("CANOPY_KAFKA__SECURITY_PROTOCOL", "sasl_ssl")],
    );
    assert!(
        incomplete.contains("needs kafka.sasl_mechanism"),
        "{incomplete}"
    );

    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_with_env(&data, port, &kafka, &sasl("a scram password"));
    wait_healthy(&client, &base).await;
    create_admin(&data);
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("over scram")).await;
    let voter = register(&client, &base, "scram-voter").await;
    cast(&client, &base, &voter, &decision, 0).await;
    counted_once(&client, &base, &decision, &admin).await;
    let config = canopy()
        .args(["config", "show"])
        .env("CANOPY_KAFKA__SASL_PASSWORD", "a scram password")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&config.stdout).contains("a scram password"));
    kill_9(&mut node);
}
