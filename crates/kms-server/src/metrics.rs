//! Prometheus metrics of the key server and its loopback observability endpoints
//! (`/livez`, `/readyz`, `/metrics`). Labels carry operation names and AWS error codes only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::Server;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The key server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    audit_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("envelope_kms");
        let requests = Family::<RequestLabels, Counter>::default();
        let seconds =
            Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register("requests", "Requests by operation and AWS error code (empty = success)", requests.clone());
        registry.register("request_duration_seconds", "Request latency by operation", seconds.clone());
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit records (intent or outcome) that could not be written",
            audit_failures.clone(),
        );
        registry.register("build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        Self { registry, requests, seconds, audit_failures }
    }

    /// Records one request.
    pub fn request(&self, operation: &'static str, error: &'static str, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { operation, error }).inc();
        self.seconds.get_or_create(&OpLabels { operation }).observe(elapsed.as_secs_f64());
    }

    /// Counts an audit record that could not be written.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `/livez` (process up), `/readyz` (key store readable), `/metrics`.
pub fn observability_router(server: Arc<Server>) -> Router {
    let ready = server.clone();
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let s = ready.clone();
                async move {
                    match tokio::task::spawn_blocking(move || s.store().refresh()).await {
                        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
                        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("key store: {e}\n")),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = server.metrics().encode();
                async move {
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                        .into_response()
                }
            }),
        )
}

/// Serves [`observability_router`] on `listener` until `shutdown` completes.
pub async fn serve_observability(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, observability_router(server)).with_graceful_shutdown(shutdown).await
}
