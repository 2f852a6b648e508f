//! Running `canopy` as an operator would: processes, ports, accounts, requests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PASSWORD: &str = "correct horse battery";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start(data: &Path, port: u16) -> Child {
    start_with(data, port, &[])
}

/// Starts `canopy up`; its log goes to `<data>/node.log` (appended across restarts), for
/// [`node_log`] to show when a test fails.
pub fn start_with(data: &Path, port: u16, extra: &[&str]) -> Child {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(data))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--user-rate",
            "100000",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
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
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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

pub fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

pub fn create_admin(data: &Path) {
    let mut admin_create = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["admin", "create", "--username", "root", "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(admin_create.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(admin_create.wait().unwrap().success());
}
