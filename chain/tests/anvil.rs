//! The EVM client (feature `evm`) against a real anvil (path in `CANOPY_ANVIL`, which
//! scripts/test sets; npm `@foundry-rs/anvil-linux-amd64@1.7.1`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use alloy::providers::{Provider, ProviderBuilder};
use canopy_chain::ChainError;
use canopy_chain::evm::{AnchorProofArgs, EvmAnchor, EvmAnchorConfig, VoteProofArgs, deploy};
use sha2::{Digest, Sha256};

/// anvil's first default account (the deployer and anchoring key).
const KEY0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// anvil's second default account: funded, but not the anchoring key.
const KEY1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    fn start(extra: &[&str]) -> Self {
        let bin = std::env::var("CANOPY_ANVIL").unwrap_or_else(|_| {
            panic!(
                "CANOPY_ANVIL is not set: it must be the path of the anvil binary \
                 (npm install --no-save --prefix DIR @foundry-rs/anvil-linux-amd64@1.7.1; \
                 then DIR/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil)"
            )
        });
        let mut child = Command::new(&bin)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start anvil at {bin:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout for anvil's whole life: it logs every request/tx, and a full
        // pipe would block it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix("Listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                panic!("anvil printed no 'Listening on' line within 30 s: {e}");
            }
        };
        Anvil {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// A started anvil with the anchor contract deployed by the funded `KEY0`.
    async fn with_contract(extra: &[&str]) -> (Self, [u8; 20]) {
        let anvil = Self::start(extra);
        let contract = deploy(&anvil.url, KEY0).await.expect("deploy");
        (anvil, contract)
    }

    /// Mines `n` blocks (`anvil_mine`).
    async fn mine(&self, n: u64) {
        let p = ProviderBuilder::new().connect_http(self.url.parse().unwrap());
        let _: () = p
            .raw_request("anvil_mine".into(), (format!("0x{n:x}"),))
            .await
            .expect("anvil_mine");
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(anvil: &Anvil, key: &str, contract: [u8; 20], confirmations: u64) -> EvmAnchorConfig {
    EvmAnchorConfig {
        rpc_url: anvil.url.clone(),
        private_key_hex: key.to_owned(),
        contract,
        confirmations,
        poll_interval: Duration::from_millis(50),
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn code<T: std::fmt::Debug>(r: Result<T, ChainError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => {
            eprintln!("expected error: [{}] {e}", e.code());
            e.code()
        }
    }
}

/// Runs `fut` while mining one block every 100 ms (automine only mines on transactions, so
/// confirmations > 0 need later blocks).
async fn with_mining<F: std::future::Future>(anvil: &Anvil, fut: F) -> F::Output {
    let done = Arc::new(AtomicBool::new(false));
    let miner = async {
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            anvil.mine(1).await;
        }
    };
    let work = async {
        let out = fut.await;
        done.store(true, Ordering::SeqCst);
        out
    };
    tokio::join!(miner, work).1
}

#[tokio::test]
async fn anchors_reads_and_verifies_on_automine_anvil() {
    let (anvil, contract) = Anvil::with_contract(&[]).await;
    let evm = EvmAnchor::connect(config(&anvil, KEY0, contract, 2))
        .await
        .expect("connect");
    assert_eq!(evm.contract_address(), contract);

    assert_eq!(
        evm.batch(0).await.unwrap(),
        None,
        "no batch before the first"
    );

    let (d1, d2) = ([1u8; 16], [2u8; 16]);
    let (root1, root2) = ([0xaa; 32], [0xbb; 32]);
    let tx1 = with_mining(&anvil, evm.record_batch(root1, &[d1, d2]))
        .await
        .expect("batch 1");
    assert_eq!(tx1.batch_id, 0);
    assert!(
        evm.block_number().await.unwrap() >= tx1.block_number + 2,
        "2 confirmations"
    );
    let tx2 = with_mining(&anvil, evm.record_batch(root2, &[d1]))
        .await
        .expect("batch 2");
    assert_eq!(tx2.batch_id, 1);
    assert!(tx2.block_number > tx1.block_number);
    assert_ne!(tx1.tx_hash, tx2.tx_hash);

    let b0 = evm.batch(0).await.unwrap().expect("batch 0");
    assert_eq!(
        (b0.root, b0.entry_count, b0.anchored_at_block),
        (root1, 2, tx1.block_number)
    );
    let b1 = evm.batch(1).await.unwrap().expect("batch 1");
    assert_eq!(
        (b1.root, b1.entry_count, b1.anchored_at_block),
        (root2, 1, tx2.block_number)
    );
    assert_eq!(evm.batch(2).await.unwrap(), None);

    assert_eq!(evm.decision_history(d1).await.unwrap(), vec![0, 1]);
    assert_eq!(evm.decision_history(d2).await.unwrap(), vec![0]);
    assert_eq!(
        evm.decision_history([9; 16]).await.unwrap(),
        Vec::<u64>::new()
    );

    // verify_vote with a real proof: a one-vote decision log (root = leaf hash, empty path,
    // size 1) anchored in a one-entry batch (batch root = the entry's leaf hash).
    let d3 = [3u8; 16];
    let leaf = sha256(&[&[0x00], b"vote: yes"]);
    let entry = sha256(&[
        &[0x00],
        b"canopy/anchor/v1",
        &d3,
        &1u64.to_be_bytes(),
        &leaf,
    ]);
    let tx3 = with_mining(&anvil, evm.record_batch(entry, &[d3]))
        .await
        .expect("batch 3");
    assert_eq!(tx3.batch_id, 2);
    let vote = VoteProofArgs {
        leaf_hash: leaf,
        leaf_index: 0,
        tree_size: 1,
        path: vec![],
    };
    let anchor = AnchorProofArgs {
        decision_id: d3,
        batch_id: 2,
        entry_index: 0,
        path: vec![],
    };
    assert!(
        evm.verify_vote(&vote, &anchor).await.unwrap(),
        "genuine vote verifies"
    );
    let mut tampered = vote.clone();
    tampered.leaf_hash[0] ^= 1;
    assert!(
        !evm.verify_vote(&tampered, &anchor).await.unwrap(),
        "tampered leaf fails"
    );
    let wrong_decision = AnchorProofArgs {
        decision_id: d1,
        ..anchor.clone()
    };
    assert!(!evm.verify_vote(&vote, &wrong_decision).await.unwrap());
    let unknown_batch = AnchorProofArgs {
        batch_id: 99,
        ..anchor.clone()
    };
    assert!(!evm.verify_vote(&vote, &unknown_batch).await.unwrap());

    // confirmations = 0 returns on the receipt, no extra blocks needed under automine.
    let fast = EvmAnchor::connect(config(&anvil, KEY0, contract, 0))
        .await
        .unwrap();
    let tx4 = fast
        .record_batch([0xcc; 32], &[d2])
        .await
        .expect("batch 4, 0 confirmations");
    assert_eq!(tx4.batch_id, 3);
    assert_eq!(fast.decision_history(d2).await.unwrap(), vec![0, 3]);
    // The first client sends again after another client used the same key: nonces must be
    // fetched per transaction, not cached per client.
    let tx5 = with_mining(&anvil, evm.record_batch([0xcd; 32], &[d2]))
        .await
        .expect("batch 5");
    assert_eq!(tx5.batch_id, 4);

    // ---- errors
    let bad_key = |k: &str| config(&anvil, k, contract, 0);
    assert_eq!(
        code(EvmAnchor::connect(bad_key("0x1234")).await),
        "evm_bad_key"
    );
    assert_eq!(
        code(EvmAnchor::connect(bad_key(&"zz".repeat(32))).await),
        "evm_bad_key"
    );
    assert_eq!(
        code(EvmAnchor::connect(bad_key(&"00".repeat(32))).await),
        "evm_bad_key"
    );
    assert_eq!(code(deploy(&anvil.url, "not a key").await), "evm_bad_key");
    // A valid key that is not the anchoring key: the contract refuses it.
    let intruder = EvmAnchor::connect(config(&anvil, KEY1, contract, 0))
        .await
        .unwrap();
    let err = intruder.record_batch([0xdd; 32], &[d1]).await.unwrap_err();
    eprintln!("intruder: [{}] {err}", err.code());
    assert_eq!(err.code(), "evm_reverted", "{err}");
    assert!(
        err.to_string().contains("OwnableUnauthorizedAccount"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        evm.batch(5).await.unwrap(),
        None,
        "nothing recorded by the intruder"
    );
    // Empty batch rejected locally.
    assert_eq!(
        code(evm.record_batch([0xee; 32], &[]).await),
        "evm_invalid_input"
    );
    // No contract at the address.
    assert_eq!(
        code(EvmAnchor::connect(config(&anvil, KEY0, [0x11; 20], 0)).await),
        "evm_no_contract"
    );
    // Unreachable node: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = config(&anvil, KEY0, contract, 0);
    down.rpc_url = format!("http://127.0.0.1:{port}");
    let err = EvmAnchor::connect(down).await.unwrap_err();
    assert_eq!(err.code(), "evm_unreachable", "{err}");
    assert!(err.is_transient());
    assert_eq!(
        code(deploy(&format!("http://127.0.0.1:{port}"), KEY0).await),
        "evm_unreachable"
    );
    // A scheme JSON-RPC over HTTP cannot use, and an https:// host that does not resolve.
    let mut websocket = config(&anvil, KEY0, contract, 0);
    websocket.rpc_url = "ws://127.0.0.1:8546".into();
    assert_eq!(code(EvmAnchor::connect(websocket).await), "evm_bad_config");
    let mut nowhere = config(&anvil, KEY0, contract, 0);
    nowhere.rpc_url = "https://rpc.example.invalid".into();
    assert_eq!(code(EvmAnchor::connect(nowhere).await), "evm_unreachable");
    // A fallback list: the unreachable first endpoint is passed over for anvil.
    let mut fallback = config(&anvil, KEY0, contract, 0);
    fallback.rpc_url = format!("http://127.0.0.1:{port}, {}", anvil.url);
    let anchor = EvmAnchor::connect(fallback).await.unwrap();
    assert!(anchor.block_number().await.is_ok());

    // The private key never shows in Debug output.
    assert!(!format!("{:?}", config(&anvil, KEY0, contract, 0)).contains(&KEY0[2..]));
}

#[tokio::test]
async fn waits_for_confirmations_with_block_time() {
    let (anvil, contract) = Anvil::with_contract(&["--block-time", "1"]).await;
    let evm = EvmAnchor::connect(config(&anvil, KEY0, contract, 2))
        .await
        .expect("connect");
    let tx = evm
        .record_batch([0x42; 32], &[[7; 16]])
        .await
        .expect("record");
    assert_eq!(tx.batch_id, 0);
    assert!(evm.block_number().await.unwrap() >= tx.block_number + 2);
    let b = evm.batch(0).await.unwrap().unwrap();
    assert_eq!(
        (b.root, b.entry_count, b.anchored_at_block),
        ([0x42; 32], 1, tx.block_number)
    );
}

#[tokio::test]
async fn the_evm_target_anchors_a_batch_and_keeps_the_error_codes() {
    use canopy_chain::evm::EvmTarget;
    use canopy_chain::{AnchorBatch, AnchorEntry, AnchorTarget};

    let (anvil, contract) = Anvil::with_contract(&[]).await;
    let target = EvmTarget::connect(config(&anvil, KEY0, contract, 0))
        .await
        .expect("connect");
    assert_eq!(target.name(), format!("evm:0x{}", hex(&contract)));

    let entries = vec![
        AnchorEntry {
            decision_id: [1; 16],
            tree_size: 3,
            root: [0x31; 32],
        },
        AnchorEntry {
            decision_id: [2; 16],
            tree_size: 1,
            root: [0x32; 32],
        },
    ];
    let batch = AnchorBatch::new(entries).unwrap();
    let receipt = target.anchor(7, &batch, "note").await.expect("anchor");
    assert_eq!(receipt.chain_batch_id, Some(0));
    assert!(receipt.tx_hash.as_deref().is_some_and(|h| h.len() == 66));
    let stored = target.client().batch(0).await.unwrap().expect("batch 0");
    assert_eq!(
        (
            stored.root,
            stored.entry_count,
            stored.anchored_at_block as i64
        ),
        (batch.root(), 2, receipt.block_number)
    );
    assert_eq!(
        target.client().decision_history([2; 16]).await.unwrap(),
        vec![0]
    );

    // Another key than the anchoring key: the contract's refusal comes back as it is.
    let intruder = EvmTarget::connect(config(&anvil, KEY1, contract, 0))
        .await
        .unwrap();
    let err = intruder.anchor(8, &batch, "note").await.unwrap_err();
    assert_eq!(err.code(), "evm_reverted", "{err}");
    assert!(!err.is_transient());
    assert_eq!(
        code(EvmTarget::connect(config(&anvil, KEY0, [0x11; 20], 0)).await),
        "evm_no_contract"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
