//! The operations, on top of the key store. Each takes a validated [`Request`] and returns the
//! JSON response body (empty for operations without output). Blocking (SQLite, fsync): the HTTP
//! layer runs [`Server::execute`] on the blocking thread pool.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::{EncryptionContext, KeyRef, KeyState};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::Server;
use crate::error::{KmsError, Result};
use crate::ids::Forms;
use crate::protocol::{Request, SecretB64, b64, encode_secret, to_body};

/// Most on-demand rotations per key (the AWS quota).
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;

const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// A key resolved from a client's identifier.
struct Resolved {
    r: KeyRef,
    id: String,
    arn: String,
    state: KeyState,
    kid: [u8; 16],
}

impl Server {
    /// Runs one request and returns the JSON response body (empty for no-output operations).
    pub fn execute(&self, req: Request) -> Result<Zeroizing<Vec<u8>>> {
        match req {
            Request::CreateKey { description } => {
                let meta = self.store.create_key(None, &description).map_err(|e| KmsError::from_store(e, "new key"))?;
                to_body(&KeyMetadataResponse { key_metadata: self.metadata(&meta) })
            }
            Request::DescribeKey { key_id } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                let meta = self.store.describe(&k.r).map_err(|e| self.store_err(e, &k))?;
                to_body(&KeyMetadataResponse { key_metadata: self.metadata(&meta) })
            }
            Request::ListKeys { limit, marker } => self.list_keys(limit, marker),
            Request::ListAliases { key_id, limit, marker } => self.list_aliases(key_id, limit, marker),
            Request::CreateAlias { alias_name, target_key_id } => {
                check_alias_name(&alias_name)?;
                let k = self.resolve(&target_key_id, Forms::KeyOnly)?;
                self.store.create_alias(&alias_name, &k.r).map_err(|e| self.alias_err(e, &alias_name, &k))?;
                Ok(empty())
            }
            Request::UpdateAlias { alias_name, target_key_id } => {
                check_alias_name(&alias_name)?;
                let k = self.resolve(&target_key_id, Forms::KeyOnly)?;
                self.store.update_alias(&alias_name, &k.r).map_err(|e| self.alias_err(e, &alias_name, &k))?;
                Ok(empty())
            }
            Request::DeleteAlias { alias_name } => {
                check_alias_name(&alias_name)?;
                self.store.delete_alias(&alias_name).map_err(|e| match e {
                    envelope_keystore::Error::NotFound(_) => self.names.not_found(&KeyRef::Alias(alias_name.clone())),
                    e => KmsError::from_store(e, &alias_name),
                })?;
                Ok(empty())
            }
            Request::Encrypt { key_id, plaintext, context, dry_run } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                self.usable(&k)?;
                if dry_run {
                    return Err(KmsError::DryRun);
                }
                let e = self.store.encrypt(&k.r, &plaintext, &context).map_err(|e| self.store_err(e, &k))?;
                to_body(&EncryptResponse {
                    ciphertext_blob: b64(&e.blob),
                    key_id: k.arn,
                    encryption_algorithm: SYMMETRIC_DEFAULT,
                })
            }
            Request::Decrypt { ciphertext, context, key_id, dry_run } => {
                let d = self.decrypt(&ciphertext, &context, key_id.as_deref(), dry_run)?;
                to_body(&DecryptResponse {
                    key_id: self.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string()),
                    plaintext: encode_secret(&d.plaintext),
                    encryption_algorithm: SYMMETRIC_DEFAULT,
                    key_material_id: hex::encode(d.material_id),
                })
            }
            Request::ReEncrypt {
                ciphertext,
                source_context,
                source_key_id,
                destination_key_id,
                destination_context,
                dry_run,
            } => {
                let dest = self.resolve(&destination_key_id, Forms::Any)?;
                self.usable(&dest)?;
                let d = self.decrypt(&ciphertext, &source_context, source_key_id.as_deref(), dry_run)?;
                let e = self
                    .store
                    .encrypt(&dest.r, &d.plaintext, &destination_context)
                    .map_err(|e| self.store_err(e, &dest))?;
                to_body(&ReEncryptResponse {
                    ciphertext_blob: b64(&e.blob),
                    source_key_id: self.names.key_arn(&uuid::Uuid::from_bytes(d.key_id).to_string()),
                    key_id: dest.arn,
                    source_encryption_algorithm: SYMMETRIC_DEFAULT,
                    destination_encryption_algorithm: SYMMETRIC_DEFAULT,
                    source_key_material_id: hex::encode(d.material_id),
                    destination_key_material_id: hex::encode(e.material_id),
                })
            }
            Request::GenerateDataKey { key_id, context, len, with_plaintext, dry_run } => {
                let k = self.resolve(&key_id, Forms::Any)?;
                self.usable(&k)?;
                if dry_run {
                    return Err(KmsError::DryRun);
                }
                let key = random(len)?;
                let e = self.store.encrypt(&k.r, &key, &context).map_err(|e| self.store_err(e, &k))?;
                to_body(&DataKeyResponse {
                    ciphertext_blob: b64(&e.blob),
                    plaintext: with_plaintext.then(|| encode_secret(&key)),
                    key_id: k.arn,
                    key_material_id: hex::encode(e.material_id),
                })
            }
            Request::GenerateRandom { len } => {
                let bytes = random(len)?;
                to_body(&RandomResponse { plaintext: encode_secret(&bytes) })
            }
            Request::EnableKey { key_id } => self.set_enabled(&key_id, true),
            Request::DisableKey { key_id } => self.set_enabled(&key_id, false),
            Request::RotateKeyOnDemand { key_id } => {
                let k = self.resolve(&key_id, Forms::KeyOnly)?;
                self.usable(&k)?;
                let meta = self.store.describe(&k.r).map_err(|e| self.store_err(e, &k))?;
                if meta.versions.len() > MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                        k.arn
                    )));
                }
                self.store.rotate(&k.r).map_err(|e| self.store_err(e, &k))?;
                to_body(&KeyIdResponse { key_id: k.id })
            }
        }
    }

    fn set_enabled(&self, key_id: &str, enabled: bool) -> Result<Zeroizing<Vec<u8>>> {
        let k = self.resolve(key_id, Forms::KeyOnly)?;
        self.store.set_enabled(&k.r, enabled).map_err(|e| self.store_err(e, &k))?;
        Ok(empty())
    }

    fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key_id: Option<&str>,
        dry_run: bool,
    ) -> Result<envelope_keystore::Decrypted> {
        let wanted = key_id.map(|k| self.resolve(k, Forms::Any)).transpose()?;
        let blob = envelope_keystore::blob::parse(ciphertext).map_err(|_| KmsError::InvalidCiphertext)?;
        if wanted.as_ref().is_some_and(|w| w.kid != blob.key_id) {
            return Err(KmsError::IncorrectKey(
                "The key ID in the request does not identify a KMS key that can perform this operation.".into(),
            ));
        }
        let blob_key = KeyRef::Id(uuid::Uuid::from_bytes(blob.key_id));
        let owner = match self.store.current(&blob_key) {
            Ok((kid, _, state)) => {
                let id = uuid::Uuid::from_bytes(kid).to_string();
                Resolved { arn: self.names.key_arn(&id), id, r: blob_key, state, kid }
            }
            // A blob naming a key this server does not have is simply an invalid ciphertext.
            Err(_) => return Err(KmsError::InvalidCiphertext),
        };
        self.usable(&owner)?;
        if dry_run {
            return Err(KmsError::DryRun);
        }
        self.store.decrypt(ciphertext, context).map_err(|e| match e {
            envelope_keystore::Error::NotFound(_) => KmsError::InvalidCiphertext,
            e => self.store_err(e, &owner),
        })
    }

    fn list_keys(&self, limit: usize, marker: Option<String>) -> Result<Zeroizing<Vec<u8>>> {
        let after = marker.map(|m| decode_marker(&m, "k1")).transpose()?;
        let keys = self.store.list().map_err(|e| KmsError::from_store(e, "keys"))?;
        let mut page: Vec<KeyListEntry> = Vec::new();
        let mut truncated = false;
        let mut last = None;
        for k in keys.iter().filter(|k| after.as_deref().is_none_or(|a| key_position(k).as_str() > a)) {
            if page.len() == limit {
                truncated = true;
                break;
            }
            last = Some(key_position(k));
            page.push(KeyListEntry { key_arn: self.names.key_arn(&k.key_id), key_id: k.key_id.clone() });
        }
        let next_marker = if truncated { last.map(|l| encode_marker("k1", &l)) } else { None };
        to_body(&ListKeysResponse { keys: page, next_marker, truncated })
    }

    fn list_aliases(&self, key_id: Option<String>, limit: usize, marker: Option<String>) -> Result<Zeroizing<Vec<u8>>> {
        let after = marker.map(|m| decode_marker(&m, "a1")).transpose()?;
        let only = key_id.map(|k| self.resolve(&k, Forms::KeyOnly)).transpose()?;
        let aliases = self.store.list_aliases().map_err(|e| KmsError::from_store(e, "aliases"))?;
        let mut page: Vec<AliasListEntry> = Vec::new();
        let mut truncated = false;
        let matching = aliases.into_iter().filter(|a| {
            only.as_ref().is_none_or(|k| k.id == a.key_id) && after.as_deref().is_none_or(|m| a.name.as_str() > m)
        });
        for a in matching {
            if page.len() == limit {
                truncated = true;
                break;
            }
            page.push(AliasListEntry {
                alias_arn: self.names.alias_arn(&a.name),
                alias_name: a.name,
                target_key_id: a.key_id,
                creation_date: a.created_at,
                last_updated_date: a.updated_at,
            });
        }
        let next_marker = if truncated { page.last().map(|a| encode_marker("a1", &a.alias_name)) } else { None };
        to_body(&ListAliasesResponse { aliases: page, next_marker, truncated })
    }

    /// Resolves a client's identifier to an existing key (NotFound in AWS's wording otherwise).
    fn resolve(&self, s: &str, forms: Forms) -> Result<Resolved> {
        let r = self.names.resolve(s, forms)?;
        let (kid, _, state) = self.store.current(&r).map_err(|e| match e {
            envelope_keystore::Error::NotFound(_) => self.names.not_found(&r),
            e => KmsError::from_store(e, s),
        })?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        Ok(Resolved { r: KeyRef::Id(uuid::Uuid::from_bytes(kid)), arn: self.names.key_arn(&id), id, state, kid })
    }

    fn usable(&self, k: &Resolved) -> Result<()> {
        match k.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!("{} is disabled.", k.arn))),
            _ => Err(KmsError::InvalidState(format!("{} is pending deletion.", k.arn))),
        }
    }

    fn store_err(&self, e: envelope_keystore::Error, k: &Resolved) -> KmsError {
        match e {
            envelope_keystore::Error::NotFound(_) => self.names.not_found(&k.r),
            e => KmsError::from_store(e, &k.arn),
        }
    }

    fn alias_err(&self, e: envelope_keystore::Error, alias: &str, k: &Resolved) -> KmsError {
        use envelope_keystore::Error as E;
        match e {
            E::AlreadyExists(_) => {
                KmsError::AlreadyExists(format!("An alias with the name {} already exists", self.names.alias_arn(alias)))
            }
            E::NotFound(_) => self.names.not_found(&KeyRef::Alias(alias.to_string())),
            E::Invalid(m) => KmsError::InvalidAliasName(m),
            e => KmsError::from_store(e, &k.arn),
        }
    }

    fn metadata(&self, m: &envelope_keystore::KeyMetadata) -> KeyMetadataOut {
        KeyMetadataOut {
            aws_account_id: self.config.account_id.clone(),
            key_id: m.key_id.clone(),
            arn: self.names.key_arn(&m.key_id),
            creation_date: m.created_at,
            enabled: m.state == KeyState::Enabled,
            description: m.description.clone(),
            key_usage: "ENCRYPT_DECRYPT",
            key_state: m.state.as_str(),
            origin: "AWS_KMS",
            key_manager: "CUSTOMER",
            customer_master_key_spec: SYMMETRIC_DEFAULT,
            key_spec: SYMMETRIC_DEFAULT,
            encryption_algorithms: [SYMMETRIC_DEFAULT],
            multi_region: false,
            current_key_material_id: m.current_material_id.clone(),
        }
    }
}

/// AWS's rules for alias names in CreateAlias/UpdateAlias/DeleteAlias, before the key store's.
fn check_alias_name(name: &str) -> Result<()> {
    if !name.starts_with("alias/") {
        return Err(KmsError::Validation("Alias must start with the prefix \"alias/\".".into()));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::NotAuthorized("The alias/aws/ prefix is reserved for AWS managed keys.".into()));
    }
    envelope_keystore::model::validate_alias(name).map_err(|e| match e {
        envelope_keystore::Error::Invalid(m) => KmsError::InvalidAliasName(m),
        e => KmsError::InvalidAliasName(e.to_string()),
    })
}

fn key_position(k: &envelope_keystore::KeyMetadata) -> String {
    // Fixed-width creation time first, so string order is (created_at, key_id) order.
    format!("{:020}:{}", k.created_at.max(0), k.key_id)
}

fn encode_marker(kind: &str, pos: &str) -> String {
    STANDARD.encode(format!("{kind}:{pos}"))
}

fn decode_marker(m: &str, kind: &str) -> Result<String> {
    let raw = STANDARD.decode(m).map_err(|_| KmsError::InvalidMarker)?;
    let s = String::from_utf8(raw).map_err(|_| KmsError::InvalidMarker)?;
    s.strip_prefix(kind).and_then(|r| r.strip_prefix(':')).map(str::to_string).ok_or(KmsError::InvalidMarker)
}

fn random(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; len]);
    envelope_keystore::crypto::fill_random(&mut b[..]).map_err(|e| KmsError::Internal(e.to_string()))?;
    Ok(b)
}

fn empty() -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Vec::new())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyMetadataOut {
    #[serde(rename = "AWSAccountId")]
    aws_account_id: String,
    key_id: String,
    arn: String,
    creation_date: i64,
    enabled: bool,
    description: String,
    key_usage: &'static str,
    key_state: &'static str,
    origin: &'static str,
    key_manager: &'static str,
    customer_master_key_spec: &'static str,
    key_spec: &'static str,
    encryption_algorithms: [&'static str; 1],
    multi_region: bool,
    current_key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyMetadataResponse {
    key_metadata: KeyMetadataOut,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyListEntry {
    key_id: String,
    key_arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListKeysResponse {
    keys: Vec<KeyListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AliasListEntry {
    alias_name: String,
    alias_arn: String,
    target_key_id: String,
    creation_date: i64,
    last_updated_date: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListAliasesResponse {
    aliases: Vec<AliasListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptResponse {
    ciphertext_blob: String,
    key_id: String,
    encryption_algorithm: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptResponse {
    key_id: String,
    plaintext: SecretB64,
    encryption_algorithm: &'static str,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptResponse {
    ciphertext_blob: String,
    source_key_id: String,
    key_id: String,
    source_encryption_algorithm: &'static str,
    destination_encryption_algorithm: &'static str,
    source_key_material_id: String,
    destination_key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyResponse {
    ciphertext_blob: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<SecretB64>,
    key_id: String,
    key_material_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RandomResponse {
    plaintext: SecretB64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyIdResponse {
    key_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_reject_foreign_ones() {
        let m = encode_marker("k1", "00000000000000000001:abc");
        assert_eq!(decode_marker(&m, "k1").unwrap(), "00000000000000000001:abc");
        assert!(matches!(decode_marker(&m, "a1"), Err(KmsError::InvalidMarker)));
        assert!(matches!(decode_marker("!!!", "k1"), Err(KmsError::InvalidMarker)));
    }

    #[test]
    fn alias_name_rules() {
        assert!(check_alias_name("alias/ok").is_ok());
        assert_eq!(check_alias_name("ok").unwrap_err().aws().0, "ValidationException");
        assert_eq!(check_alias_name("alias/aws/x").unwrap_err().aws().0, "NotAuthorizedException");
        assert_eq!(check_alias_name("alias/").unwrap_err().aws().0, "InvalidAliasNameException");
        assert_eq!(check_alias_name("alias/a:b").unwrap_err().aws().0, "InvalidAliasNameException");
    }
}
