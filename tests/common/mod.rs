//! Running `canopy` as an operator would: processes, ports, accounts, requests.
#![allow(dead_code)]

pub mod anvil;
pub mod cluster;
pub mod lake;
pub mod sensors;
pub mod tls;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use canopy_ingest::{LogRecord, Position};
use canopy_schemas::VoteId;
use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

/// A port nothing listens on now, for a server a test starts later (often in another
/// process, as a cluster's peers must know each other's ports before any binds).
///
/// It is drawn at random from below the kernel's ephemeral range rather than asked of the
/// kernel with port 0: a port 0 answer is an ephemeral port, which any outgoing connection of
/// a test running beside this one (to PostgreSQL, Redis, the broker) may take before the
/// server binds it, and a cluster test once failed so ("Address already in use"). Below the
/// range only another test's pick can collide, and among ~20 k ports that is rare.
pub fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_from: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_from > 12_000,
        "the kernel's ephemeral ports start at {ephemeral_from}: too low to pick test ports below"
    );
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(10_000..ephemeral_from);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn start(data: &Path, port: u16) -> Child {
    start_with(data, port, &[])
}

/// Starts `canopy up`; its log goes to `<data>/node.log` (appended across restarts), for
/// [`node_log`] to show when a test fails.
pub fn start_with(data: &Path, port: u16, extra: &[&str]) -> Child {
    start_with_env(data, port, extra, &[])
}

/// [`start_with`] with environment variables for the node.
pub fn start_with_env(data: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Child {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data))
        .unwrap();
    // Tests cast fast from few accounts, unless they test the per-user rate themselves.
    let user_rate: &[&str] = if extra.contains(&"--user-rate") {
        &[]
    } else {
        &["--user-rate", "100000"]
    };
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .args(user_rate)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        // Tests sign many voters up from one address.
        .env("CANOPY_API__REGISTRATIONS_PER_ADDRESS_HOUR", "100000")
        .env("CANOPY_API__REGISTRATIONS_PER_BLOCK_HOUR", "100000")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log_path(data: &Path) -> std::path::PathBuf {
    data.join("node.log")
}

/// What the node started on `data` logged, for a failing test's message: each distinct
/// message once (timestamps left out) with how often it came, the last `lines` of them.
pub fn node_log(data: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log_path(data)).unwrap_or_default();
    let mut distinct: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let message = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest)
            .to_string();
        match distinct.iter_mut().find(|(seen, _)| *seen == message) {
            Some((_, count)) => *count += 1,
            None => distinct.push((message, 1)),
        }
    }
    distinct[distinct.len().saturating_sub(lines)..]
        .iter()
        .map(|(message, count)| format!("{count:>6} × {message}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("canopy up did not become ready");
}

pub async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

pub async fn get_json(client: &reqwest::Client, url: String, token: &str) -> Value {
    json_answer(client.get(url).bearer_auth(token)).await
}

/// The JSON answer to a GET made without signing in, as an auditor makes it.
pub async fn get_public_json(client: &reqwest::Client, url: String) -> Value {
    json_answer(client.get(url)).await
}

async fn json_answer(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

pub async fn login(client: &reqwest::Client, base: &str, username: &str) -> String {
    let (status, body) = post(
        client,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({ "username": username, "password": PASSWORD }),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// Registers `username` with [`PASSWORD`].
pub async fn sign_up(client: &reqwest::Client, base: &str, username: &str) {
    let (status, body) = post(
        client,
        format!("{base}/api/v1/auth/register"),
        None,
        json!({ "username": username, "password": PASSWORD }),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
}

/// Registers `username` with [`PASSWORD`] and returns its access token.
pub async fn register(client: &reqwest::Client, base: &str, username: &str) -> String {
    sign_up(client, base, username).await;
    login(client, base, username).await
}

/// A yes/no decision open forever, for [`create_decision`].
pub fn yes_or_no(title: &str) -> Value {
    json!({ "title": title, "options": ["yes", "no"], "closes_at": i64::MAX })
}

/// Creates the decision `body` describes as `admin` and returns its id.
pub async fn create_decision(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    body: Value,
) -> String {
    let (status, decision) = post(
        client,
        format!("{base}/api/v1/voting/decision/create"),
        Some(admin),
        body,
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{decision}");
    decision["id"].as_str().unwrap().to_string()
}

/// Casts `option` on `decision`; the status and the body (a receipt when 201) come back
/// as they are, for tests that expect refusals or lost connections.
pub async fn try_cast(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    decision: &str,
    option: u16,
) -> Result<(u16, Value), reqwest::Error> {
    post(
        client,
        format!("{base}/api/v1/voting/cast-vote"),
        Some(token),
        json!({ "decision_id": decision, "option": option }),
    )
    .await
}

/// Casts `option` on `decision` and returns the receipt, which must be 201's.
pub async fn cast(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    decision: &str,
    option: u16,
) -> Value {
    let (status, receipt) = try_cast(client, base, token, decision, option)
        .await
        .unwrap();
    assert_eq!(status, 201, "{receipt}");
    receipt
}

pub async fn results(client: &reqwest::Client, base: &str, decision: &str, token: &str) -> Value {
    get_json(
        client,
        format!("{base}/api/v1/voting/decision/{decision}/results"),
        token,
    )
    .await
}

pub async fn active_decisions(client: &reqwest::Client, base: &str, token: &str) -> Value {
    get_json(
        client,
        format!("{base}/api/v1/voting/active-decisions"),
        token,
    )
    .await
}

/// The vote a receipt acknowledges and where the log holds it.
pub fn acknowledged(receipt: &Value) -> (VoteId, Position) {
    let id: uuid::Uuid = receipt["vote_id"].as_str().unwrap().parse().unwrap();
    let position = serde_json::from_value(receipt["position"].clone()).unwrap();
    (VoteId::from(id), position)
}

/// Every position each vote is stored at: exactly-once means a single one.
pub fn positions_by_vote<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
) -> HashMap<VoteId, Vec<Position>> {
    let mut stored: HashMap<VoteId, Vec<Position>> = HashMap::new();
    for record in records {
        stored
            .entry(record.vote.vote_id)
            .or_default()
            .push(record.position);
    }
    stored
}

/// Bytes 33..65 of a receipt's leaf encoding: the voter's commitment.
pub fn commitment(receipt: &Value) -> String {
    receipt["leaf"].as_str().unwrap()[66..130].to_string()
}

/// The user id inside an access token (its `sub` claim).
pub fn subject(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

/// Asks, as `token`, for the erasure of voter `voter_id`; the answer is the test's to judge.
pub async fn erase_voter(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    voter_id: &str,
) -> (u16, Value) {
    post(
        client,
        format!("{base}/api/v1/admin/erase-voter"),
        Some(token),
        json!({ "voter_id": voter_id }),
    )
    .await
    .unwrap()
}

/// The broker scripts/test starts for the run.
pub fn broker() -> String {
    std::env::var("CANOPY_TEST_KAFKA")
        .expect("CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test starts tansu)")
}

/// Runs `canopy <args> --data-dir <data>`, which must succeed; its output is returned.
pub fn canopy_ok(args: &[&str], data: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

pub fn create_admin(data: &Path) {
    create_admin_with(data, &[]);
}

/// [`create_admin`] with more flags for the store (e.g. `--database-url`).
pub fn create_admin_with(data: &Path, extra: &[&str]) {
    let mut admin_create = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["admin", "create", "--username", "root"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(admin_create.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(admin_create.wait().unwrap().success());
}

/// Runs `node <args>` in `dir` with `env` against the node started on `data`: its stdout
/// when it succeeds, else its output and the node's log, for the test to fail with once it
/// stopped the node.
pub async fn node_script(
    dir: std::path::PathBuf,
    args: &'static [&'static str],
    env: Vec<(&'static str, String)>,
    data: &Path,
) -> Result<String, String> {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(args)
            .current_dir(dir)
            .envs(env)
            .output()
            .expect("node runs (scripts/test installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    if output.status.success() {
        return Ok(stdout);
    }
    Err(format!(
        "{stdout}\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        node_log(data, 30)
    ))
}
