//! What a running node does to keep its lake: the sinks that collect the dataflows'
//! output ([`LakeViews`], [`FinalWindows`]) and the [`LakeWriter`] that turns logs and
//! collected rows into files on every flush.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use canopy_dataflow::{
    CellTally, DataflowError, DecisionView, Owner, SensorViews, ViewRead, ViewStore, ViewUpdate,
    WindowKey, WindowUpdate,
};
use canopy_ingest::{Position, SensorLog, VoteLog};
use canopy_schemas::{Component, Decision, DecisionId};

use crate::AnalyticsError;
use crate::decisions::DecisionLake;
use crate::lake::{LakeConfig, LakeShare};
use crate::sinks::{
    CheckpointEntry, CheckpointLake, ReleaseGate, TallyChange, TallyChangeLake, WindowFeature,
    WindowFeatureLake,
};
use crate::store_logs::{AuditEntry, AuditTrailLake, DecisionHistoryLake, HistoryEntry};
use crate::votes::{ReadingLake, SyncCursor, VoteLake, sync_log};
use canopy_schemas::clock::now_micros;

type CellValues = (u64, u64);

#[derive(Default)]
struct Changes {
    /// Per decision, its cells as last published: (option, component) → (count, weight).
    cells: HashMap<DecisionId, HashMap<(u16, Component), CellValues>>,
    rows: Vec<TallyChange>,
    /// Per log partition, the end this process's workers saw published everywhere: every
    /// decision's tally as of it is what was last published of it.
    ends: HashMap<u32, u64>,
}

/// What [`LakeViews::take_published`] hands over.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The changes recorded since the last call, in the order published.
    pub rows: Vec<TallyChange>,
    /// Per log partition this process feeds, the end published everywhere: no recorded
    /// change is missing below it.
    pub ends: HashMap<u32, u64>,
}

/// A [`ViewStore`] in front of another that also records, per published epoch, every
/// tally cell that changed (the `tally_changes` table).
pub struct LakeViews {
    inner: Arc<dyn ViewStore>,
    changes: Mutex<Changes>,
}

impl std::fmt::Debug for LakeViews {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeViews").finish_non_exhaustive()
    }
}

impl LakeViews {
    pub fn new(inner: Arc<dyn ViewStore>) -> Self {
        Self {
            inner,
            changes: Mutex::new(Changes::default()),
        }
    }

    /// The changes recorded since the last call.
    pub fn take_changes(&self) -> Vec<TallyChange> {
        self.take_published().rows
    }

    /// The changes recorded since the last call, and the ends published as of them (taken
    /// together, so no change at or below an end is still to come).
    pub fn take_published(&self) -> Published {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        Published {
            rows: std::mem::take(&mut changes.rows),
            ends: changes.ends.clone(),
        }
    }

    fn record(&self, updates: &[ViewUpdate]) {
        let published_at = now_micros();
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let Changes { cells, rows, .. } = &mut *changes;
        for update in updates {
            let new: HashMap<(u16, Component), CellValues> = update
                .tally
                .iter()
                .flat_map(|tally| &tally.cells)
                .map(|c: &CellTally| ((c.option, c.component), (c.count, c.weight_sum)))
                .collect();
            let old = cells.remove(&update.decision).unwrap_or_default();
            let row =
                |(option, component): (u16, Component), (count, weight): CellValues| TallyChange {
                    decision_id: update.decision.to_string(),
                    option: i32::from(option),
                    component: component.as_str(),
                    count: count as i64,
                    weight_millionths: weight as i64,
                    as_of_partition: update.as_of.partition,
                    as_of_offset: update.as_of.offset,
                    published_at,
                };
            for (cell, values) in &new {
                if old.get(cell) != Some(values) {
                    rows.push(row(*cell, *values));
                }
            }
            for cell in old.keys() {
                if !new.contains_key(cell) {
                    rows.push(row(*cell, (0, 0)));
                }
            }
            if !new.is_empty() {
                cells.insert(update.decision, new);
            }
        }
    }
}

impl ViewStore for LakeViews {
    fn publish(&self, updates: Vec<ViewUpdate>) {
        self.record(&updates);
        self.inner.publish(updates);
    }

    fn advance(&self, partition: u32, end: u64) {
        // Called once the epoch is published everywhere: every change below `end` has been
        // recorded by whichever process publishes it.
        {
            let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
            let known = changes.ends.entry(partition).or_insert(end);
            *known = (*known).max(end);
        }
        self.inner.advance(partition, end);
    }

    fn fail(&self, reason: String) {
        self.inner.fail(reason);
    }

    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn frontier(&self, partition: u32) -> u64 {
        self.inner.frontier(partition)
    }

    fn get(&self, decision: DecisionId) -> Result<Option<DecisionView>, DataflowError> {
        self.inner.get(decision)
    }

    fn wait_for(&self, decision: DecisionId, position: Position, timeout: Duration) -> ViewRead {
        self.inner.wait_for(decision, position, timeout)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }
}

#[derive(Default)]
struct OpenWindows {
    windows: HashMap<WindowKey, WindowUpdate>,
    /// Per region: the latest event time (ms) of a reading its windows took.
    newest_reading: HashMap<u64, i64>,
}

/// Collects the features dataflow's window changes and hands over windows once they are
/// final: no reading can change them any more.
///
/// A window is final once its partition's watermark (the latest event time seen in it)
/// has passed its end plus the allowed lateness. The collector sees each region's latest
/// reading, which is never past its partition's watermark, so what it calls final is final.
pub struct FinalWindows {
    views: Arc<SensorViews>,
    open: Mutex<OpenWindows>,
}

impl std::fmt::Debug for FinalWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalWindows").finish_non_exhaustive()
    }
}

impl FinalWindows {
    /// Starts collecting `views`' window changes.
    pub fn attach(views: &Arc<SensorViews>) -> Arc<Self> {
        let collector = Arc::new(Self {
            views: Arc::clone(views),
            open: Mutex::new(OpenWindows::default()),
        });
        let sink = Arc::downgrade(&collector);
        views.on_windows(move |updates| {
            if let Some(collector) = sink.upgrade() {
                collector.note(updates);
            }
        });
        collector
    }

    fn note(&self, updates: &[WindowUpdate]) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for update in updates {
            let newest = open.newest_reading.entry(update.region).or_insert(i64::MIN);
            *newest = (*newest).max(update.stats.last_at);
            open.windows.insert(update.key, *update);
        }
    }

    /// The windows that became final since the last call, named.
    pub fn take_final(&self) -> Vec<WindowFeature> {
        let config = self.views.config().clone();
        let finals: Vec<WindowUpdate> = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let OpenWindows {
                windows,
                newest_reading,
            } = &mut *open;
            let mut out = Vec::new();
            windows.retain(|key, update| {
                let width = config.sizes_ms[key.size as usize];
                let closes = key.start_ms + width + config.allowed_lateness_ms;
                let final_now = newest_reading
                    .get(&update.region)
                    .is_some_and(|&newest| newest >= closes);
                if final_now {
                    out.push(*update);
                }
                !final_now
            });
            out
        };
        let mut rows = Vec::with_capacity(finals.len());
        for update in finals {
            let Some(region) = self.views.region_name(update.region) else {
                continue;
            };
            let sensor = match update.key.owner {
                Owner::Sensor(key) => match self.views.sensor_name(key) {
                    Some(name) => Some(name),
                    None => continue,
                },
                Owner::Region(_) => None,
            };
            let width_ms = config.sizes_ms[update.key.size as usize];
            let micro = |v: i64| v as f64 / 1e6;
            rows.push(WindowFeature {
                region,
                sensor,
                metric: update.key.metric.as_str(),
                width_s: width_ms / 1000,
                window_start: update.key.start_ms * 1000,
                count: update.stats.count as i64,
                mean: update.stats.mean(),
                stddev: update.stats.std_dev(),
                min: micro(update.stats.min),
                max: micro(update.stats.max),
                last: micro(update.stats.last),
                max_abs_z: update.z.map(|z| z.max_abs),
            });
        }
        rows
    }
}

/// What one flush wrote, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterReport {
    pub votes: u64,
    pub sensor_readings: u64,
    pub tally_changes: u64,
    pub window_features: u64,
    pub checkpoints: u64,
    pub audit_trail: u64,
    pub decision_history: u64,
}

impl WriterReport {
    pub fn rows(&self) -> u64 {
        self.votes
            + self.sensor_readings
            + self.tally_changes
            + self.window_features
            + self.checkpoints
            + self.audit_trail
            + self.decision_history
    }
}

/// A tally cell: (decision, option, component).
type CellKey = (String, i32, &'static str);

/// Every table of a node's lake (or a cluster process's share of it), written on each flush.
#[derive(Debug)]
pub struct LakeWriter {
    share: LakeShare,
    decisions: DecisionLake,
    votes: VoteLake,
    vote_cursor: SyncCursor,
    readings: ReadingLake,
    reading_cursor: SyncCursor,
    tally_changes: TallyChangeLake,
    tally_gate: ReleaseGate,
    /// Per cell, its newest state published at or below the lake's mark: a restart
    /// publishes a decision's tally as of its engine checkpoint, which may be older than
    /// what the lake shows, and the state may have moved on since what the lake shows.
    /// Written once a later position of the decision is known (see
    /// [`LakeWriter::write_published`]), unless a newer change of the cell comes first.
    stale: HashMap<CellKey, TallyChange>,
    window_features: WindowFeatureLake,
    checkpoints: CheckpointLake,
    audit_trail: AuditTrailLake,
    decision_history: DecisionHistoryLake,
    range_rows: usize,
}

impl LakeWriter {
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let tally_changes = TallyChangeLake::open(config.clone())?;
        let tally_gate = ReleaseGate::seeded(&tally_changes, config.min_group_voters)?;
        Ok(Self {
            share: config.share.clone(),
            stale: HashMap::new(),
            decisions: DecisionLake::open(config.clone())?,
            votes: VoteLake::open(config.clone())?,
            vote_cursor: SyncCursor::default(),
            readings: ReadingLake::open(config.clone())?,
            reading_cursor: SyncCursor::default(),
            tally_changes,
            tally_gate,
            window_features: WindowFeatureLake::open(config.clone())?,
            checkpoints: CheckpointLake::open(config.clone())?,
            audit_trail: AuditTrailLake::open(config.clone())?,
            decision_history: DecisionHistoryLake::open(config)?,
            range_rows: 1 << 20,
        })
    }

    /// Which part of the lake this writer keeps.
    pub fn share(&self) -> &LakeShare {
        &self.share
    }

    /// Writes the registered decisions, if they changed since the last call (only the
    /// writer that keeps the whole lake does).
    pub fn write_decisions(&mut self, decisions: &[Decision]) -> Result<bool, AnalyticsError> {
        if !self.share.keeps_whole_lake() {
            return Ok(false);
        }
        self.decisions.write_snapshot(decisions)
    }

    /// Copies what the vote log gained since the last call.
    pub fn sync_votes(&mut self, log: &dyn VoteLog) -> Result<u64, AnalyticsError> {
        Ok(sync_log(&self.votes, log, self.range_rows, &mut self.vote_cursor)?.rows)
    }

    /// Copies what the sensor log gained since the last call.
    pub fn sync_readings(&mut self, log: &dyn SensorLog) -> Result<u64, AnalyticsError> {
        Ok(sync_log(
            &self.readings,
            log,
            self.range_rows,
            &mut self.reading_cursor,
        )?
        .rows)
    }

    /// Writes the changes not written before that the gate lets through (see
    /// [`ReleaseGate`]); the others are left out for good, as the next change of their cell
    /// carries the cell's whole state.
    pub fn write_tally_changes(&mut self, rows: Vec<TallyChange>) -> Result<u64, AnalyticsError> {
        self.write_published(Published {
            rows,
            ends: HashMap::new(),
        })
    }

    /// [`write_tally_changes`](Self::write_tally_changes) of what [`LakeViews`] published,
    /// with the ends it saw published: a cell whose change came at or below the lake's
    /// mark (a restart's replay) is written as of a later position of its decision once
    /// one is known, if no newer change of it came first. So what the lake shows last of a
    /// cell is its state, after any restart.
    pub fn write_published(&mut self, published: Published) -> Result<u64, AnalyticsError> {
        // The gate and the stale cells move on only once the rows are in a file: a failed
        // write is tried again with the same rows, and they must pass again.
        let mut gate = self.tally_gate.clone();
        let mut stale = self.stale.clone();
        let lake = &mut self.tally_changes;
        let mut fresh = Vec::with_capacity(published.rows.len());
        // Per decision, the newest position of it this batch brings above the lake's mark.
        let mut known_at: HashMap<String, (u64, i64)> = HashMap::new();
        for row in published.rows {
            let cell = (row.decision_id.clone(), row.option, row.component);
            if lake.is_new(&row) {
                stale.remove(&cell);
                let at = known_at
                    .entry(row.decision_id.clone())
                    .or_insert((0, row.published_at));
                *at = (at.0.max(row.as_of_offset), at.1.max(row.published_at));
                fresh.push(row);
            } else {
                stale.insert(cell, row);
            }
        }
        let now = now_micros();
        let cells: Vec<CellKey> = stale.keys().cloned().collect();
        for cell in cells {
            let row = &stale[&cell];
            let later = known_at
                .get(&row.decision_id)
                .copied()
                .into_iter()
                .chain(
                    published
                        .ends
                        .get(&row.as_of_partition)
                        .map(|&end| (end, now)),
                )
                .filter(|&(offset, _)| {
                    lake.is_new(&TallyChange {
                        as_of_offset: offset,
                        ..row.clone()
                    })
                })
                .max_by_key(|&(offset, _)| offset);
            if let Some((offset, published_at)) = later
                && let Some(row) = stale.remove(&cell)
            {
                fresh.push(TallyChange {
                    as_of_offset: offset,
                    published_at,
                    ..row
                });
            }
        }
        let shown = fresh.into_iter().filter(|row| gate.admits(row)).collect();
        let written = lake.append(shown)?;
        self.tally_gate = gate;
        self.stale = stale;
        Ok(written)
    }

    pub fn write_window_features(
        &mut self,
        rows: Vec<WindowFeature>,
    ) -> Result<u64, AnalyticsError> {
        self.window_features.append(rows)
    }

    /// The largest tree size of `decision` in the `checkpoints` table.
    pub fn checkpoint_mark(&self, decision: &str) -> Option<i64> {
        self.checkpoints.mark(decision)
    }

    /// Writes the record's new checkpoints (only the writer that keeps the whole lake does).
    pub fn write_checkpoints(&mut self, rows: Vec<CheckpointEntry>) -> Result<u64, AnalyticsError> {
        if !self.share.keeps_whole_lake() {
            return Ok(0);
        }
        self.checkpoints.append(rows)
    }

    /// The sequence number of the last audit entry in the lake (0: none); the next copy
    /// starts after it.
    pub fn audit_trail_mark(&self) -> i64 {
        self.audit_trail.last_seq()
    }

    /// Writes the audit entries after the mark, in sequence order (only the writer that
    /// keeps the whole lake does).
    pub fn write_audit_trail(&mut self, rows: Vec<AuditEntry>) -> Result<u64, AnalyticsError> {
        if !self.share.keeps_whole_lake() {
            return Ok(0);
        }
        self.audit_trail.append_in_order(rows)
    }

    /// The sequence number of the last decision status change in the lake (0: none).
    pub fn decision_history_mark(&self) -> i64 {
        self.decision_history.last_seq()
    }

    /// Writes the status changes after the mark, in sequence order (only the writer that
    /// keeps the whole lake does).
    pub fn write_decision_history(
        &mut self,
        rows: Vec<HistoryEntry>,
    ) -> Result<u64, AnalyticsError> {
        if !self.share.keeps_whole_lake() {
            return Ok(0);
        }
        self.decision_history.append_in_order(rows)
    }

    /// Merges small files of every table; returns (files merged away, files deleted). Only
    /// the writer that keeps the whole lake compacts, the other processes' files too: a
    /// merge takes a run of files already written and names the union after their ranges,
    /// a name no writer writes, and carries the marks of the run's newest file, which are
    /// its writer's marks as of then (see `sinks.rs`).
    pub fn compact(&self) -> Result<(u64, u64), AnalyticsError> {
        if !self.share.keeps_whole_lake() {
            return Ok((0, 0));
        }
        let mut total = (0, 0);
        for (merged, deleted) in [
            self.decisions.compact()?,
            self.votes.compact()?,
            self.readings.compact()?,
            self.tally_changes.compact()?,
            self.window_features.compact()?,
            self.checkpoints.compact()?,
            self.audit_trail.compact()?,
            self.decision_history.compact()?,
        ] {
            total.0 += merged;
            total.1 += deleted;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(count: i64, offset: u64) -> TallyChange {
        TallyChange {
            decision_id: "d".into(),
            option: 1,
            component: "democratic",
            count,
            weight_millionths: count * 1_000_000,
            as_of_partition: 2,
            as_of_offset: offset,
            published_at: 1_780_272_000_000_000,
        }
    }

    fn newest(writer: &LakeWriter) -> (u64, i64) {
        let mut newest = (0, 0);
        writer
            .tally_changes
            .for_each_batch(|batch| {
                use arrow_array::cast::AsArray;
                use arrow_array::types::Int64Type;
                let column = |name| {
                    batch
                        .column_by_name(name)
                        .unwrap()
                        .as_primitive::<Int64Type>()
                };
                let (offsets, counts) = (column("as_of_offset"), column("count"));
                for row in 0..batch.num_rows() {
                    if offsets.value(row) as u64 >= newest.0 {
                        newest = (offsets.value(row) as u64, counts.value(row));
                    }
                }
                Ok(())
            })
            .unwrap();
        newest
    }

    /// The lake shows a cell at 4 as of offset 110; the cell went back to 3 at 125 and the
    /// node crashed before writing it. The restart resumes from an engine checkpoint at 105
    /// and publishes 3 as of 105 (at or below the mark: dropped), and nothing of the
    /// decision after (its tally did not change since 105). Once the partition's end past
    /// the mark is published, the lake shows 3, as of that end.
    #[test]
    fn a_replay_below_the_mark_still_ends_in_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = LakeConfig {
            min_group_voters: 1,
            ..LakeConfig::new(dir.path().to_path_buf())
        };
        let mut writer = LakeWriter::open(config.clone()).unwrap();
        assert_eq!(writer.write_tally_changes(vec![cell(4, 110)]).unwrap(), 1);
        drop(writer);

        let mut writer = LakeWriter::open(config.clone()).unwrap();
        let replay = Published {
            rows: vec![cell(3, 105)],
            ends: HashMap::from([(2, 105)]),
        };
        assert_eq!(writer.write_published(replay).unwrap(), 0);
        assert_eq!(newest(&writer), (110, 4), "nothing known past the mark yet");
        let later = Published {
            rows: Vec::new(),
            ends: HashMap::from([(2, 130)]),
        };
        assert_eq!(writer.write_published(later).unwrap(), 1);
        assert_eq!(newest(&writer), (130, 3));
        // Written once: a restart at the same point writes nothing more.
        drop(writer);
        let mut writer = LakeWriter::open(config).unwrap();
        let again = Published {
            rows: vec![cell(3, 105)],
            ends: HashMap::from([(2, 130)]),
        };
        assert_eq!(writer.write_published(again).unwrap(), 0);
        assert_eq!(newest(&writer), (130, 3));
    }

    /// A newer change of the cell makes the dropped state moot, and a later change of the
    /// decision carries the other cells' dropped states with it.
    #[test]
    fn a_newer_change_replaces_a_dropped_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = LakeConfig {
            min_group_voters: 1,
            ..LakeConfig::new(dir.path().to_path_buf())
        };
        let mut writer = LakeWriter::open(config.clone()).unwrap();
        writer.write_tally_changes(vec![cell(4, 110)]).unwrap();
        drop(writer);
        let mut writer = LakeWriter::open(config).unwrap();
        let other = TallyChange {
            option: 0,
            ..cell(7, 140)
        };
        let rows = vec![cell(3, 105), cell(5, 120), other];
        assert_eq!(
            writer
                .write_published(Published {
                    rows,
                    ends: HashMap::new()
                })
                .unwrap(),
            2
        );
        assert!(writer.stale.is_empty());
    }
}
