//! Pure formats and checks of the plugin contract: the plugin ciphertext envelope, the
//! annotation check of requests (kube-apiserver's rules live in [`envelope_proto::rules`]), and
//! the canonical encoding of annotations that is bound into every wrap.

use std::collections::{BTreeMap, HashMap};

use envelope_proto::rules;

use crate::error::PluginError;

/// Plugin ciphertext format 1: the backend wrapped the plaintext itself.
pub const FORMAT_V1: u8 = 0x01;
/// Plugin ciphertext format 2: the plaintext is wrapped by a local KEK, itself wrapped by the
/// backend ([`crate::kek`]); the layer's own layout follows the backend kind.
pub const FORMAT_LOCAL_KEK: u8 = 0x02;
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
    /// An AES key inside a PKCS#11 token (HSM).
    Pkcs11 = 0x03,
}

impl BackendKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(BackendKind::Embedded),
            0x02 => Some(BackendKind::Aws),
            0x03 => Some(BackendKind::Pkcs11),
            _ => None,
        }
    }

    /// Short name used in logs, metrics and annotations.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Aws => "aws",
            BackendKind::Pkcs11 => "pkcs11",
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

/// Wraps a local-KEK layer body in the plugin envelope: `0x02 ‖ backend kind ‖ body`.
pub fn seal_layered(kind: BackendKind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.push(FORMAT_LOCAL_KEK);
    out.push(kind as u8);
    out.extend_from_slice(body);
    out
}

/// How a plugin ciphertext was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Format 1: a backend blob.
    Direct,
    /// Format 2: a local-KEK layer body ([`crate::kek`]).
    LocalKek,
}

/// Splits a plugin ciphertext of either format into its format, backend and body. Never panics.
pub fn open_any(ciphertext: &[u8]) -> Result<(Format, BackendKind, &[u8]), PluginError> {
    let format = match ciphertext.first() {
        None => return Err(PluginError::InvalidCiphertext("ciphertext is empty".into())),
        Some(&FORMAT_V1) => Format::Direct,
        Some(&FORMAT_LOCAL_KEK) => Format::LocalKek,
        Some(v) => {
            return Err(PluginError::InvalidCiphertext(format!(
                "unknown ciphertext format version 0x{v:02x} (not made by envelope?)"
            )));
        }
    };
    match ciphertext {
        [_, kind, body @ ..] => {
            let kind = BackendKind::from_byte(*kind)
                .ok_or_else(|| PluginError::InvalidCiphertext(format!("unknown backend kind 0x{kind:02x}")))?;
            if body.is_empty() {
                return Err(PluginError::InvalidCiphertext("ciphertext is truncated".into()));
            }
            Ok((format, kind, body))
        }
        _ => Err(PluginError::InvalidCiphertext("ciphertext is truncated".into())),
    }
}

/// Splits a format-1 plugin envelope into its backend and blob. Never panics.
pub fn open_envelope(ciphertext: &[u8]) -> Result<(BackendKind, &[u8]), PluginError> {
    match open_any(ciphertext)? {
        (Format::Direct, kind, blob) => Ok((kind, blob)),
        (Format::LocalKek, _, _) => Err(PluginError::InvalidCiphertext(
            "the ciphertext was made through a local KEK (format 2), which this plugin does not read".into(),
        )),
    }
}

/// The backend blob of a format-1 ciphertext made by `kind`.
pub fn open_direct(kind: BackendKind, ciphertext: &[u8]) -> Result<&[u8], PluginError> {
    let (k, blob) = open_envelope(ciphertext)?;
    check_kind(kind, k)?;
    Ok(blob)
}

/// Refuses a ciphertext made by another backend than `ours`.
pub fn check_kind(ours: BackendKind, theirs: BackendKind) -> Result<(), PluginError> {
    if ours != theirs {
        return Err(PluginError::InvalidCiphertext(format!(
            "ciphertext was made by the {} backend, this plugin runs the {} backend",
            theirs.name(),
            ours.name()
        )));
    }
    Ok(())
}

/// Checks a request's annotations against the KMS v2 rules ([`rules::check_annotations`]).
pub fn check_annotations(a: &HashMap<String, Vec<u8>>) -> Result<(), PluginError> {
    rules::check_annotations(a).map_err(|e| PluginError::InvalidRequest(e.to_string()))
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
    // On every Encrypt and Decrypt: a table lookup per nibble (`hex::encode` goes through a
    // `char` iterator and showed in profiles).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf);
    let mut out = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_digest_is_lowercase_hex_sha256_of_the_canonical_encoding() {
        // No annotations: SHA-256 of nothing.
        assert_eq!(
            annotations_digest(&HashMap::new()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let a = HashMap::from([("k.example.io".to_string(), b"v".to_vec())]);
        let mut canonical = Vec::new();
        canonical.extend_from_slice(&12u32.to_be_bytes());
        canonical.extend_from_slice(b"k.example.io");
        canonical.extend_from_slice(&1u32.to_be_bytes());
        canonical.extend_from_slice(b"v");
        let expected = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical));
        assert_eq!(annotations_digest(&a), expected);
    }
    use proptest::prelude::*;

    #[test]
    fn annotations_limits() {
        let mut a = HashMap::new();
        a.insert("x.example.io".to_string(), vec![0u8; 10]);
        assert!(check_annotations(&a).is_ok());
        a.insert("y.example.io".to_string(), vec![0u8; rules::MAX_ANNOTATIONS_SIZE]);
        let e = check_annotations(&a).unwrap_err();
        assert_eq!(e.to_string(), "invalid request: annotations total 32802 bytes, more than 32768");
        let mut b = HashMap::new();
        b.insert("Bad".to_string(), vec![]);
        let e = check_annotations(&b).unwrap_err();
        assert_eq!(e.to_string(), r#"invalid request: annotation key "Bad" is not a fully qualified domain name"#);
    }

    #[test]
    fn envelope_errors_are_specific() {
        assert!(open_envelope(&[]).unwrap_err().to_string().contains("empty"));
        assert!(open_envelope(&[1]).unwrap_err().to_string().contains("truncated"));
        assert!(open_envelope(&[1, 1]).unwrap_err().to_string().contains("truncated"));
        assert!(open_envelope(&[1, 9, 0]).unwrap_err().to_string().contains("backend kind"));
        assert!(open_envelope(&[7, 1, 0]).unwrap_err().to_string().contains("format version"));
        assert_eq!(open_envelope(&[1, 1, 5]).unwrap(), (BackendKind::Embedded, &[5u8][..]));
        assert!(open_envelope(&[2, 2, 5]).unwrap_err().to_string().contains("local KEK"));
        assert_eq!(open_any(&[2, 2, 5]).unwrap(), (Format::LocalKek, BackendKind::Aws, &[5u8][..]));
        assert!(open_any(&[2, 2]).unwrap_err().to_string().contains("truncated"));
        assert!(open_any(&[2]).unwrap_err().to_string().contains("truncated"));
        assert!(open_direct(BackendKind::Aws, &[1, 3, 5]).unwrap_err().to_string().contains("pkcs11 backend"));
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
            let _ = open_any(&data);
        }

        #[test]
        fn layered_round_trip(body in proptest::collection::vec(any::<u8>(), 1..300)) {
            let sealed = seal_layered(BackendKind::Pkcs11, &body);
            let (f, k, b) = open_any(&sealed).unwrap();
            prop_assert_eq!((f, k), (Format::LocalKek, BackendKind::Pkcs11));
            prop_assert_eq!(b, &body[..]);
        }

        #[test]
        fn digest_distinguishes(a in proptest::collection::hash_map("[a-z]{1,4}", proptest::collection::vec(any::<u8>(), 0..4), 0..4),
                                b in proptest::collection::hash_map("[a-z]{1,4}", proptest::collection::vec(any::<u8>(), 0..4), 0..4)) {
            prop_assert_eq!(a == b, annotations_digest(&a) == annotations_digest(&b));
        }
    }
}
