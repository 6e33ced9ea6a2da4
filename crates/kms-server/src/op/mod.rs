//! The operations: one module per family, each owning its requests (validation from the
//! wire's [`Raw`] members), their execution on top of the key store, and their typed
//! responses.
//!
//! * [`crypto`]: Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext),
//!   GenerateDataKeyPair(WithoutPlaintext), GenerateRandom.
//! * [`mac`]: GenerateMac, VerifyMac (HMAC keys).
//! * [`sign`]: Sign, Verify, GetPublicKey (signing keys; GetPublicKey for every key pair).
//! * [`agreement`]: DeriveSharedSecret (ECDH with `KEY_AGREEMENT` keys).
//! * [`keys`]: CreateKey, DescribeKey, ListKeys, Enable/DisableKey, Schedule/CancelKeyDeletion,
//!   UpdateKeyDescription.
//! * [`aliases`]: Create/Update/DeleteAlias, ListAliases.
//! * [`policies`]: Get/PutKeyPolicy, ListKeyPolicies.
//! * [`rotation`]: Enable/DisableKeyRotation, GetKeyRotationStatus, ListKeyRotations,
//!   RotateKeyOnDemand.
//! * [`import`]: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial.
//! * [`tags`]: Tag/UntagResource, ListResourceTags.
//! * [`grants`]: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
//! * [`history`]: CloudTrail's LookupEvents over the audit log (target prefix
//!   `com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.`, signed for service `cloudtrail`).
//!
//! An [`Operation`] is described by one line of the table below: its family, whether it is
//! read-only (CloudTrail's `readOnly`; everything else is a state change with an audit intent
//! record) and whether it is a data-plane call (cryptographic: its responses carry secrets, so
//! the audit record shows no response members, and it runs on the request's own task when the
//! key store can answer from memory).
//!
//! The audit view of a request is the request as sent ([`Raw`], secret members never
//! serialized); the audit view of a response is built by [`Call::reply`] (management calls:
//! the typed response without secret members) or [`Call::crypto_reply`] (only the key used).
//!
//! # Adding an operation
//!
//! 1. One line in the `operations!` table here: name, family, category, plane.
//! 2. In the family's file: a variant of its `Request`, its arm in the family's `parse`
//!    (validation of the [`Raw`] members, adding new members to [`Raw`] if needed) and in its
//!    `run` (authorize through [`Call`], act on the key store, answer with a typed response).

pub mod agreement;
pub mod aliases;
pub mod crypto;
pub mod grants;
pub mod history;
pub mod import;
pub mod keys;
pub mod mac;
pub mod policies;
pub mod rotation;
pub mod sign;
pub mod tags;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::{KeyRef, KeySpec, KeyState, KeyUsage};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::Server;
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::policy::{self, Policy, Query, Source, Verdict};
use crate::protocol::{Context, Raw, to_body};

/// The families of operations (one module each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Agreement,
    Aliases,
    Crypto,
    Grants,
    History,
    Import,
    Keys,
    Mac,
    Policies,
    Rotation,
    Sign,
    Tags,
}

/// CloudTrail's `readOnly` split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Reads and cryptographic operations: no state changes.
    ReadOnly,
    /// State changes: an audit intent record is synced before they run.
    Management,
}

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// Cryptographic calls: secrets in their responses, served from memory.
    Data,
    /// Everything else.
    Control,
}

macro_rules! operations {
    ($($name:ident => $family:ident, $category:ident, $plane:ident;)*) => {
        /// The operations this server implements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Operation { $(#[allow(missing_docs)] $name),* }

        impl Operation {
            /// Every implemented operation.
            pub const ALL: &'static [Operation] = &[$(Operation::$name),*];

            /// The AWS operation name (`Encrypt`, ...), also its policy action (`kms:Encrypt`).
            pub fn name(self) -> &'static str {
                match self { $(Operation::$name => stringify!($name)),* }
            }

            /// Whether the operation reads or changes state.
            pub fn category(self) -> Category {
                match self { $(Operation::$name => Category::$category),* }
            }

            /// Whether the operation is a cryptographic (data-plane) call.
            pub fn plane(self) -> Plane {
                match self { $(Operation::$name => Plane::$plane),* }
            }

            fn family(self) -> Family {
                match self { $(Operation::$name => Family::$family),* }
            }

            fn from_name(s: &str) -> Option<Self> {
                match s { $(stringify!($name) => Some(Operation::$name),)* _ => None }
            }
        }
    };
}

operations! {
    CancelKeyDeletion               => Keys,     Management, Control;
    CreateAlias                     => Aliases,  Management, Control;
    CreateGrant                     => Grants,   Management, Control;
    CreateKey                       => Keys,     Management, Control;
    Decrypt                         => Crypto,   ReadOnly,   Data;
    DeriveSharedSecret              => Agreement, ReadOnly,  Data;
    DeleteAlias                     => Aliases,  Management, Control;
    DeleteImportedKeyMaterial       => Import,   Management, Control;
    DescribeKey                     => Keys,     ReadOnly,   Control;
    DisableKey                      => Keys,     Management, Control;
    DisableKeyRotation              => Rotation, Management, Control;
    EnableKey                       => Keys,     Management, Control;
    EnableKeyRotation               => Rotation, Management, Control;
    Encrypt                         => Crypto,   ReadOnly,   Data;
    GenerateDataKey                 => Crypto,   ReadOnly,   Data;
    GenerateDataKeyPair             => Crypto,   ReadOnly,   Data;
    GenerateDataKeyPairWithoutPlaintext => Crypto, ReadOnly,  Data;
    GenerateDataKeyWithoutPlaintext => Crypto,   ReadOnly,   Data;
    GenerateMac                     => Mac,      ReadOnly,   Data;
    GenerateRandom                  => Crypto,   ReadOnly,   Data;
    GetKeyPolicy                    => Policies, ReadOnly,   Control;
    GetKeyRotationStatus            => Rotation, ReadOnly,   Control;
    GetParametersForImport          => Import,   ReadOnly,   Control;
    GetPublicKey                    => Sign,     ReadOnly,   Control;
    ImportKeyMaterial               => Import,   Management, Control;
    ListAliases                     => Aliases,  ReadOnly,   Control;
    ListGrants                      => Grants,   ReadOnly,   Control;
    ListKeyPolicies                 => Policies, ReadOnly,   Control;
    ListKeyRotations                => Rotation, ReadOnly,   Control;
    ListKeys                        => Keys,     ReadOnly,   Control;
    ListResourceTags                => Tags,     ReadOnly,   Control;
    ListRetirableGrants             => Grants,   ReadOnly,   Control;
    LookupEvents                    => History,  ReadOnly,   Control;
    PutKeyPolicy                    => Policies, Management, Control;
    ReEncrypt                       => Crypto,   ReadOnly,   Data;
    RetireGrant                     => Grants,   Management, Control;
    RevokeGrant                     => Grants,   Management, Control;
    RotateKeyOnDemand               => Rotation, Management, Control;
    ScheduleKeyDeletion             => Keys,     Management, Control;
    Sign                            => Sign,     ReadOnly,   Data;
    TagResource                     => Tags,     Management, Control;
    UntagResource                   => Tags,     Management, Control;
    UpdateAlias                     => Aliases,  Management, Control;
    UpdateKeyDescription            => Keys,     Management, Control;
    Verify                          => Sign,     ReadOnly,   Data;
    VerifyMac                       => Mac,      ReadOnly,   Data;
}

/// The `X-Amz-Target` prefix of CloudTrail's JSON API.
pub const CLOUDTRAIL_TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.";

/// Operations of the real service that this server does not implement (yet): they answer
/// `UnsupportedOperationException` rather than `UnknownOperationException`.
const NOT_IMPLEMENTED: &[&str] = &[
    "ConnectCustomKeyStore",
    "CreateCustomKeyStore",
    "Decapsulate",
    "DeleteCustomKeyStore",
    "DescribeCustomKeyStores",
    "DisconnectCustomKeyStore",
    "Encapsulate",
    "GetKeyLastUsage",
    "ReplicateKey",
    "UpdateCustomKeyStore",
    "UpdatePrimaryRegion",
];

impl Operation {
    /// Whether the operation changes state (keys, aliases, policies, tags, material); such
    /// requests get an audit intent record before they run. Reads and cryptographic operations
    /// do not.
    pub fn mutates(self) -> bool {
        self.category() == Category::Management
    }

    /// Whether the operation is a cryptographic call (no response members in its audit record).
    pub fn is_data_plane(self) -> bool {
        self.plane() == Plane::Data
    }

    /// The service a request for it is signed for (SigV4 scope) and its actions' prefix:
    /// `kms`, or `cloudtrail` for the audit search.
    pub fn service(self) -> &'static str {
        if self.family() == Family::History { "cloudtrail" } else { "kms" }
    }

    /// Parses an `X-Amz-Target` value: `TrentService.<Operation>`, or the CloudTrail target
    /// of the audit search.
    pub fn from_target(target: &str) -> Result<Self> {
        let unknown = || KmsError::UnknownOperation(format!("Unknown operation {target:?}."));
        if let Some(name) = target.strip_prefix(CLOUDTRAIL_TARGET_PREFIX) {
            return match Operation::from_name(name) {
                Some(op) if op.family() == Family::History => Ok(op),
                _ => Err(unknown()),
            };
        }
        let name = target.strip_prefix("TrentService.").ok_or_else(unknown)?;
        if let Some(op) = Operation::from_name(name).filter(|op| op.family() != Family::History) {
            return Ok(op);
        }
        if NOT_IMPLEMENTED.contains(&name) {
            return Err(KmsError::UnsupportedOperation(format!("{name} is not supported by this server yet.")));
        }
        Err(unknown())
    }
}

/// A validated request, by family.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    Agreement(agreement::Request),
    Aliases(aliases::Request),
    Crypto(crypto::Request),
    Grants(grants::Request),
    History(history::Request),
    Import(import::Request),
    Keys(keys::Request),
    Mac(mac::Request),
    Policies(policies::Request),
    Rotation(rotation::Request),
    Sign(sign::Request),
    Tags(tags::Request),
}

impl Request {
    /// Whether running it needs nothing but the key store's in-memory snapshot (no SQL, no
    /// disk), so it can run on the request's own task instead of the blocking pool: the
    /// cryptographic calls whose material is in the snapshot, and DescribeKey.
    pub fn in_memory(&self, server: &Server) -> bool {
        match self {
            Request::Crypto(r) => r.in_memory(server),
            Request::Mac(_) | Request::Agreement(_) => true,
            Request::Sign(r) => !matches!(r, sign::Request::GetPublicKey { .. }),
            Request::Keys(keys::Request::DescribeKey { .. }) => true,
            _ => false,
        }
    }
}

/// Parses and validates the JSON body of `op`. Never panics on any input.
pub fn parse_request(op: Operation, body: &[u8]) -> Result<Request> {
    parse(op, body).map(|p| p.request)
}

/// A request parsed from its body (once): the typed request and the members as sent (secrets
/// dropped), which are its audit view.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) request: Request,
    pub(crate) params: crate::audit::Params,
}

pub(crate) fn parse(op: Operation, body: &[u8]) -> Result<Parsed> {
    if op.family() == Family::History {
        // CloudTrail's members, not KMS's: recorded as sent (there are no secret ones).
        let request = history::parse(op, body).map(Request::History)?;
        let params = crate::audit::sanitized_request(body).unwrap_or_default();
        return Ok(Parsed { request, params: crate::audit::Params::Json(params) });
    }
    let mut raw = Box::new(Raw::from_body(body)?);
    let request = match op.family() {
        Family::Agreement => agreement::parse(op, &raw).map(Request::Agreement),
        Family::Aliases => aliases::parse(op, &raw).map(Request::Aliases),
        Family::Crypto => crypto::parse(op, &raw).map(Request::Crypto),
        Family::Grants => grants::parse(op, &raw).map(Request::Grants),
        Family::History => Err(KmsError::Internal("history requests are not KMS requests".into())),
        Family::Import => import::parse(op, &raw).map(Request::Import),
        Family::Keys => keys::parse(op, &raw).map(Request::Keys),
        Family::Mac => mac::parse(op, &raw).map(Request::Mac),
        Family::Policies => policies::parse(op, &raw).map(Request::Policies),
        Family::Rotation => rotation::parse(op, &raw).map(Request::Rotation),
        Family::Sign => sign::parse(op, &raw).map(Request::Sign),
        Family::Tags => tags::parse(op, &raw).map(Request::Tags),
    }?;
    raw.drop_secrets();
    Ok(Parsed { request, params: crate::audit::Params::Typed(raw) })
}

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

/// A successful operation's answer: the response body and what its audit record shows.
pub struct Reply {
    /// The JSON response body (empty for operations without output).
    pub body: Zeroizing<Vec<u8>>,
    /// The key ARN the response names (`KeyId` of cryptographic responses, `KeyMetadata.Arn`
    /// or an ARN `KeyId` of management ones).
    pub key_arn: Option<String>,
    /// The response members the audit record shows (management calls; secrets left out), as
    /// sent (PascalCase). `None` for cryptographic calls, empty responses, or without an audit
    /// log.
    pub elements: Option<Value>,
}

/// The result of [`Server::execute`]: the answer or the error, and the ARNs of every key the
/// request touched (authorized or denied), for the audit record's `resources`.
pub struct Outcome {
    /// The answer, or the error.
    pub result: Result<Reply>,
    /// Key ARNs the request named or resolved, in the order they were checked, without repeats.
    pub resources: Vec<String>,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the body: it may hold plaintext or data keys.
        f.debug_struct("Outcome")
            .field("result", &self.result.as_ref().map(|r| r.body.len()))
            .field("resources", &self.resources)
            .finish()
    }
}

impl Server {
    /// Runs one request for `caller`. Every key the request touches is authorized by its key
    /// policy and the caller's identity policy ([`policy::authorize`]); account-level operations
    /// (CreateKey, ListKeys, ListAliases, GenerateRandom) and aliases by the identity policy.
    /// Blocking unless [`Request::in_memory`].
    pub fn execute(&self, req: Request, caller: &Caller) -> Outcome {
        let call = Call { server: self, caller, audited: self.audit.is_some(), resources: RefCell::new(Vec::new()) };
        let result = match req {
            Request::Agreement(r) => agreement::run(r, &call),
            Request::Aliases(r) => aliases::run(r, &call),
            Request::Crypto(r) => crypto::run(r, &call),
            Request::Grants(r) => grants::run(r, &call),
            Request::History(r) => history::run(r, &call),
            Request::Import(r) => import::run(r, &call),
            Request::Keys(r) => keys::run(r, &call),
            Request::Mac(r) => mac::run(r, &call),
            Request::Policies(r) => policies::run(r, &call),
            Request::Rotation(r) => rotation::run(r, &call),
            Request::Sign(r) => sign::run(r, &call),
            Request::Tags(r) => tags::run(r, &call),
        };
        Outcome { result, resources: call.resources.into_inner() }
    }
}

/// One request in progress: the server, the caller and the keys touched so far. What every
/// operation uses to resolve and authorize keys and to answer.
pub(crate) struct Call<'a> {
    server: &'a Server,
    caller: &'a Caller,
    /// Whether the server keeps an audit log (response audit views are built only then).
    audited: bool,
    resources: RefCell<Vec<String>>,
}

/// A key resolved from a client's identifier.
pub(crate) struct Resolved {
    pub(crate) r: KeyRef,
    pub(crate) id: String,
    pub(crate) arn: String,
    pub(crate) state: KeyState,
    pub(crate) kid: [u8; 16],
    pub(crate) spec: KeySpec,
    pub(crate) usage: KeyUsage,
}

impl<'a> Call<'a> {
    pub(crate) fn server(&self) -> &'a Server {
        self.server
    }

    pub(crate) fn caller(&self) -> &'a Caller {
        self.caller
    }

    fn touched(&self, arn: &str) {
        let mut r = self.resources.borrow_mut();
        if !r.iter().any(|a| a == arn) {
            r.push(arn.to_string());
        }
    }

    /// Resolves a client's identifier to an existing key (NotFound in AWS's wording otherwise).
    pub(crate) fn resolve(&self, s: &str, forms: Forms) -> Result<Resolved> {
        let names = &self.server.names;
        let r = names.resolve(s, forms)?;
        let (kid, state, spec, usage) = self
            .server
            .store
            .kind(&r)
            .map_err(|e| KmsError::from_store(e, Subject::Named { label: s, missing: names.not_found(&r) }))?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        Ok(Resolved {
            r: KeyRef::Id(uuid::Uuid::from_bytes(kid)),
            arn: names.key_arn(&id),
            id,
            state,
            kid,
            spec,
            usage,
        })
    }

    /// The key a blob names, if this server has it.
    pub(crate) fn owner(&self, kid: [u8; 16]) -> Option<Resolved> {
        let r = KeyRef::Id(uuid::Uuid::from_bytes(kid));
        let (kid, state, spec, usage) = self.server.store.kind(&r).ok()?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        Some(Resolved { arn: self.server.names.key_arn(&id), id, r, state, kid, spec, usage })
    }

    /// Checks `kms:<action>` on key `k` for the caller: the key's policy and the caller's
    /// identity policy ([`policy::authorize`]), then the key's grants: a grant to the caller for
    /// `action` whose constraints hold for `context` allows what the policies do not, but never
    /// against an explicit Deny. The key is recorded as touched either way. (CreateGrant and
    /// RetireGrant weigh grants their own way, in [`grants`].)
    pub(crate) fn authorize(&self, k: &Resolved, action: &str, context: &Context) -> Result<()> {
        let (verdict, attrs) = self.key_verdict(k, action, context, None)?;
        if matches!(verdict, Verdict::ImplicitDeny(_))
            && !matches!(action, "CreateGrant" | "RetireGrant")
            && attrs.grants.iter().any(|g| g.allows(action, context) && self.is_grantee(g, action, &k.arn, context))
        {
            return Ok(());
        }
        self.verdict_result(verdict, action, &k.arn)
    }

    /// Whether the caller is `g`'s grantee for `action`: the grantee principal itself, or a
    /// principal of the grantee account (`arn:aws:iam::<account>:root`) whose identity policy
    /// allows the action on the key too.
    pub(crate) fn is_grantee(&self, g: &envelope_keystore::Grant, action: &str, arn: &str, context: &Context) -> bool {
        let principal = self.caller.principal.as_str();
        if g.grantee == principal {
            return true;
        }
        let Some(account) = policy::account_root(&g.grantee) else { return false };
        if policy::account_of(principal) != Some(account) {
            return false;
        }
        let q = Query { principal, action, resource: arn, context, grant: None };
        policy::identity_allows(self.caller.identity.as_deref(), &q)
    }

    /// The policies' verdict on `kms:<action>` for key `k` (grants not consulted), and the key's
    /// attributes (its grants among them). The key is recorded as touched.
    pub(crate) fn key_verdict(
        &self,
        k: &Resolved,
        action: &str,
        context: &Context,
        grant: Option<&policy::GrantRequest<'_>>,
    ) -> Result<(Verdict, Arc<envelope_keystore::KeyAttributes>)> {
        self.touched(&k.arn);
        let attrs = self.server.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
        let p = self.server.policies.get(k.kid, attrs.policy.as_ref())?;
        Ok((self.verdict(Some(&p), action, &k.arn, context, grant), attrs))
    }

    /// [`Call::authorize`] without an encryption context.
    pub(crate) fn allow(&self, k: &Resolved, action: &str) -> Result<()> {
        self.authorize(k, action, &Context::new())
    }

    /// Checks an account-level action (resource `*`): identity policy only, and only for
    /// principals of this server's account.
    pub(crate) fn authorize_account(&self, action: &str) -> Result<()> {
        self.decide(None, action, "*", &Context::new())
    }

    /// Checks an action on an alias (resource: the alias ARN): identity policy only.
    pub(crate) fn authorize_alias(&self, alias: &str, action: &str) -> Result<()> {
        self.decide(None, action, &self.server.names.alias_arn(alias), &Context::new())
    }

    fn decide(&self, key: Option<&Policy>, action: &str, resource: &str, context: &Context) -> Result<()> {
        let verdict = self.verdict(key, action, resource, context, None);
        self.verdict_result(verdict, action, resource)
    }

    fn verdict(
        &self,
        key: Option<&Policy>,
        action: &str,
        resource: &str,
        context: &Context,
        grant: Option<&policy::GrantRequest<'_>>,
    ) -> Verdict {
        let principal = self.caller.principal.as_str();
        let q = Query { principal, action, resource, context, grant };
        policy::authorize(key, self.caller.identity.as_deref(), &self.server.config.account_id, &q)
    }

    /// The answer to a verdict: nothing, or AccessDenied in AWS's words.
    pub(crate) fn verdict_result(&self, verdict: Verdict, action: &str, resource: &str) -> Result<()> {
        let principal = self.caller.principal.as_str();
        let kind = |s: Source| if s == Source::Resource { "a resource-based" } else { "an identity-based" };
        // KMS actions are named without their prefix; another service's with it.
        let action = if action.contains(':') { action.to_string() } else { format!("kms:{action}") };
        let denied = |why: String| {
            KmsError::AccessDenied(format!(
                "User: {principal} is not authorized to perform: {action} on resource: {resource} {why}"
            ))
        };
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::ImplicitDeny(s) => Err(denied(format!(
                "because no {} policy allows the {action} action",
                if s == Source::Resource { "resource-based" } else { "identity-based" }
            ))),
            Verdict::ExplicitDeny(s) => Err(denied(format!("with an explicit deny in {} policy", kind(s)))),
        }
    }

    /// The key's management attributes (from the key store's snapshot).
    pub(crate) fn attributes(&self, k: &Resolved) -> Result<Arc<envelope_keystore::KeyAttributes>> {
        self.server.store.attributes(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))
    }

    /// The key's metadata (from the key store's snapshot).
    pub(crate) fn describe(&self, k: &Resolved) -> Result<envelope_keystore::KeyMetadata> {
        self.server.store.describe(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))
    }

    /// Answers with `resp`; for management calls under an audit log, its audit view too.
    pub(crate) fn reply<T: Serialize>(&self, resp: &T) -> Result<Reply> {
        let body = to_body(resp)?;
        let elements =
            if self.audited { serde_json::to_value(resp).ok().map(|v| crate::audit::sanitize(&v)) } else { None };
        let key_arn = elements.as_ref().and_then(crate::audit::resolved_key_arn);
        Ok(Reply { body, key_arn, elements })
    }

    /// Answers a cryptographic call with `resp`: its audit view is only the key used.
    pub(crate) fn crypto_reply<T: Serialize>(&self, resp: &T, key_arn: Option<String>) -> Result<Reply> {
        Ok(Reply { body: to_body(resp)?, key_arn, elements: None })
    }
}

/// The answer of an operation without output.
pub(crate) fn empty() -> Result<Reply> {
    Ok(Reply { body: Zeroizing::new(Vec::new()), key_arn: None, elements: None })
}

/// Management calls refuse keys pending deletion (spec §3.2).
pub(crate) fn not_pending(k: &Resolved) -> Result<()> {
    if k.state == KeyState::PendingDeletion {
        return Err(KmsError::InvalidState(format!("{} is pending deletion.", k.arn)));
    }
    Ok(())
}

/// Cryptographic calls and rotation settings need an enabled key.
pub(crate) fn usable(k: &Resolved) -> Result<()> {
    match k.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(format!("{} is disabled.", k.arn))),
        s => Err(KmsError::InvalidState(format!("{} is {}.", k.arn, crate::error::state_words(s)))),
    }
}

/// Operation `op` needs a key of usage `want` (checked after the key's state, as AWS does):
/// `InvalidKeyUsageException` in AWS's words otherwise.
pub(crate) fn uses(k: &Resolved, want: KeyUsage, op: &str) -> Result<()> {
    if k.usage == want {
        return Ok(());
    }
    Err(KmsError::InvalidKeyUsage(format!("{} key usage is {} which is not valid for {op}.", k.arn, k.usage)))
}

/// Days in seconds.
pub(crate) const DAY: i64 = 86_400;

pub(crate) const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// Parsed key policies by key, re-parsed only when the stored document changes.
pub(crate) struct PolicyCache {
    default: Arc<Policy>,
    parsed: RwLock<HashMap<[u8; 16], CachedPolicy>>,
}

/// A stored policy document and its parse.
type CachedPolicy = (Arc<str>, Arc<Policy>);

impl PolicyCache {
    pub(crate) fn new(account: &str) -> Result<Self> {
        let default = policy::parse(&policy::default_policy(account)).map_err(KmsError::Config)?;
        Ok(Self { default: Arc::new(default), parsed: RwLock::new(HashMap::new()) })
    }

    fn get(&self, kid: [u8; 16], text: Option<&Arc<str>>) -> Result<Arc<Policy>> {
        let Some(text) = text else { return Ok(self.default.clone()) };
        {
            let cache = self.parsed.read().map_err(|_| KmsError::Internal("policy cache lock poisoned".into()))?;
            if let Some((t, p)) = cache.get(&kid)
                && (Arc::ptr_eq(t, text) || **t == **text)
            {
                return Ok(p.clone());
            }
        }
        // Stored policies were validated when put; one that no longer parses denies everything.
        let p = Arc::new(policy::parse(text).map_err(|e| KmsError::Internal(format!("stored key policy: {e}")))?);
        let mut cache = self.parsed.write().map_err(|_| KmsError::Internal("policy cache lock poisoned".into()))?;
        cache.insert(kid, (text.clone(), p.clone()));
        Ok(p)
    }
}

/// A list position as an opaque `NextMarker` of kind `kind`.
pub(crate) fn encode_marker(kind: &str, pos: &str) -> String {
    STANDARD.encode(format!("{kind}:{pos}"))
}

/// The position in a `Marker` of kind `kind` (`InvalidMarkerException` for anything else).
pub(crate) fn decode_marker(m: &str, kind: &str) -> Result<String> {
    let raw = STANDARD.decode(m).map_err(|_| KmsError::InvalidMarker)?;
    let s = String::from_utf8(raw).map_err(|_| KmsError::InvalidMarker)?;
    s.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).map(str::to_string).ok_or(KmsError::InvalidMarker)
}

#[cfg(test)]
mod tests;
