//! The `KeyBackend` conformance battery: the behaviour every backend owes the plugin, checked
//! through [`Plugin`] (the code kube-apiserver's calls reach) against a real backend.
//!
//! A backend's test crate implements [`Subject`] (how to start it and how to rotate, disable,
//! cut off or stall it) and runs the battery with [`key_backend_battery!`](crate::key_backend_battery),
//! which must name every case, each either `run` or `not_applicable("why")`. A case that does not
//! apply becomes an ignored test whose ignore reason is printed by `cargo test` (and which fails
//! if forced to run), so it is never counted as passing. Adding a case here breaks every
//! invocation until each backend decides.
//!
//! The cases:
//! * [`round_trip`]: KMS v2 and v1 wrap and unwrap, randomized wraps, annotations and the API
//!   bound into the wrap, a second plugin over the same key decrypts.
//! * [`key_id_rules`]: non-empty, at most 1024 bytes (the KMS v2 limit), the same from every probe
//!   and every plugin until rotation, recorded in the ciphertext; Decrypt checks it first.
//! * [`rotation`]: a new key_id after rotation, new wraps under it, old ciphertexts still decrypt.
//! * [`disable_enable`]: disabled is not ready (FailedPrecondition, the last key_id kept);
//!   enabled again works with the same key_id.
//! * [`outage`]: backend unreachable → Unavailable and a health that says so, the key_id kept;
//!   what needs the remote end fails with Unavailable (a backend that keeps unwrapped keys, the
//!   local KEK layer, goes on reading what it unwrapped and writing with its key in use);
//!   back again → ready, same key_id, old data decrypts.
//! * [`deadlines`]: a call to a backend whose remote end never answers returns by the caller's
//!   deadline; a probe returns by the probe timeout.
//! * [`concurrency`]: many concurrent Encrypt/Decrypt calls, each getting its own data back.
//! * [`malformed_ciphertext`]: truncated, flipped, random and oversized ciphertexts are errors of
//!   the client kind (never a panic, never Internal; a flipped KMS v1 byte may at most still give
//!   the original data), and the plugin stays healthy.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use envelope_plugin::{KeyBackend, Plugin, PluginConfig, PluginError};
use envelope_proto::rules::MAX_FIELD_LEN;
use tonic::Code;

/// One backend under test: a fresh key and the controls the battery needs.
///
/// The controls a backend cannot have (an in-process store has no remote end to lose) keep
/// their default, which panics: declare those cases `not_applicable` in the battery.
pub trait Subject: Sized + Send + Sync + 'static {
    /// The backend.
    type Backend: KeyBackend;

    /// The backend keeps what it unwrapped (the local KEK layer, `envelope_plugin::kek`): through
    /// an outage, ciphertexts whose key it holds still decrypt and new ones are still made.
    const KEEPS_UNWRAPPED_KEYS: bool = false;

    /// A fresh backend with one usable key.
    fn start() -> impl Future<Output = Self> + Send;

    /// A new plugin (default configuration) over a backend using this subject's key.
    fn plugin(&self) -> Plugin<Self::Backend>;

    /// Rotates the key (its current material changes).
    fn rotate(&self) -> impl Future<Output = ()> + Send;

    /// Disables the key.
    fn disable(&self) -> impl Future<Output = ()> + Send;

    /// Enables the key again.
    fn enable(&self) -> impl Future<Output = ()> + Send;

    /// Makes the backend unreachable (its remote end goes away).
    fn cut_off(&mut self) -> impl Future<Output = ()> + Send {
        async { panic!("Subject::cut_off is not implemented: declare `outage` not_applicable") }
    }

    /// Brings the backend back after [`Subject::cut_off`].
    fn reconnect(&mut self) -> impl Future<Output = ()> + Send {
        async { panic!("Subject::reconnect is not implemented: declare `outage` not_applicable") }
    }

    /// A plugin with `config` over a backend using this subject's key through a remote end that
    /// accepts connections and never answers.
    fn stalled_plugin(&self, config: PluginConfig) -> impl Future<Output = Plugin<Self::Backend>> + Send {
        let _ = config;
        async { panic!("Subject::stalled_plugin is not implemented: declare `deadlines` not_applicable") }
    }
}

/// Runs the battery against one backend: one test per case, named after the case. Every case
/// must be listed, in this order, as `run` or `not_applicable("reason")`:
///
/// ```text
/// envelope_test_support::key_backend_battery! {
///     MySubject;
///     round_trip: run,
///     key_id_rules: run,
///     rotation: run,
///     disable_enable: run,
///     outage: not_applicable("the key store is in process: there is no remote end to lose"),
///     deadlines: run,
///     concurrency: run,
///     malformed_ciphertext: run,
/// }
/// ```
///
/// The test crate needs `tokio` (the tests are `#[tokio::test]`).
#[macro_export]
macro_rules! key_backend_battery {
    (
        $subject:ty;
        round_trip: $a:ident $(($ar:literal))?,
        key_id_rules: $b:ident $(($br:literal))?,
        rotation: $c:ident $(($cr:literal))?,
        disable_enable: $d:ident $(($dr:literal))?,
        outage: $e:ident $(($er:literal))?,
        deadlines: $f:ident $(($fr:literal))?,
        concurrency: $g:ident $(($gr:literal))?,
        malformed_ciphertext: $h:ident $(($hr:literal))? $(,)?
    ) => {
        $crate::key_backend_battery!(@case $subject, round_trip, $a $(($ar))?);
        $crate::key_backend_battery!(@case $subject, key_id_rules, $b $(($br))?);
        $crate::key_backend_battery!(@case $subject, rotation, $c $(($cr))?);
        $crate::key_backend_battery!(@case $subject, disable_enable, $d $(($dr))?);
        $crate::key_backend_battery!(@case $subject, outage, $e $(($er))?);
        $crate::key_backend_battery!(@case $subject, deadlines, $f $(($fr))?);
        $crate::key_backend_battery!(@case $subject, concurrency, $g $(($gr))?);
        $crate::key_backend_battery!(@case $subject, malformed_ciphertext, $h $(($hr))?);
    };
    (@case $subject:ty, $case:ident, run) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            $crate::conformance::$case::<$subject>().await;
        }
    };
    (@case $subject:ty, $case:ident, not_applicable($reason:literal)) => {
        #[test]
        #[ignore = $reason]
        fn $case() {
            panic!(concat!("the ", stringify!($case), " case does not apply to this backend: ", $reason));
        }
    };
}

/// Probes now; the key_id (panics unless ready).
pub async fn ready<B: KeyBackend>(p: &Plugin<B>) -> String {
    let h = p.probe_now().await;
    assert!(h.is_ready(), "backend not ready: {}", h.healthz());
    h.key_id.clone().unwrap()
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, PluginError>, code: Code, what: &str) -> PluginError {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e}");
    e
}

/// Wrap and unwrap through both APIs.
pub async fn round_trip<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let dek = [0x42u8; 32];
    let (ct, key_id, ann) = p.encrypt_v2(&dek).await.unwrap();
    assert_eq!(key_id, kid, "Encrypt returns the key_id Status reports");
    assert!(!ct.is_empty() && ct.len() <= MAX_FIELD_LEN, "ciphertext is {} bytes", ct.len());
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &dek);

    let (again, _, again_ann) = p.encrypt_v2(&dek).await.unwrap();
    assert_ne!(again, ct, "wraps are randomized");
    assert_eq!(&p.decrypt_v2(&again, &kid, &again_ann).await.unwrap()[..], &dek);
    let (other, _, other_ann) = p.encrypt_v2(&[1u8; 32]).await.unwrap();
    assert_eq!(&p.decrypt_v2(&other, &kid, &other_ann).await.unwrap()[..], &[1u8; 32]);

    // The annotations are bound into the wrap.
    let mut altered = ann.clone();
    altered.insert("x.example.io".into(), b"y".to_vec());
    let e = assert_code(p.decrypt_v2(&ct, &kid, &altered).await, Code::InvalidArgument, "added annotation");
    assert!(matches!(e, PluginError::InvalidCiphertext(_)), "{e:?}");

    // KMS v1beta1, and the API is bound into the wrap: a v1 ciphertext is no v2 ciphertext.
    let v1 = p.encrypt_v1(b"v1 dek").await.unwrap();
    assert_eq!(&p.decrypt_v1(&v1).await.unwrap()[..], b"v1 dek");
    assert_code(p.decrypt_v2(&v1, &kid, &HashMap::new()).await, Code::InvalidArgument, "v1 ciphertext as v2");
    assert_code(p.decrypt_v1(&ct).await, Code::InvalidArgument, "v2 ciphertext as v1");

    // Nothing but the key is needed: another plugin over the same key decrypts.
    let p2 = s.plugin();
    assert_eq!(ready(&p2).await, kid);
    assert_eq!(&p2.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &dek);
    assert_eq!(&p2.decrypt_v1(&v1).await.unwrap()[..], b"v1 dek");
}

/// The KMS v2 key_id rules.
pub async fn key_id_rules<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    assert!(!kid.is_empty(), "key_id is empty");
    assert!(kid.len() <= MAX_FIELD_LEN, "key_id is {} bytes, over the KMS v2 limit", kid.len());
    for _ in 0..3 {
        assert_eq!(ready(&p).await, kid, "key_id is stable across probes");
    }
    assert_eq!(ready(&s.plugin()).await, kid, "the same key gives the same key_id to every plugin");

    let (ct, key_id, ann) = p.encrypt_v2(&[3u8; 32]).await.unwrap();
    assert_eq!(key_id, kid);
    assert_eq!(p.backend().key_id_of_v2(&ct, &ann).unwrap(), kid, "the ciphertext records its key_id");

    // Decrypt checks the key_id before any cryptography.
    let e = assert_code(p.decrypt_v2(&ct, "", &ann).await, Code::InvalidArgument, "empty key_id");
    assert!(matches!(e, PluginError::InvalidRequest(_)), "{e:?}");
    let long = "k".repeat(MAX_FIELD_LEN + 1);
    let e = assert_code(p.decrypt_v2(&ct, &long, &ann).await, Code::InvalidArgument, "key_id over 1024 bytes");
    assert!(matches!(e, PluginError::InvalidRequest(_)), "{e:?}");
    let e = p.decrypt_v2(&ct, &format!("{kid}0"), &ann).await.unwrap_err();
    assert!(matches!(e, PluginError::KeyIdMismatch(_)), "another key_id: {e:?}");
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[3u8; 32]);
}

/// Rotation: a new key_id, old ciphertexts still decrypt.
pub async fn rotation<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let k1 = ready(&p).await;
    let (ct1, _, ann) = p.encrypt_v2(&[1u8; 32]).await.unwrap();

    s.rotate().await;
    let k2 = ready(&p).await;
    assert_ne!(k1, k2, "rotation must change the key_id");
    assert!(!k2.is_empty() && k2.len() <= MAX_FIELD_LEN);
    assert_eq!(ready(&p).await, k2, "the new key_id is stable");
    // Each ciphertext is decrypted with the annotations its Encrypt returned, as kube-apiserver
    // stores them with it (a backend may put per-ciphertext data there).
    let (ct2, kid2, ann2) = p.encrypt_v2(&[2u8; 32]).await.unwrap();
    assert_eq!(kid2, k2, "new wraps use the new key_id");
    assert_eq!(&p.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[1u8; 32], "old ciphertext, old key_id");
    assert_eq!(&p.decrypt_v2(&ct2, &k2, &ann2).await.unwrap()[..], &[2u8; 32]);
    let e = p.decrypt_v2(&ct1, &k2, &ann).await.unwrap_err();
    assert!(matches!(e, PluginError::KeyIdMismatch(_)), "old ciphertext under the new key_id: {e:?}");
    // A plugin started after the rotation decrypts what was wrapped before it.
    let fresh = s.plugin();
    assert_eq!(ready(&fresh).await, k2);
    assert_eq!(&fresh.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[1u8; 32]);
}

/// A disabled key is unusable and says so; enabled again, it works with the same key_id.
pub async fn disable_enable<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[4u8; 32]).await.unwrap();

    s.disable().await;
    let h = p.probe_now().await;
    assert!(!h.is_ready());
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(_))), "{:?}", h.error);
    assert!(h.healthz().contains("disabled"), "health must say why: {}", h.healthz());
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()), "Status keeps the last key_id");
    let e = assert_code(p.encrypt_v2(&[4u8; 32]).await, Code::FailedPrecondition, "encrypt while disabled");
    assert!(e.to_string().contains("disabled"), "{e}");
    assert_code(p.decrypt_v2(&ct, &kid, &ann).await, Code::FailedPrecondition, "decrypt while disabled");

    s.enable().await;
    assert_eq!(ready(&p).await, kid, "enabling does not change the key_id");
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[4u8; 32]);
    assert_eq!(p.encrypt_v2(&[5u8; 32]).await.unwrap().1, kid);
}

/// The backend unreachable, then back.
pub async fn outage<S: Subject>() {
    let mut s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[5u8; 32]).await.unwrap();
    // Made by another plugin: nothing of it was ever unwrapped by `p`.
    let other = s.plugin();
    assert_eq!(ready(&other).await, kid);
    let (foreign, _, foreign_ann) = other.encrypt_v2(&[7u8; 32]).await.unwrap();
    let foreign_v1 = other.encrypt_v1(&[7u8; 32]).await.unwrap();

    s.cut_off().await;
    let h = p.probe_now().await;
    assert!(!h.is_ready());
    assert!(matches!(&h.error, Some(PluginError::Unavailable(_))), "{:?}", h.error);
    assert!(h.healthz().starts_with("backend unavailable"), "health must say so: {}", h.healthz());
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()), "an outage must not look like a rotation");
    assert_code(p.decrypt_v2(&foreign, &kid, &foreign_ann).await, Code::Unavailable, "decrypt during the outage");
    assert_code(p.decrypt_v1(&foreign_v1).await, Code::Unavailable, "v1 decrypt during the outage");
    if S::KEEPS_UNWRAPPED_KEYS {
        assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[5u8; 32], "a key it holds still reads");
        let (during, key_id, during_ann) = p.encrypt_v2(&[6u8; 32]).await.unwrap();
        assert_eq!(key_id, kid, "writes go on under the same key_id");
        assert_eq!(&p.decrypt_v2(&during, &kid, &during_ann).await.unwrap()[..], &[6u8; 32]);
    } else {
        assert_code(p.decrypt_v2(&ct, &kid, &ann).await, Code::Unavailable, "decrypt during the outage");
        assert_code(p.encrypt_v2(&[5u8; 32]).await, Code::Unavailable, "encrypt during the outage");
    }

    s.reconnect().await;
    let h = p.probe_now().await;
    assert!(h.is_ready(), "the next probe recovers: {:?}", h.error);
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()));
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[5u8; 32]);
    assert_eq!(&p.decrypt_v2(&foreign, &kid, &foreign_ann).await.unwrap()[..], &[7u8; 32]);
    assert_eq!(&p.decrypt_v1(&foreign_v1).await.unwrap()[..], &[7u8; 32]);
    assert_eq!(p.encrypt_v2(&[6u8; 32]).await.unwrap().1, kid);
}

/// Calls return by their deadline when the backend's remote end hangs.
pub async fn deadlines<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[6u8; 32]).await.unwrap();

    let probe_timeout = Duration::from_millis(500);
    let stuck = s.stalled_plugin(PluginConfig { probe_timeout, ..PluginConfig::default() }).await;
    let start = tokio::time::Instant::now();
    let caller = start + Duration::from_millis(400);
    let r = envelope_plugin::deadline::scope(caller, stuck.decrypt_v2(&ct, &kid, &ann)).await;
    let e = r.expect_err("decrypt through a remote end that never answers");
    assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e}");
    assert!(tokio::time::Instant::now() <= caller, "answered after the caller's deadline ({:?})", start.elapsed());

    let start = tokio::time::Instant::now();
    let h = stuck.probe_now().await;
    assert!(!h.is_ready());
    assert!(matches!(&h.error, Some(PluginError::Unavailable(_))), "{:?}", h.error);
    assert!(start.elapsed() < probe_timeout + Duration::from_millis(250), "probe took {:?}", start.elapsed());
}

/// Many concurrent calls, each getting its own data back.
pub async fn concurrency<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u8 {
        let (p, kid) = (p.clone(), kid.clone());
        tasks.spawn(async move {
            for round in 0..4u8 {
                let dek = [i ^ (round << 6); 32];
                let (ct, key_id, ann) = p.encrypt_v2(&dek).await.unwrap();
                assert_eq!(key_id, kid);
                assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &dek, "task {i} round {round}");
                let v1 = p.encrypt_v1(&dek).await.unwrap();
                assert_eq!(&p.decrypt_v1(&v1).await.unwrap()[..], &dek);
            }
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, 64);
    assert!(p.probe_now().await.is_ready());
}

/// Malformed ciphertexts are client errors, never a panic or an internal error.
pub async fn malformed_ciphertext<S: Subject>() {
    let s = S::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let (good, _, ann) = p.encrypt_v2(&[9u8; 32]).await.unwrap();
    let good_v1 = p.encrypt_v1(&[9u8; 32]).await.unwrap();

    // What a malformed ciphertext may yield: invalid (most), or an unknown key when the altered
    // bytes name a key that does not exist.
    let client_error = |what: String, r: Result<zeroize::Zeroizing<Vec<u8>>, PluginError>| match r {
        Ok(_) => panic!("{what}: decrypted"),
        Err(e) => assert!(matches!(e.code(), Code::InvalidArgument | Code::NotFound), "{what}: {e:?}"),
    };

    for n in [0, 1, 2, 3, good.len() / 2, good.len() - 1] {
        let r = p.decrypt_v2(&good[..n], &kid, &ann).await;
        assert_code(r, Code::InvalidArgument, &format!("v2 truncated to {n} bytes"));
        assert_code(p.decrypt_v1(&good_v1[..n.min(good_v1.len() - 1)]).await, Code::InvalidArgument, "v1 truncated");
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        client_error(format!("v2, byte {i} flipped"), p.decrypt_v2(&bad, &kid, &ann).await);
    }
    // A KMS v1 ciphertext has no key_id, so a backend may keep bytes that only name one outside
    // the authenticated data (the aws backend's key_id digest): a flip there may still decrypt,
    // but never to other data.
    for i in 0..good_v1.len() {
        let mut bad = good_v1.clone();
        bad[i] ^= 0x80;
        match p.decrypt_v1(&bad).await {
            Ok(plain) => assert_eq!(&plain[..], &[9u8; 32], "v1, byte {i} flipped: decrypted to other data"),
            Err(e) => assert!(matches!(e.code(), Code::InvalidArgument | Code::NotFound), "v1, byte {i}: {e:?}"),
        }
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..64 {
        let len = (next() % 600) as usize;
        let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        client_error(format!("random {len} bytes"), p.decrypt_v2(&random, &kid, &ann).await);
        // The same bytes behind a valid envelope header reach the backend's own parser.
        let mut framed = good[..2].to_vec();
        framed.extend_from_slice(&random);
        framed.truncate(MAX_FIELD_LEN);
        client_error(
            format!("round {round}: {len} random bytes after the header"),
            p.decrypt_v2(&framed, &kid, &ann).await,
        );
        client_error(format!("round {round}: v1, {len} random bytes"), p.decrypt_v1(&framed).await);
    }
    for len in [MAX_FIELD_LEN + 1, 4096, 70_000] {
        let mut big = good.clone();
        big.resize(len, 0xAB);
        assert_code(p.decrypt_v2(&big, &kid, &ann).await, Code::InvalidArgument, &format!("v2, {len} bytes"));
    }
    let mut big = good_v1.clone();
    big.resize(usize::from(u16::MAX) + 1, 0xAB);
    assert_code(p.decrypt_v1(&big).await, Code::InvalidArgument, "v1 over 65535 bytes");

    // Nothing above hurt the plugin.
    assert_eq!(ready(&p).await, kid);
    assert_eq!(&p.decrypt_v2(&good, &kid, &ann).await.unwrap()[..], &[9u8; 32]);
    assert_eq!(&p.decrypt_v1(&good_v1).await.unwrap()[..], &[9u8; 32]);
}
