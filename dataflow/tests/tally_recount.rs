//! The incremental tally must equal a from-scratch recount after every epoch, whatever the
//! stream: changed votes, repeated deliveries, decisions registered late or re-weighted,
//! any epoch boundaries, one or two workers, and a decision of each voting method (the
//! recount counting each by its method's reference rules, ranked choice with its rounds). The vote record must hold, per decision, the
//! first delivery of every vote in log order, and every checkpoint it cuts must be signed,
//! match that oracle's root at its size, and cover exactly the votes below its position.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_chain::{Checkpoint, MerkleLog, NoteSigner, leaf_hash, verify_inclusion};

use canopy_dataflow::*;
use canopy_ingest::{LogRecord, Position, partition_for};
use canopy_schemas::*;
use proptest::prelude::*;
use timely::execute::{Config, execute};

#[derive(Clone, Debug)]
enum Step {
    /// A new vote (a voter's first, or a changed one).
    Cast {
        decision: usize,
        voter: u8,
        /// The options the ballot names, in order, made into the decision's method's
        /// ballot (see [`ballot_of`]).
        picks: Vec<u16>,
        component: u8,
        weight: u32,
    },
    /// The same vote delivered again (a retry, a replay).
    Redeliver {
        back: usize,
    },
    /// The decision's parameters change (before it opens).
    Reweight {
        decision: usize,
        weights: [u32; 4],
        quorum: u64,
    },
    /// The decision becomes known to the dataflow.
    Register {
        decision: usize,
    },
    Seal,
}

/// One decision of each method, [`Method::ALL`] in order.
const DECISIONS: usize = 4;
const CREDITS: u32 = 9;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..DECISIONS, 0u8..6, proptest::collection::vec(0u16..3, 1..4), 0u8..4, 1u32..5_000_000)
            .prop_map(|(decision, voter, picks, component, weight)| Step::Cast { decision, voter, picks, component, weight }),
        3 => (0usize..40).prop_map(|back| Step::Redeliver { back }),
        1 => (0..DECISIONS, 0u32..=1_000_000, 0u32..=1_000_000, 0u64..6).prop_map(|(decision, a, b, quorum)| {
            let (low, high) = (a.min(b), a.max(b));
            Step::Reweight { decision, weights: [low, high - low, 1_000_000 - high, 0], quorum }
        }),
        1 => (0..DECISIONS).prop_map(|decision| Step::Register { decision }),
        3 => Just(Step::Seal),
    ]
}

/// A ballot of `method` from `picks` (1 to 3 options of 3, repeats allowed): the first
/// (single choice), the set (approval), the order without repeats (ranked choice), or the
/// options without repeats with 2 votes on the first and 1 on each other (quadratic: at
/// most 6 credits of the 9).
fn ballot_of(method: Method, picks: &[u16]) -> canopy_schemas::Ballot {
    let mut distinct: Vec<u16> = Vec::new();
    for pick in picks {
        if !distinct.contains(pick) {
            distinct.push(*pick);
        }
    }
    match method {
        Method::SingleChoice => canopy_schemas::Ballot::single_choice(picks[0]),
        Method::Approval => canopy_schemas::Ballot::approval(&distinct),
        Method::RankedChoice => canopy_schemas::Ballot::ranked_choice(&distinct),
        Method::Quadratic => {
            let votes: Vec<(u16, u16)> = distinct
                .iter()
                .enumerate()
                .map(|(n, option)| (*option, if n == 0 { 2 } else { 1 }))
                .collect();
            canopy_schemas::Ballot::quadratic(&votes)
        }
    }
    .unwrap()
}

fn decision(index: usize, weights: [u32; 4], quorum: u64) -> Decision {
    let method = Method::ALL[index % Method::ALL.len()];
    Decision {
        electorate: Default::default(),
        credits: if method == Method::Quadratic {
            CREDITS
        } else {
            0
        },
        id: DecisionId(1000 + index as u128),
        title: format!("decision {index}"),
        description: String::new(),
        region: "r".into(),
        options: vec!["a".into(), "b".into(), "c".into()],
        opens_at: 0,
        closes_at: i64::MAX,
        weights: ComponentWeights(weights),
        quorum,
        method,
    }
}

/// What worker 0 feeds at each epoch, and the expected state after it.
struct Epoch {
    records: Vec<LogRecord>,
    decisions: Vec<Decision>,
    /// Decisions registered so far, with their current parameters.
    registered: Vec<Decision>,
    /// All records so far.
    prefix: Vec<LogRecord>,
    ends: HashMap<u32, u64>,
}

/// The epoch that ends now: what worker 0 feeds in it (`current`), and the expected state
/// after it, from the decisions registered so far and the log so far.
fn close_epoch(
    current: (Vec<LogRecord>, Vec<Decision>),
    params: &[Decision],
    registered: &[bool],
    prefix: &[LogRecord],
    ends: &HashMap<u32, u64>,
) -> Epoch {
    let (records, decisions) = current;
    let known = params
        .iter()
        .zip(registered)
        .filter(|(_, r)| **r)
        .map(|(d, _)| d.clone())
        .collect();
    Epoch {
        records,
        decisions,
        registered: known,
        prefix: prefix.to_vec(),
        ends: ends.clone(),
    }
}

fn plan(steps: &[Step], partitions: u32) -> Vec<Epoch> {
    let mut epochs = Vec::new();
    let mut current = (Vec::new(), Vec::new());
    let mut prefix: Vec<LogRecord> = Vec::new();
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut params: Vec<Decision> = (0..DECISIONS)
        .map(|i| decision(i, ComponentWeights::DEFAULT.0, 2))
        .collect();
    let mut registered = vec![false; DECISIONS];
    // Decision 0 is known from the start; the others only once registered.
    current.1.push(params[0].clone());
    registered[0] = true;
    let mut next_vote = 0u128;
    let append = |vote: Vote,
                  current: &mut (Vec<LogRecord>, Vec<Decision>),
                  prefix: &mut Vec<LogRecord>,
                  ends: &mut HashMap<u32, u64>| {
        let partition = partition_for(vote.decision_id, partitions);
        let end = ends.entry(partition).or_insert(0);
        let record = LogRecord {
            sealed_voter: canopy_schemas::SealedVoter::NONE,
            leaf_version: canopy_schemas::LeafVersion::V2,
            position: Position {
                partition,
                offset: *end,
            },
            vote,
            commitment: VoterCommitment::new(
                &VoterSalt([vote.voter_id.0 as u8; 32]),
                vote.voter_id,
                vote.decision_id,
            ),
        };
        *end += 1;
        current.0.push(record);
        prefix.push(record);
    };
    for step in steps {
        match step {
            Step::Cast {
                decision,
                voter,
                picks,
                component,
                weight,
            } => {
                next_vote += 1;
                let vote = Vote {
                    vote_id: VoteId(next_vote),
                    decision_id: params[*decision].id,
                    voter_id: VoterId(u128::from(*voter)),
                    ballot: ballot_of(params[*decision].method, picks),
                    component: Component::from_code(*component).unwrap(),
                    weight: Weight(*weight),
                    cast_at: 0,
                };
                append(vote, &mut current, &mut prefix, &mut ends);
            }
            Step::Redeliver { back } => {
                if let Some(earlier) = prefix.len().checked_sub(back + 1).map(|i| prefix[i].vote) {
                    append(earlier, &mut current, &mut prefix, &mut ends);
                }
            }
            Step::Reweight {
                decision: index,
                weights,
                quorum,
            } => {
                params[*index] = decision(*index, *weights, *quorum);
                if registered[*index] {
                    current.1.push(params[*index].clone());
                }
            }
            Step::Register { decision } => {
                registered[*decision] = true;
                current.1.push(params[*decision].clone());
            }
            Step::Seal => {}
        }
        if matches!(step, Step::Seal) {
            let sealed = std::mem::take(&mut current);
            epochs.push(close_epoch(sealed, &params, &registered, &prefix, &ends));
        }
    }
    epochs.push(close_epoch(current, &params, &registered, &prefix, &ends));
    epochs
}

#[derive(Default)]
struct CollectedCheckpoints(Mutex<Vec<CutCheckpoint>>);

impl CheckpointSink for CollectedCheckpoints {
    fn store(&self, checkpoint: CutCheckpoint) {
        self.0.lock().unwrap().push(checkpoint);
    }
}

/// The record oracle: per decision, the leaves of the first delivery of each (voter, vote
/// id), in log order, with their offsets.
fn expected_record(prefix: &[LogRecord]) -> HashMap<DecisionId, Vec<(u64, canopy_chain::Hash)>> {
    let mut seen = HashSet::new();
    let mut leaves: HashMap<DecisionId, Vec<(u64, canopy_chain::Hash)>> = HashMap::new();
    for record in prefix {
        let vote = &record.vote;
        if seen.insert((vote.decision_id, vote.voter_id, vote.vote_id)) {
            leaves.entry(vote.decision_id).or_default().push((
                record.position.offset,
                leaf_hash(&record.logged().leaf_data()),
            ));
        }
    }
    leaves
}

fn check_record(
    number: usize,
    epoch: &Epoch,
    record: &VoteRecord,
    cuts: &CollectedCheckpoints,
    signer: &NoteSigner,
) -> Result<(), String> {
    let oracle = expected_record(&epoch.prefix);
    for (decision, leaves) in &oracle {
        let mut tree = MerkleLog::new();
        for (_, leaf) in leaves {
            tree.append_hash(*leaf);
        }
        let size = record.size(*decision);
        if size != tree.size() || record.root_at(*decision, size) != Ok(tree.root()) {
            return Err(format!(
                "epoch {number}, {decision}: record has {size} leaves, expected {}",
                tree.size()
            ));
        }
        for (index, (_, leaf)) in leaves.iter().enumerate() {
            let index = index as u64;
            if record.index_of(*decision, leaf) != Some(index) {
                return Err(format!(
                    "epoch {number}, {decision}: leaf {index} not found"
                ));
            }
            let proof = record
                .inclusion_proof(*decision, index, size)
                .map_err(|e| e.to_string())?;
            verify_inclusion(leaf, index, size, &proof, &tree.root()).map_err(|e| e.to_string())?;
        }
    }
    let verifier = signer.verifier();
    for cut in cuts.0.lock().unwrap().iter() {
        let checkpoint = Checkpoint::verify(&cut.note, &verifier).map_err(|e| e.to_string())?;
        let leaves = oracle.get(&cut.decision).cloned().unwrap_or_default();
        let below = leaves
            .iter()
            .filter(|(offset, _)| *offset < cut.as_of.offset)
            .count() as u64;
        let mut tree = MerkleLog::new();
        for (_, leaf) in &leaves {
            tree.append_hash(*leaf);
        }
        if checkpoint.size != cut.size
            || below != cut.size
            || tree.root_at(cut.size) != Ok(cut.root)
            || checkpoint.root != cut.root
        {
            return Err(format!(
                "epoch {number}: checkpoint {cut:?} does not match the log ({below} leaves below its position)"
            ));
        }
    }
    Ok(())
}

fn run(steps: Vec<Step>, workers: usize, partitions: u32) -> Result<(), String> {
    let epochs = Arc::new(plan(&steps, partitions));
    let views = Arc::new(InMemoryViews::new());
    let signer = NoteSigner::from_seed("test.example", &[9; 32]).unwrap();
    let cuts = Arc::new(CollectedCheckpoints::default());
    let record = Arc::new(VoteRecord::new(
        signer.clone(),
        RecordConfig {
            checkpoint_every: 3,
            checkpoint_interval: Duration::from_secs(3600),
            origin_prefix: "test.example".into(),
        },
        partitions,
        cuts.clone(),
    ));
    let results = execute(
        Config::process(workers),
        move |worker| -> Result<(), String> {
            let view_store: Arc<dyn ViewStore> = views.clone();
            let mut inputs = build_tally_dataflow(
                worker,
                view_store,
                partitions,
                Some(Arc::clone(&record)),
                false,
            );
            for (number, epoch) in epochs.iter().enumerate() {
                if worker.index() == 0 {
                    for decision in &epoch.decisions {
                        inputs.upsert_decision(decision);
                    }
                    for record in &epoch.records {
                        inputs.push(record);
                    }
                }
                let sealed = inputs.seal();
                inputs.run_until_published(worker, sealed);
                if worker.index() != 0 {
                    continue;
                }
                check_record(number, epoch, &record, &cuts, &signer)?;
                let expected = recount(&epoch.prefix, &epoch.registered);
                let actual: HashMap<DecisionId, DecisionView> = views
                    .all()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|v| (v.decision, v))
                    .collect();
                if actual.len() != expected.len() {
                    return Err(format!(
                        "epoch {number}: {} views, expected {}",
                        actual.len(),
                        expected.len()
                    ));
                }
                for (decision, tally) in &expected {
                    let view = actual
                        .get(decision)
                        .ok_or(format!("epoch {number}: no view of {decision}"))?;
                    if &view.tally != tally {
                        return Err(format!(
                            "epoch {number}, {decision}:\n dataflow {:?}\n recount  {tally:?}",
                            view.tally
                        ));
                    }
                    let partition = partition_for(*decision, partitions);
                    let end = epoch.ends.get(&partition).copied().unwrap_or(0);
                    if view.as_of
                        != (Position {
                            partition,
                            offset: end,
                        })
                    {
                        return Err(format!(
                            "epoch {number}, {decision}: as_of {:?}, expected end {end}",
                            view.as_of
                        ));
                    }
                }
            }
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    for result in results.join() {
        result??;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tallies_equal_a_recount_after_every_epoch(
        steps in proptest::collection::vec(step(), 0..120),
        workers in 1usize..=2,
        partitions in 1u32..=3,
    ) {
        if let Err(message) = run(steps, workers, partitions) {
            prop_assert!(false, "{}", message);
        }
    }
}

#[test]
fn shares_and_composite_follow_the_weights() {
    let params = DecisionParams {
        options: 2,
        weights: ComponentWeights([500_000, 500_000, 0, 0]),
        quorum: 4,
        method: Method::SingleChoice,
        credits: 0,
    };
    let democratic = Component::Democratic;
    let expert = Component::Expert;
    // Democratic: option 0 has 3 of 4 voters; expert: option 1 has all the weight.
    let tally = Tally::from_sums(
        &params,
        [
            ((0, democratic), (3, 3_000_000)),
            ((1, democratic), (1, 1_000_000)),
            ((1, expert), (2, 5_000_000)),
        ],
    );
    let share = |option, component| {
        tally
            .cells
            .iter()
            .find(|c| c.option == option && c.component == component)
            .unwrap()
            .share_ppb
    };
    assert_eq!(share(0, democratic), 750_000_000);
    assert_eq!(share(1, democratic), 250_000_000);
    assert_eq!(share(1, expert), 1_000_000_000);
    assert_eq!(tally.composite_ppb, vec![375_000_000, 625_000_000]);
    assert_eq!(tally.turnout, 6);
    assert_eq!(tally.turnout_by_component, [4, 2, 0, 0]);
    assert!(tally.quorum_met);
    assert!((tally.composite(1) - 0.625).abs() < 1e-12);
}
