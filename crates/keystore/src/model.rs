//! The key model: states, metadata, versions, and how keys are referred to.

use std::fmt;

use crate::error::{Error, Result};

/// The lifecycle state of a key (names as in the AWS KMS API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Usable for encryption and decryption.
    Enabled,
    /// Temporarily unusable; can be enabled again.
    Disabled,
    /// Scheduled for deletion; unusable.
    PendingDeletion,
    /// A key for imported material (origin `EXTERNAL`) that has none (yet, or any more); unusable.
    PendingImport,
}

impl KeyState {
    /// The stored / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "Enabled" => Ok(KeyState::Enabled),
            "Disabled" => Ok(KeyState::Disabled),
            "PendingDeletion" => Ok(KeyState::PendingDeletion),
            "PendingImport" => Ok(KeyState::PendingImport),
            other => Err(Error::Storage(format!("unknown key state {other:?} in database"))),
        }
    }
}

impl fmt::Display for KeyState {
    /// The state's name; honours width and alignment (`{:<16}`) so tables line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What kind of key a key is (AWS's `KeySpec`): the kind of its material and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeySpec {
    /// AES-256-GCM (`SYMMETRIC_DEFAULT`): encrypts and decrypts. Every key before schema 7.
    #[default]
    SymmetricDefault,
    /// HMAC with SHA-224, a 224-bit key (`HMAC_224`).
    Hmac224,
    /// HMAC with SHA-256, a 256-bit key (`HMAC_256`).
    Hmac256,
    /// HMAC with SHA-384, a 384-bit key (`HMAC_384`).
    Hmac384,
    /// HMAC with SHA-512, a 512-bit key (`HMAC_512`).
    Hmac512,
    /// NIST P-256 (`ECC_NIST_P256`): ECDSA with SHA-256 (`SIGN_VERIFY`) or ECDH
    /// (`KEY_AGREEMENT`), material stored as PKCS#8.
    EccNistP256,
    /// NIST P-384 (`ECC_NIST_P384`): ECDSA with SHA-384 or ECDH, material stored as PKCS#8.
    EccNistP384,
    /// NIST P-521 (`ECC_NIST_P521`): ECDSA with SHA-512 or ECDH, material stored as PKCS#8.
    EccNistP521,
    /// ECDSA on secp256k1 with SHA-256 (`ECC_SECG_P256K1`), material stored as PKCS#8.
    EccSecgP256k1,
    /// RSA 2048-bit (`RSA_2048`: `SIGN_VERIFY` or `ENCRYPT_DECRYPT`), material stored as PKCS#8.
    Rsa2048,
    /// RSA 3072-bit (`RSA_3072`: `SIGN_VERIFY` or `ENCRYPT_DECRYPT`), material stored as PKCS#8.
    Rsa3072,
    /// RSA 4096-bit (`RSA_4096`: `SIGN_VERIFY` or `ENCRYPT_DECRYPT`), material stored as PKCS#8.
    Rsa4096,
}

impl KeySpec {
    /// Every key spec this store can hold.
    pub const ALL: [KeySpec; 12] = [
        KeySpec::SymmetricDefault,
        KeySpec::Hmac224,
        KeySpec::Hmac256,
        KeySpec::Hmac384,
        KeySpec::Hmac512,
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
    ];

    /// The stored / wire name (`SYMMETRIC_DEFAULT`, `HMAC_256`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Hmac224 => "HMAC_224",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::EccNistP384 => "ECC_NIST_P384",
            KeySpec::EccNistP521 => "ECC_NIST_P521",
            KeySpec::EccSecgP256k1 => "ECC_SECG_P256K1",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
        }
    }

    /// The key spec of a wire name (`None`: not one this store can hold).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::from_name(s).ok_or_else(|| Error::Storage(format!("unknown key spec {s:?} in database")))
    }

    /// The key usages keys of this spec may have (as AWS allows them), the default first.
    pub fn usages(self) -> &'static [KeyUsage] {
        use KeyUsage as U;
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[U::SignVerify, U::EncryptDecrypt],
            KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => &[U::SignVerify, U::KeyAgreement],
            KeySpec::SymmetricDefault => &[U::EncryptDecrypt],
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => &[U::GenerateVerifyMac],
            KeySpec::EccSecgP256k1 => &[U::SignVerify],
        }
    }

    /// The default key usage of keys of this spec (the only one of most specs; `SIGN_VERIFY`
    /// for key pairs).
    pub fn usage(self) -> KeyUsage {
        match self {
            KeySpec::SymmetricDefault => KeyUsage::EncryptDecrypt,
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => KeyUsage::GenerateVerifyMac,
            KeySpec::EccNistP256
            | KeySpec::EccNistP384
            | KeySpec::EccNistP521
            | KeySpec::EccSecgP256k1
            | KeySpec::Rsa2048
            | KeySpec::Rsa3072
            | KeySpec::Rsa4096 => KeyUsage::SignVerify,
        }
    }

    /// Length of the key material in bytes (as AWS: HMAC keys as long as their digest); `None`
    /// for key pairs (PKCS#8 documents, checked by parsing).
    pub fn material_len(self) -> Option<usize> {
        match self {
            KeySpec::SymmetricDefault | KeySpec::Hmac256 => Some(32),
            KeySpec::Hmac224 => Some(28),
            KeySpec::Hmac384 => Some(48),
            KeySpec::Hmac512 => Some(64),
            _ => None,
        }
    }

    /// The lengths this spec's secret material may have: exactly 32 bytes for symmetric keys;
    /// for HMAC keys what AWS accepts for imported material (HMAC_224 28–64 bytes, HMAC_256
    /// 32–64, HMAC_384 48–128, HMAC_512 64–128; generated material is as long as the digest);
    /// `None` for key pairs (PKCS#8 documents, checked by parsing).
    pub fn material_lens(self) -> Option<std::ops::RangeInclusive<usize>> {
        match self {
            KeySpec::SymmetricDefault => Some(32..=32),
            KeySpec::Hmac224 => Some(28..=64),
            KeySpec::Hmac256 => Some(32..=64),
            KeySpec::Hmac384 => Some(48..=128),
            KeySpec::Hmac512 => Some(64..=128),
            _ => None,
        }
    }

    /// The signing algorithms of a signing key (empty for other keys).
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm as S;
        match self {
            KeySpec::EccNistP256 | KeySpec::EccSecgP256k1 => &[S::EcdsaSha256],
            KeySpec::EccNistP384 => &[S::EcdsaSha384],
            KeySpec::EccNistP521 => &[S::EcdsaSha512],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &RSA_SIGNING,
            _ => &[],
        }
    }

    /// Whether the key is a key pair (ECC or RSA), whatever its usage.
    pub fn is_signing(self) -> bool {
        !self.signing_algorithms().is_empty()
    }

    /// Whether keys of this spec are key pairs (ECC or RSA): they have a public key.
    pub fn is_key_pair(self) -> bool {
        self.is_signing()
    }

    /// The RSA-OAEP algorithms of an RSA key (empty for other keys).
    pub fn encryption_algorithms(self) -> &'static [EncryptionAlgorithm] {
        match self {
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &EncryptionAlgorithm::ALL,
            _ => &[],
        }
    }

    /// The size of an RSA key's modulus in bytes (`None` for other keys).
    pub fn rsa_modulus_len(self) -> Option<usize> {
        match self {
            KeySpec::Rsa2048 => Some(256),
            KeySpec::Rsa3072 => Some(384),
            KeySpec::Rsa4096 => Some(512),
            _ => None,
        }
    }

    /// Whether keys of this spec can be `KEY_AGREEMENT` keys (ECDH on a NIST curve).
    pub fn is_agreement(self) -> bool {
        self.usages().contains(&KeyUsage::KeyAgreement)
    }

    /// The MAC algorithm of an HMAC key (`None` for other keys).
    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            KeySpec::SymmetricDefault => None,
            KeySpec::Hmac224 => Some(MacAlgorithm::HmacSha224),
            KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
            KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
            KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
            _ => None,
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a key is for (AWS's `KeyUsage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyUsage {
    /// Encrypt, Decrypt, ReEncrypt, GenerateDataKey (`ENCRYPT_DECRYPT`).
    #[default]
    EncryptDecrypt,
    /// GenerateMac, VerifyMac (`GENERATE_VERIFY_MAC`).
    GenerateVerifyMac,
    /// Sign, Verify (`SIGN_VERIFY`).
    SignVerify,
    /// DeriveSharedSecret (`KEY_AGREEMENT`).
    KeyAgreement,
}

impl KeyUsage {
    /// The stored / wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            KeyUsage::SignVerify => "SIGN_VERIFY",
            KeyUsage::KeyAgreement => "KEY_AGREEMENT",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ENCRYPT_DECRYPT" => Ok(KeyUsage::EncryptDecrypt),
            "GENERATE_VERIFY_MAC" => Ok(KeyUsage::GenerateVerifyMac),
            "SIGN_VERIFY" => Ok(KeyUsage::SignVerify),
            "KEY_AGREEMENT" => Ok(KeyUsage::KeyAgreement),
            other => Err(Error::Storage(format!("unknown key usage {other:?} in database"))),
        }
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The signing algorithms of RSA keys, in AWS's order.
const RSA_SIGNING: [SigningAlgorithm; 6] = [
    SigningAlgorithm::RsassaPssSha256,
    SigningAlgorithm::RsassaPssSha384,
    SigningAlgorithm::RsassaPssSha512,
    SigningAlgorithm::RsassaPkcs1V15Sha256,
    SigningAlgorithm::RsassaPkcs1V15Sha384,
    SigningAlgorithm::RsassaPkcs1V15Sha512,
];

/// The signing algorithms (AWS's `SigningAlgorithmSpec`) of the signing keys this store makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// `RSASSA_PSS_SHA_256` (salt as long as the digest).
    RsassaPssSha256,
    /// `RSASSA_PSS_SHA_384`.
    RsassaPssSha384,
    /// `RSASSA_PSS_SHA_512`.
    RsassaPssSha512,
    /// `RSASSA_PKCS1_V1_5_SHA_256`.
    RsassaPkcs1V15Sha256,
    /// `RSASSA_PKCS1_V1_5_SHA_384`.
    RsassaPkcs1V15Sha384,
    /// `RSASSA_PKCS1_V1_5_SHA_512`.
    RsassaPkcs1V15Sha512,
    /// `ECDSA_SHA_256` (ECC_NIST_P256).
    EcdsaSha256,
    /// `ECDSA_SHA_384` (ECC_NIST_P384).
    EcdsaSha384,
    /// `ECDSA_SHA_512` (ECC_NIST_P521).
    EcdsaSha512,
}

impl SigningAlgorithm {
    /// Every signing algorithm this store implements.
    pub const ALL: [SigningAlgorithm; 9] = [
        SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::RsassaPssSha384,
        SigningAlgorithm::RsassaPssSha512,
        SigningAlgorithm::RsassaPkcs1V15Sha256,
        SigningAlgorithm::RsassaPkcs1V15Sha384,
        SigningAlgorithm::RsassaPkcs1V15Sha512,
        SigningAlgorithm::EcdsaSha256,
        SigningAlgorithm::EcdsaSha384,
        SigningAlgorithm::EcdsaSha512,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::EcdsaSha256 => "ECDSA_SHA_256",
            SigningAlgorithm::EcdsaSha384 => "ECDSA_SHA_384",
            SigningAlgorithm::EcdsaSha512 => "ECDSA_SHA_512",
            SigningAlgorithm::RsassaPssSha256 => "RSASSA_PSS_SHA_256",
            SigningAlgorithm::RsassaPssSha384 => "RSASSA_PSS_SHA_384",
            SigningAlgorithm::RsassaPssSha512 => "RSASSA_PSS_SHA_512",
            SigningAlgorithm::RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            SigningAlgorithm::RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            SigningAlgorithm::RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
        }
    }

    /// The algorithm of a wire name (`None`: not one this store implements).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Length of the message digest the algorithm signs (a `DIGEST` message's length).
    pub fn digest_len(self) -> usize {
        use SigningAlgorithm as S;
        match self {
            S::EcdsaSha256 | S::RsassaPssSha256 | S::RsassaPkcs1V15Sha256 => 32,
            S::EcdsaSha384 | S::RsassaPssSha384 | S::RsassaPkcs1V15Sha384 => 48,
            S::EcdsaSha512 | S::RsassaPssSha512 | S::RsassaPkcs1V15Sha512 => 64,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The encryption algorithms of RSA `ENCRYPT_DECRYPT` keys (AWS's `EncryptionAlgorithmSpec`
/// besides `SYMMETRIC_DEFAULT`): RSA-OAEP with MGF1 of the same hash, no label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncryptionAlgorithm {
    /// `RSAES_OAEP_SHA_1`.
    RsaesOaepSha1,
    /// `RSAES_OAEP_SHA_256`.
    RsaesOaepSha256,
}

impl EncryptionAlgorithm {
    /// Every RSA encryption algorithm, in AWS's order.
    pub const ALL: [EncryptionAlgorithm; 2] =
        [EncryptionAlgorithm::RsaesOaepSha1, EncryptionAlgorithm::RsaesOaepSha256];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            EncryptionAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// The algorithm of a wire name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Length of the algorithm's hash in bytes.
    pub fn hash_len(self) -> usize {
        match self {
            EncryptionAlgorithm::RsaesOaepSha1 => 20,
            EncryptionAlgorithm::RsaesOaepSha256 => 32,
        }
    }

    /// The longest plaintext it encrypts under an RSA key of `spec` (RFC 8017: the modulus
    /// length less twice the hash length less 2); 0 for other keys.
    pub fn max_plaintext(self, spec: KeySpec) -> usize {
        spec.rsa_modulus_len().map_or(0, |k| k.saturating_sub(2 * self.hash_len() + 2))
    }
}

impl fmt::Display for EncryptionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The HMAC algorithms (AWS's `MacAlgorithmSpec`); each belongs to one HMAC key spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MacAlgorithm {
    /// `HMAC_SHA_224`.
    HmacSha224,
    /// `HMAC_SHA_256`.
    HmacSha256,
    /// `HMAC_SHA_384`.
    HmacSha384,
    /// `HMAC_SHA_512`.
    HmacSha512,
}

impl MacAlgorithm {
    /// Every MAC algorithm.
    pub const ALL: [MacAlgorithm; 4] =
        [MacAlgorithm::HmacSha224, MacAlgorithm::HmacSha256, MacAlgorithm::HmacSha384, MacAlgorithm::HmacSha512];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha224 => "HMAC_SHA_224",
            MacAlgorithm::HmacSha256 => "HMAC_SHA_256",
            MacAlgorithm::HmacSha384 => "HMAC_SHA_384",
            MacAlgorithm::HmacSha512 => "HMAC_SHA_512",
        }
    }

    /// The algorithm of a wire name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A key's public description. Contains no key material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyMetadata {
    /// The key id, a UUID.
    pub key_id: String,
    /// Free-form description.
    pub description: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Id of the current key material (64 lowercase hex characters); changes on every rotation.
    pub current_material_id: String,
    /// All key material versions, oldest first.
    pub versions: Vec<KeyVersion>,
    /// Aliases pointing at this key (`alias/...`).
    pub aliases: Vec<String>,
    /// What kind of key it is.
    pub key_spec: KeySpec,
    /// What it is for.
    pub key_usage: KeyUsage,
}

impl serde::Serialize for KeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for KeyUsage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One version of a key's material (metadata only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyVersion {
    /// Material id, 64 lowercase hex characters.
    pub material_id: String,
    /// 1 for the original material, +1 per rotation.
    pub seq: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

/// How a key material version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RotationType {
    /// The key's first material (not a rotation).
    Initial,
    /// Made by the automatic rotation schedule.
    Automatic,
    /// Made by an explicit rotation (`RotateKeyOnDemand`, `envelope key rotate`).
    OnDemand,
}

impl RotationType {
    /// The wire name of a rotation (`AUTOMATIC`, `ON_DEMAND`); `None` for the initial material.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            RotationType::Initial => None,
            RotationType::Automatic => Some("AUTOMATIC"),
            RotationType::OnDemand => Some("ON_DEMAND"),
        }
    }
}

/// One material version with how it was made (see [`KeyAttributes::rotations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Material id, 64 lowercase hex characters.
    pub material_id: String,
    /// 1 for the original material, +1 per rotation.
    pub seq: u32,
    /// Creation time of the material, Unix seconds.
    pub created_at: i64,
    /// How it was made.
    pub kind: RotationType,
}

/// Management attributes of a key beyond [`KeyMetadata`]: deletion schedule, automatic rotation,
/// tags and key policy. Contains no key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAttributes {
    /// When a key pending deletion will be deleted, Unix seconds.
    pub deletion_date: Option<i64>,
    /// The waiting period chosen when deletion was scheduled, in days.
    pub pending_window_days: Option<u32>,
    /// Automatic rotation period in days; `None` when automatic rotation is off.
    pub rotation_period_days: Option<u32>,
    /// When the next automatic rotation is due, Unix seconds (with automatic rotation on).
    pub next_rotation: Option<i64>,
    /// Tags, ordered by tag key.
    pub tags: Vec<(String, String)>,
    /// The key policy document (policy name `default`); `None` when never set.
    pub policy: Option<std::sync::Arc<str>>,
    /// All material versions, oldest first, with how each was made.
    pub rotations: Vec<Rotation>,
    /// Whether the key's material is imported (origin `EXTERNAL`) rather than generated.
    pub external: bool,
    /// For an external key: the id of its CURRENT material; `None` before the first import.
    pub imported_material_id: Option<String>,
    /// For an external key whose CURRENT material is imported: when that material expires, Unix
    /// seconds (`None`: it does not expire).
    pub valid_to: Option<i64>,
    /// For an external key: every material associated with it (or pending rotation), in the
    /// order they were first imported.
    pub materials: Vec<ImportedMaterial>,
    /// The key's grants, oldest first (creation time, then grant id).
    pub grants: Vec<std::sync::Arc<Grant>>,
}

impl KeyAttributes {
    /// The key's grants whose grantee is exactly `principal` (what an authorization checks).
    pub fn grants_for<'a>(&'a self, principal: &'a str) -> impl Iterator<Item = &'a std::sync::Arc<Grant>> + 'a {
        self.grants.iter().filter(move |g| g.grantee == principal)
    }
}

/// An encryption-context constraint of a grant (AWS's `GrantConstraints`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct GrantConstraints {
    /// The request's encryption context must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<std::collections::BTreeMap<String, String>>,
    /// The request's encryption context must include every pair of this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<std::collections::BTreeMap<String, String>>,
}

impl GrantConstraints {
    /// Whether a request with encryption context `ctx` satisfies the constraints.
    pub fn allows(&self, ctx: &std::collections::BTreeMap<String, String>) -> bool {
        self.encryption_context_equals.as_ref().is_none_or(|e| e == ctx)
            && self.encryption_context_subset.as_ref().is_none_or(|s| s.iter().all(|(k, v)| ctx.get(k) == Some(v)))
    }

    /// Whether `child` is at least as strict as `self`: every context `child` allows, `self`
    /// allows too (what a grantee with CreateGrant from a grant may pass on).
    pub fn covers(&self, child: Option<&GrantConstraints>) -> bool {
        let equals_ok = match &self.encryption_context_equals {
            None => true,
            Some(e) => child.and_then(|c| c.encryption_context_equals.as_ref()) == Some(e),
        };
        let subset_ok = match &self.encryption_context_subset {
            None => true,
            Some(s) => {
                let includes =
                    |m: &std::collections::BTreeMap<String, String>| s.iter().all(|(k, v)| m.get(k) == Some(v));
                child.is_some_and(|c| {
                    c.encryption_context_equals.as_ref().is_some_and(includes)
                        || c.encryption_context_subset.as_ref().is_some_and(includes)
                })
            }
        };
        equals_ok && subset_ok
    }

    /// Whether there is no constraint at all.
    pub fn is_empty(&self) -> bool {
        self.encryption_context_equals.is_none() && self.encryption_context_subset.is_none()
    }
}

/// A grant on a key (the key server's CreateGrant): who may use the key for which operations,
/// under which encryption-context constraints. Contains no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// 64 lowercase hex characters.
    pub grant_id: String,
    /// The key id (UUID) it is on.
    pub key_id: String,
    /// The client's `Name` (idempotency of CreateGrant).
    pub name: Option<String>,
    /// The principal that gets the permissions.
    pub grantee: String,
    /// The principal that may retire it.
    pub retiring: Option<String>,
    /// The account root (`arn:aws:iam::<account>:root`) of the creator.
    pub issuing_account: String,
    /// The grant operations, sorted, without repeats.
    pub operations: Vec<String>,
    /// Encryption-context constraints.
    pub constraints: Option<GrantConstraints>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl Grant {
    /// Whether `other` is a retry of the CreateGrant that made `self`: the same key, name,
    /// grantee, retiring principal, operations and constraints (AWS's idempotency by `Name`;
    /// without a name every CreateGrant makes a new grant).
    pub fn same_request(&self, other: &Grant) -> bool {
        self.name.is_some()
            && self.key_id == other.key_id
            && self.name == other.name
            && self.grantee == other.grantee
            && self.retiring == other.retiring
            && self.operations == other.operations
            && self.constraints.as_ref().filter(|c| !c.is_empty())
                == other.constraints.as_ref().filter(|c| !c.is_empty())
    }

    /// Whether the grant allows `operation` for a request with encryption context `ctx`. The
    /// constraints apply to the cryptographic operations only (not to DescribeKey,
    /// RetireGrant or CreateGrant, as in AWS KMS).
    pub fn allows(&self, operation: &str, ctx: &std::collections::BTreeMap<String, String>) -> bool {
        if !self.operations.iter().any(|o| o == operation) {
            return false;
        }
        if matches!(operation, "DescribeKey" | "RetireGrant" | "CreateGrant") {
            return true;
        }
        self.constraints.as_ref().is_none_or(|c| c.allows(ctx))
    }
}

/// Where an external key's material stands in its rotations (AWS's `KeyMaterialState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaterialState {
    /// Used to encrypt and decrypt.
    Current,
    /// Was current before an on-demand rotation: decrypts only.
    NonCurrent,
    /// Imported as new material for the next on-demand rotation; not used yet, and not yet
    /// permanently associated with the key.
    PendingRotation,
}

impl MaterialState {
    /// The stored / wire name (`CURRENT`, `NON_CURRENT`, `PENDING_ROTATION`).
    pub fn as_str(self) -> &'static str {
        match self {
            MaterialState::Current => "CURRENT",
            MaterialState::NonCurrent => "NON_CURRENT",
            MaterialState::PendingRotation => "PENDING_ROTATION",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "CURRENT" => Ok(MaterialState::Current),
            "NON_CURRENT" => Ok(MaterialState::NonCurrent),
            "PENDING_ROTATION" => Ok(MaterialState::PendingRotation),
            other => Err(Error::Storage(format!("unknown key material state {other:?} in database"))),
        }
    }
}

/// One material of an external key (metadata only; the sealed material is a version of the key
/// while it is imported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedMaterial {
    /// Material id, 64 lowercase hex characters (derived from key id and material).
    pub material_id: String,
    /// Order of first import: 1 for the key's first material.
    pub seq: u32,
    /// Current, non-current or pending rotation.
    pub state: MaterialState,
    /// Whether the material is in the store (`false`: deleted or expired, `PENDING_IMPORT`
    /// until the same material is imported again).
    pub imported: bool,
    /// The caller's description of it (`KeyMaterialDescription`).
    pub description: Option<String>,
    /// While imported: when it expires, Unix seconds (`None`: it does not expire).
    pub valid_to: Option<i64>,
    /// First import, Unix seconds.
    pub created_at: i64,
    /// When an on-demand rotation made it current, Unix seconds (`None`: the first material,
    /// or one pending rotation).
    pub rotated_at: Option<i64>,
}

/// What ImportKeyMaterial says about the material it brings (AWS's `ImportType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportType {
    /// Material not associated with the key yet: the first, or the next one to rotate to.
    New,
    /// Material imported into the key before (deleted, expired, or to change its expiry).
    Existing,
}

/// The choices of an import besides the material itself ([`crate::KeyStore::import_material_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// New or existing material; `None`: new for a key never imported into, existing after.
    pub import_type: Option<ImportType>,
    /// With existing material: the id it must have (`KeyMaterialId`).
    pub material_id: Option<String>,
    /// A description to keep with it (`None`: keep the one it had).
    pub description: Option<String>,
    /// When it expires, Unix seconds (`None`: never).
    pub valid_to: Option<i64>,
}

/// How a caller names a key: its UUID, or an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key id (UUID).
    Id(uuid::Uuid),
    /// An alias name, always normalised to start with `alias/`.
    Alias(String),
}

impl KeyRef {
    /// Parses a key reference: a UUID is a key id; `alias/NAME` or a bare `NAME` is an alias.
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(u) = uuid::Uuid::parse_str(s) {
            return Ok(KeyRef::Id(u));
        }
        let name = if s.starts_with("alias/") { s.to_string() } else { format!("alias/{s}") };
        validate_alias(&name)?;
        Ok(KeyRef::Alias(name))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Id(u) => write!(f, "{u}"),
            KeyRef::Alias(a) => f.write_str(a),
        }
    }
}

/// Checks an alias name: `alias/` followed by 1–250 of `[A-Za-z0-9/_-]`, not `alias/aws/...`.
pub fn validate_alias(name: &str) -> Result<()> {
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(Error::Invalid("alias names must start with alias/".into()));
    };
    if rest.is_empty() || name.len() > 256 {
        return Err(Error::Invalid("alias name must be 1 to 250 characters after alias/".into()));
    }
    if rest.starts_with("aws/") {
        return Err(Error::Invalid("alias names starting with alias/aws/ are reserved".into()));
    }
    if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-')) {
        return Err(Error::Invalid("alias names may contain only letters, digits, '/', '_' and '-'".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_refs() {
        assert!(matches!(KeyRef::parse("1234abcd-12ab-34cd-56ef-1234567890ab"), Ok(KeyRef::Id(_))));
        assert_eq!(KeyRef::parse("k8s").unwrap(), KeyRef::Alias("alias/k8s".into()));
        assert_eq!(KeyRef::parse("alias/k8s").unwrap(), KeyRef::Alias("alias/k8s".into()));
        assert!(KeyRef::parse("alias/aws/x").is_err());
        assert!(KeyRef::parse("bad name").is_err());
        assert!(KeyRef::parse("").is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [KeyState::Enabled, KeyState::Disabled, KeyState::PendingDeletion, KeyState::PendingImport] {
            assert_eq!(KeyState::parse(s.as_str()).unwrap(), s);
        }
        assert!(KeyState::parse("Bogus").is_err());
    }

    #[test]
    fn key_pairs_have_their_usages_and_rsa_limits_are_aws_s() {
        assert_eq!(KeySpec::Rsa2048.usages(), [KeyUsage::SignVerify, KeyUsage::EncryptDecrypt]);
        assert_eq!(KeySpec::EccNistP384.usages(), [KeyUsage::SignVerify, KeyUsage::KeyAgreement]);
        assert_eq!(KeySpec::EccSecgP256k1.usages(), [KeyUsage::SignVerify]);
        assert!(KeySpec::EccNistP521.is_agreement() && !KeySpec::EccSecgP256k1.is_agreement());
        assert!(!KeySpec::Rsa2048.is_agreement() && !KeySpec::SymmetricDefault.is_agreement());
        for k in KeySpec::ALL {
            assert_eq!(k.usages()[0], k.usage(), "{k}");
            assert_eq!(k.is_key_pair(), k.usages().len() > 1 || k == KeySpec::EccSecgP256k1, "{k}");
        }
        // AWS's documented limits: RSA_2048 214/190, RSA_3072 342/318, RSA_4096 470/446.
        let (sha1, sha256) = (EncryptionAlgorithm::RsaesOaepSha1, EncryptionAlgorithm::RsaesOaepSha256);
        let limits: Vec<(usize, usize)> = [KeySpec::Rsa2048, KeySpec::Rsa3072, KeySpec::Rsa4096]
            .iter()
            .map(|&k| (sha1.max_plaintext(k), sha256.max_plaintext(k)))
            .collect();
        assert_eq!(limits, [(214, 190), (342, 318), (470, 446)]);
        assert_eq!(sha256.max_plaintext(KeySpec::EccNistP256), 0);
        assert_eq!(KeySpec::Rsa3072.encryption_algorithms(), EncryptionAlgorithm::ALL);
        assert!(KeySpec::EccNistP256.encryption_algorithms().is_empty());
        assert_eq!(EncryptionAlgorithm::from_name("RSAES_OAEP_SHA_1"), Some(sha1));
        assert_eq!(EncryptionAlgorithm::from_name("SYMMETRIC_DEFAULT"), None);
    }

    #[test]
    fn key_specs_round_trip_with_their_usage_lengths_and_algorithms() {
        for k in KeySpec::ALL {
            assert_eq!(KeySpec::parse(k.as_str()).unwrap(), k);
            assert_eq!(KeyUsage::parse(k.usage().as_str()).unwrap(), k.usage());
        }
        let lens: Vec<Option<usize>> = KeySpec::ALL.iter().map(|k| k.material_len()).collect();
        assert_eq!(lens, [Some(32), Some(28), Some(32), Some(48), Some(64), None, None, None, None, None, None, None]);
        assert_eq!(KeySpec::EccNistP384.usage(), KeyUsage::SignVerify);
        assert_eq!(KeySpec::EccNistP521.signing_algorithms(), [SigningAlgorithm::EcdsaSha512]);
        assert_eq!(KeySpec::Rsa3072.signing_algorithms().len(), 6);
        assert!(!KeySpec::Hmac256.is_signing() && KeySpec::Rsa4096.is_signing());
        assert_eq!(SigningAlgorithm::from_name("ECDSA_SHA_384").map(|a| a.digest_len()), Some(48));
        assert_eq!(KeySpec::SymmetricDefault.usage(), KeyUsage::EncryptDecrypt);
        assert_eq!(KeySpec::Hmac384.usage(), KeyUsage::GenerateVerifyMac);
        assert_eq!(KeySpec::Hmac512.mac_algorithm(), Some(MacAlgorithm::HmacSha512));
        assert_eq!(KeySpec::SymmetricDefault.mac_algorithm(), None);
        assert_eq!(MacAlgorithm::from_name("HMAC_SHA_224"), Some(MacAlgorithm::HmacSha224));
        assert!(KeySpec::parse("SM2").is_err());
        assert_eq!(KeyUsage::parse("KEY_AGREEMENT").unwrap(), KeyUsage::KeyAgreement);
        assert!(KeyUsage::parse("ENCAPSULATE_DECAPSULATE").is_err());
        assert_eq!(KeySpec::default(), KeySpec::SymmetricDefault);
    }
}

#[cfg(test)]
mod grant_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn equals(pairs: &[(&str, &str)]) -> GrantConstraints {
        GrantConstraints { encryption_context_equals: Some(map(pairs)), ..GrantConstraints::default() }
    }

    fn subset(pairs: &[(&str, &str)]) -> GrantConstraints {
        GrantConstraints { encryption_context_subset: Some(map(pairs)), ..GrantConstraints::default() }
    }

    fn grant(ops: &[&str], c: Option<GrantConstraints>) -> Grant {
        Grant {
            grant_id: "0".repeat(64),
            key_id: "k".into(),
            name: Some("n".into()),
            grantee: "arn:aws:iam::111122223333:user/app".into(),
            retiring: None,
            issuing_account: "arn:aws:iam::111122223333:root".into(),
            operations: ops.iter().map(|o| o.to_string()).collect(),
            constraints: c,
            created_at: 1,
        }
    }

    #[test]
    fn constraints_match_the_request_context() {
        let e = equals(&[("app", "web")]);
        assert!(e.allows(&map(&[("app", "web")])));
        assert!(!e.allows(&map(&[("app", "web"), ("x", "1")])), "equals: nothing more");
        assert!(!e.allows(&map(&[])));
        assert!(!e.allows(&map(&[("App", "web")])), "keys are case-sensitive");
        let s = subset(&[("app", "web")]);
        assert!(s.allows(&map(&[("app", "web"), ("x", "1")])));
        assert!(!s.allows(&map(&[("app", "db")])));
        assert!(!s.allows(&map(&[])));
        assert!(GrantConstraints::default().allows(&map(&[("any", "thing")])));
    }

    #[test]
    fn grants_allow_their_operations_only() {
        let g = grant(&["Decrypt", "DescribeKey", "RetireGrant"], Some(subset(&[("app", "web")])));
        assert!(g.allows("Decrypt", &map(&[("app", "web")])));
        assert!(!g.allows("Decrypt", &map(&[("app", "db")])));
        assert!(!g.allows("Encrypt", &map(&[("app", "web")])));
        // The constraint does not apply to DescribeKey and RetireGrant.
        assert!(g.allows("DescribeKey", &map(&[])));
        assert!(g.allows("RetireGrant", &map(&[])));
        assert!(!g.allows("decrypt", &map(&[("app", "web")])), "operation names are exact");
    }

    #[test]
    fn child_constraints_must_be_at_least_as_strict() {
        let none = GrantConstraints::default();
        assert!(none.covers(None));
        assert!(none.covers(Some(&subset(&[("a", "1")]))));
        let s = subset(&[("a", "1")]);
        assert!(!s.covers(None));
        assert!(s.covers(Some(&subset(&[("a", "1")]))));
        assert!(s.covers(Some(&subset(&[("a", "1"), ("b", "2")]))));
        assert!(s.covers(Some(&equals(&[("a", "1"), ("b", "2")]))));
        assert!(!s.covers(Some(&subset(&[("b", "2")]))));
        assert!(!s.covers(Some(&subset(&[("a", "2")]))));
        let e = equals(&[("a", "1")]);
        assert!(e.covers(Some(&equals(&[("a", "1")]))));
        assert!(!e.covers(Some(&subset(&[("a", "1")]))), "a subset allows more keys");
        assert!(!e.covers(Some(&equals(&[("a", "1"), ("b", "2")]))));
        assert!(!e.covers(None));
    }

    #[test]
    fn idempotency_needs_a_name_and_the_same_parameters() {
        let a = grant(&["Decrypt", "Encrypt"], Some(subset(&[("a", "1")])));
        assert!(a.same_request(&a.clone()));
        let mut b = a.clone();
        b.grant_id = "1".repeat(64);
        b.created_at = 99;
        assert!(a.same_request(&b), "id and time are not parameters");
        for change in [
            |g: &mut Grant| g.name = Some("m".into()),
            |g: &mut Grant| g.grantee = "arn:aws:iam::111122223333:user/other".into(),
            |g: &mut Grant| g.retiring = Some("arn:aws:iam::111122223333:user/admin".into()),
            |g: &mut Grant| g.operations = vec!["Decrypt".into()],
            |g: &mut Grant| g.constraints = None,
            |g: &mut Grant| g.key_id = "other".into(),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert!(!a.same_request(&c), "{c:?}");
        }
        let mut unnamed = a.clone();
        unnamed.name = None;
        assert!(!unnamed.same_request(&unnamed.clone()), "without a name, every request is a new grant");
        // An empty constraint is no constraint.
        let mut empty = a.clone();
        empty.constraints = Some(GrantConstraints::default());
        let mut absent = a.clone();
        absent.constraints = None;
        assert!(empty.same_request(&absent));
    }
}
