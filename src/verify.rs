//! `canopy verify`: checks a vote's proof with nothing but the proof, the record's key, an
//! earlier checkpoint and (optionally) the chain. `canopy verify --audit` (the module
//! `verify_audit`) checks an export of the audit trail against its anchors the same way.
//!
//! `canopy verify --tiles` checks a vote against the record store itself (a folder, a bucket
//! or a server's `tlog/` URL): the signed checkpoint, the leaf's index found in the level-0
//! tiles, the inclusion proof built from the tiles, the leaf's entry in its bundle; no
//! Canopy server needs to be up.
//!
//! Prints one line a script can read, `OK …` or `FAIL <code>: …`, and exits 0 when every
//! check passed, 1 when one failed, 2 when the input could not be read.

use std::path::PathBuf;

use canopy_chain::{
    AnchorPath, Checkpoint, Hash, NoteVerifier, ProofBundle, verify_anchored, verify_consistency,
};
use clap::Args;
use serde::Deserialize;

#[derive(Args)]
pub struct VerifyArgs {
    /// The proof: a file holding the JSON of /api/v1/audit/decisions/{id}/proof, or that URL,
    /// or a bare C2SP tlog-proof bundle (its `bundle` field; then --leaf and --key are needed).
    #[arg(required_unless_present_any = ["audit", "tiles"], conflicts_with_all = ["audit", "tiles"])]
    source: Option<String>,
    /// Recount a decision's final result: the signed statement (a file, or the URL of
    /// /api/v1/voting/decisions/{id}, whose `statement` is taken), checked against the
    /// decision's leaves in the record store given by --tiles.
    #[arg(long, requires = "tiles", conflicts_with = "audit")]
    pub tally: Option<String>,
    /// Check against the record store instead of a proof: a folder (the store's root),
    /// `s3://bucket/prefix` (credentials from the `AWS_*` variables; anonymous without them)
    /// or a server's `…/api/v1/audit/decisions/<id>/tlog/` URL. Needs --decision and --leaf.
    #[arg(long, conflicts_with = "audit")]
    pub tiles: Option<String>,
    /// With --tiles: the decision the vote is in.
    #[arg(long, requires = "tiles")]
    pub decision: Option<uuid::Uuid>,
    /// With --tiles and an s3:// store: the S3 endpoint (e.g. http://127.0.0.1:9000).
    #[arg(long, requires = "tiles")]
    pub s3_endpoint: Option<String>,
    /// An export of the audit trail to check instead of a proof: the JSON pages of
    /// /api/v1/audit/trail (from after=0 on) and of /api/v1/audit/trail/anchors, concatenated
    /// in one file. Checked against the anchors in --journal, on chain with --rpc, or else
    /// those in the export itself.
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// With --audit: the node's anchor journal (`<data>/anchors/journal.jsonl`, or a copy
    /// kept apart from the node); its lines are checked with --key.
    #[arg(long, requires = "audit")]
    pub journal: Option<PathBuf>,
    /// With --audit: the audit key file (`<data>/keys/audit-hmac.key`), to check each
    /// entry's HMAC too.
    #[arg(long, requires = "audit")]
    pub audit_key: Option<PathBuf>,
    /// The record's verifier key (`<name>+<hash>+<key>`), obtained independently, e.g. once
    /// from /api/v1/audit/key. Without it the key inside the proof is used, which proves
    /// only that the proof is self-consistent.
    #[arg(long)]
    pub key: Option<String>,
    /// The leaf hash (hex) from your cast-vote receipt; it must be the one proven.
    #[arg(long)]
    pub leaf: Option<String>,
    /// A checkpoint you saw earlier (a file with the signed note): checks that the record
    /// only grew since, with a consistency proof from the node.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// The node to ask for that consistency proof (default: the source URL's node).
    #[arg(long)]
    node: Option<String>,
    /// An EVM JSON-RPC URL: also check the anchor on chain, through the contract.
    #[arg(long)]
    pub rpc: Option<String>,
}

#[derive(Deserialize)]
struct ProofFile {
    decision_id: uuid::Uuid,
    leaf_hash: String,
    bundle: String,
    key: String,
    anchor: Option<AnchorFile>,
}

#[derive(Deserialize)]
struct AnchorFile {
    target: String,
    batch_root: String,
    entry_index: u64,
    entry_count: u64,
    path: Vec<String>,
    /// Read by the on-chain check only (feature `evm`).
    #[cfg_attr(not(feature = "evm"), allow(dead_code))]
    chain_batch_id: Option<i64>,
    batch_note: Option<String>,
}

/// A failed check: a stable code and what failed.
pub(crate) struct Failure {
    pub code: &'static str,
    pub message: String,
}

pub(crate) fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub fn run(args: VerifyArgs) -> std::process::ExitCode {
    if let Some(tiles) = &args.tiles {
        return match open_tiles(tiles, args.s3_endpoint.as_deref()) {
            Ok(store) => verdict(check_tiles(&args, store.as_ref())),
            Err(error) => unreadable(error),
        };
    }
    let source = args.source.clone().unwrap_or_default();
    let text = match read_source(&source) {
        Ok(text) => text,
        Err(error) => return unreadable(error),
    };
    verdict(check(&args, &source, &text))
}

/// Prints the input's failure to be read; exit 2.
pub(crate) fn unreadable(error: impl std::fmt::Display) -> std::process::ExitCode {
    println!("FAIL unreadable: {error}");
    std::process::ExitCode::from(2)
}

/// Prints the one line of a check; exit 0 or 1.
pub(crate) fn verdict(checked: Result<String, Failure>) -> std::process::ExitCode {
    match checked {
        Ok(verdict) => {
            println!("OK {verdict}");
            std::process::ExitCode::SUCCESS
        }
        Err(failure) => {
            println!("FAIL {}: {}", failure.code, failure.message);
            std::process::ExitCode::from(1)
        }
    }
}

pub(crate) fn read_source(source: &str) -> anyhow::Result<String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::blocking::get(source)?;
        let status = response.status();
        let body = response.text()?;
        anyhow::ensure!(status.is_success(), "{source} answered {status}: {body}");
        Ok(body)
    } else {
        Ok(std::fs::read_to_string(source)?)
    }
}

pub(crate) fn hash(text: &str) -> Result<Hash, Failure> {
    hex::decode(text.trim_start_matches("0x"))
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| fail("bad_input", format!("{text:?} is not a hex hash")))
}

/// A bare C2SP tlog-proof bundle carries no leaf and no key: both come from the command line.
fn from_bundle(args: &VerifyArgs, text: &str) -> Result<ProofFile, Failure> {
    let bundle = ProofBundle::parse(text).map_err(|e| fail(e.code(), e.to_string()))?;
    let decision: [u8; 16] = bundle
        .extra
        .as_deref()
        .and_then(|extra| extra.try_into().ok())
        .ok_or_else(|| fail("bad_input", "the bundle's extra line is not a decision id"))?;
    Ok(ProofFile {
        decision_id: uuid::Uuid::from_bytes(decision),
        leaf_hash: args
            .leaf
            .clone()
            .ok_or_else(|| fail("bad_input", "a bare bundle needs --leaf (from the receipt)"))?,
        bundle: text.to_string(),
        key: args
            .key
            .clone()
            .ok_or_else(|| fail("bad_input", "a bare bundle needs --key"))?,
        anchor: None,
    })
}

fn check(args: &VerifyArgs, source: &str, text: &str) -> Result<String, Failure> {
    let proof: ProofFile = if text.starts_with("c2sp.org/tlog-proof@v1") {
        from_bundle(args, text)?
    } else {
        serde_json::from_str(text)
            .map_err(|e| fail("bad_input", format!("not a Canopy proof: {e}")))?
    };
    let leaf = hash(&proof.leaf_hash)?;
    if let Some(expected) = &args.leaf
        && hash(expected)? != leaf
    {
        return Err(fail("wrong_leaf", "the proof is for another vote"));
    }
    let (key_text, key_source) = match &args.key {
        Some(key) => (key.as_str(), "trusted key"),
        None => (proof.key.as_str(), "key from the proof itself"),
    };
    let verifier = NoteVerifier::parse(key_text).map_err(|e| fail(e.code(), e.to_string()))?;
    let bundle = ProofBundle::parse(&proof.bundle).map_err(|e| fail(e.code(), e.to_string()))?;
    let decision = proof.decision_id.as_u128().to_be_bytes();
    if bundle.extra.as_deref() != Some(&decision[..]) {
        return Err(fail("wrong_decision", "the bundle is for another decision"));
    }
    let checkpoint = bundle
        .verify(&leaf, &verifier)
        .map_err(|e| fail(e.code(), e.to_string()))?;
    let decision_suffix = format!("/decision/{}", proof.decision_id);
    if !checkpoint.origin.ends_with(&decision_suffix) {
        return Err(fail(
            "wrong_decision",
            format!("the checkpoint is of the log {:?}", checkpoint.origin),
        ));
    }
    let mut verdict = format!(
        "inclusion+signature ({key_source}) decision={} index={} size={}",
        proof.decision_id, bundle.index, checkpoint.size
    );

    if let Some(previous) = &args.previous {
        let note = std::fs::read_to_string(previous)
            .map_err(|e| fail("bad_input", format!("{}: {e}", previous.display())))?;
        let earlier =
            Checkpoint::verify(&note, &verifier).map_err(|e| fail(e.code(), e.to_string()))?;
        if earlier.origin != checkpoint.origin {
            return Err(fail(
                "wrong_decision",
                "the earlier checkpoint is of another log",
            ));
        }
        if earlier.size > checkpoint.size {
            return Err(fail(
                "sizes_out_of_order",
                format!(
                    "the earlier checkpoint ({}) is larger than this one ({})",
                    earlier.size, checkpoint.size
                ),
            ));
        }
        let node = args
            .node
            .clone()
            .or_else(|| node_of(source))
            .ok_or_else(|| fail("bad_input", "--previous with a proof file needs --node"))?;
        let url = format!(
            "{node}/api/v1/audit/decisions/{}/consistency?from={}&to={}",
            proof.decision_id, earlier.size, checkpoint.size
        );
        let answer: serde_json::Value = read_source(&url)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| fail("unreachable", format!("no consistency proof from {url}")))?;
        let hashes = answer["proof"]
            .as_array()
            .ok_or_else(|| fail("bad_input", "the consistency answer has no proof"))?
            .iter()
            .map(|h| hash(h.as_str().unwrap_or_default()))
            .collect::<Result<Vec<Hash>, _>>()?;
        verify_consistency(
            earlier.size,
            checkpoint.size,
            &earlier.root,
            &checkpoint.root,
            &hashes,
        )
        .map_err(|e| fail("inconsistent", format!("the record did not only grow: {e}")))?;
        verdict.push_str(&format!(
            " +consistency({}->{})",
            earlier.size, checkpoint.size
        ));
    }

    let Some(anchor) = &proof.anchor else {
        if args.rpc.is_some() {
            return Err(fail(
                "not_anchored",
                "the proof carries no anchor yet; fetch it again later",
            ));
        }
        return Ok(verdict + " (not anchored yet)");
    };
    let batch_root = hash(&anchor.batch_root)?;
    let path = AnchorPath {
        entry_index: anchor.entry_index,
        entry_count: anchor.entry_count,
        path: anchor
            .path
            .iter()
            .map(|h| hash(h))
            .collect::<Result<_, _>>()?,
    };
    verify_anchored(
        &leaf,
        bundle.index,
        checkpoint.size,
        &bundle.proof,
        decision,
        &path,
        &batch_root,
    )
    .map_err(|e| fail("bad_anchor", e.to_string()))?;
    if anchor.target == "journal" {
        let note = anchor
            .batch_note
            .as_deref()
            .ok_or_else(|| fail("bad_anchor", "a journal anchor without its signed line"))?;
        let batch =
            Checkpoint::verify(note, &verifier).map_err(|e| fail("bad_anchor", e.to_string()))?;
        if batch.root != batch_root || batch.size != anchor.entry_count {
            return Err(fail(
                "bad_anchor",
                "the signed journal line is of another batch",
            ));
        }
        verdict.push_str(" +anchor(journal, signed)");
    } else {
        verdict.push_str(&format!(" +anchor-path({})", anchor.target));
    }
    if let Some(rpc) = &args.rpc {
        verdict.push_str(&on_chain(
            rpc,
            anchor,
            &leaf,
            &bundle,
            &checkpoint,
            decision,
            &path,
        )?);
    }
    Ok(verdict)
}

/// `http://host:port` of a proof URL.
fn node_of(source: &str) -> Option<String> {
    let rest = source.strip_prefix("http://")?;
    let host = rest.split('/').next()?;
    Some(format!("http://{host}"))
}

#[cfg(feature = "evm")]
fn on_chain(
    rpc: &str,
    anchor: &AnchorFile,
    leaf: &Hash,
    bundle: &ProofBundle,
    checkpoint: &Checkpoint,
    decision: [u8; 16],
    path: &AnchorPath,
) -> Result<String, Failure> {
    use canopy_chain::evm::{AnchorProofArgs, VoteProofArgs};
    let contract = anchor
        .target
        .strip_prefix("evm:")
        .ok_or_else(|| {
            fail(
                "bad_anchor",
                "the checkpoint was anchored in the journal, not on chain",
            )
        })
        .and_then(|address| {
            crate::evm::parse_address(address).map_err(|e| fail("bad_input", e.to_string()))
        })?;
    let chain_batch = anchor
        .chain_batch_id
        .ok_or_else(|| fail("bad_anchor", "no contract batch id"))? as u64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail("internal", e.to_string()))?;
    runtime.block_on(async {
        let client = read_only_client(rpc, contract).await?;
        let stored = client
            .batch(chain_batch)
            .await
            .map_err(|e| fail(e.code(), e.to_string()))?
            .ok_or_else(|| fail("bad_anchor", format!("batch {chain_batch} is not on chain")))?;
        if stored.root.to_vec() != hash(&anchor.batch_root)?.to_vec() {
            return Err(fail(
                "bad_anchor",
                "the chain holds another root for the batch",
            ));
        }
        let verified = client
            .verify_vote(
                &VoteProofArgs {
                    leaf_hash: *leaf,
                    leaf_index: bundle.index,
                    tree_size: checkpoint.size,
                    path: bundle.proof.clone(),
                },
                &AnchorProofArgs {
                    decision_id: decision,
                    batch_id: chain_batch,
                    entry_index: path.entry_index,
                    path: path.path.clone(),
                },
            )
            .await
            .map_err(|e| fail(e.code(), e.to_string()))?;
        if !verified {
            return Err(fail("bad_anchor", "the contract refused the proof"));
        }
        Ok(format!(
            " +on-chain(batch {chain_batch}, block {})",
            stored.anchored_at_block
        ))
    })
}

/// A client that only reads the contract at `contract` through `rpc`.
#[cfg(feature = "evm")]
pub(crate) async fn read_only_client(
    rpc: &str,
    contract: [u8; 20],
) -> Result<canopy_chain::evm::EvmAnchor, Failure> {
    use canopy_chain::evm::{EvmAnchor, EvmAnchorConfig};
    // Reading needs no key of ours; a throwaway one satisfies the client.
    let throwaway: [u8; 32] = rand::random();
    EvmAnchor::connect(EvmAnchorConfig {
        rpc_url: rpc.to_string(),
        private_key_hex: hex::encode(throwaway),
        contract,
        confirmations: 0,
        poll_interval: std::time::Duration::from_millis(250),
    })
    .await
    .map_err(|e| fail(e.code(), e.to_string()))
}

#[cfg(not(feature = "evm"))]
fn on_chain(
    _rpc: &str,
    _anchor: &AnchorFile,
    _leaf: &Hash,
    _bundle: &ProofBundle,
    _checkpoint: &Checkpoint,
    _decision: [u8; 16],
    _path: &AnchorPath,
) -> Result<String, Failure> {
    Err(fail(
        "no_evm_support",
        "this canopy was built without the `evm` feature",
    ))
}

/// Where `--tiles` reads a decision's log from.
pub(crate) trait TileFiles {
    /// `checkpoint` or a tile path (`tile/0/000.p/5`) of `decision`'s log; None if absent.
    fn read(&self, decision: uuid::Uuid, path: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// The record key a server publishes, when the source is one.
    fn server_key(&self) -> Option<String> {
        None
    }
}

/// A record store (folder or bucket), read as the node writes it.
struct StoreFiles(canopy_node::tiles::RecordStore);

impl TileFiles for StoreFiles {
    fn read(&self, decision: uuid::Uuid, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let decision = canopy_schemas::DecisionId::from(decision);
        if path == "checkpoint" {
            return Ok(self
                .0
                .read_checkpoint_blocking(decision)?
                .map(String::into_bytes));
        }
        Ok(self
            .0
            .read_tile_blocking(decision, canopy_chain::TileRef::parse(path)?)?)
    }
}

/// A server's `…/decisions/<id>/tlog/` (the decision is in the URL).
struct HttpFiles(String);

impl TileFiles for HttpFiles {
    fn read(&self, _decision: uuid::Uuid, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let url = format!("{}/{path}", self.0.trim_end_matches('/'));
        let response = reqwest::blocking::get(&url)?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(response.bytes()?.to_vec())),
            status => anyhow::bail!("{url} answered {status}"),
        }
    }

    fn server_key(&self) -> Option<String> {
        let (server, _) = self.0.split_once("/api/v1/audit/decisions/")?;
        let answer: serde_json::Value =
            serde_json::from_str(&read_source(&format!("{server}/api/v1/audit/key")).ok()?).ok()?;
        answer["key"].as_str().map(str::to_string)
    }
}

pub(crate) fn open_tiles(
    location: &str,
    s3_endpoint: Option<&str>,
) -> anyhow::Result<Box<dyn TileFiles>> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(Box::new(HttpFiles(location.to_string())));
    }
    let mut options: Vec<(&str, String)> = Vec::new();
    if let Some(endpoint) = s3_endpoint {
        options.push(("aws_endpoint", endpoint.to_string()));
        options.push((
            "aws_allow_http",
            endpoint.starts_with("http://").to_string(),
        ));
    }
    // Anyone may check a public bucket: without credentials, read it unsigned.
    if location.starts_with("s3") && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        options.push(("aws_skip_signature", "true".to_string()));
    }
    if !location.contains("://") && !std::path::Path::new(location).is_dir() {
        anyhow::bail!("{location} is not a folder");
    }
    Ok(Box::new(StoreFiles(
        canopy_node::tiles::RecordStore::open_with(location, options)?,
    )))
}

/// A decision's hash tiles through `TileFiles`, for `TiledLog`.
struct FetchedTiles<'a> {
    files: &'a dyn TileFiles,
    decision: uuid::Uuid,
}

impl canopy_chain::TileSource for FetchedTiles<'_> {
    fn tile(
        &self,
        level: u8,
        index: u64,
        width: u16,
    ) -> Result<Option<Vec<u8>>, canopy_chain::ChainError> {
        let path = canopy_chain::TileRef::hashes(level, index, width).path();
        self.files
            .read(self.decision, &path)
            .map_err(|e| canopy_chain::ChainError::TileStore(e.to_string()))
    }
}

/// `--tiles`: the checkpoint, its signature, the leaf's index from the level-0 tiles, the
/// inclusion proof from the tiles, the leaf's entry from its bundle.
/// The record key to check notes with: --key, or else the one a server publishes.
pub(crate) fn record_key(
    args: &VerifyArgs,
    files: &dyn TileFiles,
) -> Result<(NoteVerifier, &'static str), Failure> {
    let (key_text, key_source) = match (&args.key, files.server_key()) {
        (Some(key), _) => (key.clone(), "trusted key"),
        (None, Some(key)) => (key, "key from the server itself"),
        (None, None) => {
            return Err(fail(
                "bad_input",
                "a record store carries no key: give --key (from /api/v1/audit/key)",
            ));
        }
    };
    let verifier = NoteVerifier::parse(&key_text).map_err(|e| fail(e.code(), e.to_string()))?;
    Ok((verifier, key_source))
}

fn check_tiles(args: &VerifyArgs, files: &dyn TileFiles) -> Result<String, Failure> {
    use canopy_chain::tiles::{TILE_WIDTH, decode_bundle, leaf_tiles, tile_hashes};
    use canopy_chain::{TileRef, TiledLog, leaf_hash, verify_inclusion};
    let chain_fail = |e: canopy_chain::ChainError| fail(e.code(), e.to_string());
    let unreachable = |e: anyhow::Error| fail("unreachable", e.to_string());
    let decision = args
        .decision
        .ok_or_else(|| fail("bad_input", "--tiles needs --decision"))?;
    let leaf = hash(
        args.leaf
            .as_deref()
            .ok_or_else(|| fail("bad_input", "--tiles needs --leaf (from the receipt)"))?,
    )?;
    let (verifier, key_source) = record_key(args, files)?;
    let note = files
        .read(decision, "checkpoint")
        .map_err(unreachable)?
        .ok_or_else(|| {
            fail(
                "not_checkpointed",
                "the store holds no checkpoint of the decision",
            )
        })?;
    let note = String::from_utf8(note).map_err(|_| fail("bad_checkpoint", "not UTF-8"))?;
    let checkpoint = Checkpoint::verify(&note, &verifier).map_err(chain_fail)?;
    if !checkpoint
        .origin
        .ends_with(&format!("/decision/{decision}"))
    {
        return Err(fail(
            "wrong_decision",
            format!("the checkpoint is of the log {:?}", checkpoint.origin),
        ));
    }
    let mut index = None;
    for tile in leaf_tiles(0, checkpoint.size) {
        let bytes = files
            .read(decision, &tile.path())
            .map_err(unreachable)?
            .ok_or_else(|| fail("tile_missing", format!("{tile} is not in the store")))?;
        let found = tile_hashes(&tile, &bytes)
            .map_err(chain_fail)?
            .iter()
            .position(|hash| *hash == leaf);
        if let Some(at) = found {
            index = Some(tile.index * u64::from(TILE_WIDTH) + at as u64);
            break;
        }
    }
    let index = index.ok_or_else(|| {
        fail(
            "leaf_not_found",
            format!(
                "no leaf with this hash in the {} leaves of the checkpoint",
                checkpoint.size
            ),
        )
    })?;
    let tiled = TiledLog::new(FetchedTiles { files, decision }, checkpoint.size);
    let proof = tiled
        .inclusion_proof(index, checkpoint.size)
        .map_err(chain_fail)?;
    verify_inclusion(&leaf, index, checkpoint.size, &proof, &checkpoint.root)
        .map_err(chain_fail)?;
    let mut verdict = format!(
        "inclusion+signature ({key_source}) decision={decision} index={index} size={} from tiles",
        checkpoint.size
    );
    // The entry bundle holds the leaf's encoding: its hash must be the leaf.
    let bundle = leaf_tiles(index, checkpoint.size)[0];
    let bundle = TileRef::entries(bundle.index, bundle.width);
    if let Some(bytes) = files.read(decision, &bundle.path()).map_err(unreachable)? {
        let entries = decode_bundle(&bytes).map_err(chain_fail)?;
        let entry = entries
            .get((index % u64::from(TILE_WIDTH)) as usize)
            .ok_or_else(|| fail("bad_entry_bundle", format!("{bundle} has no entry {index}")))?;
        if leaf_hash(entry) != leaf {
            return Err(fail(
                "bad_entry_bundle",
                format!("entry {index} in {bundle} does not hash to the leaf"),
            ));
        }
        verdict.push_str(" +entry");
    }
    Ok(verdict)
}
