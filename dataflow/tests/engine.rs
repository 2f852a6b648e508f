use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use canopy_dataflow::*;
use canopy_ingest::*;
use canopy_schemas::*;
use canopy_testkit::{decision, expert_vote, vote};

mod common;
use common::{all_records, open_segment_log, start_engine, view_including};

/// The votes of these tests, logged under one salt.
fn logged(vote: Vote) -> LoggedVote {
    canopy_testkit::logged(vote, 3)
}

/// Every decision's view, once it includes the offset `last` names in the decision's
/// partition (the partition's last record), has the tally the recount `expected`.
fn assert_views_equal_the_recount(
    views: &InMemoryViews,
    log: &dyn VoteLog,
    decisions: &[Decision],
    expected: &HashMap<DecisionId, Tally>,
    last: impl Fn(u32) -> u64,
    timeout: Duration,
) {
    for d in decisions {
        let partition = log.partition_of(d.id);
        let view = view_including(views, d.id, partition, last(partition), timeout);
        assert_eq!(view.tally, expected[&d.id]);
    }
}

/// The error that waiting for decision 1's view to include `offset` of partition 0 ends in.
fn waiting_for_decision_1_fails(
    views: &InMemoryViews,
    offset: u64,
    timeout: Duration,
) -> DataflowError {
    let position = Position {
        partition: 0,
        offset,
    };
    views
        .wait_for(DecisionId(1), position, timeout)
        .unwrap_err()
}

#[test]
fn voters_read_their_own_votes_and_the_result_equals_a_recount() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_segment_log(dir.path(), 3);
    let gate = Arc::new(Gate::new(Arc::clone(&log)));
    let decisions: Vec<Decision> = (1..=4).map(decision).collect();
    for d in &decisions {
        gate.register(d.clone(), 0).unwrap();
    }
    let views = Arc::new(InMemoryViews::new());
    let config = EngineConfig {
        workers: 2,
        ..EngineConfig::default()
    };
    let engine =
        TallyEngine::start(config, log.clone(), views.clone(), None, decisions.clone()).unwrap();

    let voters: Vec<_> = (0..4u128)
        .map(|thread| {
            let gate = Arc::clone(&gate);
            let views = Arc::clone(&views);
            std::thread::spawn(move || {
                for n in 0..150u128 {
                    let id = VoteId::new_random().0;
                    // Each voter votes several times per decision: later votes replace earlier.
                    let (decision, voter) = (1 + n % 4, thread * 100 + n % 7);
                    let option = ((n * 7 + thread) % 3) as u16;
                    let cast = if n % 3 == 0 {
                        expert_vote(id, decision, voter, option, Weight(2_500_000))
                    } else {
                        vote(id, decision, voter, option)
                    };
                    let vote = Vote { cast_at: 5, ..cast };
                    let position = gate.submit(&[logged(vote)]).unwrap()[0];
                    let view = views
                        .wait_for(vote.decision_id, position, Duration::from_secs(10))
                        .unwrap()
                        .unwrap();
                    assert_eq!(view.as_of.partition, position.partition);
                    assert!(
                        view.as_of.offset > position.offset,
                        "{view:?} does not include {position:?}"
                    );
                }
            })
        })
        .collect();
    for voter in voters {
        voter.join().unwrap();
    }
    let expected = recount(&all_records(log.as_ref()), &decisions);
    for d in &decisions {
        let partition = log.partition_of(d.id);
        let end = log.end_offset(partition).unwrap();
        let view = view_including(
            views.as_ref(),
            d.id,
            partition,
            end - 1,
            Duration::from_secs(10),
        );
        assert_eq!(&view.tally, &expected[&d.id]);
        assert!(view.tally.turnout > 0);
    }
    engine.shutdown().unwrap();
}

#[test]
fn a_restarted_engine_replays_the_log_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let decisions = vec![decision(1), decision(2)];
    {
        let log = SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap();
        let votes: Vec<LoggedVote> = (0..500u128)
            .map(|n| vote(n % 450, 1 + n % 2, n % 60, (n % 3) as u16))
            .map(logged)
            .collect();
        log.append_votes(&votes).unwrap();
    }
    let log = Arc::new(SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap());
    let views = Arc::new(InMemoryViews::new());
    let engine = start_engine(log.clone(), views.clone(), &decisions);
    let expected = recount(&all_records(log.as_ref()), &decisions);
    let last = |partition| log.end_offset(partition).unwrap() - 1;
    let timeout = Duration::from_secs(10);
    assert_views_equal_the_recount(&views, log.as_ref(), &decisions, &expected, last, timeout);
    engine.shutdown().unwrap();
}

#[test]
fn a_corrupt_log_stops_the_engine_and_no_result_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_segment_log(dir.path(), 1);
    for n in 0..100u128 {
        log.append_votes(&[logged(vote(n, 1, n, 0))]).unwrap();
    }
    // Bit rot after the log was opened: the fifth frame's payload changes on disk.
    let segment = dir.path().join(format!("{:020}.seg", 0));
    let mut file = OpenOptions::new().write(true).open(segment).unwrap();
    file.seek(SeekFrom::Start(32 + 4 * 116 + 40)).unwrap();
    file.write_all(b"X").unwrap();
    drop(file);

    let views = Arc::new(InMemoryViews::new());
    let engine = start_engine(log, views.clone(), &[decision(1)]);
    let error = waiting_for_decision_1_fails(&views, 99, Duration::from_secs(10));
    assert_eq!(error.code(), "dataflow_stopped");
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert_eq!(
        views.get(DecisionId(1)).unwrap_err().code(),
        "dataflow_stopped"
    );
    assert!(
        views
            .failure()
            .is_some_and(|reason| reason.contains("corrupt"))
    );
    let stopped = engine.shutdown().unwrap_err();
    assert!(
        stopped.to_string().contains("checksum mismatch"),
        "{stopped}"
    );
}

#[test]
fn waiting_for_a_position_never_reached_times_out() {
    let views = InMemoryViews::new();
    let error = waiting_for_decision_1_fails(&views, 5, Duration::from_millis(50));
    assert_eq!(error.code(), "results_timeout");
}

/// The same engine over the Kafka log (a real tansu broker; scripts/test starts it and sets
/// CANOPY_TEST_KAFKA): tallies equal the recount of what the topic holds.
#[test]
fn over_a_kafka_topic_the_tallies_equal_a_recount() {
    let broker = std::env::var("CANOPY_TEST_KAFKA")
        .expect("CANOPY_TEST_KAFKA must name a Kafka-protocol broker (scripts/test starts tansu)");
    let topic = format!("canopy-engine-{}", uuid::Uuid::new_v4().simple());
    let log = Arc::new(
        KafkaLog::connect(KafkaConfig {
            partitions: 3,
            ..KafkaConfig::new(broker, topic, canopy_ingest::LogKey::from_bytes([7; 32]))
        })
        .unwrap(),
    );
    let decisions: Vec<Decision> = (1..=4).map(decision).collect();
    let votes: Vec<LoggedVote> = (0..400u128)
        .map(|n| {
            // Every tenth vote is a redelivery of an earlier one.
            let id = if n % 10 == 9 { n - 5 } else { n };
            vote(id, 1 + id % 4, n % 37, (n % 3) as u16)
        })
        .map(logged)
        .collect();
    log.append_votes(&votes).unwrap();
    let views = Arc::new(InMemoryViews::new());
    let engine = start_engine(log.clone(), views.clone(), &decisions);
    let records = all_records(log.as_ref());
    assert_eq!(records.len(), votes.len());
    let expected = recount(&records, &decisions);
    let last = |partition| {
        records
            .iter()
            .filter(|r| r.position.partition == partition)
            .map(|r| r.position.offset)
            .max()
            .unwrap()
    };
    let timeout = Duration::from_secs(20);
    assert_views_equal_the_recount(&views, log.as_ref(), &decisions, &expected, last, timeout);
    engine.shutdown().unwrap();
}
