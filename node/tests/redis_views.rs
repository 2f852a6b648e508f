//! The view store over a real Redis (scripts/test makes sure one runs; CANOPY_TEST_REDIS
//! names it): the engine publishes into it, a second store (another API replica) reads the
//! same tallies as the recount and honours read-your-writes, and a stopped dataflow is seen
//! by every replica. Keys are prefixed per test and removed after.

use std::sync::Arc;
use std::time::Duration;

use canopy_dataflow::{ViewStore, recount};
use canopy_ingest::{Position, VoteLog};
use canopy_node::redis::RedisViews;
use canopy_schemas::*;
use canopy_testkit::{decision, expert_vote, logged, vote};

/// The dataflow tests' log and engine fixtures (testkit cannot depend on the log).
#[path = "../../dataflow/tests/common/mod.rs"]
mod dataflow_common;
use dataflow_common::{all_records, open_segment_log, start_engine};

fn redis_url() -> String {
    std::env::var("CANOPY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

struct Prefix(String);

impl Drop for Prefix {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut connection) = client.get_connection()
        {
            for name in ["views", "frontier", "failure"] {
                let _: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(format!("{}:{name}", self.0))
                    .query(&mut connection);
            }
        }
    }
}

#[test]
fn replicas_read_the_engines_results_through_redis() {
    let prefix = Prefix(format!("canopy-test-{}", uuid::Uuid::new_v4().simple()));
    let writer = Arc::new(RedisViews::connect(&redis_url(), &prefix.0).unwrap());
    let reader = RedisViews::connect(&redis_url(), &prefix.0).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = open_segment_log(dir.path(), 3);
    let decisions: Vec<Decision> = (1..=4).map(decision).collect();
    let votes: Vec<LoggedVote> = (0..600u128)
        .map(|n| {
            // Every ninth vote is a redelivery of an earlier one.
            let id = if n % 9 == 8 { n - 3 } else { n };
            let (decision, voter, option) = (1 + id % 4, n % 41, (n % 3) as u16);
            let cast = if n % 4 == 0 {
                expert_vote(id, decision, voter, option, Weight(1_500_000))
            } else {
                vote(id, decision, voter, option)
            };
            logged(cast, 7)
        })
        .collect();
    let positions = log.append_votes(&votes).unwrap();
    let engine = start_engine(log.clone(), writer.clone(), &decisions);

    let expected = recount(&all_records(log.as_ref()), &decisions);
    for d in &decisions {
        let last = positions
            .iter()
            .zip(&votes)
            .filter(|(_, v)| v.vote.decision_id == d.id)
            .map(|(p, _)| *p)
            .max()
            .unwrap();
        let view = reader
            .wait_for(d.id, last, Duration::from_secs(20))
            .unwrap()
            .expect("a view");
        assert_eq!(view.tally, expected[&d.id]);
        assert!(view.as_of.offset > last.offset);
    }
    // A vote appended now is seen by the other replica once the engine took it.
    let late = logged(
        Vote {
            cast_at: 2,
            ..vote(10_000, 2, 999, 2)
        },
        7,
    );
    let at = log.append_votes(&[late]).unwrap()[0];
    let view = reader
        .wait_for(DecisionId(2), at, Duration::from_secs(20))
        .unwrap()
        .unwrap();
    assert_eq!(view.tally.turnout, expected[&DecisionId(2)].turnout + 1);
    engine.shutdown().unwrap();

    // Nothing past the log is promised; a stopped dataflow is seen by every replica.
    let beyond = Position {
        partition: at.partition,
        offset: at.offset + 100,
    };
    assert_eq!(
        reader
            .wait_for(DecisionId(2), beyond, Duration::from_millis(100))
            .unwrap_err()
            .code(),
        "results_timeout"
    );
    assert!(reader.failure().is_none());
    writer.fail("the log is corrupt (test)".into());
    assert_eq!(
        reader.get(DecisionId(1)).unwrap_err().code(),
        "dataflow_stopped"
    );
    assert!(reader.failure().unwrap().contains("corrupt"));
}

#[test]
fn an_unreachable_redis_is_a_clear_error() {
    let error = RedisViews::connect("redis://127.0.0.1:1/", "canopy-test").unwrap_err();
    assert_eq!(error.code(), "views_unavailable", "{error}");
}
