//! The node's analytics lake: on every flush the logs' new entries, the tally changes and
//! final feature windows the dataflows published, the new signed checkpoints, the
//! decisions and the store's new audit entries and decision status changes go to Parquet
//! files; every few flushes small files are merged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use canopy_analytics::{
    AuditEntry, CheckpointEntry, FinalWindows, HistoryEntry, LakeConfig, LakeLocation, LakeShare,
    LakeViews, LakeWriter, Published, SqlLimits, TallyChange, WindowFeature, WriterReport,
};
use canopy_ingest::{SensorLog, VoteLog};

use crate::NodeError;
use canopy_serving::store::MetadataStore;

/// The analytics lake a node keeps.
#[derive(Clone, Debug)]
pub struct LakeSettings {
    /// A local folder or a bucket prefix.
    pub location: LakeLocation,
    /// How often new history goes to files (what SQL sees lags by at most this).
    pub flush_interval: Duration,
    /// Small files are merged every this many flushes.
    pub compact_every: u32,
    /// What one query may take.
    pub sql: SqlLimits,
    /// Queries that may run at once (HTTP and the PostgreSQL protocol each).
    pub concurrent_queries: usize,
    /// Where the lake's SQL is served over the PostgreSQL protocol (none: not served).
    pub pg_listen: Option<std::net::SocketAddr>,
    /// k: a tally cell's change is written once at least this many voters moved it.
    pub min_group_voters: u64,
    /// Which part of a shared lake this process writes (a cluster's worker process); a
    /// node alone writes all of it.
    pub share: LakeShare,
}

impl LakeSettings {
    pub fn new(location: impl Into<LakeLocation>) -> Self {
        Self {
            location: location.into(),
            flush_interval: Duration::from_secs(10),
            compact_every: 30,
            sql: SqlLimits {
                timeout: Duration::from_secs(120),
                memory_bytes: 2 << 30,
                target_partitions: 2,
            },
            concurrent_queries: 4,
            pg_listen: None,
            min_group_voters: 5,
            share: LakeShare::Alone,
        }
    }
}

/// Entries of the store's logs (audit trail, decision history) one page reads.
const STORE_LOG_PAGE: i64 = 1_000;
/// Entries of each store log one flush copies at most, so that catching up with a long
/// trail neither holds it all in memory nor writes one file of it.
const STORE_LOG_ROWS_PER_FLUSH: usize = 100_000;

/// How long a copy waits at a gap in a store log's sequence before it takes the gap for a
/// row that will never show (far longer than any transaction of the store runs).
const GAP_WAIT: Duration = Duration::from_secs(30);

/// Per store log, the missing sequence number the copy waits at, and since when.
#[derive(Default)]
struct Gaps {
    audit_trail: Option<(i64, Instant)>,
    decision_history: Option<(i64, Instant)>,
}

/// A store log's entries after `mark`, oldest first, at most [`STORE_LOG_ROWS_PER_FLUSH`]
/// (the rest follow at the next flushes), up to the first gap in their sequence numbers.
///
/// On PostgreSQL a row takes its number when it is inserted and shows when its transaction
/// commits, so a row can show before one numbered below it: copying it would move the mark
/// past the other for good. So the copy stops at a gap, and only once the same gap has
/// lasted [`GAP_WAIT`] takes it for a row that never committed (or was deleted: the trail's
/// check reports that) and goes on. The store is the rows' source, so a failed flush keeps
/// nothing: the next one reads them again from the lake's mark.
async fn entries_after<Row, Page>(
    mark: i64,
    page: impl Fn(i64) -> Page,
    seq: impl Fn(&Row) -> i64,
    waiting: &mut Option<(i64, Instant)>,
    gap_wait: Duration,
) -> Result<Vec<Row>, NodeError>
where
    Page: std::future::Future<Output = Result<Vec<Row>, canopy_serving::ServingError>>,
{
    let mut rows = Vec::new();
    let mut next = mark + 1;
    while rows.len() < STORE_LOG_ROWS_PER_FLUSH {
        let fetched = page(next - 1).await?;
        let full = fetched.len() as i64 == STORE_LOG_PAGE;
        for row in fetched {
            if seq(&row) != next {
                match *waiting {
                    Some((missing, since)) if missing == next && since.elapsed() >= gap_wait => {}
                    Some((missing, _)) if missing == next => return Ok(rows),
                    _ => {
                        *waiting = Some((next, Instant::now()));
                        return Ok(rows);
                    }
                }
            }
            *waiting = None;
            next = seq(&row) + 1;
            rows.push(row);
        }
        if !full {
            break;
        }
    }
    Ok(rows)
}

/// Rows a flush took from the sinks and has not written yet: kept across a failed flush, so
/// nothing is lost while the disk is full or the folder unwritable.
#[derive(Default)]
struct Unwritten {
    tally_changes: Vec<TallyChange>,
    window_features: Vec<WindowFeature>,
}

/// Everything the lake task needs.
///
/// In a cluster's worker process (`settings.share`), `votes` and `sensors` are the whole
/// logs: the writer copies only the partitions this process's workers read. `tally_changes`
/// records what this process's workers publish; `final_windows` must likewise collect only
/// the windows this process's workers compute (the features dataflow's sink in this
/// process). Decisions and record checkpoints are written, and the lake compacted, by
/// process 0 alone.
pub(crate) struct LakeFeed {
    pub settings: LakeSettings,
    pub writer: Arc<Mutex<LakeWriter>>,
    pub store: Arc<dyn MetadataStore>,
    pub votes: Arc<dyn VoteLog>,
    pub sensors: Option<Arc<dyn SensorLog>>,
    pub tally_changes: Option<Arc<LakeViews>>,
    pub final_windows: Option<Arc<FinalWindows>>,
    unwritten: Arc<Mutex<Unwritten>>,
    gaps: Mutex<Gaps>,
}

impl LakeFeed {
    pub fn new(
        settings: LakeSettings,
        store: Arc<dyn MetadataStore>,
        votes: Arc<dyn VoteLog>,
        sensors: Option<Arc<dyn SensorLog>>,
        tally_changes: Option<Arc<LakeViews>>,
        final_windows: Option<Arc<FinalWindows>>,
    ) -> Result<Self, NodeError> {
        let mut config = LakeConfig::new(settings.location.clone());
        config.min_group_voters = settings.min_group_voters;
        config.share = settings.share.clone();
        let writer = LakeWriter::open(config)?;
        Ok(Self {
            settings,
            writer: Arc::new(Mutex::new(writer)),
            store,
            votes,
            sensors,
            tally_changes,
            final_windows,
            unwritten: Arc::default(),
            gaps: Mutex::default(),
        })
    }

    /// Writes what is new since the last flush.
    pub async fn flush(&self) -> Result<WriterReport, NodeError> {
        // The whole lake's tables are one process's: the others need not read the store.
        let whole_lake = self.settings.share.keeps_whole_lake();
        let decisions = match whole_lake {
            true => self.store.decisions().await?,
            false => Vec::new(),
        };
        let latest_checkpoints = match whole_lake {
            true => self.store.latest_checkpoints().await?,
            false => Vec::new(),
        };
        let mut checkpoints = Vec::new();
        for latest in latest_checkpoints {
            let id = latest.decision_id.to_string();
            let mark = lock(&self.writer).checkpoint_mark(&id);
            if mark.is_some_and(|mark| latest.tree_size <= mark) {
                continue;
            }
            for row in self.store.checkpoints(latest.decision_id).await? {
                if mark.is_none_or(|mark| row.tree_size > mark) {
                    checkpoints.push(CheckpointEntry {
                        decision_id: id.clone(),
                        tree_size: row.tree_size,
                        root: row.root,
                        note: row.note,
                        log_partition: row.log_partition as i32,
                        log_offset: row.log_offset,
                        cut_at: row.cut_at,
                    });
                }
            }
        }
        let (audit_trail, decision_history) = match whole_lake {
            true => {
                let (audit_mark, history_mark) = {
                    let writer = lock(&self.writer);
                    (writer.audit_trail_mark(), writer.decision_history_mark())
                };
                (
                    self.audit_entries_after(audit_mark).await?,
                    self.history_entries_after(history_mark).await?,
                )
            }
            false => (Vec::new(), Vec::new()),
        };
        let (writer, votes, sensors, unwritten) = (
            Arc::clone(&self.writer),
            Arc::clone(&self.votes),
            self.sensors.clone(),
            Arc::clone(&self.unwritten),
        );
        let (tally_changes, final_windows) =
            (self.tally_changes.clone(), self.final_windows.clone());
        in_background(move || {
            let mut writer = lock(&writer);
            let mut unwritten = lock(&unwritten);
            let mut report = WriterReport::default();
            writer.write_decisions(&decisions)?;
            report.votes = writer.sync_votes(votes.as_ref())?;
            if let Some(sensors) = &sensors {
                report.sensor_readings = writer.sync_readings(sensors.as_ref())?;
            }
            let mut published = Published::default();
            if let Some(views) = &tally_changes {
                published = views.take_published();
                unwritten.tally_changes.append(&mut published.rows);
            }
            published.rows = unwritten.tally_changes.clone();
            report.tally_changes = writer.write_published(published)?;
            unwritten.tally_changes.clear();
            if let Some(windows) = &final_windows {
                unwritten.window_features.extend(windows.take_final());
            }
            report.window_features =
                writer.write_window_features(unwritten.window_features.clone())?;
            unwritten.window_features.clear();
            report.checkpoints = writer.write_checkpoints(checkpoints)?;
            report.audit_trail = writer.write_audit_trail(audit_trail)?;
            report.decision_history = writer.write_decision_history(decision_history)?;
            Ok::<_, NodeError>(report)
        })
        .await?
    }

    /// The audit trail's entries to copy after the lake's mark (see [`entries_after`]).
    async fn audit_entries_after(&self, mark: i64) -> Result<Vec<AuditEntry>, NodeError> {
        let mut waiting = lock(&self.gaps).audit_trail;
        let records = entries_after(
            mark,
            |after| self.store.audit_page(after, STORE_LOG_PAGE),
            |record| record.seq,
            &mut waiting,
            GAP_WAIT,
        )
        .await;
        lock(&self.gaps).audit_trail = waiting;
        Ok(records?
            .into_iter()
            .map(|record| AuditEntry {
                seq: record.seq,
                at: record.at,
                actor: record.actor,
                action: record.action,
                detail: record.detail,
                prev_hash: record.prev_hash,
                hash: record.hash,
                hmac: record.hmac,
            })
            .collect())
    }

    /// The decisions' status changes to copy after the lake's mark (see [`entries_after`]).
    /// An account is named by its audit pseudonym, as the audit trail names it: never by
    /// its id, which an erasure could not take back out of the lake's files.
    async fn history_entries_after(&self, mark: i64) -> Result<Vec<HistoryEntry>, NodeError> {
        let mut waiting = lock(&self.gaps).decision_history;
        let rows = entries_after(
            mark,
            |after| self.store.history_page(after, STORE_LOG_PAGE),
            |row| row.seq,
            &mut waiting,
            GAP_WAIT,
        )
        .await;
        lock(&self.gaps).decision_history = waiting;
        let rows = rows?;
        let mut pseudonyms: HashMap<uuid::Uuid, String> = HashMap::new();
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let actor = match row.actor.parse::<uuid::Uuid>() {
                Ok(account) => match pseudonyms.get(&account) {
                    Some(pseudonym) => pseudonym.clone(),
                    None => {
                        let pseudonym = self.store.user_pseudonym(account).await?;
                        pseudonyms.insert(account, pseudonym.clone());
                        pseudonym
                    }
                },
                // The schedule or the engine.
                Err(_) => row.actor,
            };
            entries.push(HistoryEntry {
                seq: row.seq,
                decision_id: row.decision_id.to_string(),
                status: row.status,
                at: row.at,
                actor,
                detail: row.detail,
            });
        }
        Ok(entries)
    }

    async fn compact(&self) -> Result<(u64, u64), NodeError> {
        let writer = Arc::clone(&self.writer);
        in_background(move || lock(&writer).compact())
            .await?
            .map_err(NodeError::from)
    }
}

/// Runs `work` on a thread of its own at the lowest CPU priority and awaits it. A flush
/// encodes and compresses for up to seconds; on a small machine the threads that answer
/// votes come first, and the lake catches up when they leave it a core.
async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NodeError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("canopy-lake".into())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            {
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
            }
            let _ = done.send(work());
        })
        .map_err(|e| NodeError::Internal(format!("starting the lake's thread: {e}")))?;
    result
        .await
        .map_err(|_| NodeError::Internal("the lake's thread panicked".into()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Flushes every interval until told to stop, then once more.
pub(crate) async fn lake_loop(feed: LakeFeed, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut flushes: u64 = 0;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(feed.settings.flush_interval) => false,
            _ = stop.changed() => true,
        } || *stop.borrow();
        let started = Instant::now();
        match feed.flush().await {
            Ok(report) if report.rows() > 0 => tracing::info!(
                votes = report.votes,
                sensor_readings = report.sensor_readings,
                tally_changes = report.tally_changes,
                window_features = report.window_features,
                checkpoints = report.checkpoints,
                audit_trail = report.audit_trail,
                decision_history = report.decision_history,
                ms = started.elapsed().as_millis() as u64,
                "analytics lake flushed"
            ),
            Ok(_) => {}
            Err(error) => tracing::error!(
                code = error.code(),
                %error,
                "the analytics lake could not be written; retrying at the next flush"
            ),
        }
        flushes += 1;
        if !stopping && flushes.is_multiple_of(u64::from(feed.settings.compact_every.max(1))) {
            match feed.compact().await {
                Ok((merged, deleted)) if merged + deleted > 0 => {
                    tracing::info!(merged, deleted, "analytics lake compacted")
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "compacting the analytics lake failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store log's rows after `after`, a page at a time, as the store answers.
    async fn page_of(rows: &[i64], after: i64) -> Result<Vec<i64>, canopy_serving::ServingError> {
        Ok(rows
            .iter()
            .copied()
            .filter(|&seq| seq > after)
            .take(STORE_LOG_PAGE as usize)
            .collect())
    }

    async fn copy(
        rows: &[i64],
        mark: i64,
        waiting: &mut Option<(i64, Instant)>,
        gap_wait: Duration,
    ) -> Vec<i64> {
        entries_after(
            mark,
            |after| page_of(rows, after),
            |&seq| seq,
            waiting,
            gap_wait,
        )
        .await
        .unwrap()
    }

    /// Row 3 commits after row 4 shows: the copy stops before the gap and, once row 3 shows,
    /// copies both in order; none is skipped.
    #[tokio::test]
    async fn a_row_that_commits_late_is_waited_for() {
        let mut waiting = None;
        let long = Duration::from_secs(3600);
        assert_eq!(copy(&[1, 2, 4, 5], 0, &mut waiting, long).await, [1, 2]);
        assert_eq!(waiting.map(|(missing, _)| missing), Some(3));
        assert_eq!(
            copy(&[1, 2, 4, 5], 2, &mut waiting, long).await,
            Vec::<i64>::new()
        );
        assert_eq!(
            copy(&[1, 2, 3, 4, 5], 2, &mut waiting, long).await,
            [3, 4, 5]
        );
        assert_eq!(waiting, None);
    }

    /// A row that never commits (a rolled-back insert) holds the copy up only for the wait.
    #[tokio::test]
    async fn a_gap_that_lasts_the_wait_is_passed() {
        let mut waiting = None;
        let rows = [1, 2, 4, 5];
        assert_eq!(copy(&rows, 0, &mut waiting, Duration::ZERO).await, [1, 2]);
        assert_eq!(copy(&rows, 2, &mut waiting, Duration::ZERO).await, [4, 5]);
        assert_eq!(waiting, None);
        // A gap first seen is waited for, whatever the wait.
        assert_eq!(copy(&[1, 3], 0, &mut waiting, Duration::ZERO).await, [1]);
    }

    /// A long log is copied in pages, at most a flush's worth at once.
    #[tokio::test]
    async fn a_long_log_is_copied_a_flush_at_a_time() {
        let rows: Vec<i64> = (1..=STORE_LOG_ROWS_PER_FLUSH as i64 + 10).collect();
        let mut waiting = None;
        let first = copy(&rows, 0, &mut waiting, GAP_WAIT).await;
        assert_eq!(first, rows[..STORE_LOG_ROWS_PER_FLUSH]);
        let rest = copy(&rows, *first.last().unwrap(), &mut waiting, GAP_WAIT).await;
        assert_eq!(rest, rows[STORE_LOG_ROWS_PER_FLUSH..]);
    }
}
