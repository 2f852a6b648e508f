//! A worker's own small HTTP listener: `/metrics` for Prometheus, `/healthz` and `/readyz`
//! for orchestrators. A worker serves no API, so these get a port of their own.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use canopy_dataflow::{TallyEngine, ViewStore};
use canopy_ingest::VoteLog;
use serde_json::json;

use crate::NodeError;
use crate::listener::{HttpSettings, Listener};

/// What the probes look at once the dataflow runs (before that: alive, not ready).
#[derive(Default)]
pub(crate) struct WorkerProbes {
    running: OnceLock<(Arc<dyn ViewStore>, Arc<TallyEngine>)>,
}

impl WorkerProbes {
    pub(crate) fn started(&self, views: Arc<dyn ViewStore>, engine: Arc<TallyEngine>) {
        let _ = self.running.set((views, engine));
    }

    fn failure(&self) -> Option<String> {
        let (views, engine) = self.running.get()?;
        views.failure().or_else(|| {
            engine
                .has_stopped()
                .then(|| "a dataflow worker stopped".to_string())
        })
    }
}

/// Binds `listen` and serves the probes until `stop` changes, through the API's own
/// listener (header timeout, idle timeout, a connection cap); returns the bound address
/// (port 0 picks a free one) and the task.
pub(crate) async fn serve_probes(
    listen: SocketAddr,
    probes: Arc<WorkerProbes>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .with_state(probes);
    serve_router(listen, router, stop).await
}

/// `/metrics` and `/healthz` alone, for a process with nothing to be ready for (the
/// scheduled `canopy backup`).
pub async fn serve_metrics(
    listen: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let router = Router::new().route("/metrics", get(metrics_text)).route(
        "/healthz",
        get(|| async { axum::Json(json!({ "status": "ok" })) }),
    );
    serve_router(listen, router, stop).await
}

async fn serve_router(
    listen: SocketAddr,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    // A scraper and two probes: a handful of connections is plenty.
    let settings = HttpSettings {
        max_connections: 64,
        ..HttpSettings::default()
    };
    let Listener {
        addr,
        stop: stop_server,
        server,
    } = crate::listener::listen(listen, &settings, None, router).await?;
    let task = tokio::spawn(async move {
        let _ = stop.changed().await;
        let _ = stop_server.send(());
        if let Ok(Err(error)) = server.await {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    });
    Ok((addr, task))
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        canopy_serving::metrics::render(),
    )
        .into_response()
}

async fn readyz(State(probes): State<Arc<WorkerProbes>>) -> Response {
    if let Some(reason) = probes.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "failed", "reason": reason })),
        )
            .into_response();
    }
    match probes.running.get() {
        Some(_) => axum::Json(json!({ "status": "ready" })).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready" })),
        )
            .into_response(),
    }
}

/// How often the lag gauges are measured.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Measures, every [`LAG_EVERY`], how far the published results trail the votes topic in
/// each partition `owns` says this process reads: per partition
/// (`canopy_kafka_consumer_lag`) and in all (`canopy_view_lag_entries`).
pub(crate) async fn measure_lag(
    log: Arc<dyn VoteLog>,
    views: Arc<dyn ViewStore>,
    topic: String,
    owns: impl Fn(u32) -> bool + Send + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (log_for_read, views_for_read) = (Arc::clone(&log), Arc::clone(&views));
        let partitions: Vec<u32> = (0..log.partitions()).filter(|p| owns(*p)).collect();
        // Watermark queries go to the broker: off the runtime's threads.
        let lags = tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .filter_map(|partition| {
                    let end = log_for_read.end_offset(partition).ok()?;
                    Some((
                        partition,
                        end.saturating_sub(views_for_read.frontier(partition)),
                    ))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut total = 0;
        for (partition, lag) in lags {
            total += lag;
            metrics::gauge!(
                "canopy_kafka_consumer_lag",
                "topic" => topic.clone(),
                "partition" => partition.to_string()
            )
            .set(lag as f64);
        }
        metrics::gauge!("canopy_view_lag_entries").set(total as f64);
        tokio::select! {
            _ = tokio::time::sleep(LAG_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
