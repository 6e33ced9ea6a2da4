//! Produce stored values exactly as kube-apiserver writes them — for tests, fixtures and
//! benchmarks (seeding an etcd with realistic data), and as the executable inverse of
//! [`crate::decrypt`].
//!
//! * Objects: [`new_object_meta`], [`new_secret`], [`new_config_map`] build messages with the
//!   fields Go always emits; [`encode_secret`], [`encode_config_map`] and [`encode_object`]
//!   produce `k8s\0` + `runtime.Unknown` (map entries sorted by key, like Go's marshaller).
//! * Encryption with fresh random nonces (AAD = etcd key where the provider uses one):
//!   [`kms_v2_seed`] (mode 1, the default since 1.29), [`kms_v2_aes_gcm_key`] (mode 0),
//!   [`kms_v1`] (AES-GCM, ≥ 1.25), [`kms_v1_legacy_cbc`] (≤ 1.24), [`static_key`].
//! * Deterministic `seal_*` primitives with caller-chosen nonces, for test vectors.
//!
//! Plaintexts passed in are not copied beyond what encryption needs; returned values are
//! ciphertext (or, for the `encode_*` functions, plaintext the caller should treat as secret).

use std::collections::BTreeMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use envelope_proto::k8s;
use prost::Message;
use zeroize::Zeroizing;

use crate::classify::{DekSourceType, PROTOBUF_MAGIC, ProviderKind, StaticProvider, check_kms_v2_fields};
use crate::decrypt::{MIN_KMS_V2_SEED_LEN, cbc_algorithm, derive_kms_v2_key, gcm_algorithm};
use crate::error::{Error, Result};

/// What a KMS v2 plugin's Encrypt returned for the seed/DEK, stored next to the data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KmsV2Envelope {
    /// The provider name from the EncryptionConfiguration (no `:`).
    pub provider_name: String,
    /// The plugin's key_id (non-empty, ≤ 1024 bytes).
    pub key_id: String,
    /// The plugin's ciphertext of the seed/DEK (non-empty, ≤ 1024 bytes).
    pub encrypted_dek_source: Vec<u8>,
    /// The plugin's annotations (FQDN keys, ≤ 32 KiB in total).
    pub annotations: BTreeMap<String, Vec<u8>>,
}

// ---------------------------------------------------------------------------------------------
// Objects

/// `ObjectMeta` as kube-apiserver stores it for a new object: name, generateName (empty),
/// namespace, selfLink (empty), uid, resourceVersion (empty), generation 0 and
/// creationTimestamp are always present; the rest is empty.
pub fn new_object_meta(namespace: &str, name: &str, uid: &str, created_unix: i64) -> k8s::ObjectMeta {
    k8s::ObjectMeta {
        name: Some(name.to_owned()),
        generate_name: Some(String::new()),
        namespace: Some(namespace.to_owned()),
        self_link: Some(String::new()),
        uid: Some(uid.to_owned()),
        resource_version: Some(String::new()),
        generation: Some(0),
        creation_timestamp: Some(k8s::Time { seconds: Some(created_unix), nanos: Some(0) }),
        ..Default::default()
    }
}

/// A Secret with `data` and `type` (e.g. `Opaque`); `immutable` unset.
pub fn new_secret(metadata: k8s::ObjectMeta, data: BTreeMap<String, Vec<u8>>, secret_type: &str) -> k8s::Secret {
    k8s::Secret {
        metadata: Some(metadata),
        data,
        r#type: Some(secret_type.to_owned()),
        string_data: BTreeMap::new(),
        immutable: None,
    }
}

/// A ConfigMap with `data` and `binaryData`; `immutable` unset.
pub fn new_config_map(
    metadata: k8s::ObjectMeta,
    data: BTreeMap<String, String>,
    binary_data: BTreeMap<String, Vec<u8>>,
) -> k8s::ConfigMap {
    k8s::ConfigMap { metadata: Some(metadata), data, binary_data, immutable: None }
}

/// `k8s\0` + `runtime.Unknown{typeMeta{api_version, kind}, raw, contentEncoding "", contentType ""}`.
pub fn encode_object(api_version: &str, kind: &str, raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let unknown = k8s::Unknown {
        type_meta: Some(k8s::TypeMeta { api_version: Some(api_version.to_owned()), kind: Some(kind.to_owned()) }),
        raw: Some(raw.to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let body = Zeroizing::new(unknown.encode_to_vec());
    let mut raw_copy = unknown.raw;
    if let Some(r) = raw_copy.as_mut() {
        zeroize::Zeroize::zeroize(r);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(PROTOBUF_MAGIC.len() + body.len()));
    out.extend_from_slice(PROTOBUF_MAGIC);
    out.extend_from_slice(&body);
    out
}

/// A Secret as kube-apiserver serializes it (`v1`, `Secret`).
pub fn encode_secret(secret: &k8s::Secret) -> Zeroizing<Vec<u8>> {
    let raw = Zeroizing::new(secret.encode_to_vec());
    encode_object("v1", "Secret", &raw)
}

/// A ConfigMap as kube-apiserver serializes it (`v1`, `ConfigMap`).
pub fn encode_config_map(config_map: &k8s::ConfigMap) -> Zeroizing<Vec<u8>> {
    let raw = Zeroizing::new(config_map.encode_to_vec());
    encode_object("v1", "ConfigMap", &raw)
}

// ---------------------------------------------------------------------------------------------
// Encrypted values, random nonces

/// A KMS v2 value in seed mode (`HKDF_SHA256_XNONCE_AES_GCM_SEED`): fresh random info (32) and
/// nonce (12), key = HKDF-SHA256-Expand(seed, info), AES-256-GCM with AAD = `etcd_key`.
/// `seed` is the plaintext the plugin wrapped into `envelope.encrypted_dek_source`.
///
/// # Errors
/// [`Error::InvalidInput`] for envelope fields kube-apiserver would refuse,
/// [`Error::InvalidKey`] for a seed shorter than 32 bytes, [`Error::Crypto`] if the random
/// generator fails.
pub fn kms_v2_seed(etcd_key: &[u8], plaintext: &[u8], seed: &[u8], envelope: &KmsV2Envelope) -> Result<Vec<u8>> {
    let info: [u8; 32] = random()?;
    let nonce: [u8; 12] = random()?;
    let data = seal_kms_v2_seed_data(seed, &info, &nonce, etcd_key, plaintext)?;
    kms_v2_value(envelope, DekSourceType::HkdfSha256XNonceAesGcmSeed, data)
}

/// A KMS v2 value in legacy key mode (`AES_GCM_KEY`, 1.27–1.28): AES-GCM with `dek` directly,
/// nonce = 4 random bytes ‖ 8-byte little-endian counter (`counter`), AAD = `etcd_key`.
/// kube-apiserver starts the counter at 1 000 000 001 per process.
///
/// # Errors
/// As [`kms_v2_seed`]; [`Error::InvalidKey`] for a DEK that is not 16/24/32 bytes.
pub fn kms_v2_aes_gcm_key(
    etcd_key: &[u8],
    plaintext: &[u8],
    dek: &[u8],
    counter: u64,
    envelope: &KmsV2Envelope,
) -> Result<Vec<u8>> {
    let prefix: [u8; 4] = random()?;
    let mut nonce = [0u8; 12];
    let (head, tail) = nonce.split_at_mut(4);
    head.copy_from_slice(&prefix);
    tail.copy_from_slice(&counter.to_le_bytes());
    let data = seal_aes_gcm(dek, &nonce, etcd_key, plaintext)?;
    kms_v2_value(envelope, DekSourceType::AesGcmKey, data)
}

/// A KMS v1 value as written since 1.25: `k8s:enc:kms:v1:<provider_name>:` ‖ u16 BE length ‖
/// `wrapped_dek` ‖ AES-GCM(dek, random nonce, AAD = `etcd_key`).
///
/// # Errors
/// [`Error::InvalidInput`] for an empty or > 65535-byte wrapped DEK or an empty name,
/// [`Error::InvalidKey`] for a DEK that is not 16/24/32 bytes, [`Error::Crypto`].
pub fn kms_v1(
    etcd_key: &[u8],
    plaintext: &[u8],
    provider_name: &str,
    dek: &[u8],
    wrapped_dek: &[u8],
) -> Result<Vec<u8>> {
    let nonce: [u8; 12] = random()?;
    let data = seal_aes_gcm(dek, &nonce, etcd_key, plaintext)?;
    kms_v1_value(provider_name, wrapped_dek, &data)
}

/// A KMS v1 value as written up to 1.24: like [`kms_v1`] but AES-CBC/PKCS#7 with a random IV
/// and no AAD.
///
/// # Errors
/// As [`kms_v1`].
pub fn kms_v1_legacy_cbc(plaintext: &[u8], provider_name: &str, dek: &[u8], wrapped_dek: &[u8]) -> Result<Vec<u8>> {
    let iv: [u8; 16] = random()?;
    let data = seal_aes_cbc(dek, &iv, plaintext)?;
    kms_v1_value(provider_name, wrapped_dek, &data)
}

/// A static-key value: `k8s:enc:<provider>:v1:<key_name>:` ‖ payload, with a random nonce/IV.
/// aesgcm authenticates `etcd_key`; aescbc and secretbox ignore it.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty key name, [`Error::InvalidKey`] for a wrong key size,
/// [`Error::Crypto`].
pub fn static_key(
    provider: StaticProvider,
    etcd_key: &[u8],
    plaintext: &[u8],
    key_name: &str,
    key: &[u8],
) -> Result<Vec<u8>> {
    if key_name.is_empty() {
        return Err(Error::InvalidInput("empty key name".into()));
    }
    let payload = match provider {
        StaticProvider::AesGcm => seal_aes_gcm(key, &random()?, etcd_key, plaintext)?,
        StaticProvider::AesCbc => seal_aes_cbc(key, &random()?, plaintext)?,
        StaticProvider::Secretbox => seal_secretbox(key, &random()?, plaintext)?,
    };
    let mut out = provider.prefix(key_name);
    out.extend_from_slice(&payload);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Deterministic primitives

/// AES-GCM: nonce ‖ ciphertext ‖ tag(16), with a 16/24/32-byte key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::Crypto`].
pub fn seal_aes_gcm(key: &[u8], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let algorithm = gcm_algorithm(key)?;
    let key = LessSafeKey::new(UnboundKey::new(algorithm, key).map_err(|_| Error::Crypto)?);
    let mut buf = Vec::with_capacity(nonce.len() + plaintext.len() + 16);
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(plaintext);
    let mut body = buf.split_off(nonce.len());
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut body)
        .map_err(|_| Error::Crypto)?;
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// AES-CBC with PKCS#7 padding: IV ‖ ciphertext, with a 16/24/32-byte key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::Crypto`].
pub fn seal_aes_cbc(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>> {
    let algorithm = cbc_algorithm(key)?;
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(algorithm, key).map_err(|_| Error::Crypto)?)
        .map_err(|_| Error::Crypto)?;
    let mut body = plaintext.to_vec();
    key.less_safe_encrypt(&mut body, EncryptionContext::Iv128(FixedLength::from(*iv))).map_err(|_| Error::Crypto)?;
    let mut out = Vec::with_capacity(iv.len() + body.len());
    out.extend_from_slice(iv);
    out.extend_from_slice(&body);
    Ok(out)
}

/// NaCl secretbox: nonce(24) ‖ tag(16) ‖ ciphertext, with a 32-byte key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::Crypto`].
pub fn seal_secretbox(key: &[u8], nonce: &[u8; 24], plaintext: &[u8]) -> Result<Vec<u8>> {
    let key: &[u8; 32] =
        key.try_into().map_err(|_| Error::InvalidKey(format!("secretbox key is {} bytes, 32 required", key.len())))?;
    let cipher = XSalsa20Poly1305::new(key.into());
    let mut body = plaintext.to_vec();
    let tag = cipher.encrypt_in_place_detached(nonce.into(), b"", &mut body).map_err(|_| Error::Crypto)?;
    let mut out = Vec::with_capacity(nonce.len() + tag.len() + body.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&body);
    Ok(out)
}

/// KMS v2 seed-mode `encryptedData`: info(32) ‖ nonce(12) ‖ AES-256-GCM(HKDF(seed, info)).
///
/// # Errors
/// [`Error::InvalidKey`] for a seed shorter than 32 bytes, [`Error::Crypto`].
pub fn seal_kms_v2_seed_data(
    seed: &[u8],
    info: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let key = derive_kms_v2_key(seed, info)?;
    let sealed = seal_aes_gcm(key.as_slice(), nonce, aad, plaintext)?;
    let mut out = Vec::with_capacity(info.len() + sealed.len());
    out.extend_from_slice(info);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// `k8s:enc:kms:v2:<name>:` + `EncryptedObject` with the given fields, validated like
/// kube-apiserver validates before writing.
///
/// # Errors
/// [`Error::InvalidInput`] for fields kube-apiserver would refuse.
pub fn kms_v2_value(envelope: &KmsV2Envelope, source_type: DekSourceType, encrypted_data: Vec<u8>) -> Result<Vec<u8>> {
    if envelope.provider_name.is_empty() || envelope.provider_name.contains(':') {
        return Err(Error::InvalidInput("KMS v2 provider name must be non-empty and contain no ':'".into()));
    }
    if encrypted_data.is_empty() {
        return Err(Error::InvalidInput("encryptedData is empty".into()));
    }
    check_kms_v2_fields(&envelope.key_id, &envelope.encrypted_dek_source, envelope.annotations.iter())
        .map_err(Error::InvalidInput)?;
    let obj = envelope_proto::v2::EncryptedObject {
        encrypted_data,
        key_id: envelope.key_id.clone(),
        encrypted_dek_source: envelope.encrypted_dek_source.clone(),
        annotations: envelope.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        encrypted_dek_source_type: source_type.as_i32(),
    };
    let mut out = ProviderKind::KmsV2.prefix(&envelope.provider_name).unwrap_or_default();
    out.extend_from_slice(&obj.encode_to_vec());
    Ok(out)
}

/// `k8s:enc:kms:v1:<name>:` ‖ u16 BE length ‖ wrapped DEK ‖ data.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty name or an empty or > 65535-byte wrapped DEK.
pub fn kms_v1_value(provider_name: &str, wrapped_dek: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if provider_name.is_empty() {
        return Err(Error::InvalidInput("empty KMS v1 provider name".into()));
    }
    let len = u16::try_from(wrapped_dek.len()).ok().filter(|l| *l > 0).ok_or_else(|| {
        Error::InvalidInput(format!("wrapped DEK is {} bytes, 1..=65535 required", wrapped_dek.len()))
    })?;
    let mut out = ProviderKind::KmsV1.prefix(provider_name).unwrap_or_default();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(wrapped_dek);
    out.extend_from_slice(data);
    Ok(out)
}

/// A fresh random KMS v2 seed (32 bytes), as kube-apiserver generates per key_id.
///
/// # Errors
/// [`Error::Crypto`] if the random generator fails.
pub fn random_seed() -> Result<Zeroizing<[u8; MIN_KMS_V2_SEED_LEN]>> {
    Ok(Zeroizing::new(random()?))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Crypto)?;
    Ok(b)
}
