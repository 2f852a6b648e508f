//! `canopy loadgen`: concurrent appenders casting synthetic, valid votes into the embedded
//! vote log through the validating gate.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use canopy_ingest::{Gate, SegmentLogConfig};
use canopy_schemas::clock::now_micros;
use canopy_schemas::synthetic::random_vote;
use canopy_schemas::{
    ComponentWeights, Decision, DecisionId, LoggedVote, Method, VoterId, VoterSalt,
};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::DataFlags;
use crate::log_cmd::{decisions_file, load_decisions, open_log};

#[derive(Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    data: DataFlags,
    /// Decisions to create when the data directory has none yet.
    #[arg(long, default_value_t = 20)]
    decisions: usize,
    #[arg(long, default_value_t = 8)]
    appenders: usize,
    /// Votes to cast in all; 0 casts until the process is stopped.
    #[arg(long, default_value_t = 0)]
    votes: u64,
    /// Distinct voters per decision; fewer voters means more changed votes.
    #[arg(long, default_value_t = 200)]
    voters: u128,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partitions of a new log.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Segment size of the log, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// Print `ack <vote id> <partition> <offset>` on stdout for every durable vote.
    #[arg(long)]
    print_acks: bool,
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let data_dir = args.data.load()?.data_dir;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let decisions = match decisions_file(&data_dir).exists() {
        true => load_decisions(&data_dir)?,
        false => create_decisions(&args, &data_dir)?,
    };
    let config = SegmentLogConfig {
        partitions: args.partitions,
        segment_bytes: args.segment_bytes,
        ..Default::default()
    };
    let gate = Arc::new(Gate::new(Arc::new(open_log(&data_dir, config)?)));
    let now = now_micros();
    for decision in &decisions {
        gate.register(decision.clone(), now)?;
    }
    let decisions = Arc::new(decisions);
    // Slots handed out to appenders (bounded by --votes), and votes made durable.
    let reserved = Arc::new(AtomicU64::new(0));
    let cast = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let appenders: Vec<_> = (0..args.appenders)
        .map(|appender| {
            let (gate, decisions, reserved, cast) = (
                Arc::clone(&gate),
                Arc::clone(&decisions),
                Arc::clone(&reserved),
                Arc::clone(&cast),
            );
            let (limit, voters, print_acks) = (args.votes, args.voters, args.print_acks);
            let mut rng = StdRng::seed_from_u64(
                args.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(appender as u64),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                let stdout = std::io::stdout();
                while limit == 0 || reserved.fetch_add(1, Ordering::Relaxed) < limit {
                    let decision = &decisions[rng.random_range(0..decisions.len())];
                    let voter = VoterId(rng.random_range(0..voters));
                    let vote = random_vote(&mut rng, decision, voter, now_micros());
                    let position = gate.submit(&[LoggedVote::new(vote, &LOADGEN_SALT)])?[0];
                    if print_acks {
                        writeln!(
                            stdout.lock(),
                            "ack {} {} {}",
                            vote.vote_id,
                            position.partition,
                            position.offset
                        )?;
                    }
                    cast.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut last_report = Instant::now();
    while appenders.iter().any(|a| !a.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if last_report.elapsed() >= Duration::from_secs(1) {
            let done = cast.load(Ordering::Relaxed);
            eprintln!(
                "canopy loadgen: {done} votes, {:.0} votes/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    for appender in appenders {
        appender
            .join()
            .map_err(|_| anyhow::anyhow!("an appender panicked"))??;
    }
    Ok(())
}

fn create_decisions(args: &LoadgenArgs, data_dir: &Path) -> anyhow::Result<Vec<Decision>> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let decisions: Vec<Decision> = (0..args.decisions)
        .map(|i| Decision {
            electorate: Default::default(),
            credits: 0,
            id: DecisionId(rng.random()),
            title: format!("Synthetic decision {i}"),
            description: String::new(),
            region: format!("region-{}", i % 5),
            options: (0..2 + i % 3).map(|o| format!("option {o}")).collect(),
            opens_at: 0,
            closes_at: i64::MAX,
            weights: ComponentWeights::DEFAULT,
            quorum: 50,
            method: Method::SingleChoice,
        })
        .collect();
    let path = decisions_file(data_dir);
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(&decisions)?)
        .with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(decisions)
}

/// Load-generator voters are synthetic: nobody's identity needs unlinking, so they share
/// one salt.
const LOADGEN_SALT: VoterSalt = VoterSalt([0x5a; 32]);
