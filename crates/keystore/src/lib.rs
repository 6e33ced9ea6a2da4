//! envelope's key-management core.
//!
//! One core serves the plugin's embedded backend and (later) the AWS-KMS-compatible key server,
//! so a key behaves the same in process and over HTTP.
//!
//! * [`model`]: keys, versions, states, key references.
//! * [`blob`]: the versioned, self-describing ciphertext blob.
//! * [`context`]: canonical encoding of an encryption context (AAD).
//! * [`root`]: the root key that seals key material at rest, and its forms (a file, a passphrase,
//!   wrapped by a PKCS#11 token key through a caller's [`root::RootWrapper`]).
//! * [`reseal`]: moving the root key between forms, crash-safe, without rewriting the database.
//! * [`store`]: [`KeyStore`], an in-memory snapshot for the hot path over a storage engine:
//!   SQLite in the data directory (the default) or PostgreSQL shared by replicas.
//! * [`backup`]: consistent database backups and verified restores.
//! * [`export`]: sealed key export files, merged into another store with the same root key.
//! * [`crypto`]: AES-256-GCM, HMAC and randomness (aws-lc-rs).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backup;
pub mod blob;
pub mod context;
pub mod crypto;
pub mod error;
pub mod export;
pub mod model;
pub mod reseal;
pub mod root;
pub mod store;

pub use context::{EncryptionContext, RESERVED_CONTEXT_PREFIX};
pub use error::{Error, Limit, Result};
pub use model::{
    EncryptionAlgorithm, Grant, GrantConstraints, ImportOptions, ImportType, ImportedMaterial, KeyAttributes,
    KeyMetadata, KeyRef, KeySpec, KeyState, KeyUsage, KeyVersion, MacAlgorithm, MaterialState, Rotation, RotationType,
    SigningAlgorithm,
};
pub use store::{AliasInfo, Decrypted, Encrypted, KeyStore, Limits, Location, MigrateReport, RootSource, StoreOptions};

#[cfg(test)]
mod tests;
