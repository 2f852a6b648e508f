//! The store's keys against every store (SQLite in a temporary file, a real PostgreSQL):
//! audit entries keyed from a marked entry on, a rewrite of the rows found by the check, the
//! audit head kept with its anchor batch, TOTP secrets sealed at rest (and those written in
//! the clear before sealed by the next migration).

use canopy_testkit::TestDatabase;

use std::sync::Arc;

use canopy_chain::AnchorEntry;
use canopy_schemas::DecisionId;
use canopy_serving::auth::Role;
use canopy_serving::record::stored_batch_tree;
use canopy_serving::store::*;
use canopy_serving::store_keys::{AuditKey, SecretsKey, StoreKeys};
use canopy_serving::trail::{TrailFaultKind, TrailRun, check_trail};
use sqlx::Row;
use uuid::Uuid;

const AUDIT_KEY: [u8; 32] = [0xa1; 32];
const SECRETS_KEY: [u8; 32] = [0x5e; 32];
const TOTP_SECRET: &[u8] = b"twenty bytes secret!";

fn keys() -> StoreKeys {
    StoreKeys {
        audit: Some(AuditKey::from_bytes(AUDIT_KEY)),
        secrets: Some(SecretsKey::from_bytes(SECRETS_KEY)),
    }
}

fn user(name: &str, totp_secret: Option<&[u8]>) -> UserRecord {
    UserRecord {
        id: Uuid::new_v4(),
        username: name.into(),
        password_hash: "$argon2id$not-a-real-hash".into(),
        role: Role::Citizen,
        weight: 1_000_000,
        totp_secret: totp_secret.map(<[u8]>::to_vec),
        totp_enabled: totp_secret.is_some(),
    }
}

/// The first bad entry of the whole trail as `store` holds it, checked with the audit key.
async fn first_bad(store: &dyn MetadataStore) -> Option<(i64, TrailFaultKind)> {
    let entries = store.audit_trail().await.unwrap();
    let run = TrailRun {
        before: None,
        entries: &entries,
        reaches_end: true,
    };
    let key = AuditKey::from_bytes(AUDIT_KEY);
    check_trail(&run, Some(&key), &[])
        .first_bad
        .map(|fault| (fault.seq, fault.kind))
}

/// The suite, over a store opened without keys (`$plain`) and one with them (`$keyed`) on
/// the same database; `$drop_triggers` is the SQL that lets an intruder change rows.
macro_rules! store_keys_suite {
    ($plain:expr, $keyed:expr, $drop_triggers:expr) => {{
        let plain = $plain;
        let keyed = $keyed;
        keyed.migrate().await.unwrap();

        // Entries from before the key, then keyed ones behind the entry that begins keying.
        for n in 0..3 {
            let entry = plain.append_audit("before", "login", &n.to_string(), n).await.unwrap();
            assert_eq!((entry.seq, entry.hmac.as_deref()), (n + 1, None));
        }
        let first_keyed = keyed.append_audit("after", "login", "3", 3).await.unwrap();
        assert_eq!(first_keyed.seq, 5);
        keyed.append_audit("after", "erase_voter", "4", 4).await.unwrap();
        let trail = keyed.audit_trail().await.unwrap();
        assert_eq!(trail[3].action, AUDIT_KEYING_BEGAN);
        let began: serde_json::Value = serde_json::from_str(&trail[3].detail).unwrap();
        assert_eq!(began["unkeyed_entries"], 3);
        assert_eq!(began["key_id"], AuditKey::from_bytes(AUDIT_KEY).id());
        assert!(trail[3..].iter().all(|entry| entry.hmac.is_some()));
        let run = TrailRun { before: None, entries: &trail, reaches_end: true };
        let check = check_trail(&run, keyed.audit_key(), &[]);
        assert!(check.intact(), "{check:?}");
        assert_eq!((check.keyed_from, check.unkeyed), (Some(4), 3));
        assert_eq!(keyed.audit_head().await.unwrap().as_ref(), trail.last());

        // The head anchored with a batch: kept with it, at its entry index.
        let decision = DecisionId(7);
        let checkpoint = CheckpointRow {
            decision_id: decision,
            tree_size: 3,
            root: "cd".repeat(32),
            note: "note".into(),
            log_partition: 0,
            log_offset: 2,
            cut_at: 1,
            batch_id: None,
            entry_index: None,
        };
        keyed.insert_checkpoint(&checkpoint).await.unwrap();
        let head = trail.last().unwrap();
        let audit_anchor = AuditAnchorRow { batch_id: 0, entry_index: 1, seq: head.seq, hash: head.hash.clone() };
        let batch = AnchorBatchRow {
            batch_id: 0,
            root: "ab".repeat(32),
            entry_count: 2,
            target: "journal".into(),
            chain_batch_id: None,
            tx_hash: None,
            block_number: None,
            created_at: 5,
            confirmed_at: None,
        };
        keyed.create_anchor_batch(&batch, &[checkpoint], Some(&audit_anchor)).await.unwrap();
        assert_eq!(keyed.batch_audit_anchor(0).await.unwrap(), Some(audit_anchor.clone()));
        assert_eq!(keyed.latest_audit_anchor().await.unwrap(), Some(audit_anchor.clone()));
        assert_eq!(keyed.audit_anchors(-1, 10).await.unwrap(), vec![audit_anchor.clone()]);
        assert!(keyed.audit_anchors(0, 10).await.unwrap().is_empty());
        let tree = stored_batch_tree(&keyed, 0).await.unwrap();
        let hash: [u8; 32] = hex::decode(&head.hash).unwrap().try_into().unwrap();
        assert_eq!(tree.entries()[1], AnchorEntry::audit_head(head.seq as u64, hash));
        assert_eq!(tree.audit_head().map(|(index, _)| index), Some(1));

        // TOTP secrets: sealed in the row, opened for their user only with the key.
        let cora = user("cora", Some(TOTP_SECRET));
        keyed.create_user(&cora, 1).await.unwrap();
        let stored = sqlx::query("SELECT totp_secret, totp_secret_sealed FROM users WHERE id = $1")
            .bind(cora.id.to_string())
            .fetch_one(keyed.pool())
            .await
            .unwrap();
        let sealed: Vec<u8> = stored.try_get("totp_secret_sealed").unwrap();
        assert_eq!(stored.try_get::<Option<Vec<u8>>, _>("totp_secret").unwrap(), None);
        assert!(!sealed.windows(TOTP_SECRET.len()).any(|w| w == TOTP_SECRET), "the secret is in the clear");
        assert_eq!(keyed.user_by_id(cora.id).await.unwrap(), Some(cora.clone()));
        assert!(plain.user_by_id(cora.id).await.is_err(), "opened without the key");
        assert!(plain.set_totp(cora.id, Some(TOTP_SECRET), true).await.is_err(), "stored in the clear");
        keyed.set_totp(cora.id, Some(b"another secret"), true).await.unwrap();
        assert_eq!(keyed.user_by_id(cora.id).await.unwrap().unwrap().totp_secret.as_deref(), Some(&b"another secret"[..]));

        // A secret written in the clear before sealing: read as it is, sealed by the next migration.
        let dora = user("dora", None);
        keyed.create_user(&dora, 1).await.unwrap();
        sqlx::query("UPDATE users SET totp_secret = $1, totp_enabled = 1 WHERE id = $2")
            .bind(TOTP_SECRET.to_vec())
            .bind(dora.id.to_string())
            .execute(keyed.pool())
            .await
            .unwrap();
        let before_sealing = keyed.user_by_id(dora.id).await.unwrap().unwrap();
        assert_eq!(before_sealing.totp_secret.as_deref(), Some(TOTP_SECRET));
        assert!(keyed.migrate().await.unwrap().is_empty());
        let stored = sqlx::query("SELECT totp_secret, totp_secret_sealed FROM users WHERE id = $1")
            .bind(dora.id.to_string())
            .fetch_one(keyed.pool())
            .await
            .unwrap();
        assert_eq!(stored.try_get::<Option<Vec<u8>>, _>("totp_secret").unwrap(), None);
        assert!(stored.try_get::<Option<Vec<u8>>, _>("totp_secret_sealed").unwrap().is_some());
        assert_eq!(keyed.user_by_id(dora.id).await.unwrap(), Some(before_sealing));

        // Rewrites by someone who can drop the triggers but holds no key.
        sqlx::raw_sql($drop_triggers).execute(keyed.pool()).await.unwrap();
        sqlx::query("UPDATE audit_trail SET detail = '{}' WHERE seq = 5").execute(keyed.pool()).await.unwrap();
        assert_eq!(first_bad(&keyed).await, Some((5, TrailFaultKind::Altered)));
        let altered = keyed.audit_trail().await.unwrap();
        let mut prev = altered[3].hash.clone();
        for entry in &altered[4..] {
            let hash = AuditRecord::compute_hash(&prev, entry.seq, entry.at, &entry.actor, &entry.action, &entry.detail);
            sqlx::query("UPDATE audit_trail SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&prev)
                .bind(&hash)
                .bind(entry.seq)
                .execute(keyed.pool())
                .await
                .unwrap();
            prev = hash;
        }
        assert_eq!(first_bad(&keyed).await, Some((5, TrailFaultKind::BadHmac)));
        sqlx::query("UPDATE audit_trail SET hmac = NULL WHERE seq >= 5").execute(keyed.pool()).await.unwrap();
        assert_eq!(first_bad(&keyed).await, Some((5, TrailFaultKind::HmacMissing)));
    }};
}

#[tokio::test]
async fn sqlite_store_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canopy.db");
    store_keys_suite!(
        Arc::new(SqliteStore::open(&path).await.unwrap()),
        SqliteStore::open(&path).await.unwrap().with_keys(keys()),
        "DROP TRIGGER audit_trail_no_update; DROP TRIGGER audit_trail_no_delete;"
    );
}

#[tokio::test]
async fn postgres_store_keys() {
    let database = TestDatabase::create().await;
    store_keys_suite!(
        Arc::new(PostgresStore::connect(&database.url).await.unwrap()),
        PostgresStore::connect(&database.url)
            .await
            .unwrap()
            .with_keys(keys()),
        "DROP TRIGGER audit_trail_no_update_or_delete ON audit_trail; \
         DROP TRIGGER audit_trail_no_truncate ON audit_trail;"
    );
}

/// A keyless writer after keying began (a process not given the key) shows in the check.
#[tokio::test]
async fn an_unkeyed_entry_after_keying_began_is_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canopy.db");
    let keyed = SqliteStore::open(&path).await.unwrap().with_keys(keys());
    keyed.migrate().await.unwrap();
    keyed.append_audit("a", "login", "{}", 1).await.unwrap();
    let plain = SqliteStore::open(&path).await.unwrap();
    plain.append_audit("b", "login", "{}", 2).await.unwrap();
    assert_eq!(
        first_bad(&keyed).await,
        Some((3, TrailFaultKind::HmacMissing))
    );
}
