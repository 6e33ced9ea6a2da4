//! Stored values handed in by an operator — typically saved with `etcdctl get --print-value-only
//! KEY > value.bin` — rather than read from etcd: which bytes to try as the value, and what to
//! say when they are not one.
//!
//! `etcdctl get --print-value-only` prints the value followed by one `\n`. [`candidates`] gives
//! the bytes as they are and, when they end with `\n`, the bytes without that one newline. A
//! caller tries them in order and keeps the first that is a complete value (classifies without
//! being corrupt, decrypts, decodes): the exact bytes win, so a value whose last byte really is
//! 0x0a (a protobuf can end with one) is never cut, and etcdctl's newline is ignored only when
//! the value without it is complete. No format is complete both with and without a trailing
//! byte: a protobuf cut short does not decode, and AEAD tags and padding do not verify.
//!
//! [`explain`] says why bytes are not a usable value: what was expected and what was found,
//! with hints for the usual mix-ups (the key line of `etcdctl get` without
//! `--print-value-only`, base64 from `etcdctl get -w json`, a value edited as text). It never
//! echoes value bytes beyond the prefix (`k8s:enc:<provider>:<version>:<name>:`), which
//! kube-apiserver stores in the clear.

use base64::Engine as _;

use crate::classify::{
    self, Classified, CorruptValue, ENCRYPTED_PREFIX, PROTOBUF_MAGIC, ProviderKind, StaticProvider, escape_bytes,
};

/// The stored prefixes, for "expected …" messages.
pub const EXPECTED_PREFIXES: &str = "k8s:enc:kms:v2:<provider>:, k8s:enc:kms:v1:<provider>: or \
k8s:enc:<aescbc|aesgcm|secretbox>:v1:<key>: (or an unencrypted object: k8s\\0 protobuf or JSON)";

/// The bytes to try as the stored value, in order: `bytes`, then — if `bytes` ends with `\n` —
/// `bytes` without that one `\n` (the newline `etcdctl get --print-value-only` appends).
pub fn candidates(bytes: &[u8]) -> Vec<&[u8]> {
    match bytes.strip_suffix(b"\n") {
        Some(stripped) => vec![bytes, stripped],
        None => vec![bytes],
    }
}

/// Whether `classified` is a value with a complete layout: identity, a static-key, KMS v1 or
/// KMS v2 value (not corrupt, not an unknown prefix, not unrecognised).
pub fn is_well_formed(classified: &Classified) -> bool {
    !matches!(classified, Classified::Corrupt(_) | Classified::UnknownPrefix { .. } | Classified::Unrecognized { .. })
}

/// Why `value` (classified as `classified`) cannot be decrypted as a stored value: one line
/// saying what was expected and what was found, with a hint. `None` when it looks usable.
/// Contains no value bytes beyond the prefix.
pub fn explain(value: &[u8], classified: &Classified) -> Option<String> {
    let found = match classified {
        Classified::Corrupt(c) => return Some(explain_corrupt(value, c)),
        Classified::UnknownPrefix { prefix } => {
            format!("the prefix {prefix:?}, which names no provider this version of envelope knows")
        }
        Classified::Unrecognized { .. } => describe_unrecognized(value),
        Classified::IdentityJson if is_etcdctl_json(value) => "the JSON output of `etcdctl get -w json` (values in \
            base64, with etcd's header): save the value alone with `etcdctl get --print-value-only KEY > value.bin`"
            .to_owned(),
        _ => return None,
    };
    Some(format!("expected a value starting with {EXPECTED_PREFIXES}; found {found}"))
}

fn explain_corrupt(value: &[u8], c: &CorruptValue) -> String {
    let layout = match c.claimed {
        ProviderKind::KmsV2 => "a KMS v2 value: k8s:enc:kms:v2:<provider>: followed by a complete EncryptedObject \
            protobuf"
            .to_owned(),
        ProviderKind::KmsV1 => "a KMS v1 value: k8s:enc:kms:v1:<provider>: followed by a 2-byte length, the wrapped \
            DEK and the encrypted data"
            .to_owned(),
        kind => {
            let (name, body) = match StaticProvider::ALL.into_iter().find(|p| p.kind() == kind) {
                Some(StaticProvider::AesCbc) => ("an aescbc", "a 16-byte IV and whole 16-byte blocks"),
                Some(StaticProvider::AesGcm) => ("an aesgcm", "a 12-byte nonce, the ciphertext and a 16-byte tag"),
                Some(StaticProvider::Secretbox) => ("a secretbox", "a 24-byte nonce, a 16-byte tag and the ciphertext"),
                None => ("an encrypted", "the encrypted data"),
            };
            let tag = kind.as_str();
            format!("{name} value: k8s:enc:{tag}:v1:<key>: followed by {body}")
        }
    };
    let prefix = c.name.as_deref().and_then(|n| c.claimed.prefix(n));
    let found = match &prefix {
        Some(p) => {
            let rest = value.len().saturating_sub(p.len());
            format!("{} followed by {rest} bytes: {}", String::from_utf8_lossy(p), c.reason)
        }
        None => format!("{} ({})", classify::describe_prefix(value), c.reason),
    };
    let mut msg = format!("expected {layout}; found {found}");
    if let Some(ending) = line_break_ending(value) {
        msg.push_str(&format!(
            "; the value ends with a line break ({ending}): a saved value must be byte-exact (only the one \\n \
             that etcdctl appends is ignored), was it saved or edited as text?"
        ));
    }
    msg
}

/// `\n`, `\n\n`, `\r\n`, ... when `value` ends with line-break characters.
fn line_break_ending(value: &[u8]) -> Option<String> {
    let n = value.iter().rev().take_while(|&&b| b == b'\n' || b == b'\r').count();
    (n > 0).then(|| escape_line_breaks(value.get(value.len() - n.min(4)..).unwrap_or_default()))
}

fn escape_line_breaks(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if b == b'\r' { "\\r" } else { "\\n" }).collect()
}

fn describe_unrecognized(value: &[u8]) -> String {
    if value.is_empty() {
        return "an empty value (did the etcd key exist when it was saved?)".to_owned();
    }
    if let Some((first, rest)) = split_first_line(value)
        && first.starts_with(b"/")
        && first.iter().all(|b| b.is_ascii_graphic())
        && candidates(rest).into_iter().any(|v| is_well_formed(&classify::classify(first, v)))
    {
        return format!(
            "a first line that is an etcd key ({}) and the value after it: `etcdctl get KEY` prints the key too; \
             save the value alone with `etcdctl get --print-value-only KEY > value.bin`",
            escape_bytes(first, 100)
        );
    }
    if let Some(decoded) = base64_value(value) {
        let what = if decoded.starts_with(ENCRYPTED_PREFIX) { "an encrypted value" } else { "an object" };
        return format!(
            "base64 text of {what}: decode it first (base64 -d value.b64 > value.bin), or save the raw value with \
             `etcdctl get --print-value-only KEY > value.bin`"
        );
    }
    format!("{} bytes that start with none of these (contents not shown)", value.len())
}

fn split_first_line(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = value.iter().position(|&b| b == b'\n')?;
    Some((value.get(..i)?, value.get(i + 1..)?))
}

/// The decoded bytes when `value` is base64 (whitespace around it ignored) of a stored value.
fn base64_value(value: &[u8]) -> Option<Vec<u8>> {
    let text = value.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    (decoded.starts_with(ENCRYPTED_PREFIX) || decoded.starts_with(PROTOBUF_MAGIC)).then_some(decoded)
}

fn is_etcdctl_json(value: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(value) else {
        return false;
    };
    o.contains_key("header") && (o.contains_key("kvs") || o.contains_key("count")) && !o.contains_key("kind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_strip_one_newline_only() {
        assert_eq!(candidates(b"abc"), vec![b"abc".as_slice()]);
        assert_eq!(candidates(b"abc\n"), vec![b"abc\n".as_slice(), b"abc".as_slice()]);
        assert_eq!(candidates(b"abc\n\n"), vec![b"abc\n\n".as_slice(), b"abc\n".as_slice()]);
        assert_eq!(candidates(b""), vec![b"".as_slice()]);
        assert_eq!(candidates(b"\n"), vec![b"\n".as_slice(), b"".as_slice()]);
    }

    #[test]
    fn explanations_name_what_was_expected() {
        let e = |v: &[u8]| explain(v, &classify::classify(b"/k", v));
        assert_eq!(e(b"k8s\0whatever"), None);
        assert_eq!(e(br#"{"kind":"Secret"}"#), None);
        let m = e(b"k8s:enc:kms:v2:p:\x0a").unwrap();
        assert!(m.starts_with("expected a KMS v2 value") && m.contains("found k8s:enc:kms:v2:p: followed by 1 bytes"));
        assert!(m.contains("line break (\\n)"), "{m}");
        let m = e(b"k8s:enc:aescbc:v1:k:0123456789abcdef0").unwrap();
        assert!(m.starts_with("expected an aescbc value") && m.contains("found k8s:enc:aescbc:v1:k: followed by 17"));
        let m = e(b"k8s:enc:kms:v2:").unwrap();
        assert!(m.contains("found k8s:enc:kms:v2: (no ':' after the name)"), "{m}");
        let m = e(b"k8s:enc:rot13:v1:x:abc").unwrap();
        assert!(m.starts_with("expected a value starting with k8s:enc:kms:v2:<provider>:") && m.contains("rot13"));
        let m = e(b"hunter2 and more\n").unwrap();
        assert!(m.ends_with("found 17 bytes that start with none of these (contents not shown)"), "{m}");
        assert!(!m.contains("hunter2"));
        assert!(e(b"").unwrap().contains("an empty value"));
        assert!(e(b"/registry/secrets/a/b\nk8s\0xyz\n").unwrap().contains("--print-value-only"));
        assert!(e(b"azhzOmVuYzprbXM6djI6cDp4\n").unwrap().contains("base64 -d"));
        assert!(e(br#"{"header":{},"kvs":[]}"#).unwrap().contains("etcdctl get -w json"));
    }
}
