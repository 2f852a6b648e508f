//! Logs and traces of the binary's processes: `RUST_LOG` and `--log-format` for the lines
//! on stderr, and with `--otlp-endpoint` the same spans as OpenTelemetry traces over
//! OTLP/HTTP, a share of them sampled and every trace with an error kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor,
};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flushes the traces still buffered when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("sending the last traces failed: {error}");
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (`info` if unset; a filter that does not parse
/// is said and `info` kept), and the spans at `info` and above as traces to
/// `otlp_endpoint` when given.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    sample_ratio: f64,
) -> anyhow::Result<Telemetry> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|error| {
            eprintln!("RUST_LOG={directives:?} is not a log filter ({error}); logging at info");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let provider = otlp_endpoint
        .map(|endpoint| tracer_provider(endpoint, sample_ratio))
        .transpose()?;
    // Traces have a filter of their own: quieting the log lines does not lose them.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("canopy"))
            .with_filter(EnvFilter::new("info"))
    });
    tracing_subscriber::registry()
        .with(lines)
        .with(traces)
        .init();
    Ok(Telemetry { provider })
}

fn tracer_provider(endpoint: &str, sample_ratio: f64) -> anyhow::Result<SdkTracerProvider> {
    if !(0.0..=1.0).contains(&sample_ratio) {
        anyhow::bail!("--trace-sample-ratio must be between 0 and 1, not {sample_ratio}");
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| anyhow::anyhow!("the OTLP exporter for {endpoint}: {error}"))?;
    let sampled = ErrorsAndAShare::new(BatchSpanProcessor::builder(exporter).build(), sample_ratio);
    Ok(SdkTracerProvider::builder()
        .with_span_processor(sampled)
        .with_resource(Resource::builder().with_service_name("canopy").build())
        .build())
}

/// Traces waiting for their local root to end, at most this many (the oldest dropped).
const MAX_WAITING_TRACES: usize = 10_000;
/// Spans kept per waiting trace (a runaway loop of spans is cut short, not buffered).
const MAX_SPANS_PER_TRACE: usize = 1_000;
/// Decisions remembered for spans that end after their root (a vote's visibility).
const MAX_DECISIONS: usize = 100_000;

/// Tail sampling in the process: a trace's spans wait until its local root ends, then all
/// go on if any of them failed or the trace id falls in the sampled share, else none do.
/// The span sampler records every span, so the choice sees the whole trace.
#[derive(Debug)]
struct ErrorsAndAShare<P> {
    next: P,
    /// Trace ids below this (as an integer of their low 64 bits) are in the share.
    threshold: u64,
    state: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    spans: HashMap<TraceId, Vec<SpanData>>,
    arrival: VecDeque<TraceId>,
    decided: HashMap<TraceId, bool>,
    decided_order: VecDeque<TraceId>,
}

impl<P: SpanProcessor> ErrorsAndAShare<P> {
    fn new(next: P, ratio: f64) -> Self {
        Self {
            next,
            threshold: (ratio * u64::MAX as f64) as u64,
            state: Mutex::default(),
        }
    }

    fn in_share(&self, trace: TraceId) -> bool {
        let bytes = trace.to_bytes();
        let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        self.threshold == u64::MAX || low < self.threshold
    }
}

fn failed(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}

impl<P: SpanProcessor> SpanProcessor for ErrorsAndAShare<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.next.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let trace = span.span_context.trace_id();
        let root = span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote;
        let to_send = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&keep) = state.decided.get(&trace) {
                keep.then(|| vec![span])
            } else if root {
                let mut spans = state.spans.remove(&trace).unwrap_or_default();
                spans.push(span);
                let keep = spans.iter().any(failed) || self.in_share(trace);
                if state.decided_order.len() >= MAX_DECISIONS
                    && let Some(oldest) = state.decided_order.pop_front()
                {
                    state.decided.remove(&oldest);
                }
                state.decided.insert(trace, keep);
                state.decided_order.push_back(trace);
                keep.then_some(spans)
            } else {
                if !state.spans.contains_key(&trace) {
                    if state.arrival.len() >= MAX_WAITING_TRACES
                        && let Some(oldest) = state.arrival.pop_front()
                    {
                        state.spans.remove(&oldest);
                    }
                    state.arrival.push_back(trace);
                }
                let waiting = state.spans.entry(trace).or_default();
                if waiting.len() < MAX_SPANS_PER_TRACE {
                    waiting.push(span);
                }
                None
            }
        };
        for span in to_send.into_iter().flatten() {
            self.next.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.next.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use proptest::prelude::*;

    use super::*;

    /// Collects what the sampler passes on.
    #[derive(Debug, Default, Clone)]
    struct Sent(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Sent {
        fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn span(trace: u128, id: u64, parent: u64, failed: bool) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(trace.to_be_bytes()),
                SpanId::from_bytes(id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(parent.to_be_bytes()),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "span".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if failed {
                Status::error("failed")
            } else {
                Status::Unset
            },
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    proptest! {
        /// Each trace is sent whole or not at all: whole if any of its spans failed or its
        /// id is in the share, its late span (ending after the root) along with it.
        #[test]
        fn a_trace_goes_whole_when_it_failed_or_is_in_the_share(
            traces in proptest::collection::vec((any::<u128>(), any::<bool>(), 0usize..4), 1..40),
            ratio in 0.0f64..=1.0,
        ) {
            let sent = Sent::default();
            let sampler = ErrorsAndAShare::new(sent.clone(), ratio);
            let mut expected = std::collections::HashMap::new();
            for (n, (trace, fails, children)) in traces.iter().enumerate() {
                let trace = trace | 1; // a valid (non-zero) id
                let root = (n as u64 + 1) << 8;
                for child in 0..*children {
                    let failed = *fails && child == 0;
                    sampler.on_end(span(trace, root + 1 + child as u64, root, failed));
                }
                let root_failed = *fails && *children == 0;
                sampler.on_end(span(trace, root, 0, root_failed));
                sampler.on_end(span(trace, root + 100, root, false));
                let low = (trace as u64) as f64 / u64::MAX as f64;
                let keep = *fails || ratio == 1.0 || low < ratio;
                expected.insert(TraceId::from_bytes(trace.to_be_bytes()), (keep, children + 2));
            }
            let sent = sent.0.lock().unwrap();
            for (trace, (keep, spans)) in expected {
                let got = sent.iter().filter(|s| s.span_context.trace_id() == trace).count();
                prop_assert_eq!(got, if keep { spans } else { 0 }, "trace {}", trace);
            }
        }
    }
}
