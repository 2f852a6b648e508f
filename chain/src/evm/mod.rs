//! On-chain anchoring (feature `evm`): the alloy client of the `GovernanceVotingVerifier`
//! contract, which records batch roots and reads them back, and [`EvmTarget`], the
//! [`AnchorTarget`](crate::AnchorTarget) built on it.
//!
//! The boundary uses plain types only (`[u8; N]`, `u64`, `String`), so callers need no alloy
//! types. Every method is a single attempt: retries with backoff belong to the caller, which
//! can use [`ChainError::code`] (the `evm_*` codes) / [`ChainError::is_transient`] to decide.
//!
//! Transport: reqwest over `http://` or `https://` (rustls on ring, certificates checked
//! against the system's roots, which `SSL_CERT_FILE` can replace). `rpc_url` may list
//! endpoints separated by commas, tried in order: a call that cannot reach one
//! (`evm_unreachable`) is made again on the next, which then stays current.

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
    /// JSON-RPC endpoint, `http(s)://host:port`, or several separated by commas (a
    /// fallback list, tried in order).
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
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ChainError::EvmBadConfig(format!(
            "rpc_url {rpc_url:?}: an EVM node is reached over http:// or https://"
        )));
    }
    // reqwest's rustls has no provider of its own in this build; ring is the one every
    // TLS connection of Canopy uses. Installed once per process, whoever comes first.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// Runs `$call` (an expression over `$endpoint`) on the current endpoint and, while an
/// endpoint cannot be reached, on the next ones in order (each at most once); the one that
/// answered becomes current. A macro rather than a function taking an async closure: the
/// closure's future could not be shown `Send` for every borrow.
macro_rules! on_endpoints {
    ($anchor:expr, |$endpoint:ident| $call:expr) => {{
        let anchor = &$anchor;
        let mut unreachable = Vec::new();
        let mut answer = None;
        for (index, $endpoint) in anchor.endpoint_order() {
            match $call {
                Err(ChainError::EvmUnreachable(why)) => {
                    anchor.unreachable_here($endpoint, &why);
                    unreachable.push(format!("{}: {why}", $endpoint.url));
                }
                answered => {
                    anchor.answered_by(index);
                    answer = Some(answered);
                    break;
                }
            }
        }
        answer.unwrap_or_else(|| Err(ChainError::EvmUnreachable(unreachable.join("; "))))
    }};
}

/// One JSON-RPC endpoint of the fallback list.
#[derive(Clone)]
struct Endpoint {
    url: String,
    provider: DynProvider,
    contract: Gvv::GovernanceVotingVerifierInstance<DynProvider>,
}

/// Client of one deployed `GovernanceVotingVerifier`, through one or more endpoints.
#[derive(Clone)]
pub struct EvmAnchor {
    endpoints: std::sync::Arc<[Endpoint]>,
    /// The endpoint calls go to first: the last one that answered.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
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
        let address = Address::from(config.contract);
        let endpoints = config
            .rpc_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| {
                let provider = http_provider(url, signer.clone())?;
                Ok(Endpoint {
                    url: url.to_string(),
                    contract: Gvv::new(address, provider.clone()),
                    provider,
                })
            })
            .collect::<Result<Vec<_>, ChainError>>()?;
        if endpoints.is_empty() {
            return Err(ChainError::EvmBadConfig("rpc_url names no endpoint".into()));
        }
        let anchor = Self {
            endpoints: endpoints.into(),
            current: Default::default(),
            address,
            confirmations: config.confirmations,
            poll_interval: config.poll_interval,
        };
        let chain_id = on_endpoints!(anchor, |endpoint| endpoint
            .provider
            .get_chain_id()
            .await
            .map_err(from_rpc))?;
        for endpoint in anchor.endpoints.iter() {
            // A reachable fallback on another chain would anchor where no one looks.
            if let Ok(other) = endpoint.provider.get_chain_id().await
                && other != chain_id
            {
                return Err(ChainError::EvmBadConfig(format!(
                    "{} is chain {other}, the first reachable endpoint chain {chain_id}",
                    endpoint.url
                )));
            }
        }
        let code = on_endpoints!(anchor, |endpoint| {
            endpoint
                .provider
                .get_code_at(address)
                .await
                .map_err(from_rpc)
        })?;
        if code.is_empty() {
            return Err(ChainError::EvmNoContract {
                address: hex::encode(config.contract),
            });
        }
        Ok(anchor)
    }

    /// The endpoints in the order to try them: the current one first.
    fn endpoint_order(&self) -> impl Iterator<Item = (usize, &Endpoint)> {
        let count = self.endpoints.len();
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed) % count;
        (0..count).map(move |step| {
            let index = (first + step) % count;
            (index, &self.endpoints[index])
        })
    }

    fn answered_by(&self, index: usize) {
        self.current
            .store(index, std::sync::atomic::Ordering::Relaxed);
    }

    fn unreachable_here(&self, endpoint: &Endpoint, why: &str) {
        if self.endpoints.len() > 1 {
            tracing::warn!(endpoint = %endpoint.url, %why, "an EVM endpoint is unreachable; trying the next");
        }
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
        let tx_hash = on_endpoints!(self, |endpoint| {
            endpoint
                .contract
                .recordBatch(
                    B256::from(batch_root),
                    decision_ids.len() as u64,
                    ids.clone(),
                )
                .send()
                .await
                .map(|pending| *pending.tx_hash())
                .map_err(from_contract(self.address))
        })?;
        let receipt = on_endpoints!(self, |endpoint| {
            wait_receipt(&endpoint.provider, tx_hash, self.poll_interval).await
        })?;
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
            match on_endpoints!(self, |endpoint| {
                endpoint
                    .provider
                    .get_transaction_receipt(tx_hash)
                    .await
                    .map_err(from_rpc)
            })? {
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
        let count = on_endpoints!(self, |endpoint| {
            endpoint
                .contract
                .batchCount()
                .call()
                .await
                .map_err(from_contract(self.address))
        })?;
        if batch_id >= count {
            return Ok(None);
        }
        let b = on_endpoints!(self, |endpoint| {
            endpoint
                .contract
                .batch(batch_id)
                .call()
                .await
                .map_err(from_contract(self.address))
        })?;
        Ok(Some(OnChainBatch {
            root: b.root.0,
            entry_count: b.entryCount,
            anchored_at_block: b.anchoredAtBlock,
        }))
    }

    /// Ids of the batches that anchored `decision_id`, oldest first (empty if none).
    pub async fn decision_history(&self, decision_id: [u8; 16]) -> Result<Vec<u64>, ChainError> {
        on_endpoints!(self, |endpoint| {
            endpoint
                .contract
                .getHistoricalProof(FixedBytes::from(decision_id))
                .call()
                .await
                .map_err(from_contract(self.address))
        })
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
        on_endpoints!(self, |endpoint| {
            endpoint
                .contract
                .verifyVoteHash(vote.clone(), anchor.clone())
                .call()
                .await
                .map_err(from_contract(self.address))
        })
    }

    /// Latest block number of the node.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        on_endpoints!(self, |endpoint| {
            endpoint.provider.get_block_number().await.map_err(from_rpc)
        })
    }

    /// Address of the contract this client talks to.
    pub fn contract_address(&self) -> [u8; 20] {
        self.address.into_array()
    }
}
