//! Key policies: a strict parser for the subset of the IAM policy language this server
//! evaluates, and the evaluation itself — pure functions, no I/O.
//!
//! Supported: `Effect` Allow/Deny; `Principal` `"*"` or `{"AWS": ARN | account id | "*" | [...]}`
//! (an account root — exactly `arn:aws:iam::<12 digits>:root` — or a bare account id means the
//! account); `Action` with `*`/`?` wildcards (`kms:*`, `kms:Encrypt*`); `Resource` patterns
//! (normally `*` in key policies, key or alias ARNs in identity policies); `Condition`
//! `StringEquals`/`StringLike` (and their `IfExists` and `ForAllValues:`/`ForAnyValue:` forms) on
//! `kms:EncryptionContext:<key>`, `kms:CallerAccount` and the grant keys `kms:GrantOperations`,
//! `kms:GranteePrincipal`, `kms:RetiringPrincipal`; `Bool` on `kms:GrantIsForAWSResource` (always
//! false here). Anything else (`NotAction`, `NotPrincipal`, other operators or condition
//! keys) is rejected as malformed rather than silently mis-evaluated.
//!
//! Two kinds of documents use this syntax: **key policies** (resource-based, with `Principal`)
//! and **identity policies** (attached to a credential, without `Principal`). [`authorize`]
//! combines them as AWS KMS does: an explicit Deny in either wins; a key-policy statement that
//! names the caller (or `*`) allows on its own; a statement that names the caller's *account*
//! (its root or its id) delegates to the caller's identity policy, which must then allow too.

use std::collections::BTreeMap;

use serde_json::Value;

/// The default key policy: the account's root, i.e. every principal of the account, may do
/// everything (AWS's default for keys created without a policy).
pub fn default_policy(account: &str) -> String {
    format!(
        "{{\"Version\":\"2012-10-17\",\"Id\":\"key-default-1\",\"Statement\":[{{\"Sid\":\"Enable IAM User Permissions\",\
         \"Effect\":\"Allow\",\"Principal\":{{\"AWS\":\"arn:aws:iam::{account}:root\"}},\"Action\":\"kms:*\",\"Resource\":\"*\"}}]}}"
    )
}

/// A parsed key policy or identity policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// Which kind of document is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A key policy: every statement names its `Principal`.
    Key,
    /// An identity policy: statements apply to the credential they are attached to; no `Principal`.
    Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    allow: bool,
    principals: Vec<String>,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    like: bool,
    if_exists: bool,
    /// `ForAllValues:` / `ForAnyValue:` (multi-valued keys: kms:GrantOperations).
    set: SetOp,
    /// `Bool`: values compared as `true`/`false`, case-insensitively.
    boolean: bool,
    /// Lower-cased condition key.
    key: String,
    values: Vec<String>,
}

/// How a condition compares a multi-valued key's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    /// No set operator: any value of the key must match (and the key must be present).
    Single,
    /// `ForAllValues:`: every value must match (true when the key is absent).
    All,
    /// `ForAnyValue:`: some value must match.
    Any,
}

/// The grant a CreateGrant request would make: the values of the grant condition keys
/// (`kms:GrantOperations`, `kms:GranteePrincipal`, `kms:RetiringPrincipal`).
#[derive(Debug, Clone, Copy)]
pub struct GrantRequest<'a> {
    /// The grant's operations.
    pub operations: &'a [String],
    /// Its grantee principal.
    pub grantee: &'a str,
    /// Its retiring principal, if any.
    pub retiring: Option<&'a str>,
}

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The caller's principal ARN.
    pub principal: &'a str,
    /// The action: a KMS operation without prefix (`Encrypt`, meaning `kms:Encrypt`), or another
    /// service's action with its prefix (`cloudtrail:LookupEvents`).
    pub action: &'a str,
    /// The key ARN.
    pub resource: &'a str,
    /// The encryption context of the request (empty if none).
    pub context: &'a BTreeMap<String, String>,
    /// For CreateGrant: the grant it would make (the grant condition keys' values).
    pub grant: Option<&'a GrantRequest<'a>>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An Allow statement matched and no Deny did.
    Allow,
    /// No statement allowed it.
    ImplicitDeny,
    /// A Deny statement matched.
    ExplicitDeny,
}

/// Parses a key policy document. Never panics; the error is a client-facing message.
pub fn parse(text: &str) -> Result<Policy, String> {
    parse_kind(text, Kind::Key)
}

/// Parses an identity policy (a credential's policy: no `Principal`, a `Resource` per
/// statement). Never panics; the error names what is wrong.
pub fn parse_identity(text: &str) -> Result<Policy, String> {
    parse_kind(text, Kind::Identity)
}

/// The identity policy of an administrator: every KMS action on every resource, and the search
/// of the audit history (`cloudtrail:LookupEvents`).
pub const ADMIN_IDENTITY_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:*","cloudtrail:LookupEvents"],"Resource":"*"}]}"#;

fn parse_kind(text: &str, kind: Kind) -> Result<Policy, String> {
    let v: Value = serde_json::from_str(text).map_err(|_| "The policy is not valid JSON.".to_string())?;
    let obj = v.as_object().ok_or("The policy must be a JSON object.")?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
            return Err(format!("Unsupported policy element {k}."));
        }
    }
    if obj.get("Version").is_some_and(|v| !matches!(v.as_str(), Some("2012-10-17" | "2008-10-17"))) {
        return Err("The policy Version must be 2012-10-17.".into());
    }
    let stmts = match obj.get("Statement") {
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect::<Vec<_>>(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => return Err("The policy must have at least one Statement.".into()),
    };
    let statements = stmts.into_iter().map(|s| statement(s, kind)).collect::<Result<Vec<_>, _>>()?;
    Ok(Policy { statements })
}

fn statement(v: &Value, kind: Kind) -> Result<Statement, String> {
    let o = v.as_object().ok_or("Each Statement must be a JSON object.")?;
    for k in o.keys() {
        if !matches!(k.as_str(), "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition") {
            return Err(format!("Unsupported statement element {k}."));
        }
    }
    if o.get("Sid").is_some_and(|s| !s.is_string()) {
        return Err("Sid must be a string.".into());
    }
    let allow = match o.get("Effect").and_then(Value::as_str) {
        Some("Allow") => true,
        Some("Deny") => false,
        _ => return Err("Effect must be Allow or Deny.".into()),
    };
    let principals = match o.get("Principal") {
        Some(_) if kind == Kind::Identity => {
            return Err("An identity policy has no Principal: it applies to the credential it is attached to.".into());
        }
        None if kind == Kind::Identity => vec!["*".to_string()],
        Some(Value::String(s)) if s == "*" => vec!["*".to_string()],
        Some(Value::Object(p)) if !p.is_empty() => {
            let mut out = Vec::new();
            for (kind, val) in p {
                if kind != "AWS" {
                    return Err(format!("Unsupported principal type {kind}."));
                }
                out.extend(strings(val, "Principal")?);
            }
            for p in &out {
                if p != "*" && !p.starts_with("arn:") && !(p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit())) {
                    return Err(format!("Invalid principal {p}."));
                }
            }
            out
        }
        _ => return Err("Each Statement needs a Principal.".into()),
    };
    let actions = strings(o.get("Action").ok_or("Each Statement needs an Action.")?, "Action")?;
    for a in &actions {
        let lower = a.to_ascii_lowercase();
        // An identity policy may also grant the audit search (`cloudtrail:LookupEvents`); a key
        // policy governs only its key's KMS actions.
        let cloudtrail = kind == Kind::Identity && lower.starts_with("cloudtrail:");
        if a != "*" && !lower.starts_with("kms:") && !cloudtrail {
            return Err(format!("Invalid action {a}."));
        }
    }
    let resources = match o.get("Resource") {
        Some(r) => strings(r, "Resource")?,
        None => return Err("Each Statement needs a Resource.".into()),
    };
    let mut conditions = Vec::new();
    if let Some(c) = o.get("Condition") {
        let c = c.as_object().ok_or("Condition must be a JSON object.")?;
        for (op, body) in c {
            let (set, rest) = if let Some(r) = op.strip_prefix("ForAllValues:") {
                (SetOp::All, r)
            } else if let Some(r) = op.strip_prefix("ForAnyValue:") {
                (SetOp::Any, r)
            } else {
                (SetOp::Single, op.as_str())
            };
            let (base, if_exists) = match rest.strip_suffix("IfExists") {
                Some(b) => (b, true),
                None => (rest, false),
            };
            let (like, boolean) = match base {
                "StringEquals" => (false, false),
                "StringLike" => (true, false),
                "Bool" if set == SetOp::Single => (false, true),
                _ => return Err(format!("Unsupported condition operator {op}.")),
            };
            let body = body.as_object().ok_or("A condition operator must map keys to values.")?;
            for (key, vals) in body {
                let lk = key.to_ascii_lowercase();
                let ok = matches!(
                    lk.as_str(),
                    "kms:calleraccount"
                        | "kms:grantoperations"
                        | "kms:granteeprincipal"
                        | "kms:retiringprincipal"
                        | "kms:grantisforawsresource"
                ) || lk.strip_prefix("kms:encryptioncontext:").is_some_and(|k| !k.is_empty());
                if !ok {
                    return Err(format!("Unsupported condition key {key}."));
                }
                let values = if boolean { bools(vals)? } else { strings(vals, "Condition")? };
                conditions.push(Condition { like, if_exists, set, boolean, key: lk, values });
            }
        }
    }
    Ok(Statement { allow, principals, actions, resources, conditions })
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    let out: Option<Vec<String>> = match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    };
    out.ok_or_else(|| format!("{what} must be a string or a non-empty list of strings."))
}

/// A `Bool` condition's values: JSON booleans or the strings `true`/`false`.
fn bools(v: &Value) -> Result<Vec<String>, String> {
    let one = |x: &Value| match x {
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
            Some(s.to_ascii_lowercase())
        }
        _ => None,
    };
    let out: Option<Vec<String>> = match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(one).collect(),
        other => one(other).map(|b| vec![b]),
    };
    out.ok_or_else(|| "A Bool condition needs true or false.".to_string())
}

/// The account id of a principal ARN (`arn:aws:iam::<acct>:...`, `arn:aws:sts::<acct>:...`).
pub fn account_of(principal: &str) -> Option<&str> {
    let mut parts = principal.splitn(6, ':');
    let (_, _, _, _, acct) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(acct)
}

/// The account a principal string stands for as a whole: a bare 12-digit account id, or exactly
/// `arn:aws:iam::<12 digits>:root`. Anything else (`…:user/x:root`, `arn:aws:sts::…:root`) is
/// not an account.
pub fn account_root(p: &str) -> Option<&str> {
    let is_account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    if is_account(p) {
        return Some(p);
    }
    let acct = p.strip_prefix("arn:aws:iam::")?.strip_suffix(":root")?;
    is_account(acct).then_some(acct)
}

/// How a policy's statements match a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// No statement applies.
    None,
    /// An Allow statement names the caller (its ARN or `*`).
    Direct,
    /// The only Allow statements that apply name the caller's account (root or id).
    Account,
    /// A Deny statement applies.
    Deny,
}

/// Evaluates `q` against `p` on its own: explicit Deny wins, any matching Allow allows (a
/// statement naming the caller's account counts as an Allow here; [`authorize`] is what
/// defers those to the identity policy).
pub fn evaluate(p: &Policy, q: &Query<'_>) -> Decision {
    match matches(p, q) {
        Match::Deny => Decision::ExplicitDeny,
        Match::Direct | Match::Account => Decision::Allow,
        Match::None => Decision::ImplicitDeny,
    }
}

fn matches(p: &Policy, q: &Query<'_>) -> Match {
    let mut out = Match::None;
    for s in &p.statements {
        let Some(how) = matches_statement(s, q) else { continue };
        if !s.allow {
            return Match::Deny;
        }
        if how == Match::Direct || out == Match::None {
            out = how;
        }
    }
    out
}

/// Which policy decided, for the caller's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The key policy (resource-based).
    Resource,
    /// The caller's identity policy.
    Identity,
}

/// The outcome of [`authorize`]: allowed, or denied with the policy kind that denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// No statement allowed it; `Source` is the policy that would have had to.
    ImplicitDeny(Source),
    /// A Deny statement matched in that policy.
    ExplicitDeny(Source),
}

/// AWS's evaluation of a request on one resource.
///
/// * `key`: the key policy, for key-scoped requests (`None` for account-level operations such
///   as CreateKey or ListKeys, and for alias resources, which only identity policies govern).
/// * `identity`: the caller's identity policy; `None` means unrestricted (a credential without a
///   policy, as before identity policies existed).
/// * `own_account`: the account that owns the resources. Identity policies grant only inside
///   it: an account-level request from another account is denied.
///
/// Explicit Deny anywhere wins. With a key policy: a statement naming the caller allows on its
/// own; one naming the caller's account allows only if the identity policy allows too.
/// Without one: the caller must belong to `own_account` and its identity policy must allow.
pub fn authorize(key: Option<&Policy>, identity: Option<&Policy>, own_account: &str, q: &Query<'_>) -> Verdict {
    let id = identity.map(|p| matches(p, q));
    if id == Some(Match::Deny) {
        return Verdict::ExplicitDeny(Source::Identity);
    }
    let identity_allows = id.is_none_or(|m| m != Match::None);
    match key {
        Some(kp) => match matches(kp, q) {
            Match::Deny => Verdict::ExplicitDeny(Source::Resource),
            Match::Direct => Verdict::Allow,
            Match::Account if identity_allows => Verdict::Allow,
            Match::Account => Verdict::ImplicitDeny(Source::Identity),
            Match::None => Verdict::ImplicitDeny(Source::Resource),
        },
        None if account_of(q.principal) != Some(own_account) => Verdict::ImplicitDeny(Source::Identity),
        None if identity_allows => Verdict::Allow,
        None => Verdict::ImplicitDeny(Source::Identity),
    }
}

/// Whether the identity policy allows `q` on its own (`None`: unrestricted). A grant whose
/// grantee is the caller's account (its root) allows only what this allows too, as a key-policy
/// statement naming the account does.
pub fn identity_allows(identity: Option<&Policy>, q: &Query<'_>) -> bool {
    identity.is_none_or(|p| matches!(matches(p, q), Match::Direct | Match::Account))
}

/// How statement `s` applies to `q`: `None` if it does not, else [`Match::Direct`] or
/// [`Match::Account`] by how its principal matched.
fn matches_statement(s: &Statement, q: &Query<'_>) -> Option<Match> {
    let caller_account = account_of(q.principal).unwrap_or("");
    let mut how = None;
    for p in &s.principals {
        if p == "*" || p == q.principal {
            how = Some(Match::Direct);
            break;
        }
        // The account (its root or its id) stands for every principal of the account.
        if account_root(p).is_some_and(|a| a == caller_account) {
            how = Some(Match::Account);
        }
    }
    let how = how?;
    let action = if q.action.contains(':') { q.action.to_string() } else { format!("kms:{}", q.action) };
    let action_ok = s.actions.iter().any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()));
    let resource_ok = s.resources.iter().any(|r| glob(r, q.resource));
    let ok = action_ok && resource_ok && s.conditions.iter().all(|c| condition_holds(c, q, caller_account));
    ok.then_some(how)
}

/// Whether condition `c` holds for `q`. A key the request does not have is absent: only
/// `…IfExists` and `ForAllValues:` conditions hold then.
fn condition_holds(c: &Condition, q: &Query<'_>, caller_account: &str) -> bool {
    let grant_action = matches!(q.action, "CreateGrant" | "ListGrants" | "RevokeGrant");
    let values: Option<Vec<&str>> = match c.key.as_str() {
        "kms:calleraccount" => Some(vec![caller_account]),
        "kms:grantoperations" => q.grant.map(|g| g.operations.iter().map(String::as_str).collect()),
        "kms:granteeprincipal" => q.grant.map(|g| vec![g.grantee]),
        "kms:retiringprincipal" => q.grant.and_then(|g| g.retiring).map(|r| vec![r]),
        // No AWS service calls this server on a principal's behalf.
        "kms:grantisforawsresource" => grant_action.then(|| vec!["false"]),
        key => {
            let k = &key["kms:encryptioncontext:".len()..];
            // Context keys are case-sensitive on the wire; condition keys are not.
            q.context.iter().find(|(ck, _)| ck.to_ascii_lowercase() == k).map(|(_, v)| vec![v.as_str()])
        }
    };
    let matches = |v: &str| {
        c.values.iter().any(|want| {
            if c.boolean {
                want.eq_ignore_ascii_case(v)
            } else if c.like {
                glob(want, v)
            } else {
                want == v
            }
        })
    };
    match values {
        None => c.if_exists || c.set == SetOp::All,
        Some(vs) => match c.set {
            SetOp::All => vs.iter().all(|v| matches(v)),
            SetOp::Single | SetOp::Any => vs.iter().any(|v| matches(v)),
        },
    }
}

/// Wildcard match: `*` any run, `?` any one character. Linear-time backtracking, no recursion.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const ADMIN: &str = "arn:aws:iam::111122223333:user/admin";
    const OTHER: &str = "arn:aws:iam::111122223333:user/app";

    fn q<'a>(principal: &'a str, action: &'a str, ctx: &'a BTreeMap<String, String>) -> Query<'a> {
        Query { principal, action, resource: KEY, context: ctx, grant: None }
    }

    #[test]
    fn default_policy_allows_the_account_only() {
        let p = parse(&default_policy("111122223333")).unwrap();
        let c = BTreeMap::new();
        assert_eq!(evaluate(&p, &q(ADMIN, "Encrypt", &c)), Decision::Allow);
        assert_eq!(evaluate(&p, &q("arn:aws:sts::111122223333:assumed-role/r/s", "PutKeyPolicy", &c)), Decision::Allow);
        assert_eq!(evaluate(&p, &q("arn:aws:iam::999999999999:user/x", "Encrypt", &c)), Decision::ImplicitDeny);
    }

    #[test]
    fn principals_actions_deny_and_conditions() {
        let p = parse(&format!(
            r#"{{"Version":"2012-10-17","Statement":[
              {{"Effect":"Allow","Principal":{{"AWS":["{ADMIN}"]}},"Action":"kms:*","Resource":"*"}},
              {{"Effect":"Allow","Principal":{{"AWS":"{OTHER}"}},"Action":["kms:Encrypt*","kms:Decrypt"],"Resource":"*",
                "Condition":{{"StringEquals":{{"kms:EncryptionContext:app":"web"}},"StringLike":{{"kms:CallerAccount":"1111*"}}}}}},
              {{"Effect":"Deny","Principal":"*","Action":"kms:ScheduleKeyDeletion","Resource":"*"}}]}}"#
        ))
        .unwrap();
        let none = BTreeMap::new();
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let db: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        assert_eq!(evaluate(&p, &q(ADMIN, "DescribeKey", &none)), Decision::Allow);
        assert_eq!(evaluate(&p, &q(ADMIN, "ScheduleKeyDeletion", &none)), Decision::ExplicitDeny);
        assert_eq!(evaluate(&p, &q(OTHER, "Encrypt", &web)), Decision::Allow);
        assert_eq!(evaluate(&p, &q(OTHER, "encrypt", &web)), Decision::Allow);
        assert_eq!(evaluate(&p, &q(OTHER, "Decrypt", &db)), Decision::ImplicitDeny);
        assert_eq!(evaluate(&p, &q(OTHER, "Encrypt", &none)), Decision::ImplicitDeny);
        assert_eq!(evaluate(&p, &q(OTHER, "DescribeKey", &web)), Decision::ImplicitDeny);
        assert_eq!(evaluate(&p, &q("arn:aws:iam::999999999999:user/app", "Encrypt", &web)), Decision::ImplicitDeny);
    }

    #[test]
    fn malformed_documents() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"Statement":[]}"#,
            "not json",
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","NotAction":"kms:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericEquals":{"kms:CallerAccount":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIp":"1"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_exact_root_arn_is_the_account() {
        assert_eq!(account_root("arn:aws:iam::111122223333:root"), Some("111122223333"));
        assert_eq!(account_root("111122223333"), Some("111122223333"));
        for not_account in [
            "arn:aws:iam::111122223333:user/nobody:root",
            "arn:aws:sts::111122223333:root",
            "arn:aws:iam::11112222333:root",
            "arn:aws:iam::111122223333:root:root",
            "arn:aws:iam::111122223333:role/root",
            "1111222233334",
        ] {
            assert_eq!(account_root(not_account), None, "{not_account}");
        }
        // A statement naming `…:user/nobody:root` grants nothing to the rest of the account.
        let p = parse(r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/nobody:root"},"Action":"kms:*","Resource":"*"}]}"#).unwrap();
        let c = BTreeMap::new();
        assert_eq!(evaluate(&p, &q(ADMIN, "Decrypt", &c)), Decision::ImplicitDeny);
    }

    #[test]
    fn the_audit_search_is_an_identity_permission_of_its_own() {
        let ctx = BTreeMap::new();
        let q = |action| Query {
            principal: "arn:aws:iam::111122223333:user/a",
            action,
            resource: "*",
            context: &ctx,
            grant: None,
        };
        let kms_only = parse_identity(r#"{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#).unwrap();
        let lookup =
            parse_identity(r#"{"Statement":[{"Effect":"Allow","Action":"cloudtrail:LookupEvents","Resource":"*"}]}"#)
                .unwrap();
        let admin = parse_identity(ADMIN_IDENTITY_POLICY).unwrap();
        let verdict = |p: &Policy, action| authorize(None, Some(p), "111122223333", &q(action));
        assert_eq!(verdict(&kms_only, "cloudtrail:LookupEvents"), Verdict::ImplicitDeny(Source::Identity));
        assert_eq!(verdict(&kms_only, "Decrypt"), Verdict::Allow);
        assert_eq!(verdict(&lookup, "cloudtrail:LookupEvents"), Verdict::Allow);
        assert_eq!(verdict(&lookup, "Decrypt"), Verdict::ImplicitDeny(Source::Identity));
        assert_eq!(verdict(&admin, "cloudtrail:LookupEvents"), Verdict::Allow);
        // A key policy governs KMS actions only.
        assert!(
            parse(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"cloudtrail:LookupEvents","Resource":"*"}]}"#)
                .is_err()
        );
        assert!(
            parse_identity(r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#).is_err()
        );
    }

    #[test]
    fn identity_policies_have_no_principal_and_need_a_resource() {
        assert!(parse_identity(ADMIN_IDENTITY_POLICY).is_ok());
        assert!(parse(ADMIN_IDENTITY_POLICY).is_err(), "a key policy needs principals");
        assert!(
            parse_identity(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#)
                .is_err()
        );
        assert!(parse_identity(r#"{"Statement":[{"Effect":"Allow","Action":"kms:*"}]}"#).is_err());
    }

    #[test]
    fn key_policy_and_identity_policy_combined() {
        let c = BTreeMap::new();
        let account_policy = parse(&default_policy("111122223333")).unwrap();
        let names_app = parse(&format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{OTHER}"}},"Action":"kms:Decrypt","Resource":"*"}},
                {{"Effect":"Allow","Principal":{{"AWS":"111122223333"}},"Action":"kms:DescribeKey","Resource":"*"}}]}}"#
        ))
        .unwrap();
        let encrypt_only = parse_identity(&format!(
            r#"{{"Statement":[{{"Effect":"Allow","Action":"kms:Encrypt","Resource":"{KEY}"}}]}}"#
        ))
        .unwrap();
        let deny_decrypt = parse_identity(
            r#"{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"},{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}"#,
        )
        .unwrap();
        let acct = "111122223333";
        let run = |key: Option<&Policy>, id: Option<&Policy>, who: &str, action: &str| {
            authorize(key, id, acct, &Query { principal: who, action, resource: KEY, context: &c, grant: None })
        };
        // Key policy for the account root defers to the identity policy.
        assert_eq!(run(Some(&account_policy), Some(&encrypt_only), OTHER, "Encrypt"), Verdict::Allow);
        assert_eq!(
            run(Some(&account_policy), Some(&encrypt_only), OTHER, "Decrypt"),
            Verdict::ImplicitDeny(Source::Identity)
        );
        // No identity policy: unrestricted inside the account (credentials files written before).
        assert_eq!(run(Some(&account_policy), None, OTHER, "ScheduleKeyDeletion"), Verdict::Allow);
        // A statement naming the caller allows on its own; an identity Deny still wins.
        assert_eq!(run(Some(&names_app), Some(&encrypt_only), OTHER, "Decrypt"), Verdict::Allow);
        assert_eq!(
            run(Some(&names_app), Some(&deny_decrypt), OTHER, "Decrypt"),
            Verdict::ExplicitDeny(Source::Identity)
        );
        assert_eq!(
            run(Some(&names_app), Some(&encrypt_only), OTHER, "DescribeKey"),
            Verdict::ImplicitDeny(Source::Identity)
        );
        assert_eq!(run(Some(&names_app), None, OTHER, "DescribeKey"), Verdict::Allow);
        assert_eq!(run(Some(&names_app), None, ADMIN, "Encrypt"), Verdict::ImplicitDeny(Source::Resource));
        // The identity policy's Resource is matched against the key ARN.
        let other_key = parse_identity(r#"{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:key/other"}]}"#).unwrap();
        assert_eq!(
            run(Some(&account_policy), Some(&other_key), OTHER, "Encrypt"),
            Verdict::ImplicitDeny(Source::Identity)
        );
        // Account-level operations: identity policy only, and only inside the server's account.
        assert_eq!(run(None, None, OTHER, "CreateKey"), Verdict::Allow);
        assert_eq!(run(None, Some(&encrypt_only), OTHER, "CreateKey"), Verdict::ImplicitDeny(Source::Identity));
        assert_eq!(
            run(None, None, "arn:aws:iam::999999999999:user/x", "CreateKey"),
            Verdict::ImplicitDeny(Source::Identity)
        );
        let admin = parse_identity(ADMIN_IDENTITY_POLICY).unwrap();
        assert_eq!(
            run(None, Some(&admin), "arn:aws:iam::999999999999:user/x", "ListKeys"),
            Verdict::ImplicitDeny(Source::Identity)
        );
        // Another account named by the key policy: that account's identity policy decides.
        let cross = parse(r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::999999999999:root"},"Action":"kms:Decrypt","Resource":"*"}]}"#).unwrap();
        assert_eq!(run(Some(&cross), Some(&admin), "arn:aws:iam::999999999999:user/x", "Decrypt"), Verdict::Allow);
        assert_eq!(
            run(Some(&cross), Some(&encrypt_only), "arn:aws:iam::999999999999:user/x", "Decrypt"),
            Verdict::ImplicitDeny(Source::Identity)
        );
    }

    #[test]
    fn grant_condition_keys() {
        let p = parse(&format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{OTHER}"}},"Action":"kms:CreateGrant","Resource":"*",
                "Condition":{{"ForAllValues:StringEquals":{{"kms:GrantOperations":["Encrypt","Decrypt"]}},
                              "StringLike":{{"kms:GranteePrincipal":"arn:aws:iam::111122223333:role/*"}},
                              "Bool":{{"kms:GrantIsForAWSResource":false}}}}}},
              {{"Effect":"Deny","Principal":"*","Action":"kms:CreateGrant","Resource":"*",
                "Condition":{{"StringEquals":{{"kms:RetiringPrincipal":"arn:aws:iam::111122223333:user/evil"}}}}}}]}}"#
        ))
        .unwrap();
        let c = BTreeMap::new();
        let role = "arn:aws:iam::111122223333:role/worker";
        let ask = |ops: &[&str], grantee: &str, retiring: Option<&str>| {
            let ops: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
            let g = GrantRequest { operations: &ops, grantee, retiring };
            evaluate(
                &p,
                &Query { principal: OTHER, action: "CreateGrant", resource: KEY, context: &c, grant: Some(&g) },
            )
        };
        assert_eq!(ask(&["Decrypt"], role, None), Decision::Allow);
        assert_eq!(ask(&["Decrypt", "Encrypt"], role, None), Decision::Allow);
        assert_eq!(ask(&["Decrypt", "CreateGrant"], role, None), Decision::ImplicitDeny, "ForAllValues");
        assert_eq!(ask(&["Decrypt"], ADMIN, None), Decision::ImplicitDeny, "grantee pattern");
        assert_eq!(ask(&["Decrypt"], role, Some("arn:aws:iam::111122223333:user/evil")), Decision::ExplicitDeny);
        assert_eq!(ask(&["Decrypt"], role, Some(ADMIN)), Decision::Allow);
        // Without a grant request (another action), the grant keys are absent.
        let any_value = parse(&format!(
            r#"{{"Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{OTHER}"}},"Action":"kms:*","Resource":"*",
                "Condition":{{"ForAnyValue:StringEquals":{{"kms:GrantOperations":"Decrypt"}}}}}}]}}"#
        ))
        .unwrap();
        assert_eq!(evaluate(&any_value, &q(OTHER, "Decrypt", &c)), Decision::ImplicitDeny);
        for bad in [
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"kms:GrantIsForAWSResource":"maybe"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"ForAllValues:Bool":{"kms:GrantIsForAWSResource":true}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"ForAllValues:StringEquals":{"kms:GrantConstraintType":"x"}}}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("kms:*", "kms:encrypt"));
        assert!(glob("kms:encrypt*", "kms:encrypt"));
        assert!(!glob("kms:encrypt*", "kms:decrypt"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
        assert!(glob("*a*b*", "xxaxxbxx"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn structured_documents_never_panic(effect in ".{0,8}", principal in ".{0,30}", action in ".{0,20}", ck in ".{0,30}", cv in ".{0,10}") {
            let doc = serde_json::json!({"Statement": [{"Effect": effect, "Principal": {"AWS": principal}, "Action": action,
                "Resource": "*", "Condition": {"StringLike": {ck: cv}}}]});
            if let Ok(p) = parse(&doc.to_string()) {
                let c = BTreeMap::new();
                let _ = evaluate(&p, &Query { principal: &principal, action: &action, resource: KEY, context: &c, grant: None });
            }
        }

        #[test]
        fn glob_never_panics(p in ".{0,20}", t in ".{0,40}") {
            let _ = glob(&p, &t);
            prop_assert!(glob("*", &t));
            prop_assert!(glob(&t.replace(['*', '?'], ""), &t.replace(['*', '?'], "")));
        }
    }
}
