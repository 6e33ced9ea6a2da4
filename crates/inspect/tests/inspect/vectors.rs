//! The test vectors of spec §11: recorded kube-apiserver output (§11.1–§11.3) and
//! self-computed values (§11.4).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use base64::Engine as _;
use envelope_inspect::{
    Classified, DekSourceType, ObjectEncoding, ProviderKind, StaticProvider, classify, decode_object, decrypt, writer,
};
use prost::Message;

use crate::unhex;

const KEY_11_1: &[u8] = b"/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/kms-v2-legacy-data/dek-source-hkdf-sha256-xnonce-aes-gcm-seed";

const VALUE_11_1: &str = "
6b38733a656e633a6b6d733a76323a6b6d732d70726f76696465723a0ad103120f87aea2a2f54a1106d0be8a81b615df
3448a3b769935e29e569e27ffd6fee221730b70aa00bece0fa092309c696f6c7a77701b9abb3f4dfec9e4a9524265a3d
8a774163a5b23b09d5f905c145298bb814c9da147b490d563fe53af0424d9badaa486e3e572f51a3f5bae7cb9a0ae722
a75c708cba32f2b0783cc484889af1b53a643d7ae3c32603996d96e75ce3a3d769b20c8467f934d20cd67eedacf81bc6
282c5bd1ffba89c8874402293a77544d3132b5fd6cd2f2851230d3d961616bcedd49d6a50f6b32f649d0f9c2da0bc597
d7d7bb83d6f71abf1369488fe4b323f3dfc824790d4c28465c587486bbe54b883d92e904f7301e093eac3b9ee6f02bdb
99341d1a5639d5842d67f3c75a00f7330ee7a6cfc4fce0b21fa0bb1a81b3e4d7a67fc60894cd89ad40ac8101350fe841
e942fb32816f9c3f2a0c8c15a82922e8ff8d38d5214f17c5e38d8083d3c2b4ca313bf7b0f49078a6019585c0aff68251
6babc1823c4493cf0ddbdf1c941751fa53e6cbd458c6bf801dc41c9d503734824a4b0b79e929bc6859becc7ce497dd3c
3b33904a07ee23b279e30960efef1f226b8b96a098d9ff73de26b7a60ef17f32cd8562e3da3522635c4be231a2ec601b
e552e66a08401837e1db04f6624e4f0e1201311a2c2f2b576e4b5851454d2f416858494359524e4265476b2b57537542
2b374f427553594a54625036365a79633d22320a1b6c6f63616c2d6b656b2e6b6d732e6b756265726e657465732e696f
1213656e637279707465642d6c6f63616c2d6b656b2801";

const KEY_11_2: &[u8] =
    b"/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/kms-v2-legacy-data/dek-source-aes-gcm-key";

const VALUE_11_2: &str = "
6b38733a656e633a6b6d733a76323a6b6d732d70726f76696465723a0a8a03b0c699dc01ca9a3b000000008c800bf01d
4b6f7b300bb5d5c5831ab50ecfd75665ede982b8df45ed4d6bcf2115c00b09825768209e8f1b5c3908a480026df45014
7aeef78c1a846e35fd478376230ed40c83597748e11cbf12c61bba8b7208827af8db60a75d50b1e6214c628db8491a45
4ca0ae2bbe15528e9b0634f650b63b9fa68d96b201a18ee461df2f9075de369ac2cdbb62882b16983de903ddd7487643
0ae58c76057e0aab585f4e9a847770a8130f82593978ed8915b9e1eaa690c660520a3004f2a6d1a5850a6bf4cfe4756c
1c2a5b4112a0d9f2b52182e400a44c2726f5706c6e22e03d0c5be1b0553937117cda4e6bc33dc2f2853c371e01b8a9f4
89db7ee18ce11f05424057cabc530ae8819b4c598624f601dd9dcd1de9025df469dafac20e5572c544cabd646213befe
1cc5e184ccdf26936a1e4b04ba0616850e1fca089006114b9d5b0d56e845d528910c6ed4109c481cdc9d5894c881351b
8cbb7af9486f7b1d11329046e7d868a8a1f68c8c76cab231f92382a3be376564d914f306ffb7dfab691201311a2c6761
66497677543041536f4b645a2f44314c32536c4837334c554d6a3571613368726f6c6a6653353177633d22320a1b6c6f
63616c2d6b656b2e6b6d732e6b756265726e657465732e696f1213656e637279707465642d6c6f63616c2d6b656b";

/// The upstream test plugin "wraps" by base64-encoding, so unwrapping is base64-decoding.
fn unwrap_test_plugin(wrapped: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(wrapped).expect("test plugin ciphertext is base64")
}

fn encrypted_data(value: &[u8]) -> Vec<u8> {
    let payload = value.strip_prefix(b"k8s:enc:kms:v2:kms-provider:".as_slice()).expect("prefix");
    envelope_proto::v2::EncryptedObject::decode(payload).expect("EncryptedObject").encrypted_data
}

fn check_legacy_secret(plaintext: &[u8], name: &str) {
    let object = decode_object(plaintext).expect("object decodes");
    assert_eq!(object.encoding(), ObjectEncoding::Protobuf);
    assert!(object.is_complete());
    let s = object.summary();
    assert_eq!((s.api_version.as_str(), s.kind.as_str()), ("v1", "Secret"));
    assert_eq!(s.name, name);
    assert_eq!(s.namespace, "kms-v2-legacy-data");
    assert_eq!(s.data_keys, vec!["api_key".to_owned()]);
    let json = object.json();
    assert_eq!(json["type"], "Opaque");
    assert_eq!(json["metadata"]["name"], name);
    assert_eq!(json["metadata"]["namespace"], "kms-v2-legacy-data");
    assert!(json["metadata"].get("resourceVersion").is_none());
    let api_key = base64::engine::general_purpose::STANDARD
        .decode(json["data"]["api_key"].as_str().expect("base64 string"))
        .expect("base64");
    assert_eq!(api_key, b"086a7ffc-0225-11e8-ba89-0ed5f89f718b");
}

#[test]
fn kms_v2_hkdf_seed_recorded_11_1() {
    let value = unhex(VALUE_11_1);
    assert_eq!(value.len(), 599);
    let Classified::KmsV2(v) = classify(KEY_11_1, &value) else {
        panic!("not KMS v2: {}", classify(KEY_11_1, &value));
    };
    assert_eq!(v.provider_name, "kms-provider");
    assert_eq!(v.key_id, "1");
    assert_eq!(v.dek_source_type, DekSourceType::HkdfSha256XNonceAesGcmSeed);
    assert_eq!(v.encrypted_dek_source, b"/+WnKXQEM/AhXICYRNBeGk+WSuB+7OBuSYJTbP66Zyc=");
    assert_eq!(
        v.annotations.get("local-kek.kms.kubernetes.io").map(Vec::as_slice),
        Some(b"encrypted-local-kek".as_slice())
    );
    assert_eq!(v.annotation_keys().collect::<Vec<_>>(), ["local-kek.kms.kubernetes.io"]);
    assert_eq!(v.encrypted_data_len, 465);
    assert!(v.is_stale("2"));
    assert!(!v.is_stale("1"));

    let seed = unwrap_test_plugin(&v.encrypted_dek_source);
    assert_eq!(seed, unhex("ffe5a729740433f0215c809844d05e1a4f964ae07eece06e4982536cfeba6727"));

    let data = encrypted_data(&value);
    let info: [u8; 32] = data[..32].try_into().unwrap();
    assert_eq!(info.to_vec(), unhex("120f87aea2a2f54a1106d0be8a81b615df3448a3b769935e29e569e27ffd6fee"));
    assert_eq!(data[32..44].to_vec(), unhex("221730b70aa00bece0fa0923"));
    let k = decrypt::derive_kms_v2_key(&seed, &info).unwrap();
    assert_eq!(k.to_vec(), unhex("5cad1e7c7388618e86009092cac3eef592e41b9af5df436a59c0ab9570ac0d7f"));

    let plaintext = decrypt::kms_v2(KEY_11_1, &value, &seed).expect("decrypts");
    assert_eq!(plaintext.len(), 405);
    assert!(plaintext.starts_with(b"k8s\0"));
    check_legacy_secret(&plaintext, "dek-source-hkdf-sha256-xnonce-aes-gcm-seed");
    let object = decode_object(&plaintext).unwrap();
    assert_eq!(object.summary().uid, "87c514b4-9c26-4041-ad0d-0d07dca557ed");
    assert_eq!(object.json()["metadata"]["uid"], "87c514b4-9c26-4041-ad0d-0d07dca557ed");

    // runtime.Unknown fields 3 and 4 are present and empty.
    let unknown = envelope_proto::k8s::Unknown::decode(&plaintext[4..]).unwrap();
    assert_eq!(unknown.content_encoding.as_deref(), Some(""));
    assert_eq!(unknown.content_type.as_deref(), Some(""));

    // The writer reproduces kube-apiserver's serialization byte for byte.
    let secret = envelope_proto::k8s::Secret::decode(unknown.raw.as_deref().unwrap()).unwrap();
    assert_eq!(writer::encode_secret(&secret).as_slice(), plaintext.as_slice());

    // Wrong etcd key (AAD) and wrong seed fail.
    assert!(matches!(
        decrypt::kms_v2(b"/registry/secrets/other/name", &value, &seed),
        Err(envelope_inspect::Error::DecryptionFailed { provider: ProviderKind::KmsV2 })
    ));
    assert!(decrypt::kms_v2(KEY_11_1, &value, &[0u8; 32]).is_err());
}

#[test]
fn kms_v2_aes_gcm_key_recorded_11_2() {
    let value = unhex(VALUE_11_2);
    assert_eq!(value.len(), 526);
    let Classified::KmsV2(v) = classify(KEY_11_2, &value) else {
        panic!("not KMS v2");
    };
    assert_eq!(v.dek_source_type, DekSourceType::AesGcmKey);
    assert_eq!(v.key_id, "1");
    assert!(v.is_stale("1"), "legacy mode is stale");
    let dek = unwrap_test_plugin(&v.encrypted_dek_source);
    assert_eq!(dek, unhex("81a7c8bf04f4012a0a759fc3d4bd92947ef72d4323e6a6b786ba258df4b9d707"));
    let data = encrypted_data(&value);
    assert_eq!(data[..12].to_vec(), unhex("b0c699dc01ca9a3b00000000"));
    assert_eq!(u64::from_le_bytes(data[4..12].try_into().unwrap()), 1_000_000_001);

    let plaintext = decrypt::kms_v2(KEY_11_2, &value, &dek).expect("decrypts");
    check_legacy_secret(&plaintext, "dek-source-aes-gcm-key");
    assert!(decrypt::kms_v2(KEY_11_1, &value, &dek).is_err());
}

#[test]
fn extended_nonce_gcm_recorded_11_3() {
    let seed = unhex("5d40323a820ff95561675e3b95e81867c5fdd561d35a88a2d08b08aa9d4fcf5c");
    let ct = unhex(
        "2442759e33945fbad709db577a0f037fd8a709fc76979b8942209debcecb9d57efe3d6ff6a1ef6ee9a5003b9833b3043cec1e47b35175b151107a8d2416b0e296bbf66b5d102fcefdf9a78f293d271",
    );
    assert_eq!(ct.len(), 79);
    let info: [u8; 32] = ct[..32].try_into().unwrap();
    assert_eq!(
        decrypt::derive_kms_v2_key(&seed, &info).unwrap().to_vec(),
        unhex("6e58b7659c304b0c382f42f16bd700465def1dead80bf6f1bf1d52073bdb0c00")
    );
    let pt = decrypt::open_kms_v2_data(DekSourceType::HkdfSha256XNonceAesGcmSeed, &seed, &ct, b"bamboo").unwrap();
    assert_eq!(pt.as_slice(), b"pandas are the best");
    assert!(decrypt::open_kms_v2_data(DekSourceType::HkdfSha256XNonceAesGcmSeed, &seed, &ct, b"bambo0").is_err());

    let gcm = unhex("9f27c8fcea8a58c467d8e437dbf2d85955f9b4bd912f4ef967d788a0cb07797dac0a3f0a0845605ca85ac8562b4ae1");
    let pt = decrypt::open_aes_gcm(b"snorlax_awesomes", &gcm, b"bamboo").unwrap();
    assert_eq!(pt.as_slice(), b"pandas are the best");
}

const KMS_V1_11_4: &str = "6b38733a656e633a6b6d733a76313a70313a0008aaaaaaaaaaaaaaaa404142434445464748494a4b8adcc24f49170b80e2569f225dfef19b100891f731";
const AESGCM_11_4: &str =
    "6b38733a656e633a61657367636d3a76313a6b6579313a404142434445464748494a4b8adcc24f49170b80e2569f225dfef19b100891f731";

#[test]
fn self_computed_11_4() {
    let aad = b"/registry/secrets/default/s1";
    let dek: Vec<u8> = (0u8..32).collect();
    let nonce: [u8; 12] = std::array::from_fn(|i| 0x40 + i as u8);

    // KMS v1
    let data = writer::seal_aes_gcm(&dek, &nonce, aad, b"hello").unwrap();
    let v1 = writer::kms_v1_value("p1", &[0xaa; 8], &data).unwrap();
    assert_eq!(v1, unhex(KMS_V1_11_4));
    match classify(aad, &v1) {
        Classified::KmsV1(v) => {
            assert_eq!(v.provider_name, "p1");
            assert_eq!(v.wrapped_dek, vec![0xaa; 8]);
            assert_eq!(v.wrapped_dek_len(), 8);
            assert_eq!(v.data_len, 12 + 5 + 16);
        }
        other => panic!("{other}"),
    }
    let out = decrypt::kms_v1(aad, &v1, "p1", &dek).unwrap();
    assert_eq!(out.plaintext.as_slice(), b"hello");
    assert_eq!(out.cipher, decrypt::KmsV1Cipher::AesGcm);

    // aesgcm
    let mut v = StaticProvider::AesGcm.prefix("key1");
    v.extend_from_slice(&data);
    assert_eq!(v, unhex(AESGCM_11_4));
    match classify(aad, &v) {
        Classified::StaticKey(s) => {
            assert_eq!(s.provider, StaticProvider::AesGcm);
            assert_eq!(s.key_name, "key1");
        }
        other => panic!("{other}"),
    }
    let pt = decrypt::static_key(StaticProvider::AesGcm, aad, &v, "key1", &dek).unwrap();
    assert_eq!(pt.as_slice(), b"hello");
    assert!(decrypt::static_key(StaticProvider::AesGcm, b"/registry/x", &v, "key1", &dek).is_err());
}

/// secretbox and aescbc payloads computed with independent implementations (PyNaCl's
/// `SecretBox.encrypt`, Python `cryptography` AES-CBC + PKCS7): key = bytes 0x00..0x1f,
/// nonce/IV = bytes 0x40.., plaintext `hello`.
#[test]
fn independent_secretbox_and_aescbc() {
    let key: Vec<u8> = (0u8..32).collect();
    let sb_nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
    let sb = unhex("404142434445464748494a4b4c4d4e4f5051525354555657158ae64c372f6f919aadf164cb7983232272391555");
    assert_eq!(writer::seal_secretbox(&key, &sb_nonce, b"hello").unwrap(), sb);
    assert_eq!(decrypt::open_secretbox(&key, &sb).unwrap().as_slice(), b"hello");
    let mut value = StaticProvider::Secretbox.prefix("k");
    value.extend_from_slice(&sb);
    let pt = decrypt::static_key(StaticProvider::Secretbox, b"/any", &value, "k", &key).unwrap();
    assert_eq!(pt.as_slice(), b"hello");

    let iv: [u8; 16] = std::array::from_fn(|i| 0x40 + i as u8);
    let cbc = unhex("404142434445464748494a4b4c4d4e4ffd16f7efb1cf350ec4b42e82608cadd8");
    assert_eq!(writer::seal_aes_cbc(&key, &iv, b"hello").unwrap(), cbc);
    assert_eq!(decrypt::open_aes_cbc(&key, &cbc).unwrap().as_slice(), b"hello");
}
