//! The audit log: one CloudTrail-shaped JSON record per request (spec §7), appended to a file
//! and flushed before the response is sent. Records carry the encryption context (audit
//! material) but never plaintext, ciphertext, key material or import tokens.
//!
//! A state-changing request gets two records sharing its `requestID`: an **intent** record,
//! written and synced to disk before the change runs, and an **outcome** record after it
//! (`additionalEventData.auditStage` tells them apart). With `fail_closed`, a request whose
//! intent record cannot be written is refused (`KMSInternalException`) before anything changes,
//! and a read whose record cannot be written is refused instead of answered. A failed write
//! leaves no partial line: the file is cut back to where the record began.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// Request and response members that are never written to the audit log.
const SECRET_MEMBERS: &[&str] =
    &["Plaintext", "CiphertextBlob", "EncryptedKeyMaterial", "ImportToken", "PublicKey", "Recipient"];

/// Members whose values are user maps: their keys are data, not member names, and stay as sent.
const MAP_MEMBERS: &[&str] = &["EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext"];

/// Operations whose responses carry secrets or key-bound data: `responseElements` is `null`.
const CRYPTO_OPS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateRandom",
];

/// An append-only audit file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    fail_closed: bool,
}

/// Everything known about one request, for its record.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    /// Operation name, if the target was understood.
    pub operation: Option<&'a str>,
    /// `x-amzn-RequestId` returned to the caller.
    pub request_id: &'a str,
    /// Region served.
    pub region: &'a str,
    /// Account that owns the keys.
    pub account_id: &'a str,
    /// Caller address.
    pub source_ip: Option<String>,
    /// Caller's User-Agent.
    pub user_agent: Option<&'a str>,
    /// Verified access key id, if authentication succeeded.
    pub access_key_id: Option<&'a str>,
    /// Verified principal ARN, if authentication succeeded.
    pub principal: Option<&'a str>,
    /// The request body as JSON, if it parsed.
    pub request: Option<&'a Value>,
    /// The response body as JSON on success.
    pub response: Option<&'a Value>,
    /// AWS error code on failure.
    pub error_code: Option<&'a str>,
    /// Error message on failure.
    pub error_message: Option<String>,
    /// ARNs of the keys the request touched (empty: taken from the response, if any).
    pub resources: &'a [String],
    /// For state-changing requests: which of their two records this is.
    pub stage: Option<Stage>,
}

/// The two records of a state-changing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Written (and synced) before the change runs.
    Intent,
    /// Written after it, with its result.
    Outcome,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Intent => "intent",
            Stage::Outcome => "outcome",
        }
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600) the audit file for appending.
    pub fn open(path: &Path, fail_closed: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(file), fail_closed })
    }

    /// Opens the file again at its path (after log rotation moved it away) and writes there
    /// from now on. On failure the current file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        *f = file;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether requests are refused when their record cannot be written.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// Appends one record (one line) and hands it to the operating system.
    pub fn write(&self, ev: &AuditEvent<'_>) -> std::io::Result<()> {
        self.append(ev, false)
    }

    /// Appends one record and syncs it to disk before returning (intent records).
    pub fn write_durable(&self, ev: &AuditEvent<'_>) -> std::io::Result<()> {
        self.append(ev, true)
    }

    fn append(&self, ev: &AuditEvent<'_>, sync: bool) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&record(ev, SystemTime::now())).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        // Where this record starts: on failure the file is cut back to it, so a full disk never
        // leaves half a line that would corrupt the next record.
        let start = f.metadata().map(|m| m.len()).ok();
        let written =
            f.write_all(&line).and_then(|()| f.flush()).and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if written.is_err()
            && let Some(len) = start
        {
            let _ = f.set_len(len);
        }
        written
    }
}

/// Builds the CloudTrail-shaped record of one request.
pub fn record(ev: &AuditEvent<'_>, now: SystemTime) -> Value {
    let op = ev.operation.unwrap_or("Unknown");
    let crypto = CRYPTO_OPS.contains(&op);
    let mut params = ev.request.map(|r| camel_clean(r, false)).unwrap_or(Value::Null);
    if matches!(op, "Encrypt" | "Decrypt" | "ReEncrypt")
        && let Value::Object(m) = &mut params
    {
        m.entry("encryptionAlgorithm").or_insert_with(|| json!("SYMMETRIC_DEFAULT"));
    }
    let key_arn = ev.response.and_then(resolved_key_arn);
    let mut resources: Vec<&str> = ev.resources.iter().map(String::as_str).collect();
    if resources.is_empty()
        && let Some(arn) = key_arn.as_deref()
    {
        resources.push(arn);
    }
    if op == "Decrypt"
        && let (Value::Object(m), Some(arn)) = (&mut params, &key_arn)
    {
        m.insert("keyId".into(), json!(arn));
    }
    let response = match ev.response {
        Some(r) if !crypto => camel_clean(r, false),
        _ => Value::Null,
    };
    let mut rec = json!({
        "eventVersion": "1.11",
        "userIdentity": user_identity(ev),
        "eventTime": crate::dates::rfc3339_seconds(now),
        "eventSource": "kms.amazonaws.com",
        "eventName": op,
        "awsRegion": ev.region,
        "sourceIPAddress": ev.source_ip.clone().unwrap_or_default(),
        "userAgent": ev.user_agent.unwrap_or(""),
        "requestParameters": params,
        "responseElements": response,
        "requestID": ev.request_id,
        "eventID": uuid::Uuid::new_v4().to_string(),
        "readOnly": read_only(op),
        "resources": resources.iter().map(|arn| json!({"accountId": ev.account_id, "type": "AWS::KMS::Key", "ARN": arn})).collect::<Vec<_>>(),
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": ev.account_id,
        "eventCategory": "Management",
    });
    if let (Some(stage), Value::Object(m)) = (ev.stage, &mut rec) {
        m.insert("additionalEventData".into(), json!({"auditStage": stage.as_str()}));
    }
    if let (Some(code), Value::Object(m)) = (ev.error_code, &mut rec) {
        m.insert("errorCode".into(), json!(code));
        m.insert("errorMessage".into(), json!(ev.error_message.clone().unwrap_or_default()));
    }
    rec
}

/// Whether `op`'s responses carry secrets (its `responseElements` are `null`).
pub fn is_crypto(op: &str) -> bool {
    CRYPTO_OPS.contains(&op)
}

/// Parses a JSON request body for the audit record with its secret members skipped while
/// parsing: their values (base64 plaintext, ciphertext, key material) are scanned, never copied
/// into a string. `None` when the body is not a JSON object.
pub fn sanitized_request(body: &[u8]) -> Option<Value> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Self::Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = a.next_key::<String>()? {
                if SECRET_MEMBERS.contains(&k.as_str()) {
                    a.next_value::<IgnoredAny>()?;
                } else {
                    let v = a.next_value::<Value>()?;
                    m.insert(k, v);
                }
            }
            Ok(m)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let m = (&mut de).deserialize_map(Members).ok()?;
    de.end().ok()?;
    Some(Value::Object(m))
}

/// A request or response body with secret members removed (PascalCase kept).
pub fn sanitize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !SECRET_MEMBERS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// CloudTrail's `readOnly`: reads and cryptographic operations (which change no state).
pub fn read_only(op: &str) -> bool {
    op.starts_with("Describe")
        || op.starts_with("List")
        || op.starts_with("Get")
        || matches!(
            op,
            "Encrypt"
                | "Decrypt"
                | "ReEncrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "GenerateRandom"
        )
}

fn user_identity(ev: &AuditEvent<'_>) -> Value {
    let Some(arn) = ev.principal else {
        // Not authenticated: only the access key id the request claimed, if any.
        return match ev.access_key_id {
            Some(id) => json!({"type": "Unknown", "accessKeyId": id}),
            None => json!({"type": "Unknown"}),
        };
    };
    let resource = arn.splitn(6, ':').nth(5).unwrap_or("");
    let kind = if resource == "root" {
        "Root"
    } else if resource.starts_with("assumed-role/") {
        "AssumedRole"
    } else if resource.starts_with("role/") {
        "Role"
    } else {
        "IAMUser"
    };
    let account = arn.split(':').nth(4).unwrap_or(ev.account_id);
    let mut v = json!({
        "type": kind,
        "principalId": ev.access_key_id.unwrap_or(""),
        "arn": arn,
        "accountId": account,
        "accessKeyId": ev.access_key_id.unwrap_or(""),
    });
    if kind == "IAMUser"
        && let (Some(name), Value::Object(m)) = (resource.rsplit('/').next(), &mut v)
    {
        m.insert("userName".into(), json!(name));
    }
    v
}

/// The key ARN a response names (`KeyId` of crypto responses, `KeyMetadata.Arn` of management ones).
fn resolved_key_arn(resp: &Value) -> Option<String> {
    let arn =
        resp.get("KeyMetadata").and_then(|m| m.get("Arn")).or_else(|| resp.get("KeyId")).and_then(Value::as_str)?;
    arn.contains(":key/").then(|| arn.to_string())
}

/// camelCase member names, secrets removed; user maps (encryption contexts) kept as sent.
fn camel_clean(v: &Value, inside_map: bool) -> Value {
    match v {
        Value::Object(m) if !inside_map => {
            let mut out = Map::new();
            for (k, val) in m {
                if SECRET_MEMBERS.contains(&k.as_str()) {
                    continue;
                }
                let is_map = MAP_MEMBERS.contains(&k.as_str());
                out.insert(camel(k), camel_clean(val, is_map));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| camel_clean(x, inside_map)).collect()),
        other => other.clone(),
    }
}

fn camel(k: &str) -> String {
    let mut c = k.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn decrypt_record_has_context_and_no_secrets() {
        let req = json!({"CiphertextBlob": "c2VjcmV0", "EncryptionContext": {"Tenant": "a", "KeyId": "x"}});
        let resp = json!({"KeyId": "arn:aws:kms:us-east-1:111122223333:key/1234", "Plaintext": "cGxhaW4=", "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"});
        let ev = AuditEvent {
            operation: Some("Decrypt"),
            request_id: "req-1",
            region: "us-east-1",
            account_id: "111122223333",
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("aws-cli/1"),
            access_key_id: Some("AKIATEST"),
            principal: Some("arn:aws:iam::111122223333:user/admin"),
            request: Some(&req),
            response: Some(&resp),
            ..Default::default()
        };
        let r = record(&ev, SystemTime::UNIX_EPOCH + Duration::from_secs(1_747_773_900));
        let text = r.to_string();
        assert!(!text.contains("c2VjcmV0") && !text.contains("cGxhaW4="), "{text}");
        assert_eq!(r["eventName"], "Decrypt");
        assert_eq!(r["eventSource"], "kms.amazonaws.com");
        assert_eq!(r["eventTime"], "2025-05-20T20:45:00Z");
        assert_eq!(r["requestParameters"]["encryptionContext"]["Tenant"], "a");
        assert_eq!(r["requestParameters"]["encryptionContext"]["KeyId"], "x", "context keys kept as sent");
        assert_eq!(r["requestParameters"]["encryptionAlgorithm"], "SYMMETRIC_DEFAULT");
        assert_eq!(r["requestParameters"]["keyId"], "arn:aws:kms:us-east-1:111122223333:key/1234");
        assert_eq!(r["responseElements"], Value::Null);
        assert_eq!(r["readOnly"], true);
        assert_eq!(r["resources"][0]["ARN"], "arn:aws:kms:us-east-1:111122223333:key/1234");
        assert_eq!(r["userIdentity"]["type"], "IAMUser");
        assert_eq!(r["userIdentity"]["userName"], "admin");
        assert!(r.get("errorCode").is_none());
    }

    #[test]
    fn failures_and_management_calls() {
        let resp = json!({"KeyMetadata": {"KeyId": "1234", "Arn": "arn:aws:kms:us-east-1:111122223333:key/1234"}});
        let ev = AuditEvent {
            operation: Some("CreateKey"),
            request_id: "r",
            region: "us-east-1",
            account_id: "111122223333",
            response: Some(&resp),
            ..Default::default()
        };
        let r = record(&ev, SystemTime::now());
        assert_eq!(r["responseElements"]["keyMetadata"]["arn"], "arn:aws:kms:us-east-1:111122223333:key/1234");
        assert_eq!(r["readOnly"], false);
        let ev = AuditEvent {
            operation: None,
            request_id: "r",
            region: "us-east-1",
            account_id: "111122223333",
            error_code: Some("InvalidSignatureException"),
            error_message: Some("bad".into()),
            ..Default::default()
        };
        let r = record(&ev, SystemTime::now());
        assert_eq!(r["errorCode"], "InvalidSignatureException");
        assert_eq!(r["userIdentity"]["type"], "Unknown");
    }

    #[test]
    fn file_is_private_and_appended() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, true).unwrap();
        let ev = AuditEvent {
            operation: Some("ListKeys"),
            request_id: "a",
            region: "r",
            account_id: "1",
            ..Default::default()
        };
        log.write(&ev).unwrap();
        log.write(&ev).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["eventName"], "ListKeys");
        }
    }

    #[test]
    fn sanitized_request_matches_sanitize_and_skips_secrets() {
        for body in [
            &br#"{"KeyId":"alias/a","Plaintext":"c2VjcmV0","EncryptionContext":{"Plaintext":"kept: a context key"}}"#[..],
            br#"{"CiphertextBlob":"AAEC\u0041","GrantTokens":["t"],"Limit":5}"#,
            br#"{"EncryptedKeyMaterial":"eA==","ImportToken":"eQ==","KeyId":"k","ValidTo":1.5e9}"#,
            br#"{}"#,
        ] {
            let parsed: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(sanitized_request(body), Some(sanitize(&parsed)), "{}", String::from_utf8_lossy(body));
            let text = sanitized_request(body).unwrap().to_string();
            assert!(!text.contains("c2VjcmV0") && !text.contains("AAEC") && !text.contains("eA=="), "{text}");
        }
        for bad in [&b"[1,2]"[..], b"{", b"{\"a\":1} trailing", b"", b"\"str\""] {
            assert_eq!(sanitized_request(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn sanitized_request_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = sanitized_request(&body);
        }

        #[test]
        fn sanitized_request_never_keeps_a_secret_member(secret in "\\+/[A-Za-z0-9+/]{4,40}", other in "[a-z]{1,10}") {
            // `+/` starts every secret and cannot occur in the other member or the member names.
            let body = format!(r#"{{"Plaintext":"{secret}","CiphertextBlob":"{secret}","KeyId":"{other}"}}"#);
            let v = sanitized_request(body.as_bytes()).unwrap();
            proptest::prop_assert!(!v.to_string().contains(&secret));
            proptest::prop_assert_eq!(v["KeyId"].as_str(), Some(other.as_str()));
        }
    }
}
