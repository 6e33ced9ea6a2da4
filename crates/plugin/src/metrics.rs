//! Prometheus metrics of the plugin. Labels never carry secrets: the key_id appears only as a
//! SHA-256 hash prefix, and no plaintext, ciphertext or uid is ever a label.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of an RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `v2` or `v1beta1`.
    pub api: &'static str,
    /// RPC method name.
    pub method: &'static str,
    /// gRPC status code name (`OK`, `INVALID_ARGUMENT`, ...).
    pub code: &'static str,
}

/// Labels of a backend operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Backend name.
    pub backend: &'static str,
    /// `probe`, `encrypt` or `decrypt`.
    pub operation: &'static str,
    /// `ok` or the gRPC code name the error maps to.
    pub outcome: &'static str,
}

/// Labels of one call to a remote KMS (one attempt; retries count separately).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemoteLabels {
    /// KMS operation (`DescribeKey`, `Encrypt`, `Decrypt`, `ListKeyRotations`).
    pub operation: &'static str,
    /// `ok` or the class of the failure as a gRPC code name (`UNAVAILABLE` for throttling and
    /// network errors, `FAILED_PRECONDITION` for a disabled key, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyIdLabels {
    key_id_hash: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// All metrics of one plugin process.
pub struct Metrics {
    registry: Registry,
    rpc_total: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    backend_total: Family<BackendLabels, Counter>,
    backend_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    healthy: Gauge,
    last_probe: Gauge,
    key_id: Family<KeyIdLabels, Gauge>,
    key_id_current: Mutex<Option<String>>,
    authority_rewrites: Counter,
    connections: Counter,
    remote_total: Family<RemoteLabels, Counter>,
    remote_seconds: Family<RemoteLabels, Histogram, fn() -> Histogram>,
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
        let mut registry = Registry::with_prefix("envelope_plugin");
        let rpc_total = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let backend_total = Family::<BackendLabels, Counter>::default();
        let backend_seconds = Family::<BackendLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let healthy = Gauge::default();
        let last_probe = Gauge::default();
        let key_id = Family::<KeyIdLabels, Gauge>::default();
        let remote_total = Family::<RemoteLabels, Counter>::default();
        let remote_seconds = Family::<RemoteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register("remote_calls", "Calls to a remote KMS by operation and outcome class (each attempt)", remote_total.clone());
        registry.register("remote_call_duration_seconds", "Latency of calls to a remote KMS", remote_seconds.clone());
        let authority_rewrites = Counter::default();
        let connections = Counter::default();
        registry.register(
            "authority_rewrites",
            "HTTP/2 requests whose invalid :authority (a socket path) was rewritten to localhost, counted when their connection closes",
            authority_rewrites.clone(),
        );
        registry.register("connections", "Accepted client connections", connections.clone());
        registry.register("rpc_requests", "KMS plugin RPCs by API, method and gRPC code", rpc_total.clone());
        registry.register("rpc_duration_seconds", "KMS plugin RPC latency by API, method and gRPC code", rpc_seconds.clone());
        registry.register("backend_operations", "Key backend operations by backend, operation and outcome", backend_total.clone());
        registry.register("backend_duration_seconds", "Key backend operation latency", backend_seconds.clone());
        registry.register("healthy", "1 if the last health probe succeeded, else 0", healthy.clone());
        registry.register("last_probe_timestamp_seconds", "Unix time of the last health probe", last_probe.clone());
        registry.register("key_id", "The current KMS v2 key_id, as a SHA-256 prefix label (value always 1)", key_id.clone());
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            rpc_total,
            rpc_seconds,
            backend_total,
            backend_seconds,
            healthy,
            last_probe,
            key_id,
            key_id_current: Mutex::new(None),
            authority_rewrites,
            connections,
            remote_total,
            remote_seconds,
        }
    }

    /// Records one RPC.
    pub fn rpc(&self, api: &'static str, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let l = RpcLabels { api, method, code: code_name(code) };
        self.rpc_total.get_or_create(&l).inc();
        self.rpc_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records one call (attempt) to a remote KMS.
    pub fn remote(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let l = RemoteLabels { operation, outcome };
        self.remote_total.get_or_create(&l).inc();
        self.remote_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records an accepted connection.
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// Records the `:authority` rewrites of a closed connection.
    pub fn authority_rewrites(&self, n: u64) {
        self.authority_rewrites.inc_by(n);
    }

    /// Records one backend operation.
    pub fn backend(&self, backend: &'static str, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let l = BackendLabels { backend, operation, outcome };
        self.backend_total.get_or_create(&l).inc();
        self.backend_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records a probe result and the current key_id (hashed).
    pub fn health(&self, healthy: bool, key_id: Option<&str>, unix_time: i64) {
        self.healthy.set(i64::from(healthy));
        self.last_probe.set(unix_time);
        let Ok(mut cur) = self.key_id_current.lock() else { return };
        let hash = key_id.map(key_id_hash);
        if *cur != hash {
            self.key_id.clear();
            if let Some(h) = &hash {
                self.key_id.get_or_create(&KeyIdLabels { key_id_hash: h.clone() }).set(1);
            }
            *cur = hash;
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// SHA-256 of the key_id, first 16 hex characters: safe to expose as a label.
pub fn key_id_hash(key_id: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_id.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// Upper-case gRPC code name as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_families_and_no_raw_key_id() {
        let m = Metrics::new();
        m.rpc("v2", "Encrypt", tonic::Code::Ok, Duration::from_micros(80));
        m.backend("embedded", "encrypt", "ok", Duration::from_micros(10));
        m.health(true, Some("envelope-secret-looking-key-id"), 1_700_000_000);
        let text = m.encode();
        assert!(text.contains("envelope_plugin_rpc_requests_total{api=\"v2\",method=\"Encrypt\",code=\"OK\"} 1"), "{text}");
        assert!(text.contains("envelope_plugin_rpc_duration_seconds_bucket"), "{text}");
        assert!(text.contains("envelope_plugin_healthy 1"), "{text}");
        assert!(text.contains(&key_id_hash("envelope-secret-looking-key-id")));
        assert!(!text.contains("envelope-secret-looking-key-id"));
        assert!(text.contains("envelope_plugin_build_info"), "{text}");
        m.health(false, Some("other"), 1_700_000_001);
        let text = m.encode();
        assert!(!text.contains(&key_id_hash("envelope-secret-looking-key-id")));
        assert!(text.contains("envelope_plugin_healthy 0"));
    }
}
