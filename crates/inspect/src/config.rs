//! Strict reader for kube-apiserver's EncryptionConfiguration file (spec §8.1).
//!
//! Like kube-apiserver, unknown and duplicate fields are errors, every provider element holds
//! exactly one provider, static keys must be base64 of a valid key size, and KMS providers need a
//! name and a `unix://` endpoint. The result gives the static keys by provider type and name
//! (decoded, in [`Zeroizing`] buffers) and the KMS providers.
//!
//! ```
//! let yaml = r#"
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: [secrets]
//!     providers:
//!       - kms: {apiVersion: v2, name: our-kms, endpoint: "unix:///run/kms.sock"}
//!       - aescbc:
//!           keys: [{name: key1, secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]
//!       - identity: {}
//! "#;
//! let config = envelope_inspect::EncryptionConfig::from_yaml(yaml)?;
//! assert_eq!(config.kms_providers()[0].name, "our-kms");
//! let keys = config.static_keys(envelope_inspect::StaticProvider::AesCbc);
//! assert_eq!((keys[0].name.as_str(), keys[0].secret().len()), ("key1", 32));
//! # Ok::<(), envelope_inspect::Error>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::classify::{ProviderKind, StaticProvider};
use crate::error::{Error, Result};

/// `apiVersion` of the file.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// `kind` of the file.
pub const KIND: &str = "EncryptionConfiguration";
/// Default `kms.timeout`.
pub const DEFAULT_KMS_TIMEOUT: Duration = Duration::from_secs(3);
/// Default `kms.cachesize` (KMS v1 only).
pub const DEFAULT_KMS_V1_CACHE_SIZE: i32 = 1000;

/// A validated EncryptionConfiguration.
#[derive(Debug, Clone)]
pub struct EncryptionConfig {
    rules: Vec<ResourceRule>,
}

/// One `resources[]` element: which resources, and the providers for them (the first encrypts
/// writes, all are tried for reads).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResourceRule {
    /// `resource` or `resource.group` entries, `*.group`, `*.` or `*.*`.
    pub resources: Vec<String>,
    /// The providers, in order.
    pub providers: Vec<Provider>,
}

/// One `providers[]` element.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Provider {
    /// `aescbc`, `aesgcm` or `secretbox` with its keys (the first key encrypts).
    Static {
        /// Which one.
        provider: StaticProvider,
        /// Its keys, in order.
        keys: Vec<StaticKey>,
    },
    /// `identity: {}`.
    Identity,
    /// `kms`.
    Kms(KmsProvider),
}

/// A static key. The secret is kept in a zeroizing buffer and never printed by `Debug`.
#[derive(Clone)]
pub struct StaticKey {
    /// The key name (part of the stored prefix).
    pub name: String,
    secret: Zeroizing<Vec<u8>>,
}

impl StaticKey {
    /// A key from its name and raw (decoded) secret.
    pub fn new(name: impl Into<String>, secret: Zeroizing<Vec<u8>>) -> Self {
        StaticKey { name: name.into(), secret }
    }

    /// The decoded key bytes (16, 24 or 32 for AES, 32 for secretbox).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("name", &self.name)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// The KMS plugin API version of a `kms` provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KmsApiVersion {
    /// `v1` (the default when `apiVersion` is omitted): the v1beta1 plugin API.
    V1,
    /// `v2`.
    V2,
}

impl KmsApiVersion {
    /// The [`ProviderKind`] of values this provider writes.
    pub const fn kind(self) -> ProviderKind {
        match self {
            KmsApiVersion::V1 => ProviderKind::KmsV1,
            KmsApiVersion::V2 => ProviderKind::KmsV2,
        }
    }
}

/// A `kms` provider.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsProvider {
    /// `name`, part of the stored prefix.
    pub name: String,
    /// `apiVersion` (default v1).
    pub api_version: KmsApiVersion,
    /// `endpoint`, e.g. `unix:///var/run/kms.sock`.
    pub endpoint: String,
    /// `cachesize` (v1 only; default 1000; negative disables the cache). `None` for v2.
    pub cache_size: Option<i32>,
    /// `timeout` (default 3 s).
    pub timeout: Duration,
}

impl KmsProvider {
    /// The socket path of a `unix://` endpoint (`unix:///path` → `/path`,
    /// `unix:///@name` → `@name` for an abstract socket).
    pub fn socket_path(&self) -> &str {
        let rest = self.endpoint.strip_prefix("unix://").unwrap_or(&self.endpoint);
        match rest.strip_prefix("/@") {
            Some(_) => rest.get(1..).unwrap_or(rest),
            None => rest,
        }
    }
}

impl EncryptionConfig {
    /// Parse and validate the YAML (or JSON) text of an EncryptionConfiguration.
    ///
    /// # Errors
    /// [`Error::Config`] describing the first problem (with its line and column for syntax and
    /// schema errors). Secrets are never part of the message.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        validate(raw)
    }

    /// Read, parse and validate the file at `path`. The file content is zeroized after parsing.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, otherwise as [`EncryptionConfig::from_yaml`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?);
        let text =
            std::str::from_utf8(&bytes).map_err(|_| Error::Config(format!("{} is not UTF-8", path.display())))?;
        Self::from_yaml(text)
    }

    /// The `resources[]` rules in file order.
    pub fn rules(&self) -> &[ResourceRule] {
        &self.rules
    }

    /// Every key of the given static provider type, in file order; a key listed again (same name
    /// and secret, e.g. in a rule for another resource) is returned once.
    pub fn static_keys(&self, provider: StaticProvider) -> Vec<&StaticKey> {
        let mut out: Vec<&StaticKey> = Vec::new();
        for p in self.rules.iter().flat_map(|r| &r.providers) {
            if let Provider::Static { provider: p, keys } = p {
                if *p != provider {
                    continue;
                }
                for k in keys {
                    if !out.iter().any(|o| o.name == k.name && o.secret() == k.secret()) {
                        out.push(k);
                    }
                }
            }
        }
        out
    }

    /// The keys of `provider` named `name` (usually one; several if different rules reuse a
    /// name with different secrets).
    pub fn static_keys_named(&self, provider: StaticProvider, name: &str) -> Vec<&StaticKey> {
        self.static_keys(provider).into_iter().filter(|k| k.name == name).collect()
    }

    /// Every KMS provider in file order; one listed again (same name and API version) is
    /// returned once.
    pub fn kms_providers(&self) -> Vec<&KmsProvider> {
        let mut out: Vec<&KmsProvider> = Vec::new();
        for p in self.rules.iter().flat_map(|r| &r.providers) {
            if let Provider::Kms(k) = p
                && !out.iter().any(|o| o.name == k.name && o.api_version == k.api_version)
            {
                out.push(k);
            }
        }
        out
    }

    /// The KMS provider whose values carry `kind` ([`ProviderKind::KmsV1`] or
    /// [`ProviderKind::KmsV2`]) and `name`.
    pub fn kms_provider(&self, kind: ProviderKind, name: &str) -> Option<&KmsProvider> {
        self.kms_providers().into_iter().find(|k| k.api_version.kind() == kind && k.name == name)
    }

    /// The configured names that appear in prefixes of `kind`: static key names for the static
    /// providers, provider names for KMS; empty for other kinds. For
    /// [`crate::classify::match_name`].
    pub fn names(&self, kind: ProviderKind) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in self.rules.iter().flat_map(|r| &r.providers) {
            match p {
                Provider::Static { provider, keys } if provider.kind() == kind => {
                    out.extend(keys.iter().map(|k| k.name.as_str()));
                }
                Provider::Kms(k) if k.api_version.kind() == kind => out.push(&k.name),
                _ => {}
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) form. `deny_unknown_fields` everywhere; serde's derive rejects duplicate fields.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    api_version: String,
    kind: String,
    resources: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    resources: Vec<String>,
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    aesgcm: Option<RawKeys>,
    aescbc: Option<RawKeys>,
    secretbox: Option<RawKeys>,
    identity: Option<RawIdentity>,
    kms: Option<RawKms>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    secret: Zeroizing<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawKms {
    api_version: Option<String>,
    name: String,
    endpoint: String,
    cachesize: Option<i32>,
    timeout: Option<String>,
}

fn validate(raw: RawConfig) -> Result<EncryptionConfig> {
    if raw.kind != KIND {
        return Err(Error::Config(format!("kind is {:?}, expected {KIND:?}", raw.kind)));
    }
    if raw.api_version != API_VERSION {
        return Err(Error::Config(format!("apiVersion is {:?}, expected {API_VERSION:?}", raw.api_version)));
    }
    if raw.resources.is_empty() {
        return Err(Error::Config("resources: at least one entry is required".into()));
    }
    let mut rules = Vec::with_capacity(raw.resources.len());
    let mut seen_wildcards: Vec<String> = Vec::new();
    let mut kms_v2_names: BTreeSet<String> = BTreeSet::new();
    for (i, rule) in raw.resources.into_iter().enumerate() {
        let at = format!("resources[{i}]");
        validate_resources(&at, &rule.resources, &mut seen_wildcards)?;
        if rule.providers.is_empty() {
            return Err(Error::Config(format!("{at}.providers: at least one provider is required")));
        }
        let mut providers = Vec::with_capacity(rule.providers.len());
        for (j, p) in rule.providers.into_iter().enumerate() {
            let at = format!("{at}.providers[{j}]");
            let provider = validate_provider(&at, p)?;
            if let Provider::Kms(k) = &provider
                && k.api_version == KmsApiVersion::V2
                && !kms_v2_names.insert(k.name.clone())
            {
                return Err(Error::Config(format!(
                    "{at}.kms.name: KMS v2 provider name {:?} is used more than once",
                    k.name
                )));
            }
            providers.push(provider);
        }
        rules.push(ResourceRule { resources: rule.resources, providers });
    }
    Ok(EncryptionConfig { rules })
}

const FORBIDDEN_RESOURCES: [&str; 3] = ["apiserveripinfo", "serviceipallocations", "servicenodeportallocations"];

/// Resource-name rules of §8.1. `seen_wildcards` holds the `*.group` / `*.*` entries of earlier
/// rules (a later entry they cover is an error).
fn validate_resources(at: &str, list: &[String], seen_wildcards: &mut Vec<String>) -> Result<()> {
    if list.is_empty() {
        return Err(Error::Config(format!("{at}.resources: at least one resource is required")));
    }
    let mut here: BTreeSet<&str> = BTreeSet::new();
    for r in list {
        let bad = |why: &str| Error::Config(format!("{at}.resources: {r:?} {why}"));
        if r.is_empty() {
            return Err(bad("is empty"));
        }
        if r.chars().any(|c| c.is_uppercase() || c.is_whitespace()) {
            return Err(bad("must be lowercase without spaces"));
        }
        if r == "*" {
            return Err(bad("is not allowed; use '*.' for the core group or '*.*' for all"));
        }
        let (resource, group) = r.split_once('.').unwrap_or((r.as_str(), ""));
        if group == "*" && resource != "*" {
            return Err(bad("is not allowed ('resource.*' cannot be used)"));
        }
        if group == "extensions" {
            return Err(bad("is not allowed (the extensions group cannot be encrypted)"));
        }
        if group == "events.k8s.io" {
            return Err(bad("is not allowed (use 'events')"));
        }
        if group.is_empty() && FORBIDDEN_RESOURCES.contains(&resource) {
            return Err(bad("cannot be encrypted"));
        }
        if !here.insert(r.as_str()) {
            return Err(bad("is listed twice"));
        }
        for w in seen_wildcards.iter() {
            if covers(w, group) {
                return Err(bad(&format!("is already covered by {w:?} in an earlier rule")));
            }
        }
    }
    // Overlaps inside one list: a wildcard together with something it covers.
    for w in here.iter().filter(|r| r.starts_with("*.")) {
        for r in here.iter().filter(|r| *r != w) {
            let (_, group) = r.split_once('.').unwrap_or((r, ""));
            if covers(w, group) {
                return Err(Error::Config(format!("{at}.resources: {r:?} overlaps with {w:?}")));
            }
        }
    }
    seen_wildcards.extend(here.iter().filter(|r| r.starts_with("*.")).map(|r| (*r).to_owned()));
    Ok(())
}

/// Whether wildcard `w` (`*.*`, `*.` or `*.group`) covers entries of `group` (any resource of
/// it, or its own `*.group` wildcard).
fn covers(w: &str, group: &str) -> bool {
    match w.strip_prefix("*.") {
        Some("*") => true,
        Some(wg) => wg == group,
        None => false,
    }
}

fn validate_provider(at: &str, p: RawProvider) -> Result<Provider> {
    let count = [p.aesgcm.is_some(), p.aescbc.is_some(), p.secretbox.is_some(), p.identity.is_some(), p.kms.is_some()]
        .into_iter()
        .filter(|x| *x)
        .count();
    if count != 1 {
        return Err(Error::Config(format!(
            "{at}: exactly one of aesgcm, aescbc, secretbox, identity, kms is required ({count} given)"
        )));
    }
    if let Some(k) = p.aesgcm {
        return static_provider(at, StaticProvider::AesGcm, k);
    }
    if let Some(k) = p.aescbc {
        return static_provider(at, StaticProvider::AesCbc, k);
    }
    if let Some(k) = p.secretbox {
        return static_provider(at, StaticProvider::Secretbox, k);
    }
    if let Some(k) = p.kms {
        return kms_provider(at, k).map(Provider::Kms);
    }
    Ok(Provider::Identity)
}

fn static_provider(at: &str, provider: StaticProvider, raw: RawKeys) -> Result<Provider> {
    if raw.keys.is_empty() {
        return Err(Error::Config(format!("{at}.{provider}.keys: at least one key is required")));
    }
    let mut keys = Vec::with_capacity(raw.keys.len());
    for (i, k) in raw.keys.into_iter().enumerate() {
        let at = format!("{at}.{provider}.keys[{i}]");
        if k.name.is_empty() {
            return Err(Error::Config(format!("{at}.name: must not be empty")));
        }
        // The decoder's own error names the offending byte and offset; keep it out of messages.
        let secret = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(k.secret.trim().as_bytes())
                .map_err(|_| Error::Config(format!("{at}.secret: key {:?} is not valid base64", k.name)))?,
        );
        if !provider.is_valid_key_len(secret.len()) {
            let want = match provider {
                StaticProvider::Secretbox => "32",
                StaticProvider::AesCbc | StaticProvider::AesGcm => "16, 24 or 32",
            };
            return Err(Error::Config(format!(
                "{at}.secret: key {:?} is {} bytes, {provider} needs {want}",
                k.name,
                secret.len()
            )));
        }
        keys.push(StaticKey { name: k.name, secret });
    }
    Ok(Provider::Static { provider, keys })
}

fn kms_provider(at: &str, raw: RawKms) -> Result<KmsProvider> {
    let at = format!("{at}.kms");
    let api_version = match raw.api_version.as_deref() {
        None | Some("v1") => KmsApiVersion::V1,
        Some("v2") => KmsApiVersion::V2,
        Some(other) => {
            return Err(Error::Config(format!("{at}.apiVersion: {other:?} is not v1 or v2")));
        }
    };
    if raw.name.is_empty() {
        return Err(Error::Config(format!("{at}.name: must not be empty")));
    }
    if api_version == KmsApiVersion::V2 && raw.name.contains(':') {
        return Err(Error::Config(format!("{at}.name: {:?} must not contain ':' for apiVersion v2", raw.name)));
    }
    match raw.endpoint.strip_prefix("unix://") {
        Some(path) if !path.is_empty() && path != "/" => {}
        _ => {
            return Err(Error::Config(format!(
                "{at}.endpoint: {:?} must be a unix:// URL with a path (unix:///path)",
                raw.endpoint
            )));
        }
    }
    let cache_size = match (api_version, raw.cachesize) {
        (KmsApiVersion::V2, Some(_)) => {
            return Err(Error::Config(format!("{at}.cachesize: not supported for apiVersion v2")));
        }
        (KmsApiVersion::V2, None) => None,
        (KmsApiVersion::V1, Some(0)) => {
            return Err(Error::Config(format!("{at}.cachesize: 0 is invalid (negative disables the cache)")));
        }
        (KmsApiVersion::V1, c) => Some(c.unwrap_or(DEFAULT_KMS_V1_CACHE_SIZE)),
    };
    let timeout = match raw.timeout.as_deref() {
        None => DEFAULT_KMS_TIMEOUT,
        Some(t) => match parse_go_duration(t) {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(Error::Config(format!(
                    "{at}.timeout: {t:?} is not a positive duration (e.g. 3s, 500ms, 1m30s)"
                )));
            }
        },
    };
    Ok(KmsProvider { name: raw.name, api_version, endpoint: raw.endpoint, cache_size, timeout })
}

/// Parse a Go `time.Duration` string (`300ms`, `1.5h`, `2h45m`, `0`). Negative durations and
/// overflow give `None`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut value = int.checked_mul(unit_nanos)?;
        let mut scale = unit_nanos;
        for d in frac.chars() {
            scale /= 10;
            value = value.checked_add(u128::from(d.to_digit(10)?) * scale)?;
        }
        total_nanos = total_nanos.checked_add(value)?;
        rest = after;
    }
    // Go's Duration is an int64 of nanoseconds.
    if total_nanos > u128::from(i64::MAX.unsigned_abs()) {
        return None;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).ok()?;
    let nanos = u32::try_from(total_nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10us"), Some(Duration::from_micros(10)));
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration("3"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("99999999999999999999h"), None);
    }

    #[test]
    fn wildcard_cover() {
        assert!(covers("*.*", ""));
        assert!(covers("*.*", "*"));
        assert!(covers("*.", ""));
        assert!(!covers("*.", "apps"));
        assert!(covers("*.apps", "apps"));
        assert!(!covers("*.apps", ""));
    }
}
