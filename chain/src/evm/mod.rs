//! On-chain anchoring (feature `evm`): the alloy client of the `GovernanceVotingVerifier`
//! contract, which records batch roots and reads them back, and [`EvmTarget`], the
//! [`AnchorTarget`](crate::AnchorTarget) built on it.
//!
//! The boundary uses plain types only (`[u8; N]`, `u64`, `String`), so callers need no alloy
//! types. Every method is a single attempt: retries with backoff belong to the caller, which
//! can use [`ChainError::code`] (the `evm_*` codes) / [`ChainError::is_transient`] to decide.
//!
//! Transport: plain HTTP (reqwest without TLS). An `https://` RPC URL is rejected by
//! [`EvmAnchor::connect`] with `evm_bad_config`; enabling alloy's `reqwest-rustls-tls`
//! feature would lift that (and adds rustls + aws-lc-rs to the build).

#![warn(missing_docs)]

mod bindings;
mod target;

pub use target::EvmTarget;

use std::fmt;
use std::time::Duration;

use alloy::network::{Ethereum, EthereumWallet, Network, ReceiptResponse};
use alloy::primitives::{Address, B256, FixedBytes};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolInterface, decode_revert_reason};
use alloy::transports::http::reqwest;
use alloy::transports::{RpcError, TransportErrorKind};

use bindings::GovernanceVotingVerifier::{self as Gvv, GovernanceVotingVerifierErrors};

use crate::ChainError;

/// Connect timeout of every HTTP request to the node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Overall timeout of every single HTTP request to the node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Receipt poll interval used by [`deploy`] (which has no config).
const DEPLOY_POLL_INTERVAL: Duration = Duration::from_millis(250);

type Receipt = <Ethereum as Network>::ReceiptResponse;

/// Connection settings of an [`EvmAnchor`].
#[derive(Clone)]
pub struct EvmAnchorConfig {
    /// JSON-RPC endpoint, `http://host:port` (no TLS support in this build).
    pub rpc_url: String,
    /// secp256k1 private key, 32 bytes hex, with or without `0x`. Must be the contract's
    /// anchoring key (its owner) for [`EvmAnchor::record_batch`].
    pub private_key_hex: String,
    /// Address of the deployed `GovernanceVotingVerifier`.
    pub contract: [u8; 20],
    /// Blocks that must be mined on top of the receipt's block before `record_batch` returns
    /// (0 = return as soon as the receipt is there).
    pub confirmations: u64,
    /// How often to poll for the receipt and for new blocks.
    pub poll_interval: Duration,
}

impl fmt::Debug for EvmAnchorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvmAnchorConfig")
            .field("rpc_url", &self.rpc_url)
            .field("private_key_hex", &"<redacted>")
            .field(
                "contract",
                &format_args!("0x{}", hex::encode(self.contract)),
            )
            .field("confirmations", &self.confirmations)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// A mined (and, per config, confirmed) anchoring transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorTx {
    /// Batch id assigned by the contract (from the `BatchAnchored` log); ids start at 0.
    pub batch_id: u64,
    /// Transaction hash.
    pub tx_hash: [u8; 32],
    /// Block the transaction was included in.
    pub block_number: u64,
    /// Gas the transaction used.
    pub gas_used: u64,
}

/// A batch as stored on chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnChainBatch {
    /// Root of the batch tree.
    pub root: [u8; 32],
    /// Number of anchor entries (leaves) in the batch tree.
    pub entry_count: u64,
    /// Block number in which the batch was recorded.
    pub anchored_at_block: u64,
}

/// Inclusion of a vote leaf in its decision's vote log (RFC 9162 inclusion proof).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteProofArgs {
    /// Leaf hash, `sha256(0x00 || vote)`.
    pub leaf_hash: [u8; 32],
    /// Index of the leaf in the vote log.
    pub leaf_index: u64,
    /// Size of the vote log the proof is for (the size that was anchored).
    pub tree_size: u64,
    /// Audit path, leaf to root.
    pub path: Vec<[u8; 32]>,
}

/// Inclusion of the decision's anchor entry in an anchored batch tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorProofArgs {
    /// Decision id (16 bytes).
    pub decision_id: [u8; 16],
    /// Batch that anchored the decision's root.
    pub batch_id: u64,
    /// Index of the decision's entry in the batch tree.
    pub entry_index: u64,
    /// Audit path, entry to batch root.
    pub path: Vec<[u8; 32]>,
}

// ------------------------------------------------------------------------------ error mapping

/// Human-readable form of revert data: the contract's custom errors, `Error(string)`,
/// `Panic(uint256)`, else hex.
fn describe_revert(data: &[u8]) -> String {
    if let Ok(e) = GovernanceVotingVerifierErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    decode_revert_reason(data).unwrap_or_else(|| format!("0x{}", hex::encode(data)))
}

fn from_rpc(e: RpcError<TransportErrorKind>) -> ChainError {
    match e {
        RpcError::ErrorResp(payload) => {
            let msg = payload.message.to_string();
            if let Some(data) = payload.as_revert_data() {
                ChainError::EvmReverted {
                    reason: describe_revert(&data),
                    tx_hash: None,
                }
            } else if msg.contains("revert") {
                ChainError::EvmReverted {
                    reason: msg,
                    tx_hash: None,
                }
            } else if msg.contains("insufficient funds") {
                ChainError::EvmInsufficientFunds(msg)
            } else {
                ChainError::EvmRpc(format!("code {}: {msg}", payload.code))
            }
        }
        RpcError::Transport(kind) => match kind {
            TransportErrorKind::HttpError(_)
            | TransportErrorKind::HttpErrorWithRetryAfter { .. } => {
                ChainError::EvmRpc(kind.to_string())
            }
            TransportErrorKind::NonRetryable(_) | TransportErrorKind::MissingBatchResponse(_) => {
                ChainError::EvmRpc(kind.to_string())
            }
            // reqwest send failures (connect refused, DNS, timeouts, I/O) land in Custom.
            other => ChainError::EvmUnreachable(error_chain(&other)),
        },
        other => ChainError::EvmRpc(other.to_string()),
    }
}

fn from_contract(address: Address) -> impl Fn(alloy::contract::Error) -> ChainError {
    use alloy::contract::Error as C;
    move |e| match e {
        C::TransportError(e) => from_rpc(e),
        C::PendingTransactionError(e) => from_pending(e),
        // A call to an address without code returns "0x", which does not decode.
        C::ZeroData(..) => ChainError::EvmNoContract {
            address: hex::encode(address),
        },
        other => ChainError::EvmRpc(other.to_string()),
    }
}

fn from_pending(e: alloy::providers::PendingTransactionError) -> ChainError {
    match e {
        alloy::providers::PendingTransactionError::TransportError(e) => from_rpc(e),
        other => ChainError::EvmRpc(other.to_string()),
    }
}

/// `Display` of an error and its sources, so "error sending request" shows its cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

// ------------------------------------------------------------------------------ plumbing

fn parse_key(private_key_hex: &str) -> Result<PrivateKeySigner, ChainError> {
    let s = private_key_hex.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if s.len() != 64 {
        return Err(ChainError::EvmBadKey(format!(
            "expected 64 hex digits, got {}",
            s.len()
        )));
    }
    let mut raw = [0u8; 32];
    hex::decode_to_slice(s, &mut raw)
        .map_err(|_| ChainError::EvmBadKey("not valid hex".to_owned()))?;
    PrivateKeySigner::from_bytes(&B256::from(raw))
        .map_err(|_| ChainError::EvmBadKey("not a valid secp256k1 secret key".to_owned()))
}

fn http_provider(rpc_url: &str, signer: PrivateKeySigner) -> Result<DynProvider, ChainError> {
    let url: reqwest::Url = rpc_url
        .parse()
        .map_err(|e| ChainError::EvmBadConfig(format!("rpc_url {rpc_url:?}: {e}")))?;
    if url.scheme() != "http" {
        return Err(ChainError::EvmBadConfig(format!(
            "rpc_url {rpc_url:?}: only http:// is supported (built without TLS)"
        )));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| ChainError::EvmBadConfig(format!("http client: {}", error_chain(&e))))?;
    // Not `ProviderBuilder::new()`'s recommended fillers: their CachedNonceManager counts
    // nonces locally per client, which goes stale ("nonce too low") as soon as another
    // client/process uses the same key, and leaves a gap after a send that fails. The pending
    // nonce is fetched for every transaction instead (one extra RPC per anchoring).
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_reqwest(client, url)
        .erased())
}

/// Polls until the receipt of `tx_hash` is available.
async fn wait_receipt(
    provider: &DynProvider,
    tx_hash: B256,
    poll: Duration,
) -> Result<Receipt, ChainError> {
    loop {
        if let Some(r) = provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(from_rpc)?
        {
            return Ok(r);
        }
        tokio::time::sleep(poll).await;
    }
}

// ------------------------------------------------------------------------------ public API

/// Deploys `GovernanceVotingVerifier` with `anchoringKey` = the address of `private_key_hex`
/// and returns the contract address once the deployment is mined.
pub async fn deploy(rpc_url: &str, private_key_hex: &str) -> Result<[u8; 20], ChainError> {
    let signer = parse_key(private_key_hex)?;
    let owner = signer.address();
    let provider = http_provider(rpc_url, signer)?;
    let pending = Gvv::deploy_builder(&provider, owner)
        .send()
        .await
        .map_err(from_contract(Address::ZERO))?;
    let tx_hash = *pending.tx_hash();
    let receipt = wait_receipt(&provider, tx_hash, DEPLOY_POLL_INTERVAL).await?;
    if !receipt.status() {
        return Err(ChainError::EvmReverted {
            reason: "deployment transaction failed".to_owned(),
            tx_hash: Some(Box::new(tx_hash.0)),
        });
    }
    let address = receipt.contract_address().ok_or_else(|| {
        ChainError::EvmBadReceipt("deployment receipt has no contract address".into())
    })?;
    Ok(address.into_array())
}

/// Client of one deployed `GovernanceVotingVerifier`.
#[derive(Clone)]
pub struct EvmAnchor {
    provider: DynProvider,
    contract: Gvv::GovernanceVotingVerifierInstance<DynProvider>,
    address: Address,
    confirmations: u64,
    poll_interval: Duration,
}

impl fmt::Debug for EvmAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvmAnchor")
            .field("contract", &self.address)
            .field("confirmations", &self.confirmations)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl EvmAnchor {
    /// Parses the key, checks that the node answers and that there is code at the contract
    /// address (`evm_unreachable` / `evm_no_contract` otherwise).
    pub async fn connect(config: EvmAnchorConfig) -> Result<Self, ChainError> {
        let signer = parse_key(&config.private_key_hex)?;
        let provider = http_provider(&config.rpc_url, signer)?;
        provider.get_chain_id().await.map_err(from_rpc)?;
        let address = Address::from(config.contract);
        let code = provider.get_code_at(address).await.map_err(from_rpc)?;
        if code.is_empty() {
            return Err(ChainError::EvmNoContract {
                address: hex::encode(config.contract),
            });
        }
        let contract = Gvv::new(address, provider.clone());
        Ok(Self {
            provider,
            contract,
            address,
            confirmations: config.confirmations,
            poll_interval: config.poll_interval,
        })
    }

    /// Records a batch root over `decision_ids.len()` anchor entries (one per id, in entry
    /// order). Sends the transaction, waits for its receipt, checks success, takes the batch id
    /// from the `BatchAnchored` log, then waits until `confirmations` blocks are mined on top
    /// of the receipt's block and checks the receipt is still canonical.
    ///
    /// Not idempotent: every successful call creates a new batch id. A caller that retries
    /// after a timeout/`evm_unreachable` while the first transaction was in fact mined anchors
    /// the batch twice (harmless for verification, but the history lists both ids).
    pub async fn record_batch(
        &self,
        batch_root: [u8; 32],
        decision_ids: &[[u8; 16]],
    ) -> Result<AnchorTx, ChainError> {
        if decision_ids.is_empty() {
            return Err(ChainError::EvmInvalidInput(
                "a batch needs at least one decision id".into(),
            ));
        }
        let ids: Vec<FixedBytes<16>> = decision_ids.iter().copied().map(FixedBytes::from).collect();
        let pending = self
            .contract
            .recordBatch(B256::from(batch_root), decision_ids.len() as u64, ids)
            .send()
            .await
            .map_err(from_contract(self.address))?;
        let tx_hash = *pending.tx_hash();
        let receipt = wait_receipt(&self.provider, tx_hash, self.poll_interval).await?;
        if !receipt.status() {
            return Err(ChainError::EvmReverted {
                reason: "recordBatch transaction failed (status 0)".to_owned(),
                tx_hash: Some(Box::new(tx_hash.0)),
            });
        }
        let block_number = receipt
            .block_number()
            .ok_or_else(|| ChainError::EvmBadReceipt("receipt has no block number".into()))?;
        let block_hash = receipt.block_hash();
        let batch_id = receipt
            .logs()
            .iter()
            .filter(|l| l.address() == self.address)
            .find_map(|l| l.log_decode::<Gvv::BatchAnchored>().ok())
            .map(|l| l.inner.data.batchId)
            .ok_or_else(|| {
                ChainError::EvmBadReceipt("no BatchAnchored log in the receipt".into())
            })?;

        if self.confirmations > 0 {
            let target = block_number.saturating_add(self.confirmations);
            while self.block_number().await? < target {
                tokio::time::sleep(self.poll_interval).await;
            }
            // Still canonical? (a reorg drops the receipt or moves it to another block)
            match self
                .provider
                .get_transaction_receipt(tx_hash)
                .await
                .map_err(from_rpc)?
            {
                Some(r) if r.block_hash() == block_hash && r.status() => {}
                _ => {
                    return Err(ChainError::EvmReorged {
                        tx_hash: Box::new(tx_hash.0),
                    });
                }
            }
        }
        Ok(AnchorTx {
            batch_id,
            tx_hash: tx_hash.0,
            block_number,
            gas_used: receipt.gas_used(),
        })
    }

    /// The batch with this id, or `None` if it was never recorded.
    pub async fn batch(&self, batch_id: u64) -> Result<Option<OnChainBatch>, ChainError> {
        // `batch()` reverts with UnknownBatch for ids >= batchCount: compare first so that a
        // revert is never mistaken for "absent".
        let count = self
            .contract
            .batchCount()
            .call()
            .await
            .map_err(from_contract(self.address))?;
        if batch_id >= count {
            return Ok(None);
        }
        let b = self
            .contract
            .batch(batch_id)
            .call()
            .await
            .map_err(from_contract(self.address))?;
        Ok(Some(OnChainBatch {
            root: b.root.0,
            entry_count: b.entryCount,
            anchored_at_block: b.anchoredAtBlock,
        }))
    }

    /// Ids of the batches that anchored `decision_id`, oldest first (empty if none).
    pub async fn decision_history(&self, decision_id: [u8; 16]) -> Result<Vec<u64>, ChainError> {
        self.contract
            .getHistoricalProof(FixedBytes::from(decision_id))
            .call()
            .await
            .map_err(from_contract(self.address))
    }

    /// Checks a vote against an anchored batch on chain (`eth_call` of `verifyVoteHash`).
    /// `false` for a wrong proof or an unknown batch.
    pub async fn verify_vote(
        &self,
        vote: &VoteProofArgs,
        anchor: &AnchorProofArgs,
    ) -> Result<bool, ChainError> {
        let vote = Gvv::VoteProof {
            leafHash: B256::from(vote.leaf_hash),
            leafIndex: vote.leaf_index,
            treeSize: vote.tree_size,
            path: vote.path.iter().copied().map(B256::from).collect(),
        };
        let anchor = Gvv::AnchorProof {
            decisionId: FixedBytes::from(anchor.decision_id),
            batchId: anchor.batch_id,
            entryIndex: anchor.entry_index,
            path: anchor.path.iter().copied().map(B256::from).collect(),
        };
        self.contract
            .verifyVoteHash(vote, anchor)
            .call()
            .await
            .map_err(from_contract(self.address))
    }

    /// Latest block number of the node.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        self.provider.get_block_number().await.map_err(from_rpc)
    }

    /// Address of the contract this client talks to.
    pub fn contract_address(&self) -> [u8; 20] {
        self.address.into_array()
    }
}
