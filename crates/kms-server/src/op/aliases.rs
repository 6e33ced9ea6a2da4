//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases.
//!
//! The caller needs the action on the alias (identity policy) and on every key the alias points
//! at before or after (key policy and identity policy), as AWS requires — otherwise moving an
//! alias would redirect another principal's writes. Moves and deletions are guarded: they apply
//! only if the alias still points where it was authorized.

use serde::Serialize;

use super::{Call, Operation, Reply, Resolved, decode_marker, empty, encode_marker};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{Raw, Validator};

/// Attempts at a guarded alias change before giving up (another writer keeps moving it).
const ALIAS_ATTEMPTS: usize = 5;

/// A validated alias request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    CreateAlias { alias_name: String, target_key_id: String },
    DeleteAlias { alias_name: String },
    ListAliases { key_id: Option<String>, limit: usize, marker: Option<String> },
    UpdateAlias { alias_name: String, target_key_id: String },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    Ok(match op {
        Operation::ListAliases => {
            let key_id = raw.key_id.clone();
            if let Some(k) = &key_id {
                v.len("keyId", k, 1, 2048);
            }
            let limit = v.limit(raw.limit, 1000, 50).min(100);
            let marker = v.marker(raw.marker.clone());
            v.finish()?;
            Request::ListAliases { key_id, limit, marker }
        }
        Operation::DeleteAlias => {
            let alias_name = v.alias_name(raw.alias_name.clone());
            v.finish()?;
            Request::DeleteAlias { alias_name: alias_name.unwrap_or_default() }
        }
        // CreateAlias, UpdateAlias.
        _ => {
            let alias_name = v.alias_name(raw.alias_name.clone());
            let target_key_id = v.key_id("targetKeyId", raw.target_key_id.clone());
            v.finish()?;
            let (alias_name, target_key_id) = (alias_name.unwrap_or_default(), target_key_id.unwrap_or_default());
            if op == Operation::CreateAlias {
                Request::CreateAlias { alias_name, target_key_id }
            } else {
                Request::UpdateAlias { alias_name, target_key_id }
            }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::CreateAlias { alias_name, target_key_id } => {
            check_alias_name(&alias_name)?;
            call.authorize_alias(&alias_name, "CreateAlias")?;
            let k = call.resolve(&target_key_id, Forms::KeyOnly)?;
            call.allow(&k, "CreateAlias")?;
            s.store.create_alias(&alias_name, &k.r).map_err(|e| alias_err(call, e, &alias_name, &k))?;
            empty()
        }
        Request::UpdateAlias { alias_name, target_key_id } => {
            check_alias_name(&alias_name)?;
            call.authorize_alias(&alias_name, "UpdateAlias")?;
            let new = call.resolve(&target_key_id, Forms::KeyOnly)?;
            for _ in 0..ALIAS_ATTEMPTS {
                let current = call.resolve(&alias_name, Forms::Any)?;
                call.allow(&current, "UpdateAlias")?;
                call.allow(&new, "UpdateAlias")?;
                match s.store.update_alias(&alias_name, &new.r, Some(&current.r)) {
                    Err(envelope_keystore::Error::Changed(_)) => continue,
                    r => r.map_err(|e| alias_err(call, e, &alias_name, &new))?,
                }
                return empty();
            }
            Err(KmsError::Internal(format!("{alias_name} kept changing while it was being updated")))
        }
        Request::DeleteAlias { alias_name } => {
            check_alias_name(&alias_name)?;
            call.authorize_alias(&alias_name, "DeleteAlias")?;
            for _ in 0..ALIAS_ATTEMPTS {
                let current = call.resolve(&alias_name, Forms::Any)?;
                call.allow(&current, "DeleteAlias")?;
                match s.store.delete_alias(&alias_name, Some(&current.r)) {
                    Err(envelope_keystore::Error::Changed(_)) => continue,
                    r => r.map_err(|e| {
                        let on = Subject::Alias { arn: &s.names.alias_arn(&alias_name), key: &alias_name };
                        KmsError::from_store(e, on)
                    })?,
                }
                return empty();
            }
            Err(KmsError::Internal(format!("{alias_name} kept changing while it was being deleted")))
        }
        Request::ListAliases { key_id, limit, marker } => {
            call.authorize_account("ListAliases")?;
            let after = marker.map(|m| decode_marker(&m, "a1")).transpose()?;
            let only = key_id.map(|k| call.resolve(&k, Forms::KeyOnly)).transpose()?;
            let aliases = s.store.list_aliases().map_err(|e| KmsError::from_store(e, Subject::Internal))?;
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
                    alias_arn: s.names.alias_arn(&a.name),
                    alias_name: a.name,
                    target_key_id: a.key_id,
                    creation_date: a.created_at,
                    last_updated_date: a.updated_at,
                });
            }
            let next_marker = if truncated { page.last().map(|a| encode_marker("a1", &a.alias_name)) } else { None };
            call.reply(&ListAliasesResponse { aliases: page, next_marker, truncated })
        }
    }
}

/// A key-store error of an operation on alias `alias` that points (or is to point) at `k`.
fn alias_err(call: &Call<'_>, e: envelope_keystore::Error, alias: &str, k: &Resolved) -> KmsError {
    KmsError::from_store(e, Subject::Alias { arn: &call.server().names.alias_arn(alias), key: &k.arn })
}

/// AWS's rules for alias names in CreateAlias/UpdateAlias/DeleteAlias, before the key store's.
fn check_alias_name(name: &str) -> Result<()> {
    if !name.starts_with("alias/") {
        return Err(KmsError::Validation(
            "Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html".into(),
        ));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::NotAuthorized("The alias/aws/ prefix is reserved for AWS managed keys.".into()));
    }
    // Only the name is checked: Invalid (InvalidAliasName) is the only error.
    envelope_keystore::model::validate_alias(name)
        .map_err(|e| KmsError::from_store(e, Subject::Alias { arn: name, key: name }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_name_rules() {
        assert!(check_alias_name("alias/ok").is_ok());
        assert_eq!(check_alias_name("ok").unwrap_err().aws().0, "ValidationException");
        assert_eq!(check_alias_name("alias/aws/x").unwrap_err().aws().0, "NotAuthorizedException");
        assert_eq!(check_alias_name("alias/").unwrap_err().aws().0, "InvalidAliasNameException");
        assert_eq!(check_alias_name("alias/a:b").unwrap_err().aws().0, "InvalidAliasNameException");
    }
}
