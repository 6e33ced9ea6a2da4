//! Which stored objects `envelope reencrypt` rewrites (pure; no I/O).
//!
//! * [`RESOURCES`]: the namespaced core resources it can rewrite, with the etcd directory
//!   kube-apiserver keeps each in.
//! * [`Target`]: what kube-apiserver writes a resource with now (the first provider of its
//!   EncryptionConfiguration rule), and [`Target::stale`]: whether a classified etcd value
//!   differs from that, and how.
//! * [`resources_from_names`] / [`resources_from_config`]: `--resource` and
//!   `--encryption-config` into a list of resources (with their targets for the latter).
//! * [`object_name`]: an etcd key into the object's namespace and name.

use std::fmt;

use anyhow::{Result, bail};
use envelope_inspect::{Classified, DekSourceType, EncryptionConfig, Provider, ProviderKind, StaticProvider};

/// A namespaced resource of the core API group (`v1`) and where kube-apiserver stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// The API's plural name (`secrets`), as in `--resource` and EncryptionConfiguration.
    pub plural: &'static str,
    /// The object kind (`Secret`).
    pub kind: &'static str,
    /// Directory under kube-apiserver's `--etcd-prefix`: objects are stored at
    /// `<prefix>/<etcd_dir>/<namespace>/<name>`.
    pub etcd_dir: &'static str,
}

/// Every resource `envelope reencrypt` can rewrite: the namespaced core resources.
pub const RESOURCES: &[Resource] = &[
    Resource { plural: "secrets", kind: "Secret", etcd_dir: "secrets" },
    Resource { plural: "configmaps", kind: "ConfigMap", etcd_dir: "configmaps" },
    Resource { plural: "serviceaccounts", kind: "ServiceAccount", etcd_dir: "serviceaccounts" },
    Resource { plural: "pods", kind: "Pod", etcd_dir: "pods" },
    Resource { plural: "services", kind: "Service", etcd_dir: "services/specs" },
    Resource { plural: "endpoints", kind: "Endpoints", etcd_dir: "services/endpoints" },
    Resource { plural: "events", kind: "Event", etcd_dir: "events" },
    Resource { plural: "persistentvolumeclaims", kind: "PersistentVolumeClaim", etcd_dir: "persistentvolumeclaims" },
    Resource { plural: "replicationcontrollers", kind: "ReplicationController", etcd_dir: "controllers" },
    Resource { plural: "resourcequotas", kind: "ResourceQuota", etcd_dir: "resourcequotas" },
    Resource { plural: "limitranges", kind: "LimitRange", etcd_dir: "limitranges" },
    Resource { plural: "podtemplates", kind: "PodTemplate", etcd_dir: "podtemplates" },
];

/// The resource named `name` (`secrets`, or `secrets.` with the empty core group spelled out).
pub fn resource(name: &str) -> Option<&'static Resource> {
    let name = name.strip_suffix('.').unwrap_or(name);
    RESOURCES.iter().find(|r| r.plural == name)
}

/// What kube-apiserver writes a resource with now: the first provider of the resource's
/// EncryptionConfiguration rule (for KMS v2, under the plugin's current key_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `identity: {}` first: objects are written unencrypted (decrypting a cluster).
    Identity,
    /// A KMS v1 provider.
    KmsV1 {
        /// The provider's `name`.
        provider_name: String,
    },
    /// A KMS v2 provider and its plugin's current key_id.
    KmsV2 {
        /// The provider's `name`.
        provider_name: String,
        /// The plugin's current Status key_id.
        key_id: String,
    },
    /// `aescbc`, `aesgcm` or `secretbox`, with its first key.
    Static {
        /// Which provider.
        provider: StaticProvider,
        /// The name of its first key.
        key_name: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Identity => f.write_str("identity (unencrypted)"),
            Target::KmsV1 { provider_name } => write!(f, "kms-v1 provider {provider_name:?}"),
            Target::KmsV2 { provider_name, key_id } => write!(f, "kms-v2 provider {provider_name:?} key_id {key_id:?}"),
            Target::Static { provider, key_name } => write!(f, "{provider} key {key_name:?}"),
        }
    }
}

/// Why a stored value is not what kube-apiserver would write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// Encrypted while the target is identity.
    Encrypted(String),
    /// KMS v2 under the target provider, but with the legacy AES_GCM_KEY DEK mode
    /// (written by Kubernetes 1.27/1.28).
    LegacyDek,
    /// Under the target KMS v2 provider, with another key_id.
    OtherKeyId(String),
    /// Under another provider (or another key of the same static provider).
    OtherProvider(String),
    /// Stored unencrypted.
    Plaintext,
    /// Not a value this tool can read (corrupt, unknown prefix, unrecognised).
    Unreadable(String),
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stale::Encrypted(what) => write!(f, "encrypted ({what})"),
            Stale::LegacyDek => f.write_str("legacy AES_GCM_KEY data key"),
            Stale::OtherKeyId(k) => write!(f, "key_id {k:?}"),
            Stale::OtherProvider(what) => f.write_str(what),
            Stale::Plaintext => f.write_str("unencrypted"),
            Stale::Unreadable(what) => f.write_str(what),
        }
    }
}

impl Target {
    /// `None` when `stored` is what kube-apiserver writes now, else why not.
    pub fn stale(&self, stored: &Classified) -> Option<Stale> {
        let other = || Stale::OtherProvider(describe(stored));
        match stored {
            Classified::IdentityProtobuf | Classified::IdentityJson => match self {
                Target::Identity => None,
                _ => Some(Stale::Plaintext),
            },
            Classified::UnknownPrefix { .. } | Classified::Unrecognized { .. } | Classified::Corrupt(_) => {
                Some(Stale::Unreadable(stored.to_string()))
            }
            _ if *self == Target::Identity => Some(Stale::Encrypted(describe(stored))),
            Classified::KmsV2(v) => match self {
                Target::KmsV2 { provider_name, key_id } if *provider_name == v.provider_name => {
                    if v.key_id != *key_id {
                        Some(Stale::OtherKeyId(v.key_id.clone()))
                    } else if v.dek_source_type != DekSourceType::HkdfSha256XNonceAesGcmSeed {
                        Some(Stale::LegacyDek)
                    } else {
                        None
                    }
                }
                _ => Some(other()),
            },
            Classified::KmsV1(v) => match self {
                Target::KmsV1 { provider_name } if *provider_name == v.provider_name => None,
                _ => Some(other()),
            },
            Classified::StaticKey(s) => match self {
                Target::Static { provider, key_name } if *provider == s.provider && *key_name == s.key_name => None,
                _ => Some(other()),
            },
            // `Classified` is non-exhaustive: whatever a newer classifier reports is not current.
            _ => Some(Stale::Unreadable(stored.to_string())),
        }
    }
}

/// A short description of a stored value's provider: `kms-v2 provider "old"`, `aescbc key "k1"`.
fn describe(c: &Classified) -> String {
    match c {
        Classified::KmsV2(v) => format!("kms-v2 provider {:?} key_id {:?}", v.provider_name, v.key_id),
        Classified::KmsV1(v) => format!("kms-v1 provider {:?}", v.provider_name),
        Classified::StaticKey(s) => format!("{} key {:?}", s.provider, s.key_name),
        other => other.provider().as_str().to_string(),
    }
}

/// The resources named by `--resource` (comma-separated plural names), in order, each once.
pub fn resources_from_names(names: &[String]) -> Result<Vec<&'static Resource>> {
    let mut out: Vec<&'static Resource> = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let Some(r) = resource(n) else {
            bail!("--resource {n:?} is not supported: give namespaced core resources ({})", supported_names());
        };
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        bail!("--resource names no resource");
    }
    Ok(out)
}

/// The plural names of [`RESOURCES`], comma-separated.
pub fn supported_names() -> String {
    RESOURCES.iter().map(|r| r.plural).collect::<Vec<_>>().join(", ")
}

/// A resource an EncryptionConfiguration covers and the first provider of its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The resource.
    pub resource: &'static Resource,
    /// The first provider of its rule (for KMS v2 without the key_id, which only the plugin knows).
    pub first: FirstProvider,
}

/// The first provider of a rule, as written in the EncryptionConfiguration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstProvider {
    /// A resolved target (identity, static key, KMS v1).
    Known(Target),
    /// A KMS v2 provider: its name and plugin socket path (for the current key_id).
    KmsV2 {
        /// The provider's `name`.
        provider_name: String,
        /// The plugin's socket path (from `endpoint: unix://…`).
        socket: String,
    },
}

/// The rewritable resources an EncryptionConfiguration lists, each with the first provider of
/// the first rule that matches it (as kube-apiserver resolves them: explicit names, `*.` for the
/// core group, `*.*` for everything). Entries this tool cannot rewrite (other API groups,
/// cluster-scoped or unknown resources) are returned as the second element, for a warning.
pub fn resources_from_config(config: &EncryptionConfig) -> (Vec<Configured>, Vec<String>) {
    let mut out: Vec<Configured> = Vec::new();
    let mut unsupported: Vec<String> = Vec::new();
    for rule in config.rules() {
        let Some(first) = rule.providers.first() else {
            continue;
        };
        let first = match first {
            Provider::Identity => FirstProvider::Known(Target::Identity),
            Provider::Static { provider, keys } => match keys.first() {
                Some(k) => FirstProvider::Known(Target::Static { provider: *provider, key_name: k.name.clone() }),
                None => continue,
            },
            Provider::Kms(k) if k.api_version.kind() == ProviderKind::KmsV2 => {
                FirstProvider::KmsV2 { provider_name: k.name.clone(), socket: k.socket_path().to_string() }
            }
            Provider::Kms(k) => FirstProvider::Known(Target::KmsV1 { provider_name: k.name.clone() }),
            // `Provider` is non-exhaustive; a provider this reader does not know cannot be a target.
            _ => continue,
        };
        for entry in &rule.resources {
            let matched: Vec<&'static Resource> = match entry.as_str() {
                "*." => RESOURCES.iter().collect(),
                "*.*" => {
                    unsupported.push("*.* (only its core resources)".to_string());
                    RESOURCES.iter().collect()
                }
                e => match resource(e) {
                    Some(r) => vec![r],
                    None => {
                        unsupported.push(e.to_string());
                        Vec::new()
                    }
                },
            };
            for r in matched {
                if !out.iter().any(|c| c.resource == r) {
                    out.push(Configured { resource: r, first: first.clone() });
                }
            }
        }
    }
    (out, unsupported)
}

/// What to do with one etcd row of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// Stored as kube-apiserver writes it now: leave it.
    Current,
    /// Rewrite the object `namespace`/`name`.
    Stale {
        /// From the key.
        namespace: String,
        /// From the key.
        name: String,
        /// Why.
        why: Stale,
    },
    /// Stale, but the key names no namespaced object (`<prefix>/<dir>/<namespace>/<name>`), so
    /// the API cannot rewrite it.
    Unmapped(Stale),
}

/// Decides for one etcd row (`key` under `prefix`, its value classified as `stored`) of
/// `resource`, whose objects kube-apiserver now writes as `target`.
pub fn select(prefix: &str, resource: &Resource, target: &Target, key: &[u8], stored: &Classified) -> Selected {
    match target.stale(stored) {
        None => Selected::Current,
        Some(why) => match object_name(prefix, resource, key) {
            Some((namespace, name)) => Selected::Stale { namespace, name, why },
            None => Selected::Unmapped(why),
        },
    }
}

/// The namespace and name of the object stored at `key`, if `key` is
/// `<prefix>/<etcd_dir>/<namespace>/<name>` with no further `/`.
pub fn object_name(prefix: &str, resource: &Resource, key: &[u8]) -> Option<(String, String)> {
    let dir = crate::inspect_cmd::scan_prefix(prefix, resource.etcd_dir);
    let rest = std::str::from_utf8(key.strip_prefix(dir.as_slice())?).ok()?;
    let (namespace, name) = rest.split_once('/')?;
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some((namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envelope_inspect::writer;

    const KEY: &[u8] = b"/registry/secrets/default/db";

    fn secret() -> Vec<u8> {
        let meta = writer::new_object_meta("default", "db", "uid-1", 1_700_000_000);
        writer::encode_secret(&writer::new_secret(meta, [("k".to_owned(), b"v".to_vec())].into(), "Opaque")).to_vec()
    }

    fn kms_v2(provider: &str, key_id: &str) -> Classified {
        let env = writer::KmsV2Envelope {
            provider_name: provider.into(),
            key_id: key_id.into(),
            encrypted_dek_source: b"wrapped".to_vec(),
            annotations: Default::default(),
        };
        let value = writer::kms_v2_seed(KEY, &secret(), &[7u8; 32], &env).unwrap();
        envelope_inspect::classify(KEY, &value)
    }

    fn target(provider: &str, key_id: &str) -> Target {
        Target::KmsV2 { provider_name: provider.into(), key_id: key_id.into() }
    }

    #[test]
    fn kms_v2_under_the_current_provider_and_key_id_is_current() {
        assert_eq!(target("envelope", "k2").stale(&kms_v2("envelope", "k2")), None);
    }

    #[test]
    fn another_key_id_provider_or_plaintext_is_stale() {
        let t = target("envelope", "k2");
        assert_eq!(t.stale(&kms_v2("envelope", "k1")), Some(Stale::OtherKeyId("k1".into())));
        assert!(matches!(t.stale(&kms_v2("old", "k2")), Some(Stale::OtherProvider(d)) if d.contains("\"old\"")));
        assert_eq!(t.stale(&envelope_inspect::classify(KEY, &secret())), Some(Stale::Plaintext));
        assert_eq!(t.stale(&Classified::IdentityJson), Some(Stale::Plaintext));
    }

    #[test]
    fn legacy_dek_mode_is_stale_under_the_same_key_id() {
        let env = writer::KmsV2Envelope {
            provider_name: "envelope".into(),
            key_id: "k2".into(),
            encrypted_dek_source: b"wrapped".to_vec(),
            annotations: Default::default(),
        };
        let value = writer::kms_v2_aes_gcm_key(KEY, &secret(), &[7u8; 32], 1_000_000_001, &env).unwrap();
        let c = envelope_inspect::classify(KEY, &value);
        assert_eq!(target("envelope", "k2").stale(&c), Some(Stale::LegacyDek));
    }

    #[test]
    fn kms_v1_is_current_only_under_its_provider_name() {
        let value = writer::kms_v1(KEY, &secret(), "v1p", &[9u8; 32], b"wrapped-dek").unwrap();
        let c = envelope_inspect::classify(KEY, &value);
        assert_eq!(Target::KmsV1 { provider_name: "v1p".into() }.stale(&c), None);
        assert!(matches!(Target::KmsV1 { provider_name: "other".into() }.stale(&c), Some(Stale::OtherProvider(_))));
        assert!(matches!(target("v1p", "k").stale(&c), Some(Stale::OtherProvider(d)) if d.starts_with("kms-v1")));
    }

    #[test]
    fn static_keys_and_kms_v1_match_by_name() {
        let cfg = EncryptionConfig::from_yaml(
            r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc:
          keys: [{name: key1, secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]
"#,
        )
        .unwrap();
        let keys = cfg.static_keys(StaticProvider::AesCbc);
        let value = writer::static_key(StaticProvider::AesCbc, KEY, &secret(), "key1", keys[0].secret()).unwrap();
        let c = envelope_inspect::classify(KEY, &value);
        let cur = Target::Static { provider: StaticProvider::AesCbc, key_name: "key1".into() };
        assert_eq!(cur.stale(&c), None);
        let other = Target::Static { provider: StaticProvider::AesCbc, key_name: "key2".into() };
        assert!(matches!(other.stale(&c), Some(Stale::OtherProvider(_))));
        assert!(matches!(target("envelope", "k").stale(&c), Some(Stale::OtherProvider(d)) if d.starts_with("aescbc")));
        assert!(matches!(Target::Identity.stale(&c), Some(Stale::Encrypted(_))));
        assert_eq!(Target::Identity.stale(&Classified::IdentityProtobuf), None);
    }

    #[test]
    fn unreadable_values_are_selected() {
        let c = envelope_inspect::classify(KEY, b"k8s:enc:kms:v2:envelope:\xff\xff");
        assert!(matches!(target("envelope", "k").stale(&c), Some(Stale::Unreadable(_))));
        let c = envelope_inspect::classify(KEY, b"garbage");
        assert!(matches!(Target::Identity.stale(&c), Some(Stale::Unreadable(_))));
    }

    #[test]
    fn resource_names_parse_in_order_without_duplicates() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = resources_from_names(&names(&["configmaps", "secrets", "configmaps", "secrets."])).unwrap();
        assert_eq!(r.iter().map(|r| r.plural).collect::<Vec<_>>(), ["configmaps", "secrets"]);
        assert!(resources_from_names(&names(&["deployments.apps"])).is_err());
        assert!(resources_from_names(&names(&["nodes"])).is_err());
        assert!(resources_from_names(&names(&[""])).is_err());
    }

    #[test]
    fn config_gives_each_resource_its_first_matching_rule() {
        let cfg = EncryptionConfig::from_yaml(
            r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, deployments.apps]
    providers:
      - kms: {apiVersion: v2, name: new, endpoint: "unix:///run/new.sock"}
      - kms: {apiVersion: v2, name: old, endpoint: "unix:///run/old.sock"}
  - resources: [configmaps]
    providers:
      - identity: {}
  - resources: ["*."]
    providers:
      - aesgcm:
          keys: [{name: k1, secret: "AAECAwQFBgcICQoLDA0ODw=="}]
"#,
        )
        .unwrap();
        let (list, unsupported) = resources_from_config(&cfg);
        assert_eq!(unsupported, ["deployments.apps"]);
        assert_eq!(list.len(), RESOURCES.len());
        assert_eq!(list[0].resource.plural, "secrets");
        assert_eq!(list[0].first, FirstProvider::KmsV2 { provider_name: "new".into(), socket: "/run/new.sock".into() });
        assert_eq!(list[1].resource.plural, "configmaps");
        assert_eq!(list[1].first, FirstProvider::Known(Target::Identity));
        let pods = list.iter().find(|c| c.resource.plural == "pods").unwrap();
        assert_eq!(
            pods.first,
            FirstProvider::Known(Target::Static { provider: StaticProvider::AesGcm, key_name: "k1".into() })
        );
    }

    #[test]
    fn select_picks_stale_rows_and_names_their_objects() {
        let secrets = resource("secrets").unwrap();
        let t = target("envelope", "k2");
        assert_eq!(select("/registry", secrets, &t, KEY, &kms_v2("envelope", "k2")), Selected::Current);
        assert_eq!(
            select("/registry", secrets, &t, KEY, &kms_v2("envelope", "k1")),
            Selected::Stale { namespace: "default".into(), name: "db".into(), why: Stale::OtherKeyId("k1".into()) }
        );
        assert_eq!(
            select("/registry", secrets, &t, b"/registry/secrets/odd", &Classified::IdentityProtobuf),
            Selected::Unmapped(Stale::Plaintext)
        );
        // A current value under an odd key is simply left alone.
        assert_eq!(
            select("/registry", secrets, &t, b"/registry/secrets/odd", &kms_v2("envelope", "k2")),
            Selected::Current
        );
    }

    #[test]
    fn etcd_keys_map_to_namespace_and_name() {
        let secrets = resource("secrets").unwrap();
        assert_eq!(object_name("/registry", secrets, KEY), Some(("default".into(), "db".into())));
        assert_eq!(object_name("registry/", secrets, KEY), Some(("default".into(), "db".into())));
        assert_eq!(object_name("/other", secrets, b"/other/secrets/ns/n"), Some(("ns".into(), "n".into())));
        assert_eq!(object_name("/registry", secrets, b"/registry/secrets/ns"), None);
        assert_eq!(object_name("/registry", secrets, b"/registry/secrets/ns/a/b"), None);
        assert_eq!(object_name("/registry", secrets, b"/registry/configmaps/ns/n"), None);
        assert_eq!(object_name("/registry", secrets, b"/registry/secrets//n"), None);
        let services = resource("services").unwrap();
        assert_eq!(
            object_name("/registry", services, b"/registry/services/specs/ns/web"),
            Some(("ns".into(), "web".into()))
        );
    }
}
