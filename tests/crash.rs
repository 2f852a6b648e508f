//! Kill -9 under load, many times: every acknowledged vote survives exactly once, and the
//! tally after each restart equals a from-scratch recount of the log.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_dataflow::{EngineConfig, InMemoryViews, TallyEngine, ViewStore, recount};
use canopy_ingest::{
    EntryLog, LogRecord, Position, SegmentLog, SegmentLogConfig, VoteLog, segment_files,
};
use canopy_schemas::{Decision, VoteId};
use rand::{Rng, SeedableRng};

const SEGMENT_BYTES: &str = "65536";

fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

/// Runs `canopy loadgen` for `run_for`, kills it with SIGKILL, returns what it acknowledged.
fn load_then_kill(data_dir: &Path, seed: u64, run_for: Duration) -> Vec<(VoteId, Position)> {
    let mut child = canopy()
        .args([
            "loadgen",
            "--appenders",
            "16",
            "--decisions",
            "6",
            "--voters",
            "40",
            "--print-acks",
        ])
        .args([
            "--segment-bytes",
            SEGMENT_BYTES,
            "--seed",
            &seed.to_string(),
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("canopy loadgen starts");
    let stdout = child.stdout.take().unwrap();
    let (first_ack, first_ack_seen) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let parts: Vec<&str> = line.split(' ').collect();
            // A line cut by the kill is not an acknowledgement anyone received.
            if let ["ack", id, partition, offset] = parts[..]
                && let (Ok(id), Ok(partition), Ok(offset)) =
                    (id.parse::<uuid::Uuid>(), partition.parse(), offset.parse())
            {
                acked.push((VoteId::from(id), Position { partition, offset }));
                let _ = first_ack.send(());
            }
        }
        acked
    });
    // The kill lands `run_for` into the stream, counted from its first acknowledgement: on
    // a loaded machine the process may take longer than that just to start.
    let _ = first_ack_seen.recv_timeout(Duration::from_secs(30));
    std::thread::sleep(run_for);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    reader.join().unwrap()
}

mod common;

fn all_records(log: &SegmentLog) -> Vec<LogRecord> {
    (0..log.partitions())
        .flat_map(|p| log.read_votes(p, 0, usize::MAX).unwrap())
        .collect()
}

fn decisions(data_dir: &Path) -> Vec<Decision> {
    serde_json::from_str(&std::fs::read_to_string(data_dir.join("decisions.json")).unwrap())
        .unwrap()
}

fn assert_tally_equals_recount(log: Arc<SegmentLog>, decisions: &[Decision]) {
    let records = all_records(&log);
    let expected = recount(&records, decisions);
    let views = Arc::new(InMemoryViews::new());
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log.clone(),
        views.clone(),
        None,
        decisions.to_vec(),
    )
    .unwrap();
    for decision in decisions {
        let partition = log.partition_of(decision.id);
        let end = log.end_offset(partition).unwrap();
        let view = match end {
            0 => views.get(decision.id).unwrap(),
            _ => views
                .wait_for(
                    decision.id,
                    Position {
                        partition,
                        offset: end - 1,
                    },
                    Duration::from_secs(20),
                )
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut view = view;
        while view.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            view = views.get(decision.id).unwrap();
        }
        assert_eq!(
            view.unwrap().tally,
            expected[&decision.id],
            "decision {}",
            decision.id
        );
    }
    engine.shutdown().unwrap();
}

#[test]
fn acknowledged_votes_survive_kill_9_exactly_once_and_tallies_equal_the_recount() {
    let data = tempfile::tempdir().unwrap();
    let log_dir = data.path().join("votes");
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut acknowledged: HashMap<VoteId, Position> = HashMap::new();
    let rounds = 12;
    for round in 0..rounds {
        let acked = load_then_kill(
            data.path(),
            round,
            Duration::from_millis(rng.random_range(150..600)),
        );
        assert!(
            !acked.is_empty() || round > 0,
            "the first run acknowledged nothing"
        );
        acknowledged.extend(acked);

        let log = Arc::new(SegmentLog::open(&log_dir, SegmentLogConfig::default()).unwrap());
        let stored = common::positions_by_vote(&all_records(&log));
        for (vote_id, position) in &acknowledged {
            assert_eq!(
                stored.get(vote_id),
                Some(&vec![*position]),
                "round {round}: acknowledged vote {vote_id} is not stored exactly once"
            );
        }
        // Nothing is doubled either: the load generator never retries, so every id is unique.
        assert!(
            stored.values().all(|positions| positions.len() == 1),
            "round {round}: a vote is stored twice"
        );
        assert_tally_equals_recount(log, &decisions(data.path()));
    }
    assert!(
        acknowledged.len() > 1_000,
        "only {} votes were acknowledged",
        acknowledged.len()
    );
    assert!(
        segment_files(&log_dir).unwrap().len() > 2,
        "the load rolled over several segments"
    );

    // A torn tail: part of a frame just after the data, as a crash mid-write leaves.
    let (last, end) = SegmentLog::open(&log_dir, SegmentLogConfig::default())
        .unwrap()
        .tail();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .write_all_at(&[0, 0, 0, 76, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3], end)
        .unwrap();
    let output = common::canopy_ok(&["log", "verify"], data.path());
    assert!(String::from_utf8_lossy(&output.stderr).contains("wiped a torn tail of 11 bytes"));
    let log = Arc::new(SegmentLog::open(&log_dir, SegmentLogConfig::default()).unwrap());
    let stored: HashMap<VoteId, Position> = all_records(&log)
        .into_iter()
        .map(|r| (r.vote.vote_id, r.position))
        .collect();
    assert!(
        acknowledged
            .iter()
            .all(|(id, position)| stored.get(id) == Some(position))
    );
    assert_tally_equals_recount(log, &decisions(data.path()));

    // A flipped byte in an old segment: refused, with a message that says where.
    let first = segment_files(&log_dir).unwrap().remove(0);
    let mut file = OpenOptions::new().write(true).open(&first).unwrap();
    file.seek(SeekFrom::Start(2_000)).unwrap();
    file.write_all(&[0x5a]).unwrap();
    drop(file);
    for command in [&["log", "verify"][..], &["tally"][..]] {
        let output = canopy()
            .args(command)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{command:?} served a corrupt log");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("corrupt")
                && stderr.contains(&first.file_name().unwrap().to_string_lossy().to_string()),
            "{stderr}"
        );
    }
}
