//! Importing key material (BYOK, spec §5): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial — for keys with origin EXTERNAL only. The wrapping keys and
//! tokens are [`crate::import`]'s.

use envelope_keystore::{ImportOptions, ImportType, KeySpec};
use serde::Serialize;

use super::{Call, DAY, Operation, Reply, Resolved, not_pending};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{MAX_CIPHERTEXT, Raw, Validator, WrappingAlgorithm, WrappingKeySpec, b64, decode_blob};

/// A validated import request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    DeleteImportedKeyMaterial {
        key_id: String,
        key_material_id: Option<String>,
    },
    GetParametersForImport {
        key_id: String,
        algorithm: WrappingAlgorithm,
        key_spec: WrappingKeySpec,
    },
    ImportKeyMaterial {
        key_id: String,
        token: Vec<u8>,
        material: Vec<u8>,
        valid_to: Option<i64>,
        key_material_id: Option<String>,
        import_type: Option<ImportType>,
        description: Option<String>,
    },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    Ok(match op {
        Operation::GetParametersForImport => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let alg = v.required("wrappingAlgorithm", raw.wrapping_algorithm.as_deref());
            let spec = v.required("wrappingKeySpec", raw.wrapping_key_spec.as_deref());
            if let Some(a) = alg {
                v.one_of(
                    "wrappingAlgorithm",
                    a,
                    &[
                        "RSAES_PKCS1_V1_5",
                        "RSAES_OAEP_SHA_1",
                        "RSAES_OAEP_SHA_256",
                        "RSA_AES_KEY_WRAP_SHA_1",
                        "RSA_AES_KEY_WRAP_SHA_256",
                        "SM2PKE",
                    ],
                );
            }
            if let Some(s) = spec {
                v.one_of("wrappingKeySpec", s, &["RSA_2048", "RSA_3072", "RSA_4096", "SM2"]);
            }
            v.finish()?;
            let algorithm = match alg.unwrap_or_default() {
                "RSAES_OAEP_SHA_1" => WrappingAlgorithm::OaepSha1,
                "RSAES_OAEP_SHA_256" => WrappingAlgorithm::OaepSha256,
                "RSA_AES_KEY_WRAP_SHA_1" => WrappingAlgorithm::AesKeyWrapSha1,
                "RSA_AES_KEY_WRAP_SHA_256" => WrappingAlgorithm::AesKeyWrapSha256,
                other => {
                    return Err(KmsError::UnsupportedOperation(format!("WrappingAlgorithm {other} is not supported.")));
                }
            };
            let key_spec = match spec.unwrap_or_default() {
                "RSA_2048" => WrappingKeySpec::Rsa2048,
                "RSA_3072" => WrappingKeySpec::Rsa3072,
                "RSA_4096" => WrappingKeySpec::Rsa4096,
                other => {
                    return Err(KmsError::UnsupportedOperation(format!("WrappingKeySpec {other} is not supported.")));
                }
            };
            Request::GetParametersForImport { key_id: key_id.unwrap_or_default(), algorithm, key_spec }
        }
        Operation::ImportKeyMaterial => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let token = v.required("importToken", raw.import_token.as_deref());
            let material = v.required("encryptedKeyMaterial", raw.encrypted_key_material.as_deref());
            let model = raw.expiration_model.as_deref().unwrap_or("KEY_MATERIAL_EXPIRES");
            v.one_of("expirationModel", model, &["KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE"]);
            if let Some(t) = &raw.import_type {
                v.one_of("importType", t, &["NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL"]);
            }
            if let Some(d) = &raw.key_material_description {
                v.len("keyMaterialDescription", d, 0, 256);
                v.pattern("keyMaterialDescription", d, "^[a-zA-Z0-9:/_\\s.-]+$", |c| {
                    c.is_ascii_alphanumeric() || c.is_ascii_whitespace() || matches!(c, ':' | '/' | '_' | '.' | '-')
                });
            }
            v.material_id(&raw.key_material_id);
            v.finish()?;
            let token = decode_blob("importToken", token.unwrap_or_default(), MAX_CIPHERTEXT)?;
            let material = decode_blob("encryptedKeyMaterial", material.unwrap_or_default(), MAX_CIPHERTEXT)?;
            let valid_to = match (model, raw.valid_to.as_ref().and_then(serde_json::Number::as_f64)) {
                ("KEY_MATERIAL_EXPIRES", Some(t)) if t.is_finite() => Some(t.floor() as i64),
                ("KEY_MATERIAL_EXPIRES", _) => {
                    return Err(KmsError::Validation(
                        "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES".into(),
                    ));
                }
                (_, None) => None,
                (_, Some(_)) => {
                    return Err(KmsError::Validation(
                        "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.".into(),
                    ));
                }
            };
            let import_type = match raw.import_type.as_deref() {
                Some("NEW_KEY_MATERIAL") => Some(ImportType::New),
                Some(_) => Some(ImportType::Existing),
                None => None,
            };
            if import_type == Some(ImportType::New) && raw.key_material_id.is_some() {
                return Err(KmsError::Validation(
                    "KeyMaterialId cannot be specified when ImportType is NEW_KEY_MATERIAL.".into(),
                ));
            }
            Request::ImportKeyMaterial {
                key_id: key_id.unwrap_or_default(),
                token,
                material,
                valid_to,
                key_material_id: raw.key_material_id.clone(),
                import_type,
                description: raw.key_material_description.clone(),
            }
        }
        // DeleteImportedKeyMaterial.
        _ => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            v.material_id(&raw.key_material_id);
            v.finish()?;
            Request::DeleteImportedKeyMaterial {
                key_id: key_id.unwrap_or_default(),
                key_material_id: raw.key_material_id.clone(),
            }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::GetParametersForImport { key_id, algorithm, key_spec } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "GetParametersForImport")?;
            external_material(call, &k)?;
            not_pending(&k)?;
            if is_rsa(k.spec) && matches!(algorithm, WrappingAlgorithm::OaepSha1 | WrappingAlgorithm::OaepSha256) {
                // An RSA private key does not fit in one RSA-OAEP block (AWS's rule).
                return Err(KmsError::Validation(format!(
                    "To import an RSA private key into {}, use an RSA_AES_KEY_WRAP wrapping algorithm.",
                    k.arn
                )));
            }
            let p = crate::import::parameters(&s.store, &k.kid, algorithm, key_spec, s.clock.now())?;
            call.reply(&ImportParametersResponse {
                key_id: k.arn,
                import_token: b64(&p.token),
                public_key: b64(&p.public_key),
                parameters_valid_to: p.valid_to,
            })
        }
        Request::ImportKeyMaterial { key_id, token, material, valid_to, key_material_id, import_type, description } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "ImportKeyMaterial")?;
            external_material(call, &k)?;
            not_pending(&k)?;
            let now = s.clock.now();
            if let Some(t) = valid_to
                && (t <= now || t > now.saturating_add(365 * DAY))
            {
                return Err(KmsError::Validation(
                    "ValidTo must be in the future and at most 365 days from now.".into(),
                ));
            }
            if let Some(named) = &key_material_id {
                // Names material imported into the key before (EXISTING_KEY_MATERIAL).
                let a = call.attributes(&k)?;
                if !a.materials.iter().any(|m| m.material_id == *named) {
                    return Err(KmsError::IncorrectKeyMaterial(format!(
                        "{} has no key material with id {named}.",
                        k.arn
                    )));
                }
            }
            if k.spec != KeySpec::SymmetricDefault && import_type.is_some() {
                return Err(KmsError::Validation(format!(
                    "ImportType is only usable with symmetric encryption keys; {} is a {} key.",
                    k.arn, k.spec
                )));
            }
            let material = crate::import::unwrap(&s.store, &k.kid, k.spec, &token, &material, now)?;
            let opts = ImportOptions { import_type, material_id: key_material_id, description, valid_to };
            let mid = s
                .store
                .import_material_with(&k.r, &material, &opts, now)
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            call.reply(&ImportResponse { key_id: k.arn, key_material_id: mid })
        }
        Request::DeleteImportedKeyMaterial { key_id, key_material_id } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "DeleteImportedKeyMaterial")?;
            external_material(call, &k)?;
            let mid = s.store.delete_imported_material_id(&k.r, key_material_id.as_deref()).map_err(|e| match e {
                // A material id the key does not have.
                envelope_keystore::Error::NotFound(_) => s.names.not_found(&k.r),
                e => KmsError::from_store(e, Subject::Key(&k.arn)),
            })?;
            call.reply(&ImportResponse { key_id: k.arn, key_material_id: mid })
        }
    }
}

fn is_rsa(spec: KeySpec) -> bool {
    matches!(spec, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
}

/// Import operations apply only to keys with origin EXTERNAL (spec §5).
fn external_material(call: &Call<'_>, k: &Resolved) -> Result<()> {
    if call.attributes(k)?.external {
        Ok(())
    } else {
        Err(KmsError::UnsupportedOperation(format!(
            "{} origin is AWS_KMS which is not valid for this operation.",
            k.arn
        )))
    }
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
