//! The plugin's one error type and its one mapping to gRPC status codes.

use thiserror::Error;
use tonic::Code;

/// Everything a plugin RPC can fail with. Messages never contain plaintext, key material or
/// ciphertext bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginError {
    /// The request is malformed: empty or oversized fields, an unknown API version.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The ciphertext is malformed, truncated, tampered with, or its annotations were altered.
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(String),
    /// The key_id in a Decrypt request does not match the key that made the ciphertext.
    #[error("key_id mismatch: the ciphertext was not produced under key_id {0:?}")]
    KeyIdMismatch(String),
    /// The key or key version is unknown to the backend.
    #[error("unknown key: {0}")]
    UnknownKey(String),
    /// The key exists but may not be used now (disabled, pending deletion).
    #[error("key unusable: {0}")]
    KeyUnusable(String),
    /// The caller is not allowed to use the key.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The backend cannot be reached or is not ready yet; retrying may succeed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A response would violate the KMS contract (e.g. ciphertext over 1024 bytes).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PluginError {
    /// The gRPC code for this error. This is the only place errors become codes.
    pub fn code(&self) -> Code {
        match self {
            PluginError::InvalidRequest(_) | PluginError::InvalidCiphertext(_) | PluginError::KeyIdMismatch(_) => {
                Code::InvalidArgument
            }
            PluginError::UnknownKey(_) => Code::NotFound,
            PluginError::KeyUnusable(_) => Code::FailedPrecondition,
            PluginError::PermissionDenied(_) => Code::PermissionDenied,
            PluginError::Unavailable(_) => Code::Unavailable,
            PluginError::DeadlineExceeded => Code::DeadlineExceeded,
            PluginError::Internal(_) => Code::Internal,
        }
    }

    /// Converts to a gRPC status carrying this error's message.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code(), self.to_string())
    }
}

impl From<PluginError> for tonic::Status {
    fn from(e: PluginError) -> Self {
        e.to_status()
    }
}

impl From<envelope_keystore::Error> for PluginError {
    fn from(e: envelope_keystore::Error) -> Self {
        use envelope_keystore::Error as K;
        match e {
            K::InvalidCiphertext(m) => PluginError::InvalidCiphertext(m.to_string()),
            K::AuthenticationFailed => PluginError::InvalidCiphertext(
                "authentication failed: the ciphertext, key_id or annotations were altered".into(),
            ),
            K::NotFound(m) => PluginError::UnknownKey(m),
            K::Disabled(_) | K::InvalidState { .. } | K::WrongKeyType { .. } => PluginError::KeyUnusable(e.to_string()),
            K::Invalid(m) => PluginError::InvalidRequest(m),
            K::AlreadyExists(m) => PluginError::InvalidRequest(format!("already exists: {m}")),
            other => PluginError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_code() {
        let cases = [
            (PluginError::InvalidRequest("x".into()), Code::InvalidArgument),
            (PluginError::InvalidCiphertext("x".into()), Code::InvalidArgument),
            (PluginError::KeyIdMismatch("x".into()), Code::InvalidArgument),
            (PluginError::UnknownKey("x".into()), Code::NotFound),
            (PluginError::KeyUnusable("x".into()), Code::FailedPrecondition),
            (PluginError::PermissionDenied("x".into()), Code::PermissionDenied),
            (PluginError::Unavailable("x".into()), Code::Unavailable),
            (PluginError::DeadlineExceeded, Code::DeadlineExceeded),
            (PluginError::Internal("x".into()), Code::Internal),
        ];
        for (e, c) in cases {
            assert_eq!(e.to_status().code(), c, "{e}");
        }
    }

    #[test]
    fn keystore_errors_map_to_specific_codes() {
        use envelope_keystore::Error as K;
        assert_eq!(PluginError::from(K::Disabled("k".into())).code(), Code::FailedPrecondition);
        assert_eq!(PluginError::from(K::InvalidCiphertext("t")).code(), Code::InvalidArgument);
        assert_eq!(
            PluginError::from(K::AuthenticationFailed).to_status().message(),
            "invalid ciphertext: authentication failed: the ciphertext, key_id or annotations were altered"
        );
        assert_eq!(PluginError::from(K::NotFound("k".into())).code(), Code::NotFound);
        assert_eq!(PluginError::from(K::Storage("disk".into())).code(), Code::Internal);
    }
}
