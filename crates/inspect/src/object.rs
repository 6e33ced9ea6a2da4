//! Decode a serialized Kubernetes object — the plaintext of every provider, or an unencrypted
//! value — and render it as the JSON `kubectl get -o json` shows.
//!
//! * `k8s\0` + `runtime.Unknown` (protobuf): `Secret` and `ConfigMap` (`apiVersion: v1`) are
//!   decoded in full; any other kind is named from its `ObjectMeta` (field 1 of every built-in
//!   object) and rendered with `apiVersion`, `kind` and `metadata` only
//!   ([`DecodedObject::is_complete`] is false).
//! * `{` (JSON, e.g. custom resources): parsed as is.
//!
//! Rendering follows the Kubernetes JSON conventions: keys sorted like kubectl's output,
//! `metadata.creationTimestamp` as RFC 3339 (UTC, seconds; `null` when unset), Secret `data` and
//! ConfigMap `binaryData` values base64, empty optional fields omitted. `resourceVersion`
//! (which comes from the etcd revision, not the stored bytes) and `managedFields` (hidden by
//! kubectl by default) are left out.
//!
//! Secret values end up in the rendered JSON; [`DecodedObject`] wipes its strings on drop.

use std::collections::BTreeMap;

use base64::Engine as _;
use envelope_proto::k8s;
use prost::Message;
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::classify::PROTOBUF_MAGIC;
use crate::error::{Error, Result};

/// How the object was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectEncoding {
    /// `k8s\0` + protobuf `runtime.Unknown`.
    Protobuf,
    /// JSON.
    Json,
}

/// The identifying fields of an object, for tables. Contains no secret values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectSummary {
    /// `apiVersion`, e.g. `v1`.
    pub api_version: String,
    /// `kind`, e.g. `Secret`.
    pub kind: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Keys of `data` (and of `binaryData` for ConfigMaps), sorted; the values are not included.
    pub data_keys: Vec<String>,
}

/// A decoded object: its summary and its kubectl-style JSON. `Debug` shows the summary only.
pub struct DecodedObject {
    summary: ObjectSummary,
    encoding: ObjectEncoding,
    complete: bool,
    json: Value,
}

impl DecodedObject {
    /// Kind, namespace, name, uid and data keys.
    pub fn summary(&self) -> &ObjectSummary {
        &self.summary
    }

    /// Protobuf or JSON.
    pub fn encoding(&self) -> ObjectEncoding {
        self.encoding
    }

    /// False when only `apiVersion`, `kind` and `metadata` could be decoded (a protobuf kind
    /// other than Secret and ConfigMap).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The object as kubectl shows it. Contains secret values for Secrets.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The JSON, pretty-printed, in a zeroizing buffer.
    pub fn to_json_pretty(&self) -> Zeroizing<String> {
        // Serializing a `Value` cannot fail (its map keys are strings).
        Zeroizing::new(serde_json::to_string_pretty(&self.json).unwrap_or_default())
    }
}

impl std::fmt::Debug for DecodedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedObject")
            .field("summary", &self.summary)
            .field("encoding", &self.encoding)
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl Drop for DecodedObject {
    fn drop(&mut self) {
        wipe_json(&mut self.json);
    }
}

/// Decode `bytes` (a plaintext, or an unencrypted stored value).
///
/// # Errors
/// [`Error::Object`] if the bytes are neither `k8s\0` protobuf nor a JSON object, or do not
/// decode.
pub fn decode_object(bytes: &[u8]) -> Result<DecodedObject> {
    if let Some(rest) = bytes.strip_prefix(PROTOBUF_MAGIC) {
        decode_protobuf(rest)
    } else if bytes.first() == Some(&b'{') {
        decode_json(bytes)
    } else {
        Err(Error::Object("neither a protobuf object (k8s\\0) nor a JSON object".into()))
    }
}

fn decode_protobuf(rest: &[u8]) -> Result<DecodedObject> {
    let mut unknown =
        k8s::Unknown::decode(rest).map_err(|e| Error::Object(format!("runtime.Unknown does not decode: {e}")))?;
    let raw = Zeroizing::new(unknown.raw.take().unwrap_or_default());
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if kind.is_empty() {
        return Err(Error::Object("runtime.Unknown has no typeMeta.kind".into()));
    }
    if let Some(enc) = unknown.content_encoding.filter(|e| !e.is_empty()) {
        return Err(Error::Object(format!("unsupported contentEncoding {enc:?}")));
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let mut secret = k8s::Secret::decode(raw.as_slice())
                .map_err(|e| Error::Object(format!("Secret does not decode: {e}")))?;
            let out = render_secret(api_version, kind, &secret);
            for v in secret.data.values_mut() {
                v.zeroize();
            }
            for v in secret.string_data.values_mut() {
                v.zeroize();
            }
            Ok(out)
        }
        ("v1", "ConfigMap") => {
            let cm = k8s::ConfigMap::decode(raw.as_slice())
                .map_err(|e| Error::Object(format!("ConfigMap does not decode: {e}")))?;
            Ok(render_config_map(api_version, kind, &cm))
        }
        _ => {
            let partial = k8s::ObjectMetadataOnly::decode(raw.as_slice())
                .map_err(|e| Error::Object(format!("{kind} metadata (field 1) does not decode: {e}")))?;
            let meta = partial.metadata.unwrap_or_default();
            let summary = summary_of(&api_version, &kind, &meta, Vec::new());
            let mut obj = Map::new();
            obj.insert("apiVersion".into(), Value::String(api_version));
            obj.insert("kind".into(), Value::String(kind));
            obj.insert("metadata".into(), render_meta(&meta));
            Ok(DecodedObject { summary, encoding: ObjectEncoding::Protobuf, complete: false, json: Value::Object(obj) })
        }
    }
}

fn render_secret(api_version: String, kind: String, secret: &k8s::Secret) -> DecodedObject {
    let meta = secret.metadata.clone().unwrap_or_default();
    let summary = summary_of(&api_version, &kind, &meta, secret.data.keys().cloned().collect());
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    if !secret.data.is_empty() {
        obj.insert("data".into(), base64_map(&secret.data));
    }
    if let Some(immutable) = secret.immutable {
        obj.insert("immutable".into(), Value::Bool(immutable));
    }
    obj.insert("kind".into(), Value::String(kind));
    obj.insert("metadata".into(), render_meta(&meta));
    if let Some(t) = secret.r#type.as_ref().filter(|t| !t.is_empty()) {
        obj.insert("type".into(), Value::String(t.clone()));
    }
    DecodedObject { summary, encoding: ObjectEncoding::Protobuf, complete: true, json: Value::Object(obj) }
}

fn render_config_map(api_version: String, kind: String, cm: &k8s::ConfigMap) -> DecodedObject {
    let meta = cm.metadata.clone().unwrap_or_default();
    let mut keys: Vec<String> = cm.data.keys().chain(cm.binary_data.keys()).cloned().collect();
    keys.sort_unstable();
    keys.dedup();
    let summary = summary_of(&api_version, &kind, &meta, keys);
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version));
    if !cm.binary_data.is_empty() {
        obj.insert("binaryData".into(), base64_map(&cm.binary_data));
    }
    if !cm.data.is_empty() {
        obj.insert("data".into(), string_map(&cm.data));
    }
    if let Some(immutable) = cm.immutable {
        obj.insert("immutable".into(), Value::Bool(immutable));
    }
    obj.insert("kind".into(), Value::String(kind));
    obj.insert("metadata".into(), render_meta(&meta));
    DecodedObject { summary, encoding: ObjectEncoding::Protobuf, complete: true, json: Value::Object(obj) }
}

fn summary_of(api_version: &str, kind: &str, meta: &k8s::ObjectMeta, data_keys: Vec<String>) -> ObjectSummary {
    ObjectSummary {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        data_keys,
    }
}

fn base64_map(m: &BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
            .collect(),
    )
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn non_empty(s: &Option<String>) -> Option<&String> {
    s.as_ref().filter(|s| !s.is_empty())
}

/// `ObjectMeta` as Kubernetes renders it in JSON (Go `omitempty` rules; creationTimestamp is
/// always present, `null` when unset). resourceVersion and managedFields are left out.
fn render_meta(meta: &k8s::ObjectMeta) -> Value {
    let mut m = Map::new();
    if !meta.annotations.is_empty() {
        m.insert("annotations".into(), string_map(&meta.annotations));
    }
    m.insert("creationTimestamp".into(), time_json(meta.creation_timestamp.as_ref()));
    if let Some(s) = meta.deletion_grace_period_seconds {
        m.insert("deletionGracePeriodSeconds".into(), Value::from(s));
    }
    if let Some(t) = &meta.deletion_timestamp {
        m.insert("deletionTimestamp".into(), time_json(Some(t)));
    }
    if !meta.finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(meta.finalizers.iter().cloned().map(Value::String).collect()));
    }
    if let Some(s) = non_empty(&meta.generate_name) {
        m.insert("generateName".into(), Value::String(s.clone()));
    }
    if let Some(g) = meta.generation.filter(|g| *g != 0) {
        m.insert("generation".into(), Value::from(g));
    }
    if !meta.labels.is_empty() {
        m.insert("labels".into(), string_map(&meta.labels));
    }
    if let Some(s) = non_empty(&meta.name) {
        m.insert("name".into(), Value::String(s.clone()));
    }
    if let Some(s) = non_empty(&meta.namespace) {
        m.insert("namespace".into(), Value::String(s.clone()));
    }
    if !meta.owner_references.is_empty() {
        let refs = meta
            .owner_references
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("apiVersion".into(), Value::String(r.api_version.clone().unwrap_or_default()));
                if let Some(b) = r.block_owner_deletion {
                    o.insert("blockOwnerDeletion".into(), Value::Bool(b));
                }
                if let Some(c) = r.controller {
                    o.insert("controller".into(), Value::Bool(c));
                }
                o.insert("kind".into(), Value::String(r.kind.clone().unwrap_or_default()));
                o.insert("name".into(), Value::String(r.name.clone().unwrap_or_default()));
                o.insert("uid".into(), Value::String(r.uid.clone().unwrap_or_default()));
                Value::Object(o)
            })
            .collect();
        m.insert("ownerReferences".into(), Value::Array(refs));
    }
    if let Some(s) = non_empty(&meta.self_link) {
        m.insert("selfLink".into(), Value::String(s.clone()));
    }
    if let Some(s) = non_empty(&meta.uid) {
        m.insert("uid".into(), Value::String(s.clone()));
    }
    Value::Object(m)
}

/// A `meta.v1.Time` as JSON: RFC 3339 in UTC with second precision, `null` when unset (an
/// absent or empty message is Go's zero time) or outside years 1–9999.
fn time_json(t: Option<&k8s::Time>) -> Value {
    match t {
        Some(k8s::Time { seconds: Some(s), .. }) => rfc3339(*s).map_or(Value::Null, Value::String),
        _ => Value::Null,
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`; `None` outside years 1–9999.
pub fn rfc3339(seconds: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).ok().filter(|t| t.year() >= 1)?;
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    Some(format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", t.hour(), t.minute(), t.second()))
}

fn decode_json(bytes: &[u8]) -> Result<DecodedObject> {
    let mut json: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::Object(format!("JSON does not parse: {e}")))?;
    let Value::Object(obj) = &mut json else {
        return Err(Error::Object("JSON value is not an object".into()));
    };
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    let str_at = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let meta = obj.get("metadata");
    let mut data_keys: Vec<String> = ["data", "binaryData"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(Value::as_object))
        .flat_map(|m| m.keys().cloned())
        .collect();
    data_keys.sort_unstable();
    data_keys.dedup();
    let summary = ObjectSummary {
        api_version: str_at(obj.get("apiVersion")),
        kind: str_at(obj.get("kind")),
        namespace: str_at(meta.and_then(|m| m.get("namespace"))),
        name: str_at(meta.and_then(|m| m.get("name"))),
        uid: str_at(meta.and_then(|m| m.get("uid"))),
        data_keys,
    };
    Ok(DecodedObject { summary, encoding: ObjectEncoding::Json, complete: true, json })
}

/// Overwrite every string in `v` (object keys stay: they are names, not values).
fn wipe_json(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe_json),
        Value::Object(o) => o.values_mut().for_each(wipe_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(rfc3339(951_782_400).as_deref(), Some("2000-02-29T00:00:00Z"));
        assert_eq!(rfc3339(1_700_000_000).as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(rfc3339(-1).as_deref(), Some("1969-12-31T23:59:59Z"));
        assert_eq!(rfc3339(253_402_300_799).as_deref(), Some("9999-12-31T23:59:59Z"));
        assert_eq!(rfc3339(253_402_300_800), None);
        assert_eq!(rfc3339(-62_135_596_800).as_deref(), Some("0001-01-01T00:00:00Z"));
        assert_eq!(rfc3339(-62_135_596_801), None);
        assert_eq!(rfc3339(i64::MAX), None);
        assert_eq!(rfc3339(i64::MIN), None);
    }

    #[test]
    fn zero_time_is_null() {
        assert_eq!(time_json(None), Value::Null);
        assert_eq!(time_json(Some(&k8s::Time::default())), Value::Null);
    }

    #[test]
    fn wipe() {
        let mut v = serde_json::json!({"a": ["xy", {"b": "zz"}], "n": 1});
        wipe_json(&mut v);
        // zeroize on a String clears it.
        assert_eq!(v, serde_json::json!({"a": ["", {"b": ""}], "n": 1}));
    }
}
