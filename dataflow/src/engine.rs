//! The tally engine: W timely worker threads (per process, in a cluster) that tail a vote
//! log into the tally dataflow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use canopy_ingest::{Position, VoteLog, VoteLogRecord, partition_for};
use canopy_schemas::clock::now_micros;
use canopy_schemas::{Decision, DecisionClose, DecisionId};
use timely::CommunicationConfig;
use timely::WorkerConfig;
use timely::execute::Config;
use timely::worker::Worker;

use crate::DataflowError;
use crate::epoch::Epoch;
use crate::log_reader::PartitionCursors;
use crate::record::VoteRecord;
use crate::sensor_feed::{SensorFeed, SensorWorker};
use crate::state::{
    EngineSnapshot, MAX_PART_BYTES, StateChunk, StateStore, decode_entries, encode_parts,
    pack_parts,
};
use crate::tally::{TallyInputs, build_tally_dataflow};
use crate::views::ViewStore;
use crate::worker_pool::{StopFlag, WorkerPool, partitions_of};

#[derive(Clone)]
pub struct EngineConfig {
    /// Worker threads (per process, in a cluster).
    pub workers: usize,
    /// The most records a worker reads from one partition into one epoch. Large epochs
    /// amortise the dataflow's per-epoch cost while catching up; a tailing engine sees small
    /// ones anyway.
    pub max_epoch_records: usize,
    /// How long an idle worker parks before it looks at the log again.
    pub idle_wait: Duration,
    /// After a small epoch, how long a worker rests before reading again. Adds at most this
    /// much to the time a vote takes to show in results, and saves the CPU that many tiny
    /// epochs cost under a steady trickle.
    pub min_epoch_gap: Duration,
    /// Run as one process of a timely cluster rather than alone.
    pub cluster: Option<ClusterConfig>,
    /// In a cluster, how often an idle worker moves its epoch on even if no broadcast asked
    /// for it (a decision registered on an idle worker waits at most this long).
    pub cluster_tick: Duration,
    /// Where engine checkpoints go; without one, a start replays the log from offset 0.
    pub state: Option<Arc<dyn StateStore>>,
    /// How often worker 0 starts an engine checkpoint.
    pub checkpoint_interval: Duration,
    /// Every this many checkpoints (by number), each worker also writes its base, making a
    /// full checkpoint that lets the store delete every older one (0: never). Every process
    /// of a cluster must use the same value, or no full checkpoint completes.
    pub full_checkpoint_every: u64,
    /// Where a worker looks up a decision it meets in the log but was never told about (in a
    /// cluster, decisions are registered by API replicas in the shared metadata store).
    pub directory: Option<Arc<dyn DecisionDirectory>>,
    /// With a sensor log: the features dataflow runs in the same computation, each worker
    /// reading the sensor partitions p ≡ i (mod W), sealed with the tally's epochs.
    pub sensors: Option<SensorFeed>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("workers", &self.workers)
            .field("max_epoch_records", &self.max_epoch_records)
            .field("cluster", &self.cluster)
            .field("checkpoints", &self.state.is_some())
            .field("sensors", &self.sensors)
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            max_epoch_records: 100_000,
            idle_wait: Duration::from_millis(1),
            min_epoch_gap: Duration::from_micros(500),
            cluster: None,
            cluster_tick: Duration::from_secs(1),
            state: None,
            checkpoint_interval: Duration::from_secs(2),
            full_checkpoint_every: 20,
            directory: None,
            sensors: None,
        }
    }
}

/// This process's place in a timely cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This process's index, in 0..addresses.len().
    pub process: usize,
    /// host:port of every process, in process order (the same list for all of them).
    pub addresses: Vec<String>,
}

/// Decisions by id, for a worker that meets a vote of a decision it does not know yet.
pub trait DecisionDirectory: Send + Sync {
    fn lookup(&self, decision: DecisionId) -> Option<Decision>;

    /// Told of a decision's first close in the log as the worker that reads its partition
    /// meets it (again after a replay), so the store learns the close's position whoever
    /// appended it.
    fn note_close(&self, _close: &DecisionClose, _position: Position) {}
}

/// How often worker 0 applies the record's time-based checkpoint rule.
const RECORD_TICK: Duration = Duration::from_millis(100);

/// What the engine shares with its workers while they run.
struct Shared {
    /// The epoch every worker's input should have reached: raised by a worker that fed
    /// something, followed by the others.
    epoch: AtomicU64,
    /// Every decision registered with this process, latest parameters.
    decisions: Mutex<HashMap<DecisionId, Decision>>,
    decisions_version: AtomicU64,
}

impl Shared {
    fn decisions(&self) -> MutexGuard<'_, HashMap<DecisionId, Decision>> {
        self.decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Epochs are milliseconds of the wall clock (or later), so that the processes of a
/// cluster, which seal independently, agree roughly on what an epoch means and every
/// epoch after a restart is later than every epoch before it.
fn clock_epoch() -> Epoch {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| since.as_millis() as Epoch)
}

/// Runs the tally dataflow over a vote log until shut down, publishing into a view store.
///
/// It resumes from the latest engine checkpoint if it has a state store (else it replays
/// the log from the start), then follows the log. If the log cannot be read (corruption),
/// the engine stops and fails the view store, so no reader is served a result that
/// silently misses votes.
pub struct TallyEngine {
    shared: Arc<Shared>,
    workers: WorkerPool,
}

impl std::fmt::Debug for TallyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TallyEngine").finish_non_exhaustive()
    }
}

impl TallyEngine {
    pub fn start(
        config: EngineConfig,
        log: Arc<dyn VoteLog>,
        views: Arc<dyn ViewStore>,
        record: Option<Arc<VoteRecord>>,
        decisions: Vec<Decision>,
    ) -> Result<Self, DataflowError> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            decisions: Mutex::new(decisions.into_iter().map(|d| (d.id, d)).collect()),
            decisions_version: AtomicU64::new(1),
        });
        let snapshot = load_snapshot(&config)?;
        let (timely_config, first_local) = timely_config(&config);
        let context = WorkerContext {
            config,
            first_local,
            log,
            views,
            record,
            snapshot,
            shared: Arc::clone(&shared),
        };
        let workers = WorkerPool::start(timely_config, move |worker, stop| {
            drive_worker(worker, &context, stop)
        })?;
        Ok(Self { shared, workers })
    }

    /// Adds a decision, or replaces its parameters; takes effect in the next epoch.
    pub fn register(&self, decision: Decision) {
        self.shared.decisions().insert(decision.id, decision);
        self.shared.decisions_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a worker has ended without being asked to: it failed (and failed the view
    /// store), panicked, or lost a peer process of its cluster. A stopped engine does not
    /// come back; its process should exit so that the cluster is restarted from its
    /// checkpoint.
    pub fn has_stopped(&self) -> bool {
        self.workers.any_finished()
    }

    /// Stops the workers and waits for them; reports a worker that stopped on an error.
    pub fn shutdown(self) -> Result<(), DataflowError> {
        self.workers.stop()
    }
}

/// The latest complete engine checkpoint, or an empty one to start from offset 0.
fn load_snapshot(config: &EngineConfig) -> Result<EngineSnapshot, DataflowError> {
    let snapshot = match &config.state {
        Some(state) => state.load().map_err(DataflowError::State)?,
        None => None,
    };
    if let Some(snapshot) = &snapshot {
        tracing::info!(
            checkpoint = snapshot.seq,
            full = ?snapshot.full,
            chunks = snapshot.chunks.len(),
            "resuming from an engine checkpoint"
        );
    }
    Ok(snapshot.unwrap_or_default())
}

/// The timely configuration of this process, and the global index of its first worker.
fn timely_config(config: &EngineConfig) -> (Config, usize) {
    let threads = config.workers.max(1);
    match &config.cluster {
        Some(cluster) => (
            Config {
                communication: CommunicationConfig::Cluster {
                    threads,
                    process: cluster.process,
                    addresses: cluster.addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: WorkerConfig::default(),
            },
            cluster.process * threads,
        ),
        None => (Config::process(threads), 0),
    }
}

/// What every worker of a tally engine is started with.
struct WorkerContext {
    config: EngineConfig,
    /// The global index of this process's first worker, the one that looks after the record.
    first_local: usize,
    log: Arc<dyn VoteLog>,
    views: Arc<dyn ViewStore>,
    record: Option<Arc<VoteRecord>>,
    snapshot: EngineSnapshot,
    shared: Arc<Shared>,
}

/// One worker's life: restore its share of the latest checkpoint, then read its partitions
/// into epochs, seal them in step with the other workers, write its checkpoint parts. A
/// worker that fails fails the view store, so no reader is served results it stopped
/// updating.
fn drive_worker(
    worker: &mut Worker,
    context: &WorkerContext,
    stop: &StopFlag,
) -> Result<(), String> {
    let result = TallyWorker::restore(worker, context).and_then(|mut tally| {
        tally.begin(worker);
        while !stop.is_raised() {
            tally.round(worker)?;
        }
        Ok(())
    });
    if let Err(reason) = &result {
        context.views.fail(reason.clone());
        if let Some(sensors) = &context.config.sensors {
            sensors.views.fail(reason.clone());
        }
    }
    result
}

/// One worker's state between rounds.
struct TallyWorker<'a> {
    context: &'a WorkerContext,
    index: usize,
    peers: usize,
    /// The log's partition count.
    partitions: u32,
    inputs: TallyInputs,
    /// The partitions this worker reads, and the offset to read next in each.
    cursors: PartitionCursors,
    decisions_version: u64,
    next_checkpoint: u64,
    /// What this worker has put into checkpoints, for its base at a full one: its share of
    /// the restored chunks (indices into the snapshot, which the context keeps anyway) and
    /// the deltas it wrote since.
    restored_share: Vec<usize>,
    written: Vec<Vec<u8>>,
    last_mark: Instant,
    last_cut_check: Instant,
    /// The features dataflow, when the engine has a sensor log.
    sensors: Option<SensorWorker>,
    /// The cast time of the oldest vote fed since the last epoch was published, for the
    /// freshness metric; votes cast before this worker started (a replay) are left out.
    oldest_unpublished_cast_us: Option<i64>,
    started_at_us: i64,
}

impl<'a> TallyWorker<'a> {
    /// Builds the dataflow and feeds it this worker's share of the latest checkpoint; the
    /// worker's partitions resume at the checkpoint's offsets.
    fn restore(worker: &mut Worker, context: &'a WorkerContext) -> Result<Self, String> {
        let (index, peers) = (worker.index(), worker.peers());
        let partitions = context.log.partitions();
        let snapshot = &context.snapshot;
        let mut inputs = build_tally_dataflow(
            worker,
            Arc::clone(&context.views),
            partitions,
            context.record.clone(),
            context.config.state.is_some(),
        );
        // The checkpoint's chunks are shared out among the workers of this run, whatever
        // the size of the run that wrote them; the dataflow routes each entry to its owner.
        let restored_share: Vec<usize> = (index..snapshot.chunks.len()).step_by(peers).collect();
        for &chunk in &restored_share {
            let entries =
                decode_entries(&snapshot.chunks[chunk]).map_err(|error| error.to_string())?;
            inputs.restore(&entries);
        }
        let resume: HashMap<u32, u64> = snapshot.ends.iter().copied().collect();
        let cursors = PartitionCursors::new(partitions_of(index, peers, partitions), |p| {
            resume.get(&p).copied().unwrap_or(0)
        });
        for (partition, end) in cursors.ends() {
            inputs.note_end(partition, end);
        }
        let sensors = context.config.sensors.as_ref().map(|feed| {
            let owned = partitions_of(index, peers, feed.log.partitions());
            SensorWorker::build(worker, feed, owned)
        });
        Ok(Self {
            context,
            index,
            peers,
            partitions,
            inputs,
            cursors,
            decisions_version: 0,
            next_checkpoint: snapshot.seq + 1,
            restored_share,
            written: Vec::new(),
            last_mark: Instant::now(),
            last_cut_check: Instant::now(),
            sensors,
            oldest_unpublished_cast_us: None,
            started_at_us: now_micros(),
        })
    }

    /// Takes the registered decisions and seals the restored state into its own epoch,
    /// no earlier than the epoch the other workers have reached, and waits until it is
    /// through: the restored closes must reach every worker before any reads a vote.
    fn begin(&mut self, worker: &mut Worker) {
        let shared = &self.context.shared;
        self.sync_decisions();
        let start = clock_epoch().max(shared.epoch.load(Ordering::Acquire));
        shared.epoch.fetch_max(start, Ordering::AcqRel);
        let restored = self.inputs.seal_until(start);
        if let Some(sensors) = &mut self.sensors {
            sensors.seal_until(start);
        }
        self.inputs.run_until_published(worker, restored);
    }

    /// One look at the log and at the epochs: read, agree on the epoch, write due
    /// checkpoints, watch the record, seal.
    fn round(&mut self, worker: &mut Worker) -> Result<(), String> {
        self.sync_decisions();
        let mut fed = self.read()?;
        if let Some(sensors) = &mut self.sensors {
            fed += sensors.read()?;
        }
        let current = self.inputs.current_epoch();
        self.announce(current, fed);
        self.checkpoint(current)?;
        self.watch_record()?;
        self.seal(worker, current, fed);
        Ok(())
    }

    /// Feeds the decisions registered since the last look. A decision enters through the
    /// worker that feeds its votes, so its parameters and its votes share that worker's
    /// epochs.
    fn sync_decisions(&mut self) {
        let shared = &self.context.shared;
        let version = shared.decisions_version.load(Ordering::Acquire);
        if version == self.decisions_version {
            return;
        }
        self.decisions_version = version;
        let (partitions, peers, index) = (self.partitions, self.peers, self.index);
        let owns =
            |decision: DecisionId| partition_for(decision, partitions) as usize % peers == index;
        for decision in shared.decisions().values().filter(|d| owns(d.id)) {
            self.inputs.upsert_decision(decision);
        }
    }

    /// Reads what is new in each of this worker's partitions into the current epoch;
    /// returns how many records it fed.
    fn read(&mut self) -> Result<usize, String> {
        let context = self.context;
        // Out of `self` while they read, so that feeding a record may look at `self`.
        let mut cursors = std::mem::take(&mut self.cursors);
        let fed = cursors.read_pass(
            &*context.log,
            context.config.max_epoch_records,
            |partition, batch, end| {
                for record in batch {
                    match record {
                        VoteLogRecord::Vote(record) => {
                            let cast_at = record.vote.cast_at;
                            if cast_at >= self.started_at_us {
                                self.oldest_unpublished_cast_us = Some(
                                    self.oldest_unpublished_cast_us
                                        .map_or(cast_at, |oldest| oldest.min(cast_at)),
                                );
                            }
                            let decision = record.vote.decision_id;
                            if !self.inputs.knows(decision) {
                                learn_decision(&context.config, &context.shared, decision);
                                self.sync_decisions();
                            }
                            self.inputs.push(record);
                        }
                        VoteLogRecord::Close(record) => {
                            if self.inputs.push_close(record)
                                && let Some(directory) = &context.config.directory
                            {
                                directory.note_close(&record.close, record.position);
                            }
                        }
                    }
                }
                self.inputs.note_end(partition, end);
            },
        );
        self.cursors = cursors;
        fed.map_err(|error| error.to_string())
    }

    /// Moves the shared epoch on when this worker has something new.
    fn announce(&self, current: Epoch, fed: usize) {
        let (config, shared) = (&self.context.config, &self.context.shared);
        // An epoch is sealed when some worker has something new. The others follow: within
        // a process the shared epoch, across processes the epochs the dataflow's own
        // broadcasts (log ends, checkpoint markers) name, so the frontier moves and an idle
        // cluster rests. A slow clock tick covers what neither names (a decision upsert).
        if fed > 0 {
            let target = (current + 1).max(clock_epoch());
            shared.epoch.fetch_max(target, Ordering::AcqRel);
        } else if config.cluster.is_some() {
            let now = clock_epoch();
            if now >= current + config.cluster_tick.as_millis() as Epoch {
                shared.epoch.fetch_max(now, Ordering::AcqRel);
            }
        }
    }

    /// Starts a checkpoint when one is due (worker 0), and writes this worker's parts of
    /// those whose epochs completed.
    fn checkpoint(&mut self, current: Epoch) -> Result<(), String> {
        let (config, shared) = (&self.context.config, &self.context.shared);
        let Some(state) = &config.state else {
            return Ok(());
        };
        // Worker 0 starts a checkpoint now and then if some partition's end moved since the
        // last one (an idle cluster writes none), and seals right away so the checkpoint's
        // epoch completes even if all goes quiet.
        if self.index == 0
            && self.last_mark.elapsed() >= config.checkpoint_interval
            && self.inputs.take_log_moved()
        {
            self.inputs.mark_checkpoint(self.next_checkpoint);
            self.next_checkpoint += 1;
            shared.epoch.fetch_max(current + 1, Ordering::AcqRel);
            self.last_mark = Instant::now();
        }
        // A checkpoint's epoch may complete while this worker rests (it waits only for the
        // epochs it seals): look every time round.
        for due in self.inputs.due_checkpoints() {
            let full = config.full_checkpoint_every > 0
                && due.seq.is_multiple_of(config.full_checkpoint_every);
            let delta = encode_parts(&due.entries, MAX_PART_BYTES);
            let base = full.then(|| self.base()).transpose()?;
            let chunk = StateChunk {
                seq: due.seq,
                worker: self.index as u32,
                workers: self.peers as u32,
                ends: due.ends,
                delta: delta.clone(),
                base,
            };
            state
                .write(chunk)
                .map_err(|error| format!("writing engine checkpoint {}: {error}", due.seq))?;
            self.written
                .extend(delta.into_iter().filter(|part| !part.is_empty()));
        }
        Ok(())
    }

    /// Everything this worker restored or wrote so far, in parts: its base at a full
    /// checkpoint. Together the workers' bases hold every entry of the state exactly once.
    fn base(&self) -> Result<Vec<Vec<u8>>, String> {
        let chunks = &self.context.snapshot.chunks;
        let restored = self.restored_share.iter().map(|&i| chunks[i].as_slice());
        let written = self.written.iter().map(Vec::as_slice);
        pack_parts(restored.chain(written), MAX_PART_BYTES).map_err(|error| error.to_string())
    }

    /// The record's time-based checkpoint rule and its health, a few times a second, on
    /// this process's first worker.
    fn watch_record(&mut self) -> Result<(), String> {
        let context = self.context;
        if let Some(record) = context
            .record
            .as_ref()
            .filter(|_| self.index == context.first_local)
            && self.last_cut_check.elapsed() >= RECORD_TICK
        {
            self.last_cut_check = Instant::now();
            if let Some(reason) = record.failure() {
                return Err(reason);
            }
            record.cut_due(self.last_cut_check);
        }
        Ok(())
    }

    /// Seals the current epoch if the shared epoch or the dataflow asks for a later one,
    /// and waits until it is published; otherwise rests.
    fn seal(&mut self, worker: &mut Worker, current: Epoch, fed: usize) {
        let config = &self.context.config;
        let target = self
            .context
            .shared
            .epoch
            .load(Ordering::Acquire)
            .max(self.inputs.wanted_epoch())
            .max(self.sensors.as_ref().map_or(0, SensorWorker::wanted_epoch));
        if target > current {
            // Waits for the epoch just sealed only: the workers that must pass it know of
            // it, while a later target may be this process's alone.
            let sealed = self.inputs.seal_until(target);
            if let Some(sensors) = &mut self.sensors {
                sensors.seal_until(target);
            }
            self.inputs.run_until_published(worker, sealed);
            if let Some(cast_at) = self.oldest_unpublished_cast_us.take() {
                let waited_us = now_micros().saturating_sub(cast_at).max(0);
                metrics::histogram!("canopy_view_freshness_seconds").record(waited_us as f64 / 1e6);
            }
            if let Some(sensors) = &mut self.sensors {
                sensors.run_until_published(worker, sealed);
            }
            // A trickle makes tiny epochs, each paying the dataflow's fixed cost:
            // rest a moment so the next one gathers more.
            if fed < config.max_epoch_records / 100 {
                worker.step_or_park(Some(config.min_epoch_gap));
            }
        } else {
            worker.step_or_park(Some(config.idle_wait));
        }
    }
}

/// Adds a decision the log mentions but this process was not told about, from the
/// directory, so the vote that names it is tallied in the same epoch.
fn learn_decision(config: &EngineConfig, shared: &Shared, decision: DecisionId) {
    if shared.decisions().contains_key(&decision) {
        return;
    }
    let Some(found) = config.directory.as_ref().and_then(|d| d.lookup(decision)) else {
        return;
    };
    shared.decisions().insert(decision, found);
    shared.decisions_version.fetch_add(1, Ordering::AcqRel);
}
