//! Prometheus metrics of the plugin. Labels never carry secrets: the key_id appears only as a
//! SHA-256 hash prefix, and no plaintext, ciphertext or uid is ever a label.
//!
//! One [`Metrics`] registry serves the whole process. A process that runs several plugin
//! instances (one `--key`/`--socket` pair each) gives every instance an [`InstanceMetrics`]
//! handle whose series carry `socket` and `key` labels; a single instance has no such labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Which plugin instance a series belongs to: empty for a process with one instance, else the
/// instance's socket and configured key reference.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Instance(Option<Arc<(String, String)>>);

impl Instance {
    /// The instance serving `socket` with `key` (both public configuration, never secrets).
    pub fn new(socket: impl Into<String>, key: impl Into<String>) -> Self {
        Self(Some(Arc::new((socket.into(), key.into()))))
    }

    /// `(socket, key)`, or `None` for the unnamed single instance.
    pub fn labels(&self) -> Option<(&str, &str)> {
        self.0.as_ref().map(|l| (l.0.as_str(), l.1.as_str()))
    }

    /// `socket (key)`, or an empty string for the unnamed single instance.
    pub fn name(&self) -> String {
        match &self.0 {
            Some(l) => format!("{} ({})", l.0, l.1),
            None => String::new(),
        }
    }
}

impl EncodeLabelSet for Instance {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(l) => [("socket", l.0.as_str()), ("key", l.1.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

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

type Histograms<L> = Family<(Instance, L), Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// All metrics of one plugin process.
pub struct Metrics {
    registry: Registry,
    rpc_total: Family<(Instance, RpcLabels), Counter>,
    rpc_seconds: Histograms<RpcLabels>,
    backend_total: Family<(Instance, BackendLabels), Counter>,
    backend_seconds: Histograms<BackendLabels>,
    healthy: Family<Instance, Gauge>,
    last_probe: Family<Instance, Gauge>,
    key_id: Family<(Instance, KeyIdLabels), Gauge>,
    key_id_current: Mutex<HashMap<Instance, String>>,
    authority_rewrites: Family<Instance, Counter>,
    connections: Family<Instance, Counter>,
    remote_total: Family<(Instance, RemoteLabels), Counter>,
    remote_seconds: Histograms<RemoteLabels>,
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
        let m = Self {
            registry: Registry::default(),
            rpc_total: Family::default(),
            rpc_seconds: histograms(),
            backend_total: Family::default(),
            backend_seconds: histograms(),
            healthy: Family::default(),
            last_probe: Family::default(),
            key_id: Family::default(),
            key_id_current: Mutex::new(HashMap::new()),
            authority_rewrites: Family::default(),
            connections: Family::default(),
            remote_total: Family::default(),
            remote_seconds: histograms(),
        };
        registry.register(
            "remote_calls",
            "Calls to a remote KMS by operation and outcome class (each attempt)",
            m.remote_total.clone(),
        );
        registry.register("remote_call_duration_seconds", "Latency of calls to a remote KMS", m.remote_seconds.clone());
        registry.register(
            "authority_rewrites",
            "HTTP/2 requests whose invalid :authority (a socket path) was rewritten to localhost, counted when their connection closes",
            m.authority_rewrites.clone(),
        );
        registry.register("connections", "Accepted client connections", m.connections.clone());
        registry.register("rpc_requests", "KMS plugin RPCs by API, method and gRPC code", m.rpc_total.clone());
        registry.register(
            "rpc_duration_seconds",
            "KMS plugin RPC latency by API, method and gRPC code",
            m.rpc_seconds.clone(),
        );
        registry.register(
            "backend_operations",
            "Key backend operations by backend, operation and outcome",
            m.backend_total.clone(),
        );
        registry.register("backend_duration_seconds", "Key backend operation latency", m.backend_seconds.clone());
        registry.register("healthy", "1 if the last health probe succeeded, else 0", m.healthy.clone());
        registry.register("last_probe_timestamp_seconds", "Unix time of the last health probe", m.last_probe.clone());
        registry.register(
            "key_id",
            "The current KMS v2 key_id, as a SHA-256 prefix label (value always 1)",
            m.key_id.clone(),
        );
        registry.register("build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        Self { registry, ..m }
    }

    /// A handle recording into these metrics for `instance`.
    pub fn instance(self: &Arc<Self>, instance: Instance) -> InstanceMetrics {
        InstanceMetrics { shared: self.clone(), instance }
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

/// The metrics of one plugin instance: a cheap clone of the process registry plus the
/// instance's labels.
#[derive(Clone, Debug)]
pub struct InstanceMetrics {
    shared: Arc<Metrics>,
    instance: Instance,
}

impl From<Arc<Metrics>> for InstanceMetrics {
    /// The single, unlabelled instance of a process.
    fn from(shared: Arc<Metrics>) -> Self {
        Self { shared, instance: Instance::default() }
    }
}

impl InstanceMetrics {
    /// The process-wide registry.
    pub fn shared(&self) -> &Arc<Metrics> {
        &self.shared
    }

    /// The instance these series belong to.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Records one RPC.
    pub fn rpc(&self, api: &'static str, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let l = (self.instance.clone(), RpcLabels { api, method, code: code_name(code) });
        self.shared.rpc_total.get_or_create(&l).inc();
        self.shared.rpc_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records one call (attempt) to a remote KMS.
    pub fn remote(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let l = (self.instance.clone(), RemoteLabels { operation, outcome });
        self.shared.remote_total.get_or_create(&l).inc();
        self.shared.remote_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records an accepted connection.
    pub fn connection_opened(&self) {
        self.shared.connections.get_or_create(&self.instance).inc();
    }

    /// Records the `:authority` rewrites of a closed connection.
    pub fn authority_rewrites(&self, n: u64) {
        self.shared.authority_rewrites.get_or_create(&self.instance).inc_by(n);
    }

    /// Records one backend operation.
    pub fn backend(&self, backend: &'static str, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        let l = (self.instance.clone(), BackendLabels { backend, operation, outcome });
        self.shared.backend_total.get_or_create(&l).inc();
        self.shared.backend_seconds.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// Records a probe result and the current key_id (hashed).
    pub fn health(&self, healthy: bool, key_id: Option<&str>, unix_time: i64) {
        self.shared.healthy.get_or_create(&self.instance).set(i64::from(healthy));
        self.shared.last_probe.get_or_create(&self.instance).set(unix_time);
        let Ok(mut cur) = self.shared.key_id_current.lock() else { return };
        let hash = key_id.map(key_id_hash);
        if cur.get(&self.instance) != hash.as_ref() {
            if let Some(old) = cur.remove(&self.instance) {
                self.shared.key_id.remove(&(self.instance.clone(), KeyIdLabels { key_id_hash: old }));
            }
            if let Some(h) = hash {
                self.shared
                    .key_id
                    .get_or_create(&(self.instance.clone(), KeyIdLabels { key_id_hash: h.clone() }))
                    .set(1);
                cur.insert(self.instance.clone(), h);
            }
        }
    }

    /// The process's metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        self.shared.encode()
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
        let shared = Arc::new(Metrics::new());
        let m = InstanceMetrics::from(shared.clone());
        m.rpc("v2", "Encrypt", tonic::Code::Ok, Duration::from_micros(80));
        m.backend("embedded", "encrypt", "ok", Duration::from_micros(10));
        m.health(true, Some("envelope-secret-looking-key-id"), 1_700_000_000);
        let text = m.encode();
        assert!(
            text.contains("envelope_plugin_rpc_requests_total{api=\"v2\",method=\"Encrypt\",code=\"OK\"} 1"),
            "{text}"
        );
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

    #[test]
    fn instances_share_one_family_per_metric_with_their_own_labels() {
        let shared = Arc::new(Metrics::new());
        let a = shared.instance(Instance::new("/run/a.sock", "alias/a"));
        let b = shared.instance(Instance::new("/run/b.sock", "alias/b"));
        a.rpc("v2", "Status", tonic::Code::Ok, Duration::from_micros(5));
        b.rpc("v2", "Status", tonic::Code::Ok, Duration::from_micros(5));
        b.rpc("v2", "Status", tonic::Code::Ok, Duration::from_micros(5));
        a.health(true, Some("key-a"), 1);
        b.health(false, Some("key-b"), 1);
        b.health(false, Some("key-b2"), 2);
        let text = shared.encode();
        assert!(text.contains(r#"envelope_plugin_rpc_requests_total{socket="/run/a.sock",key="alias/a",api="v2",method="Status",code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"envelope_plugin_rpc_requests_total{socket="/run/b.sock",key="alias/b",api="v2",method="Status",code="OK"} 2"#), "{text}");
        assert!(text.contains(r#"envelope_plugin_healthy{socket="/run/a.sock",key="alias/a"} 1"#), "{text}");
        assert!(text.contains(r#"envelope_plugin_healthy{socket="/run/b.sock",key="alias/b"} 0"#), "{text}");
        // One HELP/TYPE block per metric, whatever the number of instances.
        assert_eq!(text.matches("# TYPE envelope_plugin_rpc_requests counter").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE envelope_plugin_healthy gauge").count(), 1, "{text}");
        // Each instance shows its current key_id only.
        assert!(text.contains(&key_id_hash("key-a")));
        assert!(text.contains(&key_id_hash("key-b2")));
        assert!(!text.contains(&key_id_hash("key-b")), "{text}");
    }
}
