//! The local KEK layer: [`KekLayer`] puts a key-encryption key of the plugin's own between a
//! remote backend (AWS KMS, an HSM) and the data keys kube-apiserver sends.
//!
//! A local KEK is 32 random bytes made by the plugin and wrapped once by the remote key (one
//! remote Encrypt). DEKs and DEK seeds are then wrapped locally with AES-256-GCM under it; the
//! wrapped local KEK travels with every ciphertext — in the [`KEK_ANNOTATION`] annotation for
//! KMS v2, inside the ciphertext for KMS v1 — so a reader unwraps it with one remote Decrypt and
//! keeps it in a cache: thousands of Decrypts after a restart cost one remote call per local KEK.
//!
//! * Writes use the current local KEK until it was used [`KekConfig::max_uses`] times or is
//!   [`KekConfig::max_age`] old, or the remote key_id changes (then at once). If a new one
//!   cannot be wrapped because the remote end is unreachable, writes go on with the one in use.
//! * Unwrapped local KEKs are cached (at most [`KekConfig::cache_size`], each for
//!   [`KekConfig::cache_ttl`] after it was unwrapped); the key material is cleansed when an
//!   entry leaves the cache. Concurrent Decrypts that need the same local KEK share one remote
//!   call.
//! * Revocation: when the health probe finds the remote key disabled, pending deletion, gone or
//!   denied, the cache and the current local KEK are dropped and every Encrypt and Decrypt fails
//!   with the probe's error until a probe succeeds again. The health loop probes every health
//!   interval, so a revoked key stops working here within one interval (plus one probe).
//! * The key_id reported to kube-apiserver is the remote key's: the layer adds no key_id.
//!
//! Formats (format 2 of the plugin envelope, [`format::FORMAT_LOCAL_KEK`]):
//!
//! ```text
//! ciphertext = 0x02 ‖ backend kind ‖ body
//! body (KMS v2) = 0x01 ‖ KEK ref (16) ‖ nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! body (KMS v1) = 0x02 ‖ u16 BE length ‖ wrapped KEK ‖ nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! wrapped KEK  = 0x01 ‖ backend kind ‖ backend blob   (a format-1 plugin ciphertext of the KEK,
//!                                                     made with context {envelope:api: local-kek})
//! KEK ref      = SHA-256(wrapped KEK)[..16]
//! AAD          = "envelope-local-kek-v1" ‖ 0x02 ‖ backend kind ‖ body up to the nonce
//!                ‖ canonical encryption context (KMS v2: api, key_id and every annotation,
//!                the wrapped KEK's included; KMS v1: api)
//! ```
//!
//! Format-1 ciphertexts (written without the layer) are read as before, and a layer whose
//! writes are turned off ([`KekConfig::enabled`] false) still reads format 2.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envelope_keystore::EncryptionContext;
use envelope_keystore::context::{encode, reserved_key};
use envelope_keystore::crypto::{AeadKey, KEY_LEN, NONCE_LEN, TAG_LEN, random_key, sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::backend::{KeyBackend, Probe};
use crate::error::PluginError;
use crate::format::{self, BackendKind, Format};
use crate::metrics::InstanceMetrics;
use crate::plugin::{v1_context, v2_context};

/// The KMS v2 annotation that carries the wrapped local KEK.
pub const KEK_ANNOTATION: &str = "local-kek.envelope.dev";
/// Body mode: the wrapped local KEK is in [`KEK_ANNOTATION`] (KMS v2).
pub const MODE_ANNOTATION: u8 = 0x01;
/// Body mode: the wrapped local KEK is inside the ciphertext (KMS v1).
pub const MODE_INLINE: u8 = 0x02;
/// Length of the KEK reference in a KMS v2 body.
pub const KEK_REF_LEN: usize = 16;
/// Hard limit of uses of one local KEK, even when a new one cannot be made (an outage): far
/// below the 2^32 random 96-bit nonces AES-GCM allows per key.
pub const HARD_MAX_USES: u64 = 1 << 31;
const AAD_LABEL: &[u8] = b"envelope-local-kek-v1";

/// Settings of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekConfig {
    /// New ciphertexts go through a local KEK. When false, they are wrapped by the backend
    /// directly (format 1), and format-2 ciphertexts are still read.
    pub enabled: bool,
    /// Wraps under one local KEK before a new one is made.
    pub max_uses: u64,
    /// Age of a local KEK after which a new one is made for writes.
    pub max_age: Duration,
    /// How long an unwrapped local KEK stays in the cache.
    pub cache_ttl: Duration,
    /// Most unwrapped local KEKs held at once.
    pub cache_size: usize,
}

impl Default for KekConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_uses: 1_000_000,
            max_age: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(3600),
            cache_size: 1000,
        }
    }
}

impl KekConfig {
    /// Checks the limits: every one positive, uses at most [`HARD_MAX_USES`].
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.max_uses == 0 || self.max_uses > HARD_MAX_USES {
            return Err(PluginError::InvalidRequest(format!(
                "local KEK max uses must be between 1 and {HARD_MAX_USES}"
            )));
        }
        if self.max_age.is_zero() || self.cache_ttl.is_zero() {
            return Err(PluginError::InvalidRequest("local KEK max age and cache TTL must be positive".into()));
        }
        if self.cache_size == 0 {
            return Err(PluginError::InvalidRequest("local KEK cache size must be at least 1".into()));
        }
        Ok(())
    }
}

/// An unwrapped (or freshly made) local KEK. The AES key cleanses its memory when dropped.
struct LocalKek {
    aead: AeadKey,
    /// The local KEK wrapped by the backend: a format-1 plugin ciphertext.
    wrapped: Vec<u8>,
    digest: [u8; 32],
    /// key_id of the remote key version that wrapped it.
    key_id: String,
    created: Instant,
    uses: AtomicU64,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl LocalKek {
    fn kek_ref(&self) -> &[u8] {
        &self.digest[..KEK_REF_LEN]
    }
}

type Outcome = Option<Result<Arc<LocalKek>, PluginError>>;

struct Entry {
    kek: Arc<LocalKek>,
    expires: Instant,
}

#[derive(Default)]
struct State {
    /// The local KEK new ciphertexts are wrapped under.
    current: Option<Arc<LocalKek>>,
    /// Unwrapped local KEKs by SHA-256 of their wrapped form.
    cache: HashMap<[u8; 32], Entry>,
    /// Unwraps under way: their result, when it comes.
    inflight: HashMap<[u8; 32], watch::Receiver<Outcome>>,
    /// Why the remote key may not be used (set and cleared by probes).
    revoked: Option<PluginError>,
    /// Bumped whenever the cache is dropped: unwraps begun before do not fill it again.
    epoch: u64,
    /// key_id of the last successful probe.
    key_id: Option<String>,
    /// A failed rotation was logged (logged once per outage).
    rotation_failure_logged: bool,
}

/// A [`KeyBackend`] that wraps data keys under local KEKs wrapped by `B` (see the module docs).
pub struct KekLayer<B: KeyBackend> {
    inner: B,
    config: KekConfig,
    state: Mutex<State>,
    /// One new local KEK at a time.
    rotating: tokio::sync::Mutex<()>,
    metrics: Option<InstanceMetrics>,
}

impl<B: KeyBackend> std::fmt::Debug for KekLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KekLayer").field("kind", &self.inner.kind()).field("config", &self.config).finish()
    }
}

/// Snapshot of the layer's state, for tests and logs (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekStats {
    /// Unwrapped local KEKs in the cache.
    pub cached: usize,
    /// Whether a current local KEK exists for writes.
    pub has_current: bool,
    /// Uses of the current local KEK.
    pub current_uses: u64,
    /// The probe's error while the remote key is revoked.
    pub revoked: Option<PluginError>,
}

impl<B: KeyBackend> KekLayer<B> {
    /// The layer over `inner` with `config` (checked by [`KekConfig::validate`]).
    pub fn new(inner: B, config: KekConfig) -> Result<Self, PluginError> {
        config.validate()?;
        Ok(Self {
            inner,
            config,
            state: Mutex::new(State::default()),
            rotating: tokio::sync::Mutex::new(()),
            metrics: None,
        })
    }

    /// Records the layer's work (cache hits and misses, wraps and unwraps of local KEKs) in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: InstanceMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The backend under the layer.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The settings.
    pub fn config(&self) -> &KekConfig {
        &self.config
    }

    /// What the layer holds now.
    pub fn stats(&self) -> KekStats {
        let st = self.state();
        KekStats {
            cached: st.cache.len(),
            has_current: st.current.is_some(),
            current_uses: st.current.as_ref().map(|k| k.uses.load(Ordering::Relaxed)).unwrap_or(0),
            revoked: st.revoked.clone(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn count(&self, event: &'static str, n: u64) {
        if let Some(m) = &self.metrics {
            m.local_kek(event, n);
        }
    }

    fn gauge(&self, st: &State) {
        if let Some(m) = &self.metrics {
            m.local_kek_cached(st.cache.len());
        }
    }

    /// The local KEK to wrap under now for `key_id`: the current one while it may be used,
    /// else a new one wrapped by `version`.
    async fn current(&self, version: &B::Version, key_id: &str) -> Result<Arc<LocalKek>, PluginError> {
        if let Some(k) = self.usable_current(key_id)? {
            return Ok(k);
        }
        let _one = self.rotating.lock().await;
        if let Some(k) = self.usable_current(key_id)? {
            return Ok(k);
        }
        let epoch = self.state().epoch;
        match self.make(version, key_id).await {
            Ok(k) => {
                let mut st = self.state();
                if let Some(e) = &st.revoked {
                    return Err(e.clone());
                }
                k.uses.store(1, Ordering::Relaxed);
                if st.epoch == epoch {
                    st.current = Some(k.clone());
                    let expires = Instant::now() + self.config.cache_ttl;
                    insert(&mut st, k.digest, Entry { kek: k.clone(), expires }, self.config.cache_size, |e, n| {
                        self.count(e, n)
                    });
                    st.rotation_failure_logged = false;
                    self.gauge(&st);
                }
                tracing::info!(key_id = %k.key_id, "new local KEK");
                Ok(k)
            }
            // The remote end is away: go on with the local KEK in use, if it is for this key_id.
            Err(e @ (PluginError::Unavailable(_) | PluginError::DeadlineExceeded)) => {
                let mut st = self.state();
                let Some(k) = st.current.clone().filter(|k| k.key_id == key_id) else { return Err(e) };
                if st.revoked.is_some() {
                    return Err(e);
                }
                if k.uses.fetch_add(1, Ordering::Relaxed) >= HARD_MAX_USES {
                    return Err(e);
                }
                if !st.rotation_failure_logged {
                    st.rotation_failure_logged = true;
                    tracing::warn!(error = %e, "cannot make a new local KEK; writes go on with the one in use");
                }
                Ok(k)
            }
            Err(e) => {
                if revokes(&e) {
                    self.forget_key(&mut self.state(), key_id, &e);
                }
                Err(e)
            }
        }
    }

    /// The remote key_id a wrapped local KEK was made under, if it parses.
    fn key_id_of_wrapped(&self, wrapped: &[u8]) -> Option<String> {
        let (kind, blob) = format::open_envelope(wrapped).ok()?;
        format::check_kind(self.inner.kind(), kind).ok()?;
        self.inner.key_id_of(blob).ok()
    }

    /// The remote end refused `key_id` (disabled, deleted, access denied) on a wrap or unwrap:
    /// every local KEK made under it is dropped at once, without waiting for the next probe, so
    /// nothing goes on being read or written under a key the KMS no longer allows.
    fn forget_key(&self, st: &mut State, key_id: &str, why: &PluginError) {
        st.epoch = st.epoch.wrapping_add(1);
        let before = st.cache.len();
        st.cache.retain(|_, e| e.kek.key_id != key_id);
        let dropped = before - st.cache.len();
        if st.current.as_ref().is_some_and(|k| k.key_id == key_id) {
            st.current = None;
        }
        if dropped > 0 {
            tracing::warn!(error = %why, dropped, "the remote key refused a call: its local KEKs are dropped");
            self.count("revoked", dropped as u64);
        }
        self.gauge(st);
    }

    fn usable_current(&self, key_id: &str) -> Result<Option<Arc<LocalKek>>, PluginError> {
        let st = self.state();
        if let Some(e) = &st.revoked {
            return Err(e.clone());
        }
        let Some(k) = &st.current else { return Ok(None) };
        if k.key_id != key_id || k.created.elapsed() >= self.config.max_age {
            return Ok(None);
        }
        // Counted before use, so concurrent writers never exceed the limit together.
        if k.uses.fetch_add(1, Ordering::Relaxed) >= self.config.max_uses {
            return Ok(None);
        }
        Ok(Some(k.clone()))
    }

    /// A new local KEK wrapped by the remote key version `version`.
    async fn make(&self, version: &B::Version, key_id: &str) -> Result<Arc<LocalKek>, PluginError> {
        let material = random_key().map_err(|e| PluginError::Internal(format!("local KEK: {e}")))?;
        let r = self.inner.encrypt(version, &material[..], &kek_context()).await;
        self.count(if r.is_ok() { "wrap" } else { "wrap_failed" }, 1);
        let blob = r?;
        let made_under = self.inner.key_id_of(&blob)?;
        if made_under != key_id {
            return Err(PluginError::Unavailable(format!(
                "the remote key changed while a local KEK was made ({key_id} → {made_under}); retry"
            )));
        }
        let wrapped = format::seal_envelope(self.inner.kind(), &blob);
        let aead = AeadKey::new(&material[..]).map_err(|e| PluginError::Internal(format!("local KEK: {e}")))?;
        Ok(Arc::new(LocalKek {
            aead,
            digest: sha256(&[&wrapped]),
            wrapped,
            key_id: made_under,
            created: Instant::now(),
            uses: AtomicU64::new(0),
        }))
    }

    /// The unwrapped local KEK of `wrapped`: from the cache, from an unwrap under way, or by one
    /// remote Decrypt.
    async fn unwrap(&self, wrapped: &[u8], digest: [u8; 32]) -> Result<Arc<LocalKek>, PluginError> {
        enum Step {
            Found(Arc<LocalKek>),
            Wait(watch::Receiver<Outcome>),
            Lead(watch::Sender<Outcome>, u64),
        }
        loop {
            let step = {
                let mut st = self.state();
                if let Some(e) = &st.revoked {
                    return Err(e.clone());
                }
                if let Some(k) = lookup(&mut st, &digest, self.config.cache_ttl, |e, n| self.count(e, n)) {
                    Step::Found(k)
                } else if let Some(rx) = st.inflight.get(&digest) {
                    Step::Wait(rx.clone())
                } else {
                    let (tx, rx) = watch::channel(None);
                    st.inflight.insert(digest, rx);
                    Step::Lead(tx, st.epoch)
                }
            };
            let (tx, epoch) = match step {
                Step::Found(k) => {
                    self.count("hit", 1);
                    return Ok(k);
                }
                Step::Wait(mut rx) => {
                    self.count("shared", 1);
                    let shared = match rx.wait_for(Option::is_some).await {
                        Ok(v) => v.clone(),
                        // The caller that was unwrapping went away: try again.
                        Err(_) => None,
                    };
                    match shared {
                        Some(r) => return r,
                        None => continue,
                    }
                }
                Step::Lead(tx, epoch) => (tx, epoch),
            };
            let mut leader = Leader { layer: self, digest, tx: Some(tx), done: false };
            self.count("miss", 1);
            let mut r = self.unwrap_remote(wrapped, digest).await;
            {
                let mut st = self.state();
                st.inflight.remove(&digest);
                leader.done = true;
                // Revoked while the remote call was under way: its answer is not used.
                if let (Ok(_), Some(e)) = (&r, &st.revoked) {
                    r = Err(e.clone());
                }
                if let Err(e) = &r
                    && revokes(e)
                    && let Some(key_id) = self.key_id_of_wrapped(wrapped)
                {
                    self.forget_key(&mut st, &key_id, e);
                }
                if let Ok(k) = &r
                    && st.epoch == epoch
                    && st.revoked.is_none()
                {
                    let expires = Instant::now() + self.config.cache_ttl;
                    insert(&mut st, digest, Entry { kek: k.clone(), expires }, self.config.cache_size, |e, n| {
                        self.count(e, n)
                    });
                    self.gauge(&st);
                }
            }
            if let Some(tx) = leader.tx.take() {
                let _ = tx.send(Some(r.clone()));
            }
            return r;
        }
    }

    async fn unwrap_remote(&self, wrapped: &[u8], digest: [u8; 32]) -> Result<Arc<LocalKek>, PluginError> {
        let (kind, blob) = format::open_envelope(wrapped)
            .map_err(|e| PluginError::InvalidCiphertext(format!("wrapped local KEK: {e}")))?;
        format::check_kind(self.inner.kind(), kind)?;
        let key_id = self.inner.key_id_of(blob)?;
        let r = self.inner.decrypt(blob, &kek_context()).await;
        self.count(if r.is_ok() { "unwrap" } else { "unwrap_failed" }, 1);
        let material = r?;
        if material.len() != KEY_LEN {
            return Err(PluginError::InvalidCiphertext("the wrapped local KEK is not a 32-byte key".into()));
        }
        let aead = AeadKey::new(&material).map_err(|e| PluginError::Internal(format!("local KEK: {e}")))?;
        Ok(Arc::new(LocalKek {
            aead,
            wrapped: wrapped.to_vec(),
            digest,
            key_id,
            created: Instant::now(),
            uses: AtomicU64::new(0),
        }))
    }

    /// Drops every cached and current local KEK (their material is cleansed).
    fn drop_all(st: &mut State) -> usize {
        st.epoch = st.epoch.wrapping_add(1);
        let n = st.cache.len();
        st.cache.clear();
        st.current = None;
        n
    }

    fn seal(
        &self,
        kek: &LocalKek,
        header: &[u8],
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, PluginError> {
        let aad = aad(self.inner.kind(), header, ctx);
        let mut body = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        body.extend_from_slice(header);
        kek.aead
            .seal_into(&aad, plaintext, &mut body)
            .map_err(|e| PluginError::Internal(format!("local wrap: {e}")))?;
        Ok(format::seal_layered(self.inner.kind(), &body))
    }
}

/// Removes the unwrap under way from the table when its caller goes away before it ends, so
/// that the callers waiting for it start another.
struct Leader<'a, B: KeyBackend> {
    layer: &'a KekLayer<B>,
    digest: [u8; 32],
    tx: Option<watch::Sender<Outcome>>,
    done: bool,
}

impl<B: KeyBackend> Drop for Leader<'_, B> {
    fn drop(&mut self) {
        if !self.done {
            self.layer.state().inflight.remove(&self.digest);
        }
    }
}

fn lookup(
    st: &mut State,
    digest: &[u8; 32],
    ttl: Duration,
    count: impl Fn(&'static str, u64),
) -> Option<Arc<LocalKek>> {
    // The local KEK in use for writes serves reads for as long as a cached one would: its
    // remote unwrap (here: its wrap) is at most one TTL old.
    if let Some(k) = st.current.as_ref().filter(|k| &k.digest == digest && k.created.elapsed() < ttl) {
        return Some(k.clone());
    }
    let now = Instant::now();
    match st.cache.get(digest) {
        Some(e) if e.expires > now => Some(e.kek.clone()),
        Some(_) => {
            st.cache.remove(digest);
            count("expired", 1);
            None
        }
        None => None,
    }
}

/// Errors by which the remote KMS says a key may not be used (as opposed to being away).
fn revokes(e: &PluginError) -> bool {
    matches!(e, PluginError::KeyUnusable(_) | PluginError::PermissionDenied(_) | PluginError::UnknownKey(_))
}

/// Inserts `entry`, making room first: expired entries go, then the one that expires first.
fn insert(st: &mut State, digest: [u8; 32], entry: Entry, cap: usize, count: impl Fn(&'static str, u64)) {
    if !st.cache.contains_key(&digest) && st.cache.len() >= cap {
        let now = Instant::now();
        let before = st.cache.len();
        st.cache.retain(|_, e| e.expires > now);
        let expired = before - st.cache.len();
        if expired > 0 {
            count("expired", expired as u64);
        }
        while st.cache.len() >= cap {
            let Some(oldest) = st.cache.iter().min_by_key(|(_, e)| e.expires).map(|(d, _)| *d) else { break };
            st.cache.remove(&oldest);
            count("evicted", 1);
        }
    }
    st.cache.insert(digest, entry);
}

/// The encryption context of a local KEK's wrap: no DEK ciphertext unwraps as a local KEK, and
/// no wrapped local KEK unwraps through KMS v1 or v2 Decrypt.
fn kek_context() -> EncryptionContext {
    EncryptionContext::from([(reserved_key("api"), "local-kek".to_string())])
}

fn aad(kind: BackendKind, header: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
    let ctx = encode(ctx);
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 2 + header.len() + ctx.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(format::FORMAT_LOCAL_KEK);
    aad.push(kind as u8);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&ctx);
    aad
}

/// A parsed format-2 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body<'a> {
    /// [`MODE_ANNOTATION`] or [`MODE_INLINE`].
    pub mode: u8,
    /// Everything before the nonce (bound into the AAD).
    pub header: &'a [u8],
    /// KMS v2: the KEK reference.
    pub kek_ref: Option<&'a [u8]>,
    /// KMS v1: the wrapped local KEK.
    pub wrapped: Option<&'a [u8]>,
    /// `nonce ‖ ciphertext ‖ tag`.
    pub sealed: &'a [u8],
}

/// Parses a format-2 body (pure; never panics).
pub fn parse_body(body: &[u8]) -> Result<Body<'_>, PluginError> {
    let bad = |m: &str| PluginError::InvalidCiphertext(format!("local KEK ciphertext: {m}"));
    let min_sealed = NONCE_LEN + TAG_LEN + 1;
    match body {
        [] => Err(bad("empty")),
        [MODE_ANNOTATION, rest @ ..] => {
            if rest.len() < KEK_REF_LEN + min_sealed {
                return Err(bad("truncated"));
            }
            let (kek_ref, sealed) = rest.split_at(KEK_REF_LEN);
            Ok(Body {
                mode: MODE_ANNOTATION,
                header: &body[..1 + KEK_REF_LEN],
                kek_ref: Some(kek_ref),
                wrapped: None,
                sealed,
            })
        }
        [MODE_INLINE, a, b, rest @ ..] => {
            let n = usize::from(u16::from_be_bytes([*a, *b]));
            if n < 3 {
                return Err(bad("the wrapped local KEK is too short"));
            }
            if rest.len() < n + min_sealed {
                return Err(bad("truncated"));
            }
            let (wrapped, sealed) = rest.split_at(n);
            Ok(Body { mode: MODE_INLINE, header: &body[..3 + n], kek_ref: None, wrapped: Some(wrapped), sealed })
        }
        [MODE_INLINE, ..] => Err(bad("truncated")),
        [m, ..] => Err(bad(&format!("unknown mode 0x{m:02x}"))),
    }
}

/// The wrapped local KEK a KMS v2 ciphertext's annotations carry.
fn annotation(annotations: &HashMap<String, Vec<u8>>) -> Result<&[u8], PluginError> {
    annotations.get(KEK_ANNOTATION).map(Vec::as_slice).ok_or_else(|| {
        PluginError::InvalidCiphertext(format!(
            "the ciphertext was made through a local KEK but the annotation {KEK_ANNOTATION} is missing"
        ))
    })
}

fn wrong_api(expected: &str) -> PluginError {
    PluginError::InvalidCiphertext(format!("not a KMS {expected} ciphertext (the local KEK mode differs)"))
}

impl<B: KeyBackend> KeyBackend for KekLayer<B> {
    type Version = B::Version;

    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    /// The backend's probe; its outcome drives revocation and rotation of the local KEK.
    async fn probe(&self) -> Result<Probe<B::Version>, PluginError> {
        let r = self.inner.probe().await;
        let mut st = self.state();
        match &r {
            Ok(p) => {
                if st.revoked.take().is_some() {
                    tracing::info!("the remote key is usable again; local KEKs will be unwrapped again");
                }
                if st.current.as_ref().is_some_and(|k| k.key_id != p.key_id) {
                    // The remote key rotated: the next write makes a local KEK under it.
                    st.current = None;
                }
                st.key_id = Some(p.key_id.clone());
            }
            Err(e) if revokes(e) => {
                let dropped = Self::drop_all(&mut st);
                if st.revoked.is_none() {
                    tracing::warn!(error = %e, dropped, "remote key revoked: local KEKs dropped, Encrypt and Decrypt refused");
                    self.count("revoked", dropped as u64);
                }
                st.revoked = Some(e.clone());
            }
            Err(_) => {}
        }
        // Expired entries leave (and are cleansed) without waiting for a lookup.
        let now = Instant::now();
        let before = st.cache.len();
        st.cache.retain(|_, e| e.expires > now);
        if before > st.cache.len() {
            self.count("expired", (before - st.cache.len()) as u64);
        }
        self.gauge(&st);
        drop(st);
        r
    }

    async fn encrypt(
        &self,
        version: &B::Version,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, PluginError> {
        self.inner.encrypt(version, plaintext, ctx).await
    }

    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError> {
        self.inner.key_id_of(blob)
    }

    async fn decrypt(&self, blob: &[u8], ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        self.inner.decrypt(blob, ctx).await
    }

    async fn seal_v2(
        &self,
        version: &B::Version,
        key_id: &str,
        plaintext: &[u8],
        annotations: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, PluginError> {
        if !self.config.enabled {
            return self.inner.seal_v2(version, key_id, plaintext, annotations).await;
        }
        let kek = self.current(version, key_id).await?;
        annotations.insert(KEK_ANNOTATION.to_string(), kek.wrapped.clone());
        let mut header = Vec::with_capacity(1 + KEK_REF_LEN);
        header.push(MODE_ANNOTATION);
        header.extend_from_slice(kek.kek_ref());
        self.seal(&kek, &header, plaintext, &v2_context(key_id, annotations))
    }

    fn key_id_of_v2(&self, ciphertext: &[u8], annotations: &HashMap<String, Vec<u8>>) -> Result<String, PluginError> {
        let (f, kind, body) = format::open_any(ciphertext)?;
        format::check_kind(self.inner.kind(), kind)?;
        match f {
            Format::Direct => self.inner.key_id_of(body),
            Format::LocalKek => {
                if parse_body(body)?.mode != MODE_ANNOTATION {
                    return Err(wrong_api("v2"));
                }
                let (kind, blob) = format::open_envelope(annotation(annotations)?)
                    .map_err(|e| PluginError::InvalidCiphertext(format!("annotation {KEK_ANNOTATION}: {e}")))?;
                format::check_kind(self.inner.kind(), kind)?;
                self.inner.key_id_of(blob)
            }
        }
    }

    async fn open_v2(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        annotations: &HashMap<String, Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        let (f, kind, body) = format::open_any(ciphertext)?;
        format::check_kind(self.inner.kind(), kind)?;
        match f {
            Format::Direct => self.inner.decrypt(body, &v2_context(key_id, annotations)).await,
            Format::LocalKek => {
                let b = parse_body(body)?;
                let Some(kek_ref) = b.kek_ref else { return Err(wrong_api("v2")) };
                let wrapped = annotation(annotations)?;
                let digest = sha256(&[wrapped]);
                if digest[..KEK_REF_LEN] != *kek_ref {
                    return Err(PluginError::InvalidCiphertext(format!(
                        "the annotation {KEK_ANNOTATION} does not hold the local KEK of this ciphertext"
                    )));
                }
                let kek = self.unwrap(wrapped, digest).await?;
                let aad = aad(self.inner.kind(), b.header, &v2_context(key_id, annotations));
                Ok(kek.aead.open(&aad, b.sealed)?)
            }
        }
    }

    async fn seal_v1(&self, version: &B::Version, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, PluginError> {
        if !self.config.enabled {
            return self.inner.seal_v1(version, key_id, plaintext).await;
        }
        let kek = self.current(version, key_id).await?;
        let n = u16::try_from(kek.wrapped.len())
            .map_err(|_| PluginError::Internal("the wrapped local KEK is longer than 65535 bytes".into()))?;
        let mut header = Vec::with_capacity(3 + kek.wrapped.len());
        header.push(MODE_INLINE);
        header.extend_from_slice(&n.to_be_bytes());
        header.extend_from_slice(&kek.wrapped);
        self.seal(&kek, &header, plaintext, &v1_context())
    }

    async fn open_v1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        let (f, kind, body) = format::open_any(ciphertext)?;
        format::check_kind(self.inner.kind(), kind)?;
        match f {
            Format::Direct => self.inner.decrypt(body, &v1_context()).await,
            Format::LocalKek => {
                let b = parse_body(body)?;
                let Some(wrapped) = b.wrapped else { return Err(wrong_api("v1")) };
                let kek = self.unwrap(wrapped, sha256(&[wrapped])).await?;
                let aad = aad(self.inner.kind(), b.header, &v1_context());
                Ok(kek.aead.open(&aad, b.sealed)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bodies_parse_and_refuse() {
        let sealed = [7u8; NONCE_LEN + TAG_LEN + 1];
        let mut v2 = vec![MODE_ANNOTATION];
        v2.extend_from_slice(&[1u8; KEK_REF_LEN]);
        v2.extend_from_slice(&sealed);
        let b = parse_body(&v2).unwrap();
        assert_eq!(
            (b.mode, b.kek_ref, b.wrapped, b.sealed),
            (MODE_ANNOTATION, Some(&[1u8; 16][..]), None, &sealed[..])
        );
        assert_eq!(b.header.len(), 1 + KEK_REF_LEN);
        assert!(parse_body(&v2[..v2.len() - 1]).unwrap_err().to_string().contains("truncated"));

        let mut v1 = vec![MODE_INLINE, 0, 4, 1, 2, 3, 4];
        v1.extend_from_slice(&sealed);
        let b = parse_body(&v1).unwrap();
        assert_eq!((b.mode, b.wrapped, b.sealed), (MODE_INLINE, Some(&[1u8, 2, 3, 4][..]), &sealed[..]));
        assert_eq!(b.header, &v1[..7]);
        assert!(parse_body(&v1[..v1.len() - 1]).unwrap_err().to_string().contains("truncated"));
        assert!(parse_body(&[MODE_INLINE, 0, 1, 9]).unwrap_err().to_string().contains("too short"));
        assert!(parse_body(&[MODE_INLINE, 0]).unwrap_err().to_string().contains("truncated"));
        assert!(parse_body(&[]).unwrap_err().to_string().contains("empty"));
        assert!(parse_body(&[9, 1, 2]).unwrap_err().to_string().contains("unknown mode 0x09"));
    }

    #[test]
    fn config_limits() {
        assert!(KekConfig::default().validate().is_ok());
        assert!(KekConfig { max_uses: 0, ..KekConfig::default() }.validate().is_err());
        assert!(KekConfig { max_uses: HARD_MAX_USES + 1, ..KekConfig::default() }.validate().is_err());
        assert!(KekConfig { cache_size: 0, ..KekConfig::default() }.validate().is_err());
        assert!(KekConfig { cache_ttl: Duration::ZERO, ..KekConfig::default() }.validate().is_err());
        assert!(KekConfig { max_age: Duration::ZERO, ..KekConfig::default() }.validate().is_err());
    }

    proptest! {
        #[test]
        fn parse_body_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(b) = parse_body(&data) {
                prop_assert!(b.sealed.len() > NONCE_LEN + TAG_LEN);
                prop_assert_eq!(b.header.len() + b.sealed.len(), data.len());
            }
        }
    }
}
