//! Tables copied from the metadata store's append-only, numbered logs: `audit_trail` (the
//! hash-chained audit trail, for auditors) and `decision_history` (every status change of
//! every decision).
//!
//! Both are sink tables of one group each, ordered by the store's sequence number: the
//! footer's mark is the last entry copied, so a copy resumes after it and a restart neither
//! loses nor repeats an entry. Their times are the wall clocks of whichever replica wrote
//! the entry, so a later entry may be of an earlier day (clocks a little apart, around
//! midnight); [`StoreLogLake::append_in_order`] writes such a run as files in sequence
//! order, so that a crash between two of them leaves a prefix of the log.

use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::lake::day_of;
use crate::sinks::{SinkLake, SinkTable};

/// The one group of a store log's marks.
const LOG_GROUP: &str = "log";

/// A table copied from a numbered log of the store: one group, ordered by the entry's
/// sequence number.
pub trait StoreLog: SinkTable {}

/// A table of the lake copied from a numbered log of the metadata store.
pub type StoreLogLake<T> = SinkLake<T>;

impl<T: StoreLog> SinkLake<T> {
    /// The sequence number of the last entry in the table (0: none yet); the next copy
    /// starts after it.
    pub fn last_seq(&self) -> i64 {
        self.mark(LOG_GROUP).unwrap_or(0)
    }

    /// Writes the entries after [`last_seq`](Self::last_seq), in sequence order: each run of
    /// consecutive entries of one day is one file carrying the mark of its last entry.
    /// Returns the entries written.
    pub fn append_in_order(&mut self, mut rows: Vec<T::Row>) -> Result<u64, AnalyticsError> {
        rows.sort_by_key(T::order);
        let mut written = 0;
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let day = day_of(T::time_micros(&first));
            let mut run = vec![first];
            while let Some(next) = rows.next_if(|row| day_of(T::time_micros(row)) == day) {
                run.push(next);
            }
            written += self.append(run)?;
        }
        Ok(written)
    }
}

/// One entry of the audit trail, as `GET /api/v1/audit/trail` shows it to auditors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    /// UTC microseconds.
    pub at: i64,
    /// The account's pseudonym, or what acted without an account.
    pub actor: String,
    pub action: String,
    /// JSON.
    pub detail: String,
    /// Hex SHA-256 of the entry before (the chain's link).
    pub prev_hash: String,
    pub hash: String,
    /// Hex HMAC-SHA256 under the audit key; none before the store had the key.
    pub hmac: Option<String>,
}

/// The `audit_trail` table.
#[derive(Debug)]
pub struct AuditTrail;
pub type AuditTrailLake = StoreLogLake<AuditTrail>;

impl TableLayout for AuditTrail {
    type Row = AuditEntry;
    const NAME: &'static str = "audit_trail";

    fn columns<'r>(rows: &'r [&'r AuditEntry], day: i32) -> Columns<'r, AuditEntry> {
        Columns::of(rows)
            .int64("seq", |r| r.seq)
            .utc_micros("at", |r| r.at)
            .text("actor", |r| &r.actor)
            .text("action", |r| &r.action)
            .text("detail", |r| &r.detail)
            .text("prev_hash", |r| &r.prev_hash)
            .text("hash", |r| &r.hash)
            .optional_text("hmac", |r| r.hmac.as_deref())
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0]
    }
}

impl SinkTable for AuditTrail {
    fn group(_row: &AuditEntry) -> String {
        LOG_GROUP.into()
    }

    fn order(row: &AuditEntry) -> i64 {
        row.seq
    }

    fn time_micros(row: &AuditEntry) -> i64 {
        row.at
    }
}

impl StoreLog for AuditTrail {}

/// One status change of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: i64,
    pub decision_id: String,
    /// created, edited, closed, final or cancelled.
    pub status: String,
    /// UTC microseconds.
    pub at: i64,
    /// The account's audit pseudonym, or the process (`schedule`, `engine`).
    pub actor: String,
    /// JSON.
    pub detail: String,
}

/// The `decision_history` table.
#[derive(Debug)]
pub struct DecisionHistory;
pub type DecisionHistoryLake = StoreLogLake<DecisionHistory>;

impl TableLayout for DecisionHistory {
    type Row = HistoryEntry;
    const NAME: &'static str = "decision_history";

    fn columns<'r>(rows: &'r [&'r HistoryEntry], day: i32) -> Columns<'r, HistoryEntry> {
        Columns::of(rows)
            .int64("seq", |r| r.seq)
            .text("decision_id", |r| &r.decision_id)
            .text("status", |r| &r.status)
            .utc_micros("at", |r| r.at)
            .text("actor", |r| &r.actor)
            .text("detail", |r| &r.detail)
            .date32("date", |_| day)
    }

    /// A decision's changes together, in the order they happened.
    fn sort_columns() -> Vec<usize> {
        vec![1, 0]
    }
}

impl SinkTable for DecisionHistory {
    fn group(_row: &HistoryEntry) -> String {
        LOG_GROUP.into()
    }

    fn order(row: &HistoryEntry) -> i64 {
        row.seq
    }

    fn time_micros(row: &HistoryEntry) -> i64 {
        row.at
    }
}

impl StoreLog for DecisionHistory {}
