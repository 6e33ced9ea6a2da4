//! The wire protocol (awsJson1_1): the request members as sent ([`Raw`]), the validation
//! rules and messages they are checked with, and response encoding. Pure functions, no I/O.
//!
//! Parsing is two-phase: serde reads the body once into [`Raw`] (every member optional, so a
//! missing member is a `ValidationException` with AWS's message, not a serde error), then the
//! operation's family ([`crate::op`]) validates it into a typed request. Wrong JSON types and
//! malformed JSON are `SerializationException`s. Plaintext members go straight into zeroizing
//! buffers. [`Raw`] is also the audit view of a request: it serializes (camelCase) every member
//! as sent except the secret ones.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::RESERVED_CONTEXT_PREFIX;
use serde::{Deserialize, Serialize};

pub use crate::op::{Operation, Request, parse_request};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Largest plaintext for Encrypt (AWS limit for symmetric keys).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob accepted.
pub const MAX_CIPHERTEXT: usize = 6144;

/// Most tags per key (the AWS quota).
pub const MAX_TAGS: usize = 50;
/// Largest key policy document in bytes (the AWS quota; larger → `LimitExceededException`).
pub const MAX_POLICY: usize = 32 * 1024;

/// An encryption context as sent on the wire.
pub type Context = BTreeMap<String, String>;

pub(crate) const KEY_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];

/// Every request member of the implemented operations, as sent; unknown members are ignored.
///
/// Also the audit view of a request (`requestParameters`): it serializes with camelCase member
/// names, in name order, leaving out absent members and the secret ones (plaintext, ciphertext,
/// key material, import tokens, attestation documents), whose values never leave parsing.
#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all(deserialize = "PascalCase", serialize = "camelCase"))]
pub struct Raw {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) alias_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bypass_policy_lockout_safety_check: Option<bool>,
    #[serde(skip_serializing)]
    pub(crate) ciphertext_blob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) constraints: Option<RawConstraints>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) custom_key_store_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) customer_master_key_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) destination_encryption_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) destination_encryption_context: Option<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) destination_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dry_run: Option<bool>,
    #[serde(skip_serializing)]
    pub(crate) encrypted_key_material: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_context: Option<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expiration_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grant_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grant_tokens: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grantee_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grantee_service_principal: Option<String>,
    #[serde(skip_serializing)]
    pub(crate) import_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) import_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) include_key_material: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_agreement_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_material_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_material_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_pair_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key_usage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<i64>,
    /// A MAC to verify (VerifyMac): not shown in the audit record.
    #[serde(skip_serializing)]
    pub(crate) mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mac_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) marker: Option<String>,
    /// Secret data (base64 message of GenerateMac/VerifyMac/Sign/Verify), read straight into
    /// zeroizing memory.
    #[serde(skip_serializing)]
    pub(crate) message: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) multi_region: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) number_of_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) operations: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pending_window_in_days: Option<i64>,
    /// Secret data (base64 plaintext), read straight into zeroizing memory.
    #[serde(skip_serializing)]
    pub(crate) plaintext: Option<Zeroizing<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<String>,
    /// A peer's public key (DeriveSharedSecret): a blob, not shown in the audit record.
    #[serde(skip_serializing)]
    pub(crate) public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy_name: Option<String>,
    #[serde(skip_serializing)]
    pub(crate) recipient: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retiring_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retiring_service_principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rotation_period_in_days: Option<i64>,
    /// A signature to verify (Verify): not shown in the audit record.
    #[serde(skip_serializing)]
    pub(crate) signature: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signing_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_encryption_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_encryption_context: Option<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tag_keys: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tags: Option<Vec<RawTag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) target_key_id: Option<String>,
    /// A number as sent (so the audit record shows it as sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) valid_to: Option<serde_json::Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wrapping_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wrapping_key_spec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) xks_key_id: Option<String>,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the members the audit record may show.
        f.write_str(&serde_json::to_string(self).unwrap_or_default())
    }
}

impl Raw {
    /// Reads a request body (empty means `{}`, as botocore may send).
    pub(crate) fn from_body(body: &[u8]) -> Result<Self> {
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
        serde_json::from_slice(body).map_err(serialization)
    }

    /// Forgets the secret members (once the typed request holds what it needs of them).
    pub(crate) fn drop_secrets(&mut self) {
        self.ciphertext_blob = None;
        self.encrypted_key_material = None;
        self.import_token = None;
        self.mac = None;
        self.message = None;
        self.signature = None;
        self.plaintext = None;
        self.recipient = None;
        self.public_key = None;
    }
}

/// How key material to import is wrapped (`WrappingAlgorithm`; PKCS#1 v1.5 and SM2 are not
/// accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingAlgorithm {
    /// `RSAES_OAEP_SHA_1`: RSA-OAEP with SHA-1 (and MGF1-SHA-1).
    OaepSha1,
    /// `RSAES_OAEP_SHA_256`: RSA-OAEP with SHA-256 (and MGF1-SHA-256).
    OaepSha256,
    /// `RSA_AES_KEY_WRAP_SHA_1`: RSA-OAEP-SHA-1 of an AES-256 key, then AES-KWP of the material.
    AesKeyWrapSha1,
    /// `RSA_AES_KEY_WRAP_SHA_256`: RSA-OAEP-SHA-256 of an AES-256 key, then AES-KWP of the material.
    AesKeyWrapSha256,
}

/// The size of the RSA wrapping key (`WrappingKeySpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingKeySpec {
    /// `RSA_2048`.
    Rsa2048,
    /// `RSA_3072`.
    Rsa3072,
    /// `RSA_4096`.
    Rsa4096,
}

pub(crate) fn reserved_context(ctx: &Option<Context>) -> Result<()> {
    if ctx.iter().flatten().any(|(k, _)| k.starts_with(RESERVED_CONTEXT_PREFIX)) {
        return Err(KmsError::Validation(format!(
            "Encryption context keys starting with '{RESERVED_CONTEXT_PREFIX}' are reserved."
        )));
    }
    Ok(())
}

/// A grant's `Constraints` as sent.
#[derive(Deserialize, Serialize, Default, Clone)]
#[serde(rename_all(deserialize = "PascalCase", serialize = "camelCase"))]
pub(crate) struct RawConstraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_context_equals: Option<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) encryption_context_subset: Option<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source_arn: Option<String>,
}

/// One `{TagKey, TagValue}` of a request.
#[derive(Deserialize, Serialize)]
#[serde(rename_all(deserialize = "PascalCase", serialize = "camelCase"))]
pub(crate) struct RawTag {
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_value: Option<String>,
}

/// The service's tag rules beyond the model's lengths (`TagException`, AWS's messages).
pub(crate) fn tag_rules(tags: &[(String, String)]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::Tag("Too many tags".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in tags {
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(KmsError::Tag("Tags beginning with aws: are reserved".into()));
        }
        if !seen.insert(k.as_str()) {
            return Err(KmsError::Tag("Duplicate tag keys".into()));
        }
    }
    Ok(())
}

/// Collects constraint violations into one AWS-style `ValidationException`.
#[derive(Default)]
pub(crate) struct Validator {
    pub(crate) errors: Vec<String>,
    /// A grant token of the right length that is not one this server issues.
    pub(crate) bad_grant_token: bool,
}

impl Validator {
    pub(crate) fn required<T>(&mut self, member: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.errors.push(format!("Value null at '{member}' failed to satisfy constraint: Member must not be null"));
        }
        v
    }

    pub(crate) fn len(&mut self, member: &str, s: &str, min: usize, max: usize) {
        let n = s.chars().count();
        if n < min {
            self.errors.push(format!(
                "Value '{}' at '{member}' failed to satisfy constraint: Member must have length greater than or equal to {min}",
                shorten(s)
            ));
        } else if n > max {
            self.errors.push(format!(
                "Value '{}' at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max}",
                shorten(s)
            ));
        }
    }

    pub(crate) fn range(&mut self, member: &str, n: i64, min: i64, max: i64) {
        if n < min {
            self.errors.push(format!("Value '{n}' at '{member}' failed to satisfy constraint: Member must have value greater than or equal to {min}"));
        } else if n > max {
            self.errors.push(format!("Value '{n}' at '{member}' failed to satisfy constraint: Member must have value less than or equal to {max}"));
        }
    }

    pub(crate) fn one_of(&mut self, member: &str, s: &str, set: &[&str]) {
        if !set.contains(&s) {
            self.errors.push(format!(
                "Value '{}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                shorten(s),
                set.join(", ")
            ));
        }
    }

    pub(crate) fn key_id(&mut self, member: &str, v: Option<String>) -> Option<String> {
        let v = self.required(member, v);
        if let Some(k) = &v {
            self.len(member, k, 1, 2048);
        }
        v
    }

    pub(crate) fn alias_name(&mut self, v: Option<String>) -> Option<String> {
        let v = self.required("aliasName", v);
        if let Some(a) = &v {
            self.len("aliasName", a, 1, 256);
            if !a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-')) {
                self.errors.push(format!(
                    "Value '{}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$",
                    shorten(a)
                ));
            }
        }
        v
    }

    pub(crate) fn tags(&mut self, v: &Option<Vec<RawTag>>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in v.iter().flatten() {
            let k = self.required("tags.member.tagKey", t.tag_key.clone());
            let val = self.required("tags.member.tagValue", t.tag_value.clone());
            if let Some(k) = &k {
                self.len("tags.member.tagKey", k, 1, 128);
            }
            if let Some(val) = &val {
                self.len("tags.member.tagValue", val, 0, 256);
            }
            if let (Some(k), Some(val)) = (k, val) {
                out.push((k, val));
            }
        }
        out
    }

    pub(crate) fn limit(&mut self, v: Option<i64>, max: i64, default: usize) -> usize {
        match v {
            None => default,
            Some(n) => {
                self.range("limit", n, 1, max);
                usize::try_from(n.clamp(1, max)).unwrap_or(default)
            }
        }
    }

    pub(crate) fn marker(&mut self, v: Option<String>) -> Option<String> {
        if let Some(m) = &v {
            self.len("marker", m, 1, 1024);
        }
        v
    }

    /// `s` must be non-empty and every character allowed by `ok` (the model's pattern, quoted
    /// in the message as `pattern`).
    pub(crate) fn pattern(&mut self, member: &str, s: &str, pattern: &str, ok: impl Fn(char) -> bool) {
        if s.is_empty() || !s.chars().all(ok) {
            self.errors.push(format!(
                "Value '{}' at '{member}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}",
                shorten(s)
            ));
        }
    }

    pub(crate) fn material_id(&mut self, v: &Option<String>) {
        if let Some(m) = v {
            self.len("keyMaterialId", m, 64, 64);
            if !m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                self.errors.push(format!(
                    "Value '{}' at 'keyMaterialId' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-f0-9]+$",
                    shorten(m)
                ));
            }
        }
    }

    pub(crate) fn grant_tokens(&mut self, v: &Option<Vec<String>>) {
        if let Some(t) = v {
            if t.len() > 10 {
                self.errors.push("Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10".into());
            }
            for g in t {
                self.len("grantTokens.member", g, 1, 8192);
                if !g.is_empty() && g.chars().count() <= 8192 && crate::op::grants::token_grant_id(g).is_none() {
                    self.bad_grant_token = true;
                }
            }
        }
    }

    pub(crate) fn algorithm(&mut self, member: &str, v: &Option<String>) {
        if let Some(a) = v {
            self.one_of(member, a, &["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"]);
        }
    }

    pub(crate) fn finish(self) -> Result<()> {
        match self.errors.len() {
            // Grant tokens are checked after the model's constraints, as AWS does.
            0 if self.bad_grant_token => Err(KmsError::InvalidGrantToken("The grant token is not valid.".into())),
            0 => Ok(()),
            1 => Err(KmsError::Validation(format!("1 validation error detected: {}", self.errors.join("; ")))),
            n => Err(KmsError::Validation(format!("{n} validation errors detected: {}", self.errors.join("; ")))),
        }
    }
}

/// Echoed values are cut short so an error message stays small.
pub(crate) fn shorten(s: &str) -> String {
    if s.chars().count() <= 64 { s.to_string() } else { format!("{}...", s.chars().take(61).collect::<String>()) }
}

pub(crate) fn length_error(member: &str, min: usize, max: usize, got: usize) -> KmsError {
    let rule =
        if got < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") };
    KmsError::Validation(format!(
        "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must have length {rule}"
    ))
}

pub(crate) fn unsupported_if(cond: bool, msg: &str) -> Result<()> {
    if cond { Err(KmsError::UnsupportedOperation(msg.into())) } else { Ok(()) }
}

fn serialization(e: serde_json::Error) -> KmsError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            KmsError::Serialization(format!("Malformed JSON request body at line {} column {}.", e.line(), e.column()))
        }
        Category::Data => KmsError::Serialization(format!("Wrong JSON type in the request body: {e}")),
    }
}

pub(crate) fn decode_blob(member: &str, s: &str, max: usize) -> Result<Vec<u8>> {
    let b =
        STANDARD.decode(s).map_err(|_| KmsError::Serialization(format!("Value at '{member}' is not valid base64.")))?;
    if b.is_empty() || b.len() > max {
        return Err(length_error(member, 1, max, b.len()));
    }
    Ok(b)
}

pub(crate) fn decode_secret(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    decode_secret_member("plaintext", s)
}

/// [`decode_secret`] of member `member` (named in the error).
pub(crate) fn decode_secret_member(member: &str, s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(s, &mut out)
        .map_err(|_| KmsError::Serialization(format!("Value at '{member}' is not valid base64.")))?;
    Ok(out)
}

/// Base64-encodes secret bytes into zeroizing memory.
pub(crate) fn encode_secret(b: &[u8]) -> SecretB64 {
    let mut s = Zeroizing::new(String::with_capacity(b.len().div_ceil(3) * 4));
    STANDARD.encode_string(b, &mut s);
    SecretB64(s)
}

/// Base64 text of secret bytes, zeroized on drop; serializes as a JSON string.
pub(crate) struct SecretB64(Zeroizing<String>);

impl Serialize for SecretB64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Serializes a response body into zeroizing memory.
pub(crate) fn to_body<T: Serialize>(v: &T) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    serde_json::to_writer(&mut *out, v).map_err(|e| KmsError::Internal(format!("encoding a response: {e}")))?;
    Ok(out)
}

/// Base64 (standard, padded) of public bytes.
pub(crate) fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_view_is_the_request_as_sent_without_secrets() {
        let body =
            br#"{"KeyId":"alias/a","Plaintext":"c2VjcmV0","EncryptionContext":{"Plaintext":"kept: a context key"},
            "CiphertextBlob":"AAEC","GrantTokens":["t"],"Limit":5,"EncryptedKeyMaterial":"eA==","ImportToken":"eQ==",
            "ValidTo":1.5e9,"Tags":[{"TagKey":"a","TagValue":"b"}],"Recipient":{"AttestationDocument":"eg=="},
            "Unknown":"ignored"}"#;
        let raw = Raw::from_body(body).unwrap();
        let view = serde_json::to_value(&raw).unwrap();
        assert_eq!(
            view,
            serde_json::json!({"keyId": "alias/a", "encryptionContext": {"Plaintext": "kept: a context key"},
                "grantTokens": ["t"], "limit": 5, "validTo": 1.5e9, "tags": [{"tagKey": "a", "tagValue": "b"}]})
        );
        // Members in name order: the same text as the JSON object read into a map and written.
        assert_eq!(serde_json::to_string(&raw).unwrap(), view.to_string());
        // A whole number stays whole.
        let raw = Raw::from_body(br#"{"ValidTo":1798761600}"#).unwrap();
        assert_eq!(serde_json::to_string(&raw).unwrap(), r#"{"validTo":1798761600}"#);
        assert_eq!(Raw::from_body(b"  ").unwrap().key_id, None);
    }
}
