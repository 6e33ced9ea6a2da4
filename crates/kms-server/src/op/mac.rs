//! HMAC operations (the data plane): GenerateMac and VerifyMac with HMAC keys (KeySpec
//! `HMAC_224/256/384/512`, KeyUsage `GENERATE_VERIFY_MAC`). Served from the key store's in-memory
//! snapshot like Encrypt and Decrypt; their audit records show the key and the algorithm, never
//! the message or the MAC.
//!
//! Checks in AWS's order: the request's members, the key (exists, then the caller's permission),
//! its state, its usage, the algorithm against its spec, then (VerifyMac) the MAC, then DryRun.

use envelope_keystore::{KeyUsage, MacAlgorithm};
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Call, Operation, Reply, usable, uses};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{
    MAX_CIPHERTEXT, MAX_PLAINTEXT, Raw, Validator, b64, decode_blob, decode_secret_member, length_error,
};

/// The wire names of the MAC algorithms (the model's enum, in its order).
const MAC_ALGORITHMS: &[&str] = &["HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"];

/// A validated GenerateMac or VerifyMac request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    GenerateMac { key_id: String, algorithm: MacAlgorithm, message: Zeroizing<Vec<u8>>, dry_run: bool },
    VerifyMac { key_id: String, algorithm: MacAlgorithm, message: Zeroizing<Vec<u8>>, mac: Vec<u8>, dry_run: bool },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    let message = v.required("message", raw.message.as_ref());
    let key_id = v.key_id("keyId", raw.key_id.clone());
    let algorithm = v.required("macAlgorithm", raw.mac_algorithm.as_deref());
    if let Some(a) = algorithm {
        v.one_of("macAlgorithm", a, MAC_ALGORITHMS);
    }
    let mac = if op == Operation::VerifyMac { v.required("mac", raw.mac.as_deref()) } else { None };
    v.grant_tokens(&raw.grant_tokens);
    v.finish()?;
    let message = decode_secret_member("message", message.map(|m| m.as_str()).unwrap_or_default())?;
    if message.is_empty() || message.len() > MAX_PLAINTEXT {
        return Err(length_error("message", 1, MAX_PLAINTEXT, message.len()));
    }
    let algorithm = algorithm
        .and_then(MacAlgorithm::from_name)
        .ok_or_else(|| KmsError::Internal("a validated MAC algorithm has no name".into()))?;
    let key_id = key_id.unwrap_or_default();
    let dry_run = raw.dry_run.unwrap_or(false);
    Ok(match op {
        Operation::VerifyMac => {
            let mac = decode_blob("mac", mac.unwrap_or_default(), MAX_CIPHERTEXT)?;
            Request::VerifyMac { key_id, algorithm, message, mac, dry_run }
        }
        _ => Request::GenerateMac { key_id, algorithm, message, dry_run },
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::GenerateMac { key_id, algorithm, message, dry_run } => {
            let k = mac_key(call, &key_id, algorithm, "GenerateMac")?;
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let mac = s
                .store
                .generate_mac(&k.r, algorithm, &message)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = GenerateMacResponse { mac: b64(&mac), mac_algorithm: algorithm.as_str(), key_id: &k.arn };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
        Request::VerifyMac { key_id, algorithm, message, mac, dry_run } => {
            let k = mac_key(call, &key_id, algorithm, "VerifyMac")?;
            let valid = s
                .store
                .verify_mac(&k.r, algorithm, &message, &mac)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            if !valid {
                // AWS's text for it is not documented: envelope's own.
                return Err(KmsError::InvalidMac(format!(
                    "The MAC does not verify: it is not the {algorithm} of this message under {}.",
                    k.arn
                )));
            }
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let resp = VerifyMacResponse { key_id: &k.arn, mac_valid: true, mac_algorithm: algorithm.as_str() };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
    }
}

/// The HMAC key named `key_id`, authorized for `op`, usable, of `algorithm`'s spec.
fn mac_key(call: &Call<'_>, key_id: &str, algorithm: MacAlgorithm, op: &str) -> Result<super::Resolved> {
    let k = call.resolve(key_id, Forms::Any)?;
    call.allow(&k, op)?;
    usable(&k)?;
    uses(&k, KeyUsage::GenerateVerifyMac, op)?;
    if k.spec.mac_algorithm() != Some(algorithm) {
        return Err(KmsError::InvalidKeyUsage(format!(
            "Algorithm {algorithm} is incompatible with key spec {}.",
            k.spec
        )));
    }
    Ok(k)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GenerateMacResponse<'a> {
    mac: String,
    mac_algorithm: &'static str,
    key_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct VerifyMacResponse<'a> {
    key_id: &'a str,
    mac_valid: bool,
    mac_algorithm: &'static str,
}
