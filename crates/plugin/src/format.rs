//! Pure formats and checks of the plugin contract: the plugin ciphertext envelope, annotation
//! rules, and the canonical encoding of annotations that is bound into every wrap.

use std::collections::{BTreeMap, HashMap};

use crate::error::PluginError;

/// Current plugin ciphertext format version.
pub const FORMAT_V1: u8 = 0x01;
/// KMS v2 limit on ciphertext and key_id length.
pub const MAX_V2_FIELD: usize = 1024;
/// KMS v2 limit on the sum of annotation key and value lengths.
pub const MAX_ANNOTATIONS: usize = 32 * 1024;
/// Largest plaintext the plugin wraps (kube-apiserver sends 32 bytes; v1 health checks 4).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest KMS v2 plaintext: kube-apiserver always sends 32 bytes, and the wrapped result must
/// stay within the 1024-byte ciphertext limit whatever the backend's overhead.
pub const MAX_V2_PLAINTEXT: usize = 512;

/// Which backend produced a ciphertext. Stored in byte 1 of the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum BackendKind {
    /// The embedded key store.
    Embedded = 0x01,
    /// A key of an AWS-KMS-API endpoint (AWS KMS or `envelope kms serve`).
    Aws = 0x02,
}

impl BackendKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(BackendKind::Embedded),
            0x02 => Some(BackendKind::Aws),
            _ => None,
        }
    }

    /// Short name used in logs, metrics and annotations.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Aws => "aws",
        }
    }
}

/// Wraps a backend blob in the plugin envelope: `version ‖ backend kind ‖ blob`.
pub fn seal_envelope(kind: BackendKind, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + blob.len());
    out.push(FORMAT_V1);
    out.push(kind as u8);
    out.extend_from_slice(blob);
    out
}

/// Splits a plugin envelope into its backend and blob. Never panics.
pub fn open_envelope(ciphertext: &[u8]) -> Result<(BackendKind, &[u8]), PluginError> {
    match ciphertext {
        [] => Err(PluginError::InvalidCiphertext("ciphertext is empty".into())),
        [FORMAT_V1, kind, blob @ ..] => {
            let kind = BackendKind::from_byte(*kind)
                .ok_or_else(|| PluginError::InvalidCiphertext(format!("unknown backend kind 0x{kind:02x}")))?;
            if blob.is_empty() {
                return Err(PluginError::InvalidCiphertext("ciphertext is truncated".into()));
            }
            Ok((kind, blob))
        }
        [FORMAT_V1] => Err(PluginError::InvalidCiphertext("ciphertext is truncated".into())),
        [v, ..] => Err(PluginError::InvalidCiphertext(format!(
            "unknown ciphertext format version 0x{v:02x} (not made by envelope?)"
        ))),
    }
}

/// True if `s` is a fully qualified domain name as kube-apiserver requires of annotation keys:
/// an optional trailing dot, then a lowercase RFC 1123 subdomain with at least two labels.
pub fn is_fqdn(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Checks annotations against the KMS v2 rules: FQDN keys, total size ≤ 32 KiB.
pub fn check_annotations(a: &HashMap<String, Vec<u8>>) -> Result<(), PluginError> {
    let mut total = 0usize;
    for (k, v) in a {
        if !is_fqdn(k) {
            return Err(PluginError::InvalidRequest(format!(
                "annotation key {k:?} is not a fully qualified domain name"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_ANNOTATIONS {
        return Err(PluginError::InvalidRequest(format!(
            "annotations total {total} bytes, more than {MAX_ANNOTATIONS}"
        )));
    }
    Ok(())
}

/// Canonical hex encoding of annotations (sorted by key, length-prefixed), for binding into the
/// wrap's encryption context.
pub fn annotations_digest(a: &HashMap<String, Vec<u8>>) -> String {
    let sorted: BTreeMap<&String, &Vec<u8>> = a.iter().collect();
    let mut buf = Vec::new();
    for (k, v) in sorted {
        buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        buf.extend_from_slice(v);
    }
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fqdn_rules() {
        for ok in ["kms.example.io", "remote-kms-auditid.kms.example.io", "a.b.", "plugin.envelope.dev"] {
            assert!(is_fqdn(ok), "{ok}");
        }
        for bad in ["", "localhost", "Example.com", "kms.example.io/remote", "-a.b", "a-.b", "a..b", "a.b.."] {
            assert!(!is_fqdn(bad), "{bad}");
        }
        assert!(!is_fqdn(&format!("{}.io", "a".repeat(64))));
    }

    #[test]
    fn annotations_limits() {
        let mut a = HashMap::new();
        a.insert("x.example.io".to_string(), vec![0u8; 10]);
        assert!(check_annotations(&a).is_ok());
        a.insert("y.example.io".to_string(), vec![0u8; MAX_ANNOTATIONS]);
        assert!(check_annotations(&a).is_err());
        let mut b = HashMap::new();
        b.insert("Bad".to_string(), vec![]);
        assert!(check_annotations(&b).is_err());
    }

    #[test]
    fn envelope_errors_are_specific() {
        assert!(open_envelope(&[]).unwrap_err().to_string().contains("empty"));
        assert!(open_envelope(&[1]).unwrap_err().to_string().contains("truncated"));
        assert!(open_envelope(&[1, 1]).unwrap_err().to_string().contains("truncated"));
        assert!(open_envelope(&[1, 9, 0]).unwrap_err().to_string().contains("backend kind"));
        assert!(open_envelope(&[7, 1, 0]).unwrap_err().to_string().contains("format version"));
        assert_eq!(open_envelope(&[1, 1, 5]).unwrap(), (BackendKind::Embedded, &[5u8][..]));
    }

    proptest! {
        #[test]
        fn envelope_round_trip(blob in proptest::collection::vec(any::<u8>(), 1..300)) {
            let sealed = seal_envelope(BackendKind::Embedded, &blob);
            let (k, b) = open_envelope(&sealed).unwrap();
            prop_assert_eq!(k, BackendKind::Embedded);
            prop_assert_eq!(b, &blob[..]);
        }

        #[test]
        fn open_envelope_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = open_envelope(&data);
        }

        #[test]
        fn digest_distinguishes(a in proptest::collection::hash_map("[a-z]{1,4}", proptest::collection::vec(any::<u8>(), 0..4), 0..4),
                                b in proptest::collection::hash_map("[a-z]{1,4}", proptest::collection::vec(any::<u8>(), 0..4), 0..4)) {
            prop_assert_eq!(a == b, annotations_digest(&a) == annotations_digest(&b));
        }

        #[test]
        fn fqdn_never_panics(s in ".{0,300}") {
            let _ = is_fqdn(&s);
        }
    }
}
