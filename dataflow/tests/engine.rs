use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use canopy_dataflow::*;
use canopy_ingest::*;
use canopy_schemas::*;
use canopy_testkit::decision;

fn logged(vote: Vote) -> LoggedVote {
    LoggedVote::new(vote, &VoterSalt([3; 32]))
}

fn read_log(log: &SegmentLog) -> Vec<LogRecord> {
    let mut records = Vec::new();
    for partition in 0..log.partitions() {
        records.extend(log.read(partition, 0, usize::MAX).unwrap());
    }
    records
}

#[test]
fn voters_read_their_own_votes_and_the_result_equals_a_recount() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        SegmentLog::open(
            dir.path(),
            SegmentLogConfig {
                partitions: 3,
                ..Default::default()
            },
        )
        .unwrap(),
    );
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
                    let expert = n % 3 == 0;
                    let vote = Vote {
                        vote_id: VoteId::new_random(),
                        decision_id: DecisionId(1 + n % 4),
                        // Each voter votes several times per decision: later votes replace earlier.
                        voter_id: VoterId(thread * 100 + n % 7),
                        option: ((n * 7 + thread) % 3) as u16,
                        component: if expert {
                            Component::Expert
                        } else {
                            Component::Democratic
                        },
                        weight: if expert {
                            Weight(2_500_000)
                        } else {
                            Weight::ONE
                        },
                        cast_at: 5,
                    };
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
    let expected = recount(&read_log(&log), &decisions);
    for d in &decisions {
        let end = log.end_offset(log.partition_of(d.id)).unwrap();
        let view = views
            .wait_for(
                d.id,
                Position {
                    partition: log.partition_of(d.id),
                    offset: end - 1,
                },
                Duration::from_secs(10),
            )
            .unwrap()
            .unwrap();
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
            .map(|n| Vote {
                vote_id: VoteId(n % 450),
                decision_id: DecisionId(1 + n % 2),
                voter_id: VoterId(n % 60),
                option: (n % 3) as u16,
                component: Component::Democratic,
                weight: Weight::ONE,
                cast_at: 1,
            })
            .map(logged)
            .collect();
        log.append(&votes).unwrap();
    }
    let log = Arc::new(SegmentLog::open(dir.path(), SegmentLogConfig::default()).unwrap());
    let views = Arc::new(InMemoryViews::new());
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log.clone(),
        views.clone(),
        None,
        decisions.clone(),
    )
    .unwrap();
    let expected = recount(&read_log(&log), &decisions);
    for d in &decisions {
        let partition = log.partition_of(d.id);
        let last = log.end_offset(partition).unwrap() - 1;
        let view = views
            .wait_for(
                d.id,
                Position {
                    partition,
                    offset: last,
                },
                Duration::from_secs(10),
            )
            .unwrap()
            .unwrap();
        assert_eq!(view.tally, expected[&d.id]);
    }
    engine.shutdown().unwrap();
}

#[test]
fn a_corrupt_log_stops_the_engine_and_no_result_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        SegmentLog::open(
            dir.path(),
            SegmentLogConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    for n in 0..100u128 {
        let vote = Vote {
            vote_id: VoteId(n),
            decision_id: DecisionId(1),
            voter_id: VoterId(n),
            option: 0,
            component: Component::Democratic,
            weight: Weight::ONE,
            cast_at: 1,
        };
        log.append(&[logged(vote)]).unwrap();
    }
    // Bit rot after the log was opened: the fifth frame's payload changes on disk.
    let segment = dir.path().join(format!("{:020}.seg", 0));
    let mut file = OpenOptions::new().write(true).open(segment).unwrap();
    file.seek(SeekFrom::Start(32 + 4 * 116 + 40)).unwrap();
    file.write_all(b"X").unwrap();
    drop(file);

    let views = Arc::new(InMemoryViews::new());
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log,
        views.clone(),
        None,
        vec![decision(1)],
    )
    .unwrap();
    let error = views
        .wait_for(
            DecisionId(1),
            Position {
                partition: 0,
                offset: 99,
            },
            Duration::from_secs(10),
        )
        .unwrap_err();
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
    let error = views
        .wait_for(
            DecisionId(1),
            Position {
                partition: 0,
                offset: 5,
            },
            Duration::from_millis(50),
        )
        .unwrap_err();
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
            ..KafkaConfig::new(broker, topic)
        })
        .unwrap(),
    );
    let decisions: Vec<Decision> = (1..=4).map(decision).collect();
    let votes: Vec<LoggedVote> = (0..400u128)
        .map(|n| Vote {
            // Every tenth vote is a redelivery of an earlier one.
            vote_id: VoteId(if n % 10 == 9 { n - 5 } else { n }),
            decision_id: DecisionId(1 + (if n % 10 == 9 { n - 5 } else { n }) % 4),
            voter_id: VoterId(n % 37),
            option: (n % 3) as u16,
            component: Component::Democratic,
            weight: Weight::ONE,
            cast_at: 1,
        })
        .map(logged)
        .collect();
    log.append(&votes).unwrap();
    let views = Arc::new(InMemoryViews::new());
    let engine = TallyEngine::start(
        EngineConfig::default(),
        log.clone(),
        views.clone(),
        None,
        decisions.clone(),
    )
    .unwrap();
    let mut records = Vec::new();
    for partition in 0..log.partitions() {
        records.extend(log.read(partition, 0, usize::MAX).unwrap());
    }
    assert_eq!(records.len(), votes.len());
    let expected = recount(&records, &decisions);
    for d in &decisions {
        let partition = log.partition_of(d.id);
        let last = records
            .iter()
            .filter(|r| r.position.partition == partition)
            .map(|r| r.position.offset)
            .max()
            .unwrap();
        let view = views
            .wait_for(
                d.id,
                Position {
                    partition,
                    offset: last,
                },
                Duration::from_secs(20),
            )
            .unwrap()
            .unwrap();
        assert_eq!(view.tally, expected[&d.id]);
    }
    engine.shutdown().unwrap();
}
