//! The decision lifecycle in the metadata store (migration 0013), one suite for SQLite and
//! PostgreSQL: edits only while scheduled, the first close in the log wins whatever order
//! the closes are recorded in, the first result wins, the history records each change, and
//! a search by status sees the stored lifecycle.

use std::collections::BTreeMap;
use std::sync::Arc;

use canopy_ingest::Position;
use canopy_schemas::{CloseKind, ComponentWeights, Decision, DecisionId, DecisionStatus, Method};
use canopy_serving::ServingError;
use canopy_serving::auth::Role;
use canopy_serving::store::*;
use canopy_testkit::TestDatabase;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use uuid::Uuid;

/// "Now" in these tests, µs.
const NOW: i64 = 1_000_000;

fn owner() -> UserRecord {
    UserRecord {
        id: Uuid::new_v4(),
        username: format!("owner-{}", Uuid::new_v4().simple()),
        password_hash: "$argon2id$not-a-real-hash".into(),
        role: Role::Operator,
        weight: 1_000_000,
        totp_secret: None,
        totp_enabled: false,
    }
}

/// A decision open over [`opens_at`, `closes_at`).
fn decision(title: &str, opens_at: i64, closes_at: i64) -> Decision {
    Decision {
        electorate: Default::default(),
        credits: 0,
        id: DecisionId::new_random(),
        title: title.into(),
        description: String::new(),
        region: "north".into(),
        options: vec!["yes".into(), "no".into()],
        opens_at,
        closes_at,
        weights: ComponentWeights::DEFAULT,
        quorum: 1,
        method: Method::SingleChoice,
    }
}

fn close(decision: DecisionId, offset: u64, kind: CloseKind) -> DecisionCloseRow {
    DecisionCloseRow {
        decision_id: decision,
        position: Position {
            partition: 3,
            offset,
        },
        kind,
        closed_at: NOW + offset as i64,
        closed_by: match kind {
            CloseKind::Schedule => None,
            CloseKind::Early | CloseKind::Cancel => Some(Uuid::from_u128(u128::from(offset) + 1)),
        },
    }
}

fn result(decision: DecisionId, statement: &str) -> DecisionResultRow {
    DecisionResultRow {
        decision_id: decision,
        statement: statement.into(),
        result: format!(r#"{{"winner":0,"statement":"{statement}"}}"#),
        tree_size: 7,
        root: "ab".repeat(32),
        position: Position {
            partition: 3,
            offset: 12,
        },
        finalized_at: NOW + 50,
    }
}

/// The statuses of a decision's history rows, oldest first.
async fn history_of(store: &dyn MetadataStore, decision: DecisionId) -> Vec<String> {
    store
        .history_page(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.decision_id == decision)
        .map(|row| row.status)
        .collect()
}

fn status_of(kind: CloseKind) -> DecisionStatus {
    match kind {
        CloseKind::Cancel => DecisionStatus::Cancelled,
        CloseKind::Schedule | CloseKind::Early => DecisionStatus::Closed,
    }
}

/// Edits while scheduled only, checked by the write itself.
async fn edits(store: &dyn MetadataStore, owner: Uuid) {
    let scheduled = decision("Plant a hedge", NOW + 10, NOW + 20);
    store.put_decision(&scheduled, owner, 1).await.unwrap();
    let stored = store.stored_decision(scheduled.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.decision.clone(), stored.owner, stored.lifecycle),
        (scheduled.clone(), owner, None)
    );
    assert_eq!(stored.status_at(NOW), DecisionStatus::Scheduled);

    let renamed = Decision {
        title: "Plant an orchard".into(),
        options: vec!["apples".into(), "pears".into(), "plums".into()],
        opens_at: NOW + 5,
        closes_at: NOW + 30,
        ..scheduled.clone()
    };
    store.update_decision(&renamed, NOW).await.unwrap();
    let stored = store.stored_decision(scheduled.id).await.unwrap().unwrap();
    assert_eq!((stored.decision, stored.owner), (renamed.clone(), owner));
    // The search sees the edit: the new words, the new window.
    let search = DecisionSearch {
        words: vec!["orchard".into()],
        status: Some(DecisionStatus::Scheduled),
        now: NOW,
        limit: 10,
        ..Default::default()
    };
    let found = store.search_decisions(&search).await.unwrap();
    assert_eq!(found.decisions, vec![renamed.clone()]);
    let hedge = DecisionSearch {
        words: vec!["hedge".into()],
        ..search.clone()
    };
    assert_eq!(store.search_decisions(&hedge).await.unwrap().total, 0);

    // At its stored opening (not the edit's) it is no longer editable; nor once closed.
    let later = Decision {
        opens_at: NOW + 100,
        ..renamed.clone()
    };
    for now in [NOW + 5, NOW + 6] {
        let refused = store.update_decision(&later, now).await.unwrap_err();
        assert!(
            matches!(refused, ServingError::DecisionNotEditable { decision } if decision == renamed.id),
            "{refused:?}"
        );
    }
    store
        .record_close(&close(renamed.id, 1, CloseKind::Cancel))
        .await
        .unwrap();
    let refused = store.update_decision(&later, NOW).await.unwrap_err();
    assert_eq!(refused.code(), "decision_not_editable");
    assert_eq!(
        store
            .stored_decision(renamed.id)
            .await
            .unwrap()
            .unwrap()
            .decision,
        renamed
    );
    let unknown = decision("Nowhere", NOW + 10, NOW + 20);
    let refused = store.update_decision(&unknown, NOW).await.unwrap_err();
    assert!(
        matches!(refused, ServingError::NotFound { .. }),
        "{refused:?}"
    );
    assert_eq!(store.stored_decision(unknown.id).await.unwrap(), None);
}

/// Closes, results and the history together: what the engine and the finalizer record.
async fn closes_and_results(store: &dyn MetadataStore, owner: Uuid) {
    let early = decision("Early", 0, NOW * 2);
    let cancelled = decision("Cancelled", 0, NOW * 2);
    let scheduled = decision("Schedule", 0, NOW);
    for decision in [&early, &cancelled, &scheduled] {
        store.put_decision(decision, owner, 1).await.unwrap();
    }
    assert!(
        store
            .record_close(&close(early.id, 40, CloseKind::Early))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_close(&close(cancelled.id, 41, CloseKind::Cancel))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_close(&close(scheduled.id, 42, CloseKind::Schedule))
            .await
            .unwrap()
    );
    // A replay records the same close again: nothing changes.
    assert!(
        !store
            .record_close(&close(early.id, 40, CloseKind::Early))
            .await
            .unwrap()
    );

    let mut expected = vec![
        close(early.id, 40, CloseKind::Early),
        close(cancelled.id, 41, CloseKind::Cancel),
        close(scheduled.id, 42, CloseKind::Schedule),
    ];
    expected.sort_by_key(|close| close.decision_id.to_string());
    // These three, among the closes the other tests of this store recorded.
    let ours = [early.id, cancelled.id, scheduled.id];
    let closes: Vec<DecisionCloseRow> = store
        .closes()
        .await
        .unwrap()
        .into_iter()
        .filter(|close| ours.contains(&close.decision_id))
        .collect();
    assert_eq!(closes, expected);
    assert_eq!(
        store.decision_close(cancelled.id).await.unwrap(),
        Some(close(cancelled.id, 41, CloseKind::Cancel))
    );
    let mut unfinalized = vec![
        close(early.id, 40, CloseKind::Early),
        close(scheduled.id, 42, CloseKind::Schedule),
    ];
    unfinalized.sort_by_key(|close| close.decision_id.to_string());
    assert_eq!(store.unfinalized_closes().await.unwrap(), unfinalized);
    assert_eq!(
        store.decision_lifecycle(cancelled.id).await.unwrap(),
        Some(DecisionStatus::Cancelled)
    );

    // The first result wins; the decision is final; a later close does not undo that.
    assert!(
        store
            .store_result(&result(early.id, "first"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .store_result(&result(early.id, "second"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.decision_result(early.id).await.unwrap(),
        Some(result(early.id, "first"))
    );
    assert_eq!(store.decision_result(scheduled.id).await.unwrap(), None);
    assert_eq!(
        store.unfinalized_closes().await.unwrap(),
        vec![close(scheduled.id, 42, CloseKind::Schedule)]
    );
    assert!(
        store
            .record_close(&close(early.id, 39, CloseKind::Cancel))
            .await
            .unwrap()
    );
    let stored = store.stored_decision(early.id).await.unwrap().unwrap();
    assert_eq!(stored.lifecycle, Some(DecisionStatus::Final));
    assert_eq!(stored.status_at(NOW), DecisionStatus::Final);
    assert_eq!(history_of(store, early.id).await, vec!["closed", "final"]);
    assert_eq!(history_of(store, cancelled.id).await, vec!["cancelled"]);

    // The history rows as written: who, when, what.
    store
        .append_history(
            scheduled.id,
            "edited",
            NOW - 5,
            "someone",
            r#"{"fields":["title"]}"#,
        )
        .await
        .unwrap();
    let rows: Vec<HistoryRow> = store
        .history_page(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.decision_id == scheduled.id)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].status.as_str(), rows[0].at, rows[0].actor.as_str()),
        ("closed", NOW + 42, SCHEDULE_ACTOR)
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&rows[0].detail).unwrap(),
        serde_json::json!({ "kind": "schedule", "partition": 3, "offset": 42 })
    );
    assert_eq!(
        (
            rows[1].status.as_str(),
            rows[1].at,
            rows[1].actor.as_str(),
            rows[1].detail.as_str()
        ),
        ("edited", NOW - 5, "someone", r#"{"fields":["title"]}"#)
    );
    let final_row = store
        .history_page(0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.decision_id == early.id && row.status == "final")
        .unwrap();
    assert_eq!(
        (final_row.at, final_row.actor.as_str()),
        (NOW + 50, FINALIZER_ACTOR)
    );

    // Pages of the history put together are the whole history, in order.
    let whole = store.history_page(0, i64::MAX).await.unwrap();
    assert!(whole.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.history_page(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, whole);
}

/// A search by status finds exactly the decisions whose effective status it is, recounted
/// from the decisions and their lifecycles, at several instants; each found decision comes
/// with that status.
async fn search_by_status(store: &dyn MetadataStore, owner: Uuid) {
    let windows = [
        (NOW + 10, NOW + 20),
        (NOW - 10, NOW + 20),
        (NOW - 20, NOW - 10),
    ];
    // None: nothing recorded; else the close kind, and whether a result is stored.
    let lifecycles = [
        None,
        Some((CloseKind::Early, false)),
        Some((CloseKind::Cancel, false)),
        Some((CloseKind::Schedule, true)),
        Some((CloseKind::Early, true)),
    ];
    let mut made: Vec<(Decision, Option<DecisionStatus>)> = Vec::new();
    let region = format!("r-{}", Uuid::new_v4().simple());
    for (n, (opens_at, closes_at)) in windows.into_iter().enumerate() {
        for (m, lifecycle) in lifecycles.into_iter().enumerate() {
            let decision = Decision {
                region: region.clone(),
                ..decision(&format!("Search {n} {m}"), opens_at, closes_at)
            };
            store
                .put_decision(&decision, owner, (n * 10 + m) as i64)
                .await
                .unwrap();
            let mut stored = None;
            if let Some((kind, finalized)) = lifecycle {
                store
                    .record_close(&close(decision.id, 5, kind))
                    .await
                    .unwrap();
                stored = Some(status_of(kind));
                if finalized {
                    store.store_result(&result(decision.id, "r")).await.unwrap();
                    stored = Some(DecisionStatus::Final);
                }
            }
            made.push((decision, stored));
        }
    }
    for now in [NOW - 30, NOW, NOW + 15, NOW + 25] {
        for status in DecisionStatus::ALL.map(Some).into_iter().chain([None]) {
            let search = DecisionSearch {
                region: Some(region.clone()),
                status,
                now,
                limit: 100,
                ..Default::default()
            };
            let found = store.search_decisions(&search).await.unwrap();
            let mut expected: Vec<(Decision, DecisionStatus)> = made
                .iter()
                .map(|(d, lifecycle)| (d.clone(), effective_status(d, *lifecycle, now)))
                .filter(|(_, effective)| status.is_none_or(|s| s == *effective))
                .collect();
            expected.reverse(); // newest first
            let got: Vec<(Decision, DecisionStatus)> =
                found.decisions.into_iter().zip(found.statuses).collect();
            assert_eq!(got, expected, "{status:?} at {now}");
            assert_eq!(found.total, expected.len() as i64);
        }
    }
}

/// One store through every lifecycle method.
async fn lifecycle(store: Arc<dyn MetadataStore>) {
    store.migrate().await.unwrap();
    let owner = owner();
    store.create_user(&owner, 1).await.unwrap();
    edits(store.as_ref(), owner.id).await;
    closes_and_results(store.as_ref(), owner.id).await;
    search_by_status(store.as_ref(), owner.id).await;
}

#[tokio::test]
async fn sqlite_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap();
    lifecycle(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_lifecycle() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    lifecycle(Arc::new(store)).await;
}

/// Closes recorded in any order, replays among them: the close with the smallest offset is
/// the one stored, each call says whether it changed what is stored, and the history holds
/// one row per change of status, as a recount of the calls in their order gives.
fn any_order_keeps_the_first_close(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn MetadataStore>,
) {
    let owner = owner();
    runtime.block_on(async {
        store.migrate().await.unwrap();
        store.create_user(&owner, 1).await.unwrap();
    });
    let kinds = prop::sample::select(CloseKind::ALL.to_vec());
    let calls = prop::collection::btree_map(0u64..1_000, kinds, 1..6)
        .prop_flat_map(|closes: BTreeMap<u64, CloseKind>| {
            let entries: Vec<(u64, CloseKind)> = closes.into_iter().collect();
            let replays = prop::collection::vec(prop::sample::select(entries.clone()), 0..4);
            (Just(entries), replays)
        })
        .prop_flat_map(|(entries, replays)| {
            let mut calls = entries;
            calls.extend(replays);
            Just(calls).prop_shuffle()
        });
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    runner
        .run(&calls, |calls| {
            runtime.block_on(async {
                let decision = decision("Raced", 0, NOW);
                store.put_decision(&decision, owner.id, 1).await.unwrap();
                let mut stored: Option<(u64, CloseKind)> = None;
                let mut lifecycle: Option<DecisionStatus> = None;
                let mut history = Vec::new();
                for &(offset, kind) in &calls {
                    let changed = store
                        .record_close(&close(decision.id, offset, kind))
                        .await
                        .unwrap();
                    let smaller = stored.is_none_or(|(first, _)| offset < first);
                    prop_assert_eq!(changed, smaller, "{:?} after {:?}", (offset, kind), stored);
                    if smaller {
                        stored = Some((offset, kind));
                        if lifecycle != Some(status_of(kind)) {
                            lifecycle = Some(status_of(kind));
                            history.push(status_of(kind).as_str().to_string());
                        }
                    }
                }
                let first = calls.iter().min_by_key(|(offset, _)| *offset).unwrap();
                prop_assert_eq!(
                    store.decision_close(decision.id).await.unwrap(),
                    Some(close(decision.id, first.0, first.1))
                );
                prop_assert_eq!(
                    store.decision_lifecycle(decision.id).await.unwrap(),
                    Some(status_of(first.1))
                );
                prop_assert_eq!(history_of(store.as_ref(), decision.id).await, history);
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn sqlite_closes_in_any_order_keep_the_first() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime
        .block_on(SqliteStore::open(&dir.path().join("canopy.db")))
        .unwrap();
    any_order_keeps_the_first_close(&runtime, Arc::new(store));
}

#[test]
fn postgres_closes_in_any_order_keep_the_first() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create());
    let store = runtime
        .block_on(PostgresStore::connect(&database.url))
        .unwrap();
    any_order_keeps_the_first_close(&runtime, Arc::new(store));
}

/// Closers racing from two processes (two pools on one database): the smallest offset is
/// stored, exactly one call per decision reports storing it last, and the status changes
/// once in the history.
async fn racing_closers(first: Arc<dyn MetadataStore>, second: Arc<dyn MetadataStore>) {
    first.migrate().await.unwrap();
    let owner = owner();
    first.create_user(&owner, 1).await.unwrap();
    let decision = decision("Raced by two", 0, NOW);
    first.put_decision(&decision, owner.id, 1).await.unwrap();
    let racers: Vec<_> = (0..16u64)
        .map(|n| {
            let store = if n % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            let kind = if n % 3 == 0 {
                CloseKind::Schedule
            } else {
                CloseKind::Early
            };
            let row = close(decision.id, 100 - n * 5, kind);
            tokio::spawn(async move { store.record_close(&row).await })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let smallest = 100 - 15 * 5;
    assert_eq!(
        first.decision_close(decision.id).await.unwrap(),
        Some(close(decision.id, smallest, CloseKind::Schedule))
    );
    assert_eq!(
        history_of(first.as_ref(), decision.id).await,
        vec!["closed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_racing_closers_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("canopy.db");
    let first = SqliteStore::open(&path).await.unwrap();
    first.migrate().await.unwrap();
    let second = SqliteStore::open(&path).await.unwrap();
    racing_closers(Arc::new(first), Arc::new(second)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_closers_keep_the_first() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::connect(&database.url).await.unwrap();
    first.migrate().await.unwrap();
    let second = PostgresStore::connect(&database.url).await.unwrap();
    racing_closers(Arc::new(first), Arc::new(second)).await;
}
