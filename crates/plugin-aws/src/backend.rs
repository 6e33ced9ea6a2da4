//! [`AwsBackend`]: the plugin's master key is a key of an AWS-KMS-API endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{IncludeKeyMaterial, KeyMaterialState, KeySpec, KeyState, KeyUsageType};
use envelope_plugin::format::BackendKind;
use envelope_plugin::{InstanceMetrics, KeyBackend, PluginError, Probe, RESERVED_CONTEXT_PREFIX};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::blob::{self, KEY_ID_DIGEST_LEN};
use crate::classify::classify;
use crate::retry::{self, RetryPolicy};

/// The plugin binds its own encryption context (keys [`RESERVED_CONTEXT_PREFIX`] `envelope:…`)
/// into every wrap. The key server reserves `envelope:` keys for wraps made inside its key store
/// and refuses them from clients, so over the AWS API the plugin's keys travel as
/// `k8s-envelope:…`.
pub const PLUGIN_CONTEXT_PREFIX: &str = "k8s-envelope:";
/// Most pages of ListKeyRotations read when looking for the current material id.
const MAX_ROTATION_PAGES: usize = 20;

/// Sends one KMS request (one attempt), classifies its failure, and records it in `metrics`.
/// An attempt abandoned before it ends (the caller's deadline passed, or the caller went away)
/// is recorded with the outcome `DEADLINE_EXCEEDED`.
async fn send<T, E>(
    metrics: Option<&InstanceMetrics>,
    op: &'static str,
    request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
) -> Result<T, PluginError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    struct Record<'a> {
        metrics: Option<&'a InstanceMetrics>,
        op: &'static str,
        started: std::time::Instant,
        outcome: &'static str,
    }
    impl Drop for Record<'_> {
        fn drop(&mut self) {
            if let Some(m) = self.metrics {
                m.remote(self.op, self.outcome, self.started.elapsed());
            }
        }
    }
    let mut record = Record { metrics, op, started: std::time::Instant::now(), outcome: "DEADLINE_EXCEEDED" };
    let r = request.await.map_err(|e| classify(op, &e));
    record.outcome = match &r {
        Ok(_) => "ok",
        Err(e) => envelope_plugin::metrics::code_name(e.code()),
    };
    r
}

/// A version of the configured key, as learned by a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKeyVersion {
    /// ARN of the key (an alias resolves to it at probe time; Encrypt uses the ARN so the
    /// ciphertext always matches the key_id reported).
    pub key_arn: Arc<str>,
    /// The KMS v2 key_id of this version.
    pub key_id: String,
    digest: [u8; KEY_ID_DIGEST_LEN],
}

/// What the background health probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeMode {
    /// DescribeKey, then an Encrypt and a Decrypt with the current key version: proves the
    /// credentials may use the key (a policy may allow DescribeKey but deny Encrypt). Three KMS
    /// calls per probe.
    #[default]
    RoundTrip,
    /// DescribeKey only (plus ListKeyRotations on endpoints without `CurrentKeyMaterialId`): one
    /// call per probe; a denied Encrypt shows up on the first real request instead.
    DescribeKey,
}

/// A [`KeyBackend`] whose master key lives in AWS KMS or in `envelope kms serve`.
#[derive(Debug, Clone)]
pub struct AwsBackend {
    client: Client,
    key: String,
    context: BTreeMap<String, String>,
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
    metrics: Option<InstanceMetrics>,
    probe_mode: ProbeMode,
}

impl AwsBackend {
    /// A backend using `key` (key ARN, key id, alias name or alias ARN) through `client`.
    ///
    /// `encryption_context` is added to every Encrypt/Decrypt (key policies can require it); its
    /// keys may not start with `envelope:` or `k8s-envelope:`. At most `max_in_flight` KMS calls
    /// run at once. The client's own retries are turned off: this backend retries transient
    /// errors itself, within the caller's deadline ([`envelope_plugin::deadline`]).
    pub fn new(
        client: Client,
        key: String,
        encryption_context: BTreeMap<String, String>,
        max_in_flight: usize,
    ) -> Result<Self, PluginError> {
        if key.trim().is_empty() {
            return Err(PluginError::InvalidRequest("the AWS key (ARN, key id or alias) is empty".into()));
        }
        if max_in_flight == 0 || max_in_flight > Semaphore::MAX_PERMITS {
            return Err(PluginError::InvalidRequest(format!(
                "max_in_flight must be between 1 and {}",
                Semaphore::MAX_PERMITS
            )));
        }
        if let Some(k) = encryption_context
            .keys()
            .find(|k| k.starts_with(RESERVED_CONTEXT_PREFIX) || k.starts_with(PLUGIN_CONTEXT_PREFIX))
        {
            return Err(PluginError::InvalidRequest(format!(
                "encryption context key {k:?} uses a prefix reserved for envelope ({RESERVED_CONTEXT_PREFIX:?}, {PLUGIN_CONTEXT_PREFIX:?})"
            )));
        }
        let conf = client.config().to_builder().retry_config(RetryConfig::disabled()).build();
        Ok(Self {
            client: Client::from_conf(conf),
            key,
            context: encryption_context,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            retry: RetryPolicy::default(),
            metrics: None,
            probe_mode: ProbeMode::default(),
        })
    }

    /// Records every remote call (count and latency by operation and outcome) in `metrics`.
    pub fn with_metrics(mut self, metrics: impl Into<InstanceMetrics>) -> Self {
        self.metrics = Some(metrics.into());
        self
    }

    /// Sets what the health probe does (default [`ProbeMode::RoundTrip`]).
    pub fn with_probe(mut self, mode: ProbeMode) -> Self {
        self.probe_mode = mode;
        self
    }

    /// Shares one concurrency limit among several backends (several keys of one process toward
    /// the same KMS), replacing this backend's own `max_in_flight` limit.
    pub fn with_shared_limit(mut self, permits: Arc<Semaphore>) -> Self {
        self.permits = permits;
        self
    }

    /// Replaces the retry policy (see [`RetryPolicy::default`]).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The configured key reference.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The SDK client in use (with SDK retries disabled).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The AWS encryption context for a plugin context: the configured pairs plus the plugin's,
    /// renamed from `envelope:…` to `k8s-envelope:…`.
    pub fn aws_context(&self, ctx: &BTreeMap<String, String>) -> Result<HashMap<String, String>, PluginError> {
        let mut out: HashMap<String, String> = self.context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in ctx {
            let Some(rest) = k.strip_prefix(RESERVED_CONTEXT_PREFIX) else {
                return Err(PluginError::Internal(format!(
                    "plugin context key {k:?} lacks the {RESERVED_CONTEXT_PREFIX:?} prefix"
                )));
            };
            out.insert(format!("{PLUGIN_CONTEXT_PREFIX}{rest}"), v.clone());
        }
        Ok(out)
    }

    /// The material id of the key's current version from ListKeyRotations, when DescribeKey does
    /// not report `CurrentKeyMaterialId`. `None` when the endpoint cannot tell (the key_id then
    /// covers the ARN alone); transient errors are returned, so a blip never changes the key_id.
    async fn material_from_rotations(&self, arn: &str) -> Result<Option<String>, PluginError> {
        let mut marker: Option<String> = None;
        let mut newest: Option<(aws_sdk_kms::primitives::DateTime, String)> = None;
        for _ in 0..MAX_ROTATION_PAGES {
            let page = retry::run(&self.retry, &self.permits, "ListKeyRotations", || {
                let req = self
                    .client
                    .list_key_rotations()
                    .key_id(arn)
                    .include_key_material(IncludeKeyMaterial::AllKeyMaterial)
                    .set_marker(marker.clone());
                send(self.metrics.as_ref(), "ListKeyRotations", req.send())
            })
            .await;
            let page = match page {
                Ok(p) => p,
                Err(e @ (PluginError::Unavailable(_) | PluginError::DeadlineExceeded)) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "ListKeyRotations unusable; key_id covers the key ARN only");
                    return Ok(None);
                }
            };
            for r in page.rotations() {
                let Some(id) = r.key_material_id() else { continue };
                if r.key_material_state() == Some(&KeyMaterialState::Current) {
                    return Ok(Some(id.to_string()));
                }
                if let Some(date) = r.rotation_date()
                    && newest.as_ref().is_none_or(|(d, _)| date > d)
                {
                    newest = Some((*date, id.to_string()));
                }
            }
            match (page.truncated(), page.next_marker()) {
                (true, Some(m)) => marker = Some(m.to_string()),
                _ => break,
            }
        }
        Ok(newest.map(|(_, id)| id))
    }
}

impl KeyBackend for AwsBackend {
    type Version = AwsKeyVersion;

    fn kind(&self) -> BackendKind {
        BackendKind::Aws
    }

    async fn probe(&self) -> Result<Probe<AwsKeyVersion>, PluginError> {
        let key = self.key.as_str();
        let out = retry::run(&self.retry, &self.permits, "DescribeKey", || {
            send(self.metrics.as_ref(), "DescribeKey", self.client.describe_key().key_id(key).send())
        })
        .await
        .map_err(|e| match e {
            PluginError::UnknownKey(m) => PluginError::KeyUnusable(format!("key {key} not found ({m})")),
            other => other,
        })?;
        let md =
            out.key_metadata().ok_or_else(|| PluginError::Internal("DescribeKey returned no KeyMetadata".into()))?;
        let arn = md.arn().ok_or_else(|| PluginError::Internal("DescribeKey returned no key ARN".into()))?;
        match md.key_state() {
            Some(KeyState::Enabled) => {}
            Some(KeyState::Disabled) => return Err(PluginError::KeyUnusable(format!("key {key} ({arn}) is disabled"))),
            Some(other) => {
                return Err(PluginError::KeyUnusable(format!("key {key} ({arn}) is in state {}", other.as_str())));
            }
            None => return Err(PluginError::Internal("DescribeKey returned no KeyState".into())),
        }
        if let Some(u) = md.key_usage()
            && *u != KeyUsageType::EncryptDecrypt
        {
            return Err(PluginError::KeyUnusable(format!(
                "key {key} ({arn}) has usage {}; ENCRYPT_DECRYPT is required",
                u.as_str()
            )));
        }
        if let Some(s) = md.key_spec()
            && *s != KeySpec::SymmetricDefault
        {
            return Err(PluginError::KeyUnusable(format!(
                "key {key} ({arn}) is {}; a SYMMETRIC_DEFAULT key is required",
                s.as_str()
            )));
        }
        let material = match md.current_key_material_id() {
            Some(m) if !m.is_empty() => Some(m.to_string()),
            _ => self.material_from_rotations(arn).await?,
        };
        let digest = blob::key_id_digest(arn, material.as_deref());
        let key_id = blob::key_id_from_digest(&digest);
        let version = AwsKeyVersion { key_arn: Arc::from(arn), key_id: key_id.clone(), digest };
        if self.probe_mode == ProbeMode::RoundTrip {
            let ctx = BTreeMap::from([(format!("{RESERVED_CONTEXT_PREFIX}probe"), "1".to_string())]);
            let wrapped = self.encrypt(&version, b"envelope health probe", &ctx).await?;
            let back = self.decrypt(&wrapped, &ctx).await?;
            if &back[..] != b"envelope health probe" {
                return Err(PluginError::Internal("health probe round trip returned other bytes".into()));
            }
        }
        Ok(Probe { key_id, version })
    }

    async fn encrypt(
        &self,
        version: &AwsKeyVersion,
        plaintext: &[u8],
        ctx: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, PluginError> {
        let aws_ctx = self.aws_context(ctx)?;
        let arn: &str = &version.key_arn;
        let out = retry::run(&self.retry, &self.permits, "Encrypt", || {
            let req = self
                .client
                .encrypt()
                .key_id(arn)
                // The SDK takes ownership of the bytes; they are marked sensitive (never logged).
                .plaintext(Blob::new(plaintext.to_vec()))
                .set_encryption_context(Some(aws_ctx.clone()));
            send(self.metrics.as_ref(), "Encrypt", req.send())
        })
        .await?;
        let ct =
            out.ciphertext_blob().ok_or_else(|| PluginError::Internal("Encrypt returned no CiphertextBlob".into()))?;
        blob::encode(arn, &version.digest, ct.as_ref())
    }

    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError> {
        Ok(blob::parse(blob)?.key_id())
    }

    async fn decrypt(&self, blob: &[u8], ctx: &BTreeMap<String, String>) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        let b = blob::parse(blob)?;
        let aws_ctx = self.aws_context(ctx)?;
        let out = retry::run(&self.retry, &self.permits, "Decrypt", || {
            let req = self
                .client
                .decrypt()
                .key_id(b.key_arn)
                .ciphertext_blob(Blob::new(b.ciphertext.to_vec()))
                .set_encryption_context(Some(aws_ctx.clone()));
            send(self.metrics.as_ref(), "Decrypt", req.send())
        })
        .await?;
        let plaintext = out.plaintext.ok_or_else(|| PluginError::Internal("Decrypt returned no Plaintext".into()))?;
        Ok(Zeroizing::new(plaintext.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(aws_sdk_kms::config::Credentials::new("a", "b", None, None, "t"))
            .build();
        Client::from_conf(conf)
    }

    #[test]
    fn construction_is_validated() {
        assert!(AwsBackend::new(client(), "".into(), BTreeMap::new(), 4).is_err());
        assert!(AwsBackend::new(client(), "alias/k".into(), BTreeMap::new(), 0).is_err());
        for reserved in ["envelope:x", "k8s-envelope:api"] {
            let ctx = BTreeMap::from([(reserved.to_string(), "v".to_string())]);
            assert!(AwsBackend::new(client(), "alias/k".into(), ctx, 4).is_err(), "{reserved}");
        }
        let b = AwsBackend::new(client(), "alias/k".into(), BTreeMap::new(), 4).unwrap();
        assert_eq!(b.client().config().retry_config().map(|r| r.max_attempts()), Some(1));
    }

    #[test]
    fn plugin_context_is_renamed() {
        let ctx = BTreeMap::from([("cluster".to_string(), "prod".to_string())]);
        let b = AwsBackend::new(client(), "alias/k".into(), ctx, 4).unwrap();
        let m = b.aws_context(&BTreeMap::from([("envelope:api".to_string(), "kms-v2".to_string())])).unwrap();
        assert_eq!(m.get("cluster").map(String::as_str), Some("prod"));
        assert_eq!(m.get("k8s-envelope:api").map(String::as_str), Some("kms-v2"));
        assert_eq!(m.len(), 2);
        assert!(b.aws_context(&BTreeMap::from([("other".to_string(), "x".to_string())])).is_err());
    }
}
