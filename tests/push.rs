//! The live push as a browser's library sees it: the stock `socket.io-client` (npm, in
//! `tests/push/`, installed by `scripts/test`) against `canopy up`, every namespace joined,
//! every event received, every refusal seen (`tests/push/push.test.mjs`).

use std::path::Path;
use std::process::Command;

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
    let mut node = start(data.path(), port);
    wait_healthy(&reqwest::Client::new(), &base).await;
    create_admin(data.path());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "push.test.mjs"])
            .current_dir(client_dir)
            .env("CANOPY_BASE", &base)
            .env("CANOPY_PASSWORD", PASSWORD)
            .output()
            .expect("node runs (scripts/test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    kill_9(&mut node);
    assert!(
        output.status.success(),
        "{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        node_log(data.path(), 30)
    );
}
