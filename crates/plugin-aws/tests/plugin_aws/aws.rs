//! What only the aws backend has: the AWS encryption context, the key states and policies of a
//! KMS, aliases moving between keys, the key_id without `CurrentKeyMaterialId`, the probe modes,
//! metrics of a call abandoned at the deadline, the blob parser.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::Client;
use envelope_kms_server::Server;
use envelope_plugin::{KeyBackend, Metrics, Plugin, PluginConfig, PluginError};
use envelope_plugin_aws::{AwsBackend, ProbeMode, RetryPolicy};
use envelope_test_support::conformance::{Subject, ready};
use envelope_test_support::kms::{self, APP_AKID, SECRET};
use tonic::Code;

use super::conformance::Aws;
use super::{ALIAS, create_key, fast_retry, plugin};

#[tokio::test]
async fn key_id_is_aws_and_32_hex_digits_and_fits_a_ciphertext() {
    let s = Aws::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    assert!(kid.starts_with("aws-") && kid.len() == 36, "{kid}");
    assert!(kid[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{kid}");
    let (ct, _, _) = p.encrypt_v2(&[0x42u8; 32]).await.unwrap();
    println!("plugin ciphertext for a 32-byte DEK: {} bytes", ct.len());
    assert!(ct.len() <= 1024, "ciphertext is {} bytes", ct.len());
}

#[tokio::test]
async fn an_attempt_abandoned_at_the_deadline_is_counted() {
    let s = Aws::start().await;
    let p = s.plugin();
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[6u8; 32]).await.unwrap();
    let stuck = s.stalled_plugin(PluginConfig::default()).await;
    let caller = tokio::time::Instant::now() + Duration::from_millis(400);
    let err = envelope_plugin::deadline::scope(caller, stuck.decrypt_v2(&ct, &kid, &ann)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let text = stuck.metrics().encode();
    assert!(
        text.contains(r#"envelope_plugin_remote_calls_total{operation="Decrypt",outcome="DEADLINE_EXCEEDED"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn encryption_context_mismatch_is_invalid_ciphertext() {
    let s = Aws::start().await;
    let prod = plugin(&s.app, ALIAS, &[("cluster", "prod")]);
    let dev = plugin(&s.app, ALIAS, &[("cluster", "dev")]);
    let kid = ready(&prod).await;
    assert_eq!(ready(&dev).await, kid);
    let (ct, _, ann) = prod.encrypt_v2(&[7u8; 32]).await.unwrap();
    let err = dev.decrypt_v2(&ct, &kid, &ann).await.unwrap_err();
    assert!(matches!(err, PluginError::InvalidCiphertext(_)), "{err:?}");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_key_is_unusable_not_found() {
    let s = Aws::start().await;
    let p = plugin(&s.app, "alias/does-not-exist", &[]);
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(m)) if m.contains("not found")), "{:?}", h.error);
    assert_eq!(p.encrypt_v2(&[1u8; 32]).await.unwrap_err().code(), Code::Unavailable, "not ready yet");
}

#[tokio::test]
async fn pending_deletion_is_unusable_until_cancelled_and_enabled() {
    let s = Aws::start().await;
    let id = s.key.clone();
    let p = plugin(&s.app, ALIAS, &[]);
    let kid = ready(&p).await;
    let (ct, _, ann) = p.encrypt_v2(&[4u8; 32]).await.unwrap();
    s.admin.schedule_key_deletion().key_id(&id).pending_window_in_days(7).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::KeyUnusable(m)) if m.contains("PendingDeletion")), "{:?}", h.error);
    assert!(h.healthz().contains("PendingDeletion"), "{}", h.healthz());
    assert_eq!(h.key_id.as_deref(), Some(kid.as_str()), "the last key_id is kept");
    assert_eq!(p.encrypt_v2(&[4u8; 32]).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(p.decrypt_v2(&ct, &kid, &ann).await.unwrap_err().code(), Code::FailedPrecondition);
    // Cancelling leaves the key disabled (as in AWS KMS); enabling makes it usable again.
    s.admin.cancel_key_deletion().key_id(&id).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(h.healthz().contains("disabled"), "{}", h.healthz());
    s.admin.enable_key().key_id(&id).send().await.unwrap();
    assert_eq!(ready(&p).await, kid);
    assert_eq!(&p.decrypt_v2(&ct, &kid, &ann).await.unwrap()[..], &[4u8; 32]);
}

#[tokio::test]
async fn alias_moved_to_another_key_still_decrypts_old_data() {
    let s = Aws::start().await;
    let p = plugin(&s.app, ALIAS, &[]);
    let k1 = ready(&p).await;
    let (ct1, _, ann) = p.encrypt_v2(&[9u8; 32]).await.unwrap();

    let second = create_key(&s.admin, None).await;
    s.admin.update_alias().alias_name(ALIAS).target_key_id(&second).send().await.unwrap();
    let k2 = ready(&p).await;
    assert_ne!(k1, k2);
    let (ct2, _, _) = p.encrypt_v2(&[8u8; 32]).await.unwrap();
    assert_eq!(&p.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[9u8; 32]);
    assert_eq!(&p.decrypt_v2(&ct2, &k2, &ann).await.unwrap()[..], &[8u8; 32]);
}

#[tokio::test]
async fn key_policy_denial_is_permission_denied() {
    let s = Aws::start().await;
    let id = s.key.clone();
    let p = plugin(&s.app, ALIAS, &[]);
    ready(&p).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/app"},"Action":["kms:Encrypt","kms:DescribeKey"],"Resource":"*"}]}"#;
    s.admin.put_key_policy().key_id(&id).policy_name("default").policy(policy).send().await.unwrap();
    let h = p.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(m)) if m.contains("AccessDenied")), "{:?}", h.error);
    let err = p.encrypt_v2(&[1u8; 32]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

#[tokio::test]
async fn without_current_key_material_id_the_key_id_comes_from_list_key_rotations() {
    let s = Aws::start().await;
    let id = s.key.clone();
    let old_style = serve_without_current_material_id(s.server.server.clone()).await;
    let md = old_style.describe_key().key_id(ALIAS).send().await.unwrap().key_metadata.unwrap();
    assert_eq!(md.current_key_material_id(), None, "the stripped endpoint must not report the material id");

    let direct = plugin(&s.app, ALIAS, &[]);
    let metrics = Arc::new(Metrics::new());
    let backend = AwsBackend::new(old_style.clone(), ALIAS.to_string(), BTreeMap::new(), 8)
        .unwrap()
        .with_retry(fast_retry())
        .with_metrics(metrics.clone());
    let fallback = Plugin::new(backend, PluginConfig::default(), metrics.clone());

    // The same material id found both ways gives the same key_id.
    let k1 = ready(&fallback).await;
    assert_eq!(k1, ready(&direct).await);
    assert!(
        metrics.encode().contains(r#"envelope_plugin_remote_calls_total{operation="ListKeyRotations",outcome="ok"} 1"#),
        "{}",
        metrics.encode()
    );
    let (ct1, _, ann) = fallback.encrypt_v2(&[3u8; 32]).await.unwrap();

    // Rotation: ListKeyRotations names the new CURRENT material, so the key_id follows it.
    s.admin.rotate_key_on_demand().key_id(&id).send().await.unwrap();
    let k2 = ready(&fallback).await;
    assert_ne!(k1, k2, "rotation must change the key_id through the fallback too");
    assert_eq!(k2, ready(&direct).await);
    assert_eq!(&fallback.decrypt_v2(&ct1, &k1, &ann).await.unwrap()[..], &[3u8; 32]);
    let (ct2, kid2, _) = fallback.encrypt_v2(&[4u8; 32]).await.unwrap();
    assert_eq!(kid2, k2);
    assert_eq!(&direct.decrypt_v2(&ct2, &k2, &ann).await.unwrap()[..], &[4u8; 32]);
}

#[tokio::test]
async fn round_trip_probe_catches_a_denied_encrypt_that_describe_key_misses() {
    let s = Aws::start().await;
    let id = s.key.clone();
    let full = plugin(&s.app, ALIAS, &[]);
    let cheap_backend = AwsBackend::new(s.app.clone(), ALIAS.to_string(), BTreeMap::new(), 8)
        .unwrap()
        .with_retry(fast_retry())
        .with_probe(ProbeMode::DescribeKey);
    let cheap = Plugin::new(cheap_backend, PluginConfig::default(), Arc::new(Metrics::new()));
    ready(&full).await;
    ready(&cheap).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/app"},"Action":"kms:Encrypt","Resource":"*"}]}"#;
    s.admin.put_key_policy().key_id(&id).policy_name("default").policy(policy).send().await.unwrap();
    let h = full.probe_now().await;
    assert!(matches!(&h.error, Some(PluginError::PermissionDenied(m)) if m.contains("Encrypt")), "{:?}", h.error);
    assert!(!h.is_ready());
    let h = cheap.probe_now().await;
    assert!(h.is_ready(), "DescribeKey alone is still allowed: {:?}", h.error);
    assert_eq!(cheap.encrypt_v2(&[1u8; 32]).await.unwrap_err().code(), Code::PermissionDenied);
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
    kms::sdk_client(&format!("http://127.0.0.1:{port}"), APP_AKID, SECRET)
}

mod parsing {
    use super::*;
    use proptest::prelude::*;

    fn offline_backend() -> AwsBackend {
        // Nothing listens on port 1; a blob that parses gets one quick refused connection.
        AwsBackend::new(kms::sdk_client("http://127.0.0.1:1", APP_AKID, SECRET), ALIAS.into(), BTreeMap::new(), 2)
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
