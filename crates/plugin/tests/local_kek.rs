//! The local KEK layer's clocks and bounds over the embedded backend (a real key store in a
//! temporary directory), with tokio's paused clock: the cache TTL, the local KEK's age limit, the
//! cache size. Remote calls are the layer's own counts (`local_kek_events`); the counts against a
//! real remote end are in crates/plugin-aws/tests/plugin_aws/local_kek.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;
use std::time::Duration;

use envelope_keystore::{KeyRef, KeyStore};
use envelope_plugin::kek::KEK_ANNOTATION;
use envelope_plugin::{EmbeddedBackend, KekConfig, KekLayer, Metrics, Plugin, PluginConfig};

struct Store {
    store: Arc<KeyStore>,
    key: KeyRef,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("data")).unwrap();
        store.create_key(Some("alias/kubernetes"), "local KEK tests").unwrap();
        Store { store: Arc::new(store), key: KeyRef::parse("kubernetes").unwrap(), _dir: dir }
    }

    /// A plugin through the layer with `config`, probed (before any test pauses the clock).
    async fn plugin(&self, config: KekConfig) -> Plugin<KekLayer<EmbeddedBackend>> {
        let metrics = Arc::new(Metrics::new());
        let backend = EmbeddedBackend::new(self.store.clone(), self.key.clone());
        let layer = KekLayer::new(backend, config).unwrap().with_metrics(metrics.clone().into());
        let p = Plugin::new(layer, PluginConfig::default(), metrics);
        assert!(p.probe_now().await.is_ready());
        p
    }
}

#[tokio::test]
async fn an_unwrapped_local_kek_leaves_the_cache_after_its_ttl() {
    let s = Store::new();
    let writer = s.plugin(KekConfig::default()).await;
    let ct = writer.encrypt_v1(&[1u8; 32]).await.unwrap();
    let reader = s.plugin(KekConfig { cache_ttl: Duration::from_secs(60), ..KekConfig::default() }).await;
    let m = reader.metrics().clone();
    tokio::time::pause();

    assert_eq!(&reader.decrypt_v1(&ct).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(m.local_kek_count("unwrap"), 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(&reader.decrypt_v1(&ct).await.unwrap()[..], &[1u8; 32]);
    assert_eq!((m.local_kek_count("unwrap"), m.local_kek_count("hit")), (1, 1), "still cached");

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(&reader.decrypt_v1(&ct).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(m.local_kek_count("expired"), 1);
    assert_eq!(m.local_kek_count("unwrap"), 2, "unwrapped again after the TTL");

    // A probe clears expired entries without waiting for a lookup. (The clock runs again for
    // the probe: the embedded probe waits on the blocking pool, which a paused clock would skip
    // past to the probe's timeout.)
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(reader.backend().stats().cached, 1);
    tokio::time::resume();
    reader.probe_now().await;
    assert_eq!(reader.backend().stats().cached, 0);
    assert_eq!(m.local_kek_count("expired"), 2);
}

#[tokio::test]
async fn writes_make_a_new_local_kek_when_the_one_in_use_is_too_old() {
    let s = Store::new();
    let p = s.plugin(KekConfig { max_age: Duration::from_secs(600), ..KekConfig::default() }).await;
    tokio::time::pause();
    let (_, _, a) = p.encrypt_v2(&[1u8; 32]).await.unwrap();
    tokio::time::advance(Duration::from_secs(599)).await;
    let (_, _, b) = p.encrypt_v2(&[2u8; 32]).await.unwrap();
    assert_eq!(a[KEK_ANNOTATION], b[KEK_ANNOTATION]);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (ct, kid, c) = p.encrypt_v2(&[3u8; 32]).await.unwrap();
    assert_ne!(b[KEK_ANNOTATION], c[KEK_ANNOTATION], "a new local KEK after max_age");
    assert_eq!(p.metrics().local_kek_count("wrap"), 2);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &c).await.unwrap()[..], &[3u8; 32]);
}

#[tokio::test]
async fn the_cache_holds_at_most_its_size() {
    let s = Store::new();
    let mut cts = Vec::new();
    for i in 0..3u8 {
        // Each plugin makes its own local KEK.
        let w = s.plugin(KekConfig::default()).await;
        cts.push((w.encrypt_v1(&[i; 32]).await.unwrap(), i));
    }
    let reader = s.plugin(KekConfig { cache_size: 2, ..KekConfig::default() }).await;
    let m = reader.metrics().clone();
    for (ct, i) in &cts {
        assert_eq!(&reader.decrypt_v1(ct).await.unwrap()[..], &[*i; 32]);
    }
    assert_eq!(reader.backend().stats().cached, 2);
    assert_eq!(m.local_kek_count("evicted"), 1);
    // The first one left (it expired first) and is unwrapped again.
    assert_eq!(&reader.decrypt_v1(&cts[0].0).await.unwrap()[..], &[0u8; 32]);
    assert_eq!(m.local_kek_count("unwrap"), 4);
    assert!(m.encode().contains("envelope_plugin_local_kek_cached 2"), "{}", m.encode());
}

#[tokio::test]
async fn the_local_kek_in_use_serves_reads_no_longer_than_the_cache_ttl() {
    let s = Store::new();
    let config =
        KekConfig { cache_ttl: Duration::from_secs(60), max_age: Duration::from_secs(3600), ..KekConfig::default() };
    let p = s.plugin(config).await;
    let m = p.metrics().clone();
    tokio::time::pause();
    let ct = p.encrypt_v1(&[7u8; 32]).await.unwrap();
    assert_eq!(&p.decrypt_v1(&ct).await.unwrap()[..], &[7u8; 32]);
    assert_eq!(m.local_kek_count("unwrap"), 0, "the local KEK in use reads what it wrote");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(&p.decrypt_v1(&ct).await.unwrap()[..], &[7u8; 32]);
    assert_eq!(m.local_kek_count("unwrap"), 1, "past the TTL the remote key is asked again");
}

#[tokio::test]
async fn a_refused_unwrap_drops_that_keys_local_keks_without_waiting_for_a_probe() {
    let s = Store::new();
    let first = s.plugin(KekConfig::default()).await.encrypt_v1(&[1u8; 32]).await.unwrap();
    let second = s.plugin(KekConfig::default()).await.encrypt_v1(&[2u8; 32]).await.unwrap();
    let reader = s.plugin(KekConfig::default()).await;
    let m = reader.metrics().clone();
    assert_eq!(&reader.decrypt_v1(&first).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(reader.backend().stats().cached, 1);

    // The key is disabled; no probe runs. The next unwrap is refused, and the local KEK cached
    // before under the same key goes with it.
    s.store.set_enabled(&s.key, false).unwrap();
    let refused = reader.decrypt_v1(&second).await.unwrap_err();
    assert!(refused.to_string().contains("disabled"), "{refused}");
    assert_eq!(reader.backend().stats().cached, 0);
    assert_eq!(m.local_kek_count("revoked"), 1);
    assert!(reader.decrypt_v1(&first).await.is_err(), "no longer read from the cache");
    assert_eq!(m.local_kek_count("unwrap_failed"), 2);

    s.store.set_enabled(&s.key, true).unwrap();
    assert_eq!(&reader.decrypt_v1(&first).await.unwrap()[..], &[1u8; 32]);
}
