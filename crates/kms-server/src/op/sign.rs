//! Asymmetric signing: Sign and Verify (the data plane, served from the key store's in-memory
//! snapshot) and GetPublicKey, with signing keys (KeyUsage `SIGN_VERIFY`): KeySpec
//! `ECC_NIST_P256/P384/P521` (ECDSA with SHA-256/384/512, signatures ASN.1 DER as AWS returns
//! them) and `RSA_2048/3072/4096` (RSASSA-PSS and RSASSA-PKCS1-v1_5 with SHA-256/384/512).
//! GetPublicKey answers for every key pair (RSA `ENCRYPT_DECRYPT` and ECC `KEY_AGREEMENT` keys
//! too), with the algorithms of the key's usage. Audit
//! records show the key, the algorithm and the message type, never the message or signature.
//!
//! Checks in AWS's order: the request's members, the key (exists, then the caller's permission),
//! its state, its usage, the algorithm against its spec, the digest's length, then (Verify) the
//! signature, then DryRun.

use envelope_keystore::crypto::Signed;
use envelope_keystore::{KeyUsage, SigningAlgorithm};
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Call, Operation, Reply, Resolved, usable, uses};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{
    MAX_CIPHERTEXT, MAX_PLAINTEXT, Raw, Validator, b64, decode_blob, decode_secret_member, length_error,
};

/// The model's `SigningAlgorithmSpec` values, in its order.
const SIGNING_ALGORITHMS: &[&str] = &[
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256",
    "ECDSA_SHA_384",
    "ECDSA_SHA_512",
    "SM2DSA",
    "ML_DSA_SHAKE_256",
    "ED25519_SHA_512",
    "ED25519_PH_SHA_512",
];

/// A validated Sign, Verify or GetPublicKey request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    GetPublicKey {
        key_id: String,
    },
    Sign {
        key_id: String,
        algorithm: String,
        message: Zeroizing<Vec<u8>>,
        digest: bool,
        dry_run: bool,
    },
    Verify {
        key_id: String,
        algorithm: String,
        message: Zeroizing<Vec<u8>>,
        digest: bool,
        signature: Vec<u8>,
        dry_run: bool,
    },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    if op == Operation::GetPublicKey {
        let key_id = v.key_id("keyId", raw.key_id.clone());
        v.grant_tokens(&raw.grant_tokens);
        v.finish()?;
        return Ok(Request::GetPublicKey { key_id: key_id.unwrap_or_default() });
    }
    let key_id = v.key_id("keyId", raw.key_id.clone());
    let message = v.required("message", raw.message.as_ref());
    if let Some(t) = &raw.message_type {
        v.one_of("messageType", t, &["RAW", "DIGEST", "EXTERNAL_MU"]);
    }
    let signature = if op == Operation::Verify { v.required("signature", raw.signature.as_deref()) } else { None };
    v.grant_tokens(&raw.grant_tokens);
    let algorithm = v.required("signingAlgorithm", raw.signing_algorithm.clone());
    if let Some(a) = &algorithm {
        v.one_of("signingAlgorithm", a, SIGNING_ALGORITHMS);
    }
    v.finish()?;
    let message = decode_secret_member("message", message.map(|m| m.as_str()).unwrap_or_default())?;
    if message.is_empty() || message.len() > MAX_PLAINTEXT {
        return Err(length_error("message", 1, MAX_PLAINTEXT, message.len()));
    }
    let digest = match raw.message_type.as_deref() {
        None | Some("RAW") => false,
        Some("DIGEST") => true,
        Some(other) => {
            return Err(KmsError::Validation(format!(
                "Message type {other} is only valid for ML-DSA keys, which this server does not make."
            )));
        }
    };
    let (key_id, algorithm, dry_run) =
        (key_id.unwrap_or_default(), algorithm.unwrap_or_default(), raw.dry_run == Some(true));
    Ok(match op {
        Operation::Verify => {
            let signature = decode_blob("signature", signature.unwrap_or_default(), MAX_CIPHERTEXT)?;
            Request::Verify { key_id, algorithm, message, digest, signature, dry_run }
        }
        _ => Request::Sign { key_id, algorithm, message, digest, dry_run },
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::GetPublicKey { key_id } => {
            let k = call.resolve(&key_id, Forms::Any)?;
            call.allow(&k, "GetPublicKey")?;
            usable(&k)?;
            // AWS: only asymmetric keys have a public key.
            if !k.spec.is_key_pair() {
                return Err(KmsError::UnsupportedOperation(format!(
                    "{} key usage is {} which is not valid for GetPublicKey.",
                    k.arn, k.usage
                )));
            }
            let der = s.store.public_key(&k.r).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            call.reply(&PublicKeyResponse {
                key_id: &k.arn,
                public_key: b64(&der),
                customer_master_key_spec: k.spec.as_str(),
                key_spec: k.spec.as_str(),
                key_usage: k.usage.as_str(),
                encryption_algorithms: super::keys::encryption_algorithms(k.spec, k.usage),
                signing_algorithms: super::keys::signing_algorithms(k.spec, k.usage),
                key_agreement_algorithms: super::keys::key_agreement_algorithms(k.usage),
            })
        }
        Request::Sign { key_id, algorithm, message, digest, dry_run } => {
            let (k, alg) = signing_key(call, &key_id, &algorithm, "Sign")?;
            let what = signed(alg, &message, digest)?;
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let sig = s.store.sign(&k.r, alg, what).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = SignResponse { key_id: &k.arn, signature: b64(&sig), signing_algorithm: alg.as_str() };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
        Request::Verify { key_id, algorithm, message, digest, signature, dry_run } => {
            let (k, alg) = signing_key(call, &key_id, &algorithm, "Verify")?;
            let what = signed(alg, &message, digest)?;
            let valid = s
                .store
                .verify(&k.r, alg, what, &signature)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            if !valid {
                // AWS's text for it is not documented: envelope's own.
                return Err(KmsError::InvalidKmsSignature(format!(
                    "The signature does not verify: it is not the {alg} signature of this message under {}.",
                    k.arn
                )));
            }
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let resp = VerifyResponse { key_id: &k.arn, signature_valid: true, signing_algorithm: alg.as_str() };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
    }
}

/// The signing key named `key_id`, authorized for `op`, usable, with `algorithm` its spec's.
fn signing_key(call: &Call<'_>, key_id: &str, algorithm: &str, op: &str) -> Result<(Resolved, SigningAlgorithm)> {
    let k = call.resolve(key_id, Forms::Any)?;
    call.allow(&k, op)?;
    usable(&k)?;
    uses(&k, KeyUsage::SignVerify, op)?;
    match SigningAlgorithm::from_name(algorithm).filter(|a| k.spec.signing_algorithms().contains(a)) {
        Some(a) => Ok((k, a)),
        None => {
            Err(KmsError::InvalidKeyUsage(format!("Algorithm {algorithm} is incompatible with key spec {}.", k.spec)))
        }
    }
}

/// What is signed: the message, or (DIGEST) a digest that must be the algorithm's length.
fn signed(alg: SigningAlgorithm, message: &[u8], digest: bool) -> Result<Signed<'_>> {
    if !digest {
        return Ok(Signed::Raw(message));
    }
    if message.len() != alg.digest_len() {
        return Err(KmsError::Validation(format!("Digest is invalid length for algorithm {alg}.")));
    }
    Ok(Signed::Digest(message))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PublicKeyResponse<'a> {
    key_id: &'a str,
    public_key: String,
    customer_master_key_spec: &'static str,
    key_spec: &'static str,
    key_usage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_algorithms: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_algorithms: Option<Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_agreement_algorithms: Option<[&'static str; 1]>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SignResponse<'a> {
    key_id: &'a str,
    signature: String,
    signing_algorithm: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VerifyResponse<'a> {
    key_id: &'a str,
    signature_valid: bool,
    signing_algorithm: &'static str,
}
