//! AwsBackend through envelope_plugin::Plugin against `envelope kms serve`, served in process on
//! a loopback port with real SigV4 and real HTTP, driven by the official aws-sdk-kms client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::Client;
use envelope_kms_server::{Config, Credential, CredentialStore, Server};
use envelope_plugin::{KeyBackend, Metrics, Plugin, PluginConfig, PluginError};
use envelope_plugin_aws::{AwsBackend, ProbeMode, RetryPolicy};
use tonic::Code;

const AKID: &str = "AKIAENVELOPEPLUGINAW";
const SECRET: &str = "plugin-aws-test-secret-0123456789abcdefghij";
const ALIAS: &str = "alias/k8s-master-key";

struct Running {
    client: Client,
    server: Arc<Server>,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

fn sdk_client(endpoint: &str) -> Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(AKID, SECRET, None, None, "test"))
        .build();
    Client::from_conf(conf)
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(envelope_keystore::KeyStore::open(&dir.path().join("data")).unwrap());
    let creds = CredentialStore::new(vec![Credential::new(
        AKID,
        SECRET.to_string().into(),
        None,
        "arn:aws:iam::111122223333:user/plugin".to_string(),
    )])
    .unwrap();
    let server = Arc::new(Server::new(store, creds, Config::new("us-east-1", "111122223333")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = server.clone();
    let task = tokio::spawn(async move {
        let _ = envelope_kms_server::serve(listener, served, async move {
            let _ = rx.await;
        })
        .await;
    });
    Running {
        client: sdk_client(&format!("http://127.0.0.1:{port}")),
        server,
        port,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

impl Running {
    /// Serves the same key server again on the same port (after [`Running::stop`]).
    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = self.server.clone();
        self.task = Some(tokio::spawn(async move {
            let _ = envelope_kms_server::serve(listener, served, async move {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
    }
}

/// Serves the same key server a second time, on another port, with `CurrentKeyMaterialId`
/// removed from every DescribeKey answer, as endpoints that predate that field answer (requests
/// and their SigV4 checks are untouched). Returns a client of that endpoint.
async fn serve_without_current_material_id(server: Arc<Server>) -> Client {
    async fn strip(resp: axum::response::Response) -> axum::response::Response {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
        let out = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(mut v) => {
                if let Some(md) = v.get_mut("KeyMetadata").and_then(|m| m.as_object_mut()) {
                    md.remove("CurrentKeyMaterialId");
                }
                serde_json::to_vec(&v).unwrap()
            }
            Err(_) => bytes.to_vec(),
        };
        let mut parts = parts;
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        axum::response::Response::from_parts(parts, axum::body::Body::from(out))
    }
    let app = envelope_kms_server::server::router(server).layer(axum::middleware::map_response(strip));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    sdk_client(&format!("http://127.0.0.1:{port}"))
}

/// Creates a key and points `alias` at it; returns the key id.
async fn create_key(c: &Client, alias: Option<&str>) -> String {
    let md = c.create_key().description("plugin-aws").send().await.unwrap().key_metadata.unwrap();
    let id = md.key_id().to_string();
    if let Some(a) = alias {
        c.create_alias().alias_name(a).target_key_id(&id).send().await.unwrap();
    }
    id
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_millis(400),
        reserve: Duration::from_millis(20),
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        max_attempts: 4,
    }
}

fn plugin(c: &Client, key: &str, ctx: &[(&str, &str)]) -> Plugin<AwsBackend> {
    let ctx: BTreeMap<String, String> = ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let backend = AwsBackend::new(c.clone(), key.to_string(), ctx, 8).unwrap().with_retry(fast_retry());
    Plugin::new(backend, PluginConfig::default(), Arc::new(Metrics::new()))
}

async fn ready_key_id(p: &Plugin<AwsBackend>) -> String {
    let h = p.probe_now().await;
    assert!(h.is_ready(), "{}", h.healthz());
    h.key_id.clone().unwrap()
}

#[tokio::test]
async fn round_trip_and_stable_key_id() {
    let r = start().await;
    create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[("cluster", "prod")]);
    let kid = ready_key_id(&p).await;
    assert!(kid.starts_with("aws-") && kid.len() == 36, "{kid}");
    assert_eq!(ready_key_id(&p).await, kid, "key_id is stable across probes");

    let dek = [0x42u8; 32];
    let (ct, key_id, ann) = p.encrypt_v2(&dek).await.unwrap();
    assert_eq!(key_id, kid);
    assert!(ct.len() <= 1024, "ciphertext is {} bytes", ct.len());
    println!("plugin ciphertext for a 32-byte DEK: {} bytes", ct.len());
    assert_eq!(p.backend().key_id_of(&ct[2..]).unwrap(), kid);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &dek);

    // Altered annotations are bound into the AWS encryption context.
    let mut other = ann.clone();
    other.insert("x.example.io".into(), b"y".to_vec());
    assert_eq!(p.decrypt_v2(&ct, &kid, &other).await.unwrap_err().code(), Code::InvalidArgument);
    // A key_id that did not make the ciphertext is refused before any KMS call.
    assert!(matches!(p.decrypt_v2(&ct, "aws-0000", &ann).await, Err(PluginError::KeyIdMismatch(_))));

    // KMS v1beta1 too.
    let ct1 = p.encrypt_v1(b"v1 dek").await.unwrap();
    assert_eq!(&p.decrypt_v1(&ct1).await.unwrap()[..], b"v1 dek");
}

#[tokio::test]
async fn rotation_changes_key_id_and_old_ciphertexts_still_decrypt() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    let k1 = ready_key_id(&p).await;
    let (ct1, _, ann) = p.encrypt_v2(&[1u8; 32]).await.unwrap();

    r.client.rotate_key_on_demand().key_id(&id).send().await.unwrap();
    let k2 = ready_key_id(&p).await;
    assert_ne!(k1, k2, "rotation must change the key_id");
    let (ct2, kid2, _) = p.encrypt_v2(&[2u8; 32]).await.unwrap();
    assert_eq!(kid2, k2);
    assert_eq!(&p.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[1u8; 32]);
    assert_eq!(&p.decrypt_v2(&ct2, &k2, &ann).await.unwrap()[..], &[2u8; 32]);
}

#[tokio::test]
async fn encryption_context_mismatch_is_invalid_ciphertext() {
    let r = start().await;
    create_key(&r.client, Some(ALIAS)).await;
    let prod = plugin(&r.client, ALIAS, &[("cluster", "prod")]);
    let dev = plugin(&r.client, ALIAS, &[("cluster", "dev")]);
    let kid = ready_key_id(&prod).await;
    assert_eq!(ready_key_id(&dev).await, kid);
    let (ct, _, ann) = prod.encrypt_v2(&[7u8; 32]).await.unwrap();
    let err = dev.decrypt_v2(&ct, &kid, &ann).await.unwrap_err();
    assert!(matches!(err, PluginError::InvalidCiphertext(_)), "{err:?}");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn disable_and_enable() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    let kid = ready_key_id(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[3u8; 32]).await.unwrap();

    r.client.disable_key().key_id(&id).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(!h.is_ready());
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(m)) if m.contains("disabled")), "{:?}", h.error);
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()), "Status keeps the last key_id");
    assert_eq!(p.encrypt_v2(&[3u8; 32]).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err().code(), Code::FailedPrecondition);

    r.client.enable_key().key_id(&id).send().await.unwrap();
    assert_eq!(ready_key_id(&p).await, kid);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[3u8; 32]);
}

#[tokio::test]
async fn unknown_key_is_unusable_not_found() {
    let r = start().await;
    let p = plugin(&r.client, "alias/does-not-exist", &[]);
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(m)) if m.contains("not found")), "{:?}", h.error);
    assert_eq!(p.encrypt_v2(&[1u8; 32]).await.unwrap_err().code(), Code::Unavailable, "not ready yet");
}

#[tokio::test]
async fn server_stopped_is_unavailable_and_key_id_is_kept() {
    let mut r = start().await;
    create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    let kid = ready_key_id(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[5u8; 32]).await.unwrap();
    r.stop().await;

    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::Unavailable(_))), "{:?}", h.error);
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()));
    assert_eq!(p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err().code(), Code::Unavailable);
    assert_eq!(p.encrypt_v2(&[5u8; 32]).await.unwrap_err().code(), Code::Unavailable);

    // Server back: the next probe recovers, with the same key_id, and the data decrypts.
    r.restart().await;
    let h = p.probe_now().await;
    assert!(h.is_ready(), "{:?}", h.error);
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()));
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[5u8; 32]);
    assert_eq!(p.encrypt_v2(&[5u8; 32]).await.unwrap().1, kid);
}

#[tokio::test]
async fn pending_deletion_is_unusable_until_cancelled_and_enabled() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    let kid = ready_key_id(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[4u8; 32]).await.unwrap();
    r.client.schedule_key_deletion().key_id(&id).pending_window_in_days(7).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(m)) if m.contains("PendingDeletion")), "{:?}", h.error);
    assert!(h.healthz().contains("PendingDeletion"), "{}", h.healthz());
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()), "the last key_id is kept");
    assert_eq!(p.encrypt_v2(&[4u8; 32]).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err().code(), Code::FailedPrecondition);
    // Cancelling leaves the key disabled (as in AWS KMS); enabling makes it usable again.
    r.client.cancel_key_deletion().key_id(&id).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(h.healthz().contains("disabled"), "{}", h.healthz());
    r.client.enable_key().key_id(&id).send().await.unwrap();
    assert_eq!(ready_key_id(&p).await, kid);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[4u8; 32]);
}

#[tokio::test]
async fn alias_moved_to_another_key_still_decrypts_old_data() {
    let r = start().await;
    create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    let k1 = ready_key_id(&p).await;
    let (ct1, _, ann) = p.encrypt_v2(&[9u8; 32]).await.unwrap();

    let second = create_key(&r.client, None).await;
    r.client.update_alias().alias_name(ALIAS).target_key_id(&second).send().await.unwrap();
    let k2 = ready_key_id(&p).await;
    assert_ne!(k1, k2);
    let (ct2, _, _) = p.encrypt_v2(&[8u8; 32]).await.unwrap();
    assert_eq!(&p.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[9u8; 32]);
    assert_eq!(&p.decrypt_v2(&ct2, &k2, &ann).await.unwrap()[..], &[8u8; 32]);
}

#[tokio::test]
async fn key_policy_denial_is_permission_denied() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    ready_key_id(&p).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/plugin"},"Action":["kms:Encrypt","kms:DescribeKey"],"Resource":"*"}]}"#;
    r.client.put_key_policy().key_id(&id).policy_name("default").policy(policy).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(m)) if m.contains("AccessDenied")), "{:?}", h.error);
    let err = p.encrypt_v2(&[1u8; 32]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

#[tokio::test]
async fn without_current_key_material_id_the_key_id_comes_from_list_key_rotations() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let old_style = serve_without_current_material_id(r.server.clone()).await;
    let md = old_style.describe_key().key_id(ALIAS).send().await.unwrap().key_metadata.unwrap();
    assert_eq!(md.current_key_material_id(), None, "the stripped endpoint must not report the material id");

    let direct = plugin(&r.client, ALIAS, &[]);
    let metrics = Arc::new(Metrics::new());
    let backend = AwsBackend::new(old_style.clone(), ALIAS.to_string(), BTreeMap::new(), 8)
        .unwrap()
        .with_retry(fast_retry())
        .with_metrics(metrics.clone());
    let fallback = Plugin::new(backend, PluginConfig::default(), metrics.clone());

    // The same material id found both ways gives the same key_id.
    let k1 = ready_key_id(&fallback).await;
    assert_eq!(k1, ready_key_id(&direct).await);
    assert!(
        metrics.encode().contains(r#"envelope_plugin_remote_calls_total{operation="ListKeyRotations",outcome="ok"} 1"#),
        "{}",
        metrics.encode()
    );
    let (ct1, _, ann) = fallback.encrypt_v2(&[3u8; 32]).await.unwrap();

    // Rotation: ListKeyRotations names the new CURRENT material, so the key_id follows it.
    r.client.rotate_key_on_demand().key_id(&id).send().await.unwrap();
    let k2 = ready_key_id(&fallback).await;
    assert_ne!(k1, k2, "rotation must change the key_id through the fallback too");
    assert_eq!(k2, ready_key_id(&direct).await);
    assert_eq!(&fallback.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[3u8; 32]);
    let (ct2, kid2, _) = fallback.encrypt_v2(&[4u8; 32]).await.unwrap();
    assert_eq!(kid2, k2);
    assert_eq!(&direct.decrypt_v2(&ct2, &k2, &ann).await.unwrap()[..], &[4u8; 32]);
}

#[tokio::test]
async fn retries_stop_at_the_callers_deadline() {
    // An endpoint that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let r = start().await;
    create_key(&r.client, Some(ALIAS)).await;
    let p = plugin(&r.client, ALIAS, &[]);
    ready_key_id(&p).await;
    let (ct, kid, ann) = p.encrypt_v2(&[6u8; 32]).await.unwrap();

    // Same key, through the silent endpoint, with the default policy (2 s without a deadline).
    let metrics = Arc::new(Metrics::new());
    let backend =
        AwsBackend::new(sdk_client(&format!("http://127.0.0.1:{port}")), ALIAS.to_string(), BTreeMap::new(), 8)
            .unwrap()
            .with_metrics(metrics.clone());
    let stuck = Plugin::new(backend, PluginConfig::default(), metrics.clone());
    let start = tokio::time::Instant::now();
    let caller = start + Duration::from_millis(400);
    let err = envelope_plugin::deadline::scope(caller, stuck.decrypt_v2(&ct, &kid, &ann)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(tokio::time::Instant::now() <= caller, "answered after the caller's deadline ({:?})", start.elapsed());
    // The abandoned attempt is still counted.
    let text = metrics.encode();
    assert!(
        text.contains(r#"envelope_plugin_remote_calls_total{operation="Decrypt",outcome="DEADLINE_EXCEEDED"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn round_trip_probe_catches_a_denied_encrypt_that_describe_key_misses() {
    let r = start().await;
    let id = create_key(&r.client, Some(ALIAS)).await;
    let full = plugin(&r.client, ALIAS, &[]);
    let cheap_backend = AwsBackend::new(r.client.clone(), ALIAS.to_string(), BTreeMap::new(), 8)
        .unwrap()
        .with_retry(fast_retry())
        .with_probe(ProbeMode::DescribeKey);
    let cheap = Plugin::new(cheap_backend, PluginConfig::default(), Arc::new(Metrics::new()));
    ready_key_id(&full).await;
    ready_key_id(&cheap).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/plugin"},"Action":"kms:Encrypt","Resource":"*"}]}"#;
    r.client.put_key_policy().key_id(&id).policy_name("default").policy(policy).send().await.unwrap();
    let h = full.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(m)) if m.contains("Encrypt")), "{:?}", h.error);
    assert!(!h.is_ready());
    let h = cheap.probe_now().await;
    assert!(h.is_ready(), "DescribeKey alone is still allowed: {:?}", h.error);
    assert_eq!(cheap.encrypt_v2(&[1u8; 32]).await.unwrap_err().code(), Code::PermissionDenied);
}

mod parsing {
    use super::*;
    use proptest::prelude::*;

    fn offline_backend() -> AwsBackend {
        // Nothing listens on port 1; a blob that parses gets one quick refused connection.
        AwsBackend::new(sdk_client("http://127.0.0.1:1"), ALIAS.into(), BTreeMap::new(), 2)
            .unwrap()
            .with_retry(RetryPolicy { max_attempts: 1, ..fast_retry() })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_blobs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let b = offline_backend();
            let kid = b.key_id_of(&data);
            let ctx = BTreeMap::from([("envelope:api".to_string(), "kms-v2".to_string())]);
            let dec = rt.block_on(b.decrypt(&data, &ctx));
            prop_assert!(dec.is_err());
            if kid.is_err() {
                prop_assert!(matches!(dec, Err(PluginError::InvalidCiphertext(_))));
            }
            let p = Plugin::new(b, PluginConfig::default(), Arc::new(Metrics::new()));
            let mut ct = vec![1u8, 2];
            ct.extend_from_slice(&data);
            let kid = kid.unwrap_or_else(|_| "aws-x".into());
            prop_assert!(rt.block_on(p.decrypt_v2(&ct, &kid, &HashMap::new())).is_err());
        }
    }
}
