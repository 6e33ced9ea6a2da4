//! Decrypt stored values with unwrapped key material.
//!
//! Value-level functions take the whole stored value (prefix included), check that the prefix
//! names the expected provider (and key/provider name, which may contain `:`), and return the
//! plaintext — the serialized object, see [`crate::object`]:
//!
//! * [`kms_v2`]: given the plaintext of `encryptedDEKSource` (the plugin's v2 Decrypt result).
//! * [`kms_v1`]: given the unwrapped DEK (the plugin's v1beta1 Decrypt result); AES-GCM, falling
//!   back to legacy AES-CBC like kube-apiserver, and reports which one worked.
//! * [`static_key`]: `aescbc`, `aesgcm`, `secretbox` with one key; [`with_config`] tries the
//!   keys of an [`EncryptionConfig`] whose name matches the prefix.
//!
//! The `open_*` functions are the primitives on a payload (what follows the prefix).
//!
//! AAD: every AEAD provider (aesgcm, KMS v1 GCM, KMS v2) authenticates the full etcd key, so a
//! value copied to another key fails with [`Error::DecryptionFailed`]. aescbc and secretbox
//! use no AAD.

use std::fmt;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{AES_128, AES_192, AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

use crate::classify::{
    self, AES_BLOCK_LEN, DekSourceType, GCM_NONCE_LEN, GCM_TAG_LEN, KMS_V2_INFO_LEN, ProviderKind, SECRETBOX_NONCE_LEN,
    SECRETBOX_TAG_LEN, StaticProvider,
};
use crate::config::EncryptionConfig;
use crate::error::{Error, Result};

/// Smallest KMS v2 seed kube-apiserver accepts.
pub const MIN_KMS_V2_SEED_LEN: usize = 32;

/// Which data cipher opened a KMS v1 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmsV1Cipher {
    /// AES-GCM with AAD = etcd key (written by Kubernetes ≥ 1.25).
    AesGcm,
    /// Legacy AES-CBC with PKCS#7 padding (written by Kubernetes ≤ 1.24; kube-apiserver marks
    /// such values stale).
    AesCbc,
}

/// Plaintext of a KMS v1 value and the cipher that opened it. `Debug` does not show the
/// plaintext.
#[non_exhaustive]
pub struct KmsV1Plaintext {
    /// The serialized object.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// GCM or the legacy CBC fallback.
    pub cipher: KmsV1Cipher,
}

/// Plaintext of a static-key value and the configured key that opened it. `Debug` does not
/// show the plaintext.
#[non_exhaustive]
pub struct StaticPlaintext {
    /// The serialized object.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Which static provider.
    pub provider: StaticProvider,
    /// The name of the key that worked.
    pub key_name: String,
}

impl fmt::Debug for KmsV1Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsV1Plaintext")
            .field("plaintext", &format_args!("<{} bytes>", self.plaintext.len()))
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl fmt::Debug for StaticPlaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticPlaintext")
            .field("plaintext", &format_args!("<{} bytes>", self.plaintext.len()))
            .field("provider", &self.provider)
            .field("key_name", &self.key_name)
            .finish()
    }
}

/// Decrypt a KMS v2 value (`k8s:enc:kms:v2:<name>:` + EncryptedObject) stored at `etcd_key`.
///
/// `dek_source` is the plaintext of `encryptedDEKSource`: a seed of at least 32 bytes
/// (`HKDF_SHA256_XNONCE_AES_GCM_SEED`) or an AES key of 16/24/32 bytes (`AES_GCM_KEY`).
///
/// # Errors
/// [`Error::WrongProvider`] / [`Error::MalformedValue`] if the value is not a well-formed KMS v2
/// value, [`Error::UnsupportedDekSourceType`], [`Error::InvalidKey`] for a bad seed/DEK size,
/// [`Error::DecryptionFailed`] for a wrong seed/DEK, wrong etcd key or modified value.
pub fn kms_v2(etcd_key: &[u8], value: &[u8], dek_source: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let payload = strip_kms_v2_prefix(value)?;
    let obj = classify::decode_kms_v2(payload).map_err(Error::MalformedValue)?;
    open_kms_v2_data(DekSourceType::from_i32(obj.encrypted_dek_source_type), dek_source, &obj.encrypted_data, etcd_key)
}

/// Decrypt KMS v2 `encryptedData` given its DEK source type and the unwrapped DEK source.
///
/// Seed mode: `encrypted_data` = info(32) ‖ nonce(12) ‖ ciphertext ‖ tag, key =
/// HKDF-SHA256-Expand(PRK = seed, info), AES-256-GCM. Key mode: nonce(12) ‖ ciphertext ‖ tag,
/// AES-GCM with the DEK. AAD = `aad` (the etcd key).
///
/// # Errors
/// As [`kms_v2`].
pub fn open_kms_v2_data(
    source_type: DekSourceType,
    dek_source: &[u8],
    encrypted_data: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    match source_type {
        DekSourceType::HkdfSha256XNonceAesGcmSeed => {
            let (info, rest) = encrypted_data
                .split_first_chunk::<KMS_V2_INFO_LEN>()
                .ok_or_else(|| Error::MalformedValue("encryptedData shorter than the 32-byte info".into()))?;
            let key = derive_kms_v2_key(dek_source, info)?;
            open_gcm(ProviderKind::KmsV2, key.as_slice(), rest, aad)
        }
        DekSourceType::AesGcmKey => open_gcm(ProviderKind::KmsV2, dek_source, encrypted_data, aad),
        DekSourceType::Unknown(v) => Err(Error::UnsupportedDekSourceType(v)),
    }
}

/// The per-write AES-256 key of KMS v2 seed mode: HKDF-SHA256-Expand with PRK = `seed` and
/// info = `info`, 32 bytes (no Extract step, no salt) = HMAC-SHA256(seed, info ‖ 0x01).
///
/// # Errors
/// [`Error::InvalidKey`] if the seed is shorter than 32 bytes.
pub fn derive_kms_v2_key(seed: &[u8], info: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    if seed.len() < MIN_KMS_V2_SEED_LEN {
        return Err(Error::InvalidKey(format!(
            "KMS v2 seed is {} bytes, at least {MIN_KMS_V2_SEED_LEN} required",
            seed.len()
        )));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, seed);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(info);
    ctx.update(&[1u8]);
    let tag = ctx.sign();
    let mut out = Zeroizing::new([0u8; 32]);
    if tag.as_ref().len() != out.len() {
        return Err(Error::Crypto);
    }
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypt a KMS v1 value (`k8s:enc:kms:v1:<provider_name>:` ‖ u16 BE length ‖ wrapped DEK ‖
/// data) stored at `etcd_key`, with the unwrapped `dek`. Tries AES-GCM (AAD = etcd key) first,
/// then legacy AES-CBC, like kube-apiserver.
///
/// # Errors
/// [`Error::WrongProvider`] / [`Error::MalformedValue`] for a value that is not KMS v1 with this
/// provider name, [`Error::InvalidKey`] for a DEK that is not 16/24/32 bytes,
/// [`Error::DecryptionFailed`] if neither cipher opens it.
pub fn kms_v1(etcd_key: &[u8], value: &[u8], provider_name: &str, dek: &[u8]) -> Result<KmsV1Plaintext> {
    let payload = strip_prefix(value, ProviderKind::KmsV1, provider_name)?;
    let (_, data) = classify::split_kms_v1(payload).map_err(Error::MalformedValue)?;
    open_kms_v1_data(dek, data, etcd_key)
}

/// Decrypt KMS v1 data (what follows the wrapped DEK): AES-GCM nonce(12) ‖ ciphertext ‖ tag with
/// AAD = `aad`, or else AES-CBC IV(16) ‖ ciphertext.
///
/// # Errors
/// As [`kms_v1`].
pub fn open_kms_v1_data(dek: &[u8], data: &[u8], aad: &[u8]) -> Result<KmsV1Plaintext> {
    check_aes_key_len(dek)?;
    if let Ok(plaintext) = open_gcm(ProviderKind::KmsV1, dek, data, aad) {
        return Ok(KmsV1Plaintext { plaintext, cipher: KmsV1Cipher::AesGcm });
    }
    match open_cbc(ProviderKind::KmsV1, dek, data) {
        Ok(plaintext) => Ok(KmsV1Plaintext { plaintext, cipher: KmsV1Cipher::AesCbc }),
        Err(_) => Err(Error::DecryptionFailed { provider: ProviderKind::KmsV1 }),
    }
}

/// Decrypt a static-key value (`k8s:enc:<provider>:v1:<key_name>:` ‖ payload) stored at
/// `etcd_key` with `key`. The etcd key is the AAD for aesgcm and unused by aescbc and secretbox.
///
/// # Errors
/// [`Error::WrongProvider`] / [`Error::MalformedValue`] if the prefix is not this provider and
/// key name, [`Error::InvalidKey`] for a wrong key size, [`Error::DecryptionFailed`] for a wrong
/// key (aescbc has no MAC: a wrong key is detected only by bad padding, and with probability
/// about 1/256 yields garbage instead).
pub fn static_key(
    provider: StaticProvider,
    etcd_key: &[u8],
    value: &[u8],
    key_name: &str,
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let payload = strip_prefix(value, provider.kind(), key_name)?;
    open_static(provider, key, payload, etcd_key)
}

/// Decrypt a static-key value with the keys of `config`, like kube-apiserver: every key of the
/// value's provider type whose name matches the prefix is tried in file order. For aescbc (no
/// MAC), a key whose plaintext looks like a Kubernetes object (`k8s\0` or `{`) is preferred over
/// one that merely unpads.
///
/// # Errors
/// [`Error::WrongProvider`] if the value is not a static-key value, [`Error::NoMatchingKey`] if
/// no configured key name matches, otherwise the last key's error.
pub fn with_config(etcd_key: &[u8], value: &[u8], config: &EncryptionConfig) -> Result<StaticPlaintext> {
    let classified = classify::classify_with_config(etcd_key, value, config);
    let provider = match &classified {
        classify::Classified::StaticKey(s) => s.provider,
        classify::Classified::Corrupt(c) => {
            return Err(Error::MalformedValue(c.reason.clone()));
        }
        other => {
            return Err(Error::WrongProvider { expected: ProviderKind::AesCbc, found: other.provider() });
        }
    };
    let keys = config.static_keys(provider);
    let candidates: Vec<_> =
        keys.iter().filter(|k| value.strip_prefix(provider.prefix(&k.name).as_slice()).is_some()).collect();
    if candidates.is_empty() {
        return Err(Error::NoMatchingKey {
            provider: provider.kind(),
            name: classified.name().unwrap_or_default().to_owned(),
        });
    }
    let mut last_err = None;
    let mut fallback: Option<StaticPlaintext> = None;
    for k in candidates {
        match static_key(provider, etcd_key, value, &k.name, k.secret()) {
            Ok(plaintext) => {
                let looks_like_object =
                    plaintext.starts_with(classify::PROTOBUF_MAGIC) || plaintext.first() == Some(&b'{');
                let found = StaticPlaintext { plaintext, provider, key_name: k.name.clone() };
                if provider != StaticProvider::AesCbc || looks_like_object {
                    return Ok(found);
                }
                fallback.get_or_insert(found);
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (fallback, last_err) {
        (Some(found), _) => Ok(found),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::DecryptionFailed { provider: provider.kind() }),
    }
}

/// Decrypt a static-key payload (what follows the prefix).
///
/// # Errors
/// As [`static_key`].
pub fn open_static(
    provider: StaticProvider,
    key: &[u8],
    payload: &[u8],
    etcd_key: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    match provider {
        StaticProvider::AesGcm => open_aes_gcm(key, payload, etcd_key),
        StaticProvider::AesCbc => open_aes_cbc(key, payload),
        StaticProvider::Secretbox => open_secretbox(key, payload),
    }
}

/// AES-GCM open of nonce(12) ‖ ciphertext ‖ tag(16) with a 16/24/32-byte key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::MalformedValue`] (too short), [`Error::DecryptionFailed`].
pub fn open_aes_gcm(key: &[u8], payload: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    open_gcm(ProviderKind::AesGcm, key, payload, aad)
}

/// AES-CBC open of IV(16) ‖ ciphertext with PKCS#7 padding and a 16/24/32-byte key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::MalformedValue`] (length), [`Error::DecryptionFailed`]
/// (bad padding).
pub fn open_aes_cbc(key: &[u8], payload: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    open_cbc(ProviderKind::AesCbc, key, payload)
}

/// NaCl secretbox (XSalsa20-Poly1305) open of nonce(24) ‖ tag(16) ‖ ciphertext with a 32-byte
/// key.
///
/// # Errors
/// [`Error::InvalidKey`], [`Error::MalformedValue`] (too short), [`Error::DecryptionFailed`].
pub fn open_secretbox(key: &[u8], payload: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let key: &[u8; 32] =
        key.try_into().map_err(|_| Error::InvalidKey(format!("secretbox key is {} bytes, 32 required", key.len())))?;
    let (nonce, rest) = payload
        .split_first_chunk::<SECRETBOX_NONCE_LEN>()
        .ok_or_else(|| Error::MalformedValue("secretbox payload shorter than its nonce".into()))?;
    let (tag, ciphertext) = rest
        .split_first_chunk::<SECRETBOX_TAG_LEN>()
        .ok_or_else(|| Error::MalformedValue("secretbox payload shorter than its tag".into()))?;
    let cipher = XSalsa20Poly1305::new(key.into());
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(nonce.into(), b"", &mut buf, tag.into())
        .map_err(|_| Error::DecryptionFailed { provider: ProviderKind::Secretbox })?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------

pub(crate) fn check_aes_key_len(key: &[u8]) -> Result<()> {
    if matches!(key.len(), 16 | 24 | 32) {
        Ok(())
    } else {
        Err(Error::InvalidKey(format!("AES key is {} bytes, 16, 24 or 32 required", key.len())))
    }
}

pub(crate) fn gcm_algorithm(key: &[u8]) -> Result<&'static aead::Algorithm> {
    check_aes_key_len(key)?;
    Ok(match key.len() {
        16 => &aead::AES_128_GCM,
        24 => &aead::AES_192_GCM,
        _ => &aead::AES_256_GCM,
    })
}

pub(crate) fn cbc_algorithm(key: &[u8]) -> Result<&'static aws_lc_rs::cipher::Algorithm> {
    check_aes_key_len(key)?;
    Ok(match key.len() {
        16 => &AES_128,
        24 => &AES_192,
        _ => &AES_256,
    })
}

fn open_gcm(provider: ProviderKind, key: &[u8], payload: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let algorithm = gcm_algorithm(key)?;
    let (nonce, sealed) = payload
        .split_first_chunk::<GCM_NONCE_LEN>()
        .ok_or_else(|| Error::MalformedValue("AES-GCM data shorter than its nonce".into()))?;
    if sealed.len() < GCM_TAG_LEN {
        return Err(Error::MalformedValue("AES-GCM data shorter than nonce and tag".into()));
    }
    let key = LessSafeKey::new(UnboundKey::new(algorithm, key).map_err(|_| Error::Crypto)?);
    let mut buf = Zeroizing::new(sealed.to_vec());
    let len = key
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf.as_mut_slice())
        .map_err(|_| Error::DecryptionFailed { provider })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

fn open_cbc(provider: ProviderKind, key: &[u8], payload: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let algorithm = cbc_algorithm(key)?;
    let (iv, ciphertext) = payload
        .split_first_chunk::<AES_BLOCK_LEN>()
        .ok_or_else(|| Error::MalformedValue("AES-CBC data shorter than its IV".into()))?;
    if ciphertext.is_empty() || ciphertext.len() % AES_BLOCK_LEN != 0 {
        return Err(Error::MalformedValue(format!(
            "AES-CBC ciphertext of {} bytes is not a non-empty multiple of 16",
            ciphertext.len()
        )));
    }
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(algorithm, key).map_err(|_| Error::Crypto)?)
        .map_err(|_| Error::Crypto)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .decrypt(buf.as_mut_slice(), DecryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| Error::DecryptionFailed { provider })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The payload after `k8s:enc:kms:v2:<name>:` (KMS v2 names contain no `:`).
fn strip_kms_v2_prefix(value: &[u8]) -> Result<&[u8]> {
    let rest = strip_kind(value, ProviderKind::KmsV2)?;
    let colon = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| Error::MalformedValue("no ':' after the KMS v2 provider name".into()))?;
    if colon == 0 {
        return Err(Error::MalformedValue("empty KMS v2 provider name".into()));
    }
    Ok(rest.get(colon + 1..).unwrap_or_default())
}

/// `value` after `k8s:enc:<kind tag>`, or the error naming what the value is instead.
fn strip_kind(value: &[u8], kind: ProviderKind) -> Result<&[u8]> {
    // The prefix for the empty name ends with ':' which the name would precede; strip without it.
    let full = kind.prefix("").ok_or(Error::WrongProvider { expected: kind, found: ProviderKind::Unknown })?;
    let tag = full.get(..full.len().saturating_sub(1)).unwrap_or_default();
    value
        .strip_prefix(tag)
        .ok_or_else(|| Error::WrongProvider { expected: kind, found: classify::classify(b"", value).provider() })
}

/// `value` after `k8s:enc:<kind tag><name>:`.
fn strip_prefix<'v>(value: &'v [u8], kind: ProviderKind, name: &str) -> Result<&'v [u8]> {
    let rest = strip_kind(value, kind)?;
    rest.strip_prefix(name.as_bytes())
        .and_then(|r| r.strip_prefix(b":"))
        .ok_or_else(|| Error::MalformedValue(format!("prefix does not name {kind} {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_helpers() {
        assert_eq!(strip_kms_v2_prefix(b"k8s:enc:kms:v2:p:xyz").ok(), Some(b"xyz".as_slice()));
        assert!(matches!(
            strip_kms_v2_prefix(b"k8s:enc:kms:v1:p:xyz"),
            Err(Error::WrongProvider {
                expected: ProviderKind::KmsV2,
                found: ProviderKind::KmsV1 | ProviderKind::Corrupt
            })
        ));
        assert!(strip_kms_v2_prefix(b"k8s:enc:kms:v2::x").is_err());
        assert_eq!(
            strip_prefix(b"k8s:enc:aescbc:v1:a:b:rest", ProviderKind::AesCbc, "a:b").ok(),
            Some(b"rest".as_slice())
        );
        assert!(strip_prefix(b"k8s:enc:aescbc:v1:a:b:rest", ProviderKind::AesCbc, "b").is_err());
    }

    #[test]
    fn short_seed_rejected() {
        assert!(matches!(derive_kms_v2_key(&[0u8; 31], &[0u8; 32]), Err(Error::InvalidKey(_))));
        assert!(derive_kms_v2_key(&[0u8; 200], &[0u8; 32]).is_ok());
    }
}
