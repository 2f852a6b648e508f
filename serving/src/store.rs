//! The metadata store: users, credentials and roles, verifications, decisions, refresh
//! token families, the hash-chained audit trail. One trait, two implementations through
//! sqlx: SQLite (embedded, WAL mode) and PostgreSQL (cluster). Both run the same SQL text
//! (`$n` placeholders, integer booleans, TEXT ids), generated from one macro, and the same
//! test suite; only a search's full-text match differs (FTS5 or a tsvector), one argument of
//! the macro.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use canopy_dataflow::{EngineSnapshot, PartKey, PartKind, RestorePlan, StateChunk};
use canopy_ingest::Position;
use canopy_schemas::{CloseKind, Decision, DecisionId, DecisionStatus, Method, Sensor};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::ServingError;
use crate::auth::Role;
use crate::store_keys::{AuditKey, StoreKeys};

pub type StoreResult<T> = Result<T, ServingError>;

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    /// Vote weight in millionths.
    pub weight: u32,
    pub totp_secret: Option<Vec<u8>>,
    pub totp_enabled: bool,
}

/// What presenting a refresh token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use: the token is now spent; issue the next one in `family`.
    Fresh { family: Uuid, user: Uuid },
    /// Already spent: someone replayed it, and the family must be revoked.
    Reused { family: Uuid, user: Uuid },
    /// Unknown, expired or revoked.
    Invalid,
}

/// One entry of the audit trail; `hash` chains it to the entry before, `hmac` keys it
/// (HMAC-SHA256 under the audit key, outside the database; absent on entries written
/// before the store had the key).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    #[serde(default)]
    pub hmac: Option<String>,
}

impl AuditRecord {
    /// SHA-256 over the previous hash and every field, each length-prefixed.
    pub fn compute_hash(
        prev_hash: &str,
        seq: i64,
        at: i64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> String {
        let mut hasher = Sha256::new();
        for field in [
            prev_hash.as_bytes(),
            &seq.to_be_bytes(),
            &at.to_be_bytes(),
            actor.as_bytes(),
            action.as_bytes(),
            detail.as_bytes(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hex::encode(hasher.finalize())
    }
}

/// What the audit trail names an account by that does not exist (any more).
pub const UNKNOWN_USER_PSEUDONYM: &str = "p-unknown";

/// The hash the first audit entry chains to.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The action of the entry a keyed store writes before its first keyed entry, when the
/// entry before is unkeyed (or there is none): every entry from it on must carry a valid
/// HMAC, the entries before it are reported as unkeyed (see the `trail` module).
pub const AUDIT_KEYING_BEGAN: &str = "audit_keying_began";

/// An audit-trail head put in an anchor batch: entry `seq` with chain hash `hash` is entry
/// `entry_index` of batch `batch_id` (see `canopy_chain::AUDIT_TRAIL_ID`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditAnchorRow {
    pub batch_id: i64,
    pub entry_index: i64,
    pub seq: i64,
    pub hash: String,
}

/// An admin's verification of an expert or stakeholder.
#[derive(Clone, Debug)]
pub struct Verification {
    pub role: Role,
    /// Vote weight in millionths.
    pub weight: u32,
    pub field: String,
    pub regions: Vec<String>,
    pub verified_by: Uuid,
}

/// An account's latest verification as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationRecord {
    pub role: Role,
    /// Vote weight in millionths.
    pub weight: u32,
    pub field: String,
    pub verified_by: Uuid,
    /// Unix seconds.
    pub verified_at: i64,
}

/// The most words of a search that are looked for.
pub const MAX_SEARCH_WORDS: usize = 32;

/// A search of the decisions; every filter given must hold (AND).
#[derive(Clone, Debug, Default)]
pub struct DecisionSearch {
    /// Each must appear in the title or the description (stemmed: "flooding" finds
    /// "flood"); the letters and digits of the query, split at everything else.
    pub words: Vec<String>,
    pub region: Option<String>,
    /// As of `now` ([`DecisionStatus::window_at`]).
    pub status: Option<DecisionStatus>,
    pub method: Option<Method>,
    /// The voting window meets [`from`, `to`): it closes after `from` and opens before
    /// `to` (µs since the Unix epoch).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// µs since the Unix epoch.
    pub now: i64,
    pub offset: i64,
    pub limit: i64,
}

impl DecisionSearch {
    /// The words of `query` (letters and digits; everything else separates them), at most
    /// [`MAX_SEARCH_WORDS`] of them.
    pub fn words_of(query: &str) -> Vec<String> {
        query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .take(MAX_SEARCH_WORDS)
            .map(str::to_string)
            .collect()
    }

    /// The words as both full-text engines read them: each quoted, all required. FTS5 takes
    /// a quoted string as one term (no operator or column syntax gets through), and
    /// PostgreSQL's `plainto_tsquery` ignores the quotes.
    fn match_text(&self) -> String {
        self.words
            .iter()
            .map(|word| format!("\"{word}\""))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A page of a search, newest first, and how many decisions match in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionPage {
    pub decisions: Vec<Decision>,
    /// Each decision's status at the search's `now` ([`StoredDecision::status_at`]), in
    /// the same order.
    pub statuses: Vec<DecisionStatus>,
    pub total: i64,
}

/// A decision as stored: its owner, and the part of its lifecycle the clock cannot tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDecision {
    pub decision: Decision,
    pub owner: Uuid,
    /// `closed`, `final` or `cancelled` once a close or a result is recorded; `None`
    /// while the window alone says the status.
    pub lifecycle: Option<DecisionStatus>,
}

impl StoredDecision {
    /// The decision's status at `now` (µs): the stored lifecycle if there is one, else
    /// scheduled, open or closed by its window. The same rule the search's status filter
    /// applies in SQL.
    pub fn status_at(&self, now: i64) -> DecisionStatus {
        effective_status(&self.decision, self.lifecycle, now)
    }
}

/// The status of `decision` whose stored lifecycle is `lifecycle`, at `now` (µs).
pub fn effective_status(
    decision: &Decision,
    lifecycle: Option<DecisionStatus>,
    now: i64,
) -> DecisionStatus {
    lifecycle.unwrap_or_else(|| decision.status_at(now))
}

/// A decision's close as recorded from the vote log: the first close entry in its
/// partition (the smallest offset), which every worker takes as the end of its votes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DecisionCloseRow {
    pub decision_id: DecisionId,
    pub position: Position,
    pub kind: CloseKind,
    /// µs since the Unix epoch, as the closer stamped the entry.
    pub closed_at: i64,
    /// The closing account; `None` for the schedule.
    pub closed_by: Option<Uuid>,
}

impl DecisionCloseRow {
    /// The lifecycle status this close gives its decision.
    pub fn status(&self) -> DecisionStatus {
        match self.kind {
            CloseKind::Cancel => DecisionStatus::Cancelled,
            CloseKind::Schedule | CloseKind::Early => DecisionStatus::Closed,
        }
    }
}

/// A decision's final result as a finalizer signed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DecisionResultRow {
    pub decision_id: DecisionId,
    /// The signed statement (a note) over the result.
    pub statement: String,
    /// The result, JSON.
    pub result: String,
    pub tree_size: i64,
    /// Hex.
    pub root: String,
    /// The close the result counts up to.
    pub position: Position,
    /// µs since the Unix epoch.
    pub finalized_at: i64,
}

/// One status change of a decision: `created`, `edited`, `closed`, `cancelled`, `final`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    pub seq: i64,
    pub decision_id: DecisionId,
    pub status: String,
    /// µs since the Unix epoch.
    pub at: i64,
    /// The account's id, or `schedule` / `engine` for the process.
    pub actor: String,
    /// JSON.
    pub detail: String,
}

/// What a history row names the schedule (a close nobody asked for) as.
pub const SCHEDULE_ACTOR: &str = "schedule";
/// What a history row names the process that stored a final result as.
pub const FINALIZER_ACTOR: &str = "finalizer";

/// An entry of a voter roll as imported: its id, the operator's opaque identifier, its
/// region, and the SHA-256 (hex) of its one-time invitation code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRollEntry {
    pub id: Uuid,
    pub identifier: String,
    pub region: String,
    pub code_hash: String,
}

/// What presenting an invitation code did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The account now holds the entry; the code is spent.
    Claimed {
        roll: Uuid,
        entry: Uuid,
        region: String,
    },
    /// No entry waits for this code (unknown, used, revoked or spent).
    UnknownCode,
    /// The account already holds another entry of the code's roll.
    AlreadyHolds { roll: Uuid },
}

/// The entry of a roll an account holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollClaim {
    pub entry: Uuid,
    pub region: String,
}

/// What issuing an entry a new code did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// The old code (or the claim) no longer works; `former_claimant` held the entry.
    Reissued {
        entry: Uuid,
        former_claimant: Option<Uuid>,
    },
    NoSuchEntry,
    /// Its claimant was erased: the entry has voted its last.
    Spent,
}

/// A roll's size and how much of it is claimed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RollSummary {
    pub name: String,
    pub entries: i64,
    pub claimed: i64,
    pub spent: i64,
}

#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Applies the migrations not yet applied; returns their names.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    /// Refuses a taken username with `Conflict`: taken in any case or Unicode spelling
    /// ([`crate::auth::username_key`]).
    async fn create_user(&self, user: &UserRecord, now: i64) -> StoreResult<()>;
    /// The account of that exact name, else the one whose normalised name it is.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Replaces a user's password hash and revokes every refresh-token family of theirs.
    async fn set_password_hash(&self, user: Uuid, password_hash: &str) -> StoreResult<()>;
    /// Replaces a user's recovery codes (SHA-256 hex of each) with `code_hashes`.
    async fn replace_recovery_codes(&self, user: Uuid, code_hashes: &[String]) -> StoreResult<()>;
    /// Whether `code_hash` is an unused recovery code of `user` (reads only).
    async fn recovery_code_unused(&self, user: Uuid, code_hash: &str) -> StoreResult<bool>;
    /// Spends a recovery code, atomically: exactly one caller ever gets true.
    async fn spend_recovery_code(&self, user: Uuid, code_hash: &str, now: i64)
    -> StoreResult<bool>;
    /// How many unused recovery codes a user has.
    async fn recovery_codes_left(&self, user: Uuid) -> StoreResult<i64>;
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<UserRecord>>;
    /// Sets a user's role and weight and records who verified it; false if no such user.
    async fn verify_user(
        &self,
        user: Uuid,
        verification: &Verification,
        now: i64,
    ) -> StoreResult<bool>;
    async fn regions_of(&self, user: Uuid) -> StoreResult<Vec<String>>;
    /// The account's latest verification, if it was ever verified.
    async fn latest_verification(&self, user: Uuid) -> StoreResult<Option<VerificationRecord>>;
    async fn set_totp(&self, user: Uuid, secret: Option<&[u8]>, enabled: bool) -> StoreResult<()>;
    /// Records that TOTP step `step` was used; false if it or a later one already was.
    async fn claim_totp_step(&self, user: Uuid, step: i64) -> StoreResult<bool>;
    async fn create_refresh_family(&self, family: Uuid, user: Uuid, now: i64) -> StoreResult<()>;
    async fn insert_refresh_token(
        &self,
        hash: &str,
        family: Uuid,
        user: Uuid,
        expires_at: i64,
    ) -> StoreResult<()>;
    /// Spends a refresh token, atomically: exactly one caller ever gets `Fresh`.
    async fn use_refresh_token(&self, hash: &str, now: i64) -> StoreResult<RefreshUse>;
    async fn revoke_refresh_family(&self, family: Uuid) -> StoreResult<()>;
    async fn revoke_refresh_token(&self, hash: &str) -> StoreResult<bool>;
    async fn put_decision(&self, decision: &Decision, owner: Uuid, now: i64) -> StoreResult<()>;
    async fn decisions(&self) -> StoreResult<Vec<Decision>>;
    /// The decisions matching every filter of `search`, newest first (then by id), one page.
    /// The status filter is the effective status ([`StoredDecision::status_at`]): `closed`
    /// matches a recorded close or a window that is over, `final` and `cancelled` only the
    /// stored lifecycle.
    async fn search_decisions(&self, search: &DecisionSearch) -> StoreResult<DecisionPage>;

    // --- The decision lifecycle (migration 0013) ---

    /// A decision with its owner and stored lifecycle.
    async fn stored_decision(&self, decision: DecisionId) -> StoreResult<Option<StoredDecision>>;
    /// A decision's stored lifecycle alone (`None` also when there is no such decision):
    /// what a cast checks, without reading the body.
    async fn decision_lifecycle(&self, decision: DecisionId)
    -> StoreResult<Option<DecisionStatus>>;
    /// Replaces a decision's parameters, only while it is scheduled: no lifecycle and `now`
    /// (µs) before its stored `opens_at`, checked in the same statement that writes, so an
    /// edit cannot slip in as it opens. Otherwise `DecisionNotEditable` (409
    /// `decision_not_editable`), or `NotFound` when there is no such decision.
    async fn update_decision(&self, decision: &Decision, now: i64) -> StoreResult<()>;
    /// Records a close read from (or appended to) the vote log, keeping the one with the
    /// smallest offset: several closers may race, and a replay records again. True when
    /// this call changed what is stored. Sets the lifecycle to `closed` (`cancelled` for a
    /// cancel) unless it is `final`, and appends a history row when that changes the
    /// status (once, unless a smaller offset of another kind displaces the close). One
    /// transaction.
    async fn record_close(&self, close: &DecisionCloseRow) -> StoreResult<bool>;
    /// Every recorded close, by decision.
    async fn closes(&self) -> StoreResult<Vec<DecisionCloseRow>>;
    /// A decision's recorded close.
    async fn decision_close(&self, decision: DecisionId) -> StoreResult<Option<DecisionCloseRow>>;
    /// Closes that declare a result (not cancels) and have none stored yet, by decision.
    async fn unfinalized_closes(&self) -> StoreResult<Vec<DecisionCloseRow>>;
    /// Stores a decision's final result unless one is stored (the first wins); sets the
    /// lifecycle to `final` and appends a history row. True if stored.
    async fn store_result(&self, result: &DecisionResultRow) -> StoreResult<bool>;
    async fn decision_result(&self, decision: DecisionId)
    -> StoreResult<Option<DecisionResultRow>>;
    /// Appends a history row (`at` in µs, `detail` JSON).
    async fn append_history(
        &self,
        decision: DecisionId,
        status: &str,
        at: i64,
        actor: &str,
        detail: &str,
    ) -> StoreResult<()>;
    /// Up to `limit` history rows after row `after_seq` (0: from the first), oldest first.
    async fn history_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<HistoryRow>>;
    /// Registers a sensor, or replaces its registration.
    async fn put_sensor(&self, sensor: &Sensor, now: i64) -> StoreResult<()>;
    async fn sensors(&self) -> StoreResult<Vec<Sensor>>;
    /// Keeps a decision's impact statement (JSON), replacing an earlier one.
    async fn put_impact_statement(
        &self,
        decision: DecisionId,
        body: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// A decision's impact statement (JSON), if one was submitted.
    async fn impact_statement(&self, decision: DecisionId) -> StoreResult<Option<String>>;
    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> StoreResult<AuditRecord>;
    /// Up to `limit` entries after entry `after` (0: from the first), oldest first.
    async fn audit_page(&self, after: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
    /// Every entry, oldest first.
    async fn audit_trail(&self) -> StoreResult<Vec<AuditRecord>> {
        self.audit_page(0, i64::MAX).await
    }
    /// The latest entry.
    async fn audit_head(&self) -> StoreResult<Option<AuditRecord>>;
    /// The key the store keys audit entries with, if it has one.
    fn audit_key(&self) -> Option<&AuditKey>;
    /// Up to `limit` anchored audit heads in batches after `after_batch`, by batch.
    async fn audit_anchors(&self, after_batch: i64, limit: i64)
    -> StoreResult<Vec<AuditAnchorRow>>;
    /// The anchored audit head with the highest sequence number.
    async fn latest_audit_anchor(&self) -> StoreResult<Option<AuditAnchorRow>>;
    /// The audit head a batch anchors, if it anchors one.
    async fn batch_audit_anchor(&self, batch_id: i64) -> StoreResult<Option<AuditAnchorRow>>;

    /// Stores a roll and all its entries, or nothing (`Conflict` on a repeated identifier).
    async fn create_roll(
        &self,
        roll: Uuid,
        name: &str,
        created_by: Uuid,
        entries: &[NewRollEntry],
        now: i64,
    ) -> StoreResult<()>;
    async fn roll_summary(&self, roll: Uuid) -> StoreResult<Option<RollSummary>>;
    /// Spends the code whose SHA-256 is `code_hash` on `user`, atomically: one account per
    /// code, one entry per account and roll.
    async fn claim_roll_entry(
        &self,
        code_hash: &str,
        user: Uuid,
        now: i64,
    ) -> StoreResult<ClaimOutcome>;
    /// Frees the entry `identifier` of `roll` from its claim, if any, and gives it a new code.
    async fn reissue_roll_entry(
        &self,
        roll: Uuid,
        identifier: &str,
        code_hash: &str,
    ) -> StoreResult<Reissue>;
    /// The entry of `roll` that `user` holds.
    async fn roll_claim(&self, roll: Uuid, user: Uuid) -> StoreResult<Option<RollClaim>>;

    /// The salt of a ballot's subject (an account, or a roll entry still in play), created on
    /// first use; `AccountErased` for an id that is neither.
    async fn voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<[u8; 32]>;
    /// The salt of a ballot's subject if it has one (it has cast), creating none.
    async fn existing_voter_salt(&self, voter: Uuid) -> StoreResult<Option<[u8; 32]>>;
    /// The account's sealing key, created on first use; `None` once the account is gone
    /// (erased), so an erased voter's token cannot start a new key, salt or ballot.
    async fn voter_key(&self, user: Uuid, now: i64) -> StoreResult<Option<[u8; 32]>>;
    /// Up to `limit` salts (or, with `keys`, sealing keys) of the voters whose ids come
    /// after `after`, in id order: a restart reads them all before it serves a vote, so no
    /// first vote after it waits for the store.
    async fn voter_secrets_after(
        &self,
        keys: bool,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<(Uuid, [u8; 32])>>;
    /// The pseudonym the audit trail names the account by, created on first use;
    /// [`UNKNOWN_USER_PSEUDONYM`] for an id that is no account.
    async fn user_pseudonym(&self, user: Uuid) -> StoreResult<String>;
    /// Erases an account: its key, salt and pseudonym, the salts of the roll entries it
    /// holds (spent: they have voted their last), its credentials, verifications, tokens
    /// and the account itself; on SQLite deleted bytes are overwritten and the WAL emptied.
    /// The account's pseudonym, or `None` if there is no such account.
    async fn erase_voter(&self, user: Uuid, now: i64) -> StoreResult<Option<String>>;
    /// Stores a checkpoint unless one at this size or larger is stored for the decision
    /// (a replay re-cuts sizes already covered); true if stored.
    async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> StoreResult<bool>;
    /// A decision's checkpoints, oldest first.
    async fn checkpoints(&self, decision: DecisionId) -> StoreResult<Vec<CheckpointRow>>;
    /// The largest checkpoint of every decision.
    async fn latest_checkpoints(&self) -> StoreResult<Vec<CheckpointRow>>;
    /// Up to `limit` checkpoints not yet in an anchor batch, by (decision, size).
    async fn unanchored_checkpoints(&self, limit: i64) -> StoreResult<Vec<CheckpointRow>>;
    /// Fixes a batch: its row, each entry's (batch, index) on its checkpoint, and the audit
    /// head it anchors (if any), all at once.
    async fn create_anchor_batch(
        &self,
        batch: &AnchorBatchRow,
        entries: &[CheckpointRow],
        audit_head: Option<&AuditAnchorRow>,
    ) -> StoreResult<()>;
    /// Records where a batch landed.
    async fn confirm_anchor_batch(&self, batch: &AnchorBatchRow) -> StoreResult<()>;
    /// Batches created but not yet confirmed (a crash between the two), oldest first.
    async fn pending_anchor_batches(&self) -> StoreResult<Vec<AnchorBatchRow>>;
    async fn anchor_batch(&self, batch_id: i64) -> StoreResult<Option<AnchorBatchRow>>;
    /// The checkpoints of a batch in entry order.
    async fn batch_entries(&self, batch_id: i64) -> StoreResult<Vec<CheckpointRow>>;
    async fn next_anchor_batch_id(&self) -> StoreResult<i64>;

    /// Stores one worker's chunk of an engine checkpoint: all its parts (delta and, at a
    /// full checkpoint, base) in one transaction.
    async fn write_engine_chunk(&self, chunk: &StateChunk, now: i64) -> StoreResult<()>;
    /// Deletes the engine checkpoint parts that the latest complete full checkpoint
    /// supersedes (every lower `seq`), in one statement; returns how many.
    async fn compact_engine_checkpoints(&self) -> StoreResult<u64>;
    /// The latest complete engine checkpoint: the latest complete full one's bases and the
    /// deltas from it (every delta, without one). Drops the parts of later, incomplete
    /// checkpoints and those a full one supersedes.
    async fn load_engine_snapshot(&self) -> StoreResult<Option<EngineSnapshot>>;
    /// How many engine checkpoint parts (rows) are stored.
    async fn engine_checkpoint_parts(&self) -> StoreResult<i64>;

    // --- SQL access tokens (the PostgreSQL port's credentials) ---

    /// The account's SCRAM salt: the stored one, or `fresh` stored now if it has none.
    async fn sql_token_salt(&self, user: Uuid, fresh: &[u8]) -> StoreResult<Vec<u8>>;
    /// Stores a token's verifier.
    async fn create_sql_token(&self, token: &SqlTokenRecord) -> StoreResult<()>;
    /// The account's tokens not expired at `now` (unix seconds), oldest first; the expired
    /// ones are deleted.
    async fn sql_tokens(&self, user: Uuid, now: i64) -> StoreResult<Vec<SqlTokenRecord>>;
    /// Deletes the account's token `id`; false if it has no such token.
    async fn revoke_sql_token(&self, user: Uuid, id: Uuid) -> StoreResult<bool>;
    /// Records a sign-in with token `id`.
    async fn touch_sql_token(&self, id: Uuid, now: i64) -> StoreResult<()>;
}

/// An SQL access token as stored: its SCRAM-SHA-256 verifier (under the account's salt,
/// [`MetadataStore::sql_token_salt`]), never the token. Times in unix seconds.
#[derive(Clone, PartialEq, Eq)]
pub struct SqlTokenRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The account's salt (read with the token; not written with it).
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for SqlTokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTokenRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored checkpoint. `root` is hex; `note` the signed note.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRow {
    pub decision_id: DecisionId,
    pub tree_size: i64,
    pub root: String,
    pub note: String,
    pub log_partition: i64,
    pub log_offset: i64,
    pub cut_at: i64,
    pub batch_id: Option<i64>,
    pub entry_index: Option<i64>,
}

/// An anchor batch: a root over checkpoints, and where it was recorded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AnchorBatchRow {
    pub batch_id: i64,
    pub root: String,
    pub entry_count: i64,
    /// `journal` or `evm:<chain id>:<contract address>`.
    pub target: String,
    /// The contract's id for the batch.
    pub chain_batch_id: Option<i64>,
    pub tx_hash: Option<String>,
    /// The block (EVM) or the journal line it was recorded at.
    pub block_number: Option<i64>,
    pub created_at: i64,
    pub confirmed_at: Option<i64>,
}

const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        "0002_record",
        include_str!("../../migrations/sqlite/0002_record.sql"),
    ),
    (
        "0003_engine_state",
        include_str!("../../migrations/sqlite/0003_engine_state.sql"),
    ),
    (
        "0004_sensors",
        include_str!("../../migrations/sqlite/0004_sensors.sql"),
    ),
    (
        "0005_audit_append_only",
        include_str!("../../migrations/sqlite/0005_audit_append_only.sql"),
    ),
    (
        "0006_rolls",
        include_str!("../../migrations/sqlite/0006_rolls.sql"),
    ),
    (
        "0007_voter_keys",
        include_str!("../../migrations/sqlite/0007_voter_keys.sql"),
    ),
    (
        "0008_audit_keys",
        include_str!("../../migrations/sqlite/0008_audit_keys.sql"),
    ),
    (
        "0009_signin",
        include_str!("../../migrations/sqlite/0009_signin.sql"),
    ),
    (
        "0010_sql_tokens",
        include_str!("../../migrations/sqlite/0010_sql_tokens.sql"),
    ),
    (
        "0011_engine_state_parts",
        include_str!("../../migrations/sqlite/0011_engine_state_parts.sql"),
    ),
    (
        "0012_decision_search",
        include_str!("../../migrations/sqlite/0012_decision_search.sql"),
    ),
    (
        "0013_decision_lifecycle",
        include_str!("../../migrations/sqlite/0013_decision_lifecycle.sql"),
    ),
    (
        "0014_impact_statements",
        include_str!("../../migrations/sqlite/0014_impact_statements.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_record",
        include_str!("../../migrations/postgres/0002_record.sql"),
    ),
    (
        "0003_engine_state",
        include_str!("../../migrations/postgres/0003_engine_state.sql"),
    ),
    (
        "0004_sensors",
        include_str!("../../migrations/postgres/0004_sensors.sql"),
    ),
    (
        "0005_audit_append_only",
        include_str!("../../migrations/postgres/0005_audit_append_only.sql"),
    ),
    (
        "0006_rolls",
        include_str!("../../migrations/postgres/0006_rolls.sql"),
    ),
    (
        "0007_voter_keys",
        include_str!("../../migrations/postgres/0007_voter_keys.sql"),
    ),
    (
        "0008_audit_keys",
        include_str!("../../migrations/postgres/0008_audit_keys.sql"),
    ),
    (
        "0009_signin",
        include_str!("../../migrations/postgres/0009_signin.sql"),
    ),
    (
        "0010_sql_tokens",
        include_str!("../../migrations/postgres/0010_sql_tokens.sql"),
    ),
    (
        "0011_engine_state_parts",
        include_str!("../../migrations/postgres/0011_engine_state_parts.sql"),
    ),
    (
        "0012_decision_search",
        include_str!("../../migrations/postgres/0012_decision_search.sql"),
    ),
    (
        "0013_decision_lifecycle",
        include_str!("../../migrations/postgres/0013_decision_lifecycle.sql"),
    ),
    (
        "0014_impact_statements",
        include_str!("../../migrations/postgres/0014_impact_statements.sql"),
    ),
];

fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text)
        .map_err(|e| ServingError::Storage(format!("bad id {text:?} in the store: {e}")))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

macro_rules! sql_store {
    ($(#[$doc:meta])* $name:ident, $db:ty, $migrations:expr, $migration_lock:expr, $begin_write:expr, $after_erase:expr, $words_match:expr) => {
        $(#[$doc])*
        pub struct $name {
            pool: sqlx::Pool<$db>,
            /// Appends to the audit chain one at a time within this process; the sequence
            /// number's primary key catches a second process racing for the same slot.
            audit_lock: tokio::sync::Mutex<()>,
            /// The audit key and the secrets key, held outside the database.
            keys: StoreKeys,
        }

        impl $name {
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// The store keying its audit entries and sealing secrets with `keys`.
            pub fn with_keys(mut self, keys: StoreKeys) -> Self {
                self.keys = keys;
                self
            }

            /// A TOTP secret as the users table holds it: sealed under the secrets key for
            /// `user`, never in the clear.
            fn sealed_secret(&self, user: Uuid, secret: Option<&[u8]>) -> StoreResult<Option<Vec<u8>>> {
                let Some(secret) = secret else { return Ok(None) };
                let key = self.keys.secrets.as_ref().ok_or_else(|| {
                    ServingError::Internal("the store has no secrets key: a TOTP secret is only stored sealed".into())
                })?;
                key.seal(user, secret).map(Some)
            }

            /// A sealed TOTP secret opened, or one from before sealing (`totp_secret`, which
            /// the next `migrate` with a secrets key seals) as it is.
            fn opened_secret(&self, user: Uuid, row: &<$db as sqlx::Database>::Row) -> StoreResult<Option<Vec<u8>>> {
                if let Some(sealed) = row.try_get::<Option<Vec<u8>>, _>("totp_secret_sealed")? {
                    let key = self.keys.secrets.as_ref().ok_or_else(|| {
                        ServingError::Storage("a TOTP secret is sealed, and the store has no secrets key".into())
                    })?;
                    return key.open(user, &sealed).map(Some);
                }
                Ok(row.try_get("totp_secret")?)
            }

            /// Seals every TOTP secret still in the clear (written before migration
            /// 0008_audit_keys), within the migrating transaction.
            async fn seal_clear_secrets(&self, tx: &mut sqlx::Transaction<'_, $db>) -> StoreResult<usize> {
                if self.keys.secrets.is_none() {
                    return Ok(0);
                }
                let clear = sqlx::query("SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL").fetch_all(&mut **tx).await?;
                for row in &clear {
                    let id: String = row.try_get("id")?;
                    let secret: Vec<u8> = row.try_get("totp_secret")?;
                    let sealed = self.sealed_secret(parse_uuid(&id)?, Some(&secret))?;
                    sqlx::query("UPDATE users SET totp_secret_sealed = $1, totp_secret = NULL WHERE id = $2")
                        .bind(sealed)
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(clear.len())
            }

            /// Inserts an audit entry after (`prev_seq`, `prev_hash`), keyed if the store has the
            /// audit key; `None` if another process took the slot first.
            async fn insert_audit(&self, prev_seq: i64, prev_hash: &str, now: i64, actor: &str, action: &str, detail: &str) -> StoreResult<Option<AuditRecord>> {
                let seq = prev_seq + 1;
                let hash = AuditRecord::compute_hash(prev_hash, seq, now, actor, action, detail);
                let hmac = self.keys.audit.as_ref().map(|key| key.entry_mac(seq, &hash));
                let inserted = sqlx::query("INSERT INTO audit_trail (seq, at, actor, action, detail, prev_hash, hash, hmac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(seq)
                    .bind(now)
                    .bind(actor)
                    .bind(action)
                    .bind(detail)
                    .bind(prev_hash)
                    .bind(&hash)
                    .bind(&hmac)
                    .execute(&self.pool)
                    .await;
                match inserted {
                    Ok(_) => Ok(Some(AuditRecord { seq, at: now, actor: actor.into(), action: action.into(), detail: detail.into(), prev_hash: prev_hash.into(), hash, hmac })),
                    Err(error) if is_unique_violation(&error) => Ok(None),
                    Err(error) => Err(error.into()),
                }
            }

            fn audit_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<AuditRecord> {
                Ok(AuditRecord {
                    seq: row.try_get("seq")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    detail: row.try_get("detail")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                    hmac: row.try_get("hmac")?,
                })
            }

            fn audit_anchor_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<AuditAnchorRow> {
                Ok(AuditAnchorRow {
                    batch_id: row.try_get("batch_id")?,
                    entry_index: row.try_get("entry_index")?,
                    seq: row.try_get("seq")?,
                    hash: row.try_get("hash")?,
                })
            }

            fn user_from_row(&self, row: &<$db as sqlx::Database>::Row) -> StoreResult<UserRecord> {
                let role: String = row.try_get("role")?;
                let id = parse_uuid(&row.try_get::<String, _>("id")?)?;
                Ok(UserRecord {
                    id,
                    username: row.try_get("username")?,
                    password_hash: row.try_get("password_hash")?,
                    role: Role::parse(&role).ok_or_else(|| ServingError::Storage(format!("unknown role {role:?}")))?,
                    weight: u32::try_from(row.try_get::<i64, _>("weight")?).unwrap_or(0),
                    totp_secret: self.opened_secret(id, row)?,
                    totp_enabled: row.try_get::<i64, _>("totp_enabled")? != 0,
                })
            }

            fn checkpoint_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<CheckpointRow> {
                Ok(CheckpointRow {
                    decision_id: decision_id(&row.try_get::<String, _>("decision_id")?)?,
                    tree_size: row.try_get("tree_size")?,
                    root: row.try_get("root")?,
                    note: row.try_get("note")?,
                    log_partition: row.try_get("log_partition")?,
                    log_offset: row.try_get("log_offset")?,
                    cut_at: row.try_get("cut_at")?,
                    batch_id: row.try_get("batch_id")?,
                    entry_index: row.try_get("entry_index")?,
                })
            }

            /// Where every stored engine checkpoint part sits, and what that makes complete.
            async fn engine_checkpoint_plan(tx: &mut sqlx::Transaction<'_, $db>) -> StoreResult<RestorePlan> {
                let rows = sqlx::query("SELECT seq, worker, workers, kind, part FROM engine_checkpoints")
                    .fetch_all(&mut **tx)
                    .await?;
                let keys = rows.iter().map(Self::engine_part_key).collect::<StoreResult<Vec<_>>>()?;
                Ok(RestorePlan::of(&keys))
            }

            fn engine_part_key(row: &<$db as sqlx::Database>::Row) -> StoreResult<PartKey> {
                let number = |column: &str| -> StoreResult<i64> { Ok(row.try_get::<i64, _>(column)?) };
                let kind = PartKind::parse(&row.try_get::<String, _>("kind")?)
                    .map_err(|e| ServingError::Storage(e.to_string()))?;
                Ok(PartKey {
                    seq: number("seq")? as u64,
                    worker: number("worker")? as u32,
                    workers: number("workers")? as u32,
                    kind,
                    part: number("part")? as u32,
                })
            }

            /// The WHERE clause of a search, its values bound: the same for the page and the count.
            fn push_search_filters(query: &mut sqlx::QueryBuilder<$db>, search: &DecisionSearch) {
                query.push(" WHERE 1 = 1");
                if !search.words.is_empty() {
                    let (before, after): (&str, &str) = $words_match;
                    query.push(" AND ").push(before).push_bind(search.match_text()).push(after);
                }
                if let Some(region) = &search.region {
                    query.push(" AND region = ").push_bind(region.clone());
                }
                if let Some(method) = search.method {
                    query.push(" AND method = ").push_bind(method.as_str());
                }
                if let Some(status) = search.status {
                    // The effective status: the stored lifecycle, else the window's (a
                    // lifecycle is never `scheduled` or `open`, so those need the window).
                    query
                        .push(" AND (lifecycle = ")
                        .push_bind(status.as_str())
                        .push(" OR (lifecycle IS NULL AND ");
                    match status.window_at(search.now) {
                        Some(window) => {
                            query
                                .push("opens_at BETWEEN ")
                                .push_bind(*window.opens_at.start())
                                .push(" AND ")
                                .push_bind(*window.opens_at.end())
                                .push(" AND closes_at BETWEEN ")
                                .push_bind(*window.closes_at.start())
                                .push(" AND ")
                                .push_bind(*window.closes_at.end());
                        }
                        None => {
                            query.push("1 = 0");
                        }
                    }
                    query.push("))");
                }
                if let Some(from) = search.from {
                    query.push(" AND closes_at > ").push_bind(from);
                }
                if let Some(to) = search.to {
                    query.push(" AND opens_at < ").push_bind(to);
                }
            }

            fn close_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<DecisionCloseRow> {
                let kind: String = row.try_get("kind")?;
                Ok(DecisionCloseRow {
                    decision_id: decision_id(&row.try_get::<String, _>("decision_id")?)?,
                    position: stored_position(row.try_get("log_partition")?, row.try_get("log_offset")?)?,
                    kind: CloseKind::ALL
                        .into_iter()
                        .find(|known| known.as_str() == kind)
                        .ok_or_else(|| ServingError::Storage(format!("unknown close kind {kind:?}")))?,
                    closed_at: row.try_get("closed_at")?,
                    closed_by: row.try_get::<Option<String>, _>("closed_by")?.as_deref().map(parse_uuid).transpose()?,
                })
            }

            fn result_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<DecisionResultRow> {
                Ok(DecisionResultRow {
                    decision_id: decision_id(&row.try_get::<String, _>("decision_id")?)?,
                    statement: row.try_get("statement")?,
                    result: row.try_get("result")?,
                    tree_size: row.try_get("tree_size")?,
                    root: row.try_get("root")?,
                    position: stored_position(row.try_get("log_partition")?, row.try_get("log_offset")?)?,
                    finalized_at: row.try_get("finalized_at")?,
                })
            }

            fn history_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<HistoryRow> {
                Ok(HistoryRow {
                    seq: row.try_get("seq")?,
                    decision_id: decision_id(&row.try_get::<String, _>("decision_id")?)?,
                    status: row.try_get("status")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    detail: row.try_get("detail")?,
                })
            }

            async fn insert_history(tx: &mut sqlx::Transaction<'_, $db>, decision: &str, status: &str, at: i64, actor: &str, detail: &str) -> StoreResult<()> {
                sqlx::query("INSERT INTO decision_history (decision_id, status, at, actor, detail) VALUES ($1, $2, $3, $4, $5)")
                    .bind(decision)
                    .bind(status)
                    .bind(at)
                    .bind(actor)
                    .bind(detail)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            fn batch_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<AnchorBatchRow> {
                Ok(AnchorBatchRow {
                    batch_id: row.try_get("batch_id")?,
                    root: row.try_get("root")?,
                    entry_count: row.try_get("entry_count")?,
                    target: row.try_get("target")?,
                    chain_batch_id: row.try_get("chain_batch_id")?,
                    tx_hash: row.try_get("tx_hash")?,
                    block_number: row.try_get("block_number")?,
                    created_at: row.try_get("created_at")?,
                    confirmed_at: row.try_get("confirmed_at")?,
                })
            }
        }

        #[async_trait]
        impl MetadataStore for $name {
            async fn migrate(&self) -> StoreResult<Vec<String>> {
                // One transaction under a lock: processes starting together (a cluster's
                // workers and replicas) must not race to create the same tables.
                let mut tx = self.pool.begin().await?;
                sqlx::query($migration_lock).execute(&mut *tx).await?;
                sqlx::query("CREATE TABLE IF NOT EXISTS canopy_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                    .execute(&mut *tx)
                    .await?;
                let mut applied = Vec::new();
                for (name, sql) in $migrations {
                    let done = sqlx::query("SELECT name FROM canopy_migrations WHERE name = $1").bind(*name).fetch_optional(&mut *tx).await?;
                    if done.is_some() {
                        continue;
                    }
                    // Whole, not split at semicolons: trigger bodies hold statements of their own.
                    sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO canopy_migrations (name, applied_at) VALUES ($1, $2)")
                        .bind(*name)
                        .bind(canopy_schemas::clock::unix_now() as i64)
                        .execute(&mut *tx)
                        .await?;
                    applied.push(name.to_string());
                }
                let sealed = self.seal_clear_secrets(&mut tx).await?;
                tx.commit().await?;
                if sealed > 0 {
                    tracing::info!(sealed, "TOTP secrets stored in the clear are now sealed under the secrets key");
                }
                Ok(applied)
            }

            async fn create_user(&self, user: &UserRecord, now: i64) -> StoreResult<()> {
                let inserted = sqlx::query(
                    "INSERT INTO users (id, username, password_hash, role, weight, totp_secret_sealed, totp_enabled, totp_last_step, created_at, username_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)",
                )
                .bind(user.id.to_string())
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(i64::from(user.weight))
                .bind(self.sealed_secret(user.id, user.totp_secret.as_deref())?)
                .bind(i64::from(user.totp_enabled))
                .bind(now)
                .bind(crate::auth::username_key(&user.username))
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(_) => Ok(()),
                    Err(error) if is_unique_violation(&error) => Err(ServingError::Conflict(format!("the username {:?} is taken", user.username))),
                    Err(error) => Err(error.into()),
                }
            }

            async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>> {
                // The exact name first: an account whose name collided with an older one's
                // when names became case-insensitive (migration 0009) keeps signing in by it.
                let row = sqlx::query("SELECT * FROM users WHERE username = $1 OR username_key = $2 ORDER BY CASE WHEN username = $1 THEN 0 ELSE 1 END LIMIT 1")
                    .bind(username)
                    .bind(crate::auth::username_key(username))
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(|row| self.user_from_row(row)).transpose()
            }

            async fn set_password_hash(&self, user: Uuid, password_hash: &str) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2").bind(password_hash).bind(user.to_string()).execute(&mut *tx).await?;
                sqlx::query("UPDATE refresh_families SET revoked = 1 WHERE user_id = $1").bind(user.to_string()).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn replace_recovery_codes(&self, user: Uuid, code_hashes: &[String]) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1").bind(user.to_string()).execute(&mut *tx).await?;
                for hash in code_hashes {
                    sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)").bind(user.to_string()).bind(hash).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn recovery_code_unused(&self, user: Uuid, code_hash: &str) -> StoreResult<bool> {
                let row = sqlx::query("SELECT 1 AS found FROM recovery_codes WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL")
                    .bind(user.to_string())
                    .bind(code_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn spend_recovery_code(&self, user: Uuid, code_hash: &str, now: i64) -> StoreResult<bool> {
                let spent = sqlx::query("UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL")
                    .bind(user.to_string())
                    .bind(code_hash)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(spent.rows_affected() == 1)
            }

            async fn recovery_codes_left(&self, user: Uuid) -> StoreResult<i64> {
                let row = sqlx::query("SELECT COUNT(*) AS left_over FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
                    .bind(user.to_string())
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("left_over")?)
            }

            async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
                let row = sqlx::query("SELECT * FROM users WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
                row.as_ref().map(|row| self.user_from_row(row)).transpose()
            }

            async fn verify_user(&self, user: Uuid, verification: &Verification, now: i64) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await?;
                let updated = sqlx::query("UPDATE users SET role = $1, weight = $2 WHERE id = $3")
                    .bind(verification.role.as_str())
                    .bind(i64::from(verification.weight))
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await?;
                if updated.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query("INSERT INTO expert_verifications (user_id, verified_by, role, field, weight, verified_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(user.to_string())
                    .bind(verification.verified_by.to_string())
                    .bind(verification.role.as_str())
                    .bind(&verification.field)
                    .bind(i64::from(verification.weight))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM stakeholder_regions WHERE user_id = $1").bind(user.to_string()).execute(&mut *tx).await?;
                for region in &verification.regions {
                    sqlx::query("INSERT INTO stakeholder_regions (user_id, region) VALUES ($1, $2)")
                        .bind(user.to_string())
                        .bind(region)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn regions_of(&self, user: Uuid) -> StoreResult<Vec<String>> {
                let rows = sqlx::query("SELECT region FROM stakeholder_regions WHERE user_id = $1 ORDER BY region")
                    .bind(user.to_string())
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| row.try_get("region").map_err(Into::into)).collect()
            }

            async fn latest_verification(&self, user: Uuid) -> StoreResult<Option<VerificationRecord>> {
                let row = sqlx::query("SELECT role, weight, field, verified_by, verified_at FROM expert_verifications WHERE user_id = $1 ORDER BY verified_at DESC, id DESC LIMIT 1")
                    .bind(user.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    let role: String = row.try_get("role")?;
                    Ok(VerificationRecord {
                        role: Role::parse(&role).ok_or_else(|| ServingError::Storage(format!("unknown role {role:?}")))?,
                        weight: u32::try_from(row.try_get::<i64, _>("weight")?).unwrap_or(0),
                        field: row.try_get("field")?,
                        verified_by: parse_uuid(&row.try_get::<String, _>("verified_by")?)?,
                        verified_at: row.try_get("verified_at")?,
                    })
                })
                .transpose()
            }

            async fn set_totp(&self, user: Uuid, secret: Option<&[u8]>, enabled: bool) -> StoreResult<()> {
                sqlx::query("UPDATE users SET totp_secret_sealed = $1, totp_secret = NULL, totp_enabled = $2 WHERE id = $3")
                    .bind(self.sealed_secret(user, secret)?)
                    .bind(i64::from(enabled))
                    .bind(user.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn claim_totp_step(&self, user: Uuid, step: i64) -> StoreResult<bool> {
                let updated = sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
                    .bind(step)
                    .bind(user.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(updated.rows_affected() == 1)
            }

            async fn create_refresh_family(&self, family: Uuid, user: Uuid, now: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO refresh_families (id, user_id, revoked, created_at) VALUES ($1, $2, 0, $3)")
                    .bind(family.to_string())
                    .bind(user.to_string())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn insert_refresh_token(&self, hash: &str, family: Uuid, user: Uuid, expires_at: i64) -> StoreResult<()> {
                sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(hash)
                    .bind(family.to_string())
                    .bind(user.to_string())
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn use_refresh_token(&self, hash: &str, now: i64) -> StoreResult<RefreshUse> {
                let spent = sqlx::query(
                    "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                     AND family_id IN (SELECT id FROM refresh_families WHERE revoked = 0)",
                )
                .bind(hash)
                .bind(now)
                .execute(&self.pool)
                .await?;
                let row = sqlx::query("SELECT family_id, user_id, used_at FROM refresh_tokens WHERE token_hash = $1")
                    .bind(hash)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(RefreshUse::Invalid) };
                let family = parse_uuid(&row.try_get::<String, _>("family_id")?)?;
                let user = parse_uuid(&row.try_get::<String, _>("user_id")?)?;
                if spent.rows_affected() == 1 {
                    return Ok(RefreshUse::Fresh { family, user });
                }
                let used_at: Option<i64> = row.try_get("used_at")?;
                Ok(match used_at {
                    Some(_) => RefreshUse::Reused { family, user },
                    None => RefreshUse::Invalid,
                })
            }

            async fn revoke_refresh_family(&self, family: Uuid) -> StoreResult<()> {
                sqlx::query("UPDATE refresh_families SET revoked = 1 WHERE id = $1").bind(family.to_string()).execute(&self.pool).await?;
                Ok(())
            }

            async fn revoke_refresh_token(&self, hash: &str) -> StoreResult<bool> {
                let updated = sqlx::query(
                    "UPDATE refresh_families SET revoked = 1 WHERE id IN (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
                )
                .bind(hash)
                .execute(&self.pool)
                .await?;
                Ok(updated.rows_affected() > 0)
            }

            async fn put_decision(&self, decision: &Decision, owner: Uuid, now: i64) -> StoreResult<()> {
                let body = serde_json::to_string(decision).map_err(|e| ServingError::Internal(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO decisions (id, owner, body, opens_at, closes_at, created_at, title, description, region, method) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body, opens_at = excluded.opens_at, closes_at = excluded.closes_at, \
                     title = excluded.title, description = excluded.description, region = excluded.region, method = excluded.method",
                )
                .bind(decision.id.to_string())
                .bind(owner.to_string())
                .bind(body)
                .bind(decision.opens_at)
                .bind(decision.closes_at)
                .bind(now)
                .bind(&decision.title)
                .bind(&decision.description)
                .bind(&decision.region)
                .bind(decision.method.as_str())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn search_decisions(&self, search: &DecisionSearch) -> StoreResult<DecisionPage> {
                let mut count = sqlx::QueryBuilder::<$db>::new("SELECT COUNT(*) AS total FROM decisions");
                Self::push_search_filters(&mut count, search);
                let total: i64 = count.build().fetch_one(&self.pool).await?.try_get("total")?;
                let mut page = sqlx::QueryBuilder::<$db>::new("SELECT body, lifecycle FROM decisions");
                Self::push_search_filters(&mut page, search);
                page.push(" ORDER BY created_at DESC, id LIMIT ")
                    .push_bind(search.limit)
                    .push(" OFFSET ")
                    .push_bind(search.offset);
                let rows = page.build().fetch_all(&self.pool).await?;
                let mut decisions = Vec::with_capacity(rows.len());
                let mut statuses = Vec::with_capacity(rows.len());
                for row in &rows {
                    let decision = stored_body(&row.try_get::<String, _>("body")?)?;
                    let lifecycle = stored_lifecycle(row.try_get("lifecycle")?)?;
                    statuses.push(effective_status(&decision, lifecycle, search.now));
                    decisions.push(decision);
                }
                Ok(DecisionPage { decisions, statuses, total })
            }

            async fn stored_decision(&self, decision: DecisionId) -> StoreResult<Option<StoredDecision>> {
                let row = sqlx::query("SELECT body, owner, lifecycle FROM decisions WHERE id = $1")
                    .bind(decision.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(StoredDecision {
                        decision: stored_body(&row.try_get::<String, _>("body")?)?,
                        owner: parse_uuid(&row.try_get::<String, _>("owner")?)?,
                        lifecycle: stored_lifecycle(row.try_get("lifecycle")?)?,
                    })
                })
                .transpose()
            }

            async fn decision_lifecycle(&self, decision: DecisionId) -> StoreResult<Option<DecisionStatus>> {
                let row = sqlx::query("SELECT lifecycle FROM decisions WHERE id = $1")
                    .bind(decision.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(row) => stored_lifecycle(row.try_get("lifecycle")?),
                    None => Ok(None),
                }
            }

            async fn update_decision(&self, decision: &Decision, now: i64) -> StoreResult<()> {
                let body = serde_json::to_string(decision).map_err(|e| ServingError::Internal(e.to_string()))?;
                // The stored opens_at is the one compared: the row as it is before the write.
                let updated = sqlx::query(
                    "UPDATE decisions SET body = $2, opens_at = $3, closes_at = $4, title = $5, description = $6, region = $7, method = $8 \
                     WHERE id = $1 AND lifecycle IS NULL AND opens_at > $9",
                )
                .bind(decision.id.to_string())
                .bind(body)
                .bind(decision.opens_at)
                .bind(decision.closes_at)
                .bind(&decision.title)
                .bind(&decision.description)
                .bind(&decision.region)
                .bind(decision.method.as_str())
                .bind(now)
                .execute(&self.pool)
                .await?;
                if updated.rows_affected() == 1 {
                    return Ok(());
                }
                match self.stored_decision(decision.id).await? {
                    Some(_) => Err(ServingError::DecisionNotEditable { decision: decision.id }),
                    None => Err(ServingError::NotFound { what: "decision" }),
                }
            }

            async fn record_close(&self, close: &DecisionCloseRow) -> StoreResult<bool> {
                let id = close.decision_id.to_string();
                let mut tx = self.pool.begin_with($begin_write).await?;
                // The row of a decision's close is locked by the first closer's write until it
                // commits; a racing one then compares against what that one stored.
                let stored = sqlx::query(
                    "INSERT INTO decision_closes (decision_id, log_partition, log_offset, kind, closed_at, closed_by) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (decision_id) DO UPDATE SET log_partition = excluded.log_partition, log_offset = excluded.log_offset, \
                     kind = excluded.kind, closed_at = excluded.closed_at, closed_by = excluded.closed_by \
                     WHERE decision_closes.log_offset > excluded.log_offset",
                )
                .bind(&id)
                .bind(i64::from(close.position.partition))
                .bind(offset_column(close.position.offset)?)
                .bind(close.kind.as_str())
                .bind(close.closed_at)
                .bind(close.closed_by.map(|by| by.to_string()))
                .execute(&mut *tx)
                .await?;
                if stored.rows_affected() == 0 {
                    tx.commit().await?;
                    return Ok(false);
                }
                let status = close.status().as_str();
                let changed = sqlx::query("UPDATE decisions SET lifecycle = $2 WHERE id = $1 AND (lifecycle IS NULL OR (lifecycle <> 'final' AND lifecycle <> $2))")
                    .bind(&id)
                    .bind(status)
                    .execute(&mut *tx)
                    .await?;
                if changed.rows_affected() == 1 {
                    let actor = close.closed_by.map_or_else(|| SCHEDULE_ACTOR.to_string(), |by| by.to_string());
                    let detail = serde_json::json!({
                        "kind": close.kind,
                        "partition": close.position.partition,
                        "offset": close.position.offset,
                    });
                    Self::insert_history(&mut tx, &id, status, close.closed_at, &actor, &detail.to_string()).await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn closes(&self) -> StoreResult<Vec<DecisionCloseRow>> {
                let rows = sqlx::query("SELECT * FROM decision_closes ORDER BY decision_id").fetch_all(&self.pool).await?;
                rows.iter().map(Self::close_from_row).collect()
            }

            async fn decision_close(&self, decision: DecisionId) -> StoreResult<Option<DecisionCloseRow>> {
                let row = sqlx::query("SELECT * FROM decision_closes WHERE decision_id = $1")
                    .bind(decision.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::close_from_row).transpose()
            }

            async fn unfinalized_closes(&self) -> StoreResult<Vec<DecisionCloseRow>> {
                let rows = sqlx::query(
                    "SELECT c.* FROM decision_closes c WHERE c.kind <> 'cancel' \
                     AND NOT EXISTS (SELECT 1 FROM decision_results r WHERE r.decision_id = c.decision_id) ORDER BY c.decision_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::close_from_row).collect()
            }

            async fn store_result(&self, result: &DecisionResultRow) -> StoreResult<bool> {
                let id = result.decision_id.to_string();
                let mut tx = self.pool.begin_with($begin_write).await?;
                let stored = sqlx::query(
                    "INSERT INTO decision_results (decision_id, statement, result, tree_size, root, log_partition, log_offset, finalized_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (decision_id) DO NOTHING",
                )
                .bind(&id)
                .bind(&result.statement)
                .bind(&result.result)
                .bind(result.tree_size)
                .bind(&result.root)
                .bind(i64::from(result.position.partition))
                .bind(offset_column(result.position.offset)?)
                .bind(result.finalized_at)
                .execute(&mut *tx)
                .await?;
                if stored.rows_affected() == 0 {
                    tx.commit().await?;
                    return Ok(false);
                }
                sqlx::query("UPDATE decisions SET lifecycle = 'final' WHERE id = $1").bind(&id).execute(&mut *tx).await?;
                let detail = serde_json::json!({
                    "tree_size": result.tree_size,
                    "root": result.root,
                    "partition": result.position.partition,
                    "offset": result.position.offset,
                });
                Self::insert_history(&mut tx, &id, DecisionStatus::Final.as_str(), result.finalized_at, FINALIZER_ACTOR, &detail.to_string()).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn decision_result(&self, decision: DecisionId) -> StoreResult<Option<DecisionResultRow>> {
                let row = sqlx::query("SELECT * FROM decision_results WHERE decision_id = $1")
                    .bind(decision.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::result_from_row).transpose()
            }

            async fn append_history(&self, decision: DecisionId, status: &str, at: i64, actor: &str, detail: &str) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                Self::insert_history(&mut tx, &decision.to_string(), status, at, actor, detail).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn history_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<HistoryRow>> {
                let rows = sqlx::query("SELECT * FROM decision_history WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::history_from_row).collect()
            }

            async fn decisions(&self) -> StoreResult<Vec<Decision>> {
                let rows = sqlx::query("SELECT body FROM decisions ORDER BY created_at, id").fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        let body: String = row.try_get("body")?;
                        serde_json::from_str(&body).map_err(|e| ServingError::Storage(format!("a stored decision does not parse: {e}")))
                    })
                    .collect()
            }

            async fn put_sensor(&self, sensor: &Sensor, now: i64) -> StoreResult<()> {
                let body = serde_json::to_string(sensor).map_err(|e| ServingError::Internal(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO sensors (id, region, body, registered_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (id) DO UPDATE SET region = excluded.region, body = excluded.body",
                )
                .bind(&sensor.sensor_id)
                .bind(&sensor.region)
                .bind(body)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn put_impact_statement(&self, decision: DecisionId, body: &str, now: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO impact_statements (decision_id, body, submitted_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (decision_id) DO UPDATE SET body = excluded.body, submitted_at = excluded.submitted_at",
                )
                .bind(decision.to_string())
                .bind(body)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn impact_statement(&self, decision: DecisionId) -> StoreResult<Option<String>> {
                let row = sqlx::query("SELECT body FROM impact_statements WHERE decision_id = $1")
                    .bind(decision.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(row) => Some(row.try_get("body")?),
                    None => None,
                })
            }

            async fn sensors(&self) -> StoreResult<Vec<Sensor>> {
                let rows = sqlx::query("SELECT body FROM sensors ORDER BY id").fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        let body: String = row.try_get("body")?;
                        serde_json::from_str(&body).map_err(|e| ServingError::Storage(format!("a stored sensor does not parse: {e}")))
                    })
                    .collect()
            }

            async fn append_audit(&self, actor: &str, action: &str, detail: &str, now: i64) -> StoreResult<AuditRecord> {
                let _one_at_a_time = self.audit_lock.lock().await;
                for _attempt in 0..5 {
                    let last = sqlx::query("SELECT seq, hash, hmac FROM audit_trail ORDER BY seq DESC LIMIT 1").fetch_optional(&self.pool).await?;
                    let (mut prev_seq, mut prev_hash, prev_keyed) = match &last {
                        Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?, row.try_get::<Option<String>, _>("hmac")?.is_some()),
                        None => (0, AUDIT_GENESIS.to_string(), false),
                    };
                    if let Some(key) = &self.keys.audit
                        && !prev_keyed
                    {
                        // From here on every entry is keyed; the check reports those before as unkeyed.
                        let began = serde_json::json!({ "key_id": key.id(), "unkeyed_entries": prev_seq }).to_string();
                        match self.insert_audit(prev_seq, &prev_hash, now, "system", AUDIT_KEYING_BEGAN, &began).await? {
                            Some(marker) => (prev_seq, prev_hash) = (marker.seq, marker.hash),
                            None => continue,
                        }
                    }
                    if let Some(entry) = self.insert_audit(prev_seq, &prev_hash, now, actor, action, detail).await? {
                        return Ok(entry);
                    }
                }
                Err(ServingError::Storage("could not append to the audit trail: too much contention".into()))
            }

            async fn audit_page(&self, after: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
                let rows = sqlx::query("SELECT * FROM audit_trail WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::audit_from_row).collect()
            }

            async fn audit_head(&self) -> StoreResult<Option<AuditRecord>> {
                let row = sqlx::query("SELECT * FROM audit_trail ORDER BY seq DESC LIMIT 1").fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::audit_from_row).transpose()
            }

            fn audit_key(&self) -> Option<&AuditKey> {
                self.keys.audit.as_ref()
            }

            async fn audit_anchors(&self, after_batch: i64, limit: i64) -> StoreResult<Vec<AuditAnchorRow>> {
                let rows = sqlx::query("SELECT * FROM audit_anchors WHERE batch_id > $1 ORDER BY batch_id LIMIT $2")
                    .bind(after_batch)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::audit_anchor_from_row).collect()
            }

            async fn latest_audit_anchor(&self) -> StoreResult<Option<AuditAnchorRow>> {
                let row = sqlx::query("SELECT * FROM audit_anchors ORDER BY seq DESC, batch_id DESC LIMIT 1").fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::audit_anchor_from_row).transpose()
            }

            async fn batch_audit_anchor(&self, batch_id: i64) -> StoreResult<Option<AuditAnchorRow>> {
                let row = sqlx::query("SELECT * FROM audit_anchors WHERE batch_id = $1").bind(batch_id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::audit_anchor_from_row).transpose()
            }

            async fn create_roll(&self, roll: Uuid, name: &str, created_by: Uuid, entries: &[NewRollEntry], now: i64) -> StoreResult<()> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                sqlx::query("INSERT INTO rolls (id, name, created_by, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(roll.to_string())
                    .bind(name)
                    .bind(created_by.to_string())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // Many rows a statement: an import of 100 000 entries is 200 round trips.
                for chunk in entries.chunks(500) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new("INSERT INTO roll_entries (id, roll_id, identifier, region, code_hash) ");
                    insert.push_values(chunk, |mut row, entry| {
                        row.push_bind(entry.id.to_string())
                            .push_bind(roll.to_string())
                            .push_bind(entry.identifier.clone())
                            .push_bind(entry.region.clone())
                            .push_bind(entry.code_hash.clone());
                    });
                    match insert.build().execute(&mut *tx).await {
                        Ok(_) => {}
                        Err(error) if is_unique_violation(&error) => {
                            return Err(ServingError::Conflict("an identifier is in the roll twice".into()));
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn roll_summary(&self, roll: Uuid) -> StoreResult<Option<RollSummary>> {
                let Some(head) = sqlx::query("SELECT name FROM rolls WHERE id = $1").bind(roll.to_string()).fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                let counts = sqlx::query(
                    "SELECT COUNT(*) AS entries, COUNT(claimed_by) AS claimed, COUNT(spent_at) AS spent FROM roll_entries WHERE roll_id = $1",
                )
                .bind(roll.to_string())
                .fetch_one(&self.pool)
                .await?;
                Ok(Some(RollSummary {
                    name: head.try_get("name")?,
                    entries: counts.try_get("entries")?,
                    claimed: counts.try_get("claimed")?,
                    spent: counts.try_get("spent")?,
                }))
            }

            async fn claim_roll_entry(&self, code_hash: &str, user: Uuid, now: i64) -> StoreResult<ClaimOutcome> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let waiting = sqlx::query("SELECT id, roll_id, region FROM roll_entries WHERE code_hash = $1 AND claimed_by IS NULL AND spent_at IS NULL")
                    .bind(code_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(waiting) = waiting else { return Ok(ClaimOutcome::UnknownCode) };
                let entry = parse_uuid(&waiting.try_get::<String, _>("id")?)?;
                let roll = parse_uuid(&waiting.try_get::<String, _>("roll_id")?)?;
                let region: String = waiting.try_get("region")?;
                let holds = sqlx::query("SELECT id FROM roll_entries WHERE roll_id = $1 AND claimed_by = $2")
                    .bind(roll.to_string())
                    .bind(user.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                if holds.is_some() {
                    return Ok(ClaimOutcome::AlreadyHolds { roll });
                }
                // The code works once: it is cleared with the claim.
                let claimed = sqlx::query(
                    "UPDATE roll_entries SET claimed_by = $1, claimed_at = $2, code_hash = NULL \
                     WHERE id = $3 AND code_hash = $4 AND claimed_by IS NULL AND spent_at IS NULL",
                )
                .bind(user.to_string())
                .bind(now)
                .bind(entry.to_string())
                .bind(code_hash)
                .execute(&mut *tx)
                .await;
                match claimed {
                    Ok(done) if done.rows_affected() == 1 => {}
                    Ok(_) => return Ok(ClaimOutcome::UnknownCode),
                    Err(error) if is_unique_violation(&error) => return Ok(ClaimOutcome::AlreadyHolds { roll }),
                    Err(error) => return Err(error.into()),
                }
                tx.commit().await?;
                Ok(ClaimOutcome::Claimed { roll, entry, region })
            }

            async fn reissue_roll_entry(&self, roll: Uuid, identifier: &str, code_hash: &str) -> StoreResult<Reissue> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let row = sqlx::query("SELECT id, claimed_by, spent_at FROM roll_entries WHERE roll_id = $1 AND identifier = $2")
                    .bind(roll.to_string())
                    .bind(identifier)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else { return Ok(Reissue::NoSuchEntry) };
                if row.try_get::<Option<i64>, _>("spent_at")?.is_some() {
                    return Ok(Reissue::Spent);
                }
                let entry = parse_uuid(&row.try_get::<String, _>("id")?)?;
                let former_claimant = row.try_get::<Option<String>, _>("claimed_by")?.map(|id| parse_uuid(&id)).transpose()?;
                sqlx::query("UPDATE roll_entries SET code_hash = $1, claimed_by = NULL, claimed_at = NULL WHERE id = $2 AND spent_at IS NULL")
                    .bind(code_hash)
                    .bind(entry.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Reissue::Reissued { entry, former_claimant })
            }

            async fn roll_claim(&self, roll: Uuid, user: Uuid) -> StoreResult<Option<RollClaim>> {
                let row = sqlx::query("SELECT id, region FROM roll_entries WHERE roll_id = $1 AND claimed_by = $2 AND spent_at IS NULL")
                    .bind(roll.to_string())
                    .bind(user.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| {
                    Ok(RollClaim {
                        entry: parse_uuid(&row.try_get::<String, _>("id")?)?,
                        region: row.try_get("region")?,
                    })
                })
                .transpose()
            }

            async fn voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<[u8; 32]> {
                let existing = sqlx::query("SELECT salt FROM voter_salts WHERE voter_id = $1").bind(voter.to_string()).fetch_optional(&self.pool).await?;
                if let Some(row) = &existing
                    && let Some(salt) = row.try_get::<Option<Vec<u8>>, _>("salt")?
                {
                    return <[u8; 32]>::try_from(salt).map_err(|_| ServingError::Storage("a stored salt is not 32 bytes".into()));
                }
                let fresh: [u8; 32] = rand::random();
                // Only for a living account or an entry still in play: an erased voter's
                // leftover token must not bring a salt with their id back.
                sqlx::query(
                    "INSERT INTO voter_salts (voter_id, salt, created_at) SELECT $1, $2, $3 \
                     WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) \
                        OR EXISTS (SELECT 1 FROM roll_entries WHERE id = $1 AND spent_at IS NULL) \
                     ON CONFLICT (voter_id) DO UPDATE SET salt = excluded.salt, created_at = excluded.created_at, erased_at = NULL \
                     WHERE voter_salts.salt IS NULL",
                )
                .bind(voter.to_string())
                .bind(fresh.to_vec())
                .bind(now)
                .execute(&self.pool)
                .await?;
                // Another request may have created it first: read back what won.
                let row = sqlx::query("SELECT salt FROM voter_salts WHERE voter_id = $1").bind(voter.to_string()).fetch_optional(&self.pool).await?;
                let salt: Option<Vec<u8>> = row.map(|row| row.try_get("salt")).transpose()?.flatten();
                salt.map(|salt| <[u8; 32]>::try_from(salt).map_err(|_| ServingError::Storage("a stored salt is not 32 bytes".into())))
                    .unwrap_or(Err(ServingError::AccountErased))
            }

            async fn existing_voter_salt(&self, voter: Uuid) -> StoreResult<Option<[u8; 32]>> {
                let row = sqlx::query("SELECT salt FROM voter_salts WHERE voter_id = $1").bind(voter.to_string()).fetch_optional(&self.pool).await?;
                let salt: Option<Vec<u8>> = row.map(|row| row.try_get("salt")).transpose()?.flatten();
                salt.map(|salt| <[u8; 32]>::try_from(salt).map_err(|_| ServingError::Storage("a stored salt is not 32 bytes".into())))
                    .transpose()
            }

            async fn voter_secrets_after(&self, keys: bool, after: Option<Uuid>, limit: u32) -> StoreResult<Vec<(Uuid, [u8; 32])>> {
                let query = if keys {
                    "SELECT voter_id, seal_key AS secret FROM voter_keys WHERE voter_id > $1 ORDER BY voter_id LIMIT $2"
                } else {
                    "SELECT voter_id, salt AS secret FROM voter_salts WHERE salt IS NOT NULL AND voter_id > $1 ORDER BY voter_id LIMIT $2"
                };
                let after = after.map(|id| id.to_string()).unwrap_or_default();
                let rows = sqlx::query(query).bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        let voter = parse_uuid(&row.try_get::<String, _>("voter_id")?)?;
                        let secret: Vec<u8> = row.try_get("secret")?;
                        let secret = <[u8; 32]>::try_from(secret).map_err(|_| ServingError::Storage("a stored voter secret is not 32 bytes".into()))?;
                        Ok((voter, secret))
                    })
                    .collect()
            }

            async fn voter_key(&self, user: Uuid, now: i64) -> StoreResult<Option<[u8; 32]>> {
                let select = "SELECT seal_key FROM voter_keys WHERE voter_id = $1";
                let read = |row: Option<<$db as sqlx::Database>::Row>| -> StoreResult<Option<[u8; 32]>> {
                    row.map(|row| {
                        let key: Vec<u8> = row.try_get("seal_key")?;
                        <[u8; 32]>::try_from(key).map_err(|_| ServingError::Storage("a stored voter key is not 32 bytes".into()))
                    })
                    .transpose()
                };
                if let Some(key) = read(sqlx::query(select).bind(user.to_string()).fetch_optional(&self.pool).await?)? {
                    return Ok(Some(key));
                }
                let fresh: [u8; 32] = rand::random();
                sqlx::query(
                    "INSERT INTO voter_keys (voter_id, seal_key, created_at) SELECT $1, $2, $3 \
                     WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) ON CONFLICT (voter_id) DO NOTHING",
                )
                .bind(user.to_string())
                .bind(fresh.to_vec())
                .bind(now)
                .execute(&self.pool)
                .await?;
                // Another request may have created it first: read back what won.
                read(sqlx::query(select).bind(user.to_string()).fetch_optional(&self.pool).await?)
            }

            async fn user_pseudonym(&self, user: Uuid) -> StoreResult<String> {
                let select = "SELECT pseudonym FROM user_pseudonyms WHERE user_id = $1";
                if let Some(row) = sqlx::query(select).bind(user.to_string()).fetch_optional(&self.pool).await? {
                    return Ok(row.try_get("pseudonym")?);
                }
                let fresh = format!("p-{}", hex::encode(rand::random::<[u8; 8]>()));
                // Only a living account gets one: storing a pseudonym for an erased id would
                // write the id back.
                sqlx::query(
                    "INSERT INTO user_pseudonyms (user_id, pseudonym) SELECT $1, $2 \
                     WHERE EXISTS (SELECT 1 FROM users WHERE id = $1) ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(user.to_string())
                .bind(&fresh)
                .execute(&self.pool)
                .await?;
                let row = sqlx::query(select).bind(user.to_string()).fetch_optional(&self.pool).await?;
                Ok(match row {
                    Some(row) => row.try_get("pseudonym")?,
                    None => UNKNOWN_USER_PSEUDONYM.to_string(),
                })
            }

            async fn erase_voter(&self, user: Uuid, now: i64) -> StoreResult<Option<String>> {
                let id = user.to_string();
                let pseudonym = self.user_pseudonym(user).await?;
                let mut tx = self.pool.begin_with($begin_write).await?;
                if sqlx::query("SELECT id FROM users WHERE id = $1").bind(&id).fetch_optional(&mut *tx).await?.is_none() {
                    sqlx::query("DELETE FROM user_pseudonyms WHERE user_id = $1").bind(&id).execute(&mut *tx).await?;
                    tx.commit().await?;
                    return Ok(None);
                }
                sqlx::query("DELETE FROM voter_salts WHERE voter_id IN (SELECT id FROM roll_entries WHERE claimed_by = $1)")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE roll_entries SET claimed_by = NULL, claimed_at = NULL, code_hash = NULL, spent_at = $2 WHERE claimed_by = $1")
                    .bind(&id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                for statement in [
                    "DELETE FROM voter_salts WHERE voter_id = $1",
                    "DELETE FROM voter_keys WHERE voter_id = $1",
                    "DELETE FROM user_pseudonyms WHERE user_id = $1",
                    "DELETE FROM stakeholder_regions WHERE user_id = $1",
                    "DELETE FROM expert_verifications WHERE user_id = $1",
                    "DELETE FROM recovery_codes WHERE user_id = $1",
                    "DELETE FROM refresh_tokens WHERE user_id = $1",
                    "DELETE FROM refresh_families WHERE user_id = $1",
                    "DELETE FROM users WHERE id = $1",
                ] {
                    let done = sqlx::query(statement).bind(&id).execute(&mut *tx).await;
                    if let Err(sqlx::Error::Database(db)) = &done
                        && db.is_foreign_key_violation()
                    {
                        return Err(ServingError::Conflict(
                            "the account created decisions or verified others: only voters are erased".into(),
                        ));
                    }
                    done?;
                }
                tx.commit().await?;
                sqlx::raw_sql($after_erase).execute(&self.pool).await?;
                Ok(Some(pseudonym))
            }

            async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> StoreResult<bool> {
                let inserted = sqlx::query(
                    "INSERT INTO checkpoints (decision_id, tree_size, root, note, log_partition, log_offset, cut_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS \
                     (SELECT 1 FROM checkpoints WHERE decision_id = $1 AND tree_size >= $2)",
                )
                .bind(checkpoint.decision_id.to_string())
                .bind(checkpoint.tree_size)
                .bind(&checkpoint.root)
                .bind(&checkpoint.note)
                .bind(checkpoint.log_partition)
                .bind(checkpoint.log_offset)
                .bind(checkpoint.cut_at)
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(done) => Ok(done.rows_affected() > 0),
                    Err(error) if is_unique_violation(&error) => Ok(false),
                    Err(error) => Err(error.into()),
                }
            }

            async fn checkpoints(&self, decision: DecisionId) -> StoreResult<Vec<CheckpointRow>> {
                let rows = sqlx::query("SELECT * FROM checkpoints WHERE decision_id = $1 ORDER BY tree_size").bind(decision.to_string()).fetch_all(&self.pool).await?;
                rows.iter().map(Self::checkpoint_from_row).collect()
            }

            async fn latest_checkpoints(&self) -> StoreResult<Vec<CheckpointRow>> {
                let rows = sqlx::query(
                    "SELECT c.* FROM checkpoints c JOIN (SELECT decision_id, MAX(tree_size) AS tree_size FROM checkpoints GROUP BY decision_id) m \
                     ON c.decision_id = m.decision_id AND c.tree_size = m.tree_size ORDER BY c.decision_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::checkpoint_from_row).collect()
            }

            async fn unanchored_checkpoints(&self, limit: i64) -> StoreResult<Vec<CheckpointRow>> {
                let rows = sqlx::query("SELECT * FROM checkpoints WHERE batch_id IS NULL ORDER BY decision_id, tree_size LIMIT $1").bind(limit).fetch_all(&self.pool).await?;
                rows.iter().map(Self::checkpoint_from_row).collect()
            }

            async fn create_anchor_batch(&self, batch: &AnchorBatchRow, entries: &[CheckpointRow], audit_head: Option<&AuditAnchorRow>) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("INSERT INTO anchor_batches (batch_id, root, entry_count, target, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(batch.batch_id)
                    .bind(&batch.root)
                    .bind(batch.entry_count)
                    .bind(&batch.target)
                    .bind(batch.created_at)
                    .execute(&mut *tx)
                    .await?;
                for (index, entry) in (0i64..).zip(entries) {
                    let updated = sqlx::query("UPDATE checkpoints SET batch_id = $1, entry_index = $2 WHERE decision_id = $3 AND tree_size = $4 AND batch_id IS NULL")
                        .bind(batch.batch_id)
                        .bind(index)
                        .bind(entry.decision_id.to_string())
                        .bind(entry.tree_size)
                        .execute(&mut *tx)
                        .await?;
                    if updated.rows_affected() != 1 {
                        return Err(ServingError::Conflict("a checkpoint of the batch was anchored by someone else".into()));
                    }
                }
                if let Some(head) = audit_head {
                    sqlx::query("INSERT INTO audit_anchors (batch_id, entry_index, seq, hash) VALUES ($1, $2, $3, $4)")
                        .bind(batch.batch_id)
                        .bind(head.entry_index)
                        .bind(head.seq)
                        .bind(&head.hash)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn confirm_anchor_batch(&self, batch: &AnchorBatchRow) -> StoreResult<()> {
                sqlx::query("UPDATE anchor_batches SET chain_batch_id = $2, tx_hash = $3, block_number = $4, confirmed_at = $5 WHERE batch_id = $1")
                    .bind(batch.batch_id)
                    .bind(batch.chain_batch_id)
                    .bind(&batch.tx_hash)
                    .bind(batch.block_number)
                    .bind(batch.confirmed_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn pending_anchor_batches(&self) -> StoreResult<Vec<AnchorBatchRow>> {
                let rows = sqlx::query("SELECT * FROM anchor_batches WHERE confirmed_at IS NULL ORDER BY batch_id").fetch_all(&self.pool).await?;
                rows.iter().map(Self::batch_from_row).collect()
            }

            async fn anchor_batch(&self, batch_id: i64) -> StoreResult<Option<AnchorBatchRow>> {
                let row = sqlx::query("SELECT * FROM anchor_batches WHERE batch_id = $1").bind(batch_id).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::batch_from_row).transpose()
            }

            async fn batch_entries(&self, batch_id: i64) -> StoreResult<Vec<CheckpointRow>> {
                let rows = sqlx::query("SELECT * FROM checkpoints WHERE batch_id = $1 ORDER BY entry_index").bind(batch_id).fetch_all(&self.pool).await?;
                rows.iter().map(Self::checkpoint_from_row).collect()
            }

            async fn next_anchor_batch_id(&self) -> StoreResult<i64> {
                let row = sqlx::query("SELECT COALESCE(MAX(batch_id), -1) + 1 AS next FROM anchor_batches").fetch_one(&self.pool).await?;
                Ok(row.try_get::<i64, _>("next")?)
            }

            async fn write_engine_chunk(&self, chunk: &StateChunk, now: i64) -> StoreResult<()> {
                let mut tx = self.pool.begin().await?;
                for (key, bytes, ends) in chunk.parts() {
                    let ends = serde_json::to_string(ends).map_err(|e| ServingError::Internal(e.to_string()))?;
                    sqlx::query("INSERT INTO engine_checkpoints (seq, worker, workers, kind, part, ends, data, written_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                        .bind(key.seq as i64)
                        .bind(i64::from(key.worker))
                        .bind(i64::from(key.workers))
                        .bind(key.kind.as_str())
                        .bind(i64::from(key.part))
                        .bind(ends)
                        .bind(bytes)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn compact_engine_checkpoints(&self) -> StoreResult<u64> {
                let mut tx = self.pool.begin().await?;
                let plan = Self::engine_checkpoint_plan(&mut tx).await?;
                let Some(full) = plan.full else {
                    return Ok(0);
                };
                // Everything below a complete full checkpoint is in its bases: one statement,
                // so a crash leaves either every older part or none.
                let deleted = sqlx::query("DELETE FROM engine_checkpoints WHERE seq < $1")
                    .bind(full as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(deleted.rows_affected())
            }

            async fn load_engine_snapshot(&self) -> StoreResult<Option<EngineSnapshot>> {
                let mut tx = self.pool.begin().await?;
                let plan = Self::engine_checkpoint_plan(&mut tx).await?;
                // Parts of a checkpoint the last run did not finish go, so a new run can reuse
                // its number; so do those the latest full one supersedes.
                sqlx::query("DELETE FROM engine_checkpoints WHERE seq > $1 OR seq < $2")
                    .bind(plan.complete.map_or(-1, |seq| seq as i64))
                    .bind(plan.full.map_or(0, |seq| seq as i64))
                    .execute(&mut *tx)
                    .await?;
                let Some(complete) = plan.complete else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let rows = sqlx::query("SELECT seq, worker, workers, kind, part, ends, data FROM engine_checkpoints WHERE (kind = 'base' AND seq = $1) OR (kind = 'delta' AND seq >= $2 AND seq <= $3) ORDER BY seq, worker, kind, part")
                    .bind(plan.full.map_or(-1, |seq| seq as i64))
                    .bind(plan.full.map_or(0, |seq| seq as i64))
                    .bind(complete as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let mut parts = Vec::with_capacity(rows.len());
                for row in &rows {
                    let ends: Vec<(u32, u64)> = serde_json::from_str(&row.try_get::<String, _>("ends")?)
                        .map_err(|e| ServingError::Storage(format!("engine checkpoint ends do not parse: {e}")))?;
                    parts.push((Self::engine_part_key(row)?, row.try_get::<Vec<u8>, _>("data")?, ends));
                }
                Ok(EngineSnapshot::from_parts(
                    &plan,
                    parts.iter_mut().map(|(key, data, ends)| (*key, std::mem::take(data), ends.as_slice())),
                ))
            }

            async fn engine_checkpoint_parts(&self) -> StoreResult<i64> {
                let row = sqlx::query("SELECT COUNT(*) AS parts FROM engine_checkpoints").fetch_one(&self.pool).await?;
                Ok(row.try_get::<i64, _>("parts")?)
            }

            // --- SQL access tokens ---

            async fn sql_token_salt(&self, user: Uuid, fresh: &[u8]) -> StoreResult<Vec<u8>> {
                let id = user.to_string();
                sqlx::query("INSERT INTO sql_token_salts (user_id, salt) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING")
                    .bind(&id)
                    .bind(fresh)
                    .execute(&self.pool)
                    .await?;
                let row = sqlx::query("SELECT salt FROM sql_token_salts WHERE user_id = $1").bind(&id).fetch_one(&self.pool).await?;
                Ok(row.try_get("salt")?)
            }

            async fn create_sql_token(&self, token: &SqlTokenRecord) -> StoreResult<()> {
                sqlx::query("INSERT INTO sql_tokens (id, user_id, name, iterations, stored_key, server_key, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(token.id.to_string())
                    .bind(token.user_id.to_string())
                    .bind(&token.name)
                    .bind(i64::from(token.iterations))
                    .bind(&token.stored_key)
                    .bind(&token.server_key)
                    .bind(token.created_at)
                    .bind(token.expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn sql_tokens(&self, user: Uuid, now: i64) -> StoreResult<Vec<SqlTokenRecord>> {
                let id = user.to_string();
                sqlx::query("DELETE FROM sql_tokens WHERE user_id = $1 AND expires_at <= $2").bind(&id).bind(now).execute(&self.pool).await?;
                let rows = sqlx::query("SELECT t.*, s.salt FROM sql_tokens t JOIN sql_token_salts s ON s.user_id = t.user_id WHERE t.user_id = $1 AND t.expires_at > $2 ORDER BY t.created_at, t.id")
                    .bind(&id)
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SqlTokenRecord {
                            id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                            user_id: user,
                            name: row.try_get("name")?,
                            salt: row.try_get("salt")?,
                            iterations: u32::try_from(row.try_get::<i64, _>("iterations")?).unwrap_or(0),
                            stored_key: row.try_get("stored_key")?,
                            server_key: row.try_get("server_key")?,
                            created_at: row.try_get("created_at")?,
                            expires_at: row.try_get("expires_at")?,
                            last_used_at: row.try_get("last_used_at")?,
                        })
                    })
                    .collect()
            }

            async fn revoke_sql_token(&self, user: Uuid, id: Uuid) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM sql_tokens WHERE id = $1 AND user_id = $2")
                    .bind(id.to_string())
                    .bind(user.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn touch_sql_token(&self, id: Uuid, now: i64) -> StoreResult<()> {
                sqlx::query("UPDATE sql_tokens SET last_used_at = $2 WHERE id = $1").bind(id.to_string()).bind(now).execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}

sql_store!(
    /// The embedded metadata store: one SQLite file in WAL mode.
    SqliteStore,
    sqlx::Sqlite,
    SQLITE_MIGRATIONS,
    // A write transaction already excludes other writers of the file.
    "SELECT 1",
    // Take the write lock first: a transaction that reads, then writes after another
    // connection wrote, fails at once with SQLITE_BUSY instead of waiting.
    "BEGIN IMMEDIATE",
    // Move the erasure into the database file and empty the WAL, which still holds the
    // pages from before it.
    "PRAGMA wal_checkpoint(TRUNCATE)",
    // Words: the FTS5 index kept in step by triggers (migration 0012).
    (
        "id IN (SELECT decision_id FROM decisions_fts WHERE decisions_fts MATCH ",
        ")"
    )
);
sql_store!(
    /// The cluster metadata store: PostgreSQL.
    PostgresStore,
    sqlx::Postgres,
    POSTGRES_MIGRATIONS,
    "SELECT pg_advisory_xact_lock(7261726)",
    "BEGIN",
    // Dead tuples are PostgreSQL's to reclaim (VACUUM); its files are the operator's.
    "SELECT 1",
    // Words: the generated tsvector column and its GIN index (migration 0012).
    ("search @@ plainto_tsquery('english', ", ")")
);

impl SqliteStore {
    pub async fn open(path: &Path) -> StoreResult<Self> {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Deleted rows are overwritten, not just unlinked: erasure must not leave the
            // voter's id or salt in a free page.
            .pragma("secure_delete", "ON")
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
            keys: StoreKeys::default(),
        })
    }
}

impl PostgresStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
            keys: StoreKeys::default(),
        })
    }
}

/// Parses a stored decision id.
pub fn decision_id(text: &str) -> StoreResult<DecisionId> {
    parse_uuid(text).map(DecisionId::from)
}

/// A decision's body as stored.
fn stored_body(body: &str) -> StoreResult<Decision> {
    serde_json::from_str(body)
        .map_err(|e| ServingError::Storage(format!("a stored decision does not parse: {e}")))
}

/// A decision's lifecycle column: NULL, or one of the statuses the clock cannot tell.
fn stored_lifecycle(lifecycle: Option<String>) -> StoreResult<Option<DecisionStatus>> {
    lifecycle
        .map(|text| {
            DecisionStatus::parse(&text).ok_or_else(|| {
                ServingError::Storage(format!("unknown decision lifecycle {text:?}"))
            })
        })
        .transpose()
}

/// A log position from its columns.
fn stored_position(partition: i64, offset: i64) -> StoreResult<Position> {
    let bad = || ServingError::Storage(format!("bad log position {partition}:{offset}"));
    Ok(Position {
        partition: u32::try_from(partition).map_err(|_| bad())?,
        offset: u64::try_from(offset).map_err(|_| bad())?,
    })
}

/// A log offset as a BIGINT column holds it.
fn offset_column(offset: u64) -> StoreResult<i64> {
    i64::try_from(offset)
        .map_err(|_| ServingError::Internal(format!("log offset {offset} is beyond a BIGINT")))
}
