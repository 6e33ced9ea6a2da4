//! Cryptographic operations (the data plane): Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom. They read keys, policies and material from
//! the key store's in-memory snapshot only ([`Request::in_memory`]), so they run without the
//! blocking pool; their audit records show the request (encryption context included, never
//! plaintext or ciphertext) and no response members.
//!
//! Encrypt, Decrypt and ReEncrypt also take RSA `ENCRYPT_DECRYPT` keys with EncryptionAlgorithm
//! `RSAES_OAEP_SHA_1` / `RSAES_OAEP_SHA_256` (MGF1 of the same hash, no label): the ciphertext is
//! the raw RSA-OAEP output, so anyone with the key's public key (GetPublicKey) encrypts for it
//! offline; Decrypt of such a ciphertext needs the KeyId; asymmetric keys take no encryption
//! context, and plaintexts are limited by the key size and algorithm (RSA_2048: 214 bytes with
//! SHA-1, 190 with SHA-256). The data key operations need symmetric keys.

use envelope_keystore::crypto::SigningKey;
use envelope_keystore::{EncryptionAlgorithm, EncryptionContext, KeySpec, KeyUsage};
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Call, Operation, Reply, Resolved, SYMMETRIC_DEFAULT, usable, uses};
use crate::Server;
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{
    Context, MAX_CIPHERTEXT, MAX_PLAINTEXT, Raw, SecretB64, Validator, b64, decode_blob, decode_secret, encode_secret,
    length_error, reserved_context, unsupported_if,
};

/// A validated cryptographic request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    Decrypt {
        ciphertext: Vec<u8>,
        context: Context,
        key_id: Option<String>,
        algorithm: String,
        dry_run: bool,
    },
    Encrypt {
        key_id: String,
        plaintext: Zeroizing<Vec<u8>>,
        context: Context,
        algorithm: String,
        dry_run: bool,
    },
    GenerateDataKey {
        key_id: String,
        context: Context,
        len: usize,
        with_plaintext: bool,
        dry_run: bool,
    },
    GenerateDataKeyPair {
        key_id: String,
        context: Context,
        spec: envelope_keystore::KeySpec,
        with_plaintext: bool,
        dry_run: bool,
    },
    GenerateRandom {
        len: usize,
    },
    ReEncrypt {
        ciphertext: Vec<u8>,
        source_context: Context,
        source_key_id: Option<String>,
        source_algorithm: String,
        destination_key_id: String,
        destination_context: Context,
        destination_algorithm: String,
        dry_run: bool,
    },
}

impl Request {
    /// Whether the key store can answer from memory: always, except for a symmetric ciphertext
    /// whose material is not in the snapshot (made by another process since the last refresh, or not
    /// a ciphertext of this store), which is looked up in the database.
    pub fn in_memory(&self, server: &Server) -> bool {
        match self {
            // An RSA ciphertext is decrypted with the key pair in the snapshot.
            Request::Decrypt { ciphertext, algorithm, .. }
            | Request::ReEncrypt { ciphertext, source_algorithm: algorithm, .. } => {
                algorithm != SYMMETRIC_DEFAULT || server.store.is_cached(ciphertext)
            }
            Request::Encrypt { .. }
            | Request::GenerateDataKey { .. }
            | Request::GenerateDataKeyPair { .. }
            | Request::GenerateRandom { .. } => true,
        }
    }
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    let dry_run = raw.dry_run.unwrap_or(false);
    Ok(match op {
        Operation::Encrypt => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let plaintext = v.required("plaintext", raw.plaintext.as_ref());
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("encryptionAlgorithm", &raw.encryption_algorithm);
            v.finish()?;
            let plaintext = decode_secret(plaintext.map(|p| p.as_str()).unwrap_or_default())?;
            if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
                return Err(length_error("plaintext", 1, MAX_PLAINTEXT, plaintext.len()));
            }
            reserved_context(&raw.encryption_context)?;
            Request::Encrypt {
                key_id: key_id.unwrap_or_default(),
                plaintext,
                context: raw.encryption_context.clone().unwrap_or_default(),
                algorithm: algorithm_name(&raw.encryption_algorithm),
                dry_run,
            }
        }
        Operation::Decrypt => {
            let ciphertext = v.required("ciphertextBlob", raw.ciphertext_blob.as_deref());
            if let Some(k) = &raw.key_id {
                v.len("keyId", k, 1, 2048);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("encryptionAlgorithm", &raw.encryption_algorithm);
            v.finish()?;
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            let ciphertext = decode_blob("ciphertextBlob", ciphertext.unwrap_or_default(), MAX_CIPHERTEXT)?;
            reserved_context(&raw.encryption_context)?;
            Request::Decrypt {
                ciphertext,
                context: raw.encryption_context.clone().unwrap_or_default(),
                key_id: raw.key_id.clone(),
                algorithm: algorithm_name(&raw.encryption_algorithm),
                dry_run,
            }
        }
        Operation::ReEncrypt => {
            let ciphertext = v.required("ciphertextBlob", raw.ciphertext_blob.as_deref());
            let destination_key_id = v.key_id("destinationKeyId", raw.destination_key_id.clone());
            if let Some(k) = &raw.source_key_id {
                v.len("sourceKeyId", k, 1, 2048);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.algorithm("sourceEncryptionAlgorithm", &raw.source_encryption_algorithm);
            v.algorithm("destinationEncryptionAlgorithm", &raw.destination_encryption_algorithm);
            v.finish()?;
            let ciphertext = decode_blob("ciphertextBlob", ciphertext.unwrap_or_default(), MAX_CIPHERTEXT)?;
            reserved_context(&raw.source_encryption_context)?;
            reserved_context(&raw.destination_encryption_context)?;
            Request::ReEncrypt {
                ciphertext,
                source_context: raw.source_encryption_context.clone().unwrap_or_default(),
                source_key_id: raw.source_key_id.clone(),
                source_algorithm: algorithm_name(&raw.source_encryption_algorithm),
                destination_key_id: destination_key_id.unwrap_or_default(),
                destination_context: raw.destination_encryption_context.clone().unwrap_or_default(),
                destination_algorithm: algorithm_name(&raw.destination_encryption_algorithm),
                dry_run,
            }
        }
        Operation::GenerateDataKey | Operation::GenerateDataKeyWithoutPlaintext => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            if let Some(n) = raw.number_of_bytes {
                v.range("numberOfBytes", n, 1, 1024);
            }
            if let Some(s) = &raw.key_spec {
                v.one_of("keySpec", s, &["AES_256", "AES_128"]);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            let len = match (raw.key_spec.as_deref(), raw.number_of_bytes) {
                (Some("AES_256"), None) => 32,
                (Some(_), None) => 16,
                (None, Some(n)) => usize::try_from(n).unwrap_or(0),
                _ => return Err(KmsError::Validation("Please specify either number of bytes or key spec.".into())),
            };
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            reserved_context(&raw.encryption_context)?;
            Request::GenerateDataKey {
                key_id: key_id.unwrap_or_default(),
                context: raw.encryption_context.clone().unwrap_or_default(),
                len,
                with_plaintext: op == Operation::GenerateDataKey,
                dry_run,
            }
        }
        Operation::GenerateDataKeyPair | Operation::GenerateDataKeyPairWithoutPlaintext => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let spec = v.required("keyPairSpec", raw.key_pair_spec.as_deref());
            if let Some(s) = spec {
                v.one_of("keyPairSpec", s, KEY_PAIR_SPECS);
            }
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            reserved_context(&raw.encryption_context)?;
            let name = spec.unwrap_or_default();
            let spec = envelope_keystore::KeySpec::from_name(name).filter(|s| s.is_signing()).ok_or_else(|| {
                KmsError::UnsupportedOperation(format!("KeyPairSpec {name} is not supported by this server."))
            })?;
            Request::GenerateDataKeyPair {
                key_id: key_id.unwrap_or_default(),
                context: raw.encryption_context.clone().unwrap_or_default(),
                spec,
                with_plaintext: op == Operation::GenerateDataKeyPair,
                dry_run,
            }
        }
        _ => {
            // The model makes NumberOfBytes optional; the service requires it, in its own words.
            let Some(n) = raw.number_of_bytes else {
                return Err(KmsError::Validation("NumberOfBytes is required.".into()));
            };
            v.range("numberOfBytes", n, 1, 1024);
            v.finish()?;
            unsupported_if(raw.custom_key_store_id.is_some(), "Custom key stores are not supported.")?;
            unsupported_if(raw.recipient.is_some(), "Recipient (attestation) is not supported.")?;
            Request::GenerateRandom { len: usize::try_from(n).unwrap_or(0) }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::Encrypt { key_id, plaintext, context, algorithm, dry_run } => {
            let k = call.resolve(&key_id, Forms::Any)?;
            call.authorize(&k, "Encrypt", &context)?;
            usable(&k)?;
            uses(&k, KeyUsage::EncryptDecrypt, "Encrypt")?;
            if let Some(alg) = key_algorithm(&k, &algorithm)? {
                no_context(&context, "EncryptionContext")?;
                within_limit(&k, alg, plaintext.len())?;
                if dry_run {
                    return Err(KmsError::DryRun);
                }
                let c = s
                    .store
                    .rsa_encrypt(&k.r, alg, &plaintext)
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
                let resp =
                    EncryptResponse { ciphertext_blob: b64(&c), key_id: &k.arn, encryption_algorithm: alg.as_str() };
                return call.crypto_reply(&resp, Some(k.arn.clone()));
            }
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let e = s
                .store
                .encrypt(&k.r, &plaintext, &context)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = EncryptResponse {
                ciphertext_blob: b64(&e.blob),
                key_id: &k.arn,
                encryption_algorithm: SYMMETRIC_DEFAULT,
            };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
        Request::Decrypt { ciphertext, context, key_id, algorithm, dry_run } => {
            let d = decrypt(call, &ciphertext, &context, key_id.as_deref(), &algorithm, dry_run, "Decrypt")?;
            let arn = s.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string());
            let resp = DecryptResponse {
                key_id: &arn,
                plaintext: encode_secret(&d.plaintext),
                encryption_algorithm: d.algorithm.map_or(SYMMETRIC_DEFAULT, |a| a.as_str()),
                key_material_id: d.material_id.map(hex::encode),
            };
            call.crypto_reply(&resp, Some(arn.clone()))
        }
        Request::ReEncrypt {
            ciphertext,
            source_context,
            source_key_id,
            source_algorithm,
            destination_key_id,
            destination_context,
            destination_algorithm,
            dry_run,
        } => {
            let dest = call.resolve(&destination_key_id, Forms::Any)?;
            call.authorize(&dest, "ReEncryptTo", &destination_context)?;
            usable(&dest)?;
            uses(&dest, KeyUsage::EncryptDecrypt, "ReEncrypt")?;
            let dest_alg = key_algorithm(&dest, &destination_algorithm)?;
            if dest_alg.is_some() {
                no_context(&destination_context, "DestinationEncryptionContext")?;
            }
            let d = decrypt(
                call,
                &ciphertext,
                &source_context,
                source_key_id.as_deref(),
                &source_algorithm,
                dry_run,
                "ReEncryptFrom",
            )?;
            let (blob, destination_material) = match dest_alg {
                Some(alg) => {
                    within_limit(&dest, alg, d.plaintext.len())?;
                    let c = s
                        .store
                        .rsa_encrypt(&dest.r, alg, &d.plaintext)
                        .map_err(|e| KmsError::from_store(e, Subject::Key(&dest.arn)))?;
                    (c, None)
                }
                None => {
                    let e = s
                        .store
                        .encrypt(&dest.r, &d.plaintext, &destination_context)
                        .map_err(|e| KmsError::from_store(e, Subject::Key(&dest.arn)))?;
                    (e.blob, Some(e.material_id))
                }
            };
            let resp = ReEncryptResponse {
                ciphertext_blob: b64(&blob),
                source_key_id: s.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string()),
                key_id: &dest.arn,
                source_encryption_algorithm: d.algorithm.map_or(SYMMETRIC_DEFAULT, |a| a.as_str()),
                destination_encryption_algorithm: dest_alg.map_or(SYMMETRIC_DEFAULT, |a| a.as_str()),
                source_key_material_id: d.material_id.map(hex::encode),
                destination_key_material_id: destination_material.map(hex::encode),
            };
            call.crypto_reply(&resp, Some(dest.arn.clone()))
        }
        Request::GenerateDataKey { key_id, context, len, with_plaintext, dry_run } => {
            let k = call.resolve(&key_id, Forms::Any)?;
            let action = if with_plaintext { "GenerateDataKey" } else { "GenerateDataKeyWithoutPlaintext" };
            call.authorize(&k, action, &context)?;
            usable(&k)?;
            uses(&k, KeyUsage::EncryptDecrypt, action)?;
            symmetric_key(&k, action)?;
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let key = random(len)?;
            let e = s.store.encrypt(&k.r, &key, &context).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = DataKeyResponse {
                ciphertext_blob: b64(&e.blob),
                plaintext: with_plaintext.then(|| encode_secret(&key)),
                key_id: &k.arn,
                key_material_id: hex::encode(e.material_id),
            };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
        Request::GenerateDataKeyPair { key_id, context, spec, with_plaintext, dry_run } => {
            let k = call.resolve(&key_id, Forms::Any)?;
            let action = if with_plaintext { "GenerateDataKeyPair" } else { "GenerateDataKeyPairWithoutPlaintext" };
            call.authorize(&k, action, &context)?;
            usable(&k)?;
            uses(&k, KeyUsage::EncryptDecrypt, action)?;
            symmetric_key(&k, action)?;
            if dry_run {
                return Err(KmsError::DryRun);
            }
            let internal = |e| KmsError::from_store(e, Subject::Internal);
            let private = SigningKey::generate_pkcs8(spec).map_err(internal)?;
            let public = SigningKey::from_pkcs8(spec, &private).and_then(|p| p.public_key_der()).map_err(internal)?;
            let e =
                s.store.encrypt(&k.r, &private, &context).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            let resp = DataKeyPairResponse {
                private_key_ciphertext_blob: b64(&e.blob),
                private_key_plaintext: with_plaintext.then(|| encode_secret(&private)),
                public_key: b64(&public),
                key_id: &k.arn,
                key_pair_spec: spec.as_str(),
                key_material_id: hex::encode(e.material_id),
            };
            call.crypto_reply(&resp, Some(k.arn.clone()))
        }
        Request::GenerateRandom { len } => {
            call.authorize_account("GenerateRandom")?;
            let bytes = random(len)?;
            call.crypto_reply(&RandomResponse { plaintext: encode_secret(&bytes) }, None)
        }
    }
}

/// The wire name of an optional EncryptionAlgorithm member (absent: `SYMMETRIC_DEFAULT`).
fn algorithm_name(a: &Option<String>) -> String {
    a.clone().unwrap_or_else(|| SYMMETRIC_DEFAULT.to_string())
}

/// The RSA-OAEP algorithm `name` names for key `k` (an `ENCRYPT_DECRYPT` key): `None` for
/// `SYMMETRIC_DEFAULT` with a symmetric key; `InvalidKeyUsageException` in AWS's words for an
/// algorithm the key's spec does not support (SYMMETRIC_DEFAULT with an RSA key, RSAES_* with a
/// symmetric one, SM2PKE with either).
fn key_algorithm(k: &Resolved, name: &str) -> Result<Option<EncryptionAlgorithm>> {
    if k.spec == KeySpec::SymmetricDefault && name == SYMMETRIC_DEFAULT {
        return Ok(None);
    }
    match EncryptionAlgorithm::from_name(name).filter(|a| k.spec.encryption_algorithms().contains(a)) {
        Some(a) => Ok(Some(a)),
        None => Err(KmsError::InvalidKeyUsage(format!("Algorithm {name} is incompatible with key spec {}.", k.spec))),
    }
}

/// Asymmetric keys take no encryption context (AWS refuses one).
fn no_context(context: &Context, member: &str) -> Result<()> {
    if context.is_empty() {
        return Ok(());
    }
    Err(KmsError::Validation(format!("{member} is not supported with asymmetric KMS keys.")))
}

/// The plaintext must fit RSA-OAEP with `alg` under the key's modulus (AWS's documented limits).
fn within_limit(k: &Resolved, alg: EncryptionAlgorithm, len: usize) -> Result<()> {
    let max = alg.max_plaintext(k.spec);
    if len <= max {
        return Ok(());
    }
    Err(KmsError::Validation(format!(
        "Plaintext is {len} bytes: {alg} encrypts at most {max} bytes with key spec {}.",
        k.spec
    )))
}

/// The data key operations need a symmetric encryption key.
fn symmetric_key(k: &Resolved, op: &str) -> Result<()> {
    if k.spec == KeySpec::SymmetricDefault {
        return Ok(());
    }
    Err(KmsError::InvalidKeyUsage(format!(
        "{} key spec is {} which is not valid for {op}: it needs a symmetric encryption KMS key.",
        k.arn, k.spec
    )))
}

/// What Decrypt and ReEncrypt decrypted: the plaintext, its key, and the algorithm (`None`:
/// SYMMETRIC_DEFAULT) with the material (symmetric keys only).
struct Plain {
    plaintext: Zeroizing<Vec<u8>>,
    key_id: [u8; 16],
    algorithm: Option<EncryptionAlgorithm>,
    material_id: Option<[u8; 32]>,
}

/// Decrypts for Decrypt (`action` Decrypt) and ReEncrypt (ReEncryptFrom): the blob's key must
/// be the one named (if any), authorized for the caller and usable. An RSA ciphertext (an
/// RSAES_* `algorithm`) is the raw RSA-OAEP output, which names no key: the KeyId must
/// (`InvalidCiphertextException` without one, as for any ciphertext that names no key here).
fn decrypt(
    call: &Call<'_>,
    ciphertext: &[u8],
    context: &EncryptionContext,
    key_id: Option<&str>,
    algorithm: &str,
    dry_run: bool,
    action: &str,
) -> Result<Plain> {
    let op = if action == "Decrypt" { "Decrypt" } else { "ReEncrypt" };
    let wanted = key_id.map(|k| call.resolve(k, Forms::Any)).transpose()?;
    // The RSA path: an RSA encryption key named, or an asymmetric algorithm (a key of another
    // kind named without one did not make a symmetric ciphertext either: IncorrectKey below).
    let rsa_key = |w: &&Resolved| w.usage == KeyUsage::EncryptDecrypt && w.spec != KeySpec::SymmetricDefault;
    if let Some(w) = wanted.as_ref().filter(|w| rsa_key(w) || algorithm != SYMMETRIC_DEFAULT) {
        call.authorize(w, action, context)?;
        usable(w)?;
        uses(w, KeyUsage::EncryptDecrypt, op)?;
        let Some(alg) = key_algorithm(w, algorithm)? else {
            return Err(KmsError::Internal("a symmetric key took the asymmetric path".into()));
        };
        no_context(context, if action == "Decrypt" { "EncryptionContext" } else { "SourceEncryptionContext" })?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        let plaintext = call
            .server()
            .store
            .rsa_decrypt(&w.r, alg, ciphertext)
            .map_err(|e| KmsError::from_store(e, Subject::Ciphertext(&w.arn)))?;
        return Ok(Plain { plaintext, key_id: w.kid, algorithm: Some(alg), material_id: None });
    }
    // Without a KeyId, the ciphertext must name its key: a raw RSA ciphertext does not parse.
    let blob = envelope_keystore::blob::parse(ciphertext).map_err(|_| KmsError::InvalidCiphertext)?;
    if wanted.as_ref().is_some_and(|w| w.kid != blob.key_id) {
        return Err(KmsError::IncorrectKey(
            "The key ID in the request does not identify a KMS key that can perform this operation.".into(),
        ));
    }
    // A blob naming a key this server does not have is simply an invalid ciphertext.
    let owner = call.owner(blob.key_id).ok_or(KmsError::InvalidCiphertext)?;
    call.authorize(&owner, action, context)?;
    usable(&owner)?;
    uses(&owner, KeyUsage::EncryptDecrypt, op)?;
    // An asymmetric algorithm for a symmetric key's ciphertext.
    key_algorithm(&owner, algorithm)?;
    if dry_run {
        return Err(KmsError::DryRun);
    }
    let d = call
        .server()
        .store
        .decrypt(ciphertext, context)
        .map_err(|e| KmsError::from_store(e, Subject::Ciphertext(&owner.arn)))?;
    Ok(Plain { plaintext: d.plaintext, key_id: d.key_id, algorithm: None, material_id: Some(d.material_id) })
}

fn random(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; len]);
    envelope_keystore::crypto::fill_random(&mut b[..]).map_err(|e| KmsError::from_store(e, Subject::Internal))?;
    Ok(b)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptResponse<'a> {
    ciphertext_blob: String,
    key_id: &'a str,
    encryption_algorithm: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptResponse<'a> {
    key_id: &'a str,
    plaintext: SecretB64,
    encryption_algorithm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_material_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptResponse<'a> {
    ciphertext_blob: String,
    source_key_id: String,
    key_id: &'a str,
    source_encryption_algorithm: &'static str,
    destination_encryption_algorithm: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_key_material_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination_key_material_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyResponse<'a> {
    ciphertext_blob: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<SecretB64>,
    key_id: &'a str,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyPairResponse<'a> {
    private_key_ciphertext_blob: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key_plaintext: Option<SecretB64>,
    public_key: String,
    key_id: &'a str,
    key_pair_spec: &'static str,
    key_material_id: String,
}

/// The model's `DataKeyPairSpec` values, in its order.
const KEY_PAIR_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SM2",
    "ECC_NIST_EDWARDS25519",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
];

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RandomResponse {
    plaintext: SecretB64,
}
