//! The operations, on top of the key store. Each takes a validated [`Request`] and returns the
//! JSON response body (empty for operations without output). Blocking (SQLite, fsync): the HTTP
//! layer runs [`Server::execute`] on the blocking thread pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::{EncryptionContext, KeyRef, KeyState};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::Server;
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::import;
use crate::policy::{self, Policy, Query, Source, Verdict};
use crate::protocol::{Context, MAX_POLICY, MAX_TAGS, Request, SecretB64, b64, encode_secret, to_body};

/// Parsed key policies by key, re-parsed only when the stored document changes.
pub(crate) struct PolicyCache {
    default: Arc<Policy>,
    parsed: Mutex<HashMap<[u8; 16], CachedPolicy>>,
}

/// A stored policy document and its parse.
type CachedPolicy = (Arc<str>, Arc<Policy>);

impl PolicyCache {
    pub(crate) fn new(account: &str) -> Result<Self> {
        let default = policy::parse(&policy::default_policy(account)).map_err(KmsError::Config)?;
        Ok(Self { default: Arc::new(default), parsed: Mutex::new(HashMap::new()) })
    }

    fn get(&self, kid: [u8; 16], text: Option<&Arc<str>>) -> Result<Arc<Policy>> {
        let Some(text) = text else { return Ok(self.default.clone()) };
        let mut cache = self.parsed.lock().map_err(|_| KmsError::Internal("policy cache lock poisoned".into()))?;
        if let Some((t, p)) = cache.get(&kid)
            && (Arc::ptr_eq(t, text) || **t == **text)
        {
            return Ok(p.clone());
        }
        // Stored policies were validated when put; one that no longer parses denies everything.
        let p = Arc::new(policy::parse(text).map_err(|e| KmsError::Internal(format!("stored key policy: {e}")))?);
        cache.insert(kid, (text.clone(), p.clone()));
        Ok(p)
    }
}

/// Days in seconds.
const DAY: i64 = 86_400;

/// Most on-demand rotations per key (the AWS quota).
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;

const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// Who makes a request: the verified principal and its identity policy.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal ARN, e.g. `arn:aws:iam::111122223333:user/app`.
    pub principal: String,
    /// Its identity policy; `None` is unrestricted (a credential without a policy).
    pub identity: Option<Arc<Policy>>,
}

impl Caller {
    /// The caller a credential authenticates.
    pub fn of(c: &crate::Credential) -> Self {
        Self { principal: c.principal.clone(), identity: c.policy.clone() }
    }

    /// The account's root user (unrestricted; what the seed file acts as).
    pub fn account_root(account: &str) -> Self {
        Self { principal: format!("arn:aws:iam::{account}:root"), identity: None }
    }
}

/// The result of [`Server::execute`]: the response body or the error, and the ARNs of every key
/// the request touched (authorized or denied), for the audit record's `resources`.
pub struct Outcome {
    /// The JSON response body (empty for operations without output), or the error.
    pub result: Result<Zeroizing<Vec<u8>>>,
    /// Key ARNs the request named or resolved, in the order they were checked, without repeats.
    pub resources: Vec<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the body: it may hold plaintext or data keys.
        f.debug_struct("Outcome")
            .field("result", &self.result.as_ref().map(|b| b.len()))
            .field("resources", &self.resources)
            .finish()
    }
}

/// One request in progress: the caller and the keys touched so far.
struct Call<'a> {
    caller: &'a Caller,
    resources: RefCell<Vec<String>>,
}

impl Call<'_> {
    fn principal(&self) -> &str {
        &self.caller.principal
    }

    fn touched(&self, arn: &str) {
        let mut r = self.resources.borrow_mut();
        if !r.iter().any(|a| a == arn) {
            r.push(arn.to_string());
        }
    }
}

/// Attempts at a guarded alias change before giving up (another writer keeps moving it).
const ALIAS_ATTEMPTS: usize = 5;

/// A key resolved from a client's identifier.
struct Resolved {
    r: KeyRef,
    id: String,
    arn: String,
    state: KeyState,
    kid: [u8; 16],
}

impl Server {
    /// Runs one request for `caller`. Every key the request touches is authorized by its key
    /// policy and the caller's identity policy ([`policy::authorize`]); account-level operations
    /// (CreateKey, ListKeys, ListAliases, GenerateRandom) and aliases by the identity policy.
    pub fn execute(&self, req: Request, caller: &Caller) -> Outcome {
        let call = Call { caller, resources: RefCell::new(Vec::new()) };
        let result = self.run(req, &call);
        Outcome { result, resources: call.resources.into_inner() }
    }

    fn run(&self, req: Request, call: &Call<'_>) -> Result<Zeroizing<Vec<u8>>> {
        let no_ctx = Context::new();
        let auth = |k: &Resolved, action: &str| self.authorize(call, k, action, &no_ctx);
        match req {
            Request::CreateKey { description, tags, policy, external, bypass_lockout_check } => {
                self.authorize_account(call, "CreateKey")?;
                if let Some(p) = &policy {
                    check_policy(p)?;
                    if !bypass_lockout_check {
                        // The key's ARN does not exist yet; a policy naming it cannot match anyway.
                        let resource = self.names.key_arn("00000000-0000-0000-0000-000000000000");
                        lockout_check(p, call.caller, &self.config.account_id, &resource)?;
                    }
                }
                // One creation at a time, so the count and the insert cannot interleave.
                let _one = self.create_lock.lock().map_err(|_| KmsError::Internal("create lock poisoned".into()))?;
                let count = self.store.list().map_err(|e| KmsError::from_store(e, Subject::Internal))?.len();
                if count >= self.config.max_keys {
                    return Err(KmsError::LimitExceeded(format!(
                        "The request was rejected because account {} has reached its limit of {} KMS keys.",
                        self.config.account_id, self.config.max_keys
                    )));
                }
                let meta = if external {
                    self.store.create_external_key(&description, &tags, policy.as_deref())
                } else {
                    self.store.create_key_with(None, &description, &tags, policy.as_deref())
                }
                .map_err(|e| KmsError::from_store(e, Subject::Key("new key")))?;
                call.touched(&self.names.key_arn(&meta.key_id));
                to_body(&KeyMetadataResponse { key_metadata: self.metadata(&meta) })
            }
            Request::DescribeKey { key_id } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                auth(&k, "DescribeKey")?;
                let meta = self.store.describe(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&KeyMetadataResponse { key_metadata: self.metadata(&meta) })
            }
            Request::ScheduleKeyDeletion { key_id, window_days } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "ScheduleKeyDeletion")?;
                self.not_pending(&k)?;
                let date = self.clock.now().saturating_add(i64::from(window_days) * DAY);
                self.store
                    .schedule_deletion(&k.r, date, window_days)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&ScheduleDeletionResponse {
                    key_id: k.arn,
                    deletion_date: date,
                    key_state: KeyState::PendingDeletion.as_str(),
                    pending_window_in_days: window_days,
                })
            }
            Request::CancelKeyDeletion { key_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "CancelKeyDeletion")?;
                if k.state != KeyState::PendingDeletion {
                    return Err(KmsError::InvalidState(format!("{} is not pending deletion.", k.arn)));
                }
                self.store.cancel_deletion(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&KeyIdResponse { key_id: k.arn })
            }
            Request::UpdateKeyDescription { key_id, description } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "UpdateKeyDescription")?;
                self.not_pending(&k)?;
                self.store
                    .set_description(&k.r, &description)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::EnableKeyRotation { key_id, period_days } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "EnableKeyRotation")?;
                self.generated_material(&k)?;
                self.usable(&k)?;
                let next = self.clock.now().saturating_add(i64::from(period_days) * DAY);
                self.store
                    .set_rotation(&k.r, Some((period_days, next)))
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::DisableKeyRotation { key_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "DisableKeyRotation")?;
                self.usable(&k)?;
                self.store.set_rotation(&k.r, None).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::GetKeyRotationStatus { key_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "GetKeyRotationStatus")?;
                let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                // A key pending deletion is not rotated; its status reads false until cancelled.
                let on = a.rotation_period_days.is_some() && k.state != KeyState::PendingDeletion;
                to_body(&RotationStatusResponse {
                    key_rotation_enabled: on,
                    key_id: k.arn,
                    rotation_period_in_days: a.rotation_period_days.filter(|_| on),
                    next_rotation_date: a.next_rotation.filter(|_| on),
                })
            }
            Request::ListKeyRotations { key_id, all_material, limit, marker } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "ListKeyRotations")?;
                let after = marker.map(|m| decode_marker(&m, "r1")).transpose()?;
                let after: Option<u32> = after.map(|a| a.parse().map_err(|_| KmsError::InvalidMarker)).transpose()?;
                let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let meta = self.store.describe(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let items: Vec<_> = a
                    .rotations
                    .iter()
                    .filter(|r| all_material || r.kind != envelope_keystore::RotationType::Initial)
                    .filter(|r| after.is_none_or(|a| r.seq > a))
                    .collect();
                let truncated = items.len() > limit;
                let page: Vec<RotationEntry> = items
                    .iter()
                    .take(limit)
                    .map(|r| RotationEntry {
                        key_id: k.arn.clone(),
                        key_material_id: r.material_id.clone(),
                        key_material_state: if r.material_id == meta.current_material_id {
                            "CURRENT"
                        } else {
                            "NON_CURRENT"
                        },
                        rotation_date: r.created_at,
                        rotation_type: r.kind.as_str(),
                        // Imported material (origin EXTERNAL): the one material, present or not.
                        import_state: a.external.then_some(if meta.current_material_id.is_empty() {
                            "PENDING_IMPORT"
                        } else {
                            "IMPORTED"
                        }),
                        expiration_model: a.external.then_some(if a.valid_to.is_some() {
                            "KEY_MATERIAL_EXPIRES"
                        } else {
                            "KEY_MATERIAL_DOES_NOT_EXPIRE"
                        }),
                        valid_to: a.valid_to.filter(|_| a.external),
                    })
                    .collect();
                let next_marker = if truncated {
                    items.get(limit.saturating_sub(1)).map(|r| encode_marker("r1", &r.seq.to_string()))
                } else {
                    None
                };
                to_body(&ListRotationsResponse { rotations: page, next_marker, truncated })
            }
            Request::TagResource { key_id, tags } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "TagResource")?;
                self.not_pending(&k)?;
                let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let added = tags.iter().filter(|(t, _)| !a.tags.iter().any(|(x, _)| x == t)).count();
                if a.tags.len() + added > MAX_TAGS {
                    return Err(KmsError::LimitExceeded(format!("A key can have at most {MAX_TAGS} tags.")));
                }
                self.store.tag(&k.r, &tags).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::UntagResource { key_id, tag_keys } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "UntagResource")?;
                self.not_pending(&k)?;
                self.store.untag(&k.r, &tag_keys).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::ListResourceTags { key_id, limit, marker } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "ListResourceTags")?;
                let after = marker.map(|m| decode_marker(&m, "t1")).transpose()?;
                let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let items: Vec<_> =
                    a.tags.iter().filter(|(t, _)| after.as_deref().is_none_or(|m| t.as_str() > m)).collect();
                let truncated = items.len() > limit;
                let page: Vec<TagOut> = items
                    .iter()
                    .take(limit)
                    .map(|(t, v)| TagOut { tag_key: t.clone(), tag_value: v.clone() })
                    .collect();
                let next_marker = if truncated { page.last().map(|t| encode_marker("t1", &t.tag_key)) } else { None };
                to_body(&ListTagsResponse { tags: page, next_marker, truncated })
            }
            Request::GetKeyPolicy { key_id, policy_name } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "GetKeyPolicy")?;
                check_policy_name(&policy_name)?;
                let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let text = a
                    .policy
                    .as_deref()
                    .map(str::to_string)
                    .unwrap_or_else(|| policy::default_policy(&self.config.account_id));
                to_body(&PolicyResponse { policy: text, policy_name })
            }
            Request::PutKeyPolicy { key_id, policy_name, policy, bypass_lockout_check } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "PutKeyPolicy")?;
                check_policy_name(&policy_name)?;
                check_policy(&policy)?;
                if !bypass_lockout_check {
                    lockout_check(&policy, call.caller, &self.config.account_id, &k.arn)?;
                }
                self.store.put_policy(&k.r, &policy).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                Ok(empty())
            }
            Request::ListKeyPolicies { key_id, limit: _, marker } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "ListKeyPolicies")?;
                if marker.is_some() {
                    return Err(KmsError::InvalidMarker);
                }
                to_body(&ListPoliciesResponse { policy_names: ["default"], truncated: false })
            }
            Request::ListKeys { limit, marker } => {
                self.authorize_account(call, "ListKeys")?;
                self.list_keys(limit, marker)
            }
            Request::ListAliases { key_id, limit, marker } => {
                self.authorize_account(call, "ListAliases")?;
                self.list_aliases(key_id, limit, marker)
            }
            // Alias operations: the caller needs the action on the alias (identity policy) and on
            // every key the alias points at before or after (key policy and identity policy), as
            // AWS requires — otherwise moving an alias would redirect another principal's writes.
            Request::CreateAlias { alias_name, target_key_id } => {
                check_alias_name(&alias_name)?;
                self.authorize_alias(call, &alias_name, "CreateAlias")?;
                let k = self.resolve(&target_key_id, Forms::KeyOnly)?;
                auth(&k, "CreateAlias")?;
                self.store.create_alias(&alias_name, &k.r).map_err(|e| self.alias_err(e, &alias_name, &k))?;
                Ok(empty())
            }
            Request::UpdateAlias { alias_name, target_key_id } => {
                check_alias_name(&alias_name)?;
                self.authorize_alias(call, &alias_name, "UpdateAlias")?;
                let new = self.resolve(&target_key_id, Forms::KeyOnly)?;
                for _ in 0..ALIAS_ATTEMPTS {
                    let current = self.resolve(&alias_name, Forms::Any)?;
                    auth(&current, "UpdateAlias")?;
                    auth(&new, "UpdateAlias")?;
                    match self.store.update_alias(&alias_name, &new.r, Some(&current.r)) {
                        Err(envelope_keystore::Error::Changed(_)) => continue,
                        r => r.map_err(|e| self.alias_err(e, &alias_name, &new))?,
                    }
                    return Ok(empty());
                }
                Err(KmsError::Internal(format!("{alias_name} kept changing while it was being updated")))
            }
            Request::DeleteAlias { alias_name } => {
                check_alias_name(&alias_name)?;
                self.authorize_alias(call, &alias_name, "DeleteAlias")?;
                for _ in 0..ALIAS_ATTEMPTS {
                    let current = self.resolve(&alias_name, Forms::Any)?;
                    auth(&current, "DeleteAlias")?;
                    match self.store.delete_alias(&alias_name, Some(&current.r)) {
                        Err(envelope_keystore::Error::Changed(_)) => continue,
                        r => r.map_err(|e| {
                            let on = Subject::Alias { arn: &self.names.alias_arn(&alias_name), key: &alias_name };
                            KmsError::from_store(e, on)
                        })?,
                    }
                    return Ok(empty());
                }
                Err(KmsError::Internal(format!("{alias_name} kept changing while it was being deleted")))
            }
            Request::Encrypt { key_id, plaintext, context, dry_run } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                self.authorize(call, &k, "Encrypt", &context)?;
                self.usable(&k)?;
                if dry_run {
                    return Err(KmsError::DryRun);
                }
                let e = self
                    .store
                    .encrypt(&k.r, &plaintext, &context)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&EncryptResponse {
                    ciphertext_blob: b64(&e.blob),
                    key_id: k.arn,
                    encryption_algorithm: SYMMETRIC_DEFAULT,
                })
            }
            Request::Decrypt { ciphertext, context, key_id, dry_run } => {
                let d = self.decrypt(&ciphertext, &context, key_id.as_deref(), dry_run, (call, "Decrypt"))?;
                to_body(&DecryptResponse {
                    key_id: self.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string()),
                    plaintext: encode_secret(&d.plaintext),
                    encryption_algorithm: SYMMETRIC_DEFAULT,
                    key_material_id: hex::encode(d.material_id),
                })
            }
            Request::ReEncrypt {
                ciphertext,
                source_context,
                source_key_id,
                destination_key_id,
                destination_context,
                dry_run,
            } => {
                let dest = self.resolve(&destination_key_id, Forms::Any)?;
                self.authorize(call, &dest, "ReEncryptTo", &destination_context)?;
                self.usable(&dest)?;
                let d = self.decrypt(
                    &ciphertext,
                    &source_context,
                    source_key_id.as_deref(),
                    dry_run,
                    (call, "ReEncryptFrom"),
                )?;
                let e = self
                    .store
                    .encrypt(&dest.r, &d.plaintext, &destination_context)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&dest.arn)))?;
                to_body(&ReEncryptResponse {
                    ciphertext_blob: b64(&e.blob),
                    source_key_id: self.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string()),
                    key_id: dest.arn,
                    source_encryption_algorithm: SYMMETRIC_DEFAULT,
                    destination_encryption_algorithm: SYMMETRIC_DEFAULT,
                    source_key_material_id: hex::encode(d.material_id),
                    destination_key_material_id: hex::encode(e.material_id),
                })
            }
            Request::GenerateDataKey { key_id, context, len, with_plaintext, dry_run } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                let action = if with_plaintext { "GenerateDataKey" } else { "GenerateDataKeyWithoutPlaintext" };
                self.authorize(call, &k, action, &context)?;
                self.usable(&k)?;
                if dry_run {
                    return Err(KmsError::DryRun);
                }
                let key = random(len)?;
                let e = self
                    .store
                    .encrypt(&k.r, &key, &context)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&DataKeyResponse {
                    ciphertext_blob: b64(&e.blob),
                    plaintext: with_plaintext.then(|| encode_secret(&key)),
                    key_id: k.arn,
                    key_material_id: hex::encode(e.material_id),
                })
            }
            Request::GenerateRandom { len } => {
                self.authorize_account(call, "GenerateRandom")?;
                let bytes = random(len)?;
                to_body(&RandomResponse { plaintext: encode_secret(&bytes) })
            }
            Request::GetParametersForImport { key_id, algorithm, key_spec } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "GetParametersForImport")?;
                self.external_material(&k)?;
                self.not_pending(&k)?;
                let p = import::parameters(&self.store, &k.kid, algorithm, key_spec, self.clock.now())?;
                to_body(&ImportParametersResponse {
                    key_id: k.arn,
                    import_token: b64(&p.token),
                    public_key: b64(&p.public_key),
                    parameters_valid_to: p.valid_to,
                })
            }
            Request::ImportKeyMaterial { key_id, token, material, valid_to, key_material_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "ImportKeyMaterial")?;
                self.external_material(&k)?;
                self.not_pending(&k)?;
                let now = self.clock.now();
                if let Some(t) = valid_to
                    && (t <= now || t > now.saturating_add(365 * DAY))
                {
                    return Err(KmsError::Validation(
                        "ValidTo must be in the future and at most 365 days from now.".into(),
                    ));
                }
                if let Some(named) = &key_material_id {
                    // Names the key's existing material (EXISTING_KEY_MATERIAL); this server keeps
                    // one material per imported key.
                    let a = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                    if a.imported_material_id.as_ref() != Some(named) {
                        return Err(KmsError::IncorrectKeyMaterial(format!(
                            "{} has no key material with id {named}.",
                            k.arn
                        )));
                    }
                }
                let material = import::unwrap(&self.store, &k.kid, &token, &material, now)?;
                let mid = self
                    .store
                    .import_material(&k.r, &material, valid_to, now)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&ImportResponse { key_id: k.arn, key_material_id: mid })
            }
            Request::DeleteImportedKeyMaterial { key_id, key_material_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "DeleteImportedKeyMaterial")?;
                self.external_material(&k)?;
                if let Some(want) = &key_material_id {
                    let meta = self.store.describe(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                    if *want != meta.current_material_id {
                        return Err(self.names.not_found(&k.r));
                    }
                }
                let mid = self
                    .store
                    .delete_imported_material(&k.r)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&ImportResponse { key_id: k.arn, key_material_id: mid })
            }
            Request::EnableKey { key_id } => self.set_enabled(&key_id, true, call),
            Request::DisableKey { key_id } => self.set_enabled(&key_id, false, call),
            Request::RotateKeyOnDemand { key_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                auth(&k, "RotateKeyOnDemand")?;
                self.generated_material(&k)?;
                self.usable(&k)?;
                let meta = self.store.describe(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                if meta.versions.len() > MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                        k.arn
                    )));
                }
                self.store
                    .rotate_as(&k.r, envelope_keystore::RotationType::OnDemand, self.clock.now())
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                to_body(&KeyIdResponse { key_id: k.id })
            }
        }
    }

    fn set_enabled(&self, key_id: &str, enabled: bool, call: &Call<'_>) -> Result<Zeroizing<Vec<u8>>> {
        let k = self.resolve(key_id, Forms::KeyOnly)?;
        self.authorize(call, &k, if enabled { "EnableKey" } else { "DisableKey" }, &Context::new())?;
        self.not_pending(&k)?;
        self.store.set_enabled(&k.r, enabled).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
        Ok(empty())
    }

    fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        dry_run: bool,
        (call, action): (&Call<'_>, &str),
    ) -> Result<envelope_keystore::Decrypted> {
        let wanted = key_id.map(|k| self.resolve(k, Forms::Any)).transpose()?;
        let blob = envelope_keystore::blob::parse(ciphertext).map_err(|_| KmsError::InvalidCiphertext)?;
        if wanted.as_ref().is_some_and(|w| w.kid != blob.key_id) {
            return Err(KmsError::IncorrectKey(
                "The key ID in the request does not identify a KMS key that can perform this operation.".into(),
            ));
        }
        let blob_key = KeyRef::Id(uuid::Uuid::from_bytes(blob.key_id));
        let owner = match self.store.state(&blob_key) {
            Ok((kid, state)) => {
                let id = uuid::Uuid::from_bytes(kid).to_string();
                Resolved { arn: self.names.key_arn(&id), id, r: blob_key, state, kid }
            }
            // A blob naming a key this server does not have is simply an invalid ciphertext.
            Err(_) => return Err(KmsError::InvalidCiphertext),
        };
        self.authorize(call, &owner, action, context)?;
        self.usable(&owner)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        self.store.decrypt(ciphertext, context).map_err(|e| KmsError::from_store(e, Subject::Ciphertext(&owner.arn)))
    }

    fn list_keys(&self, limit: usize, marker: Option<String>) -> Result<Zeroizing<Vec<u8>>> {
        let after = marker.map(|m| decode_marker(&m, "k1")).transpose()?;
        let keys = self.store.list().map_err(|e| KmsError::from_store(e, Subject::Internal))?;
        let mut page: Vec<KeyListEntry> = Vec::new();
        let mut truncated = false;
        let mut last = None;
        for k in keys.iter().filter(|k| after.as_deref().is_none_or(|a| key_position(k).as_str() > a)) {
            if page.len() == limit {
                truncated = true;
                break;
            }
            last = Some(key_position(k));
            page.push(KeyListEntry { key_arn: self.names.key_arn(&k.key_id), key_id: k.key_id.clone() });
        }
        let next_marker = if truncated { last.map(|l| encode_marker("k1", &l)) } else { None };
        to_body(&ListKeysResponse { keys: page, next_marker, truncated })
    }

    fn list_aliases(&self, key_id: Option<String>, limit: usize, marker: Option<String>) -> Result<Zeroizing<Vec<u8>>> {
        let after = marker.map(|m| decode_marker(&m, "a1")).transpose()?;
        let only = key_id.map(|k| self.resolve(&k, Forms::KeyOnly)).transpose()?;
        let aliases = self.store.list_aliases().map_err(|e| KmsError::from_store(e, Subject::Internal))?;
        let mut page: Vec<AliasListEntry> = Vec::new();
        let mut truncated = false;
        let matching = aliases.into_iter().filter(|a| {
            only.as_ref().is_none_or(|k| k.id == a.key_id) && after.as_deref().is_none_or(|m| a.name.as_str() > m)
        });
        for a in matching {
            if page.len() == limit {
                truncated = true;
                break;
            }
            page.push(AliasListEntry {
                alias_arn: self.names.alias_arn(&a.name),
                alias_name: a.name,
                target_key_id: a.key_id,
                creation_date: a.created_at,
                last_updated_date: a.updated_at,
            });
        }
        let next_marker = if truncated { page.last().map(|a| encode_marker("a1", &a.alias_name)) } else { None };
        to_body(&ListAliasesResponse { aliases: page, next_marker, truncated })
    }

    /// Resolves a client's identifier to an existing key (NotFound in AWS's wording otherwise).
    fn resolve(&self, s: &str, forms: Forms) -> Result<Resolved> {
        let r = self.names.resolve(s, forms)?;
        let (kid, state) = self
            .store
            .state(&r)
            .map_err(|e| KmsError::from_store(e, Subject::Named { label: s, missing: self.names.not_found(&r) }))?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        Ok(Resolved { r: KeyRef::Id(uuid::Uuid::from_bytes(kid)), arn: self.names.key_arn(&id), id, state, kid })
    }

    /// Checks `kms:<action>` on key `k` for the caller: the key's policy and the caller's
    /// identity policy ([`policy::authorize`]). The key is recorded as touched either way.
    fn authorize(&self, call: &Call<'_>, k: &Resolved, action: &str, context: &Context) -> Result<()> {
        call.touched(&k.arn);
        let attrs = self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
        let p = self.policies.get(k.kid, attrs.policy.as_ref())?;
        self.decide(call, Some(&p), action, &k.arn, context)
    }

    /// Checks an account-level action (resource `*`): identity policy only, and only for
    /// principals of this server's account.
    fn authorize_account(&self, call: &Call<'_>, action: &str) -> Result<()> {
        self.decide(call, None, action, "*", &Context::new())
    }

    /// Checks an action on an alias (resource: the alias ARN): identity policy only.
    fn authorize_alias(&self, call: &Call<'_>, alias: &str, action: &str) -> Result<()> {
        self.decide(call, None, action, &self.names.alias_arn(alias), &Context::new())
    }

    fn decide(
        &self,
        call: &Call<'_>,
        key: Option<&Policy>,
        action: &str,
        resource: &str,
        context: &Context,
    ) -> Result<()> {
        let principal = call.principal();
        let q = Query { principal, action, resource, context };
        let verdict = policy::authorize(key, call.caller.identity.as_deref(), &self.config.account_id, &q);
        let kind = |s: Source| if s == Source::Resource { "a resource-based" } else { "an identity-based" };
        let denied = |why: String| {
            KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to perform: kms:{action} on resource: {resource} {why}"
            ))
        };
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::ImplicitDeny(s) => Err(denied(format!(
                "because no {} policy allows the kms:{action} action",
                if s == Source::Resource { "resource-based" } else { "identity-based" }
            ))),
            Verdict::ExplicitDeny(s) => Err(denied(format!("with an explicit deny in {} policy", kind(s)))),
        }
    }

    /// Management calls refuse keys pending deletion (spec §3.2).
    fn not_pending(&self, k: &Resolved) -> Result<()> {
        if k.state == KeyState::PendingDeletion {
            return Err(KmsError::InvalidState(format!("{} is pending deletion.", k.arn)));
        }
        Ok(())
    }

    fn usable(&self, k: &Resolved) -> Result<()> {
        match k.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!("{} is disabled.", k.arn))),
            s => Err(KmsError::InvalidState(format!("{} is {}.", k.arn, crate::error::state_words(s)))),
        }
    }

    fn is_external(&self, k: &Resolved) -> Result<bool> {
        Ok(self.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?.external)
    }

    /// Import operations apply only to keys with origin EXTERNAL (spec §5).
    fn external_material(&self, k: &Resolved) -> Result<()> {
        if self.is_external(k)? {
            Ok(())
        } else {
            Err(KmsError::UnsupportedOperation(format!(
                "{} does not have origin EXTERNAL; its key material cannot be imported.",
                k.arn
            )))
        }
    }

    /// Rotation applies only to keys with generated material (spec §3.3).
    fn generated_material(&self, k: &Resolved) -> Result<()> {
        if self.is_external(k)? {
            Err(KmsError::UnsupportedOperation(format!(
                "{} has imported key material; it cannot be rotated by this server.",
                k.arn
            )))
        } else {
            Ok(())
        }
    }

    /// A key-store error of an operation on alias `alias` that points (or is to point) at `k`.
    fn alias_err(&self, e: envelope_keystore::Error, alias: &str, k: &Resolved) -> KmsError {
        KmsError::from_store(e, Subject::Alias { arn: &self.names.alias_arn(alias), key: &k.arn })
    }

    fn metadata(&self, m: &envelope_keystore::KeyMetadata) -> KeyMetadataOut {
        let attrs = uuid::Uuid::parse_str(&m.key_id).ok().and_then(|u| self.store.attributes(&KeyRef::Id(u)).ok());
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
            pending_deletion_window_in_days: attrs.as_ref().and_then(|a| a.pending_window_days).filter(|_| pending),
            aws_account_id: self.config.account_id.clone(),
            key_id: m.key_id.clone(),
            arn: self.names.key_arn(&m.key_id),
            creation_date: m.created_at,
            enabled: m.state == KeyState::Enabled,
            description: m.description.clone(),
            key_usage: "ENCRYPT_DECRYPT",
            key_state: m.state.as_str(),
            key_manager: "CUSTOMER",
            customer_master_key_spec: SYMMETRIC_DEFAULT,
            key_spec: SYMMETRIC_DEFAULT,
            encryption_algorithms: [SYMMETRIC_DEFAULT],
            multi_region: false,
            current_key_material_id: has_material.then(|| m.current_material_id.clone()),
        }
    }
}

/// A key policy document acceptable for PutKeyPolicy / CreateKey.
/// The policy lockout safety check: refuses a policy under which the caller could not change
/// the key's policy again (unless the request sets `BypassPolicyLockoutSafetyCheck`).
fn lockout_check(policy_text: &str, caller: &Caller, account: &str, resource: &str) -> Result<()> {
    let p = policy::parse(policy_text).map_err(KmsError::MalformedPolicyDocument)?;
    let context = Context::new();
    let q = Query { principal: &caller.principal, action: "PutKeyPolicy", resource, context: &context };
    match policy::authorize(Some(&p), caller.identity.as_deref(), account, &q) {
        Verdict::Allow => Ok(()),
        Verdict::ImplicitDeny(_) | Verdict::ExplicitDeny(_) => Err(KmsError::MalformedPolicyDocument(
            "The new key policy will not allow you to update the key policy in the future.".into(),
        )),
    }
}

fn check_policy(p: &str) -> Result<()> {
    if p.len() > MAX_POLICY {
        return Err(KmsError::LimitExceeded(format!("The key policy is larger than the limit of {MAX_POLICY} bytes.")));
    }
    policy::parse(p).map(|_| ()).map_err(KmsError::MalformedPolicyDocument)
}

fn check_policy_name(name: &str) -> Result<()> {
    if name == "default" {
        Ok(())
    } else {
        Err(KmsError::NotFound(format!("Policy {name} does not exist; the only key policy name is 'default'.")))
    }
}

/// AWS's rules for alias names in CreateAlias/UpdateAlias/DeleteAlias, before the key store's.
fn check_alias_name(name: &str) -> Result<()> {
    if !name.starts_with("alias/") {
        return Err(KmsError::Validation("Alias must start with the prefix \"alias/\".".into()));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::NotAuthorized("The alias/aws/ prefix is reserved for AWS managed keys.".into()));
    }
    // Only the name is checked: Invalid (InvalidAliasName) is the only error.
    envelope_keystore::model::validate_alias(name)
        .map_err(|e| KmsError::from_store(e, Subject::Alias { arn: name, key: name }))
}

fn key_position(k: &envelope_keystore::KeyMetadata) -> String {
    // Fixed-width creation time first, so string order is (created_at, key_id) order.
    format!("{:020}:{}", k.created_at.max(0), k.key_id)
}

fn encode_marker(kind: &str, pos: &str) -> String {
    STANDARD.encode(format!("{kind}:{pos}"))
}

fn decode_marker(m: &str, kind: &str) -> Result<String> {
    let raw = STANDARD.decode(m).map_err(|_| KmsError::InvalidMarker)?;
    let s = String::from_utf8(raw).map_err(|_| KmsError::InvalidMarker)?;
    s.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).map(str::to_string).ok_or(KmsError::InvalidMarker)
}

fn random(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; len]);
    envelope_keystore::crypto::fill_random(&mut b[..]).map_err(|e| KmsError::from_store(e, Subject::Internal))?;
    Ok(b)
}

fn empty() -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Vec::new())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyMetadataOut {
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
    encryption_algorithms: [&'static str; 1],
    multi_region: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_key_material_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_to: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_deletion_window_in_days: Option<u32>,
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
struct AliasListEntry {
    alias_name: String,
    alias_arn: String,
    target_key_id: String,
    creation_date: i64,
    last_updated_date: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListAliasesResponse {
    aliases: Vec<AliasListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptResponse {
    ciphertext_blob: String,
    key_id: String,
    encryption_algorithm: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptResponse {
    key_id: String,
    plaintext: SecretB64,
    encryption_algorithm: &'static str,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptResponse {
    ciphertext_blob: String,
    source_key_id: String,
    key_id: String,
    source_encryption_algorithm: &'static str,
    destination_encryption_algorithm: &'static str,
    source_key_material_id: String,
    destination_key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyResponse {
    ciphertext_blob: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<SecretB64>,
    key_id: String,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RandomResponse {
    plaintext: SecretB64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImportParametersResponse {
    key_id: String,
    import_token: String,
    public_key: String,
    parameters_valid_to: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ImportResponse {
    key_id: String,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyIdResponse {
    key_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduleDeletionResponse {
    key_id: String,
    deletion_date: i64,
    key_state: &'static str,
    pending_window_in_days: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RotationStatusResponse {
    key_rotation_enabled: bool,
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_date: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RotationEntry {
    key_id: String,
    key_material_id: String,
    key_material_state: &'static str,
    rotation_date: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    import_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_to: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListRotationsResponse {
    rotations: Vec<RotationEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TagOut {
    tag_key: String,
    tag_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsResponse {
    tags: Vec<TagOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PolicyResponse {
    policy: String,
    policy_name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListPoliciesResponse {
    policy_names: [&'static str; 1],
    truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_reject_foreign_ones() {
        let m = encode_marker("k1", "00000000000000000001:abc");
        assert_eq!(decode_marker(&m, "k1").unwrap(), "00000000000000000001:abc");
        assert!(matches!(decode_marker(&m, "a1"), Err(KmsError::InvalidMarker)));
        assert!(matches!(decode_marker("!!!", "k1"), Err(KmsError::InvalidMarker)));
    }

    #[test]
    fn alias_name_rules() {
        assert!(check_alias_name("alias/ok").is_ok());
        assert_eq!(check_alias_name("ok").unwrap_err().aws().0, "ValidationException");
        assert_eq!(check_alias_name("alias/aws/x").unwrap_err().aws().0, "NotAuthorizedException");
        assert_eq!(check_alias_name("alias/").unwrap_err().aws().0, "InvalidAliasNameException");
        assert_eq!(check_alias_name("alias/a:b").unwrap_err().aws().0, "InvalidAliasNameException");
    }
}
