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
use envelope_keystore::RESERVED_CONTEXT_PREFIX;
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
    CancelKeyDeletion,
    CreateAlias,
    CreateKey,
    Decrypt,
    DeleteAlias,
    DeleteImportedKeyMaterial,
    DescribeKey,
    DisableKey,
    DisableKeyRotation,
    EnableKey,
    EnableKeyRotation,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    GetKeyPolicy,
    GetKeyRotationStatus,
    GetParametersForImport,
    ImportKeyMaterial,
    ListAliases,
    ListKeyPolicies,
    ListKeyRotations,
    ListKeys,
    ListResourceTags,
    PutKeyPolicy,
    ReEncrypt,
    RotateKeyOnDemand,
    ScheduleKeyDeletion,
    TagResource,
    UntagResource,
    UpdateAlias,
    UpdateKeyDescription,
);

/// Operations of the real service that this server does not implement (yet): they answer
/// `UnsupportedOperationException` rather than `UnknownOperationException`.
const NOT_IMPLEMENTED: &[&str] = &[
    "ConnectCustomKeyStore",
    "CreateCustomKeyStore",
    "CreateGrant",
    "Decapsulate",
    "DeleteCustomKeyStore",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DisconnectCustomKeyStore",
    "Encapsulate",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "GetKeyLastUsage",
    "GetPublicKey",
    "ListGrants",
    "ListRetirableGrants",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "Sign",
    "UpdateCustomKeyStore",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
];

/// Most tags per key (the AWS quota).
pub const MAX_TAGS: usize = 50;
/// Largest key policy document in bytes (the AWS quota; larger → `LimitExceededException`).
pub const MAX_POLICY: usize = 32 * 1024;

impl Operation {
    /// Whether the operation changes state (keys, aliases, policies, tags, material); such
    /// requests get an audit intent record before they run. Reads and cryptographic operations
    /// do not.
    pub fn mutates(self) -> bool {
        !crate::audit::read_only(self.name())
    }

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
    CreateAlias {
        alias_name: String,
        target_key_id: String,
    },
    CreateKey {
        description: String,
        tags: Vec<(String, String)>,
        policy: Option<String>,
        external: bool,
        bypass_lockout_check: bool,
    },
    GetParametersForImport {
        key_id: String,
        algorithm: WrappingAlgorithm,
        key_spec: WrappingKeySpec,
    },
    ImportKeyMaterial {
        key_id: String,
        token: Vec<u8>,
        material: Vec<u8>,
        valid_to: Option<i64>,
        key_material_id: Option<String>,
    },
    DeleteImportedKeyMaterial {
        key_id: String,
        key_material_id: Option<String>,
    },
    ScheduleKeyDeletion {
        key_id: String,
        window_days: u32,
    },
    CancelKeyDeletion {
        key_id: String,
    },
    UpdateKeyDescription {
        key_id: String,
        description: String,
    },
    EnableKeyRotation {
        key_id: String,
        period_days: u32,
    },
    DisableKeyRotation {
        key_id: String,
    },
    GetKeyRotationStatus {
        key_id: String,
    },
    ListKeyRotations {
        key_id: String,
        all_material: bool,
        limit: usize,
        marker: Option<String>,
    },
    TagResource {
        key_id: String,
        tags: Vec<(String, String)>,
    },
    UntagResource {
        key_id: String,
        tag_keys: Vec<String>,
    },
    ListResourceTags {
        key_id: String,
        limit: usize,
        marker: Option<String>,
    },
    GetKeyPolicy {
        key_id: String,
        policy_name: String,
    },
    PutKeyPolicy {
        key_id: String,
        policy_name: String,
        policy: String,
        bypass_lockout_check: bool,
    },
    ListKeyPolicies {
        key_id: String,
        limit: usize,
        marker: Option<String>,
    },
    Decrypt {
        ciphertext: Vec<u8>,
        context: Context,
        key_id: Option<String>,
        dry_run: bool,
    },
    DeleteAlias {
        alias_name: String,
    },
    DescribeKey {
        key_id: String,
    },
    DisableKey {
        key_id: String,
    },
    EnableKey {
        key_id: String,
    },
    Encrypt {
        key_id: String,
        plaintext: Zeroizing<Vec<u8>>,
        context: Context,
        dry_run: bool,
    },
    GenerateDataKey {
        key_id: String,
        context: Context,
        len: usize,
        with_plaintext: bool,
        dry_run: bool,
    },
    GenerateRandom {
        len: usize,
    },
    ListAliases {
        key_id: Option<String>,
        limit: usize,
        marker: Option<String>,
    },
    ListKeys {
        limit: usize,
        marker: Option<String>,
    },
    ReEncrypt {
        ciphertext: Vec<u8>,
        source_context: Context,
        source_key_id: Option<String>,
        destination_key_id: String,
        destination_context: Context,
        dry_run: bool,
    },
    RotateKeyOnDemand {
        key_id: String,
    },
    UpdateAlias {
        alias_name: String,
        target_key_id: String,
    },
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
            if let Some(p) = &raw.policy {
                v.len("policy", p, 1, 131_072);
            }
            let tags = v.tags(raw.tags);
            unsupported_if(raw.multi_region == Some(true), "Multi-Region keys are not supported.")?;
            unsupported_if(
                raw.custom_key_store_id.is_some() || raw.xks_key_id.is_some(),
                "Custom key stores are not supported.",
            )?;
            if let Some(u) = &raw.key_usage {
                v.one_of(
                    "keyUsage",
                    u,
                    &[
                        "SIGN_VERIFY",
                        "ENCRYPT_DECRYPT",
                        "GENERATE_VERIFY_MAC",
                        "KEY_AGREEMENT",
                        "ENCAPSULATE_DECAPSULATE",
                    ],
                );
            }
            for (member, spec) in [("keySpec", &raw.key_spec), ("customerMasterKeySpec", &raw.customer_master_key_spec)]
            {
                if let Some(s) = spec {
                    v.one_of(member, s, KEY_SPECS);
                }
            }
            if let Some(o) = &raw.origin {
                v.one_of("origin", o, &["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"]);
            }
            v.finish()?;
            unsupported_if(
                raw.key_usage.as_deref().is_some_and(|u| u != "ENCRYPT_DECRYPT"),
                "Only KeyUsage ENCRYPT_DECRYPT is supported.",
            )?;
            unsupported_if(
                [&raw.key_spec, &raw.customer_master_key_spec]
                    .iter()
                    .any(|s| s.as_deref().is_some_and(|s| s != "SYMMETRIC_DEFAULT")),
                "Only KeySpec SYMMETRIC_DEFAULT is supported.",
            )?;
            unsupported_if(
                raw.origin.as_deref().is_some_and(|o| o != "AWS_KMS" && o != "EXTERNAL"),
                "Only Origin AWS_KMS and EXTERNAL are supported.",
            )?;
            tag_rules(&tags)?;
            Request::CreateKey {
                description,
                tags,
                policy: raw.policy,
                external: raw.origin.as_deref() == Some("EXTERNAL"),
                bypass_lockout_check: raw.bypass_policy_lockout_safety_check == Some(true),
            }
        }
        Operation::GetParametersForImport => {
            let key_id = v.key_id("keyId", raw.key_id);
            let alg = v.required("wrappingAlgorithm", raw.wrapping_algorithm);
            let spec = v.required("wrappingKeySpec", raw.wrapping_key_spec);
            if let Some(a) = &alg {
                v.one_of(
                    "wrappingAlgorithm",
                    a,
                    &[
                        "RSAES_PKCS1_V1_5",
                        "RSAES_OAEP_SHA_1",
                        "RSAES_OAEP_SHA_256",
                        "RSA_AES_KEY_WRAP_SHA_1",
                        "RSA_AES_KEY_WRAP_SHA_256",
                        "SM2PKE",
                    ],
                );
            }
            if let Some(s) = &spec {
                v.one_of("wrappingKeySpec", s, &["RSA_2048", "RSA_3072", "RSA_4096", "SM2"]);
            }
            v.finish()?;
            let algorithm = match alg.as_deref().unwrap_or_default() {
                "RSAES_OAEP_SHA_1" => WrappingAlgorithm::OaepSha1,
                "RSAES_OAEP_SHA_256" => WrappingAlgorithm::OaepSha256,
                "RSA_AES_KEY_WRAP_SHA_1" => WrappingAlgorithm::AesKeyWrapSha1,
                "RSA_AES_KEY_WRAP_SHA_256" => WrappingAlgorithm::AesKeyWrapSha256,
                other => {
                    return Err(KmsError::UnsupportedOperation(format!("WrappingAlgorithm {other} is not supported.")));
                }
            };
            let key_spec = match spec.as_deref().unwrap_or_default() {
                "RSA_2048" => WrappingKeySpec::Rsa2048,
                "RSA_3072" => WrappingKeySpec::Rsa3072,
                "RSA_4096" => WrappingKeySpec::Rsa4096,
                other => {
                    return Err(KmsError::UnsupportedOperation(format!("WrappingKeySpec {other} is not supported.")));
                }
            };
            Request::GetParametersForImport { key_id: key_id.unwrap_or_default(), algorithm, key_spec }
        }
        Operation::ImportKeyMaterial => {
            let key_id = v.key_id("keyId", raw.key_id);
            let token = v.required("importToken", raw.import_token);
            let material = v.required("encryptedKeyMaterial", raw.encrypted_key_material);
            let model = raw.expiration_model.clone().unwrap_or_else(|| "KEY_MATERIAL_EXPIRES".into());
            v.one_of("expirationModel", &model, &["KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"]);
            if let Some(t) = &raw.import_type {
                v.one_of("importType", t, &["NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL"]);
            }
            if let Some(d) = &raw.key_material_description {
                v.len("keyMaterialDescription", d, 0, 256);
            }
            v.material_id(&raw.key_material_id);
            v.finish()?;
            let token = decode_blob("importToken", token.as_deref().unwrap_or_default(), MAX_CIPHERTEXT)?;
            let material =
                decode_blob("encryptedKeyMaterial", material.as_deref().unwrap_or_default(), MAX_CIPHERTEXT)?;
            let valid_to = match (model.as_str(), raw.valid_to) {
                ("KEY_MATERIAL_EXPIRES", Some(t)) if t.is_finite() => Some(t.floor() as i64),
                ("KEY_MATERIAL_EXPIRES", _) => {
                    return Err(KmsError::Validation(
                        "A ValidTo date is required when ExpirationModel is KEY_MATERIAL_EXPIRES.".into(),
                    ));
                }
                (_, None) => None,
                (_, Some(_)) => {
                    return Err(KmsError::Validation(
                        "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.".into(),
                    ));
                }
            };
            Request::ImportKeyMaterial {
                key_id: key_id.unwrap_or_default(),
                token,
                material,
                valid_to,
                key_material_id: raw.key_material_id,
            }
        }
        Operation::DeleteImportedKeyMaterial => {
            let key_id = v.key_id("keyId", raw.key_id);
            v.material_id(&raw.key_material_id);
            v.finish()?;
            Request::DeleteImportedKeyMaterial {
                key_id: key_id.unwrap_or_default(),
                key_material_id: raw.key_material_id,
            }
        }
        Operation::ScheduleKeyDeletion => {
            let key_id = v.key_id("keyId", raw.key_id);
            let days = raw.pending_window_in_days.unwrap_or(30);
            v.range("pendingWindowInDays", days, 7, 30);
            v.finish()?;
            Request::ScheduleKeyDeletion {
                key_id: key_id.unwrap_or_default(),
                window_days: u32::try_from(days).unwrap_or(30),
            }
        }
        Operation::EnableKeyRotation => {
            let key_id = v.key_id("keyId", raw.key_id);
            let days = raw.rotation_period_in_days.unwrap_or(365);
            v.range("rotationPeriodInDays", days, 90, 2560);
            v.finish()?;
            Request::EnableKeyRotation {
                key_id: key_id.unwrap_or_default(),
                period_days: u32::try_from(days).unwrap_or(365),
            }
        }
        Operation::CancelKeyDeletion | Operation::DisableKeyRotation | Operation::GetKeyRotationStatus => {
            let key_id = v.key_id("keyId", raw.key_id).unwrap_or_default();
            v.finish()?;
            match op {
                Operation::CancelKeyDeletion => Request::CancelKeyDeletion { key_id },
                Operation::DisableKeyRotation => Request::DisableKeyRotation { key_id },
                _ => Request::GetKeyRotationStatus { key_id },
            }
        }
        Operation::UpdateKeyDescription => {
            let key_id = v.key_id("keyId", raw.key_id);
            let description = v.required("description", raw.description);
            if let Some(d) = &description {
                v.len("description", d, 0, 8192);
            }
            v.finish()?;
            Request::UpdateKeyDescription {
                key_id: key_id.unwrap_or_default(),
                description: description.unwrap_or_default(),
            }
        }
        Operation::ListKeyRotations | Operation::ListResourceTags | Operation::ListKeyPolicies => {
            let key_id = v.key_id("keyId", raw.key_id).unwrap_or_default();
            let limit = v.limit(raw.limit, 1000, if op == Operation::ListResourceTags { 50 } else { 100 });
            let marker = v.marker(raw.marker);
            if let Some(m) = &raw.include_key_material {
                v.one_of("includeKeyMaterial", m, &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]);
            }
            v.finish()?;
            match op {
                Operation::ListKeyRotations => Request::ListKeyRotations {
                    key_id,
                    all_material: raw.include_key_material.as_deref() == Some("ALL_KEY_MATERIAL"),
                    limit,
                    marker,
                },
                // ListResourceTags pages hold at most 50 tags whatever the limit.
                Operation::ListResourceTags => Request::ListResourceTags { key_id, limit: limit.min(50), marker },
                _ => Request::ListKeyPolicies { key_id, limit, marker },
            }
        }
        Operation::TagResource => {
            let key_id = v.key_id("keyId", raw.key_id);
            let present = v.required("tags", raw.tags.as_ref().map(|_| ()));
            let tags = v.tags(raw.tags);
            let _ = present;
            v.finish()?;
            tag_rules(&tags)?;
            Request::TagResource { key_id: key_id.unwrap_or_default(), tags }
        }
        Operation::UntagResource => {
            let key_id = v.key_id("keyId", raw.key_id);
            let tag_keys = v.required("tagKeys", raw.tag_keys);
            for k in tag_keys.iter().flatten() {
                v.len("tagKeys.member", k, 1, 128);
            }
            v.finish()?;
            Request::UntagResource { key_id: key_id.unwrap_or_default(), tag_keys: tag_keys.unwrap_or_default() }
        }
        Operation::GetKeyPolicy | Operation::PutKeyPolicy => {
            let key_id = v.key_id("keyId", raw.key_id).unwrap_or_default();
            let policy_name = raw.policy_name.unwrap_or_else(|| "default".into());
            v.len("policyName", &policy_name, 1, 128);
            if !policy_name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                v.errors.push(format!(
                    "Value '{}' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w]+",
                    shorten(&policy_name)
                ));
            }
            if op == Operation::GetKeyPolicy {
                v.finish()?;
                Request::GetKeyPolicy { key_id, policy_name }
            } else {
                let policy = v.required("policy", raw.policy);
                if let Some(p) = &policy {
                    v.len("policy", p, 1, 131_072);
                }
                v.finish()?;
                Request::PutKeyPolicy {
                    key_id,
                    policy_name,
                    policy: policy.unwrap_or_default(),
                    bypass_lockout_check: raw.bypass_policy_lockout_safety_check == Some(true),
                }
            }
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
            let plaintext = decode_secret(plaintext.as_ref().map(|p| p.as_str()).unwrap_or_default())?;
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(length_error("plaintext", 1, MAX_PLAINTEXT, plaintext.len()));
            }
            symmetric_only(&raw.encryption_algorithm)?;
            reserved_context(&raw.encryption_context)?;
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
            reserved_context(&raw.encryption_context)?;
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
            reserved_context(&raw.source_encryption_context)?;
            reserved_context(&raw.destination_encryption_context)?;
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
            reserved_context(&raw.encryption_context)?;
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

/// Every request member of the implemented operations; unknown members are ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Raw {
    alias_name: Option<String>,
    bypass_policy_lockout_safety_check: Option<bool>,
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
    /// Secret data (base64 plaintext), read straight into zeroizing memory.
    plaintext: Option<Zeroizing<String>>,
    policy: Option<String>,
    recipient: Option<serde_json::Value>,
    source_encryption_algorithm: Option<String>,
    source_encryption_context: Option<Context>,
    source_key_id: Option<String>,
    tags: Option<Vec<RawTag>>,
    pending_window_in_days: Option<i64>,
    rotation_period_in_days: Option<i64>,
    include_key_material: Option<String>,
    tag_keys: Option<Vec<String>>,
    policy_name: Option<String>,
    target_key_id: Option<String>,
    xks_key_id: Option<String>,
    wrapping_algorithm: Option<String>,
    wrapping_key_spec: Option<String>,
    import_token: Option<String>,
    encrypted_key_material: Option<String>,
    expiration_model: Option<String>,
    valid_to: Option<f64>,
    import_type: Option<String>,
    key_material_description: Option<String>,
    key_material_id: Option<String>,
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

fn reserved_context(ctx: &Option<Context>) -> Result<()> {
    if ctx.iter().flatten().any(|(k, _)| k.starts_with(RESERVED_CONTEXT_PREFIX)) {
        return Err(KmsError::Validation(format!(
            "Encryption context keys starting with '{RESERVED_CONTEXT_PREFIX}' are reserved."
        )));
    }
    Ok(())
}

/// One `{TagKey, TagValue}` of a request.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTag {
    tag_key: Option<String>,
    tag_value: Option<String>,
}

/// The service's tag rules beyond the model's lengths (`TagException`).
fn tag_rules(tags: &[(String, String)]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(KmsError::LimitExceeded(format!("A key can have at most {MAX_TAGS} tags.")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in tags {
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(KmsError::Tag("Tag keys beginning with 'aws:' are reserved for AWS use.".into()));
        }
        if !seen.insert(k.as_str()) {
            return Err(KmsError::Tag(format!("Duplicate tag key '{}' in the request.", shorten(k))));
        }
    }
    Ok(())
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

    fn tags(&mut self, v: Option<Vec<RawTag>>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in v.into_iter().flatten() {
            let k = self.required("tags.member.tagKey", t.tag_key);
            let val = self.required("tags.member.tagValue", t.tag_value);
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

    fn material_id(&mut self, v: &Option<String>) {
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
    let rule =
        if got < min { format!("greater than or equal to {min}") } else { format!("less than or equal to {max}") };
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
    let b =
        STANDARD.decode(s).map_err(|_| KmsError::Serialization(format!("Value at '{member}' is not valid base64.")))?;
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
        assert_eq!(Operation::from_target("TrentService.Sign").unwrap_err().aws().0, "UnsupportedOperationException");
        for op in Operation::ALL {
            assert_eq!(Operation::from_target(&format!("TrentService.{}", op.name())).unwrap(), *op);
        }
    }

    #[test]
    fn encrypt_parsing_and_validation() {
        let r = parse_request(
            Operation::Encrypt,
            br#"{"KeyId":"alias/x","Plaintext":"aGVsbG8=","EncryptionContext":{"a":"b"}}"#,
        );
        let Ok(Request::Encrypt { key_id, plaintext, context, dry_run }) = r else { panic!("{r:?}") };
        assert_eq!(
            (key_id.as_str(), &plaintext[..], context["a"].as_str(), dry_run),
            ("alias/x", &b"hello"[..], "b", false)
        );

        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k"}"#)), "ValidationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":""}"#)), "ValidationException");
        let big = format!(r#"{{"KeyId":"k","Plaintext":"{}"}}"#, STANDARD.encode([0u8; 4097]));
        assert_eq!(code(parse_request(Operation::Encrypt, big.as_bytes())), "ValidationException");
        assert_eq!(
            code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"!!"}"#)),
            "SerializationException"
        );
        assert_eq!(
            code(parse_request(Operation::Encrypt, br#"{"KeyId":5,"Plaintext":"aGk="}"#)),
            "SerializationException"
        );
        assert_eq!(
            code(parse_request(Operation::Encrypt, br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"a":1}}"#)),
            "SerializationException"
        );
        assert_eq!(code(parse_request(Operation::Encrypt, br#"{"KeyId":"#)), "SerializationException");
        assert_eq!(code(parse_request(Operation::Encrypt, br#"[]"#)), "SerializationException");
        assert_eq!(
            code(parse_request(
                Operation::Encrypt,
                br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}"#
            )),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            code(parse_request(
                Operation::Encrypt,
                br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionAlgorithm":"ROT13"}"#
            )),
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
        for bad in [
            &br#"{"KeyId":"k"}"#[..],
            br#"{"KeyId":"k","KeySpec":"AES_256","NumberOfBytes":32}"#,
            br#"{"KeyId":"k","NumberOfBytes":0}"#,
            br#"{"KeyId":"k","NumberOfBytes":1025}"#,
            br#"{"KeyId":"k","KeySpec":"AES_512"}"#,
        ] {
            assert_eq!(code(parse_request(Operation::GenerateDataKey, bad)), "ValidationException");
        }
        assert_eq!(code(parse_request(Operation::GenerateRandom, b"{}")), "ValidationException");
        assert_eq!(
            code(parse_request(Operation::GenerateRandom, br#"{"NumberOfBytes":1.5}"#)),
            "SerializationException"
        );
    }

    #[test]
    fn create_key_options() {
        assert!(matches!(parse_request(Operation::CreateKey, b""), Ok(Request::CreateKey { .. })));
        assert!(matches!(
            parse_request(
                Operation::CreateKey,
                br#"{"KeySpec":"SYMMETRIC_DEFAULT","KeyUsage":"ENCRYPT_DECRYPT","Origin":"AWS_KMS","Description":"d"}"#
            ),
            Ok(Request::CreateKey { .. })
        ));
        assert_eq!(
            code(parse_request(Operation::CreateKey, br#"{"KeySpec":"RSA_2048"}"#)),
            "UnsupportedOperationException"
        );
        assert!(matches!(
            parse_request(Operation::CreateKey, br#"{"Origin":"EXTERNAL"}"#),
            Ok(Request::CreateKey { external: true, .. })
        ));
        assert_eq!(
            code(parse_request(Operation::CreateKey, br#"{"Origin":"AWS_CLOUDHSM"}"#)),
            "UnsupportedOperationException"
        );
        assert!(matches!(
            parse_request(Operation::CreateKey, br#"{"Policy":"{}","Tags":[{"TagKey":"a","TagValue":""}]}"#),
            Ok(Request::CreateKey { .. })
        ));
        assert_eq!(
            code(parse_request(Operation::CreateKey, br#"{"Tags":[{"TagKey":"aws:x","TagValue":""}]}"#)),
            "TagException"
        );
        assert_eq!(
            code(parse_request(Operation::CreateKey, br#"{"Tags":[{"TagKey":"","TagValue":""}]}"#)),
            "ValidationException"
        );
        assert_eq!(code(parse_request(Operation::CreateKey, br#"{"KeySpec":"BOGUS"}"#)), "ValidationException");
        assert_eq!(
            code(parse_request(Operation::CreateAlias, br#"{"AliasName":"alias/a b","TargetKeyId":"k"}"#)),
            "ValidationException"
        );
    }

    #[test]
    fn management_parsing() {
        let e = parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k","PendingWindowInDays":6}"#).unwrap_err();
        assert_eq!(e.aws().0, "ValidationException");
        assert!(e.to_string().contains("'pendingWindowInDays'"), "{e}");
        assert!(matches!(
            parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k"}"#),
            Ok(Request::ScheduleKeyDeletion { window_days: 30, .. })
        ));
        assert_eq!(
            code(parse_request(Operation::ScheduleKeyDeletion, br#"{"KeyId":"k","PendingWindowInDays":31}"#)),
            "ValidationException"
        );
        assert!(matches!(
            parse_request(Operation::EnableKeyRotation, br#"{"KeyId":"k"}"#),
            Ok(Request::EnableKeyRotation { period_days: 365, .. })
        ));
        assert_eq!(
            code(parse_request(Operation::EnableKeyRotation, br#"{"KeyId":"k","RotationPeriodInDays":89}"#)),
            "ValidationException"
        );
        assert_eq!(code(parse_request(Operation::UpdateKeyDescription, br#"{"KeyId":"k"}"#)), "ValidationException");
        assert_eq!(code(parse_request(Operation::TagResource, br#"{"KeyId":"k"}"#)), "ValidationException");
        let many: Vec<_> = (0..51).map(|i| serde_json::json!({"TagKey": format!("k{i}"), "TagValue": "v"})).collect();
        let body = serde_json::json!({"KeyId": "k", "Tags": many}).to_string();
        assert_eq!(code(parse_request(Operation::TagResource, body.as_bytes())), "LimitExceededException");
        assert_eq!(
            code(parse_request(
                Operation::TagResource,
                br#"{"KeyId":"k","Tags":[{"TagKey":"a","TagValue":"1"},{"TagKey":"a","TagValue":"2"}]}"#
            )),
            "TagException"
        );
        assert_eq!(code(parse_request(Operation::UntagResource, br#"{"KeyId":"k"}"#)), "ValidationException");
        assert!(matches!(
            parse_request(Operation::GetKeyPolicy, br#"{"KeyId":"k"}"#),
            Ok(Request::GetKeyPolicy { .. })
        ));
        assert_eq!(code(parse_request(Operation::PutKeyPolicy, br#"{"KeyId":"k"}"#)), "ValidationException");
        assert_eq!(
            code(parse_request(Operation::GetKeyPolicy, br#"{"KeyId":"k","PolicyName":"a-b"}"#)),
            "ValidationException"
        );
        assert_eq!(
            code(parse_request(Operation::ListKeyRotations, br#"{"KeyId":"k","IncludeKeyMaterial":"X"}"#)),
            "ValidationException"
        );
    }

    #[test]
    fn reserved_context_prefix() {
        for (op, body) in [
            (Operation::Encrypt, &br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"envelope:api":"x"}}"#[..]),
            (Operation::Decrypt, br#"{"CiphertextBlob":"aGk=","EncryptionContext":{"envelope:key-id":"x"}}"#),
            (
                Operation::ReEncrypt,
                br#"{"CiphertextBlob":"aGk=","DestinationKeyId":"k","SourceEncryptionContext":{"envelope:x":""}}"#,
            ),
            (
                Operation::ReEncrypt,
                br#"{"CiphertextBlob":"aGk=","DestinationKeyId":"k","DestinationEncryptionContext":{"envelope:x":""}}"#,
            ),
            (
                Operation::GenerateDataKey,
                br#"{"KeyId":"k","KeySpec":"AES_256","EncryptionContext":{"envelope:probe":"1"}}"#,
            ),
            (
                Operation::GenerateDataKeyWithoutPlaintext,
                br#"{"KeyId":"k","NumberOfBytes":8,"EncryptionContext":{"envelope:":""}}"#,
            ),
        ] {
            assert_eq!(code(parse_request(op, body)), "ValidationException", "{op:?}");
        }
        // Only the exact prefix is reserved.
        assert_eq!(
            code(parse_request(
                Operation::Encrypt,
                br#"{"KeyId":"k","Plaintext":"aGk=","EncryptionContext":{"Envelope:api":"x","envelope":"y"}}"#
            )),
            "ok"
        );
    }

    #[test]
    fn import_parsing() {
        let ok = parse_request(
            Operation::GetParametersForImport,
            br#"{"KeyId":"k","WrappingAlgorithm":"RSAES_OAEP_SHA_256","WrappingKeySpec":"RSA_2048"}"#,
        );
        assert!(matches!(
            ok,
            Ok(Request::GetParametersForImport {
                algorithm: WrappingAlgorithm::OaepSha256,
                key_spec: WrappingKeySpec::Rsa2048,
                ..
            })
        ));
        assert_eq!(
            code(parse_request(
                Operation::GetParametersForImport,
                br#"{"KeyId":"k","WrappingAlgorithm":"RSAES_PKCS1_V1_5","WrappingKeySpec":"RSA_2048"}"#
            )),
            "UnsupportedOperationException"
        );
        assert_eq!(
            code(parse_request(
                Operation::GetParametersForImport,
                br#"{"KeyId":"k","WrappingAlgorithm":"X","WrappingKeySpec":"RSA_2048"}"#
            )),
            "ValidationException"
        );
        assert_eq!(code(parse_request(Operation::GetParametersForImport, br#"{"KeyId":"k"}"#)), "ValidationException");
        let base = r#""KeyId":"k","ImportToken":"aGk=","EncryptedKeyMaterial":"aGk=""#;
        let p = |extra: &str| parse_request(Operation::ImportKeyMaterial, format!("{{{base}{extra}}}").as_bytes());
        assert!(matches!(
            p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE""#),
            Ok(Request::ImportKeyMaterial { valid_to: None, .. })
        ));
        assert!(matches!(
            p(r#","ValidTo":1900000000.5"#),
            Ok(Request::ImportKeyMaterial { valid_to: Some(1_900_000_000), .. })
        ));
        assert_eq!(code(p("")), "ValidationException");
        assert_eq!(
            code(p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","ValidTo":1900000000"#)),
            "ValidationException"
        );
        assert_eq!(code(p(r#","ExpirationModel":"NEVER""#)), "ValidationException");
        assert_eq!(
            code(p(r#","ExpirationModel":"KEY_MATERIAL_DOES_NOT_EXPIRE","KeyMaterialId":"AB""#)),
            "ValidationException"
        );
        assert_eq!(code(parse_request(Operation::DeleteImportedKeyMaterial, br#"{"KeyId":"k"}"#)), "ok");
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
