//! Key agreement (the data plane): DeriveSharedSecret with `KEY_AGREEMENT` keys (KeySpec
//! `ECC_NIST_P256/P384/P521`): ECDH between the key's private key and a peer's public key (a DER
//! SubjectPublicKeyInfo on the same curve), answering the raw shared secret (the x-coordinate of
//! the shared point, as AWS does: no key derivation function). Served from the key store's
//! in-memory snapshot; audit records show the key and the algorithm, never the peer's key or the
//! secret.
//!
//! Checks in AWS's order: the request's members, the key (exists, then the caller's permission),
//! its state, its usage, the peer's public key, then DryRun.

use envelope_keystore::KeyUsage;
use serde::Serialize;

use super::{Call, Operation, Reply, usable, uses};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{Raw, SecretB64, Validator, decode_blob, encode_secret, unsupported_if};

/// The model's `KeyAgreementAlgorithmSpec` values.
pub(crate) const KEY_AGREEMENT_ALGORITHMS: &[&str] = &["ECDH"];

/// Longest peer public key (the model's `PublicKeyType`).
const MAX_PUBLIC_KEY: usize = 8192;

/// A validated DeriveSharedSecret request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    DeriveSharedSecret { key_id: String, public_key: Vec<u8>, dry_run: bool },
}

pub(super) fn parse(_op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    let key_id = v.key_id("keyId", raw.key_id.clone());
    let algorithm = v.required("keyAgreementAlgorithm", raw.key_agreement_algorithm.as_deref());
    if let Some(a) = algorithm {
        v.one_of("keyAgreementAlgorithm", a, KEY_AGREEMENT_ALGORITHMS);
    }
    let public_key = v.required("publicKey", raw.public_key.as_deref());
    v.grant_tokens(&raw.grant_tokens);
    v.finish()?;
    // No Nitro enclaves here: an attested recipient is refused as by the other operations.
    unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
    let public_key = decode_blob("publicKey", public_key.unwrap_or_default(), MAX_PUBLIC_KEY)?;
    Ok(Request::DeriveSharedSecret {
        key_id: key_id.unwrap_or_default(),
        public_key,
        dry_run: raw.dry_run.unwrap_or(false),
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    let Request::DeriveSharedSecret { key_id, public_key, dry_run } = req;
    let k = call.resolve(&key_id, Forms::Any)?;
    call.allow(&k, "DeriveSharedSecret")?;
    usable(&k)?;
    uses(&k, KeyUsage::KeyAgreement, "DeriveSharedSecret")?;
    let secret = s.store.derive_shared_secret(&k.r, &public_key).map_err(|e| match e {
        // AWS's text for it is not documented: envelope's own.
        envelope_keystore::Error::Invalid(_) => KmsError::Validation(format!(
            "PublicKey is not a DER-encoded SubjectPublicKeyInfo of a public key on the curve of key spec {}.",
            k.spec
        )),
        e => KmsError::from_store(e, Subject::Key(&k.arn)),
    })?;
    if dry_run {
        return Err(KmsError::DryRun);
    }
    let attrs = call.attributes(&k)?;
    let resp = SharedSecretResponse {
        key_id: &k.arn,
        shared_secret: encode_secret(&secret),
        key_agreement_algorithm: KEY_AGREEMENT_ALGORITHMS[0],
        key_origin: if attrs.external { "EXTERNAL" } else { "AWS_KMS" },
    };
    call.crypto_reply(&resp, Some(k.arn.clone()))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SharedSecretResponse<'a> {
    key_id: &'a str,
    shared_secret: SecretB64,
    key_agreement_algorithm: &'static str,
    key_origin: &'static str,
}
