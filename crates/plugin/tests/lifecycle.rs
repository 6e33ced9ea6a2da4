//! Library-level tests of serving behaviour that needs control over backend timing: graceful
//! shutdown with requests in flight, deadlines, and health caching through transient failures.
//! The backend here is a test fixture (an in-memory XOR "wrap" with configurable delay and
//! failures); the real backends are exercised by the end-to-end tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envelope_keystore::EncryptionContext;
use envelope_plugin::format::BackendKind;
use envelope_plugin::{KeyBackend, Metrics, Plugin, PluginConfig, PluginError, Probe};
use envelope_proto::v2;
use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient;
use envelope_test_support::plugin::OnSocket;
use zeroize::Zeroizing;

#[derive(Clone, Default)]
struct Fixture {
    delay_ms: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl KeyBackend for Fixture {
    type Version = u64;
    fn kind(&self) -> BackendKind {
        BackendKind::Embedded
    }
    async fn probe(&self) -> Result<Probe<u64>, PluginError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(PluginError::Unavailable("backend unreachable".into()));
        }
        let g = self.generation.load(Ordering::SeqCst);
        Ok(Probe { key_id: format!("fixture-{g}"), version: g })
    }
    async fn encrypt(&self, v: &u64, p: &[u8], _ctx: &EncryptionContext) -> Result<Vec<u8>, PluginError> {
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
        let mut out = vec![*v as u8];
        out.extend(p.iter().map(|b| b ^ 0x55));
        Ok(out)
    }
    fn key_id_of(&self, blob: &[u8]) -> Result<String, PluginError> {
        blob.first().map(|g| format!("fixture-{g}")).ok_or_else(|| PluginError::InvalidCiphertext("empty".into()))
    }
    async fn decrypt(&self, blob: &[u8], _ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, PluginError> {
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))).await;
        Ok(Zeroizing::new(blob[1..].iter().map(|b| b ^ 0x55).collect()))
    }
}

struct Served {
    on: OnSocket<Fixture>,
    backend: Fixture,
}

async fn serve(grace: Duration) -> Served {
    let backend = Fixture::default();
    let config = PluginConfig { shutdown_grace: grace, ..PluginConfig::default() };
    let plugin = Plugin::new(backend.clone(), config, Arc::new(Metrics::new()));
    plugin.probe_now().await;
    Served { on: envelope_test_support::plugin::serve(plugin).await, backend }
}

async fn client(s: &Served) -> KeyManagementServiceClient<tonic::transport::Channel> {
    s.on.v2().await
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut s = serve(Duration::from_secs(5)).await;
    s.backend.delay_ms.store(400, Ordering::SeqCst);
    let mut c = client(&s).await;
    let inflight =
        tokio::spawn(async move { c.encrypt(v2::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    s.on.begin_stop();
    let r = inflight.await.unwrap();
    assert!(r.is_ok(), "in-flight request must complete: {r:?}");
    s.on.stop().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn shutdown_grace_bounds_slow_requests() {
    let mut s = serve(Duration::from_millis(300)).await;
    s.backend.delay_ms.store(10_000, Ordering::SeqCst);
    let mut c = client(&s).await;
    let _inflight =
        tokio::spawn(async move { c.encrypt(v2::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    s.on.stop().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "serve must return once the grace period is over");
}

#[tokio::test]
async fn client_deadline_is_honoured() {
    let s = serve(Duration::from_secs(1)).await;
    s.backend.delay_ms.store(2_000, Ordering::SeqCst);
    let mut c = client(&s).await;
    let mut req = tonic::Request::new(v2::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() });
    req.set_timeout(Duration::from_millis(150));
    let t = Instant::now();
    let err = c.encrypt(req).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_millis(1500), "returned after {:?}", t.elapsed());
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err:?}");
}

#[tokio::test]
async fn last_good_key_id_survives_a_transient_failure_and_rotation_shows() {
    let s = serve(Duration::from_secs(1)).await;
    let mut c = client(&s).await;
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((st.healthz.as_str(), st.key_id.as_str()), ("ok", "fixture-0"));
    let wrapped = c.encrypt(v2::EncryptRequest { plaintext: vec![9; 32], uid: "u".into() }).await.unwrap().into_inner();

    s.backend.failing.store(true, Ordering::SeqCst);
    s.on.plugin.probe_now().await;
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_ne!(st.healthz, "ok");
    assert!(st.healthz.contains("unreachable"), "{}", st.healthz);
    assert_eq!(st.key_id, "fixture-0", "a blip must not look like a rotation");

    s.backend.failing.store(false, Ordering::SeqCst);
    s.backend.generation.store(1, Ordering::SeqCst);
    s.on.plugin.probe_now().await;
    let st = c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!((st.healthz.as_str(), st.key_id.as_str()), ("ok", "fixture-1"));
    let e = c.encrypt(v2::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() }).await.unwrap().into_inner();
    assert_eq!(e.key_id, "fixture-1");
    let d = v2::DecryptRequest {
        ciphertext: wrapped.ciphertext,
        uid: "u".into(),
        key_id: wrapped.key_id,
        annotations: wrapped.annotations,
    };
    assert_eq!(c.decrypt(d).await.unwrap().into_inner().plaintext, vec![9; 32]);
}

#[tokio::test]
async fn status_is_unavailable_before_any_successful_probe() {
    let backend = Fixture::default();
    backend.failing.store(true, Ordering::SeqCst);
    let plugin = Plugin::new(backend, PluginConfig::default(), Arc::new(Metrics::new()));
    plugin.probe_now().await;
    let on = envelope_test_support::plugin::serve(plugin).await;
    let mut c = on.v2().await;
    let err = c.status(v2::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let err = c.encrypt(v2::EncryptRequest { plaintext: vec![1; 32], uid: "u".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
