//! Calls, errors and recent latencies of one agent or model version.

use std::collections::VecDeque;

use serde::Serialize;

/// Latencies kept for the percentiles: the most recent ones.
const KEPT: usize = 1024;

#[derive(Clone, Debug, Default)]
pub struct CallStats {
    pub calls: u64,
    pub errors: u64,
    latencies_ms: VecDeque<f64>,
    /// Microseconds since the Unix epoch.
    pub last_run: Option<i64>,
    pub last_error: Option<String>,
}

/// The figures of a [`CallStats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CallFigures {
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub last_run: Option<i64>,
    pub last_error: Option<String>,
}

impl CallStats {
    pub fn record(&mut self, latency_ms: f64, error: Option<String>, now: i64) {
        self.calls += 1;
        if error.is_some() {
            self.errors += 1;
            self.last_error = error;
        }
        if self.latencies_ms.len() == KEPT {
            self.latencies_ms.pop_front();
        }
        self.latencies_ms.push_back(latency_ms);
        self.last_run = Some(now);
    }

    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }

    /// The `q` quantile (nearest rank) of the kept latencies.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.latencies_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }

    pub fn figures(&self) -> CallFigures {
        CallFigures {
            calls: self.calls,
            errors: self.errors,
            error_rate: self.error_rate(),
            p50_ms: self.quantile(0.5),
            p95_ms: self.quantile(0.95),
            last_run: self.last_run,
            last_error: self.last_error.clone(),
        }
    }
}
