//! Turning classified values into an inspection report: one [`Row`] per object and a running
//! [`Summary`] (counts per provider and key_id, unencrypted, stale, problems). Pure; the caller
//! streams rows out as it pages through etcd, so memory stays bounded by the summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::classify::Classified;

/// One inspected object. Contains no secret material.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The etcd key (lossy UTF-8).
    pub key: String,
    /// Resource (e.g. `secrets`), from the key.
    pub resource: String,
    /// Namespace, from the key (empty for cluster-scoped objects).
    pub namespace: String,
    /// Object name, from the key.
    pub name: String,
    /// `identity`, `aescbc`, `aesgcm`, `secretbox`, `kms-v1`, `kms-v2`, `unknown`, `corrupt`.
    pub provider: &'static str,
    /// Provider or static key name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    /// KMS v2 key_id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// KMS v2 DEK-source type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dek_source: Option<String>,
    /// KMS v2 annotation keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotation_keys: Vec<String>,
    /// KMS v1 wrapped-DEK length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapped_dek_len: Option<usize>,
    /// Whether the value is stored encrypted.
    pub encrypted: bool,
    /// Whether it would be written differently now (KMS v2 key_id differs from the current one,
    /// or legacy DEK mode). `None` when no current key_id is known or the value is not KMS v2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
    /// What is wrong with the value, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Value size in bytes.
    pub size: usize,
}

/// Counts over all inspected objects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Objects inspected.
    pub total: u64,
    /// Objects per provider kind.
    pub by_provider: BTreeMap<String, u64>,
    /// Objects per `provider-kind/provider-name/key_id` (key_id only for KMS v2).
    pub by_key: BTreeMap<String, u64>,
    /// Objects stored unencrypted.
    pub unencrypted: u64,
    /// KMS v2 objects that are stale; `None` (JSON `null`) when no current key_id is known, so
    /// staleness cannot be determined ([`Summary::stale_unknown`] says why).
    pub stale: Option<u64>,
    /// Why `stale` is unknown (set when it is `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_unknown: Option<String>,
    /// Objects whose value is corrupt or unrecognised.
    pub problems: u64,
    /// The current key_id used for staleness, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
}

impl Summary {
    /// A summary that marks KMS v2 objects stale against `current_key_id`; without one,
    /// staleness is unknown (`stale` is `None`, `stale_unknown` gives the reason).
    pub fn new(current_key_id: Option<String>) -> Self {
        let (stale, stale_unknown) = match current_key_id {
            Some(_) => (Some(0), None),
            None => (None, Some("no current KMS v2 key_id to compare with".to_owned())),
        };
        Self { current_key_id, stale, stale_unknown, ..Default::default() }
    }

    /// Classifies one value into a row and adds it to the counts.
    pub fn add(&mut self, prefix: &[u8], key: &[u8], value: &[u8], classified: &Classified) -> Row {
        let row = row(prefix, key, value, classified, self.current_key_id.as_deref());
        self.total += 1;
        *self.by_provider.entry(row.provider.to_string()).or_default() += 1;
        let mut group = row.provider.to_string();
        if let Some(n) = &row.provider_name {
            group.push('/');
            group.push_str(n);
        }
        if let Some(k) = &row.key_id {
            group.push('/');
            group.push_str(k);
        }
        *self.by_key.entry(group).or_default() += 1;
        if !row.encrypted {
            self.unencrypted += 1;
        }
        if row.stale == Some(true)
            && let Some(n) = &mut self.stale
        {
            *n += 1;
        }
        if row.problem.is_some() {
            self.problems += 1;
        }
        row
    }
}

fn row(prefix: &[u8], key: &[u8], value: &[u8], c: &Classified, current: Option<&str>) -> Row {
    let key_s = String::from_utf8_lossy(key).into_owned();
    let rel = key.strip_prefix(prefix).unwrap_or(key);
    let rel = String::from_utf8_lossy(rel.strip_prefix(b"/").unwrap_or(rel)).into_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    let (resource, namespace, name) = match parts.as_slice() {
        [r, ns, n] => (r.to_string(), ns.to_string(), n.to_string()),
        [r, n] => (r.to_string(), String::new(), n.to_string()),
        [r, rest @ ..] if !rest.is_empty() => {
            let n = rest.len();
            (r.to_string(), rest[..n - 1].join("/"), rest[n - 1].to_string())
        }
        _ => (String::new(), String::new(), rel.clone()),
    };
    let mut r = Row {
        key: key_s,
        resource,
        namespace,
        name,
        provider: c.provider().as_str(),
        provider_name: c.name().map(str::to_string),
        key_id: None,
        dek_source: None,
        annotation_keys: Vec::new(),
        wrapped_dek_len: None,
        encrypted: c.is_encrypted(),
        stale: None,
        problem: None,
        size: value.len(),
    };
    match c {
        Classified::KmsV2(v) => {
            r.key_id = Some(v.key_id.clone());
            r.dek_source = Some(v.dek_source_type.to_string());
            r.annotation_keys = v.annotation_keys().map(str::to_string).collect();
            r.stale = current.map(|k| v.is_stale(k));
        }
        Classified::KmsV1(v) => {
            r.wrapped_dek_len = Some(v.wrapped_dek_len());
        }
        Classified::Corrupt(_) | Classified::Unrecognized { .. } | Classified::UnknownPrefix { .. } => {
            r.problem = Some(c.to_string());
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{DekSourceType, KmsV2Value};

    fn kms_v2(key_id: &str) -> Classified {
        Classified::KmsV2(KmsV2Value {
            provider_name: "p".into(),
            key_id: key_id.into(),
            dek_source_type: DekSourceType::HkdfSha256XNonceAesGcmSeed,
            encrypted_dek_source: vec![1],
            annotations: Default::default(),
            encrypted_data_len: 60,
        })
    }

    #[test]
    fn stale_is_counted_against_the_current_key_id_and_unknown_without_one() {
        let mut known = Summary::new(Some("k2".into()));
        known.add(b"/registry", b"/registry/secrets/a/b", b"", &kms_v2("k1"));
        known.add(b"/registry", b"/registry/secrets/a/c", b"", &kms_v2("k2"));
        assert_eq!(known.stale, Some(1));
        let json = serde_json::to_value(&known).unwrap();
        assert_eq!(json["stale"], 1);
        assert!(json.get("stale_unknown").is_none());

        let mut unknown = Summary::new(None);
        let row = unknown.add(b"/registry", b"/registry/secrets/a/b", b"", &kms_v2("k1"));
        assert_eq!((row.stale, unknown.stale), (None, None));
        let json = serde_json::to_value(&unknown).unwrap();
        assert!(json["stale"].is_null(), "{json}");
        assert_eq!(json["stale_unknown"], "no current KMS v2 key_id to compare with");
    }
}
