//! The README's "Try it" runs as written: a node is started as its first block says, then
//! every other `sh` block of the section runs in order, as one bash script (so variables
//! carry from block to block), with `bash -euo pipefail`: any failing command fails the
//! test. The only differences from a reader's terminal: `canopy` on the PATH is this build's
//! binary, and `CANOPY_URL` points at the test's node instead of localhost:8080.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// The body of each fenced block of the section `## Try it` whose info string is `sh`, in
/// order, up to the next heading.
fn try_it_blocks(readme: &str) -> Vec<String> {
    let mut lines = readme
        .lines()
        .skip_while(|line| *line != "## Try it")
        .skip(1);
    let mut blocks = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            break;
        }
        if let Some(info) = line.strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|line| !line.starts_with("```"))
                .collect();
            if info.trim() == "sh" {
                blocks.push(body.join("\n"));
            }
        }
    }
    blocks
}

/// Kills the node however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_try_it_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks = try_it_blocks(&readme);
    assert!(
        blocks.len() >= 2,
        "the README's Try it has no sh blocks to run: {blocks:?}"
    );
    assert!(
        blocks[0].contains(" up"),
        "the first block of Try it starts the node: {}",
        blocks[0]
    );
    let script = blocks[1..].join("\n\n");
    for line in script.lines() {
        let names_the_node = line.contains("localhost") || line.contains("127.0.0.1");
        assert!(
            !names_the_node || line.starts_with("CANOPY_URL="),
            "Try it reaches the node through $CANOPY_URL only, not: {line}"
        );
    }

    // The node, as `canopy up` in the reader's folder: data under ./canopy-data.
    let folder = tempfile::tempdir().unwrap();
    let data = folder.path().join("canopy-data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _node = Running(start(&data, port));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(wait_healthy(&canopy_testkit::http_client(), &base));

    // The other terminal.
    let binary = Path::new(env!("CARGO_BIN_EXE_canopy"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out_path = folder.path().join("try-it.out");
    let err_path = folder.path().join("try-it.err");
    let mut bash = Command::new("bash")
        .args(["-x", "-euo", "pipefail", "-c", &script])
        .current_dir(folder.path())
        .env("PATH", path)
        .env("CANOPY_URL", &base)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = bash.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = bash.kill();
            let _ = bash.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let report = || {
        format!(
            "\n--- output ---\n{out}\n--- commands (bash -x) ---\n{}\n--- node log ---\n{}\n--- the script ---\n{script}",
            std::fs::read_to_string(&err_path).unwrap_or_default(),
            node_log(&data, 30)
        )
    };
    match status {
        Some(status) if status.success() => println!("{out}"),
        Some(status) => panic!("Try it failed ({status}):{}", report()),
        None => panic!("Try it did not finish within 2 minutes:{}", report()),
    }

    // What a reader sees: their vote counted, the proof checked against the record's key,
    // and the analyst's SQL answered.
    assert!(out.contains(r#""label":"yes""#), "results:{}", report());
    assert!(out.contains(r#""turnout":1"#), "results:{}", report());
    assert!(
        out.lines()
            .any(|line| line.starts_with("OK inclusion+signature (trusted key)")),
        "canopy verify:{}",
        report()
    );
    assert!(
        out.lines().any(|line| line.starts_with(r#"{"votes":"#)),
        "SQL:{}",
        report()
    );
}
