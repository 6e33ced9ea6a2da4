//! Key lifecycle: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey, ScheduleKeyDeletion,
//! CancelKeyDeletion, UpdateKeyDescription; and the `KeyMetadata` every key-describing response
//! carries.

use envelope_keystore::{KeyRef, KeySpec, KeyState, KeyUsage};
use serde::Serialize;

use super::{Call, DAY, Operation, Reply, SYMMETRIC_DEFAULT, decode_marker, empty, encode_marker, not_pending};
use crate::Server;
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{KEY_SPECS, Raw, Validator, tag_rules, unsupported_if};

/// A validated key-lifecycle request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    CancelKeyDeletion {
        key_id: String,
    },
    CreateKey {
        description: String,
        tags: Vec<(String, String)>,
        policy: Option<String>,
        external: bool,
        bypass_lockout_check: bool,
        key_spec: KeySpec,
        key_usage: KeyUsage,
    },
    DescribeKey {
        key_id: String,
    },
    SetEnabled {
        key_id: String,
        enabled: bool,
    },
    ListKeys {
        limit: usize,
        marker: Option<String>,
    },
    ScheduleKeyDeletion {
        key_id: String,
        window_days: u32,
    },
    UpdateKeyDescription {
        key_id: String,
        description: String,
    },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    Ok(match op {
        Operation::CreateKey => {
            let description = raw.description.clone().unwrap_or_default();
            v.len("description", &description, 0, 8192);
            if let Some(p) = &raw.policy {
                v.len("policy", p, 1, 131_072);
            }
            let tags = v.tags(&raw.tags);
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
            let (key_spec, key_usage) = spec_and_usage(raw)?;
            unsupported_if(
                raw.origin.as_deref().is_some_and(|o| o != "AWS_KMS" && o != "EXTERNAL"),
                "Only Origin AWS_KMS and EXTERNAL are supported.",
            )?;
            let external = raw.origin.as_deref() == Some("EXTERNAL");
            tag_rules(&tags)?;
            Request::CreateKey {
                description,
                tags,
                policy: raw.policy.clone(),
                external,
                bypass_lockout_check: raw.bypass_policy_lockout_safety_check == Some(true),
                key_spec,
                key_usage,
            }
        }
        Operation::ScheduleKeyDeletion => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let days = raw.pending_window_in_days.unwrap_or(30);
            v.range("pendingWindowInDays", days, 7, 30);
            v.finish()?;
            Request::ScheduleKeyDeletion {
                key_id: key_id.unwrap_or_default(),
                window_days: u32::try_from(days).unwrap_or(30),
            }
        }
        Operation::CancelKeyDeletion => {
            let key_id = v.key_id("keyId", raw.key_id.clone()).unwrap_or_default();
            v.finish()?;
            Request::CancelKeyDeletion { key_id }
        }
        Operation::UpdateKeyDescription => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let description = v.required("description", raw.description.clone());
            if let Some(d) = &description {
                v.len("description", d, 0, 8192);
            }
            v.finish()?;
            Request::UpdateKeyDescription {
                key_id: key_id.unwrap_or_default(),
                description: description.unwrap_or_default(),
            }
        }
        Operation::ListKeys => {
            let limit = v.limit(raw.limit, 1000, 100);
            let marker = v.marker(raw.marker.clone());
            v.finish()?;
            Request::ListKeys { limit, marker }
        }
        // DescribeKey, EnableKey, DisableKey.
        _ => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            let key_id = key_id.unwrap_or_default();
            match op {
                Operation::DescribeKey => Request::DescribeKey { key_id },
                _ => Request::SetEnabled { key_id, enabled: op == Operation::EnableKey },
            }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::CreateKey { description, tags, policy, external, bypass_lockout_check, key_spec, key_usage } => {
            call.authorize_account("CreateKey")?;
            if let Some(p) = &policy {
                super::policies::check_policy(p)?;
                if !bypass_lockout_check {
                    // The key's ARN does not exist yet; a policy naming it cannot match anyway.
                    let resource = s.names.key_arn("00000000-0000-0000-0000-000000000000");
                    super::policies::lockout_check(p, call.caller(), &s.config.account_id, &resource)?;
                }
            }
            // The key count is checked in the creation's own transaction (Server::new sets the
            // store's limits), so concurrent creations, on this server or on replicas, cannot
            // go past it together.
            let meta = if external {
                s.store.create_external_key_for(key_spec, key_usage, &description, &tags, policy.as_deref())
            } else {
                s.store.create_key_for(key_spec, key_usage, &description, &tags, policy.as_deref())
            }
            .map_err(|e| match e {
                envelope_keystore::Error::LimitExceeded(envelope_keystore::Limit::Keys(max)) => {
                    KmsError::LimitExceeded(format!(
                        "The request was rejected because account {} has reached its limit of {max} KMS keys.",
                        s.config.account_id
                    ))
                }
                e => KmsError::from_store(e, Subject::Key("new key")),
            })?;
            call.touched(&s.names.key_arn(&meta.key_id));
            call.reply(&KeyMetadataResponse { key_metadata: metadata(s, &meta) })
        }
        Request::DescribeKey { key_id } => {
            let k = call.resolve(&key_id, Forms::Any)?;
            call.allow(&k, "DescribeKey")?;
            let meta = call.describe(&k)?;
            call.reply(&KeyMetadataResponse { key_metadata: metadata(s, &meta) })
        }
        Request::ScheduleKeyDeletion { key_id, window_days } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "ScheduleKeyDeletion")?;
            not_pending(&k)?;
            let date = s.clock.now().saturating_add(i64::from(window_days) * DAY);
            s.store
                .schedule_deletion(&k.r, date, window_days)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            call.reply(&ScheduleDeletionResponse {
                key_id: k.arn,
                deletion_date: date,
                key_state: KeyState::PendingDeletion.as_str(),
                pending_window_in_days: window_days,
            })
        }
        Request::CancelKeyDeletion { key_id } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "CancelKeyDeletion")?;
            if k.state != KeyState::PendingDeletion {
                return Err(KmsError::InvalidState(format!("{} is not pending deletion.", k.arn)));
            }
            s.store.cancel_deletion(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            call.reply(&KeyIdResponse { key_id: k.arn })
        }
        Request::UpdateKeyDescription { key_id, description } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "UpdateKeyDescription")?;
            not_pending(&k)?;
            s.store.set_description(&k.r, &description).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::SetEnabled { key_id, enabled } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, if enabled { "EnableKey" } else { "DisableKey" })?;
            not_pending(&k)?;
            s.store.set_enabled(&k.r, enabled).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::ListKeys { limit, marker } => {
            call.authorize_account("ListKeys")?;
            let after = marker.map(|m| decode_marker(&m, "k1")).transpose()?;
            let keys = s.store.list().map_err(|e| KmsError::from_store(e, Subject::Internal))?;
            let mut page: Vec<KeyListEntry> = Vec::new();
            let mut truncated = false;
            let mut last = None;
            for k in keys.iter().filter(|k| after.as_deref().is_none_or(|a| key_position(k).as_str() > a)) {
                if page.len() == limit {
                    truncated = true;
                    break;
                }
                last = Some(key_position(k));
                page.push(KeyListEntry { key_arn: s.names.key_arn(&k.key_id), key_id: k.key_id.clone() });
            }
            let next_marker = if truncated { last.map(|l| encode_marker("k1", &l)) } else { None };
            call.reply(&ListKeysResponse { keys: page, next_marker, truncated })
        }
    }
}

/// The key spec and usage of a CreateKey request, checked as AWS checks the pair
/// (`ValidationException` in AWS's words); a valid pair of a spec this server does not make
/// (SM2, Ed25519, ML-DSA, ML-KEM) is `UnsupportedOperationException`.
fn spec_and_usage(raw: &Raw) -> Result<(KeySpec, KeyUsage)> {
    let spec = raw.key_spec.as_deref().or(raw.customer_master_key_spec.as_deref()).unwrap_or(SYMMETRIC_DEFAULT);
    let usage = match raw.key_usage.as_deref() {
        Some(u) => u,
        None if spec == SYMMETRIC_DEFAULT => KeyUsage::EncryptDecrypt.as_str(),
        None => {
            return Err(KmsError::Validation(
                "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.".into(),
            ));
        }
    };
    if !usages_of(spec).contains(&usage) {
        return Err(KmsError::Validation(format!("KeyUsage {usage} is not compatible with KeySpec {spec}")));
    }
    let key_spec = KeySpec::from_name(spec)
        .ok_or_else(|| KmsError::UnsupportedOperation(format!("KeySpec {spec} is not supported by this server.")))?;
    let Some(key_usage) = key_spec.usages().iter().copied().find(|u| u.as_str() == usage) else {
        // A valid pair this server does not make.
        return Err(KmsError::UnsupportedOperation(format!(
            "KeyUsage {usage} with KeySpec {spec} is not supported by this server."
        )));
    };
    Ok((key_spec, key_usage))
}

/// The key usages AWS allows with each key spec.
fn usages_of(spec: &str) -> &'static [&'static str] {
    match spec {
        "SYMMETRIC_DEFAULT" => &["ENCRYPT_DECRYPT"],
        "RSA_2048" | "RSA_3072" | "RSA_4096" => &["ENCRYPT_DECRYPT", "SIGN_VERIFY"],
        "ECC_NIST_P256" | "ECC_NIST_P384" | "ECC_NIST_P521" => &["SIGN_VERIFY", "KEY_AGREEMENT"],
        "ECC_SECG_P256K1" | "ECC_NIST_EDWARDS25519" | "ML_DSA_44" | "ML_DSA_65" | "ML_DSA_87" => &["SIGN_VERIFY"],
        "HMAC_224" | "HMAC_256" | "HMAC_384" | "HMAC_512" => &["GENERATE_VERIFY_MAC"],
        "SM2" => &["ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"],
        "ML_KEM_512" | "ML_KEM_768" | "ML_KEM_1024" => &["ENCAPSULATE_DECAPSULATE"],
        _ => &[],
    }
}

fn key_position(k: &envelope_keystore::KeyMetadata) -> String {
    // Fixed-width creation time first, so string order is (created_at, key_id) order.
    format!("{:020}:{}", k.created_at.max(0), k.key_id)
}

/// The `KeyMetadata` of a key.
pub(crate) fn metadata(s: &Server, m: &envelope_keystore::KeyMetadata) -> KeyMetadataOut {
    let attrs = uuid::Uuid::parse_str(&m.key_id).ok().and_then(|u| s.store.attributes(&KeyRef::Id(u)).ok());
    let pending = m.state == KeyState::PendingDeletion;
    let external = attrs.as_ref().is_some_and(|a| a.external);
    let has_material = !m.current_material_id.is_empty();
    KeyMetadataOut {
        origin: if external { "EXTERNAL" } else { "AWS_KMS" },
        expiration_model: (external && has_material).then(|| {
            if attrs.as_ref().is_some_and(|a| a.valid_to.is_some()) {
                "KEY_MATERIAL_EXPIRES"
            } else {
                "KEY_MATERIAL_DOES_NOT_EXPIRE"
            }
        }),
        valid_to: attrs.as_ref().and_then(|a| a.valid_to).filter(|_| external && has_material),
        deletion_date: attrs.as_ref().and_then(|a| a.deletion_date).filter(|_| pending),
        aws_account_id: s.config.account_id.clone(),
        key_id: m.key_id.clone(),
        arn: s.names.key_arn(&m.key_id),
        creation_date: m.created_at,
        enabled: m.state == KeyState::Enabled,
        description: m.description.clone(),
        key_usage: m.key_usage.as_str(),
        key_state: m.state.as_str(),
        key_manager: "CUSTOMER",
        customer_master_key_spec: m.key_spec.as_str(),
        key_spec: m.key_spec.as_str(),
        encryption_algorithms: encryption_algorithms(m.key_spec, m.key_usage),
        mac_algorithms: m.key_spec.mac_algorithm().map(|a| [a.as_str()]),
        signing_algorithms: signing_algorithms(m.key_spec, m.key_usage),
        key_agreement_algorithms: key_agreement_algorithms(m.key_usage),
        multi_region: false,
        // AWS shows it for symmetric encryption keys only (the keys with several materials).
        current_key_material_id: (has_material && m.key_spec == KeySpec::SymmetricDefault)
            .then(|| m.current_material_id.clone()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyMetadataOut {
    #[serde(rename = "AWSAccountId")]
    aws_account_id: String,
    key_id: String,
    arn: String,
    creation_date: i64,
    enabled: bool,
    description: String,
    key_usage: &'static str,
    key_state: &'static str,
    origin: &'static str,
    key_manager: &'static str,
    customer_master_key_spec: &'static str,
    key_spec: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_algorithms: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_algorithms: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_agreement_algorithms: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac_algorithms: Option<[&'static str; 1]>,
    multi_region: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_key_material_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion_date: Option<i64>,
    // No PendingDeletionWindowInDays: AWS sends it only for multi-Region replicas
    // (PendingReplicaDeletion), which this server does not have.
}

/// The `EncryptionAlgorithms` of an `ENCRYPT_DECRYPT` key (`SYMMETRIC_DEFAULT`, or RSA-OAEP's).
pub(crate) fn encryption_algorithms(spec: KeySpec, usage: KeyUsage) -> Option<Vec<&'static str>> {
    match (usage, spec) {
        (KeyUsage::EncryptDecrypt, KeySpec::SymmetricDefault) => Some(vec![SYMMETRIC_DEFAULT]),
        (KeyUsage::EncryptDecrypt, _) => Some(spec.encryption_algorithms().iter().map(|a| a.as_str()).collect()),
        _ => None,
    }
}

/// The `SigningAlgorithms` of a `SIGN_VERIFY` key.
pub(crate) fn signing_algorithms(spec: KeySpec, usage: KeyUsage) -> Option<Vec<&'static str>> {
    (usage == KeyUsage::SignVerify).then(|| spec.signing_algorithms().iter().map(|a| a.as_str()).collect())
}

/// The `KeyAgreementAlgorithms` of a `KEY_AGREEMENT` key.
pub(crate) fn key_agreement_algorithms(usage: KeyUsage) -> Option<[&'static str; 1]> {
    (usage == KeyUsage::KeyAgreement).then_some(["ECDH"])
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyMetadataResponse {
    key_metadata: KeyMetadataOut,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyListEntry {
    key_id: String,
    key_arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListKeysResponse {
    keys: Vec<KeyListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KeyIdResponse {
    pub(crate) key_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduleDeletionResponse {
    key_id: String,
    deletion_date: i64,
    key_state: &'static str,
    pending_window_in_days: u32,
}
