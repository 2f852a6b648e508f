//! The parts of a request's trace that outlive the request: a vote's `view.visible` span
//! starts when the vote is durable and ends when the published results include it, in the
//! same trace as the request that cast it (its OpenTelemetry parent), without keeping the
//! request's own span open.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use canopy_dataflow::ViewStore;
use canopy_ingest::Position;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace id of `span` in hex, when traces are being recorded.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Votes whose visibility is being traced, at most this many (the oldest end early).
const MAX_WAITING: usize = 10_000;

/// Spans of acknowledged votes waiting to become visible.
#[derive(Default)]
pub struct VisibilityTraces {
    waiting: Mutex<VecDeque<(Position, tracing::Span)>>,
}

impl VisibilityTraces {
    /// Starts the `view.visible` span of the vote at `position`, under the current span's
    /// trace; nothing when no trace is being recorded.
    pub fn note(&self, position: Position) {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return;
        }
        let span = tracing::info_span!(
            parent: None,
            "view.visible",
            log.partition = position.partition,
            log.offset = position.offset
        );
        if span.set_parent(context).is_err() {
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() >= MAX_WAITING {
            waiting.pop_front();
        }
        waiting.push_back((position, span));
    }

    /// Ends the spans of the votes the results now include.
    fn settle(&self, views: &dyn ViewStore) {
        let partitions: std::collections::BTreeSet<u32> = {
            let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            waiting
                .iter()
                .map(|(position, _)| position.partition)
                .collect()
        };
        // One look per partition (a replica's frontier is a Redis read), outside the lock.
        let frontiers: std::collections::HashMap<u32, u64> = partitions
            .into_iter()
            .map(|partition| (partition, views.frontier(partition)))
            .collect();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.retain(|(position, _)| {
            frontiers
                .get(&position.partition)
                .is_none_or(|frontier| *frontier <= position.offset)
        });
    }

    fn is_empty(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// Ends visibility spans as the results move, until `stop` changes.
pub async fn end_visible_spans(
    traces: std::sync::Arc<VisibilityTraces>,
    views: std::sync::Arc<dyn ViewStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = views.changes();
    loop {
        if !traces.is_empty() {
            traces.settle(views.as_ref());
        }
        let wait = async {
            match changes.as_mut() {
                Some(changes) if !traces.is_empty() => {
                    let _ = changes.changed().await;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        tokio::select! {
            () = wait => {}
            _ = stop.changed() => return,
        }
    }
}
