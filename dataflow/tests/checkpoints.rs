//! Engine checkpoints: a restarted engine, of the same or another size, resumes from its
//! latest checkpoint's offsets (it does not re-read what the checkpoint covers), and its
//! tallies and Merkle logs equal a recount of the whole log, redeliveries included.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_chain::NoteSigner;
use canopy_dataflow::*;
use canopy_ingest::*;
use canopy_schemas::*;
use canopy_testkit::{decision, logged};
use proptest::prelude::*;

mod common;
use common::open_segment_log;

/// A vote log that remembers the lowest offset each partition was read from.
struct ReadSpy {
    inner: Arc<SegmentLog>,
    lowest_read: Vec<AtomicU64>,
}

impl ReadSpy {
    fn new(inner: Arc<SegmentLog>) -> Self {
        let lowest_read = (0..inner.partitions())
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        Self { inner, lowest_read }
    }
}

impl EntryLog<VoteLogEntry> for ReadSpy {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    fn append(&self, entries: &[VoteLogEntry]) -> Result<Vec<Position>, IngestError> {
        self.inner.append(entries)
    }
    fn append_async<'a>(&'a self, entries: &'a [VoteLogEntry]) -> AppendFuture<'a> {
        self.inner.append_async(entries)
    }
    fn read_entries(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<(Position, VoteLogEntry)>, IngestError> {
        self.lowest_read[partition as usize].fetch_min(from, Ordering::Relaxed);
        self.inner.read_entries(partition, from, max)
    }
    fn end_offset(&self, partition: u32) -> Result<u64, IngestError> {
        self.inner.end_offset(partition)
    }
}

#[derive(Default)]
struct Cuts(Mutex<Vec<CutCheckpoint>>);

impl CheckpointSink for Cuts {
    fn store(&self, checkpoint: CutCheckpoint) {
        self.0.lock().unwrap().push(checkpoint);
    }
}

/// Votes from a seed: voters change their votes, and about one in eight is a redelivery of
/// an earlier vote (same vote id, later offset), possibly from before a restart.
fn votes(seed: u64, count: usize, earlier: &[LoggedVote]) -> Vec<LoggedVote> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut out: Vec<LoggedVote> = Vec::with_capacity(count);
    for _ in 0..count {
        let pool: Vec<&LoggedVote> = earlier.iter().chain(out.iter()).collect();
        if !pool.is_empty() && next() % 8 == 0 {
            out.push(*pool[next() as usize % pool.len()]);
            continue;
        }
        let vote = Vote {
            vote_id: VoteId(u128::from(next()) << 64 | u128::from(next())),
            decision_id: DecisionId(1 + u128::from(next() % 6)),
            voter_id: VoterId(u128::from(next() % 40)),
            ballot: canopy_schemas::Ballot::single_choice((next() % 3) as u16).unwrap(),
            component: Component::ALL[(next() % 2) as usize],
            weight: Weight(1_000_000 + (next() % 3) as u32 * 500_000),
            cast_at: 1,
        };
        out.push(logged(vote, 7));
    }
    out
}

struct Run {
    engine: TallyEngine,
    views: Arc<InMemoryViews>,
    record: Arc<VoteRecord>,
    spy: Arc<ReadSpy>,
}

fn start(log: &Arc<SegmentLog>, state: &Arc<InMemoryStateStore>, workers: usize) -> Run {
    start_with(
        log,
        state,
        workers,
        EngineConfig::default().full_checkpoint_every,
    )
}

fn start_with(
    log: &Arc<SegmentLog>,
    state: &Arc<InMemoryStateStore>,
    workers: usize,
    full_checkpoint_every: u64,
) -> Run {
    let views = Arc::new(InMemoryViews::new());
    let spy = Arc::new(ReadSpy::new(Arc::clone(log)));
    let record = Arc::new(VoteRecord::new(
        NoteSigner::from_seed("test.example", &[5; 32]).unwrap(),
        RecordConfig {
            origin_prefix: "test.example".into(),
            ..RecordConfig::default()
        },
        log.partitions(),
        Arc::new(Cuts::default()),
    ));
    let engine = TallyEngine::start(
        EngineConfig {
            workers,
            state: Some(Arc::clone(state) as Arc<dyn StateStore>),
            checkpoint_interval: Duration::from_millis(20),
            max_epoch_records: 97,
            full_checkpoint_every,
            ..EngineConfig::default()
        },
        Arc::clone(&spy) as Arc<dyn VoteLog>,
        views.clone(),
        Some(Arc::clone(&record)),
        (1..=6).map(decision).collect(),
    )
    .unwrap();
    Run {
        engine,
        views,
        record,
        spy,
    }
}

fn wait_until_caught_up(log: &SegmentLog, views: &InMemoryViews) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for partition in 0..log.partitions() {
        let end = log.end_offset(partition).unwrap();
        while views.frontier(partition) < end {
            assert!(Instant::now() < deadline, "the engine did not catch up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Closes `decision` where the log stands: its votes appended after this do not count.
fn close(log: &SegmentLog, decision: u128) {
    log.append(&[VoteLogEntry::Close(DecisionClose {
        decision: DecisionId(decision),
        kind: CloseKind::Early,
        at: 1,
        by: 0,
    })])
    .unwrap();
}

/// The oracle: each decision's tally and Merkle log, recounted from the whole log, the
/// votes after a decision's first close left out and the close its last leaf.
fn check_against_recount(log: &SegmentLog, run: &Run) -> Result<(), TestCaseError> {
    let entries: Vec<VoteLogRecord> = (0..log.partitions())
        .flat_map(|partition| log.read(partition, 0, usize::MAX).unwrap())
        .collect();
    let records = counted_votes(&entries);
    let decisions: Vec<Decision> = (1..=6).map(decision).collect();
    let expected = recount(records.iter().copied(), &decisions);
    for d in &decisions {
        let view = run.views.get(d.id).unwrap();
        match expected.get(&d.id) {
            Some(tally) => prop_assert_eq!(&view.unwrap().tally, tally),
            None => prop_assert!(view.is_none_or(|v| v.tally.turnout == 0)),
        }
    }
    for (decision, tree) in &recount_log_trees(&entries) {
        prop_assert_eq!(run.record.size(*decision), tree.size());
        prop_assert_eq!(
            run.record.root_at(*decision, tree.size()).unwrap(),
            tree.root()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn a_restarted_engine_resumes_from_its_checkpoint_at_any_size(
        seed in any::<u64>(),
        first in 200usize..1500,
        second in 1usize..800,
        workers_before in 1usize..4,
        workers_after in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = open_segment_log(dir.path(), 5);
        let state = Arc::new(InMemoryStateStore::default());
        let before = votes(seed, first, &[]);
        log.append_votes(&before).unwrap();
        // One decision closes before the checkpoint: the restart must still know it.
        close(&log, 1 + u128::from(seed % 6));

        let run = start(&log, &state, workers_before);
        wait_until_caught_up(&log, &run.views);
        check_against_recount(&log, &run)?;
        // Let a checkpoint complete.
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.latest_complete().is_none() {
            prop_assert!(Instant::now() < deadline, "no checkpoint was completed");
            std::thread::sleep(Duration::from_millis(5));
        }
        run.engine.shutdown().unwrap();

        // More votes while it is down, redeliveries of votes before the checkpoint among them,
        // and votes racing the closes of two decisions (one closed again).
        let more = votes(seed ^ 1, second, &before);
        let (early, late) = more.split_at(more.len() / 2);
        log.append_votes(early).unwrap();
        close(&log, 1 + u128::from((seed >> 8) % 6));
        close(&log, 1 + u128::from(seed % 6));
        log.append_votes(late).unwrap();
        // What the restart will resume from (the engine is stopped, so loading is safe).
        let snapshot_ends: HashMap<u32, u64> =
            state.load().unwrap().unwrap().ends.into_iter().collect();
        prop_assert!(snapshot_ends.values().sum::<u64>() > 0);

        let run = start(&log, &state, workers_after);
        wait_until_caught_up(&log, &run.views);
        check_against_recount(&log, &run)?;
        for partition in 0..log.partitions() {
            let resumed_at = snapshot_ends.get(&partition).copied().unwrap_or(0);
            let lowest = run.spy.lowest_read[partition as usize].load(Ordering::Relaxed);
            prop_assert!(
                lowest >= resumed_at,
                "partition {} was read from {} though the checkpoint covers up to {}",
                partition, lowest, resumed_at
            );
        }
        run.engine.shutdown().unwrap();
    }

    /// Runs of changing sizes, each writing several checkpoints while votes arrive and
    /// decisions close, every few of them full (so the store keeps only the latest full one
    /// and what follows): after every restart the tallies and Merkle logs equal a recount
    /// of the whole log, no vote after its decision's close counted.
    #[test]
    fn restarts_through_full_checkpoints_lose_and_repeat_nothing(
        seed in any::<u64>(),
        sizes in proptest::collection::vec(1usize..4, 3..5),
        full_checkpoint_every in 1u64..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = open_segment_log(dir.path(), 5);
        let state = Arc::new(InMemoryStateStore::default());
        let mut earlier: Vec<LoggedVote> = Vec::new();
        let mut fulls_loaded = 0;
        for (run_index, workers) in sizes.into_iter().enumerate() {
            let loaded = state.load().unwrap();
            fulls_loaded += usize::from(loaded.as_ref().is_some_and(|s| s.full.is_some()));
            let before = state.latest_complete().unwrap_or(0);
            let run = start_with(&log, &state, workers, full_checkpoint_every);
            // Votes in a few bursts, so that several checkpoints are written in this run.
            for burst in 0..4u64 {
                let more = votes(seed ^ (run_index as u64 * 16 + burst), 60, &earlier);
                log.append_votes(&more).unwrap();
                if burst == 2 {
                    close(&log, 1 + u128::from((seed >> run_index) % 6));
                }
                earlier.extend(more);
                std::thread::sleep(Duration::from_millis(40));
            }
            wait_until_caught_up(&log, &run.views);
            check_against_recount(&log, &run)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while state.latest_complete().unwrap_or(0) < before + 2 {
                prop_assert!(Instant::now() < deadline, "no checkpoints were completed");
                std::thread::sleep(Duration::from_millis(5));
            }
            run.engine.shutdown().unwrap();
        }
        // The last runs resumed from full checkpoints, and the store holds no more than
        // the latest full one and what follows it.
        prop_assert!(fulls_loaded > 0, "no run resumed from a full checkpoint");
        let snapshot = state.load().unwrap().unwrap();
        let full = snapshot.full.unwrap();
        prop_assert!(snapshot.seq - full < full_checkpoint_every);
    }
}
