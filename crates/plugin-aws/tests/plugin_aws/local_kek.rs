//! The local KEK layer over the aws backend against the key server, whose audit log (one
//! CloudTrail-shaped record per request) counts the remote calls: reads after a restart,
//! single-flight unwraps, revocation by the health probe, ciphertexts written without the layer,
//! tampered annotations.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::Client;
use envelope_kms_server::Config;
use envelope_kms_server::audit::AuditLog;
use envelope_plugin::kek::KEK_ANNOTATION;
use envelope_plugin::{KekConfig, KekLayer, KeyBackend, Metrics, Plugin, PluginConfig, PluginError};
use envelope_plugin_aws::{AwsBackend, ProbeMode};
use envelope_test_support::conformance::ready;
use envelope_test_support::kms::{self, ACCOUNT, APP_AKID, KeyServer, REGION};
use serde_json::Value;
use tonic::Code;

use super::{ALIAS, create_key, fast_retry};

/// A key server with an audit log and a key behind [`ALIAS`].
struct Audited {
    _server: KeyServer,
    admin: Client,
    app: Client,
    key: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Audited {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let server = kms::start_custom(
            Config::new(REGION, ACCOUNT),
            kms::default_credentials(),
            Some(AuditLog::open(&log, true).unwrap()),
        )
        .await;
        let admin = server.sdk_client(kms::AKID);
        let app = server.sdk_client(APP_AKID);
        let key = create_key(&admin, Some(ALIAS)).await;
        Audited { _server: server, admin, app, key, log, _dir: dir }
    }

    /// A plugin whose probe is one DescribeKey, through the local KEK layer with `config`.
    fn layered(&self, config: KekConfig) -> Plugin<KekLayer<AwsBackend>> {
        let metrics = Arc::new(Metrics::new());
        let backend = self.backend(&metrics);
        let layer = KekLayer::new(backend, config).unwrap().with_metrics(metrics.clone().into());
        Plugin::new(layer, PluginConfig::default(), metrics)
    }

    /// The same without the layer.
    fn direct(&self) -> Plugin<AwsBackend> {
        let metrics = Arc::new(Metrics::new());
        Plugin::new(self.backend(&metrics), PluginConfig::default(), metrics)
    }

    fn backend(&self, metrics: &Arc<Metrics>) -> AwsBackend {
        AwsBackend::new(self.app.clone(), ALIAS.to_string(), BTreeMap::new(), 64)
            .unwrap()
            .with_retry(fast_retry())
            .with_probe(ProbeMode::DescribeKey)
            .with_metrics(metrics.clone())
    }

    /// The key server's `op` records so far (every answered request has one).
    fn calls(&self, op: &str) -> usize {
        calls(&self.log, op)
    }
}

fn calls(log: &Path, op: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter(|l| serde_json::from_str::<Value>(l).map(|v| v["eventName"] == op).unwrap_or(false)).count()
}

/// `n` distinct 32-byte DEKs.
fn deks(n: usize) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            d[8] = 0xd3;
            d
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_reader_unwraps_each_local_kek_once_and_without_the_layer_every_value() {
    let k = Audited::start().await;
    let values = deks(300);

    // KMS v1 values as kube-apiserver writes them: every one with its own DEK.
    let writer = k.layered(KekConfig::default());
    ready(&writer).await;
    let encrypts = k.calls("Encrypt");
    let mut v1 = Vec::new();
    for d in &values {
        v1.push(writer.encrypt_v1(d).await.unwrap());
    }
    assert_eq!(k.calls("Encrypt") - encrypts, 1, "one local KEK wrapped for 300 values");

    // After a restart: a new plugin process has nothing cached.
    let reader = k.layered(KekConfig::default());
    ready(&reader).await;
    let before = k.calls("Decrypt");
    for (ct, d) in v1.iter().zip(&values) {
        assert_eq!(&reader.decrypt_v1(ct).await.unwrap()[..], d);
    }
    assert_eq!(k.calls("Decrypt") - before, 1, "300 values, one remote Decrypt");
    let m = reader.backend().config().clone();
    assert!(m.enabled);
    let metrics = reader.metrics();
    assert_eq!(metrics.local_kek_count("unwrap"), 1);
    assert_eq!(metrics.local_kek_count("hit"), 299);

    // The same without the layer: one remote call per value, both ways.
    let direct = k.direct();
    ready(&direct).await;
    let (encrypts, decrypts) = (k.calls("Encrypt"), k.calls("Decrypt"));
    let mut plain = Vec::new();
    for d in &values {
        plain.push(direct.encrypt_v1(d).await.unwrap());
    }
    let fresh = k.direct();
    ready(&fresh).await;
    for (ct, d) in plain.iter().zip(&values) {
        assert_eq!(&fresh.decrypt_v1(ct).await.unwrap()[..], d);
    }
    assert_eq!(k.calls("Encrypt") - encrypts, 300);
    assert_eq!(k.calls("Decrypt") - decrypts, 300);
    assert!(metrics.encode().contains("envelope_plugin_local_kek_events_total{event=\"unwrap\"} 1"));
}

#[tokio::test]
async fn concurrent_decrypts_needing_one_local_kek_make_one_remote_call() {
    let k = Audited::start().await;
    let writer = k.layered(KekConfig::default());
    let kid = ready(&writer).await;
    let values = deks(64);
    let mut v2 = Vec::new();
    for d in &values {
        v2.push(writer.encrypt_v2(d).await.unwrap());
    }
    let v1: Vec<_> = {
        let mut out = Vec::new();
        for d in &values {
            out.push(writer.encrypt_v1(d).await.unwrap());
        }
        out
    };

    let reader = k.layered(KekConfig::default());
    ready(&reader).await;
    let before = k.calls("Decrypt");
    let barrier = Arc::new(tokio::sync::Barrier::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ((ct, _, ann), d)) in v2.into_iter().zip(&values).enumerate() {
        let (p, kid, start, d, v1) = (reader.clone(), kid.clone(), barrier.clone(), *d, v1[i].clone());
        tasks.spawn(async move {
            start.wait().await;
            assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &d);
        });
        let (p, start) = (reader.clone(), barrier.clone());
        tasks.spawn(async move {
            start.wait().await;
            assert_eq!(&p.decrypt_v1(&v1).await.unwrap()[..], &d);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(k.calls("Decrypt") - before, 1, "128 concurrent Decrypts of one local KEK: one remote call");
    assert_eq!(reader.metrics().local_kek_count("unwrap"), 1);
}

#[tokio::test]
async fn a_disabled_key_is_refused_from_the_next_probe_on_and_usable_again_when_enabled() {
    let k = Audited::start().await;
    let p = k.layered(KekConfig::default());
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[1u8; 32]).await.unwrap();
    let v1 = p.encrypt_v1(&[2u8; 32]).await.unwrap();

    k.admin.disable_key().key_id(&k.key).send().await.unwrap();
    // Until the next probe the cached local KEK still answers: the window the docs state.
    let before = k.calls("Decrypt");
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(k.calls("Decrypt"), before);

    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(_))), "{:?}", h.error);
    let stats = p.backend().stats();
    assert_eq!((stats.cached, stats.has_current), (0, false), "the cache is dropped");
    for r in [p.decrypt_v2(&ct, &kid, &ann).await, p.decrypt_v1(&v1).await] {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.to_string().contains("disabled"), "{e}");
    }
    assert_eq!(p.encrypt_v2(&[3u8; 32]).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(k.calls("Decrypt"), before, "refused without asking the key server");

    k.admin.enable_key().key_id(&k.key).send().await.unwrap();
    assert_eq!(ready(&p).await, kid);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(&p.decrypt_v1(&v1).await.unwrap()[..], &[2u8; 32]);
    assert_eq!(k.calls("Decrypt") - before, 1, "unwrapped again, once");
}

#[tokio::test]
async fn the_health_loop_drops_the_cache_within_one_interval_of_a_key_scheduled_for_deletion() {
    let k = Audited::start().await;
    let metrics = Arc::new(Metrics::new());
    let layer = KekLayer::new(k.backend(&metrics), KekConfig::default()).unwrap();
    let config = PluginConfig { health_interval: Duration::from_millis(300), ..PluginConfig::default() };
    let p = Plugin::new(layer, config, metrics);
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[4u8; 32]).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let health_loop = p.spawn_health_loop(stop_rx);

    k.admin.schedule_key_deletion().key_id(&k.key).pending_window_in_days(7).send().await.unwrap();
    let scheduled = std::time::SystemTime::now();
    // The first probe that starts after the change (the loop runs one every interval).
    let h = loop {
        let h = p.health();
        if h.checked_at.is_some_and(|t| t > scheduled) && h.error.is_some() {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(_))), "{:?}", h.error);
    let e = p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("pending deletion") || e.to_string().contains("PendingDeletion"), "{e}");
    let _ = stop_tx.send(true);
    health_loop.await.unwrap();
}

#[tokio::test]
async fn access_denied_by_a_key_policy_drops_the_cache() {
    let k = Audited::start().await;
    let p = k.layered(KekConfig::default());
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[5u8; 32]).await.unwrap();
    // Only the admin may use the key from now on.
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": kms::ADMIN}, "Action": "kms:*", "Resource": "*"}]
    });
    k.admin.put_key_policy().key_id(&k.key).policy(policy.to_string()).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(_))), "{:?}", h.error);
    assert_eq!(p.backend().stats().cached, 0);
    assert_eq!(p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test]
async fn ciphertexts_written_before_the_layer_decrypt_and_the_layer_turned_off_still_reads_its_own() {
    let k = Audited::start().await;
    let old = k.direct();
    let kid = ready(&old).await;
    let (v2, _, v2_ann) = old.encrypt_v2(&[6u8; 32]).await.unwrap();
    let v1 = old.encrypt_v1(&[7u8; 32]).await.unwrap();
    assert_eq!((v2[0], v1[0]), (0x01, 0x01), "format 1");

    let layered = k.layered(KekConfig::default());
    assert_eq!(ready(&layered).await, kid);
    assert_eq!(&layered.decrypt_v2(&v2, &kid, &v2_ann).await.unwrap()[..], &[6u8; 32]);
    assert_eq!(&layered.decrypt_v1(&v1).await.unwrap()[..], &[7u8; 32]);

    let (new_v2, _, new_ann) = layered.encrypt_v2(&[8u8; 32]).await.unwrap();
    let new_v1 = layered.encrypt_v1(&[9u8; 32]).await.unwrap();
    assert_eq!((new_v2[0], new_v1[0]), (0x02, 0x02), "format 2");
    assert!(new_ann.contains_key(KEK_ANNOTATION) && !v2_ann.contains_key(KEK_ANNOTATION));

    // Turned off: writes go to the key server directly, what the layer wrote stays readable.
    let off = k.layered(KekConfig { enabled: false, ..KekConfig::default() });
    ready(&off).await;
    assert_eq!(&off.decrypt_v2(&new_v2, &kid, &new_ann).await.unwrap()[..], &[8u8; 32]);
    assert_eq!(&off.decrypt_v1(&new_v1).await.unwrap()[..], &[9u8; 32]);
    let (again, _, again_ann) = off.encrypt_v2(&[10u8; 32]).await.unwrap();
    assert_eq!(again[0], 0x01);
    assert!(!again_ann.contains_key(KEK_ANNOTATION));
    assert_eq!(&old.decrypt_v2(&again, &kid, &again_ann).await.unwrap()[..], &[10u8; 32]);
    // A plugin without the layer cannot read format 2, and says why.
    let e = old.decrypt_v1(&new_v1).await.unwrap_err();
    assert!(e.to_string().contains("local KEK"), "{e}");
}

#[tokio::test]
async fn a_tampered_local_kek_annotation_is_refused() {
    let k = Audited::start().await;
    let p = k.layered(KekConfig::default());
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[11u8; 32]).await.unwrap();
    let other = k.layered(KekConfig::default());
    ready(&other).await;
    let (other_ct, _, other_ann) = other.encrypt_v2(&[12u8; 32]).await.unwrap();
    let fresh = k.layered(KekConfig::default());
    ready(&fresh).await;
    let before = k.calls("Decrypt");

    let refused = |r: Result<zeroize::Zeroizing<Vec<u8>>, PluginError>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
    };
    let wrapped = ann[KEK_ANNOTATION].clone();
    for i in [0, 1, 2, wrapped.len() / 2, wrapped.len() - 1] {
        let mut bad = ann.clone();
        bad.get_mut(KEK_ANNOTATION).unwrap()[i] ^= 0x01;
        for q in [&p, &fresh] {
            refused(q.decrypt_v2(&ct, &kid, &bad).await, &format!("byte {i} of the annotation flipped"));
        }
    }
    // Another ciphertext's local KEK (a valid wrap of the same key) under this ciphertext.
    let mut swapped = ann.clone();
    swapped.insert(KEK_ANNOTATION.into(), other_ann[KEK_ANNOTATION].clone());
    refused(p.decrypt_v2(&ct, &kid, &swapped).await, "another local KEK");
    // ... and with the reference in the ciphertext pointing at it: the AEAD refuses.
    let mut forged = ct.clone();
    forged[3..19].copy_from_slice(&other_ct[3..19]);
    refused(fresh.decrypt_v2(&forged, &kid, &swapped).await, "another local KEK and its reference");
    let mut missing = ann.clone();
    missing.remove(KEK_ANNOTATION);
    let e = p.decrypt_v2(&ct, &kid, &missing).await.unwrap_err();
    assert!(e.to_string().contains(KEK_ANNOTATION), "{e}");
    // A wrapped local KEK is no KMS v1 ciphertext: the API is bound into its wrap.
    refused(fresh.decrypt_v1(&wrapped).await, "the wrapped local KEK as a v1 ciphertext");
    assert_eq!(k.calls("Decrypt") - before, 2, "only the last two reached the key server");

    // Nothing above hurt: the real thing decrypts.
    assert_eq!(&fresh.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[11u8; 32]);
    assert_eq!(&fresh.decrypt_v2(&other_ct, &kid, &other_ann).await.unwrap()[..], &[12u8; 32]);
}

#[tokio::test]
async fn the_local_kek_rotates_after_its_uses_and_at_once_when_the_remote_key_id_changes() {
    let k = Audited::start().await;
    let p = k.layered(KekConfig { max_uses: 3, ..KekConfig::default() });
    let k1 = ready(&p).await;
    let mut keks = Vec::new();
    for i in 0..7u8 {
        let (_, _, ann) = p.encrypt_v2(&[i; 32]).await.unwrap();
        keks.push(ann[KEK_ANNOTATION].clone());
    }
    assert!(keks[0] == keks[1] && keks[1] == keks[2] && keks[2] != keks[3], "three uses each");
    assert!(keks[3] == keks[5] && keks[5] != keks[6]);

    k.admin.rotate_key_on_demand().key_id(&k.key).send().await.unwrap();
    let k2 = ready(&p).await;
    assert_ne!(k1, k2);
    let (ct, kid, ann) = p.encrypt_v2(&[9u8; 32]).await.unwrap();
    assert_eq!(kid, k2, "the key_id stays the remote key's");
    assert_ne!(ann[KEK_ANNOTATION], keks[6], "a new local KEK under the new remote key version");
    assert_eq!(p.backend().key_id_of_v2(&ct, &ann).unwrap(), k2);
    let empty: HashMap<String, Vec<u8>> = HashMap::new();
    assert!(p.backend().key_id_of_v2(&ct, &empty).is_err());
}
