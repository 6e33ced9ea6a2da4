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

/// Labels of the local KEK layer's events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KekLabels {
    /// `hit`, `miss` (an unwrap started), `shared` (waited for another caller's unwrap),
    /// `unwrap`/`unwrap_failed` and `wrap`/`wrap_failed` (remote calls), `expired`, `evicted`,
    /// `revoked` (entries dropped because the remote key was revoked).
    pub event: &'static str,
}

/// AWS KMS list price of a request: $0.03 per 10,000.
pub const USD_PER_REQUEST: f64 = 0.03 / 10_000.0;
/// Seconds in the 30-day month of the cost estimate.
pub const SECONDS_PER_MONTH: f64 = 30.0 * 24.0 * 3600.0;

/// Remote calls counted at the last cost estimate, when, and the smoothed rate (calls/s).
type RateSample = (u64, std::time::Instant, Option<f64>);

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
    /// Every remote call of an instance (not exposed: the base of the cost estimate).
    remote_sum: Family<Instance, Counter>,
    remote_monthly: Family<Instance, Gauge<f64, std::sync::atomic::AtomicU64>>,
    remote_cost: Family<Instance, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per instance: (remote calls, when) at the last estimate, and the smoothed rate.
    remote_rate: Mutex<HashMap<Instance, RateSample>>,
    kek_total: Family<(Instance, KekLabels), Counter>,
    kek_cached: Family<Instance, Gauge>,
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
            remote_sum: Family::default(),
            remote_monthly: Family::default(),
            remote_cost: Family::default(),
            remote_rate: Mutex::new(HashMap::new()),
            kek_total: Family::default(),
            kek_cached: Family::default(),
        };
        registry.register(
            "remote_calls_monthly_estimate",
            "Remote KMS calls a 30-day month would take at the recent rate (smoothed over about 10 minutes, updated by each health probe)",
            m.remote_monthly.clone(),
        );
        registry.register(
            "remote_calls_monthly_cost_usd_estimate",
            "remote_calls_monthly_estimate at the AWS KMS list price of $0.03 per 10,000 requests",
            m.remote_cost.clone(),
        );
        registry.register(
            "local_kek_events",
            "Local KEK layer: cache hits and misses, shared unwraps, remote wraps and unwraps, expired, evicted and revoked entries",
            m.kek_total.clone(),
        );
        registry.register("local_kek_cached", "Unwrapped local KEKs in the cache", m.kek_cached.clone());
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
        self.shared.remote_sum.get_or_create(&self.instance).inc();
    }

    /// Remote KMS calls of this instance so far (every operation and outcome).
    pub fn remote_calls(&self) -> u64 {
        self.shared.remote_sum.get_or_create(&self.instance).get()
    }

    /// Updates the monthly estimate of remote calls and their cost from the calls made since
    /// the last update (called by the health loop). The rate is smoothed exponentially with a
    /// 10-minute time constant.
    pub fn update_cost_estimate(&self) {
        let calls = self.remote_calls();
        let now = std::time::Instant::now();
        let Ok(mut rates) = self.shared.remote_rate.lock() else { return };
        let (last_calls, last_at, rate) = rates.entry(self.instance.clone()).or_insert((calls, now, None));
        let dt = now.saturating_duration_since(*last_at).as_secs_f64();
        if dt < 0.001 {
            return;
        }
        let recent = calls.saturating_sub(*last_calls) as f64 / dt;
        let alpha = 1.0 - (-dt / 600.0).exp();
        let smoothed = match *rate {
            Some(r) => r + alpha * (recent - r),
            None => recent,
        };
        *rate = Some(smoothed);
        *last_calls = calls;
        *last_at = now;
        let monthly = smoothed * SECONDS_PER_MONTH;
        self.shared.remote_monthly.get_or_create(&self.instance).set(monthly);
        self.shared.remote_cost.get_or_create(&self.instance).set(monthly * USD_PER_REQUEST);
    }

    /// Records `n` local KEK layer events.
    pub fn local_kek(&self, event: &'static str, n: u64) {
        self.shared.kek_total.get_or_create(&(self.instance.clone(), KekLabels { event })).inc_by(n);
    }

    /// How many of a local KEK layer's events were recorded (tests, the bench).
    pub fn local_kek_count(&self, event: &'static str) -> u64 {
        self.shared.kek_total.get_or_create(&(self.instance.clone(), KekLabels { event })).get()
    }

    /// The number of unwrapped local KEKs in the cache.
    pub fn local_kek_cached(&self, n: usize) {
        self.shared.kek_cached.get_or_create(&self.instance).set(i64::try_from(n).unwrap_or(i64::MAX));
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
