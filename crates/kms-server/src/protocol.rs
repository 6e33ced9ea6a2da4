//! The wire protocol (awsJson1_1): operation names, request parsing and validation, response
//! encoding. Pure functions, no I/O — [`parse_request`] is what the fuzz target drives.
//!
//! Parsing is two-phase: serde reads the body into loose structs (every member optional, so a
//! missing member is a `ValidationException` with AWS's message, not a serde error), then each is
//! validated into a typed request. Wrong JSON types and malformed JSON are
//! `SerializationException`s. Plaintext members go straight into zeroizing buffers.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Largest plaintext for Encrypt (AWS limit for symmetric keys).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest ciphertext blob accepted.
pub const MAX_CIPHERTEXT: usize = 6144;

macro_rules! operations {
    ($($name:ident),* $(,)?) => {
        /// The operations this server implements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Operation { $(#[allow(missing_docs)] $name),* }

        impl Operation {
            /// Every implemented operation.
            pub const ALL: &'static [Operation] = &[$(Operation::$name),*];

            /// The AWS operation name (`Encrypt`, ...).
            pub fn name(self) -> &'static str {
                match self { $(Operation::$name => stringify!($name)),* }
            }

            fn from_name(s: &str) -> Option<Self> {
                match s { $(stringify!($name) => Some(Operation::$name),)* _ => None }
            }
        }
    };
}

operations!(
    CreateAlias,
    CreateKey,
    Decrypt,
    DeleteAlias,
    DescribeKey,
    DisableKey,
    EnableKey,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    ListAliases,
    ListKeys,
    ReEncrypt,
    RotateKeyOnDemand,
    UpdateAlias,
);

/// Operations of the real service that this server does not implement (yet): they answer
/// `UnsupportedOperationException` rather than `UnknownOperationException`.
const NOT_IMPLEMENTED: &[&str] = &[
    "CancelKeyDeletion", "ConnectCustomKeyStore", "CreateCustomKeyStore", "CreateGrant", "Decapsulate",
    "DeleteCustomKeyStore", "DeleteImportedKeyMaterial", "DeriveSharedSecret", "DescribeCustomKeyStores",
    "DisableKeyRotation", "DisconnectCustomKeyStore", "EnableKeyRotation", "Encapsulate", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "GetKeyLastUsage", "GetKeyPolicy", "GetKeyRotationStatus",
    "GetParametersForImport", "GetPublicKey", "ImportKeyMaterial", "ListGrants", "ListKeyPolicies", "ListKeyRotations",
    "ListResourceTags", "ListRetirableGrants", "PutKeyPolicy", "ReplicateKey", "RetireGrant", "RevokeGrant",
    "ScheduleKeyDeletion", "Sign", "TagResource", "UntagResource", "UpdateCustomKeyStore", "UpdateKeyDescription",
    "UpdatePrimaryRegion", "Verify", "VerifyMac",
];

impl Operation {
    /// Parses an `X-Amz-Target` value, `TrentService.<Operation>`.
    pub fn from_target(target: &str) -> Result<Self> {
        let unknown = || KmsError::UnknownOperation(format!("Unknown operation {target:?}."));
        let name = target.strip_prefix("TrentService.").ok_or_else(unknown)?;
        if let Some(op) = Operation::from_name(name) {
            return Ok(op);
        }
        if NOT_IMPLEMENTED.contains(&name) {
            return Err(KmsError::UnsupportedOperation(format!("{name} is not supported by this server yet.")));
        }
        Err(unknown())
    }
}

/// An encryption context as sent on the wire.
pub type Context = BTreeMap<String, String>;

/// A validated request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    CreateAlias { alias_name: String, target_key_id: String },
    CreateKey { description: String },
    Decrypt { ciphertext: Vec<u8>, context: Context, key_id: Option<String>, dry_run: bool },
    DeleteAlias { alias_name: String },
    DescribeKey { key_id: String },
    DisableKey { key_id: String },
    EnableKey { key_id: String },
    Encrypt { key_id: String, plaintext: Zeroizing<Vec<u8>>, context: Context, dry_run: bool },
    GenerateDataKey { key_id: String, context: Context, len: usize, with_plaintext: bool, dry_run: bool },
    GenerateRandom { len: usize },
    ListAliases { key_id: Option<String>, limit: usize, marker: Option<String> },
    ListKeys { limit: usize, marker: Option<String> },
    ReEncrypt {
        ciphertext: Vec<u8>,
        source_context: Context,
        source_key_id: Option<String>,
        destination_key_id: String,
        destination_context: Context,
        dry_run: bool,
    },
    RotateKeyOnDemand { key_id: String },
    UpdateAlias { alias_name: String, target_key_id: String },
}

/// Parses and validates the JSON body of `op`. Never panics on any input.
pub fn parse_request(op: Operation, body: &[u8]) -> Result<Request> {
    // botocore always sends at least `{}`; accept an empty body as `{}` too.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let raw: Raw = serde_json::from_slice(body).map_err(serialization)?;
    let mut v = Validator::default();
    let req = match op {
        Operation::CreateKey => {
            let description = raw.description.unwrap_or_default();
            v.len("description", &description, 0, 8192);
            unsupported_if(raw.policy.is_some(), "Key policies are not supported yet.")?;
            unsupported_if(raw.tags.as_ref().is_some_and(|t| !t.is_empty()), "Tags are not supported yet.")?;
            unsupported_if(raw.multi_region == Some(true), "Multi-Region keys are not supported.")?;
            unsupported_if(raw.custom_key_store_id.is_some() || raw.xks_key_id.is_some(), "Custom key stores are not supported.")?;
            if let Some(u) = &raw.key_usage {
                v.one_of("keyUsage", u, &["SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT", "ENCAPSULATE_DECAPSULATE"]);
            }
            for (member, spec) in [("keySpec", &raw.key_spec), ("customerMasterKeySpec", &raw.customer_master_key_spec)] {
                if let Some(s) = spec {
                    v.one_of(member, s, KEY_SPECS);
                }
            }
            if let Some(o) = &raw.origin {
                v.one_of("origin", o, &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"]);
            }
            v.finish()?;
            unsupported_if(raw.key_usage.as_deref().is_some_and(|u| u != "ENCRYPT_DECRYPT"), "Only KeyUsage ENCRYPT_DECRYPT is supported.")?;
            unsupported_if(
                [&raw.key_spec, &raw.customer_master_key_spec].iter().any(|s| s.as_deref().is_some_and(|s| s != "SYMMETRIC_DEFAULT")),
                "Only KeySpec SYMMETRIC_DEFAULT is supported.",
            )?;
            unsupported_if(raw.origin.as_deref().is_some_and(|o| o != "AWS_KMS"), "Only Origin AWS_KMS is supported.")?;
            Request::CreateKey { description }
        }
        Operation::DescribeKey | Operation::EnableKey | Operation::DisableKey | Operation::RotateKeyOnDemand => {
            let key_id = v.key_id("keyId", raw.key_id);
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            let key_id = key_id.unwrap_or_default();
            match op {
                Operation::DescribeKey => Request::DescribeKey { key_id },
                Operation::EnableKey => Request::EnableKey { key_id },
                Operation::DisableKey => Request::DisableKey { key_id },
                _ => Request::RotateKeyOnDemand { key_id },
            }
        }
        Operation::ListKeys => {
            let limit = v.limit(raw.limit, 1000, 100);
            let marker = v.marker(raw.marker);
            v.finish()?;
            Request::ListKeys { limit, marker }
        }
        Operation::ListAliases => {
            let key_id = raw.key_id;
            if let Some(k) = &key_id {
                v.len("keyId", k, 1, 2048);
            }
            let limit = v.limit(raw.limit, 1000, 50).min(100);
            let marker = v.marker(raw.marker);
            v.finish()?;
            Request::ListAliases { key_id, limit, marker }
        }
        Operation::CreateAlias | Operation::UpdateAlias => {
            let alias_name = v.alias_name(raw.alias_name);
            let target_key_id = v.key_id("targetKeyId", raw.target_key_id);
            v.finish()?;
            let (alias_name, target_key_id) = (alias_name.unwrap_or_default(), target_key_id.unwrap_or_default());
            if op == Operation::CreateAlias {
                Request::CreateAlias { alias_name, target_key_id }
            } else {
                Request::UpdateAlias { alias_name, target_key_id }
            }
        }
        Operation::DeleteAlias => {
            let alias_name = v.alias_name(raw.alias_name);
            v.finish()?;
            Request::DeleteAlias { alias_name: alias_name.unwrap_or_default() }
        }
        Operation::Encrypt => {
            let key_id = v.key_id("keyId", raw.key_id);
            let plaintext = v.required("plaintext", raw.plaintext);
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("encryptionAlgorithm", &raw.encryption_algorithm);
            v.finish()?;
            let plaintext = decode_secret(plaintext.as_ref().map(|p| p.0.as_str()).unwrap_or_default())?;
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(length_error("plaintext", 1, MAX_PLAINTEXT, plaintext.len()));
            }
            symmetric_only(&raw.encryption_algorithm)?;
            Request::Encrypt {
                key_id: key_id.unwrap_or_default(),
                plaintext,
                context: raw.encryption_context.unwrap_or_default(),
                dry_run: raw.dry_run.unwrap_or(false),
            }
        }
        Operation::Decrypt => {
            let ciphertext = v.required("ciphertextBlob", raw.ciphertext_blob);
            if let Some(k) = &raw.key_id {
                v.len("keyId", k, 1, 2048);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("encryptionAlgorithm", &raw.encryption_algorithm);
            v.finish()?;
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            let ciphertext = decode_blob("ciphertextBlob", ciphertext.as_deref().unwrap_or_default(), MAX_CIPHERTEXT)?;
            symmetric_only(&raw.encryption_algorithm)?;
            Request::Decrypt {
                ciphertext,
                context: raw.encryption_context.unwrap_or_default(),
                key_id: raw.key_id,
                dry_run: raw.dry_run.unwrap_or(false),
            }
        }
        Operation::ReEncrypt => {
            let ciphertext = v.required("ciphertextBlob", raw.ciphertext_blob);
            let destination_key_id = v.key_id("destinationKeyId", raw.destination_key_id);
            if let Some(k) = &raw.source_key_id {
                v.len("sourceKeyId", k, 1, 2048);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("sourceEncryptionAlgorithm", &raw.source_encryption_algorithm);
            v.algorithm("destinationEncryptionAlgorithm", &raw.destination_encryption_algorithm);
            v.finish()?;
            let ciphertext = decode_blob("ciphertextBlob", ciphertext.as_deref().unwrap_or_default(), MAX_CIPHERTEXT)?;
            symmetric_only(&raw.source_encryption_algorithm)?;
            symmetric_only(&raw.destination_encryption_algorithm)?;
            Request::ReEncrypt {
                ciphertext,
                source_context: raw.source_encryption_context.unwrap_or_default(),
                source_key_id: raw.source_key_id,
                destination_key_id: destination_key_id.unwrap_or_default(),
                destination_context: raw.destination_encryption_context.unwrap_or_default(),
                dry_run: raw.dry_run.unwrap_or(false),
            }
        }
        Operation::GenerateDataKey | Operation::GenerateDataKeyWithoutPlaintext => {
            let key_id = v.key_id("keyId", raw.key_id);
            if let Some(n) = raw.number_of_bytes {
                v.range("numberOfBytes", n, 1, 1024);
            }
            if let Some(s) = &raw.key_spec {
                v.one_of("keySpec", s, &["AES_256", "AES_128"]);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            let len = match (raw.key_spec.as_deref(), raw.number_of_bytes) {
                (Some("AES_256"), None) => 32,
                (Some(_), None) => 16,
                (None, Some(n)) => usize::try_from(n).unwrap_or(0),
                _ => return Err(KmsError::Validation("Please specify either number of bytes or key spec.".into())),
            };
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            Request::GenerateDataKey {
                key_id: key_id.unwrap_or_default(),
                context: raw.encryption_context.unwrap_or_default(),
                len,
                with_plaintext: op == Operation::GenerateDataKey,
                dry_run: raw.dry_run.unwrap_or(false),
            }
        }
        Operation::GenerateRandom => {
            let n = v.required("numberOfBytes", raw.number_of_bytes);
            if let Some(n) = n {
                v.range("numberOfBytes", n, 1, 1024);
            }
            v.finish()?;
            unsupported_if(raw.custom_key_store_id.is_some(), "Custom key stores are not supported.")?;
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            Request::GenerateRandom { len: n.and_then(|n| usize::try_from(n).ok()).unwrap_or(0) }
        }
    };
    Ok(req)
}

const KEY_SPECS: &[&str] = &[
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512", "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87",
    "ECC_NIST_EDWARDS25519", "ML_KEM_512", "ML_KEM_768", "ML_KEM_1024",
];

/// Every request member of the implemented operations; unknown members are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Raw {
    alias_name: Option<String>,
    ciphertext_blob: Option<String>,
    custom_key_store_id: Option<String>,
    customer_master_key_spec: Option<String>,
    description: Option<String>,
    destination_encryption_algorithm: Option<String>,
    destination_encryption_context: Option<Context>,
    destination_key_id: Option<String>,
    dry_run: Option<bool>,
    encryption_algorithm: Option<String>,
    encryption_context: Option<Context>,
    grant_tokens: Option<Vec<String>>,
    key_id: Option<String>,
    key_spec: Option<String>,
    key_usage: Option<String>,
    limit: Option<i64>,
    marker: Option<String>,
    multi_region: Option<bool>,
    number_of_bytes: Option<i64>,
    origin: Option<String>,
    plaintext: Option<SecretString>,
    policy: Option<String>,
    recipient: Option<serde_json::Value>,
    source_encryption_algorithm: Option<String>,
    source_encryption_context: Option<Context>,
    source_key_id: Option<String>,
    tags: Option<Vec<serde_json::Value>>,
    target_key_id: Option<String>,
    xks_key_id: Option<String>,
}

/// A string member that carries secret data (base64 plaintext), held in zeroizing memory.
struct SecretString(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretString(Zeroizing::new(s)))
    }
}

/// Collects constraint violations into one AWS-style `ValidationException`.
#[derive(Default)]
struct Validator {
    errors: Vec<String>,
}

impl Validator {
    fn required<T>(&mut self, member: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.errors.push(format!("Value null at '{member}' failed to satisfy constraint: Member must not be null"));
        }
        v
    }

    fn len(&mut self, member: &str, s: &str, min: usize, max: usize) {
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

    fn range(&mut self, member: &str, n: i64, min: i64, max: i64) {
        if n < min {
            self.errors.push(format!("Value '{n}' at '{member}' failed to satisfy constraint: Member must have value greater than or equal to {min}"));
        } else if n > max {
            self.errors.push(format!("Value '{n}' at '{member}' failed to satisfy constraint: Member must have value less than or equal to {max}"));
        }
    }

    fn one_of(&mut self, member: &str, s: &str, set: &[&str]) {
        if !set.contains(&s) {
            self.errors.push(format!(
                "Value '{}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                shorten(s),
                set.join(", ")
            ));
        }
    }

    fn key_id(&mut self, member: &str, v: Option<String>) -> Option<String> {
        let v = self.required(member, v);
        if let Some(k) = &v {
            self.len(member, k, 1, 2048);
        }
        v
    }

    fn alias_name(&mut self, v: Option<String>) -> Option<String> {
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

    fn limit(&mut self, v: Option<i64>, max: i64, default: usize) -> usize {
        match v {
            None => default,
            Some(n) => {
                self.range("limit", n, 1, max);
                usize::try_from(n.clamp(1, max)).unwrap_or(default)
            }
        }
    }

    fn marker(&mut self, v: Option<String>) -> Option<String> {
        if let Some(m) = &v {
            self.len("marker", m, 1, 1024);
        }
        v
    }

    fn grant_tokens(&mut self, v: &Option<Vec<String>>) {
        if let Some(t) = v {
            if t.len() > 10 {
                self.errors.push("Value at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10".into());
            }
            for g in t {
                self.len("grantTokens.member", g, 1, 8192);
            }
        }
    }

    fn algorithm(&mut self, member: &str, v: &Option<String>) {
        if let Some(a) = v {
            self.one_of(member, a, &["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"]);
        }
    }

    fn finish(self) -> Result<()> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(KmsError::Validation(format!("1 validation error detected: {}", self.errors.join("; ")))),
            n => Err(KmsError::Validation(format!("{n} validation errors detected: {}", self.errors.join("; ")))),
        }
    }
}

/// Echoed values are cut short so an error message stays small.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 64 { s.to_string() } else { format!("{}...", s.chars().take(61).collect::<String>()) }
}

fn length_error(member: &str, min: usize, max: usize, got: usize) -> KmsError {
    let rule = if got < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") };
    KmsError::Validation(format!(
        "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must have length {rule}"
    ))
}

fn unsupported_if(cond: bool, msg: &str) -> Result<()> {
    if cond { Err(KmsError::UnsupportedOperation(msg.into())) } else { Ok(()) }
}

fn symmetric_only(alg: &Option<String>) -> Result<()> {
    match alg.as_deref() {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(a) => Err(KmsError::InvalidKeyUsage(format!(
            "The encryption algorithm {a} is not valid for a symmetric encryption key. Use SYMMETRIC_DEFAULT."
        ))),
    }
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

fn decode_blob(member: &str, s: &str, max: usize) -> Result<Vec<u8>> {
    let b = STANDARD
        .decode(s)
        .map_err(|_| KmsError::Serialization(format!("Value at '{member}' is not valid base64.")))?;
    if b.is_empty() || b.len() > max {
        return Err(length_error(member, 1, max, b.len()));
    }
    Ok(b)
}

fn decode_secret(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(s.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(s, &mut out)
        .map_err(|_| KmsError::Serialization("Value at 'plaintext' is not valid base64.".into()))?;
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
    use proptest::prelude::*;

    fn code(r: Result<Request>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(e) => e.aws().0,
        }
    }

    #[test]
    fn targets() {
        assert_eq!(Operation::from_target("TrentService.Encrypt").unwrap(), Operation::Encrypt);
        assert_eq!(Operation::from_target("TrentService.Nope").unwrap_err().aws().0, "UnknownOperationException");
        assert_eq!(Operation::from_target("Encrypt").unwrap_err().aws().0, "UnknownOperationException");
        assert_eq!(
            Operation::from_target("TrentService.ScheduleKeyDeletion").unwrap_err().aws().0,
            "UnsupportedOperationException"
        );
        for op in Operation::ALL {
            assert_eq!(Operation::from_target(&format!("TrentService.{}", op.name())).unwrap(), *op);
        }
    }

    #[test]
    fn encrypt_parsing_and_validation() {
        let r = parse_request(Operation::Encrypt, br#"{"KeyId":"alias/x","Plaintext":"aGVsbG8=","EncryptionContext":{"a":"b"}}"#);
        let Ok(Request::Encrypt { key_id, plaintext, context, dry_run }) = r else { panic!("{r:?}") };
        assert_eq!((key_id.as_str(), &plaintext[..], context["a"].as_str(), dry_run), ("alias/x", &b"hello"[..], "b", false));

        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k"}"#)), "ValidationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":""}"#)), "ValidationException");
        let big = format!(r#"{{"KeyId":"k","Plaintext":"{}"}}"#, STANDARD.encode([0u8; 4097]));
        assert_eq!(code(parse_request(Operation::Encrypt, big.as_bytes())), "ValidationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"!!"}"#)), "SerializationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":5,"Plaintext":"aGk="}"#)), "SerializationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":1}}"#)), "SerializationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"#)), "SerializationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"[]"#)), "SerializationException");
        assert_eq!(
            code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}"#)),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"ROT13"}"#)),
            "ValidationException"
        );
    }

    #[test]
    fn validation_messages_are_aws_shaped() {
        let e = parse_request(Operation::Encrypt, b"{}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2 validation errors detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null; \
             Value null at 'plaintext' failed to satisfy constraint: Member must not be null"
        );
        let e = parse_request(Operation::ListKeys, br#"{"Limit":0}"#).unwrap_err();
        assert!(e.to_string().starts_with("1 validation error detected: Value '0' at 'limit'"), "{e}");
    }

    #[test]
    fn data_key_spec_rules() {
        let ok = |b: &[u8]| match parse_request(Operation::GenerateDataKey, b) {
            Ok(Request::GenerateDataKey { len, .. }) => len,
            other => panic!("{other:?}"),
        };
        assert_eq!(ok(br#"{"KeyId":"k","KeySpec":"AES_256"}"#), 32);
        assert_eq!(ok(br#"{"KeyId":"k","KeySpec":"AES_128"}"#), 16);
        assert_eq!(ok(br#"{"KeyId":"k","NumberOfBytes":7}"#), 7);
        for bad in [&br#"{"KeyId":"k"}"#[..], br#"{"KeyId":"k","KeySpec":"AES_256","NumberOfBytes":32}"#, br#"{"KeyId":"k","NumberOfBytes":0}"#, br#"{"KeyId":"k","NumberOfBytes":1025}"#, br#"{"KeyId":"k","KeySpec":"AES_512"}"#] {
            assert_eq!(code(parse_request(Operation::GenerateDataKey, bad)), "ValidationException");
        }
        assert_eq!(code(parse_request(Operation::GenerateRandom, b"{}")), "ValidationException");
        assert_eq!(code(parse_request(Operation::GenerateRandom, br#"{"NumberOfBytes":1.5}"#)), "SerializationException");
    }

    #[test]
    fn create_key_options() {
        assert!(matches!(parse_request(Operation::CreateKey, b""), Ok(Request::CreateKey { .. })));
        assert!(matches!(parse_request(Operation::CreateKey, br#"{"KeySpec":"SYMMETRIC_DEFAULT","KeyUsage":"ENCRYPT_DECRYPT","Origin":"AWS_KMS","Description":"d"}"#), Ok(Request::CreateKey { .. })));
        assert_eq!(code(parse_request(Operation::CreateKey, br#"{"KeySpec":"RSA_2048"}"#)), "UnsupportedOperationException");
        assert_eq!(code(parse_request(Operation::CreateKey, br#"{"Origin":"EXTERNAL"}"#)), "UnsupportedOperationException");
        assert_eq!(code(parse_request(Operation::CreateKey, br#"{"Policy":"{}"}"#)), "UnsupportedOperationException");
        assert_eq!(code(parse_request(Operation::CreateKey, br#"{"KeySpec":"BOGUS"}"#)), "ValidationException");
        assert_eq!(code(parse_request(Operation::CreateAlias, br#"{"AliasName":"alias/a b","TargetKeyId":"k"}"#)), "ValidationException");
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), op in 0usize..Operation::ALL.len()) {
            let _ = parse_request(Operation::ALL[op], &data);
        }

        #[test]
        fn structured_fuzz_never_panics(key in ".{0,40}", n in any::<i64>(), pt in "[A-Za-z0-9+/=]{0,40}", op in 0usize..Operation::ALL.len()) {
            let body = serde_json::json!({"KeyId": key, "NumberOfBytes": n, "Plaintext": pt, "CiphertextBlob": pt,
                "Limit": n, "Marker": key, "AliasName": key, "TargetKeyId": key, "DestinationKeyId": key});
            let _ = parse_request(Operation::ALL[op], body.to_string().as_bytes());
        }
    }
}
