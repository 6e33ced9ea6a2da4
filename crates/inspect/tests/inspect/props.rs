//! Property tests: no input makes classify, decrypt or object decoding panic; truncated and
//! bit-flipped values are classified and rejected without panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use envelope_inspect::{
    Classified, DekSourceType, StaticProvider, classify, classify_with_names, decode_object, decrypt, writer,
};
use proptest::prelude::*;

const KEY: &[u8] = b"/registry/secrets/ns/name";
const SEED: [u8; 32] = [4u8; 32];
const DEK: [u8; 32] = [6u8; 32];

/// Runs everything on `value`; must not panic.
fn exercise(value: &[u8]) {
    let c = classify(KEY, value);
    let _ = c.to_string();
    let _ = (c.provider().as_str(), c.is_encrypted(), c.name());
    let _ = classify_with_names(KEY, value, &["p", "k:1", "key1"]);
    let _ = decrypt::kms_v2(KEY, value, &SEED);
    let _ = decrypt::kms_v2(KEY, value, &DEK[..16]);
    let _ = decrypt::kms_v1(KEY, value, "p", &DEK);
    for p in StaticProvider::ALL {
        let _ = decrypt::static_key(p, KEY, value, "key1", &DEK);
        let _ = decrypt::open_static(p, &DEK, value, KEY);
    }
    for t in [0, 1, 2] {
        let _ = decrypt::open_kms_v2_data(DekSourceType::from_i32(t), &SEED, value, KEY);
    }
    let _ = decrypt::open_kms_v1_data(&DEK, value, KEY);
    if let Ok(o) = decode_object(value) {
        let _ = o.to_json_pretty();
    }
    let mut framed = b"k8s\0".to_vec();
    framed.extend_from_slice(value);
    let _ = decode_object(&framed);
}

/// A valid value of each provider, around one Secret.
fn valid_values() -> Vec<Vec<u8>> {
    let meta = writer::new_object_meta("ns", "name", "uid", 1_600_000_000);
    let secret = writer::new_secret(meta, [("k".to_owned(), b"v".to_vec())].into(), "Opaque");
    let pt = writer::encode_secret(&secret);
    let env = writer::KmsV2Envelope {
        provider_name: "p".into(),
        key_id: "kid".into(),
        encrypted_dek_source: vec![1; 8],
        annotations: [("a.example.io".to_owned(), vec![2])].into(),
    };
    let mut out = vec![
        pt.to_vec(),
        writer::kms_v2_seed(KEY, &pt, &SEED, &env).unwrap(),
        writer::kms_v2_aes_gcm_key(KEY, &pt, &DEK, 1_000_000_001, &env).unwrap(),
        writer::kms_v1(KEY, &pt, "p", &DEK, &[9; 40]).unwrap(),
        writer::kms_v1_legacy_cbc(&pt, "p", &DEK, &[9; 40]).unwrap(),
    ];
    for p in StaticProvider::ALL {
        out.push(writer::static_key(p, KEY, &pt, "key1", &DEK).unwrap());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&value);
    }

    #[test]
    fn random_after_prefix_never_panics(
        prefix in prop::sample::select(vec![
            b"k8s:enc:kms:v2:p:".to_vec(), b"k8s:enc:kms:v1:p:".to_vec(),
            b"k8s:enc:aescbc:v1:key1:".to_vec(), b"k8s:enc:aesgcm:v1:key1:".to_vec(),
            b"k8s:enc:secretbox:v1:key1:".to_vec(), b"k8s\0".to_vec(), b"{".to_vec(),
        ]),
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut value = prefix;
        value.extend_from_slice(&rest);
        exercise(&value);
    }

    #[test]
    fn truncated_values_never_panic(which in 0usize..8, cut in any::<prop::sample::Index>()) {
        let values = valid_values();
        let v = &values[which % values.len()];
        let cut = cut.index(v.len());
        exercise(&v[..cut]);
    }

    #[test]
    fn bit_flips_never_panic_and_aead_rejects(which in 0usize..8, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let values = valid_values();
        let original = &values[which % values.len()];
        let mut v = original.clone();
        let i = pos.index(v.len());
        v[i] ^= 1 << bit;
        exercise(&v);
        // Authenticated providers never return a plaintext for a modified payload.
        if let Classified::StaticKey(s) = classify(KEY, original) {
            let prefix_len = original.len() - s.payload_len;
            if s.provider != StaticProvider::AesCbc && i >= prefix_len {
                prop_assert!(decrypt::static_key(s.provider, KEY, &v, "key1", &DEK).is_err());
            }
        }
    }
}

#[test]
fn every_truncation_of_every_value() {
    for v in valid_values() {
        for cut in 0..v.len() {
            exercise(&v[..cut]);
        }
    }
}
