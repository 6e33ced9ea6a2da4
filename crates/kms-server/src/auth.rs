//! Authentication: the access-key table (a YAML credentials file) and SigV4 verification.
//!
//! Verification recomputes the signature from the headers the client says it signed and compares
//! the result in constant time. Checked around that: the credential scope (date, region,
//! service `kms`, terminator), the ±5-minute clock window, the mandatory signed headers (`host`,
//! `x-amz-date`, and, when present, `content-type` and every `x-amz-*` header — the operation is
//! named by `X-Amz-Target`, so an unsigned target could be swapped in a replay), and the session
//! token.
//!
//! For the request target `/` (the only one the server serves) the canonical request and the
//! string to sign are written here ([`canonical_request`]), with the same canonicalisation as
//! `aws-sigv4` (the signer the AWS SDKs use; the tests compare the two on random header sets),
//! and the signature is an HMAC-SHA256 (aws-lc-rs) under the derived signing key, which each
//! credential caches per scope (date, region, service): it changes once a day. Any other target
//! (reachable only through the library API) is canonicalised by `aws-sigv4` itself, URI
//! normalisation included; there the body is handed to the signer only as its SHA-256
//! (`SignableBody::Precomputed`), so the signer's trace logging can never print a request body.
//!
//! Each credential may carry an identity policy (see [`crate::policy::authorize`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::HeaderMap;
use zeroize::Zeroizing;

use crate::dates::{format_amz_date, parse_amz_date};
use crate::error::{KmsError, Result};
use crate::policy::Policy;

/// Largest accepted difference between the client's `X-Amz-Date` and the server clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. \
Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// One access key: who it is and the secret it signs with.
pub struct Credential {
    /// The access key id (`AKIA...`).
    pub access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    /// The principal this key authenticates, e.g. `arn:aws:iam::111122223333:user/admin`.
    pub principal: String,
    /// The principal's identity policy; `None` means unrestricted (credentials files written
    /// before identity policies existed).
    pub policy: Option<Arc<Policy>>,
    /// When the key stops being accepted (`ExpiredTokenException` from then on).
    pub expires: Option<SystemTime>,
    signing_keys: SigningKeys,
}

/// A credential's derived SigV4 signing keys by scope (date, region, service). A key is valid
/// for one day, so only the last few scopes are kept.
#[derive(Default)]
struct SigningKeys(RwLock<Vec<ScopedKey>>);

/// One derived signing key (`kSigning`) and its scope.
struct ScopedKey {
    date: [u8; 8],
    region: String,
    service: String,
    key: Zeroizing<[u8; 32]>,
}

/// Most scopes a credential keeps signing keys for (two services, around midnight).
const MAX_SIGNING_KEYS: usize = 4;

impl SigningKeys {
    /// The signing key of `secret` for the scope, derived once per scope.
    fn get(&self, secret: &str, date: &[u8; 8], region: &str, service: &str) -> Zeroizing<[u8; 32]> {
        let matches = |k: &ScopedKey| &k.date == date && k.region == region && k.service == service;
        if let Ok(keys) = self.0.read()
            && let Some(k) = keys.iter().find(|k| matches(k))
        {
            return k.key.clone();
        }
        let key = derive_signing_key(secret, date, region, service);
        if let Ok(mut keys) = self.0.write()
            && !keys.iter().any(matches)
        {
            if keys.len() >= MAX_SIGNING_KEYS {
                keys.remove(0);
            }
            keys.push(ScopedKey { date: *date, region: region.into(), service: service.into(), key: key.clone() });
        }
        key
    }
}

/// `kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
fn derive_signing_key(secret: &str, date: &[u8; 8], region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    use aws_lc_rs::hmac;
    let mut k = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.as_bytes());
    let mut tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), date);
    for part in [region.as_bytes(), service.as_bytes(), b"aws4_request"] {
        tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()), part);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential from its parts; `session_token`, when set, must accompany every request.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
        principal: impl Into<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
            principal: principal.into(),
            policy: None,
            expires: None,
            signing_keys: SigningKeys::default(),
        }
    }

    /// The same credential, refused from `expires` on (`None`: never).
    pub fn expiring(mut self, expires: Option<SystemTime>) -> Self {
        self.expires = expires;
        self
    }

    /// The same credential restricted by an identity policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }
}

/// The table of access keys the server accepts.
#[derive(Debug, Default)]
pub struct CredentialStore {
    by_id: HashMap<String, Credential>,
}

impl CredentialStore {
    /// Builds the table; access key ids must be unique and well formed.
    pub fn new(creds: Vec<Credential>) -> Result<Self> {
        let mut by_id = HashMap::new();
        for c in creds {
            if c.access_key_id.len() < 16
                || c.access_key_id.len() > 128
                || !c.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(KmsError::Config(format!(
                    "access key id {:?} must be 16 to 128 letters or digits",
                    c.access_key_id
                )));
            }
            if c.secret_access_key.is_empty() {
                return Err(KmsError::Config(format!("access key {} has an empty secret", c.access_key_id)));
            }
            if !c.principal.starts_with("arn:") {
                return Err(KmsError::Config(format!(
                    "principal of access key {} must be an ARN (arn:aws:iam::ACCOUNT:user/NAME), got {:?}",
                    c.access_key_id, c.principal
                )));
            }
            let id = c.access_key_id.clone();
            if by_id.insert(id.clone(), c).is_some() {
                return Err(KmsError::Config(format!("access key id {id} is listed twice")));
            }
        }
        if by_id.is_empty() {
            return Err(KmsError::Config("no credentials configured".into()));
        }
        Ok(Self { by_id })
    }

    /// Parses a credentials file: a YAML list of
    /// `{access_key_id, secret_access_key, principal, session_token?, policy?, expires?}`
    /// ([`crate::credentials`]).
    pub fn from_yaml(text: &str) -> Result<Self> {
        crate::credentials::CredentialsFile::parse(text)?.store()
    }

    /// Reads and parses a credentials file. A file that its group or others may read is
    /// refused: its secrets sign requests.
    pub fn load(path: &Path) -> Result<Self> {
        crate::credentials::CredentialsFile::load(path)?.store()
    }

    /// How many access keys are accepted.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no access key is accepted (never true for a store built by [`CredentialStore::new`]).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The credential with this access key id.
    pub fn get(&self, access_key_id: &str) -> Option<&Credential> {
        self.by_id.get(access_key_id)
    }

    /// Verifies the SigV4 signature of a request for service `kms` in `region` at time `now`.
    /// Returns the credential that signed it.
    ///
    /// `path_and_query` is the request target; the server serves only `/`.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        region: &str,
        now: SystemTime,
    ) -> Result<&Credential> {
        self.verify_for("kms", method, path_and_query, headers, body, region, now)
    }

    /// [`CredentialStore::verify`] for a request to `service` (`kms`, or `cloudtrail` for the
    /// audit search): the credential scope must name it, and the signature is computed with it.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_for(
        &self,
        service: &str,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        region: &str,
        now: SystemTime,
    ) -> Result<&Credential> {
        // aws-sigv4 panics on a target that is not an absolute path (e.g. `S`; found by the
        // kms_sigv4 fuzz target).
        if !path_and_query.starts_with('/') {
            return Err(KmsError::InvalidSignature(format!(
                "The request target {path_and_query:?} is not an absolute path."
            )));
        }
        let auth = headers.get(http::header::AUTHORIZATION).ok_or(KmsError::MissingAuthenticationToken)?;
        let auth = auth
            .to_str()
            .map_err(|_| KmsError::IncompleteSignature("Authorization header is not valid ASCII.".into()))?;
        let parsed = parse_authorization(auth)?;
        let cred = self.by_id.get(parsed.access_key_id).ok_or(KmsError::UnrecognizedClient)?;

        let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
            KmsError::IncompleteSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into(),
            )
        })?;
        let time = parse_amz_date(amz_date).ok_or_else(|| {
            KmsError::IncompleteSignature(format!("Date must be in ISO-8601 'basic format'. Got '{amz_date}'."))
        })?;
        if !amz_date.starts_with(parsed.date) {
            return Err(KmsError::InvalidSignature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.".into(),
            ));
        }
        if parsed.region != region {
            return Err(KmsError::InvalidSignature(format!(
                "Credential should be scoped to a valid region, not '{}'.",
                parsed.region
            )));
        }
        if parsed.service != service {
            return Err(KmsError::InvalidSignature(format!(
                "Credential should be scoped to correct service: '{service}'."
            )));
        }
        if parsed.terminator != "aws4_request" {
            return Err(KmsError::InvalidSignature(
                "Credential should be scoped with a valid terminator: 'aws4_request'.".into(),
            ));
        }
        check_skew(amz_date, time, now)?;
        check_signed_headers(&parsed.signed_headers, headers)?;
        let token = match headers.get("x-amz-security-token") {
            Some(v) => Some(v.to_str().map_err(|_| KmsError::UnrecognizedClient)?),
            None => None,
        };
        match (&cred.session_token, token) {
            (None, None) => {}
            (Some(want), Some(got))
                if aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), got.as_bytes()).is_ok() => {}
            _ => return Err(KmsError::UnrecognizedClient),
        }

        // The headers the client signed (except the two the signer inserts itself), every value.
        let mut signed: Vec<(&str, &str)> = Vec::new();
        for name in &parsed.signed_headers {
            if matches!(*name, "x-amz-date" | "x-amz-security-token") {
                continue;
            }
            let mut any = false;
            for v in headers.get_all(*name) {
                let v = v.to_str().map_err(|_| KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
                signed.push((name, v));
                any = true;
            }
            if !any {
                return Err(KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()));
            }
        }
        if parsed.signed_headers.contains(&"x-amz-security-token") != token.is_some() {
            return Err(KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()));
        }

        let body_hash = to_hex(&envelope_keystore::crypto::sha256(&[body]));
        let expected = if path_and_query == "/" {
            // `amz_date` parsed, so it is exactly `YYYYMMDD'T'HHMMSS'Z'`: its date is the scope's.
            let date: [u8; 8] = amz_date
                .as_bytes()
                .get(..8)
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
            let token = cred.session_token.as_ref().map(|t| t.as_str());
            let creq = canonical_request(method, signed, amz_date, token, &body_hash);
            let key = cred.signing_keys.get(&cred.secret_access_key, &date, region, service);
            signature(&key, amz_date, &date, region, service, &creq)
        } else {
            sigv4_signature(cred, service, method, path_and_query, signed, body_hash, region, time)?
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), parsed.signature.as_bytes())
            .map_err(|_| KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
        // Told only to the key's holder: the signature had to match first.
        if cred.expires.is_some_and(|t| now >= t) {
            return Err(KmsError::ExpiredToken);
        }
        Ok(cred)
    }
}

/// The canonical request of `method /` (SigV4 step 1, as `aws-sigv4` writes it): `signed` are
/// the client's signed headers and their values (without `x-amz-date` and
/// `x-amz-security-token`, which are taken from `amz_date` and the credential's `token`);
/// values are trimmed of spaces with inner runs of spaces collapsed, a name's values joined by
/// `,` in order, names sorted.
fn canonical_request(
    method: &str,
    mut signed: Vec<(&str, &str)>,
    amz_date: &str,
    token: Option<&str>,
    body_hash: &str,
) -> String {
    let mut headers: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(signed.len() + 2);
    headers.extend(signed.drain(..).map(|(n, v)| (n, trim_all(v))));
    headers.push(("x-amz-date", Cow::Borrowed(amz_date)));
    if let Some(t) = token {
        headers.push(("x-amz-security-token", Cow::Borrowed(t)));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(256 + headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum::<usize>());
    out.push_str(method);
    out.push_str("\n/\n\n");
    let mut names = String::with_capacity(128);
    let mut previous: Option<&str> = None;
    for (name, value) in &headers {
        if previous == Some(*name) {
            out.pop();
            out.push(',');
        } else {
            if previous.is_some() {
                names.push(';');
            }
            names.push_str(name);
            out.push_str(name);
            out.push(':');
        }
        out.push_str(value);
        out.push('\n');
        previous = Some(name);
    }
    out.push('\n');
    out.push_str(&names);
    out.push('\n');
    out.push_str(body_hash);
    out
}

/// A header value as SigV4 canonicalises it: spaces (only spaces) trimmed at both ends, inner runs
/// of spaces collapsed to one.
fn trim_all(v: &str) -> Cow<'_, str> {
    let v = v.trim_matches(' ');
    if !v.contains("  ") {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut space = false;
    for c in v.chars() {
        if c == ' ' && space {
            continue;
        }
        space = c == ' ';
        out.push(c);
    }
    Cow::Owned(out)
}

/// The lowercase hex signature of a canonical request (SigV4 steps 2 and 4).
fn signature(key: &[u8; 32], amz_date: &str, date: &[u8; 8], region: &str, service: &str, creq: &str) -> String {
    let hashed = to_hex(&envelope_keystore::crypto::sha256(&[creq.as_bytes()]));
    let mut sts = String::with_capacity(128);
    sts.push_str("AWS4-HMAC-SHA256\n");
    sts.push_str(amz_date);
    sts.push('\n');
    sts.extend(date.iter().map(|&b| char::from(b)));
    sts.push('/');
    sts.push_str(region);
    sts.push('/');
    sts.push_str(service);
    sts.push_str("/aws4_request\n");
    sts.push_str(&hashed);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    to_hex(aws_lc_rs::hmac::sign(&key, sts.as_bytes()).as_ref())
}

/// Lowercase hex (`hex::encode` builds its string a character at a time).
fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    // Fails only on an output of the wrong length.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The signature `aws-sigv4` computes for a request to any target (path normalisation and
/// query canonicalisation included).
#[allow(clippy::too_many_arguments)]
fn sigv4_signature(
    cred: &Credential,
    service: &str,
    method: &str,
    path_and_query: &str,
    signed: Vec<(&str, &str)>,
    body_hash: String,
    region: &str,
    time: SystemTime,
) -> Result<String> {
    let identity: aws_smithy_runtime_api::client::identity::Identity = aws_credential_types::Credentials::new(
        cred.access_key_id.clone(),
        cred.secret_access_key.as_str(),
        cred.session_token.as_ref().map(|t| t.to_string()),
        None,
        "envelope-kms",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.excluded_headers = Some(Vec::new());
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| KmsError::Internal(format!("sigv4 parameters: {e}")))?
        .into();
    let request =
        SignableRequest::new(method, path_and_query, signed.into_iter(), SignableBody::Precomputed(body_hash))
            .map_err(|_| KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
    let expected = sign(request, &params).map_err(|_| KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()))?;
    Ok(expected.signature().to_string())
}

/// The headers a signature must cover: `host` and `x-amz-date` always; `content-type` and every
/// `x-amz-*` header (above all `x-amz-target`, which names the operation) whenever present.
fn check_signed_headers(signed: &[&str], headers: &HeaderMap) -> Result<()> {
    let unsigned = |name: &str| !signed.contains(&name);
    for required in ["host", "x-amz-date"] {
        if unsigned(required) {
            return Err(KmsError::IncompleteSignature(format!(
                "'{required}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    for name in headers.keys() {
        let name = name.as_str();
        if (name == "content-type" || name.starts_with("x-amz-")) && unsigned(name) {
            return Err(KmsError::IncompleteSignature(format!(
                "'{name}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    Ok(())
}

/// The access key id a request claims in its `Authorization` header, unverified (for the audit
/// record of a request that fails authentication). Only a plausible id (letters and digits, at
/// most 128) is returned, so a record never carries arbitrary client text.
pub fn claimed_access_key_id(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256")?;
    let cred = rest.split(',').find_map(|p| p.trim().strip_prefix("Credential="))?;
    let id = cred.split('/').next()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

/// The region of the credential scope an `Authorization` header claims (unverified: it picks
/// which region's keys the request is for, and verification then requires the signature to be
/// scoped to exactly that region).
pub fn claimed_region(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256")?;
    let cred = rest.split(',').find_map(|p| p.trim().strip_prefix("Credential="))?;
    let region = cred.split('/').nth(2)?;
    (!region.is_empty() && region.len() <= 64).then_some(region)
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(h: &str) -> Result<Authorization<'_>> {
    let Some(rest) = h.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(KmsError::IncompleteSignature(
            "Unsupported Authorization Type; only AWS4-HMAC-SHA256 is accepted.".into(),
        ));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let mut missing = Vec::new();
    for (name, v) in [("Credential", credential), ("Signature", signature), ("SignedHeaders", signed)] {
        if v.is_none_or(str::is_empty) {
            missing.push(format!("Authorization header requires '{name}' parameter."));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(KmsError::IncompleteSignature(missing.join(" ")));
    };
    if !missing.is_empty() {
        return Err(KmsError::IncompleteSignature(missing.join(" ")));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(KmsError::IncompleteSignature(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term.".into(),
        ));
    };
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KmsError::InvalidSignature(SIGNATURE_MISMATCH.into()));
    }
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic()))
    {
        return Err(KmsError::IncompleteSignature(
            "SignedHeaders must be lowercase header names separated by ';'.".into(),
        ));
    }
    Ok(Authorization { access_key_id, date, region, service, terminator, signed_headers, signature })
}

fn check_skew(amz_date: &str, time: SystemTime, now: SystemTime) -> Result<()> {
    match now.duration_since(time) {
        Ok(behind) if behind > MAX_CLOCK_SKEW => Err(KmsError::InvalidSignature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            format_amz_date(now - MAX_CLOCK_SKEW),
            format_amz_date(now)
        ))),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > MAX_CLOCK_SKEW => Err(KmsError::InvalidSignature(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            format_amz_date(now + MAX_CLOCK_SKEW),
            format_amz_date(now)
        ))),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_claimed_region_is_the_credential_scope_s() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let h = with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/kms/aws4_request, SignedHeaders=host, Signature=00",
        );
        assert_eq!(claimed_region(&h), Some("us-west-2"));
        assert_eq!(claimed_region(&with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830")), None);
        assert_eq!(claimed_region(&with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830//kms/aws4_request")), None);
        assert_eq!(claimed_region(&with("Basic dXNlcjpwYXNz")), None);
        assert_eq!(claimed_region(&HeaderMap::new()), None);
    }

    #[test]
    fn authorization_header() {
        let h = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000000/20150830/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let a = parse_authorization(h).unwrap();
        assert_eq!(a.access_key_id, "AKIDEXAMPLE0000000");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        for bad in [
            "Basic dXNlcjpwYXNz",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=Host, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ] {
            assert!(parse_authorization(bad).is_err(), "{bad}");
        }
    }

    /// Found by the kms_sigv4 fuzz target: a request target without a leading `/` reached the
    /// signer, which panicked rebuilding the URI.
    #[test]
    fn a_target_that_is_not_an_absolute_path_is_refused() {
        let store = CredentialStore::new(vec![Credential::new(
            "AKIDFUZZFUZZFUZZ0001",
            Zeroizing::new("fuzz-secret-0001".into()),
            None,
            "arn:aws:iam::111122223333:user/fuzz",
        )])
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:8080".parse().unwrap());
        headers.insert("x-amz-date", "20260101T000000Z".parse().unwrap());
        headers.insert(
            http::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKIDFUZZFUZZFUZZ0001/20260101/us-east-1/kms/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .parse()
                .unwrap(),
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        for target in ["S", "", "*", "S/"] {
            let e = store.verify("POST", target, &headers, b"", "us-east-1", now).unwrap_err();
            assert!(matches!(e, KmsError::InvalidSignature(_)), "{target:?}: {e:?}");
        }
        let e = store.verify("POST", "/", &headers, b"", "us-east-1", now).unwrap_err();
        assert!(matches!(e, KmsError::InvalidSignature(ref m) if m == SIGNATURE_MISMATCH), "{e:?}");
    }

    #[test]
    fn credentials_file() {
        let ok = "- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n  principal: arn:aws:iam::111122223333:user/admin\n";
        let s = CredentialStore::from_yaml(ok).unwrap();
        let c = &s.by_id["AKIAIOSFODNN7EXAMPLE"];
        assert_eq!(c.principal, "arn:aws:iam::111122223333:user/admin");
        assert!(!format!("{c:?}").contains("wJalr"), "secret must not be in Debug output");
        let dup = format!("{ok}{ok}");
        assert!(CredentialStore::from_yaml(&dup).is_err());
        assert!(CredentialStore::from_yaml("[]").is_err());
        assert!(
            CredentialStore::from_yaml(
                "- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: x\n  principal: admin\n"
            )
            .is_err()
        );
        assert!(
            CredentialStore::from_yaml("- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret: x\n  principal: arn:x\n")
                .is_err()
        );
        assert!(CredentialStore::from_yaml("not: [a list").is_err());
    }

    /// The canonical request written here and `aws-sigv4`'s give the same signature: header
    /// values with spaces and tabs to trim and collapse, repeated headers, names listed twice,
    /// session tokens, both services.
    fn same_signature_as_aws_sigv4(headers: &[(String, String)], token: Option<&str>, service: &str, body: &[u8]) {
        let cred = Credential::new(
            "AKIAIOSFODNN7EXAMPLE",
            Zeroizing::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            token.map(|t| Zeroizing::new(t.to_string())),
            "arn:aws:iam::111122223333:user/admin",
        );
        let amz_date = "20260102T030405Z";
        let time = parse_amz_date(amz_date).unwrap();
        let signed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let body_hash = hex::encode(envelope_keystore::crypto::sha256(&[body]));
        let want =
            sigv4_signature(&cred, service, "POST", "/", signed.clone(), body_hash.clone(), "eu-west-3", time).unwrap();
        let date = *b"20260102";
        for _ in 0..2 {
            // Derived, then cached.
            let creq = canonical_request("POST", signed.clone(), amz_date, token, &body_hash);
            let key = cred.signing_keys.get(&cred.secret_access_key, &date, "eu-west-3", service);
            assert_eq!(signature(&key, amz_date, &date, "eu-west-3", service, &creq), want, "{headers:?}");
        }
    }

    #[test]
    fn canonical_request_matches_aws_sigv4() {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        same_signature_as_aws_sigv4(
            &[
                h("host", "127.0.0.1:4599"),
                h("content-type", "application/x-amz-json-1.1"),
                h("x-amz-target", "TrentService.Decrypt"),
            ],
            None,
            "kms",
            b"{}",
        );
        same_signature_as_aws_sigv4(
            &[
                h("x-amz-target", "  a   b \t c  "),
                h("host", "h"),
                h("x-amz-meta", ""),
                h("x-amz-meta", "second"),
                h("host", "h"),
            ],
            Some("token value"),
            "cloudtrail",
            b"",
        );
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            signed in "[a-z0-9;:()-]{0,40}",
            scope in "[A-Za-z0-9/_-]{0,60}",
            date in "[0-9TZ]{0,16}",
            host in proptest::option::of("[ -~]{0,20}"),
            token in proptest::option::of("[ -~]{0,10}"),
            valid_scope in any::<bool>(),
        ) {
            // Half the cases get a valid scope and date, so the signer itself is reached.
            let (scope, date, signed) = if valid_scope {
                ("20150830/us-east-1/kms/aws4_request".to_string(), "20150830T123600Z".to_string(), format!("host;x-amz-date;{signed}"))
            } else {
                (scope, date, signed)
            };
            let store = CredentialStore::new(vec![Credential::new(
                "AKIAIOSFODNN7EXAMPLE",
                Zeroizing::new("secret".into()),
                None,
                "arn:aws:iam::111122223333:user/admin",
            )])
            .unwrap();
            let mut h = HeaderMap::new();
            let sig = "0".repeat(64);
            for cred in [scope.clone(), format!("AKIAIOSFODNN7EXAMPLE/{scope}")] {
                let auth = format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={signed}, Signature={sig}");
                if let Ok(v) = http::HeaderValue::from_str(&auth) {
                    h.insert(http::header::AUTHORIZATION, v);
                }
                if let Ok(v) = http::HeaderValue::from_str(&date) {
                    h.insert("x-amz-date", v);
                }
                if let Some(Ok(v)) = host.as_deref().map(http::HeaderValue::from_str) {
                    h.insert(http::header::HOST, v);
                }
                if let Some(Ok(v)) = token.as_deref().map(http::HeaderValue::from_str) {
                    h.insert("x-amz-security-token", v);
                }
                let now = parse_amz_date(&date).unwrap_or(std::time::UNIX_EPOCH);
                let rejected = store.verify("POST", "/", &h, b"body", "us-east-1", now).is_err();
                prop_assert!(rejected);
            }
        }

        #[test]
        fn canonical_request_matches_aws_sigv4_on_any_headers(
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~\t]{0,24}"), 0..6),
            token in proptest::option::of("[!-~][ -~]{0,10}[!-~]"),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut headers = headers;
            headers.retain(|(n, _)| n != "x-amz-date" && n != "x-amz-security-token");
            headers.push(("host".into(), "127.0.0.1:4599".into()));
            same_signature_as_aws_sigv4(&headers, token.as_deref(), "kms", &body);
        }

        #[test]
        fn authorization_parser_never_panics(s in ".{0,300}") {
            let _ = parse_authorization(&s);
            let _ = parse_amz_date(&s);
        }
    }
}
