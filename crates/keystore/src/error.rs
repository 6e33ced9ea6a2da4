//! The key store's one error type.

use thiserror::Error;

/// Everything that can go wrong in the key store.
///
/// Messages never contain key material, plaintext or ciphertext bytes.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The ciphertext blob is malformed, truncated, of an unknown version, or fails authentication
    /// (tampered, wrong key, or wrong encryption context).
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(&'static str),
    /// No key (or key material) with this identifier exists.
    #[error("key not found: {0}")]
    NotFound(String),
    /// The key is disabled.
    #[error("key {0} is disabled")]
    Disabled(String),
    /// The key is in a state that forbids the operation (e.g. pending deletion).
    #[error("key {key} is {state}")]
    InvalidState {
        /// The key id.
        key: String,
        /// The state it is in.
        state: crate::KeyState,
    },
    /// The alias no longer points where the caller checked (it changed concurrently).
    #[error("changed concurrently: {0}")]
    Changed(String),
    /// An alias or key with this name already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A caller-supplied value is not acceptable (empty plaintext, bad alias name, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The operation does not apply to this kind of key (e.g. importing material into a key
    /// whose material was generated).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Imported key material is not acceptable: not the material imported into the key before.
    #[error("incorrect key material: {0}")]
    IncorrectMaterial(String),
    /// Two stores disagree about the same key (a key export that cannot be merged: the same key
    /// or alias with different material or target). Nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The root key file is missing, unreadable or malformed, or sealed material does not open.
    #[error("root key: {0}")]
    RootKey(String),
    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The database was written by a newer, unknown schema version.
    #[error("unsupported database schema version {found} (this build supports up to {supported})")]
    SchemaVersion {
        /// Version found in the database.
        found: i64,
        /// Highest version this build understands.
        supported: i64,
    },
    /// The cryptographic library failed (should not happen).
    #[error("crypto failure")]
    Crypto,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
