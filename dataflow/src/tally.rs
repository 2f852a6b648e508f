//! The tally dataflow and the arithmetic of a tally.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use canopy_chain::leaf_hash;
use canopy_ingest::{LogRecord, Position, partition_for};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, SHARE_SCALE, WEIGHT_SCALE,
};
use differential_dataflow::VecCollection;
use differential_dataflow::collection::AsCollection;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::input::{Input, InputSession};
use foldhash::quality::FixedState;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::{Broadcast, Input as TimelyInput};
use timely::dataflow::operators::{Capability, InputCapability};
use timely::worker::Worker;

use crate::record::{RecordLeaf, VoteRecord, apply_record_epoch};
use crate::state::StateEntry;
use crate::views::{ViewStore, ViewUpdate};

/// Dataflow time: an epoch number. Every record fed between two seals shares an epoch.
pub type Epoch = u64;

/// What the tally needs of one logged vote.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Ballot {
    pub vote_id: u128,
    pub offset: u64,
    pub option: u16,
    pub component: Component,
    pub weight: u32,
}

/// The part of a decision the tally needs; fixed once the decision opens.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct DecisionParams {
    pub options: u16,
    pub weights: ComponentWeights,
    pub quorum: u64,
}

impl From<&Decision> for DecisionParams {
    fn from(decision: &Decision) -> Self {
        Self {
            options: decision.options.len() as u16,
            weights: decision.weights,
            quorum: decision.quorum,
        }
    }
}

/// Count and weighted sum of one (option, component), with the option's share of the
/// component's weighted sum.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct CellTally {
    pub option: u16,
    pub component: Component,
    pub count: u64,
    /// Sum of the weights, in millionths.
    pub weight_sum: u64,
    /// weight_sum / (the component's weight_sum over all options), in parts per billion.
    pub share_ppb: u64,
}

/// A decision's complete result.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Tally {
    /// Non-empty cells, ordered by (option, component).
    pub cells: Vec<CellTally>,
    /// Per option: Σ over components of component weight × share, in parts per billion.
    /// A component nobody has voted in yet contributes nothing.
    pub composite_ppb: Vec<u64>,
    /// Voters with a current vote.
    pub turnout: u64,
    pub turnout_by_component: [u64; 4],
    pub quorum: u64,
    pub quorum_met: bool,
}

impl Tally {
    /// Builds the result from per-(option, component) (count, weight_sum) sums. Cells with
    /// a zero count are dropped; cells are visited in any order.
    pub fn from_sums(
        params: &DecisionParams,
        sums: impl IntoIterator<Item = ((u16, Component), (u64, u64))>,
    ) -> Tally {
        let mut cells: Vec<CellTally> = sums
            .into_iter()
            .filter(|(_, (count, _))| *count > 0)
            .map(|((option, component), (count, weight_sum))| CellTally {
                option,
                component,
                count,
                weight_sum,
                share_ppb: 0,
            })
            .collect();
        cells.sort_unstable();
        let mut component_weight = [0u64; 4];
        let mut turnout_by_component = [0u64; 4];
        for cell in &cells {
            component_weight[cell.component.index()] += cell.weight_sum;
            turnout_by_component[cell.component.index()] += cell.count;
        }
        let mut composite_ppb = vec![0u64; usize::from(params.options)];
        for cell in &mut cells {
            let total = component_weight[cell.component.index()];
            cell.share_ppb =
                (u128::from(cell.weight_sum) * u128::from(SHARE_SCALE) / u128::from(total)) as u64;
            let component_weight = u128::from(params.weights.of(cell.component));
            if let Some(score) = composite_ppb.get_mut(usize::from(cell.option)) {
                *score += (component_weight * u128::from(cell.share_ppb) / u128::from(WEIGHT_SCALE))
                    as u64;
            }
        }
        let turnout = turnout_by_component.iter().sum();
        Tally {
            cells,
            composite_ppb,
            turnout,
            turnout_by_component,
            quorum: params.quorum,
            quorum_met: turnout >= params.quorum,
        }
    }

    /// The composite score of `option` as a fraction in [0, 1].
    pub fn composite(&self, option: u16) -> f64 {
        self.composite_ppb
            .get(usize::from(option))
            .map_or(0.0, |ppb| *ppb as f64 / SHARE_SCALE as f64)
    }
}

/// What the per-decision reduce sees: the decision's parameters, or one (option, component)
/// cell whose diff carries (count, weight_sum).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
enum DecisionEntry {
    Params(DecisionParams),
    Cell(u16, Component),
}

type VoteKey = (u128, u128);

/// An epoch's records held back until it is complete, with the capability to emit at it.
pub(crate) type HeldEpoch<D> = (Capability<Epoch>, Vec<D>);

/// Records held back per epoch until the epoch is complete.
pub(crate) type EpochBuffer<D> = BTreeMap<Epoch, HeldEpoch<D>>;

/// Holds a batch of a timely input (its records moved out of `batch`) under its epoch, with
/// a capability for that epoch, until the epoch is complete.
pub(crate) fn hold_epoch<D>(
    pending: &mut EpochBuffer<D>,
    capability: &InputCapability<Epoch>,
    batch: &mut Vec<D>,
) {
    let epoch = epoch_of(capability);
    pending
        .entry(epoch)
        .or_insert_with(|| (capability.delayed(&epoch, 0), Vec::new()))
        .1
        .append(batch);
}

/// Removes the oldest buffered epoch if the input can no longer add to it (`open` says
/// whether it still can).
pub(crate) fn pop_complete<D>(
    pending: &mut EpochBuffer<D>,
    open: impl Fn(&Epoch) -> bool,
) -> Option<(Epoch, HeldEpoch<D>)> {
    let entry = pending.first_entry()?;
    if open(entry.key()) {
        return None;
    }
    Some(entry.remove_entry())
}

/// A change to one decision's tally: ((decision, tally), diff).
type TallyUpdate = ((u128, Tally), i64);

/// One worker's handles on the tally dataflow: feed votes and decisions, seal epochs,
/// ask whether an epoch is fully reflected in the view store.
pub struct TallyInputs {
    votes: InputSession<Epoch, (VoteKey, Ballot), i64>,
    /// Present when the dataflow keeps the vote record.
    records: Option<InputSession<Epoch, (u128, RecordLeaf), i64>>,
    decisions: InputSession<Epoch, (u128, DecisionParams), i64>,
    /// (partition, end) of the partitions this worker feeds, sent when an epoch is sealed.
    ends_input: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u32, u64)>>>,
    probe: ProbeHandle<Epoch>,
    known_decisions: HashMap<DecisionId, DecisionParams>,
    views: Arc<dyn ViewStore>,
    /// End offsets of the partitions this worker fed, as of the current epoch.
    ends: HashMap<u32, u64>,
    sent_ends: HashMap<u32, u64>,
    published_ends: HashMap<u32, u64>,
    /// Present when the engine writes checkpoints of its state.
    checkpoints: Option<CheckpointCapture>,
    /// The epoch every worker's input must pass for what the others fed to complete.
    wanted: Rc<Cell<Epoch>>,
}

/// State entries a worker's operators produced, with their epochs, not yet written.
type CapturedState = Rc<RefCell<Vec<(Epoch, StateEntry)>>>;

/// A worker's side of engine checkpoints (see the state module).
struct CheckpointCapture {
    /// Checkpoint markers enter through worker 0 and reach every worker.
    markers: InputHandle<Epoch, CapacityContainerBuilder<Vec<u64>>>,
    /// Set when any worker's log ends moved since the last look.
    log_moved: Rc<Cell<bool>>,
    /// Markers this worker has received: (seq, epoch).
    received: Rc<RefCell<Vec<(u64, Epoch)>>>,
    /// State entries this worker's operators produced, with their epochs, not yet written.
    entries: CapturedState,
    /// This worker's partition ends at each epoch it sealed since the last checkpoint.
    ends_by_epoch: BTreeMap<Epoch, Vec<(u32, u64)>>,
}

/// One worker's part of a checkpoint, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueCheckpoint {
    pub seq: u64,
    pub ends: Vec<(u32, u64)>,
    pub entries: Vec<StateEntry>,
}

pub(crate) fn epoch_of(capability: &InputCapability<Epoch>) -> Epoch {
    *capability
        .least()
        .expect("a message carries at least one time")
}

/// Epoch 0 holds only what a restart restores; state entries from it are already stored.
const RESTORE_EPOCH: Epoch = 0;

/// Every partition's log end as of each epoch, as one operator sees it: every worker
/// broadcasts the ends of the partitions it feeds when it seals an epoch, so an operator
/// releasing epoch e on any process knows which log prefix e includes.
#[derive(Default)]
struct EndsAtEpoch {
    pending: BTreeMap<Epoch, Vec<(u32, u64)>>,
    ends: HashMap<u32, u64>,
}

impl EndsAtEpoch {
    fn absorb(&mut self, epoch: Epoch, ends: &mut Vec<(u32, u64)>) {
        self.pending.entry(epoch).or_default().append(ends);
    }

    /// Applies every buffered epoch for which `complete` holds, in order.
    fn settle(&mut self, complete: impl Fn(&Epoch) -> bool) {
        while let Some(entry) = self.pending.first_entry() {
            if !complete(entry.key()) {
                return;
            }
            for (partition, end) in entry.remove() {
                let slot = self.ends.entry(partition).or_insert(0);
                *slot = (*slot).max(end);
            }
        }
    }

    fn end(&self, partition: u32) -> u64 {
        self.ends.get(&partition).copied().unwrap_or(0)
    }
}

/// Builds the tally dataflow on this worker. Every worker of the computation (on every
/// process) must call it, with the same `partitions`, `record.is_some()` and `checkpoints`.
///
/// ```text
///  votes ((decision, voter), ballot)
///    └─ fold (per complete epoch, in log order): per (decision, voter), drop repeated
///       vote ids, keep the latest by offset; emit −old +new
///        └─ explode: (decision, cell(option, component)) with diff (1, weight)
///  decisions (decision, params) ─ explode: (decision, params) with diff (1, 0)
///    └─ concat ─ reduce: per decision, sums → shares, composite, turnout, quorum ─▶ Tally
///        └─ sink: buffer each epoch until complete, publish to the ViewStore
///  log ends (partition, end) ─ broadcast ─▶ the sink and the record: what an epoch includes
/// ```
///
/// With a [`VoteRecord`], every vote's leaf also goes, by decision, to the record operator,
/// which appends each complete epoch to the decision's Merkle log (see the record module).
/// With `checkpoints`, the fold and the record keep what they add to the engine's state
/// until [`TallyInputs::due_checkpoints`] hands it out (see the state module).
pub fn build_tally_dataflow(
    worker: &mut Worker,
    views: Arc<dyn ViewStore>,
    partitions: u32,
    record: Option<Arc<VoteRecord>>,
    checkpoints: bool,
) -> TallyInputs {
    let sink_views = Arc::clone(&views);
    let state_entries: CapturedState = Rc::default();
    let capture = checkpoints.then(|| Rc::clone(&state_entries));
    let received_markers: Rc<RefCell<Vec<(u64, Epoch)>>> = Rc::default();
    let log_moved: Rc<Cell<bool>> = Rc::default();
    let wanted: Rc<Cell<Epoch>> = Rc::default();
    let (votes, records, decisions, ends_input, markers, probe) =
        worker.dataflow::<Epoch, _, _>(|scope| {
            let (votes_input, votes) = scope.new_collection::<(VoteKey, Ballot), i64>();
            let (decisions_input, decisions) =
                scope.new_collection::<(u128, DecisionParams), i64>();
            let (ends_input, ends) = TimelyInput::new_input::<(u32, u64)>(&scope);
            let ends = ends.broadcast();

            let latest = latest_vote_per_voter(votes, capture.clone());

            let cells = latest.explode(|((decision, _voter), ballot): (VoteKey, Ballot)| {
                Some((
                    (
                        decision,
                        DecisionEntry::Cell(ballot.option, ballot.component),
                    ),
                    (1i64, i64::from(ballot.weight)),
                ))
            });
            let params = decisions.explode(|(decision, params)| {
                Some(((decision, DecisionEntry::Params(params)), (1i64, 0i64)))
            });

            let tallies = cells.concat(params).reduce_named(
                "TallyPerDecision",
                |_decision,
                 entries: &[(&DecisionEntry, (i64, i64))],
                 output: &mut Vec<(Tally, i64)>| {
                    // Params sort first; a decision that was never registered has no result yet.
                    let Some((DecisionEntry::Params(params), _)) = entries.first() else {
                        return;
                    };
                    let sums = entries
                        .iter()
                        .filter_map(|(entry, (count, weight))| match entry {
                            DecisionEntry::Cell(option, component) => {
                                Some(((*option, *component), (*count as u64, *weight as u64)))
                            }
                            DecisionEntry::Params(_) => None,
                        });
                    output.push((Tally::from_sums(params, sums), 1));
                },
            );

            let probe = ProbeHandle::new();
            tallies
                .inner
                .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
                    ends.clone(),
                    Pipeline,
                    Pipeline,
                    "PublishViews",
                    move |_capability, _info| {
                        let mut pending: EpochBuffer<TallyUpdate> = BTreeMap::new();
                        let mut log_ends = EndsAtEpoch::default();
                        move |(input, frontier), (ends_in, ends_frontier), _output| {
                            input.for_each(|capability, updates| {
                                for ((key, tally), time, diff) in updates.drain(..) {
                                    pending
                                        .entry(time)
                                        .or_insert_with(|| {
                                            (capability.delayed(&time, 0), Vec::new())
                                        })
                                        .1
                                        .push(((key, tally), diff));
                                }
                            });
                            ends_in.for_each(|time, ends| log_ends.absorb(epoch_of(&time), ends));
                            let complete = |epoch: &Epoch| {
                                !frontier.less_equal(epoch) && !ends_frontier.less_equal(epoch)
                            };
                            while let Some((epoch, (_capability, updates))) =
                                pop_complete(&mut pending, |epoch| !complete(epoch))
                            {
                                log_ends.settle(|settled| settled <= &epoch);
                                sink_views.publish(views_for_epoch(updates, &log_ends, partitions));
                            }
                            log_ends.settle(complete);
                        }
                    },
                )
                .probe_with(&probe);

            let records_input = record.map(|record| {
                let (input, leaves) = scope.new_collection::<(u128, RecordLeaf), i64>();
                let capture = capture.clone();
                type Update = ((u128, RecordLeaf), Epoch, i64);
                leaves
                    .inner
                    .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
                        ends.clone(),
                        Exchange::new(|update: &Update| (update.0).0.hashed()),
                        Pipeline,
                        "VoteRecord",
                        move |_capability, _info| {
                            let mut pending: EpochBuffer<(u128, RecordLeaf)> = BTreeMap::new();
                            let mut log_ends = EndsAtEpoch::default();
                            move |(input, frontier), (ends_in, ends_frontier), _output| {
                                input.for_each(|capability, updates| {
                                    for (leaf, time, _diff) in updates.drain(..) {
                                        pending
                                            .entry(time)
                                            .or_insert_with(|| {
                                                (capability.delayed(&time, 0), Vec::new())
                                            })
                                            .1
                                            .push(leaf);
                                    }
                                });
                                ends_in
                                    .for_each(|time, ends| log_ends.absorb(epoch_of(&time), ends));
                                let complete = |epoch: &Epoch| {
                                    !frontier.less_equal(epoch) && !ends_frontier.less_equal(epoch)
                                };
                                while let Some((epoch, (_capability, leaves))) =
                                    pop_complete(&mut pending, |epoch| !complete(epoch))
                                {
                                    log_ends.settle(|settled| settled <= &epoch);
                                    if let Some(capture) = capture.as_ref()
                                        && epoch != RESTORE_EPOCH
                                    {
                                        capture.borrow_mut().extend(leaves.iter().map(
                                            |(decision, leaf)| {
                                                (
                                                    epoch,
                                                    StateEntry::Leaf {
                                                        decision: *decision,
                                                        leaf: *leaf,
                                                    },
                                                )
                                            },
                                        ));
                                    }
                                    apply_record_epoch(&record, leaves, |partition| {
                                        log_ends.end(partition)
                                    });
                                }
                                log_ends.settle(complete);
                            }
                        },
                    )
                    .probe_with(&probe);
                input
            });

            // Ends are only sent when they change: a message at epoch e means some worker fed
            // e, so every worker must seal past it (and there is something to checkpoint).
            {
                let (moved, wanted) = (Rc::clone(&log_moved), Rc::clone(&wanted));
                ends.clone()
                    .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                        Pipeline,
                        "EpochSignals",
                        move |_capability, _info| {
                            move |input, _output| {
                                input.for_each(|time, ends| {
                                    if !ends.is_empty() {
                                        moved.set(true);
                                        wanted.set(wanted.get().max(epoch_of(&time) + 1));
                                    }
                                    ends.clear();
                                });
                            }
                        },
                    );
            }
            let markers = checkpoints.then(|| {
                let (markers_input, markers) = TimelyInput::new_input::<u64>(&scope);
                let received = Rc::clone(&received_markers);
                let wanted = Rc::clone(&wanted);
                markers
                    .broadcast()
                    .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                        Pipeline,
                        "CheckpointMarkers",
                        move |_capability, _info| {
                            move |input, _output| {
                                input.for_each(|time, seqs| {
                                    let mut received = received.borrow_mut();
                                    let epoch = epoch_of(&time);
                                    wanted.set(wanted.get().max(epoch + 1));
                                    received.extend(seqs.drain(..).map(|seq| (seq, epoch)));
                                });
                            }
                        },
                    )
                    .probe_with(&probe);
                markers_input
            });
            (
                votes_input,
                records_input,
                decisions_input,
                ends_input,
                markers,
                probe,
            )
        });
    TallyInputs {
        votes,
        records,
        decisions,
        ends_input,
        probe,
        known_decisions: HashMap::new(),
        views,
        ends: HashMap::new(),
        sent_ends: HashMap::new(),
        published_ends: HashMap::new(),
        wanted,
        checkpoints: markers.map(|markers| CheckpointCapture {
            markers,
            log_moved,
            received: received_markers,
            entries: state_entries,
            ends_by_epoch: BTreeMap::new(),
        }),
    }
}

/// Per (decision, voter), the current vote: among first deliveries of each vote id, the one
/// with the highest log offset. Emits a retraction of the voter's previous vote and the new
/// one whenever it changes.
///
/// The vote input only ever grows (the log is append-only), so "latest" is a fold with O(1)
/// work per ballot, kept in two hash maps. Each epoch is applied once it is complete, in log
/// order (by offset), whichever worker fed which record; this relies on each partition
/// being fed in offset order across epochs, which the engine and the benchmark do. A
/// differential `reduce` computes the same thing but rescans a voter's whole history
/// whenever it changes: it measured as half the server's CPU under a stream of changed
/// votes, and is quadratic in the votes of one voter.
fn latest_vote_per_voter<'scope>(
    votes: VecCollection<'scope, Epoch, (VoteKey, Ballot), i64>,
    capture: Option<CapturedState>,
) -> VecCollection<'scope, Epoch, (VoteKey, Ballot), i64> {
    type Update = ((VoteKey, Ballot), Epoch, i64);
    votes
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<Update>>, _, _, _>(
            Exchange::new(|update: &Update| (update.0).0.hashed()),
            "LatestVotePerVoter",
            |_capability, _info| {
                let mut seen: HashSet<(VoteKey, u128), FixedState> =
                    HashSet::with_hasher(FixedState::with_seed(0));
                let mut latest: HashMap<VoteKey, Ballot, FixedState> =
                    HashMap::with_hasher(FixedState::with_seed(0));
                let mut pending: EpochBuffer<(VoteKey, Ballot)> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|capability, updates| {
                        for ((key, ballot), time, diff) in updates.drain(..) {
                            debug_assert!(diff > 0, "the vote input is append-only");
                            pending
                                .entry(time)
                                .or_insert_with(|| (capability.delayed(&time, 0), Vec::new()))
                                .1
                                .push((key, ballot));
                        }
                    });
                    while let Some((time, (capability, mut ballots))) =
                        pop_complete(&mut pending, |epoch| frontier.less_equal(epoch))
                    {
                        ballots.sort_unstable_by_key(|(_, ballot)| ballot.offset);
                        let mut session = output.session(&capability);
                        for (key, ballot) in ballots {
                            if !seen.insert((key, ballot.vote_id)) {
                                continue;
                            }
                            if let Some(capture) = capture.as_ref()
                                && time != RESTORE_EPOCH
                            {
                                capture.borrow_mut().push((
                                    time,
                                    StateEntry::Ballot {
                                        decision: key.0,
                                        voter: key.1,
                                        ballot,
                                    },
                                ));
                            }
                            match latest.get_mut(&key) {
                                Some(current) if current.offset >= ballot.offset => {}
                                Some(current) => {
                                    session.give(((key, *current), time, -1));
                                    session.give(((key, ballot), time, 1));
                                    *current = ballot;
                                }
                                None => {
                                    session.give(((key, ballot), time, 1));
                                    latest.insert(key, ballot);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

/// Turns one complete epoch of tally changes into view updates: the new tally of each
/// changed decision, or its removal, tagged with the log position the epoch includes.
fn views_for_epoch(
    updates: Vec<((u128, Tally), i64)>,
    log_ends: &EndsAtEpoch,
    partitions: u32,
) -> Vec<ViewUpdate> {
    let mut changed: HashMap<u128, Option<Tally>> = HashMap::new();
    for ((decision, tally), diff) in updates {
        let slot = changed.entry(decision).or_insert(None);
        if diff > 0 {
            *slot = Some(tally);
        }
    }
    changed
        .into_iter()
        .map(|(decision, tally)| {
            let decision = DecisionId(decision);
            let partition = partition_for(decision, partitions);
            let as_of = Position {
                partition,
                offset: log_ends.end(partition),
            };
            ViewUpdate {
                decision,
                tally,
                as_of,
            }
        })
        .collect()
}

impl TallyInputs {
    /// Feeds one logged vote into the current epoch.
    pub fn push(&mut self, record: &LogRecord) {
        let vote = &record.vote;
        let ballot = Ballot {
            vote_id: vote.vote_id.0,
            offset: record.position.offset,
            option: vote.option,
            component: vote.component,
            weight: vote.weight.0,
        };
        self.votes
            .update(((vote.decision_id.0, vote.voter_id.0), ballot), 1);
        if let Some(records) = &mut self.records {
            let leaf = RecordLeaf {
                offset: record.position.offset,
                voter: vote.voter_id.0,
                vote_id: vote.vote_id.0,
                leaf: leaf_hash(&record.logged().leaf_data()),
            };
            records.update((vote.decision_id.0, leaf), 1);
        }
        let end = self.ends.entry(record.position.partition).or_insert(0);
        *end = (*end).max(record.position.offset + 1);
    }

    /// Whether this worker has been given `decision`'s parameters.
    pub fn knows(&self, decision: DecisionId) -> bool {
        self.known_decisions.contains_key(&decision)
    }

    /// Adds a decision, or replaces its parameters (the earlier ones are retracted).
    pub fn upsert_decision(&mut self, decision: &Decision) {
        let params = DecisionParams::from(decision);
        if let Some(old) = self.known_decisions.insert(decision.id, params) {
            if old == params {
                return;
            }
            self.decisions.update((decision.id.0, old), -1);
        }
        self.decisions.update((decision.id.0, params), 1);
    }

    /// Records that this worker has fed `partition` up to (not including) `end`, even if
    /// nothing new came in, so the view store's frontier can move.
    pub fn note_end(&mut self, partition: u32, end: u64) {
        let slot = self.ends.entry(partition).or_insert(0);
        *slot = (*slot).max(end);
    }

    /// Feeds restored engine state (see the state module). Call before the first seal, so
    /// it lands in the restore epoch, on any worker: the dataflow routes each entry to the
    /// worker that owns its key.
    pub fn restore(&mut self, entries: &[StateEntry]) {
        for entry in entries {
            match *entry {
                StateEntry::Ballot {
                    decision,
                    voter,
                    ballot,
                } => self.votes.update(((decision, voter), ballot), 1),
                StateEntry::Leaf { decision, leaf } => {
                    if let Some(records) = &mut self.records {
                        records.update((decision, leaf), 1);
                    }
                }
            }
        }
    }

    /// Closes the current epoch and returns it; what is fed next goes into the next one.
    pub fn seal(&mut self) -> Epoch {
        let next = *self.votes.time() + 1;
        self.seal_until(next)
    }

    /// Closes the current epoch and skips ahead so the next one is `next` (at least the
    /// epoch after the current one): how an idle worker catches up with busy ones.
    pub fn seal_until(&mut self, next: Epoch) -> Epoch {
        let epoch = *self.votes.time();
        let changed: Vec<(u32, u64)> = self
            .ends
            .iter()
            .filter(|(partition, end)| self.sent_ends.get(partition) != Some(end))
            .map(|(partition, end)| (*partition, *end))
            .collect();
        for (partition, end) in &changed {
            self.ends_input.send((*partition, *end));
            self.sent_ends.insert(*partition, *end);
        }
        if let Some(checkpoints) = &mut self.checkpoints
            && !changed.is_empty()
        {
            let mut ends: Vec<(u32, u64)> = self.ends.iter().map(|(p, e)| (*p, *e)).collect();
            ends.sort_unstable();
            checkpoints.ends_by_epoch.insert(epoch, ends);
        }
        let next = next.max(epoch + 1);
        self.votes.advance_to(next);
        self.decisions.advance_to(next);
        self.ends_input.advance_to(next);
        self.votes.flush();
        self.decisions.flush();
        self.ends_input.flush();
        if let Some(records) = &mut self.records {
            records.advance_to(next);
            records.flush();
        }
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.markers.advance_to(next);
            checkpoints.markers.flush();
        }
        epoch
    }

    /// The epoch this worker must seal up to so that every epoch another worker fed (or
    /// marked for a checkpoint), on any process, can complete.
    pub fn wanted_epoch(&self) -> Epoch {
        self.wanted.get()
    }

    /// Whether any partition's end moved, anywhere in the computation, since the last call:
    /// whether a checkpoint now would hold anything new.
    pub fn take_log_moved(&mut self) -> bool {
        self.checkpoints
            .as_ref()
            .is_some_and(|checkpoints| checkpoints.log_moved.replace(false))
    }

    /// Starts checkpoint `seq` at the current epoch; every worker writes its part once the
    /// epoch is complete. One worker of the computation marks checkpoints.
    pub fn mark_checkpoint(&mut self, seq: u64) {
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.markers.send(seq);
        }
    }

    /// This worker's parts of the checkpoints whose epochs are complete everywhere: the
    /// state entries of epochs up to the checkpoint's (taken out of the buffer) and the ends
    /// of the partitions this worker feeds as of that epoch.
    pub fn due_checkpoints(&mut self) -> Vec<DueCheckpoint> {
        let Some(checkpoints) = &mut self.checkpoints else {
            return Vec::new();
        };
        let mut due = Vec::new();
        let mut received = checkpoints.received.borrow_mut();
        received.sort_unstable_by_key(|(_, epoch)| *epoch);
        while let Some(&(seq, epoch)) = received.first() {
            if self.probe.less_equal(&epoch) {
                break;
            }
            received.remove(0);
            // The fold and the record each add in epoch order, but interleaved.
            let mut entries = checkpoints.entries.borrow_mut();
            let (taken, kept): (Vec<_>, Vec<_>) =
                entries.drain(..).partition(|(at, _)| *at <= epoch);
            *entries = kept;
            let taken: Vec<StateEntry> = taken.into_iter().map(|(_, entry)| entry).collect();
            let ends = checkpoints
                .ends_by_epoch
                .range(..=epoch)
                .next_back()
                .map(|(_, ends)| ends.clone())
                .unwrap_or_default();
            checkpoints.ends_by_epoch = checkpoints.ends_by_epoch.split_off(&(epoch + 1));
            if !ends.is_empty() {
                checkpoints.ends_by_epoch.insert(epoch, ends.clone());
            }
            due.push(DueCheckpoint {
                seq,
                ends,
                entries: taken,
            });
        }
        due
    }

    /// The epoch that records pushed now go into.
    pub fn current_epoch(&self) -> Epoch {
        *self.votes.time()
    }

    /// True once every worker's results for `epoch` are in the view store.
    pub fn is_published(&self, epoch: Epoch) -> bool {
        !self.probe.less_equal(&epoch)
    }

    /// Tells the view store that the partitions this worker feeds are complete up to their
    /// ends as of the last published epoch. Call after [`is_published`](Self::is_published).
    pub fn publish_frontier(&mut self) {
        for (partition, end) in &self.ends {
            if self.published_ends.get(partition) != Some(end) {
                self.views.advance(*partition, *end);
                self.published_ends.insert(*partition, *end);
            }
        }
    }

    /// Steps `worker` until `epoch` is published, then advances the view store's frontier.
    pub fn run_until_published(&mut self, worker: &mut Worker, epoch: Epoch) {
        // Parks when there is nothing to do: in a cluster the epoch may wait on another
        // process, whose messages wake the worker; spinning would burn a core meanwhile.
        while self.probe.less_equal(&epoch) {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        self.publish_frontier();
    }
}
