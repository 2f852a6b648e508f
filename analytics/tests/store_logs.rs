//! The store's audit trail and decision history as lake tables (issue 19): copied after
//! the lake's mark, every entry is in `audit_trail` / `decision_history` exactly once,
//! whatever restarts and failed flushes came between, and SQL gives back exactly the
//! store's entries. The audit trail is for auditors and admins: an analyst's SQL does not
//! see it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use canopy_analytics::{
    AuditEntry, HistoryEntry, LakeConfig, LakeQuery, LakeReader, LakeSql, LakeWriter, TABLES,
};
use proptest::prelude::*;

/// 2026-06-01T00:00:00Z.
const START: i64 = 1_780_272_000_000_000;
const DAY: i64 = 86_400_000_000;
const MINUTE: i64 = 60_000_000;

/// What happens between two checks.
#[derive(Clone, Debug)]
enum Step {
    /// The store gains entries: each `gap_minutes` after the one before, give or take the
    /// skew of the replica that wrote it (up to two hours either way, so that around
    /// midnight a later entry is often of an earlier day).
    Append {
        count: usize,
        gap_minutes: i64,
        skews: Vec<i64>,
    },
    Flush,
    /// A flush that cannot write the folder of the `nth` new day among the entries it
    /// copies: the files before it are written, that one and the rest are not.
    FailingFlush {
        nth: usize,
    },
    Restart,
    Compact,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1usize..12, 1i64..240, proptest::collection::vec(-120i64..120, 12)).prop_map(
            |(count, gap_minutes, skews)| Step::Append { count, gap_minutes, skews }
        ),
        2 => Just(Step::Flush),
        2 => (0usize..3).prop_map(|nth| Step::FailingFlush { nth }),
        1 => Just(Step::Restart),
        1 => Just(Step::Compact),
    ]
}

/// The store's two logs, as the node copies them.
#[derive(Default)]
struct Store {
    trail: Vec<AuditEntry>,
    history: Vec<HistoryEntry>,
    /// The time of the last entry before its writer's skew.
    clock: i64,
}

impl Store {
    fn append(&mut self, gap_minutes: i64, skew_minutes: i64) {
        self.clock += gap_minutes * MINUTE;
        // Two hours in, so that no skew puts an entry before the first day.
        let at = START + 120 * MINUTE + self.clock + skew_minutes * MINUTE;
        let seq = self.trail.len() as i64 + 1;
        let prev_hash = self
            .trail
            .last()
            .map_or_else(|| "0".repeat(64), |e| e.hash.clone());
        self.trail.push(AuditEntry {
            seq,
            at,
            actor: format!("p-{:04}", seq % 7),
            action: ["login", "verify_user", "analytics_sql"][seq as usize % 3].into(),
            detail: format!(r#"{{"n":{seq}}}"#),
            prev_hash,
            hash: format!("{seq:064x}"),
            hmac: (seq % 5 != 1).then(|| format!("{:064x}", seq * 31)),
        });
        self.history.push(HistoryEntry {
            seq,
            decision_id: format!("00000000-0000-0000-0000-{:012}", seq % 4),
            status: ["created", "opened", "closed", "final"][seq as usize % 4].into(),
            at: at + 1,
            actor: format!("p-{:04}", seq % 3),
            detail: "{}".into(),
        });
    }

    /// What a flush copies: the entries after the lake's marks.
    fn after(&self, writer: &LakeWriter) -> (Vec<AuditEntry>, Vec<HistoryEntry>) {
        let trail = writer.audit_trail_mark();
        let history = writer.decision_history_mark();
        (
            self.trail
                .iter()
                .filter(|e| e.seq > trail)
                .cloned()
                .collect(),
            self.history
                .iter()
                .filter(|e| e.seq > history)
                .cloned()
                .collect(),
        )
    }
}

fn flush(writer: &mut LakeWriter, store: &Store) -> Result<(), canopy_analytics::AnalyticsError> {
    let (trail, history) = store.after(writer);
    writer.write_audit_trail(trail)?;
    writer.write_decision_history(history)?;
    Ok(())
}

fn day_folder(lake: &Path, table: &str, at: i64) -> PathBuf {
    let mut day = at.div_euclid(DAY) - START / DAY;
    // From June 2026 on.
    let mut month = 6;
    for length in [30, 31, 31, 30, 31, 30, 31] {
        if day < length {
            break;
        }
        day -= length;
        month += 1;
    }
    assert!(month <= 12, "a test entry past 2026");
    lake.join(table)
        .join(format!("date=2026-{month:02}-{:02}", day + 1))
}

fn text(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch.column_by_name(column).unwrap().as_string::<i32>();
    (!array.is_null(row)).then(|| array.value(row).to_string())
}

fn int(batch: &RecordBatch, column: &str, row: usize) -> i64 {
    let array = batch.column_by_name(column).unwrap();
    match array.as_primitive_opt::<Int64Type>() {
        Some(ints) => ints.value(row),
        None => array.as_primitive::<TimestampMicrosecondType>().value(row),
    }
}

async fn audit_rows(sql: &LakeSql) -> Vec<AuditEntry> {
    let batches = sql
        .query("SELECT * FROM audit_trail ORDER BY seq")
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            rows.push(AuditEntry {
                seq: int(batch, "seq", row),
                at: int(batch, "at", row),
                actor: text(batch, "actor", row).unwrap(),
                action: text(batch, "action", row).unwrap(),
                detail: text(batch, "detail", row).unwrap(),
                prev_hash: text(batch, "prev_hash", row).unwrap(),
                hash: text(batch, "hash", row).unwrap(),
                hmac: text(batch, "hmac", row),
            });
        }
    }
    rows
}

async fn history_rows(sql: &LakeSql) -> Vec<HistoryEntry> {
    let batches = sql
        .query("SELECT * FROM decision_history ORDER BY seq")
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            rows.push(HistoryEntry {
                seq: int(batch, "seq", row),
                decision_id: text(batch, "decision_id", row).unwrap(),
                status: text(batch, "status", row).unwrap(),
                at: int(batch, "at", row),
                actor: text(batch, "actor", row).unwrap(),
                detail: text(batch, "detail", row).unwrap(),
            });
        }
    }
    rows
}

/// Every row's `date` is the day of its `at`.
async fn dates_agree(sql: &LakeSql, table: &str) -> i64 {
    let batches = sql
        .query(&format!(
            "SELECT COUNT(*) FROM {table} WHERE date <> CAST(at AS DATE)"
        ))
        .await
        .unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

proptest! {
    // Each case checks the lake in SQL after every step.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn issue_19_the_store_logs_are_in_the_lake_once_across_restarts_and_failed_flushes(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let config = LakeConfig::new(lake.clone());
        let mut writer = LakeWriter::open(config.clone()).unwrap();
        let sql = LakeSql::new(lake.clone(), Default::default()).as_reader(LakeReader::Admin);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut store = Store::default();
        for step in steps.iter().chain([&Step::Flush]) {
            match step {
                Step::Append { count, gap_minutes, skews } => {
                    for skew in &skews[..*count] {
                        store.append(*gap_minutes, *skew);
                    }
                }
                Step::Flush => flush(&mut writer, &store).unwrap(),
                Step::FailingFlush { nth } => {
                    // The nth day folder the flush would create, made unwritable (a file
                    // where the folder would be: root too is refused).
                    let (trail, _) = store.after(&writer);
                    let mut new_days = Vec::new();
                    for entry in &trail {
                        let folder = day_folder(&lake, "audit_trail", entry.at);
                        if !folder.exists() && !new_days.contains(&folder) {
                            new_days.push(folder);
                        }
                    }
                    match new_days.get(*nth) {
                        Some(blocked) => {
                            std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
                            std::fs::write(blocked, b"in the way").unwrap();
                            prop_assert!(flush(&mut writer, &store).is_err());
                            std::fs::remove_file(blocked).unwrap();
                        }
                        None => flush(&mut writer, &store).unwrap(),
                    }
                }
                Step::Restart => {
                    drop(writer);
                    writer = LakeWriter::open(config.clone()).unwrap();
                }
                Step::Compact => {
                    writer.compact().unwrap();
                }
            }
            // Always a prefix of the store's log, each entry once, as it is in the store.
            let trail = runtime.block_on(audit_rows(&sql));
            prop_assert_eq!(&trail[..], &store.trail[..trail.len()]);
            prop_assert_eq!(trail.last().map_or(0, |e| e.seq), writer.audit_trail_mark());
            let history = runtime.block_on(history_rows(&sql));
            prop_assert_eq!(&history[..], &store.history[..history.len()]);
            prop_assert_eq!(
                history.last().map_or(0, |e| e.seq),
                writer.decision_history_mark()
            );
        }
        // After the last flush, all of it.
        prop_assert_eq!(runtime.block_on(audit_rows(&sql)), store.trail);
        prop_assert_eq!(runtime.block_on(history_rows(&sql)), store.history);
        prop_assert_eq!(runtime.block_on(dates_agree(&sql, "audit_trail")), 0);
        prop_assert_eq!(runtime.block_on(dates_agree(&sql, "decision_history")), 0);
    }
}

async fn tables_seen(sql: &LakeSql) -> BTreeSet<String> {
    let batches = sql
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|batch| {
            let names = batch.column(0).as_string::<i32>();
            (0..names.len()).map(|row| names.value(row).to_string())
        })
        .collect()
}

/// The audit trail is shown to whoever `GET /api/v1/audit/trail` shows it to: auditors and
/// admins. An analyst's query does not see the table at all.
#[tokio::test(flavor = "multi_thread")]
async fn issue_19_only_auditors_and_admins_read_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut writer = LakeWriter::open(LakeConfig::new(lake.clone())).unwrap();
    let mut store = Store::default();
    for _ in 0..3 {
        store.append(10, 0);
    }
    flush(&mut writer, &store).unwrap();
    let sql = LakeSql::new(lake, Default::default());

    let all: BTreeSet<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let analyst = sql.as_reader(LakeReader::Analyst);
    let seen = tables_seen(&analyst).await;
    assert!(!seen.contains("audit_trail"));
    assert_eq!(seen.len(), all.len() - 1);
    let refused = analyst
        .query("SELECT COUNT(*) FROM audit_trail")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "sql", "{refused}");
    assert_eq!(
        tables_seen(&sql).await,
        seen,
        "a lake's SQL is an analyst's by default"
    );
    assert_eq!(history_rows(&analyst).await, store.history);

    let auditor = sql.as_reader(LakeReader::Auditor);
    assert_eq!(
        tables_seen(&auditor).await,
        ["audit_trail", "decisions", "decision_history"]
            .map(String::from)
            .into()
    );
    assert_eq!(audit_rows(&auditor).await, store.trail);
    assert!(auditor.query("SELECT COUNT(*) FROM votes").await.is_err());

    let admin = sql.as_reader(LakeReader::Admin);
    assert_eq!(tables_seen(&admin).await, all);
    assert_eq!(audit_rows(&admin).await, store.trail);

    // The clones share their sessions, each reader's its own: after the others' queries,
    // an analyst still has no audit trail and an auditor no votes.
    assert_eq!(tables_seen(&analyst).await, seen);
    assert!(analyst.query("SELECT * FROM audit_trail").await.is_err());
    assert!(auditor.query("SELECT * FROM votes").await.is_err());
}
