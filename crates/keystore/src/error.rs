//! The key store's one error type.

use thiserror::Error;

/// Everything that can go wrong in the key store.
///
/// Messages never contain key material, plaintext or ciphertext bytes.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The ciphertext blob is malformed, truncated, of an unknown version, or names a key or
    /// material it was not made with.
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(&'static str),
    /// The ciphertext does not authenticate: it was altered, or the encryption context (or the
    /// key material) is not the one it was made with.
    #[error("invalid ciphertext: authentication failed")]
    AuthenticationFailed,
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
    /// The key's kind does not allow the operation: an HMAC key asked to encrypt, a symmetric
    /// key asked for a MAC, a MAC algorithm of another key spec.
    #[error("key {key} has key spec {spec} (key usage {usage}): {why}")]
    WrongKeyType {
        /// The key id.
        key: String,
        /// Its key spec.
        spec: crate::KeySpec,
        /// Its key usage.
        usage: crate::KeyUsage,
        /// What was asked of it.
        why: &'static str,
    },
    /// Imported key material is not acceptable: not the material imported into the key before.
    #[error("incorrect key material: {0}")]
    IncorrectMaterial(String),
    /// An on-demand rotation of a key with imported material found no material pending
    /// rotation (the key id).
    #[error("key {0} has no key material pending rotation")]
    NoPendingMaterial(String),
    /// New material for a key with imported material while another is already pending
    /// rotation (the key id): rotate to it or delete it first.
    #[error("key {0} already has key material pending rotation")]
    PendingMaterialExists(String),
    /// Two stores disagree about the same key (a key export that cannot be merged: the same key
    /// or alias with different material or target). Nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The root key file is missing, unreadable or malformed, or sealed material does not open.
    #[error("root key: {0}")]
    RootKey(String),
    /// The storage layer failed (files, encoding, malformed rows).
    #[error("storage: {0}")]
    Storage(String),
    /// The SQLite database failed. The rusqlite error is kept as it is, typed (its SQLite code
    /// decides [`Error::is_busy`]); its text is this error's message, so it is not repeated as a
    /// `source()`.
    #[error("storage: {0}")]
    Database(rusqlite::Error),
    /// The PostgreSQL database failed (a query, or the server refused it). Its text names the
    /// server's error, never a parameter's value.
    #[error("storage (PostgreSQL): {}", with_causes(.0))]
    Postgres(tokio_postgres::Error),
    /// The database cannot be reached (connection refused, pool exhausted, TLS failure): trying
    /// again later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
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
    /// The change would exceed a quota ([`crate::store::Limits`]), checked inside its write
    /// transaction (so processes sharing one database cannot exceed it together). Nothing was
    /// changed.
    #[error("limit exceeded: {0}")]
    LimitExceeded(Limit),
}

/// Which quota a change would exceed (see [`Error::LimitExceeded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The store already holds this many keys.
    Keys(usize),
    /// The key would have more tags than this.
    Tags(usize),
    /// The key has had this many on-demand rotations.
    OnDemandRotations(usize),
    /// The key already has this many grants.
    Grants(usize),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Keys(n) => write!(f, "at most {n} keys"),
            Limit::Tags(n) => write!(f, "at most {n} tags per key"),
            Limit::OnDemandRotations(n) => write!(f, "at most {n} on-demand rotations per key"),
            Limit::Grants(n) => write!(f, "at most {n} grants per key"),
        }
    }
}

impl Error {
    /// True if the database was busy or locked by another connection (SQLITE_BUSY,
    /// SQLITE_LOCKED): trying again later may succeed.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            Error::Database(e)
                if matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
        )
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let source = std::error::Error::source(&e);
        if e.is_closed() || source.is_some_and(|s| s.is::<std::io::Error>()) {
            // No answer from the server: the connection or its TLS handshake failed, or it closed.
            Error::Unavailable(with_causes(&e))
        } else {
            Error::Postgres(e)
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Database(e)
    }
}

/// `e` followed by each of its causes whose text it does not already show.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_told_by_the_sqlite_code() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.db");
        let a = rusqlite::Connection::open(&path).unwrap();
        a.execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE").unwrap();
        let b = rusqlite::Connection::open(&path).unwrap();
        b.busy_timeout(std::time::Duration::ZERO).unwrap();
        let e = Error::from(b.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(e.is_busy(), "{e:?}");
        assert_eq!(e.to_string(), "storage: database is locked");

        a.execute_batch("COMMIT").unwrap();
        let other = Error::from(b.execute("INSERT INTO nowhere VALUES (1)", []).unwrap_err());
        assert!(!other.is_busy(), "{other:?}");
        assert!(!Error::Storage("database is locked".into()).is_busy(), "the text alone does not count");
        assert_eq!(Error::AuthenticationFailed.to_string(), "invalid ciphertext: authentication failed");
    }
}
