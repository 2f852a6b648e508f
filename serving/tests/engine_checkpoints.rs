//! Engine checkpoints with full checkpoints and compaction, against a model: for random runs
//! of deltas, full checkpoints, crashes between any two steps (mid-checkpoint, and between a
//! full checkpoint's last write and its compaction) and rescales, what loads is exactly the
//! union of everything written up to the latest complete checkpoint, each partition resumes
//! at the highest end written, and the stored parts are exactly those the model keeps (so
//! the table stays bounded as history grows). Run against the in-memory store, SQLite and a
//! real PostgreSQL; plus tables written before full checkpoints existed (migration 0011).

use std::collections::BTreeMap;
use std::sync::Arc;

use canopy_dataflow::{
    EngineSnapshot, InMemoryStateStore, StateChunk, StateEntry, StateStore, decode_entries,
    encode_entries, encode_parts, pack_parts,
};
use canopy_schemas::Component;
use canopy_serving::store::{MetadataStore, PostgresStore, SqliteStore};
use canopy_testkit::TestDatabase;

/// A part holds two ballot entries at most, so bases and busy deltas span several parts.
const MAX_PART: usize = 150;
const PARTITIONS: u32 = 5;

/// A small deterministic generator (splitmix64): a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn ballot(id: u128, seq: u64, worker: u32) -> StateEntry {
    StateEntry::Ballot {
        decision: u128::from(seq),
        voter: u128::from(worker),
        ballot: canopy_dataflow::Ballot {
            vote_id: id,
            offset: id as u64,
            marks: canopy_schemas::Ballot::SingleChoice(0),
            component: Component::ALL[0],
            weight: 1,
        },
    }
}

fn vote_ids(entries: &[StateEntry]) -> Vec<u128> {
    let mut ids: Vec<u128> = entries
        .iter()
        .filter_map(|entry| match entry {
            StateEntry::Ballot { ballot, .. } => Some(ballot.vote_id),
            StateEntry::Leaf { leaf, .. } => Some(leaf.vote_id),
            StateEntry::Close { .. } => None,
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The store under test.
enum Target {
    Memory(InMemoryStateStore),
    Sql(Arc<dyn MetadataStore>),
}

impl Target {
    /// Writes a chunk; a SQL store compacts only if asked (not asking is a crash between
    /// the write and its compaction). The in-memory store always compacts.
    async fn write(&self, chunk: StateChunk, compact: bool) {
        match self {
            Self::Memory(store) => store.write(chunk).unwrap(),
            Self::Sql(store) => {
                store.write_engine_chunk(&chunk, 1).await.unwrap();
                if compact {
                    store.compact_engine_checkpoints().await.unwrap();
                }
            }
        }
    }

    async fn load(&self) -> Option<EngineSnapshot> {
        match self {
            Self::Memory(store) => store.load().unwrap(),
            Self::Sql(store) => store.load_engine_snapshot().await.unwrap(),
        }
    }

    async fn parts(&self) -> usize {
        match self {
            Self::Memory(store) => store.stored_parts(),
            Self::Sql(store) => store.engine_checkpoint_parts().await.unwrap() as usize,
        }
    }

    fn always_compacts(&self) -> bool {
        matches!(self, Self::Memory(_))
    }
}

/// What a load should give: the checkpoint, the entries' ids, the ends.
type Expected = (u64, Vec<u128>, Vec<(u32, u64)>);

/// One worker's chunk as the model remembers it.
#[derive(Clone, Debug)]
struct Written {
    workers: u32,
    entries: Vec<u128>,
    ends: Vec<(u32, u64)>,
    with_base: bool,
    parts: usize,
}

/// What the store should hold: every chunk of the chain by seq and worker (kept after the
/// store deletes them, for the oracle), and which seqs' parts are still stored.
#[derive(Default)]
struct Model {
    chain: BTreeMap<u64, BTreeMap<u32, Written>>,
    /// Seqs whose parts the store has deleted (superseded by a full checkpoint).
    compacted_below: u64,
}

impl Model {
    fn complete(&self) -> Option<u64> {
        self.chain
            .iter()
            .filter(|(_, chunks)| {
                let workers = chunks.values().map(|c| c.workers).max().unwrap_or(0);
                chunks.len() as u32 == workers
            })
            .map(|(seq, _)| *seq)
            .next_back()
    }

    fn full(&self) -> Option<u64> {
        let complete = self.complete()?;
        self.chain
            .range(..=complete)
            .filter(|(_, chunks)| {
                let workers = chunks.values().map(|c| c.workers).max().unwrap_or(0);
                chunks.len() as u32 == workers && chunks.values().all(|c| c.with_base)
            })
            .map(|(seq, _)| *seq)
            .next_back()
    }

    fn compact(&mut self) {
        if let Some(full) = self.full() {
            self.compacted_below = self.compacted_below.max(full);
        }
    }

    /// A restart: the unfinished checkpoint's chunks go, so do the superseded ones.
    fn restart(&mut self) {
        let complete = self.complete().unwrap_or(0);
        self.chain.retain(|seq, _| *seq <= complete);
        self.compact();
    }

    fn stored_parts(&self) -> usize {
        self.chain
            .range(self.compacted_below..)
            .flat_map(|(_, chunks)| chunks.values())
            .map(|c| c.parts)
            .sum()
    }

    /// The oracle: every entry written up to the latest complete checkpoint, and each
    /// partition's highest end among them.
    fn expected(&self) -> Option<Expected> {
        let complete = self.complete()?;
        let mut ids = Vec::new();
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        for chunk in self.chain.range(..=complete).flat_map(|(_, c)| c.values()) {
            ids.extend(&chunk.entries);
            for &(partition, end) in &chunk.ends {
                let slot = ends.entry(partition).or_insert(0);
                *slot = (*slot).max(end);
            }
        }
        ids.sort_unstable();
        Some((complete, ids, ends.into_iter().collect()))
    }
}

/// Runs `runs` runs of random sizes against `target`, checking every load against the model
/// and the stored parts after every write.
async fn run_model(target: &Target, seed: u64, runs: usize) {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut next_id: u128 = 0;
    let mut clock: u64 = 0;
    let mut largest_stored = 0usize;
    let mut loads_from_full = 0;
    for run in 0..runs {
        // A restart: load, compare with the oracle, share the chunks out.
        let snapshot = target.load().await;
        model.restart();
        let expected = model.expected();
        match (&snapshot, &expected) {
            (None, None) => {}
            (Some(snapshot), Some((seq, ids, ends))) => {
                let mut loaded = Vec::new();
                for chunk in &snapshot.chunks {
                    loaded.extend(decode_entries(chunk).unwrap());
                }
                assert_eq!(snapshot.seq, *seq, "seed {seed} run {run}: checkpoint");
                loads_from_full += usize::from(snapshot.full.is_some());
                assert_eq!(snapshot.full, model.full(), "seed {seed} run {run}: full");
                assert_eq!(&vote_ids(&loaded), ids, "seed {seed} run {run}: entries");
                assert_eq!(&snapshot.ends, ends, "seed {seed} run {run}: ends");
            }
            (loaded, expected) => {
                panic!("seed {seed} run {run}: loaded {loaded:?}, expected {expected:?}")
            }
        }
        assert_eq!(
            target.parts().await,
            model.stored_parts(),
            "seed {seed} run {run}"
        );
        let workers = 1 + rng.below(3) as u32;
        let full_every = 1 + rng.below(4);
        // Now and then one worker runs with another setting and writes no base.
        let odd_worker = rng.chance(15).then(|| rng.below(u64::from(workers)) as u32);
        let chunks = snapshot.as_ref().map_or(&[][..], |s| s.chunks.as_slice());
        let mut retained: Vec<Vec<Vec<u8>>> = (0..workers)
            .map(|w| {
                chunks
                    .iter()
                    .skip(w as usize)
                    .step_by(workers as usize)
                    .cloned()
                    .collect()
            })
            .collect();
        let first = snapshot.as_ref().map_or(0, |s| s.seq) + 1;
        let checkpoints = 1 + rng.below(7);
        'run: for seq in first..first + checkpoints {
            let full = seq.is_multiple_of(full_every);
            let mut order: Vec<u32> = (0..workers).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for (written_so_far, &worker) in order.iter().enumerate() {
                // A crash before this worker wrote: the checkpoint stays unfinished.
                if rng.chance(8) {
                    break 'run;
                }
                let count = rng.below(6) as usize;
                let entries: Vec<StateEntry> = (0..count)
                    .map(|i| ballot(next_id + i as u128, seq, worker))
                    .collect();
                next_id += count as u128;
                clock += 1;
                let ends: Vec<(u32, u64)> = (0..PARTITIONS)
                    .filter(|p| p % workers == worker)
                    .map(|p| (p, clock))
                    .collect();
                let delta = encode_parts(&entries, MAX_PART);
                let with_base = full && odd_worker != Some(worker);
                let base = with_base.then(|| {
                    let blocks = retained[worker as usize].iter().map(Vec::as_slice);
                    pack_parts(blocks, MAX_PART).unwrap()
                });
                let parts = delta.len() + base.as_ref().map_or(0, Vec::len);
                let last = written_so_far + 1 == order.len();
                // A crash between a full checkpoint's last write and its compaction.
                let crash_before_compacting = last && with_base && rng.chance(25);
                let compact = with_base && !crash_before_compacting;
                let chunk = StateChunk {
                    seq,
                    worker,
                    workers,
                    ends: ends.clone(),
                    delta: delta.clone(),
                    base,
                };
                target.write(chunk, compact).await;
                retained[worker as usize].extend(delta);
                model.chain.entry(seq).or_default().insert(
                    worker,
                    Written {
                        workers,
                        entries: vote_ids(&entries),
                        ends,
                        with_base,
                        parts,
                    },
                );
                if compact || (with_base && target.always_compacts()) {
                    model.compact();
                }
                let stored = target.parts().await;
                assert_eq!(
                    stored,
                    model.stored_parts(),
                    "seed {seed} run {run} seq {seq}"
                );
                largest_stored = largest_stored.max(stored);
                if crash_before_compacting {
                    break 'run;
                }
            }
        }
    }
    let written: usize = model.chain.values().flat_map(|c| c.values()).count();
    eprintln!(
        "seed {seed}: {written} chunks in the chain, at most {largest_stored} parts stored, \
         {loads_from_full} of {runs} loads from a full checkpoint"
    );
}

fn seeds(count: u64) -> impl Iterator<Item = u64> {
    let base = std::env::var("CANOPY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    (0..count).map(move |i| base + i)
}

#[tokio::test]
async fn in_memory_store_matches_the_model() {
    for seed in seeds(300) {
        run_model(&Target::Memory(InMemoryStateStore::default()), seed, 8).await;
    }
}

#[tokio::test]
async fn sqlite_store_matches_the_model() {
    for seed in seeds(25) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("canopy.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        run_model(&Target::Sql(Arc::new(store)), seed, 8).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_matches_the_model() {
    let database = TestDatabase::create().await;
    for seed in seeds(25) {
        // A fresh table per seed: the model starts empty.
        let store = PostgresStore::connect(&database.url).await.unwrap();
        store.migrate().await.unwrap();
        sqlx::query("DELETE FROM engine_checkpoints")
            .execute(store.pool())
            .await
            .unwrap();
        run_model(&Target::Sql(Arc::new(store)), seed, 8).await;
    }
}

/// However long the history, the stored parts stay below (full_checkpoint_every + 1)
/// checkpoints' worth: a cluster checkpointing for a long time does not grow the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_stays_bounded_as_history_grows() {
    let database = TestDatabase::create().await;
    let store: Arc<dyn MetadataStore> =
        Arc::new(PostgresStore::connect(&database.url).await.unwrap());
    store.migrate().await.unwrap();
    let (workers, full_every) = (2u32, 5u64);
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); workers as usize];
    let mut next_id = 0u128;
    let mut most = 0;
    for seq in 1..=200u64 {
        for worker in 0..workers {
            let entries: Vec<StateEntry> =
                (0..3).map(|i| ballot(next_id + i, seq, worker)).collect();
            next_id += 3;
            let delta = vec![encode_entries(&entries)];
            let base = seq.is_multiple_of(full_every).then(|| {
                pack_parts(written[worker as usize].iter().map(Vec::as_slice), 1 << 20).unwrap()
            });
            let chunk = StateChunk {
                seq,
                worker,
                workers,
                ends: vec![(worker, seq)],
                delta: delta.clone(),
                base,
            };
            store.write_engine_chunk(&chunk, 1).await.unwrap();
            if chunk.base.is_some() {
                store.compact_engine_checkpoints().await.unwrap();
            }
            written[worker as usize].extend(delta);
        }
        most = most.max(store.engine_checkpoint_parts().await.unwrap());
    }
    // At most: a full checkpoint (a base and a delta per worker) and the deltas after it.
    let bound = i64::from(workers) * (full_every as i64 + 1);
    assert!(
        most <= bound,
        "{most} parts stored at once, more than {bound}"
    );
    let snapshot = store.load_engine_snapshot().await.unwrap().unwrap();
    assert_eq!((snapshot.seq, snapshot.full), (200, Some(200)));
    let mut loaded = Vec::new();
    for chunk in &snapshot.chunks {
        loaded.extend(decode_entries(chunk).unwrap());
    }
    assert_eq!(vote_ids(&loaded), (0..next_id).collect::<Vec<_>>());
}

/// A table written before migration 0011 (deltas only, one row per chunk, no full
/// checkpoint) still loads after it, and the first full checkpoint compacts it.
async fn legacy_rows_load_after_the_migration<S: MetadataStore>(
    store: &S,
    apply_before: impl AsyncFnOnce(&str),
    dialect: &str,
    insert_legacy: impl AsyncFn(u64, u32, &[u8]),
) {
    let script = canopy_testkit::migrations_before(dialect, "0011");
    apply_before(&script).await;
    // Two workers, checkpoints 1 and 2 complete, 3 unfinished.
    let mut ids = 0u128;
    for (seq, worker) in [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)] {
        let entries: Vec<StateEntry> = (0..2).map(|i| ballot(ids + i, seq, worker)).collect();
        ids += 2;
        insert_legacy(seq, worker, &encode_entries(&entries)).await;
    }
    let applied = store.migrate().await.unwrap();
    assert_eq!(
        applied.first().map(String::as_str),
        Some("0011_engine_state_parts")
    );
    let snapshot = store.load_engine_snapshot().await.unwrap().unwrap();
    assert_eq!((snapshot.seq, snapshot.full), (2, None));
    assert_eq!(snapshot.ends, vec![(0, 2), (1, 2)]);
    let loaded: Vec<StateEntry> = snapshot
        .chunks
        .iter()
        .flat_map(|chunk| decode_entries(chunk).unwrap())
        .collect();
    assert_eq!(vote_ids(&loaded), (0..8).collect::<Vec<_>>());
    // The new run (one worker) writes a full checkpoint 3: the legacy rows go.
    let chunk = StateChunk {
        seq: 3,
        worker: 0,
        workers: 1,
        ends: vec![(0, 3), (1, 3)],
        delta: vec![encode_entries(&[ballot(100, 3, 0)])],
        base: Some(pack_parts(snapshot.chunks.iter().map(Vec::as_slice), MAX_PART).unwrap()),
    };
    store.write_engine_chunk(&chunk, 2).await.unwrap();
    assert_eq!(store.compact_engine_checkpoints().await.unwrap(), 4);
    let parts = chunk.parts().len() as i64;
    assert_eq!(store.engine_checkpoint_parts().await.unwrap(), parts);
    let snapshot = store.load_engine_snapshot().await.unwrap().unwrap();
    assert_eq!((snapshot.seq, snapshot.full), (3, Some(3)));
    let loaded: Vec<StateEntry> = snapshot
        .chunks
        .iter()
        .flat_map(|chunk| decode_entries(chunk).unwrap())
        .collect();
    let mut expected: Vec<u128> = (0..8).collect();
    expected.push(100);
    assert_eq!(vote_ids(&loaded), expected);
}

const LEGACY_INSERT: &str = "INSERT INTO engine_checkpoints (seq, worker, workers, ends, data, written_at) VALUES ($1, $2, 2, $3, $4, 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_rows_load_after_the_migration() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    let pool = store.pool().clone();
    let pool2 = pool.clone();
    legacy_rows_load_after_the_migration(
        &store,
        async |script: &str| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string()))
                .execute(&pool)
                .await
                .unwrap();
        },
        "postgres",
        async |seq: u64, worker: u32, data: &[u8]| {
            sqlx::query(LEGACY_INSERT)
                .bind(seq as i64)
                .bind(i64::from(worker))
                .bind(format!("[[{worker},{seq}]]"))
                .bind(data.to_vec())
                .execute(&pool2)
                .await
                .unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn sqlite_legacy_rows_load_after_the_migration() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("canopy.db"))
        .await
        .unwrap();
    let pool = store.pool().clone();
    let pool2 = pool.clone();
    legacy_rows_load_after_the_migration(
        &store,
        async |script: &str| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string()))
                .execute(&pool)
                .await
                .unwrap();
        },
        "sqlite",
        async |seq: u64, worker: u32, data: &[u8]| {
            sqlx::query(LEGACY_INSERT)
                .bind(seq as i64)
                .bind(i64::from(worker))
                .bind(format!("[[{worker},{seq}]]"))
                .bind(data.to_vec())
                .execute(&pool2)
                .await
                .unwrap();
        },
    )
    .await;
}
