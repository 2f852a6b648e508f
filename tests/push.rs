//! The live push as a browser's library sees it: the stock `socket.io-client` (npm, in
//! `tests/push/`, installed by `scripts/test`) against `canopy up`, every namespace joined,
//! every event received, every refusal seen (`tests/push/push.test.mjs`); and on a cluster,
//! a client on one `canopy serve` replica hearing of what was done through the other
//! (`tests/push/cluster.test.mjs`).

use std::path::Path;

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_socket_io_client_follows_results_and_decisions() {
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/push");
    assert!(
        client_dir.join("node_modules/socket.io-client").is_dir(),
        "the socket.io client is not installed: run `npm ci` in {} (scripts/test does)",
        client_dir.display()
    );
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // The default per-user rate, which a guess loop of subscribes runs into.
    let mut node = start_with(data.path(), port, &["--user-rate", "20"]);
    wait_healthy(&canopy_testkit::http_client(), &base).await;
    create_admin(data.path());
    let env = vec![
        ("CANOPY_BASE", base),
        ("CANOPY_PASSWORD", PASSWORD.to_string()),
    ];
    let args = &["--test", "push.test.mjs"];
    let ran = node_script(client_dir, args, env, data.path()).await;
    kill_9(&mut node);
    if let Err(failure) = ran {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_one_replica_hears_what_was_done_through_another() {
    use common::cluster::*;
    let client_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/push");
    let topic = format!("canopy-push-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(1, 1, "w");
    let (port_a, port_b) = (free_port(), free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = canopy_testkit::http_client();
    // A makes the shared keys; B starts once they exist.
    let mut replica_a = Running::new(vec![start_serve(&deployment, port_a, "a")]);
    wait_healthy(&client, &base_a).await;
    let mut replica_b = Running::new(vec![start_serve(&deployment, port_b, "b")]);
    wait_healthy(&client, &base_b).await;
    let env = vec![
        ("CANOPY_BASE_A", base_a),
        ("CANOPY_BASE_B", base_b),
        ("CANOPY_PASSWORD", PASSWORD.to_string()),
    ];
    let args = &["--test", "cluster.test.mjs"];
    let ran = node_script(client_dir, args, env, deployment.dir.path()).await;
    let logs = format!(
        "replica A:\n{}\nreplica B:\n{}\nworker:\n{}",
        tail(&deployment.dir.path().join("serve-a.log")),
        tail(&deployment.dir.path().join("serve-b.log")),
        tail(&deployment.log_path("w", 0))
    );
    kill_9(&mut replica_a[0]);
    kill_9(&mut replica_b[0]);
    stop(&mut workers);
    if let Err(failure) = ran {
        panic!("{failure}\n{logs}");
    }
}

/// The last lines of a process's log.
fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
