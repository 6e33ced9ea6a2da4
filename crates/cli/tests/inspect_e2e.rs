//! End-to-end tests of `envelope inspect` and `envelope decrypt` against a real etcd, filled the
//! way kube-apiserver fills it: KMS v2 values whose seed is wrapped by a running `envelope
//! plugin`, KMS v1 values whose DEK is wrapped by it, static-key values, plaintext objects, and
//! damaged values.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use envelope_inspect::writer;
use envelope_proto::etcdserverpb::PutRequest;
use envelope_proto::etcdserverpb::kv_client::KvClient;
use envelope_proto::{v1beta1, v2};
use envelope_test_support::etcd::Etcd;
use envelope_test_support::eventually;

const AESGCM_KEY: [u8; 32] = [0x11; 32];
const AESCBC_KEY: [u8; 32] = [0x22; 32];
const SECRETBOX_KEY: [u8; 32] = [0x33; 32];

fn encryption_config(dir: &std::path::Path, socket: &str) -> std::path::PathBuf {
    use base64::Engine;
    let b = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - kms:\n          apiVersion: v2\n          name: envelope\n          endpoint: unix://{socket}\n      - aesgcm:\n          keys:\n            - name: gcmkey\n              secret: {}\n      - aescbc:\n          keys:\n            - name: cbckey\n              secret: {}\n      - secretbox:\n          keys:\n            - name: sbkey\n              secret: {}\n      - identity: {{}}\n",
        b(&AESGCM_KEY),
        b(&AESCBC_KEY),
        b(&SECRETBOX_KEY)
    );
    let p = dir.join("encryption-config.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

fn secret(ns: &str, name: &str, pw: &str) -> Vec<u8> {
    let meta = writer::new_object_meta(ns, name, &format!("uid-{name}"), 1_700_000_000);
    let s = writer::new_secret(meta, BTreeMap::from([("password".to_string(), pw.as_bytes().to_vec())]), "Opaque");
    writer::encode_secret(&s).to_vec()
}

struct Filled {
    key_id: String,
}

/// Writes one object of every kind under /registry/secrets/<ns>/..., as kube-apiserver would.
async fn fill(etcd: &Etcd, plugin: &RunningPlugin) -> Filled {
    let ch = tonic::transport::Endpoint::from_shared(etcd.endpoint.clone()).unwrap().connect().await.unwrap();
    let kv = KvClient::new(ch);
    let put = |k: String, v: Vec<u8>| {
        let mut kv = kv.clone();
        async move {
            kv.put(PutRequest { key: k.into_bytes(), value: v, ..Default::default() }).await.unwrap();
        }
    };
    let mut v2c = plugin.v2().await.unwrap();
    let mut v1c = plugin.v1().await.unwrap();

    // KMS v2, seed mode: one seed wrapped by the plugin, reused for several writes.
    let st = v2c.status(v2::StatusRequest {}).await.unwrap().into_inner();
    let seed = writer::random_seed().unwrap();
    let wrapped =
        v2c.encrypt(v2::EncryptRequest { plaintext: seed.to_vec(), uid: "fill".into() }).await.unwrap().into_inner();
    let env = writer::KmsV2Envelope {
        provider_name: "envelope".into(),
        key_id: wrapped.key_id.clone(),
        encrypted_dek_source: wrapped.ciphertext.clone(),
        annotations: wrapped.annotations.clone().into_iter().collect(),
    };
    for i in 0..3 {
        let key = format!("/registry/secrets/prod/kms2-{i}");
        let v = writer::kms_v2_seed(key.as_bytes(), &secret("prod", &format!("kms2-{i}"), "v2-pw"), &seed[..], &env)
            .unwrap();
        put(key, v).await;
    }
    // KMS v1: a fresh DEK per write, wrapped by the plugin's v1 API.
    let dek = [0x44u8; 32];
    let wdek = v1c
        .encrypt(v1beta1::EncryptRequest { version: "v1beta1".into(), plain: dek.to_vec() })
        .await
        .unwrap()
        .into_inner();
    let key = "/registry/secrets/prod/kms1".to_string();
    put(
        key.clone(),
        writer::kms_v1(key.as_bytes(), &secret("prod", "kms1", "v1-pw"), "envelope-v1", &dek, &wdek.cipher).unwrap(),
    )
    .await;
    // Static keys.
    for (prov, name, k, obj) in [
        (envelope_inspect::StaticProvider::AesGcm, "gcmkey", AESGCM_KEY, "gcm"),
        (envelope_inspect::StaticProvider::AesCbc, "cbckey", AESCBC_KEY, "cbc"),
        (envelope_inspect::StaticProvider::Secretbox, "sbkey", SECRETBOX_KEY, "sb"),
    ] {
        let key = format!("/registry/secrets/legacy/{obj}");
        let v = writer::static_key(prov, key.as_bytes(), &secret("legacy", obj, "static-pw"), name, &k).unwrap();
        put(key, v).await;
    }
    // Plaintext (identity) protobuf and JSON.
    put("/registry/secrets/default/plain".into(), secret("default", "plain", "oops")).await;
    put(
        "/registry/secrets/default/plainjson".into(),
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"plainjson","namespace":"default"},"data":{"a":"Yg=="}}"#.to_vec(),
    )
    .await;
    // Damaged values: truncated KMS v2 protobuf, unknown prefix, truncated KMS v1 length.
    put("/registry/secrets/broken/trunc".into(), b"k8s:enc:kms:v2:envelope:\x0a\xff\x01\x02".to_vec()).await;
    put("/registry/secrets/broken/unknown".into(), b"k8s:enc:rot13:v1:x:abc".to_vec()).await;
    put("/registry/secrets/broken/v1short".into(), b"k8s:enc:kms:v1:envelope-v1:\x00".to_vec()).await;
    // A KMS v2 value copied to another key: classifies fine, but must not decrypt (AAD).
    let moved =
        writer::kms_v2_seed(b"/registry/secrets/prod/original", &secret("prod", "original", "x"), &seed[..], &env)
            .unwrap();
    put("/registry/secrets/prod/moved".into(), moved).await;
    // A ConfigMap, outside the secrets prefix.
    put("/registry/configmaps/default/cm".into(), b"k8s\x00junk".to_vec()).await;
    let _ = kv;
    assert_eq!(st.key_id, wrapped.key_id);
    Filled { key_id: wrapped.key_id }
}

fn envelope(args: &[String]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn inspect_classifies_every_kind_and_flags_plaintext_and_stale() {
    let etcd = Etcd::start();
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let f = fill(&etcd, &p).await;

    let mut args = s(&["inspect", "-o", "json", "--plugin-socket", &p.socket]);
    args.extend(etcd.args());
    let out = envelope(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objs = v["objects"].as_array().unwrap();
    let by_name = |n: &str| objs.iter().find(|o| o["name"] == n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(objs.len(), 13, "{v}");
    assert_eq!(by_name("kms2-0")["provider"], "kms-v2");
    assert_eq!(by_name("kms2-0")["key_id"], f.key_id.as_str());
    assert_eq!(by_name("kms2-0")["dek_source"], "HKDF_SHA256_XNONCE_AES_GCM_SEED");
    assert_eq!(by_name("kms2-0")["stale"], false);
    assert_eq!(by_name("kms2-0")["annotation_keys"][0], "plugin.envelope.dev");
    assert_eq!(by_name("kms1")["provider"], "kms-v1");
    assert_eq!(by_name("kms1")["provider_name"], "envelope-v1");
    assert_eq!(by_name("gcm")["provider"], "aesgcm");
    assert_eq!(by_name("cbc")["provider"], "aescbc");
    assert_eq!(by_name("sb")["provider"], "secretbox");
    assert_eq!(by_name("plain")["provider"], "identity");
    assert_eq!(by_name("plain")["encrypted"], false);
    assert_eq!(by_name("plainjson")["provider"], "identity");
    assert_eq!(by_name("trunc")["provider"], "corrupt");
    assert!(by_name("trunc")["problem"].as_str().unwrap().contains("corrupt"));
    assert_eq!(by_name("unknown")["provider"], "unknown");
    assert_eq!(by_name("v1short")["provider"], "corrupt");
    let sum = &v["summary"];
    assert_eq!(sum["total"], 13);
    assert_eq!(sum["unencrypted"], 2);
    assert_eq!(sum["stale"], 0);
    assert_eq!(sum["problems"], 3);
    assert_eq!(sum["by_provider"]["kms-v2"], 4);
    assert_eq!(sum["by_key"][format!("kms-v2/envelope/{}", f.key_id)], 4);

    // --fail-on-plaintext → exit 2.
    let mut a = s(&["inspect", "-o", "summary", "--fail-on-plaintext"]);
    a.extend(etcd.args());
    assert_eq!(envelope(&a).status.code(), Some(2));

    // After a rotation every KMS v2 object is stale; --fail-on-stale → exit 3.
    p.key_cmd(&["rotate", "kubernetes"]);
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            let c = p.v2();
            let old = f.key_id.clone();
            async move { c.await.unwrap().status(v2::StatusRequest {}).await.unwrap().into_inner().key_id != old }
        })
        .await
    );
    let mut a = s(&["inspect", "-o", "json", "--fail-on-stale", "--plugin-socket", &p.socket]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["stale"], 4);
    // --current-key-id works without a plugin.
    let mut a = s(&["inspect", "-o", "json", "--current-key-id", &f.key_id]);
    a.extend(etcd.args());
    let v: serde_json::Value = serde_json::from_slice(&envelope(&a).stdout).unwrap();
    assert_eq!(v["summary"]["stale"], 0);

    // Table output and --resource all.
    let mut a = s(&["inspect", "--resource", "all"]);
    a.extend(etcd.args());
    let out = envelope(&a);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Summary: 14 object(s)"), "{text}");
    assert!(text.contains("configmaps/default/cm"));
    assert!(!text.contains("v2-pw") && !text.contains("oops"), "no secret data in the report");

    // A wrong --prefix finds nothing: an error (exit 4), so --fail-on-plaintext cannot pass on
    // nothing; --allow-empty accepts it.
    let mut a = s(&["inspect", "-o", "summary", "--fail-on-plaintext", "--prefix", "/wrong-prefix"]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no objects under /wrong-prefix/secrets/") && err.contains("--allow-empty"), "{err}");
    a.push("--allow-empty".into());
    assert_eq!(envelope(&a).status.code(), Some(0));
}

#[tokio::test]
async fn decrypt_recovers_objects_through_socket_store_and_config() {
    let etcd = Etcd::start();
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    fill(&etcd, &p).await;
    let cfg = encryption_config(d.path(), &p.socket);

    // KMS v2 through the plugin socket, YAML like kubectl.
    let mut a = s(&["decrypt", "--etcd-key", "/registry/secrets/prod/kms2-1", "--plugin-socket", &p.socket]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let y = String::from_utf8_lossy(&out.stdout);
    assert!(y.contains("kind: Secret") && y.contains("name: kms2-1") && y.contains("namespace: prod"), "{y}");
    assert!(y.contains("password: djItcHc="), "base64 of v2-pw: {y}");

    // KMS v1 through the key store directly (no plugin), JSON.
    let mut a = s(&["decrypt", "-o", "json", "--etcd-key", "/registry/secrets/prod/kms1", "--data-dir"]);
    a.push(p.data_dir.to_string_lossy().into_owned());
    a.extend(etcd.args());
    let out = envelope(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["password"], "djEtcHc=");

    // Static keys from an EncryptionConfiguration.
    for (obj, pw) in [("gcm", "c3RhdGljLXB3"), ("cbc", "c3RhdGljLXB3"), ("sb", "c3RhdGljLXB3")] {
        let mut a = s(&[
            "decrypt",
            "-o",
            "json",
            "--etcd-key",
            &format!("/registry/secrets/legacy/{obj}"),
            "--encryption-config",
        ]);
        a.push(cfg.to_string_lossy().into_owned());
        a.extend(etcd.args());
        let out = envelope(&a);
        assert!(out.status.success(), "{obj}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["data"]["password"], pw, "{obj}");
    }

    // A raw value file plus its etcd key (etcd not needed).
    let raw = {
        let ch = tonic::transport::Endpoint::from_shared(etcd.endpoint.clone()).unwrap().connect().await.unwrap();
        let mut kv = KvClient::new(ch);
        let r = kv
            .range(envelope_proto::etcdserverpb::RangeRequest {
                key: b"/registry/secrets/prod/kms2-2".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        r.kvs[0].value.clone()
    };
    let f = d.path().join("value.bin");
    std::fs::write(&f, &raw).unwrap();
    let out = envelope(&s(&[
        "decrypt",
        "--value-file",
        f.to_str().unwrap(),
        "--etcd-key",
        "/registry/secrets/prod/kms2-2",
        "--plugin-socket",
        &p.socket,
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The wrong etcd key (AAD) fails with a clear message.
    let out = envelope(&s(&[
        "decrypt",
        "--value-file",
        f.to_str().unwrap(),
        "--etcd-key",
        "/registry/secrets/prod/other",
        "--plugin-socket",
        &p.socket,
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decryption failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A value moved to another key does not decrypt either.
    let mut a = s(&["decrypt", "--etcd-key", "/registry/secrets/prod/moved", "--plugin-socket", &p.socket]);
    a.extend(etcd.args());
    assert_eq!(envelope(&a).status.code(), Some(1));
    // Corrupt values give a clear error, not a crash.
    let mut a = s(&["decrypt", "--etcd-key", "/registry/secrets/broken/trunc", "--plugin-socket", &p.socket]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected a KMS v2 value") && err.contains("EncryptedObject does not decode"), "{err}");
    // A KMS value without an unwrapper says what to give.
    let mut a = s(&["decrypt", "--etcd-key", "/registry/secrets/prod/kms2-0"]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plugin-socket"));
}

#[tokio::test]
async fn inspect_over_tls_with_client_certificates() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().unwrap();
    // Fill through the CLI-independent path: a TLS client with the same certificates.
    let ca = std::fs::read(&tls.ca).unwrap();
    let cert = std::fs::read(&tls.client_cert).unwrap();
    let key = std::fs::read(&tls.client_key).unwrap();
    let cfg = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    let ch = tonic::transport::Endpoint::from_shared(etcd.endpoint.clone())
        .unwrap()
        .tls_config(cfg)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(ch);
    kv.put(PutRequest {
        key: b"/registry/secrets/default/a".to_vec(),
        value: secret("default", "a", "p"),
        ..Default::default()
    })
    .await
    .unwrap();

    let mut a = s(&["inspect", "-o", "json"]);
    a.extend(etcd.args());
    let out = envelope(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["total"], 1);

    // Without the client certificate etcd refuses us, and we say so.
    let out = envelope(&s(&["inspect", "--etcd", &etcd.endpoint, "--cacert", tls.ca.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

#[tokio::test]
async fn inspect_pages_through_many_keys() {
    let etcd = Etcd::start();
    let ch = tonic::transport::Endpoint::from_shared(etcd.endpoint.clone()).unwrap().connect().await.unwrap();
    let kv = KvClient::new(ch);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                let key = format!("/registry/secrets/ns{t}/s{i:04}");
                kv.put(PutRequest {
                    key: key.into_bytes(),
                    value: secret(&format!("ns{t}"), &format!("s{i}"), "p"),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut a = s(&["inspect", "-o", "summary", "--page-size", "7"]);
    a.extend(etcd.args());
    let out = envelope(&a);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Summary: 2400 object(s)"), "{text}");
}
