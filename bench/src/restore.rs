//! `canopy-bench restore`: how long a restarting cluster takes to load its engine state from
//! PostgreSQL as the checkpoint history grows, with full checkpoints and compaction and
//! without (every checkpoint a delta, kept forever, as before issue 18).
//!
//! The same K checkpoints of M entries (half first deliveries of votes, half record leaves
//! with their encodings, shared out among W workers as the engine does) go into two
//! throwaway databases; at a few points of the history the restore, as a worker process
//! does it (load the snapshot, decode every part), is timed in each.

use std::time::{Duration, Instant};

use canopy_dataflow::{
    Ballot, LeafEntry, MAX_PART_BYTES, RecordLeaf, StateChunk, StateEntry, decode_entries,
    encode_parts, pack_parts,
};
use canopy_schemas::Component;
use canopy_serving::store::{MetadataStore, PostgresStore};
use canopy_testkit::TestDatabase;
use serde_json::json;

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Checkpoints written (K).
    #[arg(long, default_value_t = 1_000)]
    checkpoints: u64,
    /// Entries per checkpoint, all workers together (M).
    #[arg(long, default_value_t = 200)]
    entries: usize,
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// With compaction: every this many checkpoints a full one.
    #[arg(long, default_value_t = 20)]
    full_every: u64,
    /// Points of the history at which the restore is timed.
    #[arg(long, default_value_t = 4)]
    points: u64,
}

/// One history point's measurement.
struct Point {
    checkpoints: u64,
    rows: i64,
    restore: Duration,
}

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        eprintln!(
            "restore: {} checkpoints of {} entries, {} workers, PostgreSQL at {}",
            args.checkpoints,
            args.entries,
            args.workers,
            canopy_testkit::postgres_admin_url()
        );
        let (without, write_without, state_bytes) = history(&args, 0).await?;
        let (with, write_with, _) = history(&args, args.full_every).await?;
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        let (last_without, last_with) = (
            without.last().expect("at least one point"),
            with.last().expect("at least one point"),
        );
        println!(
            "{}",
            json!({
                "bench": "restore",
                "checkpoints": args.checkpoints,
                "entries_per_checkpoint": args.entries,
                "workers": args.workers,
                "full_every": args.full_every,
                "state_mb": (state_bytes as f64 / 1e4).round() / 100.0,
                "rows_without": last_without.rows,
                "restore_ms_without": ms(last_without.restore),
                "rows_with": last_with.rows,
                "restore_ms_with": ms(last_with.restore),
                "ratio": (last_without.restore.as_secs_f64() / last_with.restore.as_secs_f64() * 100.0).round() / 100.0,
                "history": without.iter().map(|p| p.checkpoints).collect::<Vec<_>>(),
                "rows_without_at": without.iter().map(|p| p.rows).collect::<Vec<_>>(),
                "restore_ms_without_at": without.iter().map(|p| ms(p.restore)).collect::<Vec<_>>(),
                "rows_with_at": with.iter().map(|p| p.rows).collect::<Vec<_>>(),
                "restore_ms_with_at": with.iter().map(|p| ms(p.restore)).collect::<Vec<_>>(),
                "write_ms_without": ms(write_without),
                "write_ms_with": ms(write_with),
            })
        );
        Ok(())
    })
}

/// Writes the history into a fresh database (full checkpoints every `full_every`, or never
/// with 0) and times the restore at each point; returns the points, the time spent
/// writing, and the state's size in bytes.
async fn history(
    args: &RestoreArgs,
    full_every: u64,
) -> anyhow::Result<(Vec<Point>, Duration, usize)> {
    let database = TestDatabase::create().await;
    let store = PostgresStore::connect(&database.url).await?;
    store.migrate().await?;
    let label = if full_every == 0 {
        "without compaction"
    } else {
        "with compaction"
    };
    let workers = args.workers.max(1);
    // What each worker has written: its base at a full checkpoint.
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); workers as usize];
    let mut writing = Duration::ZERO;
    let mut state_bytes = 0usize;
    let mut next = 0u128;
    let every_point = (args.checkpoints / args.points.max(1)).max(1);
    let mut points = Vec::new();
    for seq in 1..=args.checkpoints {
        for worker in 0..workers {
            let count = args.entries / workers as usize;
            let entries: Vec<StateEntry> = (0..count as u128).map(|i| entry(next + i)).collect();
            next += count as u128;
            let delta = encode_parts(&entries, MAX_PART_BYTES);
            state_bytes += delta.iter().map(Vec::len).sum::<usize>();
            let full = full_every > 0 && seq.is_multiple_of(full_every);
            let base = full
                .then(|| {
                    pack_parts(
                        written[worker as usize].iter().map(Vec::as_slice),
                        MAX_PART_BYTES,
                    )
                })
                .transpose()?;
            let chunk = StateChunk {
                seq,
                worker,
                workers,
                ends: vec![(worker, seq * 1000)],
                delta: delta.clone(),
                base,
            };
            let started = Instant::now();
            store.write_engine_chunk(&chunk, 0).await?;
            if full {
                store.compact_engine_checkpoints().await?;
            }
            writing += started.elapsed();
            written[worker as usize].extend(delta);
        }
        if seq.is_multiple_of(every_point) || seq == args.checkpoints {
            let point = time_restore(&store, seq, next as usize).await?;
            eprintln!(
                "  {label}: after {seq} checkpoints, {} rows, restore {:.1} ms",
                point.rows,
                point.restore.as_secs_f64() * 1e3
            );
            points.push(point);
        }
    }
    Ok((points, writing, state_bytes))
}

/// The median of five restores: load the snapshot and decode every part, checking that
/// every entry written came back.
async fn time_restore(store: &PostgresStore, seq: u64, entries: usize) -> anyhow::Result<Point> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let snapshot = store
            .load_engine_snapshot()
            .await?
            .ok_or_else(|| anyhow::anyhow!("no checkpoint loaded"))?;
        let mut decoded = 0usize;
        for chunk in &snapshot.chunks {
            decoded += decode_entries(chunk)?.len();
        }
        times.push(started.elapsed());
        anyhow::ensure!(
            snapshot.seq == seq && decoded == entries,
            "restored checkpoint {} with {decoded} entries, expected {seq} with {entries}",
            snapshot.seq
        );
    }
    times.sort();
    Ok(Point {
        checkpoints: seq,
        rows: store.engine_checkpoint_parts().await?,
        restore: times[2],
    })
}

/// Entry `n`: a vote's first delivery or, every other one, its record leaf.
fn entry(n: u128) -> StateEntry {
    let decision = n % 1000;
    if n.is_multiple_of(2) {
        StateEntry::Ballot {
            decision,
            voter: n,
            ballot: Ballot {
                vote_id: n,
                offset: n as u64,
                marks: canopy_schemas::Ballot::SingleChoice((n % 3) as u8),
                component: Component::ALL[0],
                weight: 1_000_000,
            },
        }
    } else {
        StateEntry::Leaf {
            decision,
            leaf: RecordLeaf {
                offset: n as u64,
                voter: n,
                vote_id: n,
                leaf: [n as u8; 32],
                entry: canopy_schemas::LeafBytes::new(
                    &[n as u8; canopy_schemas::LEAF_ENCODING_LEN],
                )
                .map(LeafEntry),
            },
        }
    }
}
