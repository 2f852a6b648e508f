//! Readiness: a node is ready only once its views have caught up with the logs as they were
//! at start. Until then a replica would serve results that miss acknowledged votes or
//! readings.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_serving::state::AppState;

use crate::NodeError;

/// (partition, end offset) of every partition of the node's logs, as they are now.
struct ReplayTargets {
    votes: Vec<(u32, u64)>,
    readings: Vec<(u32, u64)>,
}

impl ReplayTargets {
    fn of(state: &AppState) -> Result<Self, NodeError> {
        let log = state.gate.log();
        let votes = (0..log.partitions())
            .map(|p| log.end_offset(p).map(|end| (p, end)))
            .collect::<Result<_, _>>()?;
        let readings = match &state.sensors {
            Some(sensors) => (0..sensors.log.partitions())
                .map(|p| sensors.log.end_offset(p).map(|end| (p, end)))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self { votes, readings })
    }

    fn total(&self) -> u64 {
        self.votes
            .iter()
            .chain(&self.readings)
            .map(|(_, end)| end)
            .sum()
    }

    /// How many of the target records the views reflect.
    fn replayed(&self, state: &AppState) -> u64 {
        let votes: u64 = self
            .votes
            .iter()
            .map(|(p, end)| state.views.frontier(*p).min(*end))
            .sum();
        let readings: u64 = state.sensors.as_ref().map_or(0, |sensors| {
            self.readings
                .iter()
                .map(|(p, end)| sensors.views.frontier(*p).min(*end))
                .sum()
        });
        votes + readings
    }
}

/// Marks the node ready now if nothing is left to replay, else once the replay is done,
/// logging its progress every 2 s.
pub(crate) fn become_ready_after_replay(state: &Arc<AppState>) -> Result<(), NodeError> {
    let targets = ReplayTargets::of(state)?;
    let total = targets.total();
    if targets.replayed(state) >= total {
        state.ready.store(true, Ordering::Release);
        return Ok(());
    }
    tracing::info!(
        records = total,
        "replaying the vote and sensor logs; not ready until it is done"
    );
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last_report = started;
        loop {
            let done = targets.replayed(&state);
            if done >= total {
                tracing::info!(
                    records = total,
                    seconds = started.elapsed().as_secs_f64(),
                    "caught up with the logs; ready"
                );
                state.ready.store(true, Ordering::Release);
                return;
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                tracing::info!(done, total, "replaying the logs");
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(())
}
