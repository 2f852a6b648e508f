//! The vote record as C2SP tlog tiles in an S3-compatible bucket (moto; `scripts/test` starts
//! one): a real `canopy up` writes each decision's tiles, entry bundles and checkpoint to the
//! bucket, serves them under the spec's paths, and once the node is gone every vote still
//! verifies with `canopy verify --tiles s3://…` from the bucket alone.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The test server's endpoint and a bucket prefix of this test's own.
fn bucket_prefix() -> (String, String) {
    let endpoint = std::env::var("CANOPY_TEST_S3").expect(
        "CANOPY_TEST_S3 must name an S3-compatible server's endpoint (scripts/test starts one)",
    );
    let bucket = std::env::var("CANOPY_TEST_S3_BUCKET").unwrap_or_else(|_| "canopy-test".into());
    let prefix = format!("s3://{bucket}/record-{}", uuid::Uuid::new_v4().simple());
    (endpoint, prefix)
}

/// The credentials moto takes (any), as the `AWS_*` variables every Canopy S3 store reads.
fn with_credentials(command: &mut Command) -> &mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", "canopy-test")
        .env("AWS_SECRET_ACCESS_KEY", "canopy-test")
        .env("AWS_REGION", "us-east-1")
}

/// `canopy up` with its record store in the bucket.
fn start_up(data: &Path, port: u16, endpoint: &str, store: &str) -> Child {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::File::create(data.join("node.log")).unwrap();
    with_credentials(&mut Command::new(env!("CARGO_BIN_EXE_canopy")))
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--user-rate", "100000", "--data-dir"])
        .arg(data)
        .env("CANOPY_RECORD__TILE_STORE", store)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("CANOPY_API__REGISTRATIONS_PER_ADDRESS_HOUR", "100000")
        .env("CANOPY_API__REGISTRATIONS_PER_BLOCK_HOUR", "100000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `canopy verify --tiles` against the bucket (the endpoint given on the command line, as an
/// auditor would), its exit code and line.
fn verify_from_bucket(
    store: &str,
    endpoint: &str,
    decision: &str,
    leaf: &str,
    key: &str,
) -> (i32, String) {
    let output = with_credentials(&mut Command::new(env!("CARGO_BIN_EXE_canopy")))
        .args(["verify", "--tiles", store, "--decision", decision])
        .args(["--leaf", leaf, "--key", key, "--s3-endpoint", endpoint])
        .env_remove("AWS_ENDPOINT_URL")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String, Vec<u8>) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, cache, response.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_in_a_bucket_verify_offline_from_the_bucket_alone() {
    let (endpoint, store) = bucket_prefix();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = canopy_testkit::http_client();
    let mut node = start_up(data.path(), port, &endpoint, &store);
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Tile the record?")).await;
    // More than one full tile of leaves (256), so proofs read full and partial tiles of two
    // levels; each cast is a leaf (the record keeps changed votes).
    let mut voters = Vec::new();
    for n in 0..3 {
        voters.push(register(&client, &base, &format!("tiler{n}")).await);
    }
    let mut leaves = Vec::new();
    for n in 0..300 {
        let receipt = cast(&client, &base, &voters[n % 3], &decision, (n % 2) as u16).await;
        leaves.push(receipt["leaf_hash"].as_str().unwrap().to_string());
    }
    let tlog = format!("{base}/api/v1/audit/decisions/{decision}/tlog");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = get(&client, format!("{tlog}/checkpoint")).await;
        let note = String::from_utf8_lossy(&body).to_string();
        if status == 200 && note.lines().nth(1) == Some("300") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of 300 leaves in the store: {status} {note}\n{}",
            node_log(data.path(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The tiles under the spec's paths: a full one is immutable, the partial one is the rest.
    let (status, cache, full) = get(&client, format!("{tlog}/tile/0/000")).await;
    assert_eq!((status, full.len()), (200, 256 * 32));
    assert!(cache.contains("immutable"), "{cache}");
    let (status, cache, partial) = get(&client, format!("{tlog}/tile/0/001.p/44")).await;
    assert_eq!((status, partial.len()), (200, 44 * 32));
    assert!(!cache.contains("immutable"), "{cache}");
    let (status, _, bundle) = get(&client, format!("{tlog}/tile/entries/000")).await;
    // Each entry: a 2-byte length, then a vote's leaf encoding.
    let leaf_len = canopy_schemas::LEAF_ENCODING_LEN;
    assert_eq!((status, bundle.len()), (200, 256 * (2 + leaf_len)));
    assert_eq!(
        canopy_chain::leaf_hash(&bundle[2..2 + leaf_len]),
        <[u8; 32]>::try_from(&full[..32]).unwrap(),
        "the first entry hashes to the first leaf"
    );
    for bad in [
        "0/0",
        "0/x000/001",
        "0/001.p/256",
        "0/001.p/0",
        "0/001/",
        "9999/000",
        "data/000",
    ] {
        let response = client
            .get(format!("{tlog}/tile/{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "tile/{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_tile_path", "{body}");
    }
    let (status, _, _) = get(&client, format!("{tlog}/tile/0/002")).await;
    assert_eq!(status, 404, "a tile beyond the log is absent");

    let key: Value = get_public_json(&client, format!("{base}/api/v1/audit/key")).await;
    let key = key["key"].as_str().unwrap().to_string();
    // The node is gone: only the bucket is left.
    kill_9(&mut node);

    for n in [0, 1, 255, 256, 299] {
        let (status, verdict) = verify_from_bucket(&store, &endpoint, &decision, &leaves[n], &key);
        assert_eq!(status, 0, "leaf {n}: {verdict}");
        assert!(
            verdict.contains(&format!("index={n} size=300 from tiles +entry")),
            "leaf {n}: {verdict}"
        );
    }
    let (status, verdict) =
        verify_from_bucket(&store, &endpoint, &decision, &"ab".repeat(32), &key);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL leaf_not_found"), "{verdict}");
    let other = canopy_chain::NoteSigner::from_seed("canopy.local", &[7; 32])
        .unwrap()
        .verifier()
        .encode();
    let (status, verdict) = verify_from_bucket(&store, &endpoint, &decision, &leaves[0], &other);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL bad_signature"), "{verdict}");
    let elsewhere = uuid::Uuid::new_v4().to_string();
    let (status, verdict) = verify_from_bucket(&store, &endpoint, &elsewhere, &leaves[0], &key);
    assert_eq!(status, 1, "{verdict}");
    assert!(verdict.starts_with("FAIL not_checkpointed"), "{verdict}");
}
