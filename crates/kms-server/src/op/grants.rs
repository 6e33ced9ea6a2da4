//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
//!
//! A grant lets its grantee principal use one key for the grant's operations, under its
//! encryption-context constraints. Grants take part in every authorization of a key
//! ([`Call::authorize`]): key policy ∪ grants ∪ identity policy, an explicit Deny in the key
//! policy or the identity policy still winning. They live in the key store's snapshot with the
//! key's other attributes, so the data plane checks them without SQL.
//!
//! This server is strongly consistent: a grant is effective as soon as CreateGrant returns.
//! Grant tokens are therefore only references: accepted (their format checked,
//! `InvalidGrantTokenException` otherwise) on every request that takes `GrantTokens`, they
//! confer nothing; RetireGrant takes one to name the grant to retire.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envelope_keystore::store::NewGrant;
use envelope_keystore::{Grant, GrantConstraints, KeySpec, KeyUsage};
use serde::Serialize;

use super::{Call, Operation, Reply, decode_marker, empty, encode_marker, not_pending};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::policy::{GrantRequest, Verdict};
use crate::protocol::{Context, Raw, Validator, shorten, unsupported_if};

/// Most grants one key may have. AWS's quota is 50,000; every grant of every key is held in
/// memory and the snapshot is rebuilt on each change, so envelope keeps it lower.
pub const MAX_GRANTS_PER_KEY: usize = 10_000;

/// Most pairs in one encryption-context constraint (AWS's limit).
const MAX_CONSTRAINT_PAIRS: usize = 8;

/// Longest encryption-context value in a constraint (AWS's limit).
const MAX_CONSTRAINT_VALUE: usize = 384;

/// Most grants in one page of ListGrants / ListRetirableGrants (AWS's documented maximum).
const MAX_PAGE: usize = 100;

/// The model's `GrantOperation` enumeration.
const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
];

/// The grant operations valid for a symmetric encryption key. All of them take an encryption
/// context, or are DescribeKey, CreateGrant and RetireGrant, to which constraints do not apply:
/// so a constraint is allowed with any of them.
const SYMMETRIC_OPERATIONS: &[&str] = &[
    "CreateGrant",
    "Decrypt",
    "DescribeKey",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "RetireGrant",
];

/// The grant operations valid for an HMAC key.
const HMAC_OPERATIONS: &[&str] = &["CreateGrant", "DescribeKey", "GenerateMac", "RetireGrant", "VerifyMac"];

/// The grant operations valid for an asymmetric signing key.
const SIGNING_OPERATIONS: &[&str] = &["CreateGrant", "DescribeKey", "GetPublicKey", "RetireGrant", "Sign", "Verify"];

/// The grant operations valid for an asymmetric (RSA) encryption key.
const ASYMMETRIC_ENCRYPTION_OPERATIONS: &[&str] = &[
    "CreateGrant",
    "Decrypt",
    "DescribeKey",
    "Encrypt",
    "GetPublicKey",
    "ReEncryptFrom",
    "ReEncryptTo",
    "RetireGrant",
];

/// The grant operations valid for a key agreement key.
const KEY_AGREEMENT_OPERATIONS: &[&str] =
    &["CreateGrant", "DeriveSharedSecret", "DescribeKey", "GetPublicKey", "RetireGrant"];

/// Checks a grant's operations against the key's spec and usage (AWS's per-key-type lists).
/// Encryption context constraints need operations that take a context: symmetric encryption
/// keys only.
pub(crate) fn check_operations(spec: KeySpec, usage: KeyUsage, operations: &[String], constrained: bool) -> Result<()> {
    let (valid, kind): (&[&str], &str) = match usage {
        KeyUsage::GenerateVerifyMac => (HMAC_OPERATIONS, "an HMAC"),
        KeyUsage::SignVerify => (SIGNING_OPERATIONS, "an asymmetric signing"),
        KeyUsage::KeyAgreement => (KEY_AGREEMENT_OPERATIONS, "a key agreement"),
        _ if spec != KeySpec::SymmetricDefault => (ASYMMETRIC_ENCRYPTION_OPERATIONS, "an asymmetric encryption"),
        _ => (SYMMETRIC_OPERATIONS, "a symmetric encryption"),
    };
    let invalid: Vec<&str> = operations.iter().map(String::as_str).filter(|o| !valid.contains(o)).collect();
    if !invalid.is_empty() {
        return Err(KmsError::Validation(format!(
            "The grant operations {} are not valid for {kind} KMS key.",
            invalid.join(", ")
        )));
    }
    if constrained && spec != KeySpec::SymmetricDefault {
        return Err(KmsError::Validation(format!(
            "Encryption context grant constraints are not valid for {kind} KMS key: its operations take no \
             encryption context."
        )));
    }
    Ok(())
}

/// The first bytes of every grant token this server issues.
const TOKEN_TAG: &[u8; 4] = b"egt1";
/// Tag, grant id (32 bytes), random nonce (16 bytes: every token is unique).
const TOKEN_LEN: usize = 4 + 32 + 16;

/// A validated grant request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    CreateGrant {
        key_id: String,
        grantee: String,
        retiring: Option<String>,
        operations: Vec<String>,
        constraints: Option<GrantConstraints>,
        name: Option<String>,
        dry_run: bool,
    },
    ListGrants {
        key_id: String,
        grant_id: Option<String>,
        grantee: Option<String>,
        limit: usize,
        marker: Option<String>,
    },
    ListRetirableGrants {
        retiring: String,
        limit: usize,
        marker: Option<String>,
    },
    RetireGrant {
        target: RetireTarget,
        dry_run: bool,
    },
    RevokeGrant {
        key_id: String,
        grant_id: String,
        dry_run: bool,
    },
}

/// How RetireGrant names its grant.
#[derive(Debug)]
pub enum RetireTarget {
    /// By a grant token (the grant id it carries).
    Token(String),
    /// By key and grant id.
    Id {
        /// The key id or ARN.
        key_id: String,
        /// The grant id.
        grant_id: String,
    },
}

/// A new grant token for grant `grant_id` (64 hex characters).
pub(crate) fn issue_token(grant_id: &str) -> Result<String> {
    let mut raw = Vec::with_capacity(TOKEN_LEN);
    raw.extend_from_slice(TOKEN_TAG);
    raw.extend_from_slice(&hex::decode(grant_id).map_err(|_| KmsError::Internal("malformed grant id".into()))?);
    let mut nonce = [0u8; 16];
    envelope_keystore::crypto::fill_random(&mut nonce).map_err(|e| KmsError::from_store(e, Subject::Internal))?;
    raw.extend_from_slice(&nonce);
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// The grant id a token of this server carries; `None` for anything else.
pub(crate) fn token_grant_id(token: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    (raw.len() == TOKEN_LEN && raw.starts_with(TOKEN_TAG)).then(|| hex::encode(&raw[4..36]))
}

/// Whether `s` has the form of a grant id this server issues (64 lowercase hex characters).
pub(crate) fn valid_grant_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `principal` may retire `g` on the grant's own terms: its retiring principal, its
/// grantee if the grant includes RetireGrant, or the account that created it (its root).
pub(crate) fn may_retire(g: &Grant, principal: &str) -> bool {
    g.retiring.as_deref() == Some(principal)
        || (g.grantee == principal && g.operations.iter().any(|o| o == "RetireGrant"))
        || g.issuing_account == principal
}

/// Whether grant `parent` (of the caller) lets it create a grant with `operations` and
/// `constraints`: the parent includes CreateGrant, the new operations are among the parent's,
/// and the new constraints are at least as strict as the parent's.
pub(crate) fn may_create_from(parent: &Grant, operations: &[String], constraints: Option<&GrantConstraints>) -> bool {
    parent.operations.iter().any(|o| o == "CreateGrant")
        && operations.iter().all(|o| parent.operations.contains(o))
        && parent.constraints.as_ref().is_none_or(|p| p.covers(constraints))
}

impl Validator {
    /// A `PrincipalIdType` member: 1 to 256 characters of `[\w+=,.@:/-]`.
    fn principal(&mut self, member: &str, p: &str) {
        self.len(member, p, 1, 256);
        if !p.is_empty() && p.chars().count() <= 256 {
            self.pattern(member, p, "^[\\w+=,.@:/-]+$", |c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | ':' | '/' | '-')
            });
        }
    }

    fn grant_name(&mut self, n: &str) {
        self.len("name", n, 1, 256);
        if !n.is_empty() && n.chars().count() <= 256 {
            self.pattern("name", n, "^[a-zA-Z0-9:/_-]+$", |c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '_' | '-')
            });
        }
    }

    fn grant_id(&mut self, g: &str) {
        self.len("grantId", g, 1, 128);
    }
}

/// A principal must be an ARN (`arn:partition:service:region:account:resource`).
fn arn_principal(p: &str) -> Result<()> {
    if p.starts_with("arn:") && p.split(':').count() >= 6 {
        return Ok(());
    }
    Err(KmsError::InvalidArn(format!("The principal {} is not a valid ARN.", shorten(p))))
}

fn grant_id_form(g: &str) -> Result<()> {
    if valid_grant_id(g) {
        return Ok(());
    }
    Err(KmsError::InvalidGrantId(format!("Invalid grant ID {}.", shorten(g))))
}

fn constraint_pairs(member: &str, c: &Option<Context>) -> Result<()> {
    let Some(c) = c else { return Ok(()) };
    if c.len() > MAX_CONSTRAINT_PAIRS {
        return Err(KmsError::Validation(format!(
            "{member} may hold at most {MAX_CONSTRAINT_PAIRS} encryption context pairs."
        )));
    }
    if c.values().any(|v| v.chars().count() > MAX_CONSTRAINT_VALUE) {
        return Err(KmsError::Validation(format!(
            "An encryption context value in {member} is longer than {MAX_CONSTRAINT_VALUE} characters."
        )));
    }
    Ok(())
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    let dry_run = raw.dry_run.unwrap_or(false);
    Ok(match op {
        Operation::CreateGrant => {
            unsupported_if(
                raw.grantee_service_principal.is_some() || raw.retiring_service_principal.is_some(),
                "Service principals are not supported by this server.",
            )?;
            unsupported_if(
                raw.constraints.as_ref().is_some_and(|c| c.source_arn.is_some()),
                "The SourceArn grant constraint is not supported by this server.",
            )?;
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let grantee = v.required("granteePrincipal", raw.grantee_principal.clone());
            if let Some(g) = &grantee {
                v.principal("granteePrincipal", g);
            }
            if let Some(r) = &raw.retiring_principal {
                v.principal("retiringPrincipal", r);
            }
            let operations = v.required("operations", raw.operations.clone());
            for o in operations.iter().flatten() {
                v.one_of("operations.member", o, GRANT_OPERATIONS);
            }
            if let Some(n) = &raw.name {
                v.grant_name(n);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            let operations = operations.unwrap_or_default();
            if operations.is_empty() {
                return Err(KmsError::Validation(
                    "1 validation error detected: Value '[]' at 'operations' failed to satisfy constraint: Member \
                     must have length greater than or equal to 1"
                        .into(),
                ));
            }
            let grantee = grantee.unwrap_or_default();
            arn_principal(&grantee)?;
            if let Some(r) = &raw.retiring_principal {
                arn_principal(r)?;
            }
            let constraints = match &raw.constraints {
                None => None,
                Some(c) => {
                    constraint_pairs("EncryptionContextEquals", &c.encryption_context_equals)?;
                    constraint_pairs("EncryptionContextSubset", &c.encryption_context_subset)?;
                    let c = GrantConstraints {
                        encryption_context_equals: c.encryption_context_equals.clone(),
                        encryption_context_subset: c.encryption_context_subset.clone(),
                    };
                    (!c.is_empty()).then_some(c)
                }
            };
            Request::CreateGrant {
                key_id: key_id.unwrap_or_default(),
                grantee,
                retiring: raw.retiring_principal.clone(),
                operations,
                constraints,
                name: raw.name.clone(),
                dry_run,
            }
        }
        Operation::ListGrants => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            if let Some(g) = &raw.grant_id {
                v.grant_id(g);
            }
            if let Some(g) = &raw.grantee_principal {
                v.principal("granteePrincipal", g);
            }
            let limit = v.limit(raw.limit, 1000, 50);
            let marker = v.marker(raw.marker.clone());
            v.finish()?;
            unsupported_if(
                raw.grantee_service_principal.is_some(),
                "Service principals are not supported by this server.",
            )?;
            if let Some(g) = &raw.grant_id {
                grant_id_form(g)?;
            }
            Request::ListGrants {
                key_id: key_id.unwrap_or_default(),
                grant_id: raw.grant_id.clone(),
                grantee: raw.grantee_principal.clone(),
                limit: limit.min(MAX_PAGE),
                marker,
            }
        }
        Operation::ListRetirableGrants => {
            unsupported_if(
                raw.retiring_service_principal.is_some(),
                "Service principals are not supported by this server.",
            )?;
            let retiring = v.required("retiringPrincipal", raw.retiring_principal.clone());
            if let Some(r) = &retiring {
                v.principal("retiringPrincipal", r);
            }
            let limit = v.limit(raw.limit, 1000, 50);
            let marker = v.marker(raw.marker.clone());
            v.finish()?;
            let retiring = retiring.unwrap_or_default();
            arn_principal(&retiring)?;
            Request::ListRetirableGrants { retiring, limit: limit.min(MAX_PAGE), marker }
        }
        Operation::RetireGrant => {
            if let Some(t) = &raw.grant_token {
                v.len("grantToken", t, 1, 8192);
            }
            if let Some(k) = &raw.key_id {
                v.len("keyId", k, 1, 2048);
            }
            if let Some(g) = &raw.grant_id {
                v.grant_id(g);
            }
            v.finish()?;
            let target = match (&raw.grant_token, &raw.key_id, &raw.grant_id) {
                (Some(t), _, _) => RetireTarget::Token(
                    token_grant_id(t)
                        .ok_or_else(|| KmsError::InvalidGrantToken("The grant token is not valid.".into()))?,
                ),
                (None, Some(k), Some(g)) => {
                    grant_id_form(g)?;
                    RetireTarget::Id { key_id: k.clone(), grant_id: g.clone() }
                }
                _ => {
                    return Err(KmsError::Validation(
                        "Specify either a GrantToken, or both a KeyId and a GrantId.".into(),
                    ));
                }
            };
            Request::RetireGrant { target, dry_run }
        }
        // RevokeGrant.
        _ => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let grant_id = v.required("grantId", raw.grant_id.clone());
            if let Some(g) = &grant_id {
                v.grant_id(g);
            }
            v.finish()?;
            let grant_id = grant_id.unwrap_or_default();
            grant_id_form(&grant_id)?;
            Request::RevokeGrant { key_id: key_id.unwrap_or_default(), grant_id, dry_run }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    let principal = call.caller().principal.as_str();
    let no_context = Context::new();
    match req {
        Request::CreateGrant { key_id, grantee, retiring, operations, constraints, name, dry_run } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            check_operations(k.spec, k.usage, &operations, constraints.is_some())?;
            let wanted = GrantRequest { operations: &operations, grantee: &grantee, retiring: retiring.as_deref() };
            let (verdict, attrs) = call.key_verdict(&k, "CreateGrant", &no_context, Some(&wanted))?;
            // A grant with CreateGrant allows passing on no more than it has (never against an
            // explicit Deny).
            let by_grant = matches!(verdict, Verdict::ImplicitDeny(_))
                && attrs.grants.iter().any(|g| {
                    may_create_from(g, &operations, constraints.as_ref())
                        && call.is_grantee(g, "CreateGrant", &k.arn, &no_context)
                });
            if !by_grant {
                call.verdict_result(verdict, "CreateGrant", &k.arn)?;
            }
            not_pending(&k)?;
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let new = NewGrant {
                name,
                grantee,
                retiring,
                issuing_account: format!("arn:aws:iam::{}:root", s.config.account_id),
                operations,
                constraints,
            };
            let grant_id = s
                .store
                .create_grant(&k.r, new, MAX_GRANTS_PER_KEY)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = CreateGrantResponse { grant_token: issue_token(&grant_id)?, grant_id };
            let mut reply = call.reply(&resp)?;
            // The audit record shows the grant id, not the token.
            if let Some(serde_json::Value::Object(m)) = &mut reply.elements {
                m.remove("GrantToken");
            }
            reply.key_arn = Some(k.arn.clone());
            Ok(reply)
        }
        Request::ListGrants { key_id, grant_id, grantee, limit, marker } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            let (verdict, attrs) = call.key_verdict(&k, "ListGrants", &no_context, None)?;
            call.verdict_result(verdict, "ListGrants", &k.arn)?;
            let after = marker.map(|m| position(&m)).transpose()?;
            let items: Vec<&Grant> = attrs
                .grants
                .iter()
                .map(|g| &**g)
                .filter(|g| grant_id.as_deref().is_none_or(|id| g.grant_id == id))
                .filter(|g| grantee.as_deref().is_none_or(|p| g.grantee == p))
                .collect();
            call.reply(&page(call, items, after, limit))
        }
        Request::ListRetirableGrants { retiring, limit, marker } => {
            call.authorize_account("ListRetirableGrants")?;
            let after = marker.map(|m| position(&m)).transpose()?;
            let all = s.store.all_grants();
            let items: Vec<&Grant> =
                all.iter().map(|g| &**g).filter(|g| g.retiring.as_deref() == Some(retiring.as_str())).collect();
            call.reply(&page(call, items, after, limit))
        }
        Request::RetireGrant { target, dry_run } => {
            let (grant, k) = match target {
                RetireTarget::Token(grant_id) => {
                    let g = s.store.grant(&grant_id).ok_or_else(|| grant_not_found(&grant_id))?;
                    let kid = uuid::Uuid::parse_str(&g.key_id)
                        .map_err(|_| KmsError::Internal("malformed key id of a grant".into()))?;
                    let k = call.owner(*kid.as_bytes()).ok_or_else(|| grant_not_found(&grant_id))?;
                    (g, k)
                }
                RetireTarget::Id { key_id, grant_id } => {
                    let k = call.resolve(&key_id, Forms::KeyOnly)?;
                    let g = s
                        .store
                        .grant(&grant_id)
                        .filter(|g| g.key_id == k.id)
                        .ok_or_else(|| grant_not_found(&grant_id))?;
                    (g, k)
                }
            };
            let (verdict, _) = call.key_verdict(&k, "RetireGrant", &no_context, None)?;
            // The grant says who may retire it; a policy allowing kms:RetireGrant on the key
            // does too; an explicit Deny wins over both.
            let by_grant = matches!(verdict, Verdict::ImplicitDeny(_))
                && (may_retire(&grant, principal)
                    || (grant.operations.iter().any(|o| o == "RetireGrant")
                        && call.is_grantee(&grant, "RetireGrant", &k.arn, &no_context)));
            if !by_grant {
                call.verdict_result(verdict, "RetireGrant", &k.arn)?;
            }
            if dry_run {
                return Err(KmsError::DryRun);
            }
            delete(call, &k, &grant.grant_id)
        }
        Request::RevokeGrant { key_id, grant_id, dry_run } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "RevokeGrant")?;
            if s.store.grant(&grant_id).is_none_or(|g| g.key_id != k.id) {
                return Err(grant_not_found(&grant_id));
            }
            if dry_run {
                return Err(KmsError::DryRun);
            }
            delete(call, &k, &grant_id)
        }
    }
}

fn delete(call: &Call<'_>, k: &super::Resolved, grant_id: &str) -> Result<Reply> {
    match call.server().store.delete_grant(&k.r, grant_id) {
        Ok(()) => empty(),
        Err(envelope_keystore::Error::NotFound(_)) => Err(grant_not_found(grant_id)),
        Err(e) => Err(KmsError::from_store(e, Subject::Key(&k.arn))),
    }
}

fn grant_not_found(grant_id: &str) -> KmsError {
    KmsError::NotFound(format!("Grant ID {} not found.", shorten(grant_id)))
}

/// A list position: the creation time and grant id of the last grant of the previous page.
fn position(marker: &str) -> Result<(i64, String)> {
    let pos = decode_marker(marker, "g1")?;
    let (at, id) = pos.split_once('/').ok_or(KmsError::InvalidMarker)?;
    Ok((at.parse().map_err(|_| KmsError::InvalidMarker)?, id.to_string()))
}

fn page(call: &Call<'_>, mut items: Vec<&Grant>, after: Option<(i64, String)>, limit: usize) -> ListGrantsResponse {
    items.sort_by(|a, b| (a.created_at, &a.grant_id).cmp(&(b.created_at, &b.grant_id)));
    let rest: Vec<&Grant> = items
        .into_iter()
        .filter(|g| after.as_ref().is_none_or(|(at, id)| (g.created_at, &g.grant_id) > (*at, id)))
        .collect();
    let truncated = rest.len() > limit;
    let shown = &rest[..rest.len().min(limit)];
    let next_marker = if truncated {
        shown.last().map(|g| encode_marker("g1", &format!("{}/{}", g.created_at, g.grant_id)))
    } else {
        None
    };
    let names = call.server().names();
    let grants = shown
        .iter()
        .map(|g| GrantEntry {
            key_id: names.key_arn(&g.key_id),
            grant_id: g.grant_id.clone(),
            name: g.name.clone(),
            creation_date: g.created_at,
            grantee_principal: g.grantee.clone(),
            retiring_principal: g.retiring.clone(),
            issuing_account: g.issuing_account.clone(),
            operations: g.operations.clone(),
            constraints: g.constraints.clone(),
        })
        .collect();
    ListGrantsResponse { grants, next_marker, truncated }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CreateGrantResponse {
    grant_token: String,
    grant_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GrantEntry {
    key_id: String,
    grant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    creation_date: i64,
    grantee_principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retiring_principal: Option<String>,
    issuing_account: String,
    operations: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    constraints: Option<GrantConstraints>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListGrantsResponse {
    grants: Vec<GrantEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(ops: &[&str], retiring: Option<&str>, c: Option<GrantConstraints>) -> Grant {
        Grant {
            grant_id: "a".repeat(64),
            key_id: "k".into(),
            name: None,
            grantee: "arn:aws:iam::111122223333:user/app".into(),
            retiring: retiring.map(str::to_string),
            issuing_account: "arn:aws:iam::111122223333:root".into(),
            operations: ops.iter().map(|o| o.to_string()).collect(),
            constraints: c,
            created_at: 1,
        }
    }

    fn ops(o: &[&str]) -> Vec<String> {
        o.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn who_may_retire() {
        let app = "arn:aws:iam::111122223333:user/app";
        let admin = "arn:aws:iam::111122223333:user/admin";
        let mallory = "arn:aws:iam::111122223333:user/mallory";
        let g = grant(&["Decrypt"], Some(admin), None);
        assert!(may_retire(&g, admin), "the retiring principal");
        assert!(!may_retire(&g, app), "the grantee, without RetireGrant in the grant");
        assert!(!may_retire(&g, mallory));
        assert!(may_retire(&g, "arn:aws:iam::111122223333:root"), "the account that created it");
        assert!(!may_retire(&g, "arn:aws:iam::999999999999:root"));
        let g = grant(&["Decrypt", "RetireGrant"], None, None);
        assert!(may_retire(&g, app), "the grantee, with RetireGrant");
        assert!(!may_retire(&g, mallory));
    }

    #[test]
    fn a_grantee_passes_on_no_more_than_it_has() {
        let subset = GrantConstraints {
            encryption_context_subset: Some([("app".to_string(), "web".to_string())].into()),
            ..GrantConstraints::default()
        };
        let parent = grant(&["CreateGrant", "Decrypt", "Encrypt"], None, Some(subset.clone()));
        assert!(may_create_from(&parent, &ops(&["Decrypt"]), Some(&subset)));
        assert!(may_create_from(&parent, &ops(&["Decrypt", "CreateGrant"]), Some(&subset)));
        assert!(!may_create_from(&parent, &ops(&["Decrypt", "ReEncryptFrom"]), Some(&subset)), "more operations");
        assert!(!may_create_from(&parent, &ops(&["Decrypt", "RetireGrant"]), Some(&subset)));
        assert!(!may_create_from(&parent, &ops(&["Decrypt"]), None), "a looser constraint");
        let stricter = GrantConstraints {
            encryption_context_equals: Some(
                [("app".to_string(), "web".to_string()), ("x".to_string(), "1".to_string())].into(),
            ),
            ..GrantConstraints::default()
        };
        assert!(may_create_from(&parent, &ops(&["Encrypt"]), Some(&stricter)));
        let no_create = grant(&["Decrypt", "Encrypt"], None, None);
        assert!(!may_create_from(&no_create, &ops(&["Decrypt"]), None), "no CreateGrant in the grant");
    }

    #[test]
    fn tokens_carry_their_grant_id() {
        let id = "0123456789abcdef".repeat(4);
        let t1 = issue_token(&id).unwrap();
        let t2 = issue_token(&id).unwrap();
        assert_ne!(t1, t2, "every token is unique");
        assert_eq!(token_grant_id(&t1).as_deref(), Some(id.as_str()));
        assert_eq!(token_grant_id(&t2).as_deref(), Some(id.as_str()));
        for bad in ["", "x", "not a token", &t1[1..], &format!("{t1}A"), &URL_SAFE_NO_PAD.encode([0u8; TOKEN_LEN])] {
            assert_eq!(token_grant_id(bad), None, "{bad}");
        }
        assert!(valid_grant_id(&id));
        assert!(!valid_grant_id(&id.to_uppercase()));
        assert!(!valid_grant_id(&id[1..]));
    }

    #[test]
    fn grant_operations_follow_the_key_usage() {
        let ops = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let code = |r: Result<()>| r.err().map(|e| e.aws().0);
        assert_eq!(
            code(check_operations(
                KeySpec::SymmetricDefault,
                KeyUsage::EncryptDecrypt,
                &ops(&["Decrypt", "GenerateDataKey"]),
                true
            )),
            None
        );
        assert_eq!(
            code(check_operations(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, &ops(&["Sign"]), false)),
            Some("ValidationException")
        );
        assert_eq!(
            code(check_operations(
                KeySpec::Hmac256,
                KeyUsage::GenerateVerifyMac,
                &ops(&["GenerateMac", "VerifyMac"]),
                false
            )),
            None
        );
        assert_eq!(
            code(check_operations(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac, &ops(&["Decrypt"]), false)),
            Some("ValidationException")
        );
        assert_eq!(
            code(check_operations(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac, &ops(&["GenerateMac"]), true)),
            Some("ValidationException")
        );
        assert_eq!(
            code(check_operations(
                KeySpec::EccNistP256,
                KeyUsage::SignVerify,
                &ops(&["Sign", "Verify", "GetPublicKey"]),
                false
            )),
            None
        );
        assert_eq!(
            code(check_operations(KeySpec::EccNistP256, KeyUsage::SignVerify, &ops(&["GenerateMac"]), false)),
            Some("ValidationException")
        );
        let rsa = |o: &[&str], c| code(check_operations(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, &ops(o), c));
        assert_eq!(
            rsa(&["Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey", "DescribeKey"], false),
            None
        );
        assert_eq!(rsa(&["GenerateDataKey"], false), Some("ValidationException"), "no data keys from RSA keys");
        assert_eq!(rsa(&["Decrypt"], true), Some("ValidationException"), "no context: no constraint");
        assert_eq!(
            code(check_operations(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, &ops(&["GetPublicKey"]), false)),
            Some("ValidationException")
        );
        let ecdh = |o: &[&str], c| code(check_operations(KeySpec::EccNistP384, KeyUsage::KeyAgreement, &ops(o), c));
        assert_eq!(
            ecdh(&["DeriveSharedSecret", "GetPublicKey", "DescribeKey", "CreateGrant", "RetireGrant"], false),
            None
        );
        assert_eq!(ecdh(&["Sign"], false), Some("ValidationException"));
        assert_eq!(ecdh(&["DeriveSharedSecret"], true), Some("ValidationException"));
        assert_eq!(
            code(check_operations(KeySpec::EccNistP256, KeyUsage::SignVerify, &ops(&["DeriveSharedSecret"]), false)),
            Some("ValidationException")
        );
    }

    #[test]
    fn requests_are_validated() {
        let parse_body = |op, body: &str| parse(op, &Raw::from_body(body.as_bytes()).unwrap());
        let code = |r: Result<Request>| r.err().map(|e| e.aws().0);
        let key = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let app = "arn:aws:iam::111122223333:user/app";
        let ok = format!(r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":["Decrypt"]}}"#);
        assert!(parse_body(Operation::CreateGrant, &ok).is_ok());
        for (body, want) in [
            (format!(r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":[]}}"#), "ValidationException"),
            (format!(r#"{{"KeyId":"{key}","GranteePrincipal":"{app}"}}"#), "ValidationException"),
            (format!(r#"{{"KeyId":"{key}","Operations":["Decrypt"]}}"#), "ValidationException"),
            (format!(r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":["Nope"]}}"#), "ValidationException"),
            (
                format!(r#"{{"KeyId":"{key}","GranteePrincipal":"bob","Operations":["Decrypt"]}}"#),
                "InvalidArnException",
            ),
            (
                format!(r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":["Decrypt"],"Name":"a b"}}"#),
                "ValidationException",
            ),
            (
                format!(
                    r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":["Decrypt"],"GrantTokens":["zz"]}}"#
                ),
                "InvalidGrantTokenException",
            ),
            (
                format!(
                    r#"{{"KeyId":"{key}","GranteePrincipal":"{app}","Operations":["Decrypt"],"Constraints":{{"SourceArn":"arn:x"}}}}"#
                ),
                "UnsupportedOperationException",
            ),
        ] {
            assert_eq!(code(parse_body(Operation::CreateGrant, &body)), Some(want), "{body}");
        }
        assert_eq!(code(parse_body(Operation::RetireGrant, "{}")), Some("ValidationException"));
        assert_eq!(
            code(parse_body(Operation::RetireGrant, r#"{"GrantToken":"abc"}"#)),
            Some("InvalidGrantTokenException")
        );
        assert_eq!(
            code(parse_body(Operation::RevokeGrant, &format!(r#"{{"KeyId":"{key}","GrantId":"nope"}}"#))),
            Some("InvalidGrantIdException")
        );
        assert_eq!(
            code(parse_body(Operation::ListGrants, &format!(r#"{{"KeyId":"{key}","GrantId":"nope"}}"#))),
            Some("InvalidGrantIdException")
        );
    }
}
