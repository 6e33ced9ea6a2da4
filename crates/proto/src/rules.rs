//! kube-apiserver's KMS v2 rules on what a plugin returns and what ends up in etcd's
//! `EncryptedObject`: the one home of these limits and checks, used by the plugin (on its
//! requests and answers) and by the inspector (on stored values, the way kube-apiserver reads
//! them).

use thiserror::Error;

/// Largest `key_id` and `ciphertext` of a KMS v2 answer (stored as `keyID` and
/// `encryptedDEKSource`), in bytes.
pub const MAX_FIELD_LEN: usize = 1024;
/// Largest total size of KMS v2 annotations (the sum of key and value lengths), in bytes.
pub const MAX_ANNOTATIONS_SIZE: usize = 32 * 1024;

/// How a set of annotations breaks the KMS v2 rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AnnotationError {
    /// A key is not a fully qualified domain name ([`is_fully_qualified_domain_name`]).
    #[error("annotation key {0:?} is not a fully qualified domain name")]
    KeyNotFqdn(String),
    /// Keys and values add up to more than [`MAX_ANNOTATIONS_SIZE`] bytes (the total).
    #[error("annotations total {0} bytes, more than {MAX_ANNOTATIONS_SIZE}")]
    TooLarge(usize),
}

/// apimachinery's `IsFullyQualifiedDomainName`, which kube-apiserver requires of annotation keys:
/// one optional trailing `.` is ignored; the rest is a lowercase RFC 1123 subdomain (≤ 253
/// chars, labels of `[a-z0-9-]`, alphanumeric at both ends, ≤ 63 chars each) with at least two
/// labels.
pub fn is_fully_qualified_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut labels = 0usize;
    for label in name.split('.') {
        labels += 1;
        let bytes = label.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes.iter().all(|b| alnum(b) || *b == b'-');
        if !ok {
            return false;
        }
    }
    labels >= 2
}

/// Checks annotations against the KMS v2 rules: every key a fully qualified domain name, keys
/// and values together at most [`MAX_ANNOTATIONS_SIZE`] bytes. The first key that fails is
/// reported, in iteration order.
pub fn check_annotations<K, V>(annotations: impl IntoIterator<Item = (K, V)>) -> Result<(), AnnotationError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let mut total = 0usize;
    for (k, v) in annotations {
        let k = k.as_ref();
        if !is_fully_qualified_domain_name(k) {
            return Err(AnnotationError::KeyNotFqdn(k.to_owned()));
        }
        total = total.saturating_add(k.len()).saturating_add(v.as_ref().len());
    }
    if total > MAX_ANNOTATIONS_SIZE {
        return Err(AnnotationError::TooLarge(total));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn fqdn_rule() {
        for ok in [
            "kms.example.io",
            "kms.example.io.",
            "remote-kms-auditid.kms.example.io",
            "a.b.",
            "plugin.envelope.dev",
            "0.9",
        ] {
            assert!(is_fully_qualified_domain_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "localhost",
            "Example.com",
            "kms.example.io/remote-kms-auditid",
            "-a.b",
            "a-.b",
            "a..b",
            "a.b..",
            "a_b.io",
        ] {
            assert!(!is_fully_qualified_domain_name(bad), "{bad}");
        }
        assert!(is_fully_qualified_domain_name(&format!("{}.io", "a".repeat(63))));
        assert!(!is_fully_qualified_domain_name(&format!("{}.io", "a".repeat(64))));
        let long = format!("{}.io", vec!["a".repeat(60); 4].join("."));
        assert_eq!(long.len(), 246);
        assert!(is_fully_qualified_domain_name(&long));
        assert!(!is_fully_qualified_domain_name(&format!("{}.io", vec!["a".repeat(62); 4].join("."))));
    }

    #[test]
    fn annotation_limits() {
        let mut a = HashMap::new();
        a.insert("x.example.io".to_string(), vec![0u8; 10]);
        assert_eq!(check_annotations(&a), Ok(()));
        a.insert("y.example.io".to_string(), vec![0u8; MAX_ANNOTATIONS_SIZE - 12 - 22]);
        assert_eq!(check_annotations(&a), Ok(()));
        a.insert("z.example.io".to_string(), vec![]);
        let e = check_annotations(&a).unwrap_err();
        assert_eq!(e, AnnotationError::TooLarge(MAX_ANNOTATIONS_SIZE + 12));
        assert_eq!(e.to_string(), format!("annotations total {} bytes, more than 32768", MAX_ANNOTATIONS_SIZE + 12));

        let bad = BTreeMap::from([("a.io".to_string(), vec![]), ("Bad.io".to_string(), vec![1])]);
        let e = check_annotations(&bad).unwrap_err();
        assert_eq!(e, AnnotationError::KeyNotFqdn("Bad.io".into()));
        assert_eq!(e.to_string(), r#"annotation key "Bad.io" is not a fully qualified domain name"#);
        assert_eq!(check_annotations(BTreeMap::<String, Vec<u8>>::new()), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn fqdn_never_panics(s in ".{0,300}") {
            let _ = is_fully_qualified_domain_name(&s);
        }
    }
}
