//! `canopy verify --audit <export.json>`: checks an export of the audit trail offline. The
//! export is the JSON pages of `GET /api/v1/audit/trail` (from `after=0` on) and of `GET
//! /api/v1/audit/trail/anchors`, concatenated in one file, in any order.
//!
//! ```text
//!  anchored heads  --journal: each audit line of the anchor journal, its batch note signed by
//!                  --key, its path from the head to the signed root
//!                  --rpc:     the contract's batches filed under AUDIT_TRAIL_ID, their roots on
//!                  chain, the paths from the export's anchors (the latest must be there)
//!                  neither:   the export's anchors, paths checked (notes signed, with --key)
//!  the trail       chain from the first entry, HMACs with --audit-key, every anchored head
//!                  at its seq with its hash, and reached (a cut tail is missing entries)
//! ```
//!
//! One line, as for proofs: `OK …`, or `FAIL <code>: …` naming the first bad entry, with
//! the code `missing`, `altered`, `bad_hmac`, `hmac_missing` or `not_as_anchored` (or
//! `bad_anchor`, `bad_input` for the anchors and the file); exit 0, 1, or 2 when the export
//! cannot be read.

use std::collections::BTreeMap;

use canopy_chain::{AnchorJournal, AnchorPath, Checkpoint, NoteVerifier, verify_audit_anchor};
use canopy_serving::store::AuditRecord;
use canopy_serving::store_keys::AuditKey;
use canopy_serving::trail::{AnchoredHead, TrailRun, check_trail};
use serde::Deserialize;

use crate::verify::{Failure, VerifyArgs, fail, hash, read_source, unreadable, verdict};

/// An anchored head as `/api/v1/audit/trail/anchors` lists it.
#[derive(Deserialize)]
struct ExportAnchor {
    batch_id: i64,
    seq: i64,
    hash: String,
    entry_index: u64,
    entry_count: u64,
    path: Vec<String>,
    batch_root: String,
    target: String,
    /// Read by the on-chain check only (feature `evm`).
    #[cfg_attr(not(feature = "evm"), allow(dead_code))]
    chain_batch_id: Option<i64>,
    batch_note: Option<String>,
    /// None while the batch is not yet recorded at its target.
    confirmed_at: Option<i64>,
}

impl ExportAnchor {
    fn anchor_path(&self) -> Result<AnchorPath, Failure> {
        Ok(AnchorPath {
            entry_index: self.entry_index,
            entry_count: self.entry_count,
            path: self
                .path
                .iter()
                .map(|h| hash(h))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The head, once its path leads to `batch_root`.
    fn head_under(&self, batch_root: &str, batch: String) -> Result<AnchoredHead, Failure> {
        let head_hash = hash(&self.hash)?;
        verify_audit_anchor(
            self.seq as u64,
            &head_hash,
            &self.anchor_path()?,
            &hash(batch_root)?,
        )
        .map_err(|e| fail("bad_anchor", format!("{batch}: {e}")))?;
        Ok(AnchoredHead {
            seq: self.seq,
            hash: head_hash,
            batch,
        })
    }
}

/// What an export file holds.
#[derive(Default)]
struct Export {
    entries: BTreeMap<i64, AuditRecord>,
    anchors: Vec<ExportAnchor>,
}

pub fn run(args: VerifyArgs) -> std::process::ExitCode {
    let Some(path) = &args.audit else {
        return unreadable("no --audit export");
    };
    let text = match read_source(&path.to_string_lossy()) {
        Ok(text) => text,
        Err(error) => return unreadable(error),
    };
    verdict(check(&args, &text))
}

fn check(args: &VerifyArgs, text: &str) -> Result<String, Failure> {
    let export = parse_export(text)?;
    let entries: Vec<AuditRecord> = export.entries.values().cloned().collect();
    if entries.is_empty() {
        return Err(fail("bad_input", "the export holds no audit entry"));
    }
    let audit_key = match &args.audit_key {
        Some(path) => Some(AuditKey::read(path).map_err(|e| fail("bad_input", e.to_string()))?),
        None => None,
    };
    let (heads, anchors_from) = anchored_heads(args, &export)?;
    let run = TrailRun {
        before: None,
        entries: &entries,
        reaches_end: true,
    };
    let check = check_trail(&run, audit_key.as_ref(), &heads);
    if let Some(fault) = check.first_bad {
        return Err(fail(fault.kind.code(), fault.message));
    }
    let last = entries.last().map_or(0, |entry| entry.seq);
    let mut verdict = format!("audit trail entries 1..={last}: chain intact");
    match (&audit_key, check.keyed_from) {
        (Some(key), Some(from)) if from > 1 => verdict.push_str(&format!(
            ", HMAC (key {}) from entry {from}; entries 1..={} unkeyed (written before the audit key)",
            key.id(),
            from - 1
        )),
        (Some(key), Some(_)) => verdict.push_str(&format!(", HMAC (key {}) on every entry", key.id())),
        (Some(_), None) => verdict.push_str(", no entry keyed (all written before the audit key)"),
        (None, _) => verdict.push_str(", HMACs not checked (no --audit-key)"),
    }
    match heads.iter().max_by_key(|head| head.seq) {
        Some(head) => verdict.push_str(&format!(
            ", head at entry {} anchored in {} ({anchors_from})",
            head.seq, head.batch
        )),
        None => verdict.push_str(&format!(" (not anchored yet; {anchors_from})")),
    }
    Ok(verdict)
}

/// The entries and anchors of every JSON value in the file: trail pages (`entries`),
/// anchor pages (`anchors`), or arrays of them.
fn parse_export(text: &str) -> Result<Export, Failure> {
    let mut export = Export::default();
    let mut pending: Vec<serde_json::Value> = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
        pending.push(value.map_err(|e| fail("bad_input", format!("not JSON: {e}")))?);
    }
    while let Some(value) = pending.pop() {
        match value {
            serde_json::Value::Array(items) => pending.extend(items),
            serde_json::Value::Object(mut page) => {
                let entries = page.remove("entries");
                let anchors = page.remove("anchors");
                if entries.is_none() && anchors.is_none() {
                    return Err(fail(
                        "bad_input",
                        "a value of the export is neither a trail page nor an anchor page",
                    ));
                }
                if let Some(entries) = entries {
                    let entries: Vec<AuditRecord> = serde_json::from_value(entries)
                        .map_err(|e| fail("bad_input", format!("a trail page: {e}")))?;
                    for entry in entries {
                        add_entry(&mut export.entries, entry)?;
                    }
                }
                if let Some(anchors) = anchors {
                    let anchors: Vec<ExportAnchor> = serde_json::from_value(anchors)
                        .map_err(|e| fail("bad_input", format!("an anchor page: {e}")))?;
                    export.anchors.extend(anchors);
                }
            }
            _ => return Err(fail("bad_input", "the export holds a bare JSON value")),
        }
    }
    Ok(export)
}

/// Pages may overlap; an entry seen twice must be the same entry both times.
fn add_entry(entries: &mut BTreeMap<i64, AuditRecord>, entry: AuditRecord) -> Result<(), Failure> {
    match entries.get(&entry.seq) {
        Some(seen) if *seen != entry => Err(fail(
            "bad_input",
            format!(
                "entry {} appears twice in the export, differently",
                entry.seq
            ),
        )),
        _ => {
            entries.insert(entry.seq, entry);
            Ok(())
        }
    }
}

/// The heads to hold the trail to, checked against their source, and what that source is.
fn anchored_heads(
    args: &VerifyArgs,
    export: &Export,
) -> Result<(Vec<AnchoredHead>, String), Failure> {
    if let Some(journal) = &args.journal {
        let key = args.key.as_deref().ok_or_else(|| {
            fail(
                "bad_input",
                "--journal needs --key: the record key its lines are signed with",
            )
        })?;
        let verifier = NoteVerifier::parse(key).map_err(|e| fail(e.code(), e.to_string()))?;
        return Ok((journal_heads(journal, &verifier)?, "journal, signed".into()));
    }
    if let Some(rpc) = &args.rpc {
        return Ok((on_chain_heads(rpc, export)?, "on chain".into()));
    }
    let verifier = match &args.key {
        Some(key) => Some(NoteVerifier::parse(key).map_err(|e| fail(e.code(), e.to_string()))?),
        None => None,
    };
    let mut heads = Vec::new();
    for anchor in export.anchors.iter().filter(|a| a.confirmed_at.is_some()) {
        if let (Some(verifier), Some(note)) = (&verifier, &anchor.batch_note) {
            let batch = Checkpoint::verify(note, verifier)
                .map_err(|e| fail("bad_anchor", format!("batch {}: {e}", anchor.batch_id)))?;
            if hex::encode(batch.root) != anchor.batch_root || batch.size != anchor.entry_count {
                return Err(fail(
                    "bad_anchor",
                    format!(
                        "the signed note of batch {} is of another batch",
                        anchor.batch_id
                    ),
                ));
            }
        }
        heads.push(anchor.head_under(
            &anchor.batch_root,
            format!("batch {} ({})", anchor.batch_id, anchor.target),
        )?);
    }
    let source = match verifier {
        Some(_) => "anchors from the export, journal notes signed",
        None => "anchors as the export reports them; give --journal or --rpc to check them",
    };
    Ok((heads, source.into()))
}

/// Every audit head of the anchor journal, each line's note verified and its path checked.
fn journal_heads(
    journal: &std::path::Path,
    verifier: &NoteVerifier,
) -> Result<Vec<AnchoredHead>, Failure> {
    if !journal.exists() {
        return Err(fail(
            "bad_input",
            format!("no journal at {}", journal.display()),
        ));
    }
    let anchors =
        AnchorJournal::audit_anchors(journal).map_err(|e| fail("bad_input", e.to_string()))?;
    anchors
        .iter()
        .map(|anchor| {
            let batch = format!("journal batch {}", anchor.batch_id);
            let signed = Checkpoint::verify(&anchor.note, verifier)
                .map_err(|e| fail("bad_anchor", format!("{batch}: {e}")))?;
            if !signed
                .origin
                .ends_with(&format!("/anchor-batch/{}", anchor.batch_id))
            {
                return Err(fail(
                    "bad_anchor",
                    format!("{batch} is signed as {:?}", signed.origin),
                ));
            }
            verify_audit_anchor(
                anchor.seq,
                &anchor.hash,
                &anchor.anchor_path(signed.size),
                &signed.root,
            )
            .map_err(|e| fail("bad_anchor", format!("{batch}: {e}")))?;
            Ok(AnchoredHead {
                seq: anchor.seq as i64,
                hash: anchor.hash,
                batch,
            })
        })
        .collect()
}

/// The heads the contract holds: every batch it files under the audit trail's id, its root
/// read on chain, the path taken from the export's anchor of that batch.
#[cfg(feature = "evm")]
fn on_chain_heads(rpc: &str, export: &Export) -> Result<Vec<AnchoredHead>, Failure> {
    let contract = export
        .anchors
        .iter()
        .find_map(|anchor| anchor.target.strip_prefix("evm:"))
        .ok_or_else(|| {
            fail(
                "bad_input",
                "--rpc needs the export's anchors (/api/v1/audit/trail/anchors) of an EVM target",
            )
        })
        .and_then(|address| {
            crate::evm::parse_address(address).map_err(|e| fail("bad_input", e.to_string()))
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail("internal", e.to_string()))?;
    runtime.block_on(async {
        let client = crate::verify::read_only_client(rpc, contract).await?;
        let batches = client
            .decision_history(canopy_chain::AUDIT_TRAIL_ID)
            .await
            .map_err(|e| fail(e.code(), e.to_string()))?;
        let mut heads = Vec::new();
        for chain_batch in batches {
            let stored = client
                .batch(chain_batch)
                .await
                .map_err(|e| fail(e.code(), e.to_string()))?
                .ok_or_else(|| fail("bad_anchor", format!("batch {chain_batch} is not on chain")))?;
            let root = hex::encode(stored.root);
            // By the batch id the node recorded, or by the root: a timed-out attempt that was
            // mined anyway put the same root on chain under a second id.
            let anchor = export.anchors.iter().find(|anchor| {
                anchor.chain_batch_id == Some(chain_batch as i64) || anchor.batch_root == root
            });
            let Some(anchor) = anchor else {
                return Err(fail(
                    "bad_anchor",
                    format!(
                        "the contract's batch {chain_batch} anchors the audit trail, and the export has no anchor of it"
                    ),
                ));
            };
            if stored.entry_count != anchor.entry_count {
                return Err(fail(
                    "bad_anchor",
                    format!(
                        "batch {chain_batch} has {} entries on chain",
                        stored.entry_count
                    ),
                ));
            }
            heads.push(anchor.head_under(
                &root,
                format!(
                    "contract batch {chain_batch} (block {})",
                    stored.anchored_at_block
                ),
            )?);
        }
        Ok(heads)
    })
}

#[cfg(not(feature = "evm"))]
fn on_chain_heads(_rpc: &str, _export: &Export) -> Result<Vec<AnchoredHead>, Failure> {
    Err(fail(
        "no_evm_support",
        "this canopy was built without the `evm` feature",
    ))
}
