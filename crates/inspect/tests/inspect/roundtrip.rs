//! writer → classify → decrypt → object, for every provider; wrong AAD and wrong keys fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::collections::BTreeMap;

use envelope_inspect::{
    Classified, DekSourceType, EncryptionConfig, Error, ProviderKind, StaticProvider, classify, classify_with_config,
    decode_object, decrypt, writer,
};

const KEY: &[u8] = b"/registry/secrets/prod/db-credentials";
const OTHER_KEY: &[u8] = b"/registry/secrets/prod/other";

fn secret_plaintext() -> Vec<u8> {
    let mut meta = writer::new_object_meta("prod", "db-credentials", "0b7e-uid", 1_700_000_000);
    meta.labels.insert("app".into(), "db".into());
    meta.annotations.insert("note".into(), "x".into());
    let data: BTreeMap<String, Vec<u8>> =
        [("password".to_owned(), b"s3cr3t\x00\xff".to_vec()), ("user".to_owned(), b"admin".to_vec())].into();
    writer::encode_secret(&writer::new_secret(meta, data, "Opaque")).to_vec()
}

fn check_secret(plaintext: &[u8]) {
    let object = decode_object(plaintext).expect("decodes");
    let s = object.summary();
    assert_eq!(
        (s.kind.as_str(), s.namespace.as_str(), s.name.as_str(), s.uid.as_str()),
        ("Secret", "prod", "db-credentials", "0b7e-uid")
    );
    assert_eq!(s.data_keys, ["password", "user"]);
    let expected = serde_json::json!({
        "apiVersion": "v1",
        "data": {"password": "czNjcjN0AP8=", "user": "YWRtaW4="},
        "kind": "Secret",
        "metadata": {
            "annotations": {"note": "x"},
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "labels": {"app": "db"},
            "name": "db-credentials",
            "namespace": "prod",
            "uid": "0b7e-uid"
        },
        "type": "Opaque"
    });
    assert_eq!(object.json(), &expected);
    assert!(object.to_json_pretty().contains("\"czNjcjN0AP8=\""));
}

fn envelope() -> writer::KmsV2Envelope {
    writer::KmsV2Envelope {
        provider_name: "our-kms".into(),
        key_id: "envelope-0123".into(),
        encrypted_dek_source: vec![1, 2, 3, 4],
        annotations: [("audit.kms.example.io".to_owned(), b"abc".to_vec())].into(),
    }
}

#[test]
fn kms_v2_seed_mode() {
    let pt = secret_plaintext();
    let seed = writer::random_seed().unwrap();
    let value = writer::kms_v2_seed(KEY, &pt, seed.as_slice(), &envelope()).unwrap();
    let c = classify(KEY, &value);
    assert_eq!(c.provider(), ProviderKind::KmsV2);
    assert_eq!(c.provider().as_str(), "kms-v2");
    assert!(c.is_encrypted());
    assert_eq!(c.name(), Some("our-kms"));
    let Classified::KmsV2(v) = &c else { panic!() };
    assert_eq!(v.key_id, "envelope-0123");
    assert_eq!(v.dek_source_type, DekSourceType::HkdfSha256XNonceAesGcmSeed);
    assert_eq!(v.encrypted_dek_source, [1, 2, 3, 4]);
    assert_eq!(v.encrypted_data_len, 32 + 12 + pt.len() + 16);
    let line = c.to_string();
    assert!(line.contains("audit.kms.example.io") && line.contains("HKDF"), "{line}");

    let out = decrypt::kms_v2(KEY, &value, seed.as_slice()).unwrap();
    assert_eq!(out.as_slice(), pt.as_slice());
    check_secret(&out);
    assert!(matches!(decrypt::kms_v2(OTHER_KEY, &value, seed.as_slice()), Err(Error::DecryptionFailed { .. })));
    assert!(decrypt::kms_v2(KEY, &value, &[9u8; 32]).is_err());
    assert!(matches!(decrypt::kms_v2(KEY, &value, &[9u8; 16]), Err(Error::InvalidKey(_))));
    // Two writes differ (fresh info and nonce).
    assert_ne!(value, writer::kms_v2_seed(KEY, &pt, seed.as_slice(), &envelope()).unwrap());
}

#[test]
fn kms_v2_key_mode() {
    let pt = secret_plaintext();
    let dek = [5u8; 32];
    let value = writer::kms_v2_aes_gcm_key(KEY, &pt, &dek, 1_000_000_001, &envelope()).unwrap();
    let Classified::KmsV2(v) = classify(KEY, &value) else { panic!() };
    assert_eq!(v.dek_source_type, DekSourceType::AesGcmKey);
    check_secret(&decrypt::kms_v2(KEY, &value, &dek).unwrap());
    assert!(decrypt::kms_v2(OTHER_KEY, &value, &dek).is_err());
}

#[test]
fn kms_v2_writer_validates_like_apiserver() {
    let pt = secret_plaintext();
    let seed = [1u8; 32];
    let mut e = envelope();
    e.annotations.insert("kms.example.io/bad".into(), vec![]);
    assert!(matches!(writer::kms_v2_seed(KEY, &pt, &seed, &e), Err(Error::InvalidInput(_))));
    let mut e = envelope();
    e.key_id.clear();
    assert!(writer::kms_v2_seed(KEY, &pt, &seed, &e).is_err());
    let mut e = envelope();
    e.encrypted_dek_source = vec![0; 1025];
    assert!(writer::kms_v2_seed(KEY, &pt, &seed, &e).is_err());
    let mut e = envelope();
    e.provider_name = "a:b".into();
    assert!(writer::kms_v2_seed(KEY, &pt, &seed, &e).is_err());
    assert!(matches!(writer::kms_v2_seed(KEY, &pt, &[1u8; 31], &envelope()), Err(Error::InvalidKey(_))));
}

#[test]
fn kms_v2_unknown_dek_source_type_is_reported() {
    let data = writer::seal_aes_gcm(&[1u8; 32], &[0u8; 12], KEY, b"x").unwrap();
    let value = writer::kms_v2_value(&envelope(), DekSourceType::from_i32(7), data).unwrap();
    let c = classify(KEY, &value);
    let Classified::KmsV2(v) = &c else { panic!("{c}") };
    assert_eq!(v.dek_source_type, DekSourceType::Unknown(7));
    assert!(c.to_string().contains("UNKNOWN(7)"));
    assert!(matches!(decrypt::kms_v2(KEY, &value, &[1u8; 32]), Err(Error::UnsupportedDekSourceType(7))));
}

#[test]
fn kms_v1_gcm_and_legacy_cbc() {
    let pt = secret_plaintext();
    let dek = [3u8; 32];
    let wrapped = vec![0xab; 300];
    let value = writer::kms_v1(KEY, &pt, "legacy:kms", &dek, &wrapped).unwrap();
    // Default split stops at the first ':'; the configured name resolves it.
    assert_eq!(classify(KEY, &value).name(), Some("legacy"));
    let c = envelope_inspect::classify_with_names(KEY, &value, &["legacy:kms"]);
    let Classified::KmsV1(v) = &c else { panic!("{c}") };
    assert_eq!(v.provider_name, "legacy:kms");
    assert_eq!(v.wrapped_dek, wrapped);
    let out = decrypt::kms_v1(KEY, &value, "legacy:kms", &dek).unwrap();
    assert_eq!(out.cipher, decrypt::KmsV1Cipher::AesGcm);
    check_secret(&out.plaintext);
    assert!(matches!(
        decrypt::kms_v1(OTHER_KEY, &value, "legacy:kms", &dek),
        Err(Error::DecryptionFailed { provider: ProviderKind::KmsV1 })
    ));

    let value = writer::kms_v1_legacy_cbc(&pt, "p", &dek, &wrapped).unwrap();
    let out = decrypt::kms_v1(OTHER_KEY, &value, "p", &dek).unwrap();
    assert_eq!(out.cipher, decrypt::KmsV1Cipher::AesCbc);
    check_secret(&out.plaintext);
    assert!(decrypt::kms_v1(KEY, &value, "q", &dek).is_err());
}

#[test]
fn static_providers() {
    let pt = secret_plaintext();
    for provider in StaticProvider::ALL {
        for key_len in [16usize, 24, 32] {
            if !provider.is_valid_key_len(key_len) {
                assert!(writer::static_key(provider, KEY, &pt, "k", &vec![1; key_len]).is_err());
                continue;
            }
            let key: Vec<u8> = (0..key_len as u8).collect();
            let value = writer::static_key(provider, KEY, &pt, "key1", &key).unwrap();
            let c = classify(KEY, &value);
            assert_eq!(c.provider(), provider.kind(), "{c}");
            assert_eq!(c.provider().as_str(), provider.as_str());
            assert_eq!(c.name(), Some("key1"));
            let out = decrypt::static_key(provider, KEY, &value, "key1", &key).unwrap();
            check_secret(&out);
            // Only aesgcm binds the etcd key.
            let moved = decrypt::static_key(provider, OTHER_KEY, &value, "key1", &key);
            assert_eq!(moved.is_ok(), provider != StaticProvider::AesGcm, "{provider}");
            // Wrong key, wrong name, wrong provider.
            let mut wrong = key.clone();
            wrong[0] ^= 1;
            if provider != StaticProvider::AesCbc {
                assert!(decrypt::static_key(provider, KEY, &value, "key1", &wrong).is_err());
            }
            assert!(decrypt::static_key(provider, KEY, &value, "key2", &key).is_err());
            let other = StaticProvider::ALL.into_iter().find(|p| *p != provider).unwrap();
            assert!(matches!(decrypt::static_key(other, KEY, &value, "key1", &key), Err(Error::WrongProvider { .. })));
        }
    }
}

const CONFIG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc:
          keys:
            - {name: "new:key", secret: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
            - {name: old, secret: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}
      - secretbox:
          keys:
            - {name: sb, secret: "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="}
      - identity: {}
"#;

#[test]
fn decrypt_with_config() {
    let config = EncryptionConfig::from_yaml(CONFIG).unwrap();
    let pt = secret_plaintext();
    let cases = [
        (StaticProvider::AesCbc, "new:key", [0u8; 32]),
        (StaticProvider::AesCbc, "old", [1u8; 32]),
        (StaticProvider::Secretbox, "sb", [2u8; 32]),
    ];
    for (provider, name, key) in cases {
        let value = writer::static_key(provider, KEY, &pt, name, &key).unwrap();
        assert_eq!(classify_with_config(KEY, &value, &config).name(), Some(name));
        let out = decrypt::with_config(KEY, &value, &config).unwrap();
        assert_eq!((out.provider, out.key_name.as_str()), (provider, name));
        check_secret(&out.plaintext);
    }
    // A key the config does not have.
    let value = writer::static_key(StaticProvider::AesGcm, KEY, &pt, "gone", &[0u8; 32]).unwrap();
    assert!(matches!(
        decrypt::with_config(KEY, &value, &config),
        Err(Error::NoMatchingKey { provider: ProviderKind::AesGcm, .. })
    ));
    // Same name, wrong secret.
    let value = writer::static_key(StaticProvider::Secretbox, KEY, &pt, "sb", &[7u8; 32]).unwrap();
    assert!(matches!(decrypt::with_config(KEY, &value, &config), Err(Error::DecryptionFailed { .. })));
    // Not a static-key value.
    assert!(matches!(
        decrypt::with_config(KEY, &pt, &config),
        Err(Error::WrongProvider { found: ProviderKind::Identity, .. })
    ));
}

#[test]
fn identity_values() {
    let pt = secret_plaintext();
    let c = classify(KEY, &pt);
    assert_eq!(c, Classified::IdentityProtobuf);
    assert!(!c.is_encrypted());
    assert_eq!(c.provider().as_str(), "identity");
    check_secret(&pt);

    let json = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","namespace":"ns","uid":"u","resourceVersion":"5"},"spec":{"size":3}}"#;
    assert_eq!(classify(KEY, json), Classified::IdentityJson);
    let object = decode_object(json).unwrap();
    assert_eq!(object.encoding(), envelope_inspect::ObjectEncoding::Json);
    let s = object.summary();
    assert_eq!((s.kind.as_str(), s.namespace.as_str(), s.name.as_str()), ("Widget", "ns", "w"));
    assert!(object.json()["metadata"].get("resourceVersion").is_none());
    assert_eq!(object.json()["spec"]["size"], 3);
}

#[test]
fn config_map_and_other_kinds() {
    let meta = writer::new_object_meta("kube-system", "cfg", "u-2", 0);
    let cm = writer::new_config_map(
        meta.clone(),
        [("a.conf".to_owned(), "x=1".to_owned())].into(),
        [("blob".to_owned(), vec![0u8, 1, 2])].into(),
    );
    let pt = writer::encode_config_map(&cm);
    let object = decode_object(&pt).unwrap();
    assert_eq!(object.summary().data_keys, ["a.conf", "blob"]);
    assert_eq!(
        object.json(),
        &serde_json::json!({
            "apiVersion": "v1",
            "binaryData": {"blob": "AAEC"},
            "data": {"a.conf": "x=1"},
            "kind": "ConfigMap",
            "metadata": {
                "creationTimestamp": "1970-01-01T00:00:00Z",
                "name": "cfg",
                "namespace": "kube-system",
                "uid": "u-2"
            }
        })
    );

    // Any other built-in kind: metadata from field 1; other fields skipped.
    use prost::Message;
    let mut raw = envelope_proto::k8s::ObjectMetadataOnly { metadata: Some(meta) }.encode_to_vec();
    raw.extend_from_slice(&[0x12, 0x03, b'a', b'b', b'c']); // field 2 (a spec), skipped
    let pt = writer::encode_object("apps/v1", "Deployment", &raw);
    let object = decode_object(&pt).unwrap();
    assert!(!object.is_complete());
    let s = object.summary();
    assert_eq!(
        (s.api_version.as_str(), s.kind.as_str(), s.namespace.as_str(), s.name.as_str()),
        ("apps/v1", "Deployment", "kube-system", "cfg")
    );
    assert_eq!(object.json()["apiVersion"], "apps/v1");
    assert!(object.json().get("spec").is_none());
}

#[test]
fn classification_of_malformed_values() {
    let corrupt = |v: &[u8]| match classify(KEY, v) {
        Classified::Corrupt(c) => c,
        other => panic!("expected corrupt, got {other}"),
    };
    // KMS v1: truncated length, length past the end, zero length.
    let c = corrupt(b"k8s:enc:kms:v1:p:\x00");
    assert_eq!((c.claimed, c.name.as_deref()), (ProviderKind::KmsV1, Some("p")));
    assert!(c.reason.contains("length"), "{}", c.reason);
    assert!(corrupt(b"k8s:enc:kms:v1:p:\x01\x00abc").reason.contains("exceeds"));
    assert!(corrupt(b"k8s:enc:kms:v1:p:\x00\x00abc").reason.contains("0"));
    // KMS v2: not protobuf; empty fields.
    let c = corrupt(b"k8s:enc:kms:v2:p:\xff\xff\xff");
    assert!(c.reason.contains("does not decode"), "{}", c.reason);
    assert_eq!(c.claimed, ProviderKind::KmsV2);
    assert!(corrupt(b"k8s:enc:kms:v2:p:").reason.contains("encryptedData is empty"));
    let obj = envelope_proto::v2::EncryptedObject {
        encrypted_data: vec![0; 100],
        key_id: String::new(),
        encrypted_dek_source: vec![1],
        annotations: Default::default(),
        encrypted_dek_source_type: 1,
    };
    let mut v = b"k8s:enc:kms:v2:p:".to_vec();
    v.extend_from_slice(&prost::Message::encode_to_vec(&obj));
    assert!(corrupt(&v).reason.contains("keyID is empty"));
    // Static: short payloads, CBC block size, missing/empty names.
    assert!(corrupt(b"k8s:enc:aesgcm:v1:k:short").reason.contains("shorter"));
    let mut v = b"k8s:enc:aescbc:v1:k:".to_vec();
    v.extend_from_slice(&[0; 33]);
    assert!(corrupt(&v).reason.contains("blocks"));
    assert!(corrupt(b"k8s:enc:secretbox:v1:noname").reason.contains("':'"));
    assert!(corrupt(b"k8s:enc:secretbox:v1::xyz").reason.contains("empty name"));
    let c = corrupt(b"k8s:enc:aesgcm:v1:\xff:xyz");
    assert!(c.reason.contains("UTF-8"));
    assert!(classify(KEY, b"k8s:enc:aesgcm:v1:\xff:xyz").is_encrypted());
    assert_eq!(classify(KEY, b"k8s:enc:aesgcm:v1:\xff:xyz").provider().as_str(), "corrupt");

    // Unknown prefixes and unrecognised bytes.
    match classify(KEY, b"k8s:enc:kms:v3:p:data") {
        Classified::UnknownPrefix { prefix } => assert_eq!(prefix, "k8s:enc:kms:v3:"),
        other => panic!("{other}"),
    }
    match classify(KEY, b"k8s:enc:rot13:v1:k:data") {
        Classified::UnknownPrefix { prefix } => assert_eq!(prefix, "k8s:enc:rot13:v1:"),
        other => panic!("{other}"),
    }
    for v in [b"".as_slice(), b"hello", b"k8s", b"k8s:en", b"\x00\x01"] {
        let c = classify(KEY, v);
        assert!(matches!(c, Classified::Unrecognized { .. }), "{c}");
        assert_eq!(c.provider().as_str(), "unknown");
        assert!(!c.is_encrypted());
    }
}

#[test]
fn kinds_have_stable_names() {
    let names: Vec<_> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ["identity", "aescbc", "aesgcm", "secretbox", "kms-v1", "kms-v2", "unknown", "corrupt"]);
}

#[test]
fn debug_output_hides_plaintext() {
    let pt = secret_plaintext();
    let value = writer::static_key(StaticProvider::Secretbox, KEY, &pt, "sb", &[2u8; 32]).unwrap();
    let config = EncryptionConfig::from_yaml(CONFIG).unwrap();
    let out = decrypt::with_config(KEY, &value, &config).unwrap();
    let dbg = format!("{out:?}");
    assert!(dbg.contains("bytes>") && !dbg.contains("115, 51"), "{dbg}");
    let object = decode_object(&out.plaintext).unwrap();
    let dbg = format!("{object:?}");
    assert!(dbg.contains("db-credentials") && !dbg.contains("czNjcjN0"), "{dbg}");
    let v1 = writer::kms_v1(KEY, &pt, "p", &[3u8; 32], &[1]).unwrap();
    let dbg = format!("{:?}", decrypt::kms_v1(KEY, &v1, "p", &[3u8; 32]).unwrap());
    assert!(dbg.contains("AesGcm") && dbg.contains("bytes>"), "{dbg}");
}
