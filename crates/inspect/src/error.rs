//! The crate's one error type.

use std::path::PathBuf;

use thiserror::Error;

use crate::classify::ProviderKind;

/// Everything that can go wrong while decrypting a stored value, decoding the object inside it,
/// reading an EncryptionConfiguration or producing a value.
///
/// Messages never contain key material or plaintext. They may contain provider and key names,
/// key ids and lengths, which kube-apiserver stores in the clear.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The value does not have the layout its prefix promises (wrong prefix for the requested
    /// provider or name, truncated, EncryptedObject does not decode, ...).
    #[error("malformed value: {0}")]
    MalformedValue(String),
    /// Authentication or padding check failed: wrong key, wrong etcd key (AAD), or tampered data.
    #[error("{provider} decryption failed (wrong key, wrong etcd key, or modified value)")]
    DecryptionFailed {
        /// The provider whose decryption failed.
        provider: ProviderKind,
    },
    /// Key material of an unusable size (AES keys are 16, 24 or 32 bytes, secretbox keys 32,
    /// KMS v2 seeds at least 32).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A KMS v2 value whose `encryptedDEKSourceType` this build does not know.
    #[error("unsupported KMS v2 DEK source type {0}")]
    UnsupportedDekSourceType(i32),
    /// The value was written by a different provider than the one asked for.
    #[error("expected a {expected} value, found {found}")]
    WrongProvider {
        /// What the caller asked for.
        expected: ProviderKind,
        /// What the value's prefix says.
        found: ProviderKind,
    },
    /// No configured key matches the key name in the value's prefix.
    #[error("no configured {provider} key matches the value's prefix (key name {name:?})")]
    NoMatchingKey {
        /// The provider named by the prefix.
        provider: ProviderKind,
        /// The key name read from the prefix (up to the next `:`).
        name: String,
    },
    /// The bytes are not a Kubernetes object this crate can decode.
    #[error("cannot decode object: {0}")]
    Object(String),
    /// The EncryptionConfiguration is invalid.
    #[error("invalid EncryptionConfiguration: {0}")]
    Config(String),
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A caller-supplied argument is unusable (e.g. an empty key_id for a KMS v2 writer).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The cryptographic library failed where it should not (e.g. the random generator).
    #[error("crypto library failure")]
    Crypto,
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
