//! Classify a stored etcd value by the provider that wrote it, without any key material.
//!
//! kube-apiserver identifies the writer of a value only by its prefix (spec §6.2):
//!
//! | provider | prefix | payload |
//! |---|---|---|
//! | identity | none | `k8s\0` + protobuf, or `{` JSON |
//! | aescbc | `k8s:enc:aescbc:v1:<key>:` | IV(16) ‖ CBC/PKCS#7 |
//! | aesgcm | `k8s:enc:aesgcm:v1:<key>:` | nonce(12) ‖ ciphertext ‖ tag(16) |
//! | secretbox | `k8s:enc:secretbox:v1:<key>:` | nonce(24) ‖ tag(16) ‖ ciphertext |
//! | KMS v1 | `k8s:enc:kms:v1:<provider>:` | u16 BE length ‖ wrapped DEK ‖ data |
//! | KMS v2 | `k8s:enc:kms:v2:<provider>:` | protobuf `EncryptedObject` |
//!
//! [`classify`] never fails: a value that claims a provider but does not have that provider's
//! layout becomes [`Classified::Corrupt`] with a reason, so a scan of a whole etcd continues.
//!
//! Names: KMS v2 provider names cannot contain `:`, so they end at the next `:`. KMS v1 provider
//! names and static key names may contain `:`; [`classify`] takes the name up to the next `:`,
//! and [`classify_with_names`] / [`classify_with_config`] first try the configured names.

use std::collections::BTreeMap;
use std::fmt;

use envelope_proto::rules::{self, AnnotationError, MAX_FIELD_LEN};
use prost::Message;

use crate::config::EncryptionConfig;

/// Prefix of every encrypted value.
pub const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// Magic of an unencrypted protobuf object (`k8s` + 0x00, then a `runtime.Unknown`).
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// AES-GCM nonce length used by kube-apiserver.
pub(crate) const GCM_NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const GCM_TAG_LEN: usize = 16;
/// AES block (and CBC IV) length.
pub(crate) const AES_BLOCK_LEN: usize = 16;
/// secretbox nonce length.
pub(crate) const SECRETBOX_NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub(crate) const SECRETBOX_TAG_LEN: usize = 16;
/// KMS v2 HKDF info length (the first bytes of `encryptedData` in seed mode).
pub(crate) const KMS_V2_INFO_LEN: usize = 32;

/// What wrote a value, as a stable short string for summaries ([`ProviderKind::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ProviderKind {
    /// Not encrypted (`identity: {}`).
    Identity,
    /// `aescbc` static key.
    AesCbc,
    /// `aesgcm` static key.
    AesGcm,
    /// `secretbox` static key.
    Secretbox,
    /// KMS v1 (`apiVersion: v1` kms provider).
    KmsV1,
    /// KMS v2.
    KmsV2,
    /// Unrecognised bytes or an unknown `k8s:enc:` prefix.
    Unknown,
    /// A known prefix whose payload is malformed.
    Corrupt,
}

impl ProviderKind {
    /// Every kind, in a stable order (useful for summary tables).
    pub const ALL: [ProviderKind; 8] = [
        ProviderKind::Identity,
        ProviderKind::AesCbc,
        ProviderKind::AesGcm,
        ProviderKind::Secretbox,
        ProviderKind::KmsV1,
        ProviderKind::KmsV2,
        ProviderKind::Unknown,
        ProviderKind::Corrupt,
    ];

    /// Stable short name: `identity`, `aescbc`, `aesgcm`, `secretbox`, `kms-v1`, `kms-v2`,
    /// `unknown`, `corrupt`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Identity => "identity",
            ProviderKind::AesCbc => "aescbc",
            ProviderKind::AesGcm => "aesgcm",
            ProviderKind::Secretbox => "secretbox",
            ProviderKind::KmsV1 => "kms-v1",
            ProviderKind::KmsV2 => "kms-v2",
            ProviderKind::Unknown => "unknown",
            ProviderKind::Corrupt => "corrupt",
        }
    }

    /// The stored-value prefix this provider writes for `name` (key or provider name), or `None`
    /// for kinds that have no prefix (identity, unknown, corrupt).
    pub fn prefix(self, name: &str) -> Option<Vec<u8>> {
        let tag = self.prefix_tag()?;
        let mut p = Vec::with_capacity(ENCRYPTED_PREFIX.len() + tag.len() + name.len() + 1);
        p.extend_from_slice(ENCRYPTED_PREFIX);
        p.extend_from_slice(tag);
        p.extend_from_slice(name.as_bytes());
        p.push(b':');
        Some(p)
    }

    /// The part of the prefix between `k8s:enc:` and the name, e.g. `aescbc:v1:`.
    const fn prefix_tag(self) -> Option<&'static [u8]> {
        match self {
            ProviderKind::AesCbc => Some(b"aescbc:v1:"),
            ProviderKind::AesGcm => Some(b"aesgcm:v1:"),
            ProviderKind::Secretbox => Some(b"secretbox:v1:"),
            ProviderKind::KmsV1 => Some(b"kms:v1:"),
            ProviderKind::KmsV2 => Some(b"kms:v2:"),
            ProviderKind::Identity | ProviderKind::Unknown | ProviderKind::Corrupt => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three static-key providers of an EncryptionConfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StaticProvider {
    /// `aescbc`: AES-CBC with PKCS#7 padding, no authentication, no AAD.
    AesCbc,
    /// `aesgcm`: AES-GCM, AAD = etcd key.
    AesGcm,
    /// `secretbox`: XSalsa20-Poly1305, no AAD.
    Secretbox,
}

impl StaticProvider {
    /// All three.
    pub const ALL: [StaticProvider; 3] = [StaticProvider::AesCbc, StaticProvider::AesGcm, StaticProvider::Secretbox];

    /// The name used in the EncryptionConfiguration and the prefix: `aescbc`, `aesgcm`, `secretbox`.
    pub const fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The corresponding [`ProviderKind`].
    pub const fn kind(self) -> ProviderKind {
        match self {
            StaticProvider::AesCbc => ProviderKind::AesCbc,
            StaticProvider::AesGcm => ProviderKind::AesGcm,
            StaticProvider::Secretbox => ProviderKind::Secretbox,
        }
    }

    /// The stored-value prefix for key `name`, e.g. `k8s:enc:aescbc:v1:key1:`.
    pub fn prefix(self, name: &str) -> Vec<u8> {
        let tag = match self {
            StaticProvider::AesCbc => b"aescbc:v1:".as_slice(),
            StaticProvider::AesGcm => b"aesgcm:v1:".as_slice(),
            StaticProvider::Secretbox => b"secretbox:v1:".as_slice(),
        };
        let mut p = Vec::with_capacity(ENCRYPTED_PREFIX.len() + tag.len() + name.len() + 1);
        p.extend_from_slice(ENCRYPTED_PREFIX);
        p.extend_from_slice(tag);
        p.extend_from_slice(name.as_bytes());
        p.push(b':');
        p
    }

    /// Whether `len` bytes is a valid key size: 16, 24 or 32 for AES, 32 for secretbox.
    pub const fn is_valid_key_len(self, len: usize) -> bool {
        match self {
            StaticProvider::AesCbc | StaticProvider::AesGcm => matches!(len, 16 | 24 | 32),
            StaticProvider::Secretbox => len == 32,
        }
    }

    /// Smallest well-formed payload (after the prefix) for this provider.
    pub(crate) const fn min_payload_len(self) -> usize {
        match self {
            StaticProvider::AesCbc => 2 * AES_BLOCK_LEN,
            StaticProvider::AesGcm => GCM_NONCE_LEN + GCM_TAG_LEN,
            StaticProvider::Secretbox => SECRETBOX_NONCE_LEN + SECRETBOX_TAG_LEN,
        }
    }
}

impl fmt::Display for StaticProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// KMS v2 `EncryptedObject.encryptedDEKSourceType` (field 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DekSourceType {
    /// `AES_GCM_KEY` (0): the unwrapped plaintext is the AES-GCM key itself (1.25–1.28 writes).
    AesGcmKey,
    /// `HKDF_SHA256_XNONCE_AES_GCM_SEED` (1): the unwrapped plaintext is a seed; per-write keys
    /// are derived with HKDF-SHA256 (default since 1.29).
    HkdfSha256XNonceAesGcmSeed,
    /// Any other value (kube-apiserver rejects it).
    Unknown(i32),
}

impl DekSourceType {
    /// From the wire value.
    pub const fn from_i32(v: i32) -> Self {
        match v {
            0 => DekSourceType::AesGcmKey,
            1 => DekSourceType::HkdfSha256XNonceAesGcmSeed,
            other => DekSourceType::Unknown(other),
        }
    }

    /// The wire value.
    pub const fn as_i32(self) -> i32 {
        match self {
            DekSourceType::AesGcmKey => 0,
            DekSourceType::HkdfSha256XNonceAesGcmSeed => 1,
            DekSourceType::Unknown(v) => v,
        }
    }

    /// The upstream enum name, or `UNKNOWN` for values this build does not know.
    pub const fn as_str(self) -> &'static str {
        match self {
            DekSourceType::AesGcmKey => "AES_GCM_KEY",
            DekSourceType::HkdfSha256XNonceAesGcmSeed => "HKDF_SHA256_XNONCE_AES_GCM_SEED",
            DekSourceType::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for DekSourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DekSourceType::Unknown(v) => write!(f, "UNKNOWN({v})"),
            known => f.write_str(known.as_str()),
        }
    }
}

/// The result of classifying one stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Classified {
    /// Unencrypted protobuf object (`k8s\0` + `runtime.Unknown`).
    IdentityProtobuf,
    /// Unencrypted JSON object (starts with `{`; custom resources are stored this way).
    IdentityJson,
    /// Encrypted with a static key (`aescbc`, `aesgcm`, `secretbox`).
    StaticKey(StaticKeyValue),
    /// Encrypted by a KMS v1 provider.
    KmsV1(KmsV1Value),
    /// Encrypted by a KMS v2 provider.
    KmsV2(KmsV2Value),
    /// Starts with `k8s:enc:` but names no provider this crate knows.
    UnknownPrefix {
        /// The prefix, printable (non-printable bytes escaped as `\xNN`), at most ~64 characters.
        prefix: String,
    },
    /// Neither an encrypted value nor a Kubernetes object.
    Unrecognized {
        /// Why (no value content is included).
        reason: String,
    },
    /// A known prefix whose payload does not have the provider's layout.
    Corrupt(CorruptValue),
}

/// A value encrypted with a static key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaticKeyValue {
    /// Which static provider.
    pub provider: StaticProvider,
    /// Key name from the prefix.
    pub key_name: String,
    /// Bytes after the prefix (nonce/IV, ciphertext and tag).
    pub payload_len: usize,
}

/// A value encrypted by a KMS v1 provider.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsV1Value {
    /// Provider name from the prefix.
    pub provider_name: String,
    /// The DEK as wrapped by the plugin (pass to the plugin's v1beta1 `Decrypt` as `cipher`).
    pub wrapped_dek: Vec<u8>,
    /// Bytes of encrypted data after the wrapped DEK.
    pub data_len: usize,
}

impl KmsV1Value {
    /// Length of the wrapped DEK.
    pub fn wrapped_dek_len(&self) -> usize {
        self.wrapped_dek.len()
    }
}

/// A value encrypted by a KMS v2 provider (the decoded `EncryptedObject` minus the data).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsV2Value {
    /// Provider name from the prefix.
    pub provider_name: String,
    /// `keyID`: the plugin's key_id at write time (compare with the plugin's current Status
    /// key_id to detect stale values).
    pub key_id: String,
    /// How the unwrapped `encryptedDEKSource` is used.
    pub dek_source_type: DekSourceType,
    /// `encryptedDEKSource`: the plugin's Encrypt ciphertext (pass to the plugin's v2 `Decrypt`).
    pub encrypted_dek_source: Vec<u8>,
    /// The plugin's annotations, stored in the clear.
    pub annotations: BTreeMap<String, Vec<u8>>,
    /// Length of `encryptedData`.
    pub encrypted_data_len: usize,
}

impl KmsV2Value {
    /// The annotation keys, sorted.
    pub fn annotation_keys(&self) -> impl Iterator<Item = &str> {
        self.annotations.keys().map(String::as_str)
    }

    /// Whether a value written now would look different: different key_id, or legacy DEK mode.
    /// `current_key_id` is the plugin's current Status key_id.
    pub fn is_stale(&self, current_key_id: &str) -> bool {
        self.key_id != current_key_id || self.dek_source_type != DekSourceType::HkdfSha256XNonceAesGcmSeed
    }
}

/// A value with a known prefix and a malformed payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorruptValue {
    /// The provider the prefix claims.
    pub claimed: ProviderKind,
    /// The key or provider name, if it could be read.
    pub name: Option<String>,
    /// What is wrong (no value content is included).
    pub reason: String,
}

impl Classified {
    /// The provider kind (for [`Classified::Corrupt`] this is [`ProviderKind::Corrupt`]; the
    /// claimed provider is in [`CorruptValue::claimed`]).
    pub fn provider(&self) -> ProviderKind {
        match self {
            Classified::IdentityProtobuf | Classified::IdentityJson => ProviderKind::Identity,
            Classified::StaticKey(s) => s.provider.kind(),
            Classified::KmsV1(_) => ProviderKind::KmsV1,
            Classified::KmsV2(_) => ProviderKind::KmsV2,
            Classified::UnknownPrefix { .. } | Classified::Unrecognized { .. } => ProviderKind::Unknown,
            Classified::Corrupt(_) => ProviderKind::Corrupt,
        }
    }

    /// Whether the value carries an encryption prefix (`k8s:enc:`), whether or not it is
    /// well-formed.
    pub fn is_encrypted(&self) -> bool {
        match self {
            Classified::StaticKey(_)
            | Classified::KmsV1(_)
            | Classified::KmsV2(_)
            | Classified::UnknownPrefix { .. }
            | Classified::Corrupt(_) => true,
            Classified::IdentityProtobuf | Classified::IdentityJson | Classified::Unrecognized { .. } => false,
        }
    }

    /// The key name (static providers) or provider name (KMS), if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Classified::StaticKey(s) => Some(&s.key_name),
            Classified::KmsV1(v) => Some(&v.provider_name),
            Classified::KmsV2(v) => Some(&v.provider_name),
            Classified::Corrupt(c) => c.name.as_deref(),
            Classified::IdentityProtobuf
            | Classified::IdentityJson
            | Classified::UnknownPrefix { .. }
            | Classified::Unrecognized { .. } => None,
        }
    }
}

impl fmt::Display for Classified {
    /// One line, e.g. `kms-v2 provider=p key_id="1" dek_source=HKDF_SHA256_XNONCE_AES_GCM_SEED
    /// annotations=[a.example.io] data=465B`. Contains no secret material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classified::IdentityProtobuf => f.write_str("identity (protobuf)"),
            Classified::IdentityJson => f.write_str("identity (json)"),
            Classified::StaticKey(s) => write!(f, "{} key={:?} payload={}B", s.provider, s.key_name, s.payload_len),
            Classified::KmsV1(v) => write!(
                f,
                "kms-v1 provider={:?} wrapped_dek={}B data={}B",
                v.provider_name,
                v.wrapped_dek.len(),
                v.data_len
            ),
            Classified::KmsV2(v) => {
                write!(
                    f,
                    "kms-v2 provider={:?} key_id={:?} dek_source={} wrapped_dek_source={}B annotations=[",
                    v.provider_name,
                    v.key_id,
                    v.dek_source_type,
                    v.encrypted_dek_source.len()
                )?;
                for (i, k) in v.annotations.keys().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(k)?;
                }
                write!(f, "] data={}B", v.encrypted_data_len)
            }
            Classified::UnknownPrefix { prefix } => write!(f, "unknown prefix {prefix:?}"),
            Classified::Unrecognized { reason } => write!(f, "unrecognized: {reason}"),
            Classified::Corrupt(c) => match &c.name {
                Some(n) => write!(f, "corrupt {} {n:?}: {}", c.claimed, c.reason),
                None => write!(f, "corrupt {}: {}", c.claimed, c.reason),
            },
        }
    }
}

/// Classify `value`, stored at `etcd_key`. Never panics; see the module docs.
///
/// Static key names and KMS v1 provider names are taken up to the next `:`; use
/// [`classify_with_names`] or [`classify_with_config`] when configured names may contain `:`.
/// Classification depends only on the value; the key is taken so that every entry point has the
/// same `(key, value)` shape as the decrypt functions.
pub fn classify(etcd_key: &[u8], value: &[u8]) -> Classified {
    let _ = etcd_key;
    classify_inner(value, |_| Vec::new())
}

/// Like [`classify`], but for static-key and KMS v1 prefixes first try each of `names` (the
/// longest match wins), so a name containing `:` is recognised whole. The names apply to every
/// provider kind; [`classify_with_config`] uses each kind's own configured names.
pub fn classify_with_names(etcd_key: &[u8], value: &[u8], names: &[&str]) -> Classified {
    let _ = etcd_key;
    classify_inner(value, |_| names.to_vec())
}

/// Like [`classify_with_names`], with the names `config` gives each provider kind (its static
/// key names and KMS v1 provider names).
pub fn classify_with_config(etcd_key: &[u8], value: &[u8], config: &EncryptionConfig) -> Classified {
    let _ = etcd_key;
    classify_inner(value, |kind| config.names(kind))
}

/// The longest name `n` of `names` such that `value` starts with `provider`'s prefix for `n`
/// (`k8s:enc:<provider>:v1:<n>:`), if any. For resolving names that contain `:`.
pub fn match_name<'n>(value: &[u8], provider: ProviderKind, names: &[&'n str]) -> Option<&'n str> {
    let tag = provider.prefix_tag()?;
    let rest = value.strip_prefix(ENCRYPTED_PREFIX)?.strip_prefix(tag)?;
    names
        .iter()
        .copied()
        .filter(|n| !n.is_empty() && rest.strip_prefix(n.as_bytes()).is_some_and(|r| r.first() == Some(&b':')))
        .max_by_key(|n| n.len())
}

fn classify_inner<'n>(value: &[u8], names_for: impl Fn(ProviderKind) -> Vec<&'n str>) -> Classified {
    if value.is_empty() {
        return Classified::Unrecognized { reason: "empty value".to_owned() };
    }
    if value.starts_with(PROTOBUF_MAGIC) {
        return Classified::IdentityProtobuf;
    }
    if value.first() == Some(&b'{') {
        return Classified::IdentityJson;
    }
    let Some(rest) = value.strip_prefix(ENCRYPTED_PREFIX) else {
        return Classified::Unrecognized {
            reason: format!(
                "{} bytes that are neither a protobuf object (k8s\\0), JSON nor an encrypted value (k8s:enc:)",
                value.len()
            ),
        };
    };
    for kind in
        [ProviderKind::AesCbc, ProviderKind::AesGcm, ProviderKind::Secretbox, ProviderKind::KmsV1, ProviderKind::KmsV2]
    {
        let Some(tag) = kind.prefix_tag() else {
            continue;
        };
        let Some(after_tag) = rest.strip_prefix(tag) else {
            continue;
        };
        // KMS v2 names cannot contain ':' (validation), so only v1 and static names are matched.
        let configured = if kind == ProviderKind::KmsV2 { None } else { match_name(value, kind, &names_for(kind)) };
        let (name, payload) = match split_name(after_tag, configured) {
            Ok(split) => split,
            Err(reason) => return corrupt(kind, None, reason),
        };
        return match kind {
            ProviderKind::AesCbc => classify_static(StaticProvider::AesCbc, name, payload),
            ProviderKind::AesGcm => classify_static(StaticProvider::AesGcm, name, payload),
            ProviderKind::Secretbox => classify_static(StaticProvider::Secretbox, name, payload),
            ProviderKind::KmsV1 => classify_kms_v1(name, payload),
            _ => classify_kms_v2(name, payload),
        };
    }
    Classified::UnknownPrefix { prefix: describe_prefix(value) }
}

/// Split `name:payload`, using the configured name when one matched.
fn split_name<'a>(after_tag: &'a [u8], configured: Option<&str>) -> Result<(String, &'a [u8]), String> {
    let (name, payload) = match configured {
        Some(n) => {
            let payload = after_tag
                .strip_prefix(n.as_bytes())
                .and_then(|r| r.strip_prefix(b":"))
                .ok_or_else(|| "configured name does not match".to_owned())?;
            (n.as_bytes(), payload)
        }
        None => {
            let colon = after_tag.iter().position(|&b| b == b':').ok_or_else(|| "no ':' after the name".to_owned())?;
            let (name, rest) = after_tag.split_at(colon);
            (name, rest.get(1..).unwrap_or_default())
        }
    };
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    let name = std::str::from_utf8(name).map_err(|_| format!("name is not UTF-8 ({})", escape_bytes(name, 64)))?;
    Ok((name.to_owned(), payload))
}

fn classify_static(provider: StaticProvider, key_name: String, payload: &[u8]) -> Classified {
    let min = provider.min_payload_len();
    if payload.len() < min {
        return corrupt(
            provider.kind(),
            Some(key_name),
            format!("payload of {} bytes is shorter than the {min}-byte minimum", payload.len()),
        );
    }
    if provider == StaticProvider::AesCbc && !payload.len().is_multiple_of(AES_BLOCK_LEN) {
        return corrupt(
            provider.kind(),
            Some(key_name),
            format!("payload of {} bytes is not a whole number of 16-byte blocks", payload.len()),
        );
    }
    Classified::StaticKey(StaticKeyValue { provider, key_name, payload_len: payload.len() })
}

/// Parsed KMS v1 payload: wrapped DEK and encrypted data.
pub(crate) fn split_kms_v1(payload: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some((len, rest)) = payload.split_first_chunk::<2>() else {
        return Err(format!("payload of {} bytes has no 2-byte DEK length", payload.len()));
    };
    let dek_len = usize::from(u16::from_be_bytes(*len));
    if dek_len == 0 {
        return Err("wrapped DEK length is 0".to_owned());
    }
    let Some((dek, data)) = rest.split_at_checked(dek_len) else {
        return Err(format!("wrapped DEK length {dek_len} exceeds the {} bytes that follow", rest.len()));
    };
    if data.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(format!("{} bytes of encrypted data after the wrapped DEK, fewer than nonce and tag", data.len()));
    }
    Ok((dek, data))
}

fn classify_kms_v1(provider_name: String, payload: &[u8]) -> Classified {
    match split_kms_v1(payload) {
        Ok((dek, data)) => {
            Classified::KmsV1(KmsV1Value { provider_name, wrapped_dek: dek.to_vec(), data_len: data.len() })
        }
        Err(reason) => corrupt(ProviderKind::KmsV1, Some(provider_name), reason),
    }
}

/// Decode and validate a KMS v2 `EncryptedObject` the way kube-apiserver does on read.
pub(crate) fn decode_kms_v2(payload: &[u8]) -> Result<envelope_proto::v2::EncryptedObject, String> {
    let obj = envelope_proto::v2::EncryptedObject::decode(payload)
        .map_err(|e| format!("EncryptedObject does not decode: {e}"))?;
    if obj.encrypted_data.is_empty() {
        return Err("encryptedData is empty".to_owned());
    }
    check_kms_v2_fields(&obj.key_id, &obj.encrypted_dek_source, obj.annotations.iter())?;
    let min = match DekSourceType::from_i32(obj.encrypted_dek_source_type) {
        DekSourceType::HkdfSha256XNonceAesGcmSeed => KMS_V2_INFO_LEN + GCM_NONCE_LEN + GCM_TAG_LEN,
        DekSourceType::AesGcmKey => GCM_NONCE_LEN + GCM_TAG_LEN,
        DekSourceType::Unknown(_) => 0,
    };
    if obj.encrypted_data.len() < min {
        return Err(format!(
            "encryptedData of {} bytes is shorter than the {min}-byte minimum",
            obj.encrypted_data.len()
        ));
    }
    Ok(obj)
}

/// kube-apiserver's checks on key_id, wrapped DEK source and annotations (spec §2.2).
pub(crate) fn check_kms_v2_fields<'a>(
    key_id: &str,
    dek_source: &[u8],
    annotations: impl Iterator<Item = (&'a String, &'a Vec<u8>)>,
) -> Result<(), String> {
    if key_id.is_empty() {
        return Err("keyID is empty".to_owned());
    }
    if key_id.len() > MAX_FIELD_LEN {
        return Err(format!("keyID of {} bytes exceeds {MAX_FIELD_LEN}", key_id.len()));
    }
    if dek_source.is_empty() {
        return Err("encryptedDEKSource is empty".to_owned());
    }
    if dek_source.len() > MAX_FIELD_LEN {
        return Err(format!("encryptedDEKSource of {} bytes exceeds {MAX_FIELD_LEN}", dek_source.len()));
    }
    rules::check_annotations(annotations).map_err(|e| match e {
        // A key can be long and is echoed in reports: cut it.
        AnnotationError::KeyNotFqdn(k) => AnnotationError::KeyNotFqdn(truncate(&k, 64)).to_string(),
        e => e.to_string(),
    })
}

fn classify_kms_v2(provider_name: String, payload: &[u8]) -> Classified {
    match decode_kms_v2(payload) {
        Ok(obj) => Classified::KmsV2(KmsV2Value {
            provider_name,
            key_id: obj.key_id,
            dek_source_type: DekSourceType::from_i32(obj.encrypted_dek_source_type),
            encrypted_dek_source: obj.encrypted_dek_source,
            annotations: obj.annotations.into_iter().collect(),
            encrypted_data_len: obj.encrypted_data.len(),
        }),
        Err(reason) => corrupt(ProviderKind::KmsV2, Some(provider_name), reason),
    }
}

fn corrupt(claimed: ProviderKind, name: Option<String>, reason: String) -> Classified {
    Classified::Corrupt(CorruptValue { claimed, name, reason })
}

/// `k8s:enc:` and up to two more `:`-terminated segments, escaped, at most ~64 characters.
pub(crate) fn describe_prefix(value: &[u8]) -> String {
    let mut end = ENCRYPTED_PREFIX.len();
    for _ in 0..2 {
        match value.get(end..).and_then(|r| r.iter().take(32).position(|&b| b == b':')) {
            Some(i) => end += i + 1,
            None => break,
        }
    }
    escape_bytes(value.get(..end).unwrap_or(value), 64)
}

/// Printable ASCII kept, other bytes as `\xNN`; cut after `max` input bytes with `...`.
pub(crate) fn escape_bytes(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(ProviderKind::KmsV2.prefix("p").as_deref(), Some(b"k8s:enc:kms:v2:p:".as_slice()));
        assert_eq!(StaticProvider::Secretbox.prefix("k"), b"k8s:enc:secretbox:v1:k:".to_vec());
        assert_eq!(ProviderKind::Identity.prefix("x"), None);
        for p in StaticProvider::ALL {
            assert_eq!(p.kind().prefix("n"), Some(p.prefix("n")));
        }
    }

    #[test]
    fn describe_unknown_prefix() {
        assert_eq!(describe_prefix(b"k8s:enc:foo:v9:name:\x00\x01"), "k8s:enc:foo:v9:");
        assert_eq!(describe_prefix(b"k8s:enc:\xff"), "k8s:enc:");
        assert_eq!(escape_bytes(b"a\x00b", 64), "a\\x00b");
    }

    #[test]
    fn names_with_colons() {
        let mut v = StaticProvider::AesGcm.prefix("a:b");
        v.extend_from_slice(&[0u8; 40]);
        match classify(b"/k", &v) {
            Classified::StaticKey(s) => assert_eq!(s.key_name, "a"),
            other => panic!("{other:?}"),
        }
        match classify_with_names(b"/k", &v, &["a", "a:b", "c"]) {
            Classified::StaticKey(s) => {
                assert_eq!(s.key_name, "a:b");
                assert_eq!(s.payload_len, 40);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(match_name(&v, ProviderKind::AesGcm, &["a", "a:b"]), Some("a:b"));
        assert_eq!(match_name(&v, ProviderKind::AesCbc, &["a", "a:b"]), None);
    }
}
