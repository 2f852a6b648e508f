//! `canopy tally` and `canopy log verify`: read what the embedded vote log holds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use canopy_dataflow::{EngineConfig, InMemoryViews, TallyEngine, ViewStore};
use canopy_ingest::{EntryLog, SegmentLog, SegmentLogConfig};
use canopy_schemas::Decision;

pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("votes")
}

pub fn decisions_file(data_dir: &Path) -> PathBuf {
    data_dir.join("decisions.json")
}

pub fn open_log(data_dir: &Path, config: SegmentLogConfig) -> anyhow::Result<SegmentLog> {
    let dir = log_dir(data_dir);
    let log = SegmentLog::open(&dir, config)
        .with_context(|| format!("opening the vote log in {}", dir.display()))?;
    let recovery = log.recovery();
    if recovery.torn_tail_bytes > 0 {
        eprintln!(
            "canopy: wiped a torn tail of {} bytes (a round that was never acknowledged)",
            recovery.torn_tail_bytes
        );
    }
    for path in &recovery.removed_empty_segments {
        eprintln!(
            "canopy: removed {}, a segment whose header was never written",
            path.display()
        );
    }
    Ok(log)
}

pub fn load_decisions(data_dir: &Path) -> anyhow::Result<Vec<Decision>> {
    let path = decisions_file(data_dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading decisions from {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing decisions in {}", path.display()))
}

pub fn verify(data_dir: &Path) -> anyhow::Result<()> {
    let log = open_log(data_dir, SegmentLogConfig::default())?;
    let records = log.verify()?;
    let ends: Vec<u64> = (0..log.partitions())
        .map(|p| log.end_offset(p))
        .collect::<Result<_, _>>()?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::json!({ "records": records, "partitions": log.partitions(), "end_offsets": ends, "bytes": log.size_bytes()? })
    )?;
    Ok(())
}

pub fn tally(data_dir: &Path, workers: usize) -> anyhow::Result<()> {
    let log = Arc::new(open_log(data_dir, SegmentLogConfig::default())?);
    let decisions = load_decisions(data_dir)?;
    anyhow::ensure!(
        !decisions.is_empty(),
        "{} lists no decisions",
        decisions_file(data_dir).display()
    );
    let views = Arc::new(InMemoryViews::new());
    let config = EngineConfig {
        workers,
        ..EngineConfig::default()
    };
    let engine = TallyEngine::start(config, log.clone(), views.clone(), None, decisions.clone())?;
    let started = Instant::now();
    for partition in 0..log.partitions() {
        let end = log.end_offset(partition)?;
        while views.frontier(partition) < end {
            if let Err(error) = views.get(decisions[0].id) {
                return Err(engine.shutdown().err().map_or(error.into(), Into::into));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprintln!(
        "canopy: replayed the log in {:.3}s on {workers} worker threads",
        started.elapsed().as_secs_f64()
    );
    // Written, not printed: a reader that closes the pipe early ends the output quietly
    // (the engine still shuts down cleanly) instead of a panic.
    let mut out = std::io::stdout().lock();
    let written = decisions
        .iter()
        .try_for_each(|decision| -> anyhow::Result<()> {
            if let Some(view) = views.get(decision.id)? {
                writeln!(out, "{}", serde_json::to_string(&view)?)?;
            }
            Ok(())
        });
    engine.shutdown()?;
    written
}
