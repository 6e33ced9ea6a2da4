//! The one place where an `aws-sdk-kms` error becomes a [`PluginError`].
//!
//! Only [`PluginError::Unavailable`] is retried (see [`crate::retry`]): throttling, timeouts,
//! connection failures and 5xx answers. Every other class is final.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use envelope_plugin::PluginError;

/// Converts an SDK error of operation `op` (e.g. `"Decrypt"`) into a [`PluginError`].
pub fn classify<E>(op: &str, err: &SdkError<E, HttpResponse>) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            classify_service(op, e.code(), e.message(), status)
        }
        SdkError::TimeoutError(_) => PluginError::Unavailable(format!("{op}: the KMS did not answer in time")),
        SdkError::DispatchFailure(d) if d.is_user() => {
            PluginError::Internal(format!("{op}: request could not be sent: {}", one_line(err)))
        }
        SdkError::DispatchFailure(_) => {
            PluginError::Unavailable(format!("{op}: cannot reach the KMS: {}", one_line(err)))
        }
        // The endpoint answered with something that is not a KMS response (a proxy page, a cut
        // connection): decide by the HTTP status.
        SdkError::ResponseError(_) => match status {
            Some(401 | 403) => {
                PluginError::PermissionDenied(format!("{op}: HTTP {} from the KMS endpoint", status.unwrap_or(0)))
            }
            _ => PluginError::Unavailable(format!("{op}: unreadable response from the KMS: {}", one_line(err))),
        },
        _ => PluginError::Internal(format!("{op}: {}", one_line(err))),
    }
}

/// An error and its causes on one line (`a: b: c`), each cause's `Display` only — never the
/// SDK's `Debug` dumps — with causes that repeat their parent's text left out.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        // Some causes span lines (the credentials chain lists each provider): one line, `; `.
        let text = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    // The SDK's outer layers say only which layer failed ("dispatch failure", "io error");
    // keep them when nothing more specific follows.
    let specific: Vec<&String> =
        parts.iter().filter(|p| !matches!(p.as_str(), "dispatch failure" | "io error" | "other")).collect();
    if specific.is_empty() { parts.join(": ") } else { specific.into_iter().cloned().collect::<Vec<_>>().join(": ") }
}

/// Classifies a service error by its AWS error code, falling back to the HTTP status.
pub fn classify_service(op: &str, code: Option<&str>, message: Option<&str>, status: Option<u16>) -> PluginError {
    let code_s = code.unwrap_or("unknown error");
    let text = match message {
        Some(m) if !m.is_empty() => format!("{op}: {code_s}: {m}"),
        _ => format!("{op}: {code_s}"),
    };
    match code.unwrap_or("") {
        "InvalidCiphertextException" | "IncorrectKeyException" => PluginError::InvalidCiphertext(text),
        "DisabledException" | "KMSInvalidStateException" | "InvalidKeyUsageException" => PluginError::KeyUnusable(text),
        "NotFoundException" => PluginError::UnknownKey(text),
        "AccessDeniedException"
        | "NotAuthorized"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch" => PluginError::PermissionDenied(text),
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "KMSInternalException"
        | "KeyUnavailableException"
        | "DependencyTimeoutException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalFailure"
        | "InternalError"
        | "RequestTimeout"
        | "RequestTimeoutException" => PluginError::Unavailable(text),
        "ValidationException"
        | "SerializationException"
        | "InvalidArnException"
        | "InvalidAliasNameException"
        | "InvalidGrantTokenException"
        | "UnsupportedOperationException" => PluginError::InvalidRequest(text),
        _ => match status {
            Some(429) | Some(500..=599) => PluginError::Unavailable(text),
            Some(401 | 403) => PluginError::PermissionDenied(text),
            _ => PluginError::Internal(text),
        },
    }
}

/// True for the errors worth retrying (and only those).
pub fn is_transient(e: &PluginError) -> bool {
    matches!(e, PluginError::Unavailable(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::error::ConnectorError;
    use aws_sdk_kms::operation::decrypt::DecryptError;
    use aws_sdk_kms::types::error::{DisabledException, InvalidCiphertextException};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use envelope_plugin::PluginError as P;

    fn raw(status: u16) -> HttpResponse {
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
    }

    fn generic(code: &str, status: u16) -> SdkError<DecryptError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("m").build();
        SdkError::service_error(DecryptError::generic(meta), raw(status))
    }

    // As the SDK's deserializer does: modeled errors carry their code in the metadata.
    fn code(c: &str, m: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(c).message(m).build()
    }

    #[test]
    fn modeled_service_errors() {
        let e = SdkError::service_error(
            DecryptError::InvalidCiphertextException(
                InvalidCiphertextException::builder().meta(code("InvalidCiphertextException", "bad")).build(),
            ),
            raw(400),
        );
        let p = classify("Decrypt", &e);
        assert!(matches!(p, P::InvalidCiphertext(ref m) if m.contains("InvalidCiphertextException")), "{p:?}");
        let e = SdkError::service_error(
            DecryptError::DisabledException(
                DisabledException::builder().meta(code("DisabledException", "k is disabled.")).build(),
            ),
            raw(400),
        );
        assert!(matches!(classify("Decrypt", &e), P::KeyUnusable(ref m) if m.contains("disabled")));
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn one_line_keeps_the_causes_and_drops_generic_layers_and_repeats() {
        let e = Layer(
            "dispatch failure",
            Some(Box::new(Layer("io error", Some(Box::new(Layer("connection refused", None)))))),
        );
        assert_eq!(one_line(&e), "connection refused");
        let e =
            Layer("cannot load credentials", Some(Box::new(Layer("Environment: not set\nProfile: not set\n", None))));
        assert_eq!(one_line(&e), "cannot load credentials: Environment: not set; Profile: not set");
        let e = Layer("timed out: the KMS", Some(Box::new(Layer("timed out", None))));
        assert_eq!(one_line(&e), "timed out: the KMS");
        assert_eq!(one_line(&Layer("dispatch failure", None)), "dispatch failure");
    }

    /// An AWS error code, an HTTP status, and the class it must map to.
    type Case = (&'static str, u16, fn(&P) -> bool);

    #[test]
    fn codes_map_to_classes() {
        let cases: &[Case] = &[
            ("IncorrectKeyException", 400, |p| matches!(p, P::InvalidCiphertext(_))),
            ("KMSInvalidStateException", 400, |p| matches!(p, P::KeyUnusable(_))),
            ("NotFoundException", 400, |p| matches!(p, P::UnknownKey(_))),
            ("AccessDeniedException", 400, |p| matches!(p, P::PermissionDenied(_))),
            ("UnrecognizedClientException", 400, |p| matches!(p, P::PermissionDenied(_))),
            ("InvalidSignatureException", 400, |p| matches!(p, P::PermissionDenied(_))),
            ("ThrottlingException", 400, |p| matches!(p, P::Unavailable(_))),
            ("KMSInternalException", 500, |p| matches!(p, P::Unavailable(_))),
            ("DependencyTimeoutException", 503, |p| matches!(p, P::Unavailable(_))),
            ("ValidationException", 400, |p| matches!(p, P::InvalidRequest(_))),
            ("SomethingNew", 503, |p| matches!(p, P::Unavailable(_))),
            ("SomethingNew", 429, |p| matches!(p, P::Unavailable(_))),
            ("SomethingNew", 403, |p| matches!(p, P::PermissionDenied(_))),
            ("SomethingNew", 400, |p| matches!(p, P::Internal(_))),
        ];
        for (code, status, ok) in cases {
            let p = classify("Decrypt", &generic(code, *status));
            assert!(ok(&p), "{code} {status} → {p:?}");
            assert!(p.to_string().contains(code), "{p}");
            assert_eq!(is_transient(&p), matches!(p, P::Unavailable(_)));
        }
    }

    #[test]
    fn transport_errors() {
        let t: SdkError<DecryptError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(matches!(classify("Decrypt", &t), P::Unavailable(_)));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let d: SdkError<DecryptError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(io.into()));
        assert!(matches!(classify("Decrypt", &d), P::Unavailable(ref m) if m.contains("cannot reach")));
        let u: SdkError<DecryptError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::user("bad uri".into()));
        assert!(matches!(classify("Decrypt", &u), P::Internal(_)));
        let r: SdkError<DecryptError, HttpResponse> = SdkError::response_error("html", raw(502));
        assert!(matches!(classify("Decrypt", &r), P::Unavailable(_)));
        let r: SdkError<DecryptError, HttpResponse> = SdkError::response_error("html", raw(403));
        assert!(matches!(classify("Decrypt", &r), P::PermissionDenied(_)));
        let c: SdkError<DecryptError, HttpResponse> = SdkError::construction_failure("no region");
        assert!(matches!(classify("Decrypt", &c), P::Internal(_)));
    }
}
