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
    /// A grant token that is not one this server issues (malformed).
    #[error("{0}")]
    InvalidGrantToken(String),
    /// A grant id that is malformed.
    #[error("{0}")]
    InvalidGrantId(String),
    /// An alias name is not acceptable.
    #[error("{0}")]
    InvalidAliasName(String),
    /// A malformed ARN.
    #[error("{0}")]
    InvalidArn(String),
    /// The ciphertext is malformed, was tampered with, or the encryption context does not match.
    /// AWS answers it without a message (nothing to tell an attacker which check failed).
    #[error("")]
    InvalidCiphertext,
    /// The key cannot be used for this (e.g. an unsupported encryption algorithm).
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// VerifyMac: the MAC is not the message's under this key and algorithm.
    #[error("{0}")]
    InvalidMac(String),
    /// Verify: the signature is not the message's under this key and algorithm.
    #[error("{0}")]
    InvalidKmsSignature(String),
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
    /// The access key is past its `expires` time.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
    /// The access key id is unknown, or the session token does not match.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// A real KMS operation or option this server does not implement (yet).
    #[error("{0}")]
    UnsupportedOperation(String),
    /// A member is missing or out of its allowed range/pattern (AWS-style message).
    #[error("{0}")]
    Validation(String),
    /// A CloudTrail `LookupEvents` request the audit search refuses (its own error names), or an
    /// audit file it cannot read.
    #[error("{0}")]
    Lookup(crate::lookup::LookupError),
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
            ExpiredToken => "ExpiredTokenException",
            IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            InvalidImportToken(_) => "InvalidImportTokenException",
            Config(_) | Internal(_) | AuditUnavailable => {
                return ("KMSInternalException", StatusCode::INTERNAL_SERVER_ERROR);
            }
            InvalidAliasName(_) => "InvalidAliasNameException",
            InvalidGrantToken(_) => "InvalidGrantTokenException",
            InvalidGrantId(_) => "InvalidGrantIdException",
            InvalidArn(_) => "InvalidArnException",
            InvalidCiphertext => "InvalidCiphertextException",
            InvalidKeyUsage(_) => "InvalidKeyUsageException",
            InvalidMac(_) => "KMSInvalidMacException",
            InvalidKmsSignature(_) => "KMSInvalidSignatureException",
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
            Lookup(crate::lookup::LookupError::Io { .. }) => {
                return ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR);
            }
            Lookup(e) => e.code(),
        };
        (code, StatusCode::BAD_REQUEST)
    }

    /// The one conversion of key-store errors into client errors. `on` says what the call was
    /// working on, which decides the wording (the key's ARN, the alias's) and what a missing key
    /// means; storage and crypto failures are [`KmsError::Internal`] (detail logged, not sent).
    pub(crate) fn from_store(e: envelope_keystore::Error, on: Subject<'_>) -> Self {
        use envelope_keystore::Error as E;
        let label = match on {
            Subject::Key(label) | Subject::Named { label, .. } | Subject::Ciphertext(label) => label,
            Subject::Alias { key, .. } => key,
            Subject::Internal => return KmsError::Internal(e.to_string()),
        };
        match (e, on) {
            (E::InvalidCiphertext(_) | E::AuthenticationFailed, _) => KmsError::InvalidCiphertext,
            (E::NotFound(_), Subject::Named { missing, .. }) => missing,
            (E::NotFound(_), Subject::Alias { arn, .. }) => KmsError::NotFound(format!("Alias {arn} is not found.")),
            (E::NotFound(_), Subject::Ciphertext(_)) => KmsError::InvalidCiphertext,
            (E::NotFound(_), _) => KmsError::NotFound(format!("Key '{label}' does not exist")),
            (E::Disabled(_), _) => KmsError::Disabled(format!("{label} is disabled.")),
            (E::InvalidState { state, .. }, _) => KmsError::InvalidState(format!("{label} is {}.", state_words(state))),
            (E::AlreadyExists(_), Subject::Alias { arn, .. }) => {
                KmsError::AlreadyExists(format!("An alias with the name {arn} already exists"))
            }
            (E::AlreadyExists(name), _) => {
                KmsError::AlreadyExists(format!("An alias with the name {name} already exists"))
            }
            (E::Invalid(m), Subject::Alias { .. }) => KmsError::InvalidAliasName(m),
            (E::Invalid(m), _) => KmsError::Validation(m),
            (E::Unsupported(m), _) => KmsError::UnsupportedOperation(m),
            // What the server checks first with the operation's name; this is the store's own
            // refusal (a key changed kind between the two is not possible: specs never change).
            (E::WrongKeyType { usage, .. }, _) => KmsError::InvalidKeyUsage(format!(
                "{label} key usage is {usage} which is not valid for this operation."
            )),
            (E::IncorrectMaterial(m), _) => KmsError::IncorrectKeyMaterial(m),
            (E::LimitExceeded(envelope_keystore::Limit::Grants(max)), _) => {
                KmsError::LimitExceeded(format!("{label} already has the most grants a key may have ({max})."))
            }
            (E::NoPendingMaterial(_), _) => {
                KmsError::InvalidState(format!("No available key material pending rotation for the key: {label}."))
            }
            // Not AWS's words (its answer is not documented): envelope's own.
            (E::PendingMaterialExists(_), _) => KmsError::InvalidState(format!(
                "{label} already has key material pending rotation: rotate to it with RotateKeyOnDemand or delete \
                 it with DeleteImportedKeyMaterial before importing other new key material."
            )),
            (E::LimitExceeded(envelope_keystore::Limit::Tags(_)), _) => KmsError::Tag("Too many tags".into()),
            (E::LimitExceeded(envelope_keystore::Limit::OnDemandRotations(_)), _) => KmsError::LimitExceeded(format!(
                "The on-demand rotations limit has been reached for the given keyId. \
                 No more on-demand rotations can be performed for this key: {label}"
            )),
            (E::LimitExceeded(envelope_keystore::Limit::Keys(max)), _) => KmsError::LimitExceeded(format!(
                "The request was rejected because the limit of {max} KMS keys has been reached."
            )),
            (other, _) => KmsError::Internal(other.to_string()),
        }
    }
}

/// What a key-store call was working on, for [`KmsError::from_store`].
#[derive(Debug)]
pub(crate) enum Subject<'a> {
    /// The key with this ARN (a missing one is `Key '<arn>' does not exist`); also the wording
    /// for a key being created.
    Key(&'a str),
    /// A key or alias as the client named it (`label`, not yet resolved); a missing one is
    /// `missing`, AWS's NotFound for the form the client used.
    Named {
        /// The identifier as given.
        label: &'a str,
        /// The error for a key or alias that does not exist.
        missing: KmsError,
    },
    /// The alias with ARN `arn`, and the key `key` (its ARN) it points at or is to point at:
    /// a missing alias is `Alias <arn> is not found.`, an invalid name `InvalidAliasName`.
    Alias {
        /// The alias's ARN.
        arn: &'a str,
        /// The target key's ARN.
        key: &'a str,
    },
    /// Decrypting a ciphertext made under the key with this ARN: a key or material the store
    /// does not have makes the ciphertext invalid.
    Ciphertext(&'a str),
    /// The server's own work (listing, maintenance, import tokens, randomness): every failure
    /// is internal.
    Internal,
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
        let key = || Subject::Key(k);
        let map = |e: E, on: Subject<'_>| {
            let e = KmsError::from_store(e, on);
            (e.aws().0, e.to_string())
        };
        assert_eq!(map(E::Disabled("x".into()), key()), ("DisabledException", format!("{k} is disabled.")));
        assert_eq!(KmsError::from_store(E::InvalidCiphertext("t"), key()).aws().0, "InvalidCiphertextException");
        assert_eq!(KmsError::from_store(E::AuthenticationFailed, key()).aws().0, "InvalidCiphertextException");
        let st = || E::InvalidState { key: "x".into(), state: envelope_keystore::KeyState::PendingDeletion };
        assert_eq!(map(st(), key()), ("KMSInvalidStateException", format!("{k} is pending deletion.")));
        let internal = ("KMSInternalException", "An internal error occurred.".to_string());
        assert_eq!(map(E::Storage("disk".into()), key()), internal);
        assert_eq!(map(E::NotFound("x".into()), key()), ("NotFoundException", format!("Key '{k}' does not exist")));
        assert_eq!(map(E::Invalid("bad".into()), key()), ("ValidationException", "bad".into()));
        assert_eq!(map(E::Unsupported("no".into()), key()), ("UnsupportedOperationException", "no".into()));
        assert_eq!(map(E::IncorrectMaterial("m".into()), key()), ("IncorrectKeyMaterialException", "m".into()));
        assert_eq!(
            map(E::AlreadyExists("alias/a".into()), key()),
            ("AlreadyExistsException", "An alias with the name alias/a already exists".into())
        );

        let missing = || KmsError::NotFound("Alias arn:a is not found.".into());
        let named = || Subject::Named { label: "alias/a", missing: missing() };
        assert_eq!(map(E::NotFound("x".into()), named()), ("NotFoundException", "Alias arn:a is not found.".into()));
        assert_eq!(map(E::Disabled("x".into()), named()), ("DisabledException", "alias/a is disabled.".into()));

        let alias = || Subject::Alias { arn: "arn:alias/a", key: k };
        assert_eq!(
            map(E::AlreadyExists("alias/a".into()), alias()),
            ("AlreadyExistsException", "An alias with the name arn:alias/a already exists".into())
        );
        assert_eq!(
            map(E::NotFound("x".into()), alias()),
            ("NotFoundException", "Alias arn:alias/a is not found.".into())
        );
        assert_eq!(map(E::Invalid("bad".into()), alias()), ("InvalidAliasNameException", "bad".into()));
        assert_eq!(map(st(), alias()), ("KMSInvalidStateException", format!("{k} is pending deletion.")));

        let ct = || Subject::Ciphertext(k);
        assert_eq!(KmsError::from_store(E::NotFound("m".into()), ct()).aws().0, "InvalidCiphertextException");
        assert_eq!(map(E::Disabled("x".into()), ct()), ("DisabledException", format!("{k} is disabled.")));

        for e in [E::NotFound("x".into()), E::Invalid("bad".into()), E::Disabled("x".into()), E::Crypto] {
            assert_eq!(map(e, Subject::Internal), internal);
        }
    }
}
