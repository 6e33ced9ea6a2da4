//! SigV4 verification of a key-server request: the `Authorization` header parser, the scope,
//! date and skew checks, the signed-header rules and the session token, ending in the signature
//! comparison; and the unverified access key id read for the audit record. None may panic.
//!
//! Input: `METHOD PATH`, then `name: value` header lines, `\n`-separated; a blank line starts
//! the body. The clock is fixed at 2026-01-01T00:00:00Z, so a seed signed at that time verifies.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use envelope_kms_server::auth::{self, Credential, CredentialStore};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;

static CREDENTIALS: LazyLock<CredentialStore> = LazyLock::new(|| {
    CredentialStore::new(vec![
        Credential::new(
            "AKIDFUZZFUZZFUZZ0001",
            Zeroizing::new("fuzz-secret-0001".to_string()),
            None,
            "arn:aws:iam::111122223333:user/fuzz",
        ),
        Credential::new(
            "AKIDFUZZFUZZFUZZ0002",
            Zeroizing::new("fuzz-secret-0002".to_string()),
            Some(Zeroizing::new("fuzz-session-token".to_string())),
            "arn:aws:iam::111122223333:user/session",
        ),
    ])
    .expect("the fuzz credentials are valid")
});

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = std::str::from_utf8(lines.next().unwrap_or_default()).unwrap_or("POST /");
    let (method, path) = request_line.split_once(' ').unwrap_or(("POST", "/"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = auth::claimed_access_key_id(&headers);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    let _ = CREDENTIALS.verify(method, path, &headers, body, "us-east-1", now);
});
