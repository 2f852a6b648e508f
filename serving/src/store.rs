//! The metadata store: users, credentials and roles, verifications, decisions, refresh
//! token families, the hash-chained audit trail. One trait, two implementations through
//! sqlx: SQLite (embedded, WAL mode) and PostgreSQL (cluster). Both run the same SQL text
//! (`$n` placeholders, integer booleans, TEXT ids), generated from one macro, and the same
//! test suite.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use canopy_dataflow::{EngineSnapshot, StateChunk};
use canopy_schemas::{Decision, DecisionId, Sensor};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::ServingError;
use crate::auth::Role;

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

/// One entry of the audit trail; `hash` chains it to the entry before.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
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

/// The hash the first audit entry chains to.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Checks that every entry's hash is right and chains to the one before.
pub fn verify_audit_chain(entries: &[AuditRecord]) -> Result<(), String> {
    verify_audit_chain_after(None, entries)
}

/// [`verify_audit_chain`] for a page of the trail: `entries` follow `before` (none: they
/// start at the first entry).
pub fn verify_audit_chain_after(
    before: Option<&AuditRecord>,
    entries: &[AuditRecord],
) -> Result<(), String> {
    let mut prev = before.map_or(AUDIT_GENESIS, |entry| entry.hash.as_str());
    let first_seq = before.map_or(1, |entry| entry.seq + 1);
    for (expected_seq, entry) in (first_seq..).zip(entries) {
        if entry.seq != expected_seq || entry.prev_hash != prev {
            return Err(format!(
                "entry {} does not follow entry {}",
                entry.seq,
                expected_seq - 1
            ));
        }
        let hash = AuditRecord::compute_hash(
            &entry.prev_hash,
            entry.seq,
            entry.at,
            &entry.actor,
            &entry.action,
            &entry.detail,
        );
        if hash != entry.hash {
            return Err(format!("entry {} has been altered", entry.seq));
        }
        prev = &entry.hash;
    }
    Ok(())
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

#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Applies the migrations not yet applied; returns their names.
    async fn migrate(&self) -> StoreResult<Vec<String>>;
    /// Refuses a taken username with `Conflict`.
    async fn create_user(&self, user: &UserRecord, now: i64) -> StoreResult<()>;
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<UserRecord>>;
    /// Sets a user's role and weight and records who verified it; false if no such user.
    async fn verify_user(
        &self,
        user: Uuid,
        verification: &Verification,
        now: i64,
    ) -> StoreResult<bool>;
    async fn regions_of(&self, user: Uuid) -> StoreResult<Vec<String>>;
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
    /// Registers a sensor, or replaces its registration.
    async fn put_sensor(&self, sensor: &Sensor, now: i64) -> StoreResult<()>;
    async fn sensors(&self) -> StoreResult<Vec<Sensor>>;
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

    /// The voter's salt, created on first use (and afresh after an erasure).
    async fn voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<[u8; 32]>;
    /// Forgets the voter's salt; false if they had none to forget.
    async fn erase_voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<bool>;
    /// Stores a checkpoint unless one at this size or larger is stored for the decision
    /// (a replay re-cuts sizes already covered); true if stored.
    async fn insert_checkpoint(&self, checkpoint: &CheckpointRow) -> StoreResult<bool>;
    /// A decision's checkpoints, oldest first.
    async fn checkpoints(&self, decision: DecisionId) -> StoreResult<Vec<CheckpointRow>>;
    /// The largest checkpoint of every decision.
    async fn latest_checkpoints(&self) -> StoreResult<Vec<CheckpointRow>>;
    /// Up to `limit` checkpoints not yet in an anchor batch, by (decision, size).
    async fn unanchored_checkpoints(&self, limit: i64) -> StoreResult<Vec<CheckpointRow>>;
    /// Fixes a batch: its row, and each entry's (batch, index) on its checkpoint.
    async fn create_anchor_batch(
        &self,
        batch: &AnchorBatchRow,
        entries: &[CheckpointRow],
    ) -> StoreResult<()>;
    /// Records where a batch landed.
    async fn confirm_anchor_batch(&self, batch: &AnchorBatchRow) -> StoreResult<()>;
    /// Batches created but not yet confirmed (a crash between the two), oldest first.
    async fn pending_anchor_batches(&self) -> StoreResult<Vec<AnchorBatchRow>>;
    async fn anchor_batch(&self, batch_id: i64) -> StoreResult<Option<AnchorBatchRow>>;
    /// The checkpoints of a batch in entry order.
    async fn batch_entries(&self, batch_id: i64) -> StoreResult<Vec<CheckpointRow>>;
    async fn next_anchor_batch_id(&self) -> StoreResult<i64>;

    /// Stores one worker's part of an engine checkpoint.
    async fn write_engine_chunk(&self, chunk: &StateChunk, now: i64) -> StoreResult<()>;
    /// The latest complete engine checkpoint; drops the parts of later, incomplete ones.
    async fn load_engine_snapshot(&self) -> StoreResult<Option<EngineSnapshot>>;
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
];

fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text)
        .map_err(|e| ServingError::Storage(format!("bad id {text:?} in the store: {e}")))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

macro_rules! sql_store {
    ($(#[$doc:meta])* $name:ident, $db:ty, $migrations:expr, $migration_lock:expr) => {
        $(#[$doc])*
        pub struct $name {
            pool: sqlx::Pool<$db>,
            /// Appends to the audit chain one at a time within this process; the sequence
            /// number's primary key catches a second process racing for the same slot.
            audit_lock: tokio::sync::Mutex<()>,
        }

        impl $name {
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            fn user_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<UserRecord> {
                let role: String = row.try_get("role")?;
                Ok(UserRecord {
                    id: parse_uuid(&row.try_get::<String, _>("id")?)?,
                    username: row.try_get("username")?,
                    password_hash: row.try_get("password_hash")?,
                    role: Role::parse(&role).ok_or_else(|| ServingError::Storage(format!("unknown role {role:?}")))?,
                    weight: u32::try_from(row.try_get::<i64, _>("weight")?).unwrap_or(0),
                    totp_secret: row.try_get("totp_secret")?,
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
                tx.commit().await?;
                Ok(applied)
            }

            async fn create_user(&self, user: &UserRecord, now: i64) -> StoreResult<()> {
                let inserted = sqlx::query(
                    "INSERT INTO users (id, username, password_hash, role, weight, totp_secret, totp_enabled, totp_last_step, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8)",
                )
                .bind(user.id.to_string())
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(i64::from(user.weight))
                .bind(user.totp_secret.clone())
                .bind(i64::from(user.totp_enabled))
                .bind(now)
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(_) => Ok(()),
                    Err(error) if is_unique_violation(&error) => Err(ServingError::Conflict(format!("the username {:?} is taken", user.username))),
                    Err(error) => Err(error.into()),
                }
            }

            async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>> {
                let row = sqlx::query("SELECT * FROM users WHERE username = $1").bind(username).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::user_from_row).transpose()
            }

            async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
                let row = sqlx::query("SELECT * FROM users WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
                row.as_ref().map(Self::user_from_row).transpose()
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

            async fn set_totp(&self, user: Uuid, secret: Option<&[u8]>, enabled: bool) -> StoreResult<()> {
                sqlx::query("UPDATE users SET totp_secret = $1, totp_enabled = $2 WHERE id = $3")
                    .bind(secret.map(<[u8]>::to_vec))
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
                    "INSERT INTO decisions (id, owner, body, opens_at, closes_at, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET body = excluded.body, opens_at = excluded.opens_at, closes_at = excluded.closes_at",
                )
                .bind(decision.id.to_string())
                .bind(owner.to_string())
                .bind(body)
                .bind(decision.opens_at)
                .bind(decision.closes_at)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(())
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
                    let last = sqlx::query("SELECT seq, hash FROM audit_trail ORDER BY seq DESC LIMIT 1").fetch_optional(&self.pool).await?;
                    let (prev_seq, prev_hash) = match &last {
                        Some(row) => (row.try_get::<i64, _>("seq")?, row.try_get::<String, _>("hash")?),
                        None => (0, AUDIT_GENESIS.to_string()),
                    };
                    let seq = prev_seq + 1;
                    let hash = AuditRecord::compute_hash(&prev_hash, seq, now, actor, action, detail);
                    let inserted = sqlx::query("INSERT INTO audit_trail (seq, at, actor, action, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                        .bind(seq)
                        .bind(now)
                        .bind(actor)
                        .bind(action)
                        .bind(detail)
                        .bind(&prev_hash)
                        .bind(&hash)
                        .execute(&self.pool)
                        .await;
                    match inserted {
                        Ok(_) => {
                            return Ok(AuditRecord { seq, at: now, actor: actor.into(), action: action.into(), detail: detail.into(), prev_hash, hash });
                        }
                        Err(error) if is_unique_violation(&error) => continue,
                        Err(error) => return Err(error.into()),
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
                rows.iter()
                    .map(|row| {
                        Ok(AuditRecord {
                            seq: row.try_get("seq")?,
                            at: row.try_get("at")?,
                            actor: row.try_get("actor")?,
                            action: row.try_get("action")?,
                            detail: row.try_get("detail")?,
                            prev_hash: row.try_get("prev_hash")?,
                            hash: row.try_get("hash")?,
                        })
                    })
                    .collect()
            }

            async fn voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<[u8; 32]> {
                let existing = sqlx::query("SELECT salt FROM voter_salts WHERE voter_id = $1").bind(voter.to_string()).fetch_optional(&self.pool).await?;
                if let Some(row) = &existing
                    && let Some(salt) = row.try_get::<Option<Vec<u8>>, _>("salt")?
                {
                    return <[u8; 32]>::try_from(salt).map_err(|_| ServingError::Storage("a stored salt is not 32 bytes".into()));
                }
                let fresh: [u8; 32] = rand::random();
                sqlx::query(
                    "INSERT INTO voter_salts (voter_id, salt, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (voter_id) DO UPDATE SET salt = excluded.salt, created_at = excluded.created_at, erased_at = NULL \
                     WHERE voter_salts.salt IS NULL",
                )
                .bind(voter.to_string())
                .bind(fresh.to_vec())
                .bind(now)
                .execute(&self.pool)
                .await?;
                // Another request may have created it first: read back what won.
                let row = sqlx::query("SELECT salt FROM voter_salts WHERE voter_id = $1").bind(voter.to_string()).fetch_one(&self.pool).await?;
                let salt: Option<Vec<u8>> = row.try_get("salt")?;
                salt.and_then(|salt| <[u8; 32]>::try_from(salt).ok()).ok_or_else(|| ServingError::Storage("the voter's salt vanished while it was created".into()))
            }

            async fn erase_voter_salt(&self, voter: Uuid, now: i64) -> StoreResult<bool> {
                let erased = sqlx::query("UPDATE voter_salts SET salt = NULL, erased_at = $2 WHERE voter_id = $1 AND salt IS NOT NULL")
                    .bind(voter.to_string())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(erased.rows_affected() > 0)
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

            async fn create_anchor_batch(&self, batch: &AnchorBatchRow, entries: &[CheckpointRow]) -> StoreResult<()> {
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
                let ends = serde_json::to_string(&chunk.ends).map_err(|e| ServingError::Internal(e.to_string()))?;
                sqlx::query("INSERT INTO engine_checkpoints (seq, worker, workers, ends, data, written_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(chunk.seq as i64)
                    .bind(i64::from(chunk.worker))
                    .bind(i64::from(chunk.workers))
                    .bind(ends)
                    .bind(&chunk.data)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn load_engine_snapshot(&self) -> StoreResult<Option<EngineSnapshot>> {
                let mut tx = self.pool.begin().await?;
                let counts = sqlx::query("SELECT seq, MAX(workers) AS workers, COUNT(*) AS written FROM engine_checkpoints GROUP BY seq ORDER BY seq")
                    .fetch_all(&mut *tx)
                    .await?;
                let mut complete: Option<i64> = None;
                for row in &counts {
                    if row.try_get::<i64, _>("written")? == row.try_get::<i64, _>("workers")? {
                        complete = Some(row.try_get("seq")?);
                    }
                }
                sqlx::query("DELETE FROM engine_checkpoints WHERE seq > $1")
                    .bind(complete.unwrap_or(-1))
                    .execute(&mut *tx)
                    .await?;
                let Some(seq) = complete else {
                    tx.commit().await?;
                    return Ok(None);
                };
                let rows = sqlx::query("SELECT ends, data FROM engine_checkpoints WHERE seq <= $1 ORDER BY seq, worker")
                    .bind(seq)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let mut ends: std::collections::BTreeMap<u32, u64> = Default::default();
                let mut chunks = Vec::with_capacity(rows.len());
                for row in &rows {
                    let row_ends: Vec<(u32, u64)> = serde_json::from_str(&row.try_get::<String, _>("ends")?)
                        .map_err(|e| ServingError::Storage(format!("engine checkpoint ends do not parse: {e}")))?;
                    for (partition, end) in row_ends {
                        let slot = ends.entry(partition).or_insert(0);
                        *slot = (*slot).max(end);
                    }
                    chunks.push(row.try_get::<Vec<u8>, _>("data")?);
                }
                Ok(Some(EngineSnapshot { seq: seq as u64, ends: ends.into_iter().collect(), chunks }))
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
    "SELECT 1"
);
sql_store!(
    /// The cluster metadata store: PostgreSQL.
    PostgresStore,
    sqlx::Postgres,
    POSTGRES_MIGRATIONS,
    "SELECT pg_advisory_xact_lock(7261726)"
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
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
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
        })
    }
}

/// Parses a stored decision id.
pub fn decision_id(text: &str) -> StoreResult<DecisionId> {
    parse_uuid(text).map(DecisionId::from)
}
