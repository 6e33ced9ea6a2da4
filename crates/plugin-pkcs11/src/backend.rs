//! [`Pkcs11Backend`]: the plugin's master key is an AES-256 key inside a PKCS#11 token.
//!
//! Encrypt and Decrypt run `CKM_AES_GCM` inside the token with a fresh 96-bit IV from the host's
//! random generator (aws-lc-rs) and the blob header and the plugin's encryption context (API,
//! key_id, annotations digest) as additional data; the key never leaves the token. The health
//! probe finds the current key object (see [`crate::keys`]), checks its attributes and makes a
//! round trip through the token.

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::ObjectHandle;
use envelope_keystore::EncryptionContext;
use envelope_plugin::format::BackendKind;
use envelope_plugin::{InstanceMetrics, KeyBackend, PluginError, Probe, RESERVED_CONTEXT_PREFIX};
use zeroize::Zeroizing;

use crate::blob::{self, IV_LEN, TAG_LEN};
use crate::classify::{Failure, pkcs11};
use crate::keys;
use crate::module::Module;
use crate::pin::PinSource;
use crate::pool::{Pkcs11Config, Pool, Pooled, RetryPolicy};

/// The key object a probe found current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11KeyVersion {
    /// Its `CKA_ID`.
    pub id: Arc<[u8]>,
    /// The KMS v2 key_id of its blobs.
    pub key_id: String,
}

/// A [`KeyBackend`] whose master key lives in a PKCS#11 token.
#[derive(Debug, Clone)]
pub struct Pkcs11Backend {
    pool: Arc<Pool>,
    key_label: Arc<str>,
    metrics: Option<InstanceMetrics>,
}

impl Pkcs11Backend {
    /// Loads the module (once per process) and prepares the session pool; no token call is
    /// made until the first probe.
    pub fn new(config: &Pkcs11Config) -> Result<Self, PluginError> {
        Self::with_retry(config, crate::pool::PKCS11_RETRY)
    }

    /// As [`Pkcs11Backend::new`], with a retry policy.
    pub fn with_retry(config: &Pkcs11Config, retry: RetryPolicy) -> Result<Self, PluginError> {
        config.validate()?;
        let module = Module::load(&config.module)?;
        let mut pool =
            Pool::new(module, config.token.clone(), PinSource::file(&config.pin_file), config.sessions, false);
        pool.set_retry(retry);
        Ok(Self { pool: Arc::new(pool), key_label: Arc::from(config.key_label.as_str()), metrics: None })
    }

    /// Records every token call (count and latency by operation and outcome) in `metrics`.
    pub fn with_metrics(mut self, metrics: impl Into<InstanceMetrics>) -> Self {
        self.metrics = Some(metrics.into());
        self
    }

    /// The session pool (shared by clones of this backend): admin tasks and tests can run a
    /// call of their own on one of its sessions ([`Pool::run`]).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The key label.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }
}

fn seal(
    s: &Pooled,
    h: ObjectHandle,
    header: &[u8],
    ctx: &EncryptionContext,
    plaintext: &[u8],
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let mut iv = [0u8; IV_LEN];
    aws_lc_rs::rand::fill(&mut iv)
        .map_err(|_| Failure::Plugin(PluginError::Internal("the system random generator failed".into())))?;
    let aad = blob::aad(header, ctx);
    let mut iv_param = iv;
    let params = GcmParams::new(&mut iv_param, &aad, 128.into())
        .map_err(|e| Failure::Plugin(PluginError::Internal(format!("GCM parameters: {e}"))))?;
    let sealed = s.session()?.encrypt(&Mechanism::AesGcm(params), h, plaintext).map_err(pkcs11(what))?;
    if sealed.len() != plaintext.len() + TAG_LEN {
        return Err(Failure::Plugin(PluginError::Internal(format!(
            "the token's AES-GCM output is {} bytes for {} bytes in (a {TAG_LEN}-byte tag was asked for)",
            sealed.len(),
            plaintext.len()
        ))));
    }
    Ok(blob::encode(header, &iv, &sealed))
}

fn open(
    s: &Pooled,
    h: ObjectHandle,
    b: &blob::Pkcs11Blob<'_>,
    ctx: &EncryptionContext,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let aad = blob::aad(b.header, ctx);
    let mut iv = [0u8; IV_LEN];
    iv.copy_from_slice(b.iv);
    let params = GcmParams::new(&mut iv, &aad, 128.into())
        .map_err(|e| Failure::Plugin(PluginError::Internal(format!("GCM parameters: {e}"))))?;
    s.session()?.decrypt(&Mechanism::AesGcm(params), h, b.sealed).map(Zeroizing::new).map_err(pkcs11(what))
}

impl KeyBackend for Pkcs11Backend {
    type Version = Pkcs11KeyVersion;

    fn kind(&self) -> BackendKind {
        BackendKind::Pkcs11
    }

    async fn probe(&self) -> Result<Probe<Pkcs11KeyVersion>, PluginError> {
        let label = self.key_label.clone();
        let op = Arc::new(move |s: &mut Pooled| -> Result<Probe<Pkcs11KeyVersion>, Failure> {
            let (h, info) = keys::current(s, &label).map_err(|f| match f {
                // The configured key missing is a state of the key, not an unknown ciphertext.
                Failure::Plugin(PluginError::UnknownKey(m)) => Failure::Plugin(PluginError::KeyUnusable(m)),
                other => other,
            })?;
            if let Some(why) = info.unusable() {
                return Err(Failure::Plugin(PluginError::KeyUnusable(why)));
            }
            s.handles.insert(info.id.clone(), h);
            let what = info.describe();
            let header = blob::header(&info.id)?;
            let ctx = EncryptionContext::from([(format!("{RESERVED_CONTEXT_PREFIX}probe"), "1".to_string())]);
            let wrapped = seal(s, h, &header, &ctx, b"envelope health probe", &what)?;
            let parsed = blob::parse(&wrapped)?;
            let back = open(s, h, &parsed, &ctx, &what)?;
            if &back[..] != b"envelope health probe" {
                return Err(Failure::Plugin(PluginError::Internal(
                    "health probe round trip returned other bytes".into(),
                )));
            }
            let key_id = info.key_id.clone();
            Ok(Probe {
                key_id: key_id.clone(),
                version: Pkcs11KeyVersion { id: Arc::from(info.id.as_slice()), key_id },
            })
        });
        self.pool.call("Probe", self.metrics.as_ref(), op).await
    }

    async fn encrypt(
        &self,
        version: &Pkcs11KeyVersion,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, PluginError> {
        let header = blob::header(&version.id)?;
        let (id, plaintext, ctx) = (version.id.clone(), Zeroizing::new(plaintext.to_vec()), ctx.clone());
        let op = Arc::new(move |s: &mut Pooled| -> Result<Vec<u8>, Failure> {
            let h = keys::handle(s, &id)?;
            let what = format!("key object CKA_ID {}", hex::encode(&id));
            seal(s, h, &header, &ctx, &plaintext, &what)
        });
        self.pool.call("Encrypt", self.metrics.as_ref(), op).await
    }

    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError> {
        Ok(blob::parse(blob)?.key_id())
    }

    async fn decrypt(&self, blob: &[u8], ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        blob::parse(blob)?;
        let (blob, ctx) = (blob.to_vec(), ctx.clone());
        let op = Arc::new(move |s: &mut Pooled| -> Result<Zeroizing<Vec<u8>>, Failure> {
            let b = blob::parse(&blob)?;
            let h = keys::handle(s, b.id)?;
            let what = format!("key object CKA_ID {}", hex::encode(b.id));
            open(s, h, &b, &ctx, &what)
        });
        self.pool.call("Decrypt", self.metrics.as_ref(), op).await
    }
}
