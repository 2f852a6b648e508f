//! One suite, every metadata store: SQLite in a temporary file and a real PostgreSQL.

use canopy_testkit::TestDatabase;

use std::sync::Arc;

use canopy_schemas::{
    ComponentWeights, Decision, DecisionId, DecisionStatus, Method, Metric, Sensor,
};
use canopy_serving::ServingError;
use canopy_serving::auth::Role;
use canopy_serving::salts::SaltCache;
use canopy_serving::store::*;
use canopy_serving::trail::verify_audit_chain;
use uuid::Uuid;

/// A secrets key (TOTP secrets are stored only sealed) and no audit key: the trail's
/// entries stay unkeyed, as the chain tests below expect; keyed entries have their tests in
/// store_keys.rs.
fn secrets_only() -> canopy_serving::store_keys::StoreKeys {
    canopy_serving::store_keys::StoreKeys {
        audit: None,
        secrets: Some(canopy_serving::store_keys::SecretsKey::from_bytes([9; 32])),
    }
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: Uuid::new_v4(),
        username: name.into(),
        password_hash: "$argon2id$not-a-real-hash".into(),
        role: Role::Citizen,
        weight: 1_000_000,
        totp_secret: None,
        totp_enabled: false,
    }
}

fn decision(title: &str) -> Decision {
    Decision {
        electorate: Default::default(),
        credits: 0,
        id: DecisionId::new_random(),
        title: title.into(),
        description: String::new(),
        region: "north".into(),
        options: vec!["yes".into(), "no".into()],
        opens_at: 10,
        closes_at: 20,
        weights: ComponentWeights::DEFAULT,
        quorum: 3,
        method: Method::SingleChoice,
    }
}

/// A new refresh-token family of `user` (created at time 5) holding `token`, which expires
/// at `expires_at`; returns the family.
async fn new_refresh_family(
    store: &dyn MetadataStore,
    user: Uuid,
    token: &str,
    expires_at: i64,
) -> Uuid {
    let family = Uuid::new_v4();
    store.create_refresh_family(family, user, 5).await.unwrap();
    add_refresh_token(store, family, user, token, expires_at).await;
    family
}

async fn add_refresh_token(
    store: &dyn MetadataStore,
    family: Uuid,
    user: Uuid,
    token: &str,
    expires_at: i64,
) {
    store
        .insert_refresh_token(token, family, user, expires_at)
        .await
        .unwrap();
}

/// Everything the serving layer relies on a store for.
async fn exercise(store: Arc<dyn MetadataStore>) {
    assert_eq!(
        store.migrate().await.unwrap(),
        vec![
            "0001_init".to_string(),
            "0002_record".to_string(),
            "0003_engine_state".to_string(),
            "0004_sensors".to_string(),
            "0005_audit_append_only".to_string(),
            "0006_rolls".to_string(),
            "0007_voter_keys".to_string(),
            "0008_audit_keys".to_string(),
            "0009_signin".to_string(),
            "0010_sql_tokens".to_string(),
            "0011_engine_state_parts".to_string(),
            "0012_decision_search".to_string(),
            "0013_decision_lifecycle".to_string(),
            "0014_impact_statements".to_string(),
        ]
    );
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "migrations apply once"
    );

    // Users: unique names, lookups, verification with regions.
    let alice = user("alice");
    store.create_user(&alice, 1).await.unwrap();
    let taken = store
        .create_user(
            &UserRecord {
                id: Uuid::new_v4(),
                ..user("alice")
            },
            1,
        )
        .await
        .unwrap_err();
    assert!(matches!(taken, ServingError::Conflict(_)), "{taken:?}");
    assert_eq!(
        store.user_by_username("alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.user_by_username("nobody").await.unwrap(), None);
    // A name is one account in any case (issue 17): found by every spelling, taken by it.
    assert_eq!(
        store.user_by_username("ALICE").await.unwrap(),
        Some(alice.clone())
    );
    let shouted = store
        .create_user(
            &UserRecord {
                id: Uuid::new_v4(),
                ..user("Alice")
            },
            1,
        )
        .await
        .unwrap_err();
    assert!(matches!(shouted, ServingError::Conflict(_)), "{shouted:?}");
    // Recovery codes: each spent once, all replaced at once.
    let codes = ["a".repeat(64), "b".repeat(64)];
    store
        .replace_recovery_codes(alice.id, &codes)
        .await
        .unwrap();
    assert!(
        store
            .recovery_code_unused(alice.id, &codes[0])
            .await
            .unwrap()
    );
    assert!(
        store
            .spend_recovery_code(alice.id, &codes[0], 2)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_recovery_code(alice.id, &codes[0], 3)
            .await
            .unwrap()
    );
    assert!(
        !store
            .recovery_code_unused(alice.id, &codes[0])
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(alice.id).await.unwrap(), 1);
    store.replace_recovery_codes(alice.id, &[]).await.unwrap();
    assert!(
        !store
            .spend_recovery_code(alice.id, &codes[1], 4)
            .await
            .unwrap()
    );
    let admin = user("admin");
    store.create_user(&admin, 1).await.unwrap();
    let verification = Verification {
        role: Role::Stakeholder,
        weight: 2_500_000,
        field: "fishing".into(),
        regions: vec!["delta".into(), "coast".into()],
        verified_by: admin.id,
    };
    assert!(store.verify_user(alice.id, &verification, 2).await.unwrap());
    assert!(
        !store
            .verify_user(Uuid::new_v4(), &verification, 2)
            .await
            .unwrap()
    );
    let verified = store.user_by_id(alice.id).await.unwrap().unwrap();
    assert_eq!(
        (verified.role, verified.weight),
        (Role::Stakeholder, 2_500_000)
    );
    assert_eq!(
        store.regions_of(alice.id).await.unwrap(),
        vec!["coast".to_string(), "delta".to_string()]
    );

    // TOTP: a step is usable once, and never an older one.
    store
        .set_totp(alice.id, Some(b"secret-bytes"), true)
        .await
        .unwrap();
    let with_totp = store.user_by_id(alice.id).await.unwrap().unwrap();
    assert_eq!(
        (with_totp.totp_secret.as_deref(), with_totp.totp_enabled),
        (Some(&b"secret-bytes"[..]), true)
    );
    assert!(store.claim_totp_step(alice.id, 100).await.unwrap());
    assert!(!store.claim_totp_step(alice.id, 100).await.unwrap());
    assert!(!store.claim_totp_step(alice.id, 99).await.unwrap());
    assert!(store.claim_totp_step(alice.id, 101).await.unwrap());

    // Refresh tokens: spent once; a replay is reported; revocation and expiry end a family.
    let family = new_refresh_family(store.as_ref(), alice.id, "t1", 1_000).await;
    assert_eq!(
        store.use_refresh_token("t1", 10).await.unwrap(),
        RefreshUse::Fresh {
            family,
            user: alice.id
        }
    );
    assert_eq!(
        store.use_refresh_token("t1", 11).await.unwrap(),
        RefreshUse::Reused {
            family,
            user: alice.id
        }
    );
    add_refresh_token(store.as_ref(), family, alice.id, "t2", 1_000).await;
    store.revoke_refresh_family(family).await.unwrap();
    assert_eq!(
        store.use_refresh_token("t2", 12).await.unwrap(),
        RefreshUse::Invalid
    );
    assert_eq!(
        store.use_refresh_token("unknown", 12).await.unwrap(),
        RefreshUse::Invalid
    );
    let other = new_refresh_family(store.as_ref(), alice.id, "t3", 100).await;
    assert_eq!(
        store.use_refresh_token("t3", 100).await.unwrap(),
        RefreshUse::Invalid,
        "expired"
    );
    add_refresh_token(store.as_ref(), other, alice.id, "t4", 1_000).await;
    assert!(store.revoke_refresh_token("t4").await.unwrap());
    assert_eq!(
        store.use_refresh_token("t4", 101).await.unwrap(),
        RefreshUse::Invalid
    );

    // Exactly one of many concurrent uses of a token wins.
    new_refresh_family(store.as_ref(), alice.id, "race", 1_000).await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.use_refresh_token("race", 50).await.unwrap() })
        })
        .collect();
    let mut fresh = 0;
    for attempt in attempts {
        if matches!(attempt.await.unwrap(), RefreshUse::Fresh { .. }) {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);

    // Decisions: stored whole, updated in place, listed in creation order.
    let first = decision("first");
    let second = decision("second");
    store.put_decision(&first, admin.id, 1).await.unwrap();
    store.put_decision(&second, admin.id, 2).await.unwrap();
    let renamed = Decision {
        title: "first, renamed".into(),
        ..first.clone()
    };
    store.put_decision(&renamed, admin.id, 3).await.unwrap();
    assert_eq!(store.decisions().await.unwrap(), vec![renamed, second]);

    // The sensor registry: a re-registration replaces the sensor (a move to another region).
    let sensor = Sensor {
        sensor_id: "aq-1".into(),
        region: "north".into(),
        latitude: 1.5,
        longitude: 2.5,
        metrics: vec![Metric::Pm25, Metric::No2],
    };
    store.put_sensor(&sensor, 1).await.unwrap();
    let moved = Sensor {
        region: "south".into(),
        ..sensor.clone()
    };
    store.put_sensor(&moved, 2).await.unwrap();
    let other = Sensor {
        sensor_id: "aq-0".into(),
        ..sensor
    };
    store.put_sensor(&other, 3).await.unwrap();
    assert_eq!(store.sensors().await.unwrap(), vec![other, moved]);

    // The audit trail chains every entry to the one before.
    for n in 0..5 {
        let entry = store
            .append_audit("tester", "action", &format!("{{\"n\":{n}}}"), 100 + n)
            .await
            .unwrap();
        assert_eq!(entry.seq, n + 1);
    }
    let trail = store.audit_trail().await.unwrap();
    assert_eq!(trail.len(), 5);
    assert_eq!(trail[0].prev_hash, AUDIT_GENESIS);
    verify_audit_chain(&trail).unwrap();
    let mut altered = trail.clone();
    altered[2].detail = "{\"n\":99}".into();
    assert_eq!(
        verify_audit_chain(&altered).unwrap_err(),
        "entry 3 has been altered"
    );
    let mut dropped = trail.clone();
    dropped.remove(1);
    assert!(
        verify_audit_chain(&dropped).is_err(),
        "a removed entry breaks the chain"
    );

    record_tables(&store).await;
}

fn checkpoint(decision: DecisionId, size: i64) -> CheckpointRow {
    CheckpointRow {
        decision_id: decision,
        tree_size: size,
        root: format!("{size:064x}"),
        note: format!("note {size}"),
        log_partition: 0,
        log_offset: size * 2,
        cut_at: size,
        batch_id: None,
        entry_index: None,
    }
}

/// Salts, checkpoints and anchor batches.
async fn record_tables(store: &Arc<dyn MetadataStore>) {
    // A salt is created once per account and kept; erasure takes the account, its salt,
    // key and pseudonym, and none of them comes back for the erased id.
    let account = user("salted");
    store.create_user(&account, 0).await.unwrap();
    let other_account = user("salted-too");
    store.create_user(&other_account, 0).await.unwrap();
    let (voter, other) = (account.id, other_account.id);
    let salt = store.voter_salt(voter, 1).await.unwrap();
    assert_eq!(store.voter_salt(voter, 2).await.unwrap(), salt);
    let racing: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.voter_salt(other, 3).await.unwrap() })
        })
        .collect();
    let mut salts = Vec::new();
    for attempt in racing {
        salts.push(attempt.await.unwrap());
    }
    assert!(salts.windows(2).all(|w| w[0] == w[1]), "one salt per voter");
    let key = store.voter_key(voter, 3).await.unwrap().unwrap();
    assert_eq!(store.voter_key(voter, 3).await.unwrap(), Some(key));
    let pseudonym = store.user_pseudonym(voter).await.unwrap();
    assert!(pseudonym.starts_with("p-") && !pseudonym.contains(&voter.to_string()));
    // What a restart loads: every salt and key, page by page in id order.
    let listed = |keys: bool| {
        let store = Arc::clone(store);
        async move {
            let (mut all, mut after) = (Vec::new(), None);
            loop {
                let page = store.voter_secrets_after(keys, after, 1).await.unwrap();
                let Some(last) = page.last() else { break all };
                after = Some(last.0);
                all.extend(page);
            }
        }
    };
    let stored = listed(false).await;
    assert!(
        stored.is_sorted_by_key(|(id, _)| id.to_string()),
        "{stored:?}"
    );
    assert!(stored.contains(&(voter, salt)) && stored.contains(&(other, salts[0])));
    assert!(listed(true).await.contains(&(voter, key)));
    let (cache, loaded) = SaltCache::load(store.as_ref()).await.unwrap();
    assert_eq!(loaded.salts, stored.len());
    assert_eq!(cache.salt(store.as_ref(), voter).await.unwrap(), salt);
    assert_eq!(
        store.erase_voter(voter, 4).await.unwrap(),
        Some(pseudonym.clone())
    );
    assert_eq!(store.erase_voter(voter, 5).await.unwrap(), None);
    assert!(store.user_by_id(voter).await.unwrap().is_none());
    assert_eq!(store.voter_key(voter, 6).await.unwrap(), None);
    assert_eq!(
        store.voter_salt(voter, 6).await.unwrap_err().code(),
        "account_erased"
    );
    assert_eq!(
        store.user_pseudonym(voter).await.unwrap(),
        UNKNOWN_USER_PSEUDONYM
    );
    assert_eq!(
        store
            .voter_salt(Uuid::new_v4(), 6)
            .await
            .unwrap_err()
            .code(),
        "account_erased"
    );
    // Nor does a restart load them.
    assert!(!listed(false).await.iter().any(|(id, _)| *id == voter));
    assert!(!listed(true).await.iter().any(|(id, _)| *id == voter));

    // Checkpoints only grow: a replayed cut at or below the latest is not stored.
    let (a, b) = (DecisionId(1), DecisionId(2));
    assert!(store.insert_checkpoint(&checkpoint(a, 10)).await.unwrap());
    assert!(store.insert_checkpoint(&checkpoint(a, 25)).await.unwrap());
    assert!(!store.insert_checkpoint(&checkpoint(a, 25)).await.unwrap());
    assert!(!store.insert_checkpoint(&checkpoint(a, 20)).await.unwrap());
    assert!(store.insert_checkpoint(&checkpoint(b, 3)).await.unwrap());
    assert_eq!(
        store.checkpoints(a).await.unwrap(),
        vec![checkpoint(a, 10), checkpoint(a, 25)]
    );
    let latest = store.latest_checkpoints().await.unwrap();
    assert_eq!(latest.len(), 2);
    assert!(latest.contains(&checkpoint(a, 25)) && latest.contains(&checkpoint(b, 3)));

    // A batch fixes its entries first and is confirmed later.
    let unanchored = store.unanchored_checkpoints(2).await.unwrap();
    assert_eq!(unanchored, vec![checkpoint(a, 10), checkpoint(a, 25)]);
    assert_eq!(store.next_anchor_batch_id().await.unwrap(), 0);
    let mut batch = AnchorBatchRow {
        batch_id: 0,
        root: "ab".repeat(32),
        entry_count: 2,
        target: "journal".into(),
        chain_batch_id: None,
        tx_hash: None,
        block_number: None,
        created_at: 7,
        confirmed_at: None,
    };
    store
        .create_anchor_batch(&batch, &unanchored, None)
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .create_anchor_batch(
                    &AnchorBatchRow {
                        batch_id: 1,
                        ..batch.clone()
                    },
                    &unanchored,
                    None
                )
                .await,
            Err(ServingError::Conflict(_))
        ),
        "a checkpoint is in one batch only"
    );
    assert_eq!(
        store.pending_anchor_batches().await.unwrap(),
        vec![batch.clone()]
    );
    assert_eq!(
        store.unanchored_checkpoints(10).await.unwrap(),
        vec![checkpoint(b, 3)]
    );
    let entries = store.batch_entries(0).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[1].tree_size, entries[1].entry_index),
        (25, Some(1))
    );
    batch.chain_batch_id = Some(4);
    batch.tx_hash = Some("00".repeat(32));
    batch.block_number = Some(99);
    batch.confirmed_at = Some(8);
    store.confirm_anchor_batch(&batch).await.unwrap();
    assert!(store.pending_anchor_batches().await.unwrap().is_empty());
    assert_eq!(store.anchor_batch(0).await.unwrap(), Some(batch));
    assert_eq!(store.next_anchor_batch_id().await.unwrap(), 1);

    engine_checkpoints(store.as_ref()).await;
}

/// Engine checkpoints: only complete ones load, with every chunk up to them in order and the
/// highest end per partition; the chunks of a checkpoint a run did not finish are dropped, so
/// a new run can write that number again.
async fn engine_checkpoints(store: &dyn MetadataStore) {
    use canopy_dataflow::StateChunk;
    assert_eq!(store.load_engine_snapshot().await.unwrap(), None);
    let chunk = |seq: u64, worker: u32, workers: u32, ends: Vec<(u32, u64)>| StateChunk {
        seq,
        worker,
        workers,
        ends,
        delta: vec![vec![seq as u8, worker as u8]],
        base: None,
    };
    // A run of two workers completes checkpoints 1 and 2, and stops while writing 3.
    for (written, at) in [
        (chunk(1, 1, 2, vec![(1, 5)]), 1),
        (chunk(1, 0, 2, vec![(0, 4), (2, 9)]), 1),
        (chunk(2, 0, 2, vec![(0, 7), (2, 9)]), 2),
        (chunk(2, 1, 2, vec![(1, 6)]), 2),
        (chunk(3, 1, 2, vec![(1, 99)]), 3),
    ] {
        store.write_engine_chunk(&written, at).await.unwrap();
    }
    assert!(
        store
            .write_engine_chunk(&chunk(2, 1, 2, vec![]), 4)
            .await
            .is_err()
    );
    let snapshot = store.load_engine_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.seq, 2);
    assert_eq!(snapshot.ends, vec![(0, 7), (1, 6), (2, 9)]);
    assert_eq!(
        snapshot.chunks,
        vec![vec![1, 0], vec![1, 1], vec![2, 0], vec![2, 1]]
    );
    // The next run has three workers and reuses number 3.
    for worker in 0..3 {
        store
            .write_engine_chunk(&chunk(3, worker, 3, vec![(worker, 10)]), 5)
            .await
            .unwrap();
    }
    let snapshot = store.load_engine_snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.seq, 3);
    assert_eq!(snapshot.ends, vec![(0, 10), (1, 10), (2, 10)]);
    assert_eq!(snapshot.chunks.len(), 7);
}

/// Neither an UPDATE nor a DELETE of an audit entry goes through the store's own database
/// connection: the triggers refuse them and the entry stays as written.
macro_rules! assert_audit_trail_append_only {
    ($store:expr) => {{
        let store = &$store;
        let entry = store
            .append_audit("tester", "action", "{}", 1)
            .await
            .unwrap();
        for statement in [
            "UPDATE audit_trail SET detail = '{\"forged\":true}'",
            "DELETE FROM audit_trail",
        ] {
            let refused = sqlx::query(statement).execute(store.pool()).await;
            let error = refused.expect_err(statement).to_string();
            assert!(error.contains("append-only"), "{statement}: {error}");
        }
        assert_eq!(store.audit_trail().await.unwrap(), vec![entry]);
    }};
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert_audit_trail_append_only!(store);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap()
        .with_keys(secrets_only());
    exercise(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_store() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    store.migrate().await.unwrap();
    assert_audit_trail_append_only!(store);
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url)
        .await
        .unwrap()
        .with_keys(secrets_only());
    exercise(Arc::new(store)).await;
}

#[tokio::test]
async fn concurrent_audit_appends_from_two_processes_keep_one_chain() {
    let database = TestDatabase::create().await;
    // Two stores on one database stand for two serving replicas.
    let first: Arc<dyn MetadataStore> =
        Arc::new(PostgresStore::connect(&database.url).await.unwrap());
    let second: Arc<dyn MetadataStore> =
        Arc::new(PostgresStore::connect(&database.url).await.unwrap());
    first.migrate().await.unwrap();
    let writers: Vec<_> = (0..40)
        .map(|n| {
            let store = if n % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            tokio::spawn(async move {
                store
                    .append_audit("replica", "action", &n.to_string(), n)
                    .await
            })
        })
        .collect();
    let mut appended = 0;
    for writer in writers {
        if writer.await.unwrap().is_ok() {
            appended += 1;
        }
    }
    let trail = first.audit_trail().await.unwrap();
    assert_eq!(trail.len(), appended);
    assert!(appended >= 30, "only {appended} of 40 appends got through");
    verify_audit_chain(&trail).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let database = TestDatabase::create().await;
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move {
                let store = PostgresStore::connect(&url).await.unwrap();
                store.migrate().await
            })
        })
        .collect();
    let mut applied = Vec::new();
    for start in starts {
        applied.push(
            start
                .await
                .unwrap()
                .expect("every start migrates or finds it done"),
        );
    }
    // Exactly one of them applied the migrations; the others found them done.
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "{applied:?}"
    );
    assert_eq!(applied.concat().len(), 14, "{applied:?}");
}

/// Words the search tests build titles and descriptions from: none is a stop word, and
/// each is its own token in both full-text engines.
const SEARCH_WORDS: [&str; 5] = ["river", "school", "budget", "park", "library"];
const SEARCH_NOW: i64 = 1_000;

/// The `n`th decision of the search tests: its words picked by the bits of `n` (the first
/// three for the title, the last two for the description), one of three regions, and one
/// of four windows (scheduled, open, closed, and open for exactly one µs around now).
fn searchable(n: u32) -> Decision {
    let picked = |bits: std::ops::Range<usize>| -> Vec<&str> {
        bits.filter(|bit| n >> bit & 1 == 1)
            .map(|bit| SEARCH_WORDS[bit])
            .collect()
    };
    let (opens_at, closes_at) = match n % 4 {
        0 => (2_000, 3_000),
        1 => (0, 2_000),
        2 => (0, SEARCH_NOW),
        _ => (SEARCH_NOW, SEARCH_NOW + 1),
    };
    Decision {
        title: format!("Proposal {n}: {}", picked(0..3).join(" and ")),
        description: format!("About the {}.", picked(3..5).join(", ")),
        region: ["north", "south", "east"][n as usize % 3].into(),
        opens_at,
        closes_at,
        ..decision("")
    }
}

/// What a search must find, recounted from the decisions themselves: every word a token of
/// the title or description (the test's words need no stemming), every filter true, newest
/// first then by id, the page cut from that.
fn expected_search(made: &[(Decision, i64)], search: &DecisionSearch) -> (Vec<Decision>, i64) {
    let tokens = |d: &Decision| -> Vec<String> {
        format!("{} {}", d.title, d.description)
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .collect()
    };
    let mut hits: Vec<&(Decision, i64)> = made
        .iter()
        .filter(|(d, _)| {
            let tokens = tokens(d);
            search
                .words
                .iter()
                .all(|word| tokens.contains(&word.to_lowercase()))
                && search.region.as_ref().is_none_or(|r| &d.region == r)
                && search.method.is_none_or(|m| d.method == m)
                && search.status.is_none_or(|s| d.status_at(search.now) == s)
                && search.from.is_none_or(|from| d.closes_at > from)
                && search.to.is_none_or(|to| d.opens_at < to)
        })
        .collect();
    hits.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.id.to_string().cmp(&b.0.id.to_string()))
    });
    let total = hits.len() as i64;
    let page = hits
        .into_iter()
        .skip(search.offset as usize)
        .take(search.limit as usize)
        .map(|(d, _)| d.clone())
        .collect();
    (page, total)
}

/// Search by words, region, status, method and window, alone and together, each page
/// against a recount of the stored decisions; a changed title is found by its new words
/// only; stemmed words match.
async fn decision_search(store: Arc<dyn MetadataStore>) {
    store.migrate().await.unwrap();
    let owner = user("owner");
    store.create_user(&owner, 1).await.unwrap();
    let mut made = Vec::new();
    for n in 0..40u32 {
        let decision = searchable(n);
        // Two decisions a second: ties on the time are ordered by id.
        let created_at = 100 + i64::from(n / 2);
        store
            .put_decision(&decision, owner.id, created_at)
            .await
            .unwrap();
        made.push((decision, created_at));
    }
    let search = |words: &[&str]| DecisionSearch {
        words: words.iter().map(|w| w.to_string()).collect(),
        now: SEARCH_NOW,
        limit: 100,
        ..Default::default()
    };
    let mut searches = vec![
        search(&[]),
        search(&["river"]),
        search(&["RIVER"]),
        search(&["river", "park"]),
        search(&["library", "school", "budget"]),
        search(&["nowhere"]),
    ];
    for status in DecisionStatus::ALL {
        searches.push(DecisionSearch {
            status: Some(status),
            ..search(&[])
        });
        searches.push(DecisionSearch {
            status: Some(status),
            region: Some("south".into()),
            ..search(&["park"])
        });
    }
    searches.extend([
        DecisionSearch {
            region: Some("north".into()),
            ..search(&[])
        },
        DecisionSearch {
            region: Some("nowhere".into()),
            ..search(&[])
        },
        DecisionSearch {
            method: Some(Method::SingleChoice),
            ..search(&["budget"])
        },
        DecisionSearch {
            from: Some(SEARCH_NOW),
            ..search(&[])
        },
        DecisionSearch {
            to: Some(SEARCH_NOW),
            ..search(&["school"])
        },
        DecisionSearch {
            from: Some(2_500),
            to: Some(2_600),
            region: Some("east".into()),
            ..search(&[])
        },
    ]);
    for wanted in &searches {
        let found = store.search_decisions(wanted).await.unwrap();
        let (decisions, total) = expected_search(&made, wanted);
        assert_eq!(found.total, total, "{wanted:?}");
        assert_eq!(found.decisions, decisions, "{wanted:?}");
        // Page by page, the pages put together are the whole answer, in the same order.
        let mut paged = Vec::new();
        for page in 0.. {
            let one = DecisionSearch {
                offset: page * 7,
                limit: 7,
                ..wanted.clone()
            };
            let found = store.search_decisions(&one).await.unwrap();
            assert_eq!(found.total, total, "{one:?}");
            assert_eq!(found.decisions, expected_search(&made, &one).0, "{one:?}");
            if found.decisions.is_empty() {
                break;
            }
            paged.extend(found.decisions);
        }
        assert_eq!(paged, decisions, "{wanted:?}");
    }
    assert!(
        searches
            .iter()
            .any(|s| expected_search(&made, s).1 > 7 && s.words.len() == 1),
        "a words search spans pages"
    );

    // A new title is found by its words, the old ones no longer.
    let (first, created_at) = made[1].clone();
    let renamed = Decision {
        title: "Proposal 1: a new bridge".into(),
        ..first
    };
    store
        .put_decision(&renamed, owner.id, created_at)
        .await
        .unwrap();
    made[1].0 = renamed.clone();
    for words in [&["bridge"][..], &["river"][..]] {
        let found = store.search_decisions(&search(words)).await.unwrap();
        assert_eq!(found.decisions, expected_search(&made, &search(words)).0);
    }
    let found = store.search_decisions(&search(&["bridge"])).await.unwrap();
    assert_eq!(found.decisions, vec![renamed]);

    // Words are stemmed alike in the text and the query: "floods" finds "Flooding".
    let flooding = Decision {
        title: "Flooding on the lower meadows".into(),
        description: "Dykes or retention basins?".into(),
        ..decision("")
    };
    store.put_decision(&flooding, owner.id, 500).await.unwrap();
    for words in [&["floods"][..], &["meadow", "basin"][..], &["DYKES"][..]] {
        let found = store.search_decisions(&search(words)).await.unwrap();
        assert_eq!(found.decisions, vec![flooding.clone()], "{words:?}");
    }
    assert_eq!(
        DecisionSearch::words_of("\"flood\" OR -basin* title:x"),
        vec!["flood", "OR", "basin", "title", "x"]
    );
    // Query syntax of either engine is only words here: nothing is an operator.
    let odd = DecisionSearch {
        words: DecisionSearch::words_of("NOT \"meadows\" NEAR(basins) *"),
        ..search(&[])
    };
    assert!(
        store
            .search_decisions(&odd)
            .await
            .unwrap()
            .decisions
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_decision_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap();
    decision_search(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_decision_search() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    decision_search(Arc::new(store)).await;
}

/// Decisions stored before migration 0012 (a body without a description, no search
/// columns) are found by their words, region and method once it has run.
async fn decisions_from_before_search_are_found(
    store: &dyn MetadataStore,
    dialect: &str,
    apply: impl AsyncFn(&str),
) {
    apply(&canopy_testkit::migrations_before(dialect, "0012")).await;
    let owner = user("owner");
    store.create_user(&owner, 1).await.unwrap();
    let old = Decision {
        title: "Dredge the harbour?".into(),
        region: "south".into(),
        ..decision("")
    };
    let mut body = serde_json::to_value(&old).unwrap();
    body.as_object_mut().unwrap().remove("description");
    apply(&format!(
        "INSERT INTO decisions (id, owner, body, opens_at, closes_at, created_at) \
         VALUES ('{}', '{}', '{body}', {}, {}, 7)",
        old.id, owner.id, old.opens_at, old.closes_at
    ))
    .await;
    assert_eq!(
        store.migrate().await.unwrap(),
        vec![
            "0012_decision_search",
            "0013_decision_lifecycle",
            "0014_impact_statements"
        ]
    );
    let search = DecisionSearch {
        words: vec!["harbour".into()],
        region: Some("south".into()),
        method: Some(Method::SingleChoice),
        now: SEARCH_NOW,
        limit: 10,
        ..Default::default()
    };
    let found = store.search_decisions(&search).await.unwrap();
    assert_eq!((found.decisions, found.total), (vec![old], 1));
}

#[tokio::test]
async fn sqlite_decisions_from_before_search_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap();
    let pool = store.pool().clone();
    decisions_from_before_search_are_found(&store, "sqlite", async |script: &str| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_decisions_from_before_search_are_found() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    let pool = store.pool().clone();
    decisions_from_before_search_are_found(&store, "postgres", async |script: &str| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}
