//! Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies; the document checks CreateKey
//! shares (size, grammar, the lockout safety check).

use serde::Serialize;

use super::{Call, Operation, Reply, empty};
use crate::Caller;
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::policy::{self, Query, Verdict};
use crate::protocol::{Context, MAX_POLICY, Raw, Validator, shorten};

/// A validated key-policy request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    GetKeyPolicy { key_id: String, policy_name: String },
    ListKeyPolicies { key_id: String, limit: usize, marker: Option<String> },
    PutKeyPolicy { key_id: String, policy_name: String, policy: String, bypass_lockout_check: bool },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    let key_id = v.key_id("keyId", raw.key_id.clone()).unwrap_or_default();
    if op == Operation::ListKeyPolicies {
        let limit = v.limit(raw.limit, 1000, 100);
        let marker = v.marker(raw.marker.clone());
        if let Some(m) = &raw.include_key_material {
            v.one_of("includeKeyMaterial", m, &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]);
        }
        v.finish()?;
        return Ok(Request::ListKeyPolicies { key_id, limit, marker });
    }
    let policy_name = raw.policy_name.clone().unwrap_or_else(|| "default".into());
    v.len("policyName", &policy_name, 1, 128);
    if !policy_name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        v.errors.push(format!(
            "Value '{}' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w]+",
            shorten(&policy_name)
        ));
    }
    if op == Operation::GetKeyPolicy {
        v.finish()?;
        return Ok(Request::GetKeyPolicy { key_id, policy_name });
    }
    let policy = v.required("policy", raw.policy.clone());
    if let Some(p) = &policy {
        v.len("policy", p, 1, 131_072);
    }
    v.finish()?;
    Ok(Request::PutKeyPolicy {
        key_id,
        policy_name,
        policy: policy.unwrap_or_default(),
        bypass_lockout_check: raw.bypass_policy_lockout_safety_check == Some(true),
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::GetKeyPolicy { key_id, policy_name } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "GetKeyPolicy")?;
            check_policy_name(&policy_name)?;
            let a = call.attributes(&k)?;
            let text =
                a.policy.as_deref().map(str::to_string).unwrap_or_else(|| policy::default_policy(&s.config.account_id));
            call.reply(&PolicyResponse { policy: text, policy_name })
        }
        Request::PutKeyPolicy { key_id, policy_name, policy, bypass_lockout_check } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "PutKeyPolicy")?;
            check_policy_name(&policy_name)?;
            check_policy(&policy)?;
            if !bypass_lockout_check {
                lockout_check(&policy, call.caller(), &s.config.account_id, &k.arn)?;
            }
            s.store.put_policy(&k.r, &policy).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::ListKeyPolicies { key_id, limit: _, marker } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "ListKeyPolicies")?;
            if marker.is_some() {
                return Err(KmsError::InvalidMarker);
            }
            call.reply(&ListPoliciesResponse { policy_names: ["default"], truncated: false })
        }
    }
}

/// The policy lockout safety check: refuses a policy under which the caller could not change
/// the key's policy again (unless the request sets `BypassPolicyLockoutSafetyCheck`).
pub(super) fn lockout_check(policy_text: &str, caller: &Caller, account: &str, resource: &str) -> Result<()> {
    let p = policy::parse(policy_text).map_err(KmsError::MalformedPolicyDocument)?;
    let context = Context::new();
    let q = Query { principal: &caller.principal, action: "PutKeyPolicy", resource, context: &context, grant: None };
    match policy::authorize(Some(&p), caller.identity.as_deref(), account, &q) {
        Verdict::Allow => Ok(()),
        Verdict::ImplicitDeny(_) | Verdict::ExplicitDeny(_) => Err(KmsError::MalformedPolicyDocument(
            "The new key policy will not allow you to update the key policy in the future.".into(),
        )),
    }
}

/// A key policy document acceptable for PutKeyPolicy / CreateKey.
pub(super) fn check_policy(p: &str) -> Result<()> {
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
