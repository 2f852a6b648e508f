//! An EVM node for the tests that anchor on chain: anvil (scripts/test installs it from npm
//! and names it in CANOPY_ANVIL), the contract deployed with `canopy evm deploy`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// anvil's first default account: funded on every anvil chain.
pub const ANVIL_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

pub struct Anvil {
    pub child: Child,
    pub url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_anvil() -> Anvil {
    start_anvil_with(&["--port", "0"])
}

pub fn start_anvil_with(extra: &[&str]) -> Anvil {
    let bin = std::env::var("CANOPY_ANVIL").expect(
        "CANOPY_ANVIL must name the anvil binary (scripts/test installs it from npm: \
         contracts/node_modules/@foundry-rs/anvil-linux-amd64)",
    );
    let mut child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--block-time", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting anvil");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("anvil exited before listening")
            .unwrap();
        if let Some(address) = line.strip_prefix("Listening on ") {
            break address.trim().to_string();
        }
    };
    // Keep reading so anvil never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Anvil {
        child,
        url: format!("http://{address}"),
    }
}

/// Deploys the anchor contract on `anvil` with `canopy evm deploy`; returns its address.
pub fn deploy_contract(anvil: &Anvil) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["evm", "deploy", "--rpc", &anvil.url, "--key", ANVIL_KEY])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let deployed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{deployed}");
    serde_json::from_str::<Value>(&deployed).unwrap()["contract"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The node's flags for anchoring every `interval_s` on the contract at `rpc`.
pub fn evm_args<'a>(interval_s: &'a str, rpc: &'a str, contract: &'a str) -> [&'a str; 10] {
    [
        "--anchor-interval-s",
        interval_s,
        "--evm-rpc",
        rpc,
        "--evm-contract",
        contract,
        "--evm-key",
        ANVIL_KEY,
        "--evm-confirmations",
        "1",
    ]
}
