//! The key server's one error type and its one mapping to the AWS wire (`__type`, HTTP status).

use http::StatusCode;
use thiserror::Error;

/// Everything a request can fail with. Each variant is one AWS error code; see [`KmsError::aws`].
///
/// Messages are shown to clients: they never contain key material, plaintext, ciphertext,
/// secrets or internal details (those are logged, at most, by the caller).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KmsError {
    /// Invalid server configuration (credentials file, settings). Never produced by a request.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A name (alias) that must be unique already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The key is disabled.
    #[error("{0}")]
    Disabled(String),
    /// `DryRun` was set and the request would have succeeded.
    #[error("The request would have succeeded, but the DryRun option is set.")]
    DryRun,
    /// The `Authorization` header is malformed or lacks a required part.
    #[error("{0}")]
    IncompleteSignature(String),
    /// An import token past its validity (24 hours after GetParametersForImport).
    #[error("{0}")]
    ExpiredImportToken(String),
    /// Imported key material is the wrong length, or not the material imported before.
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    /// An import token that is malformed, tampered with, or issued for another key.
    #[error("{0}")]
    InvalidImportToken(String),
    /// Decrypt/ReEncrypt named a key that did not encrypt the ciphertext.
    #[error("{0}")]
    IncorrectKey(String),
    /// The request's audit record could not be written under `--audit-fail-closed`.
    #[error("The request was refused because its audit record could not be written.")]
    AuditUnavailable,
    /// Something failed on the server (storage, crypto library). The detail is not sent.
    #[error("An internal error occurred.")]
    Internal(String),
    /// An alias name is not acceptable.
    #[error("{0}")]
    InvalidAliasName(String),
    /// A malformed ARN.
    #[error("{0}")]
    InvalidArn(String),
    /// The ciphertext is malformed, was tampered with, or the encryption context does not match.
    #[error("The ciphertext is invalid, or the encryption context does not match.")]
    InvalidCiphertext,
    /// The key cannot be used for this (e.g. an unsupported encryption algorithm).
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// The caller's principal is not allowed this action on this key by its key policy.
    #[error("{0}")]
    AccessDenied(String),
    /// A key policy document is not valid JSON or not a valid policy.
    #[error("{0}")]
    MalformedPolicyDocument(String),
    /// A tag is not acceptable (reserved `aws:` prefix, duplicate key).
    #[error("{0}")]
    Tag(String),
    /// A pagination marker that this server did not issue.
    #[error("The marker is not valid.")]
    InvalidMarker,
    /// The SigV4 signature does not verify, is out of the time window, or has the wrong scope.
    #[error("{0}")]
    InvalidSignature(String),
    /// The key is in a state that forbids the operation (e.g. pending deletion).
    #[error("{0}")]
    InvalidState(String),
    /// A quota is exhausted (e.g. on-demand rotations of a key).
    #[error("{0}")]
    LimitExceeded(String),
    /// The request carries no `Authorization` header.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The caller may not do this (e.g. aliases under the reserved `alias/aws/` prefix).
    #[error("{0}")]
    NotAuthorized(String),
    /// The key or alias does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The body is not JSON, or a member has the wrong JSON type, or a blob is not base64.
    #[error("{0}")]
    Serialization(String),
    /// `X-Amz-Target` names no operation of this service.
    #[error("{0}")]
    UnknownOperation(String),
    /// The access key id is unknown, or the session token does not match.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// A real KMS operation or option this server does not implement (yet).
    #[error("{0}")]
    UnsupportedOperation(String),
    /// A member is missing or out of its allowed range/pattern (AWS-style message).
    #[error("{0}")]
    Validation(String),
}

impl KmsError {
    /// The single mapping from an error to its AWS error code (`__type`) and HTTP status:
    /// 400 for every client error (as the live service and other emulators answer), 500 for
    /// internal errors (which clients retry).
    pub fn aws(&self) -> (&'static str, StatusCode) {
        use KmsError::*;
        let code = match self {
            AccessDenied(_) => "AccessDeniedException",
            AlreadyExists(_) => "AlreadyExistsException",
            Disabled(_) => "DisabledException",
            DryRun => "DryRunOperationException",
            IncompleteSignature(_) => "IncompleteSignatureException",
            IncorrectKey(_) => "IncorrectKeyException",
            ExpiredImportToken(_) => "ExpiredImportTokenException",
            IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            InvalidImportToken(_) => "InvalidImportTokenException",
            Config(_) | Internal(_) | AuditUnavailable => {
                return ("KMSInternalException", StatusCode::INTERNAL_SERVER_ERROR);
            }
            InvalidAliasName(_) => "InvalidAliasNameException",
            InvalidArn(_) => "InvalidArnException",
            InvalidCiphertext => "InvalidCiphertextException",
            InvalidKeyUsage(_) => "InvalidKeyUsageException",
            InvalidMarker => "InvalidMarkerException",
            InvalidSignature(_) => "InvalidSignatureException",
            InvalidState(_) => "KMSInvalidStateException",
            LimitExceeded(_) => "LimitExceededException",
            MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            MissingAuthenticationToken => "MissingAuthenticationTokenException",
            NotAuthorized(_) => "NotAuthorizedException",
            NotFound(_) => "NotFoundException",
            Serialization(_) => "SerializationException",
            Tag(_) => "TagException",
            UnknownOperation(_) => "UnknownOperationException",
            UnrecognizedClient => "UnrecognizedClientException",
            UnsupportedOperation(_) => "UnsupportedOperationException",
            Validation(_) => "ValidationException",
        };
        (code, StatusCode::BAD_REQUEST)
    }

    /// Converts a key-store error met while working on `key` (as the client named it, or its ARN).
    pub(crate) fn from_store(e: envelope_keystore::Error, key: &str) -> Self {
        use envelope_keystore::Error as E;
        match e {
            E::InvalidCiphertext(_) | E::AuthenticationFailed => KmsError::InvalidCiphertext,
            E::NotFound(_) => KmsError::NotFound(format!("Key '{key}' does not exist")),
            E::Disabled(_) => KmsError::Disabled(format!("{key} is disabled.")),
            E::InvalidState { state, .. } => KmsError::InvalidState(format!("{key} is {}.", state_words(state))),
            E::AlreadyExists(name) => KmsError::AlreadyExists(format!("An alias with the name {name} already exists")),
            E::Invalid(m) => KmsError::Validation(m),
            E::Unsupported(m) => KmsError::UnsupportedOperation(m),
            E::IncorrectMaterial(m) => KmsError::IncorrectKeyMaterial(m),
            other => KmsError::Internal(other.to_string()),
        }
    }
}

pub(crate) fn state_words(s: envelope_keystore::KeyState) -> &'static str {
    match s {
        envelope_keystore::KeyState::Enabled => "enabled",
        envelope_keystore::KeyState::Disabled => "disabled",
        envelope_keystore::KeyState::PendingImport => "pending import",
        _ => "pending deletion",
    }
}

/// Convenience alias.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internal_is_a_server_error() {
        assert_eq!(KmsError::Internal("db".into()).aws(), ("KMSInternalException", StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(KmsError::Internal("secret detail".into()).to_string(), "An internal error occurred.");
        for e in [KmsError::InvalidCiphertext, KmsError::UnrecognizedClient, KmsError::NotFound("x".into())] {
            assert_eq!(e.aws().1, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn store_errors_map_to_aws_codes() {
        use envelope_keystore::Error as E;
        let k = "arn:aws:kms:us-east-1:111122223333:key/x";
        assert_eq!(KmsError::from_store(E::Disabled("x".into()), k).aws().0, "DisabledException");
        assert_eq!(KmsError::from_store(E::InvalidCiphertext("t"), k).aws().0, "InvalidCiphertextException");
        let st = E::InvalidState { key: "x".into(), state: envelope_keystore::KeyState::PendingDeletion };
        let e = KmsError::from_store(st, k);
        assert_eq!(e.aws().0, "KMSInvalidStateException");
        assert_eq!(e.to_string(), format!("{k} is pending deletion."));
        assert_eq!(KmsError::from_store(E::Storage("disk".into()), k).aws().0, "KMSInternalException");
    }
}
