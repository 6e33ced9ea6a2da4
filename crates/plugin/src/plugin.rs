//! [`Plugin`]: shared state (backend, cached health, metrics, config), the background health
//! loop, and the core Encrypt/Decrypt logic used by both API versions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envelope_keystore::EncryptionContext;
use envelope_keystore::context::reserved_key;
use envelope_proto::rules::MAX_FIELD_LEN;
use tokio::sync::watch;
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::backend::KeyBackend;
use crate::error::PluginError;
use crate::format::{self, MAX_PLAINTEXT, MAX_V2_PLAINTEXT};
use crate::metrics::{InstanceMetrics, code_name};

/// Plugin settings that the library needs (the CLI owns the rest).
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `version` reported by KMS v2 Status (`v2beta1` works with every release since 1.27).
    pub status_version: String,
    /// How often the background probe runs.
    pub health_interval: Duration,
    /// Upper bound of one probe.
    pub probe_timeout: Duration,
    /// Server-side cap on an RPC when the client sends no deadline.
    pub request_timeout: Duration,
    /// How long in-flight RPCs may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Most client connections per socket at once; further ones wait in the listen backlog
    /// (kube-apiserver holds one per provider).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (kube-apiserver polls Status
    /// about every minute and reconnects on its own).
    pub idle_timeout: Duration,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            status_version: "v2beta1".into(),
            health_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            max_message_bytes: 128 * 1024,
            max_connections: 256,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The cached result of the last health probes.
#[derive(Debug, Clone)]
pub struct Health<V> {
    /// key_id of the last successful probe; kept through later failures so a transient outage
    /// does not look like a rotation.
    pub key_id: Option<String>,
    /// Backend version handle matching `key_id`.
    pub version: Option<V>,
    /// `None` when the last probe succeeded, else why it failed.
    pub error: Option<PluginError>,
    /// When the last probe finished.
    pub checked_at: Option<SystemTime>,
}

impl<V> Health<V> {
    /// The text Status reports as `healthz`: exactly `ok` when healthy.
    pub fn healthz(&self) -> String {
        match (&self.error, &self.key_id) {
            (None, Some(_)) => "ok".to_string(),
            (Some(e), _) => e.to_string(),
            (None, None) => "not probed yet".to_string(),
        }
    }

    /// True when the backend is usable now.
    pub fn is_ready(&self) -> bool {
        self.error.is_none() && self.key_id.is_some()
    }
}

/// The annotation every envelope ciphertext carries (public, non-secret): which plugin and
/// backend produced it, for `envelope inspect` to show without decrypting.
pub const ANNOTATION_KEY: &str = "plugin.envelope.dev";

pub(crate) struct Inner<B: KeyBackend> {
    pub(crate) backend: B,
    pub(crate) config: PluginConfig,
    pub(crate) metrics: InstanceMetrics,
    health: RwLock<Arc<Health<B::Version>>>,
    annotations: HashMap<String, Vec<u8>>,
    /// Carries the instance's socket and key into every log line of a process with several.
    span: tracing::Span,
}

/// The plugin: clone it freely (it is an `Arc`).
pub struct Plugin<B: KeyBackend> {
    pub(crate) inner: Arc<Inner<B>>,
}

impl<B: KeyBackend> Clone for Plugin<B> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<B: KeyBackend> Plugin<B> {
    /// Creates a plugin around `backend`. Call [`Plugin::probe_now`] (or start the health loop)
    /// before serving so the first Status is meaningful.
    /// `metrics` is the process registry (`Arc<Metrics>`, for a single instance) or an
    /// [`InstanceMetrics`] handle carrying this instance's labels.
    pub fn new(backend: B, config: PluginConfig, metrics: impl Into<InstanceMetrics>) -> Self {
        let metrics = metrics.into();
        let span = match metrics.instance().labels() {
            Some((socket, key)) => tracing::info_span!("instance", socket = %socket, key = %key),
            None => tracing::Span::none(),
        };
        let annotations = HashMap::from([(
            ANNOTATION_KEY.to_string(),
            format!("envelope/{}/v1", backend.kind().name()).into_bytes(),
        )]);
        Self {
            inner: Arc::new(Inner {
                backend,
                config,
                metrics,
                health: RwLock::new(Arc::new(Health { key_id: None, version: None, error: None, checked_at: None })),
                annotations,
                span,
            }),
        }
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &InstanceMetrics {
        &self.inner.metrics
    }

    /// The tracing span of this instance (empty for a single instance).
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// The configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.inner.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The cached health (O(1)).
    pub fn health(&self) -> Arc<Health<B::Version>> {
        match self.inner.health.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Runs one probe now and updates the cached health.
    pub async fn probe_now(&self) -> Arc<Health<B::Version>> {
        self.probe_inner().instrument(self.inner.span.clone()).await
    }

    async fn probe_inner(&self) -> Arc<Health<B::Version>> {
        let start = Instant::now();
        let deadline = crate::deadline::later(tokio::time::Instant::now(), self.inner.config.probe_timeout);
        let probe = crate::deadline::scope(deadline, self.inner.backend.probe());
        let res = match tokio::time::timeout_at(deadline, probe).await {
            Ok(r) => r,
            Err(_) => Err(PluginError::Unavailable("health probe timed out".into())),
        };
        let outcome = match &res {
            Ok(_) => "ok",
            Err(e) => code_name(e.code()),
        };
        self.inner.metrics.backend(self.inner.backend.kind().name(), "probe", outcome, start.elapsed());
        self.inner.metrics.update_cost_estimate();
        let prev = self.health();
        let next = match res {
            Ok(p) => {
                if prev.key_id.as_deref() != Some(p.key_id.as_str()) {
                    match &prev.key_id {
                        Some(previous) => tracing::info!(key_id = %p.key_id, %previous, "key_id is now current"),
                        None => tracing::info!(key_id = %p.key_id, "key_id is now current"),
                    }
                }
                if prev.error.is_some() {
                    tracing::info!("backend healthy again");
                }
                Health {
                    key_id: Some(p.key_id),
                    version: Some(p.version),
                    error: None,
                    checked_at: Some(SystemTime::now()),
                }
            }
            Err(e) => {
                if prev.error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "health probe failed");
                }
                Health {
                    key_id: prev.key_id.clone(),
                    version: prev.version.clone(),
                    error: Some(e),
                    checked_at: Some(SystemTime::now()),
                }
            }
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        self.inner.metrics.health(next.is_ready(), next.key_id.as_deref(), now);
        let next = Arc::new(next);
        match self.inner.health.write() {
            Ok(mut g) => *g = next.clone(),
            Err(p) => *p.into_inner() = next.clone(),
        }
        next
    }

    /// Probes every `health_interval` until `shutdown` turns true.
    pub fn spawn_health_loop(&self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.config.health_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { this.probe_now().await; }
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() { break; }
                    }
                }
            }
        })
    }

    /// KMS v2 Encrypt: returns `(ciphertext, key_id, annotations)`.
    pub async fn encrypt_v2(
        &self,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String, HashMap<String, Vec<u8>>), PluginError> {
        check_plaintext(plaintext)?;
        if plaintext.len() > MAX_V2_PLAINTEXT {
            return Err(PluginError::InvalidRequest(format!(
                "KMS v2 plaintext is {} bytes; at most {MAX_V2_PLAINTEXT} are accepted (kube-apiserver sends 32)",
                plaintext.len()
            )));
        }
        let h = self.health();
        let (Some(key_id), Some(version)) = (&h.key_id, &h.version) else {
            return Err(PluginError::Unavailable(format!("plugin not ready: {}", h.healthz())));
        };
        let mut annotations = self.inner.annotations.clone();
        let start = Instant::now();
        let r = self.inner.backend.seal_v2(version, key_id, plaintext, &mut annotations).await;
        self.record("encrypt", &r, start);
        let ciphertext = r?;
        if ciphertext.len() > MAX_FIELD_LEN
            || key_id.is_empty()
            || key_id.len() > MAX_FIELD_LEN
            || format::check_annotations(&annotations).is_err()
        {
            return Err(PluginError::Internal("backend output exceeds the KMS v2 limits".into()));
        }
        Ok((ciphertext, key_id.clone(), annotations))
    }

    /// KMS v2 Decrypt.
    pub async fn decrypt_v2(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &HashMap<String, Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        if key_id.is_empty() {
            return Err(PluginError::InvalidRequest("key_id is empty".into()));
        }
        if key_id.len() > MAX_FIELD_LEN {
            return Err(PluginError::InvalidRequest(format!("key_id is longer than {MAX_FIELD_LEN} bytes")));
        }
        if ciphertext.len() > MAX_FIELD_LEN {
            return Err(PluginError::InvalidCiphertext(format!("ciphertext is longer than {MAX_FIELD_LEN} bytes")));
        }
        format::check_annotations(annotations)?;
        let actual = self.inner.backend.key_id_of_v2(ciphertext, annotations)?;
        if actual != key_id {
            return Err(PluginError::KeyIdMismatch(key_id.to_string()));
        }
        let start = Instant::now();
        let r = self.inner.backend.open_v2(ciphertext, key_id, annotations).await;
        self.record("decrypt", &r, start);
        r
    }

    /// KMS v1beta1 Encrypt.
    pub async fn encrypt_v1(&self, plaintext: &[u8]) -> Result<Vec<u8>, PluginError> {
        check_plaintext(plaintext)?;
        let h = self.health();
        let (Some(key_id), Some(version)) = (&h.key_id, &h.version) else {
            return Err(PluginError::Unavailable(format!("plugin not ready: {}", h.healthz())));
        };
        let start = Instant::now();
        let r = self.inner.backend.seal_v1(version, key_id, plaintext).await;
        self.record("encrypt", &r, start);
        r
    }

    /// KMS v1beta1 Decrypt.
    pub async fn decrypt_v1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        if ciphertext.len() > u16::MAX as usize {
            return Err(PluginError::InvalidCiphertext("ciphertext is longer than 65535 bytes".into()));
        }
        let start = Instant::now();
        let r = self.inner.backend.open_v1(ciphertext).await;
        self.record("decrypt", &r, start);
        r
    }

    fn record<T>(&self, op: &'static str, r: &Result<T, PluginError>, start: Instant) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) => code_name(e.code()),
        };
        self.inner.metrics.backend(self.inner.backend.kind().name(), op, outcome, start.elapsed());
    }
}

fn check_plaintext(p: &[u8]) -> Result<(), PluginError> {
    if p.is_empty() {
        return Err(PluginError::InvalidRequest("plaintext is empty".into()));
    }
    if p.len() > MAX_PLAINTEXT {
        return Err(PluginError::InvalidRequest(format!("plaintext is longer than {MAX_PLAINTEXT} bytes")));
    }
    Ok(())
}

/// The encryption context bound into a KMS v2 wrap: the API, the key_id and the annotations.
pub fn v2_context(key_id: &str, annotations: &HashMap<String, Vec<u8>>) -> EncryptionContext {
    EncryptionContext::from([
        (reserved_key("api"), "kms-v2".to_string()),
        (reserved_key("key-id"), key_id.to_string()),
        (reserved_key("annotations"), format::annotations_digest(annotations)),
    ])
}

/// The encryption context bound into a KMS v1 wrap.
pub fn v1_context() -> EncryptionContext {
    EncryptionContext::from([(reserved_key("api"), "kms-v1".to_string())])
}
