//! Configuration as code: a YAML seed file that creates keys, aliases, policies, tags and
//! rotation settings at start. Idempotent: a key whose alias already exists is left exactly as
//! it is (never overwritten), so the same file can be applied on every start.
//!
//! ```yaml
//! keys:
//!   - alias: alias/k8s-master-key
//!     description: Kubernetes Secrets KEK
//!     rotation_period_days: 365        # enables automatic rotation
//!     tags: { team: platform }
//!     policy:                          # a key policy document (YAML or a JSON string)
//!       Version: "2012-10-17"
//!       Statement:
//!         - Effect: Allow
//!           Principal: { AWS: "arn:aws:iam::111122223333:root" }
//!           Action: "kms:*"
//!           Resource: "*"
//!   - alias: alias/dr-key
//!     region: eu-west-1                # a region the server serves (default: its first)
//! ```
//!
//! Each step goes through the same request parsing and operations as the HTTP API (as the
//! account root), so a seed can do nothing a client could not.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use crate::Server;
use crate::error::{KmsError, Result};
use crate::op::{Operation, parse_request};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    keys: Vec<SeedKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedKey {
    alias: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    policy: Option<serde_json::Value>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    rotation_period_days: Option<u32>,
    #[serde(default)]
    region: Option<String>,
}

/// What applying a seed did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Aliases whose keys were created.
    pub created: Vec<String>,
    /// Aliases that already existed and were left alone.
    pub existing: Vec<String>,
}

/// Reads and applies a seed file.
pub fn apply_file(server: &Server, path: &Path) -> Result<SeedReport> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KmsError::Config(format!("cannot read seed file {}: {e}", path.display())))?;
    apply(server, &text)
}

/// Applies a seed document.
pub fn apply(server: &Server, yaml: &str) -> Result<SeedReport> {
    let seed: SeedFile = serde_norway::from_str(yaml).map_err(|e| KmsError::Config(format!("seed file: {e}")))?;
    let root = crate::Caller::account_root(&server.config().account_id);
    let mut report = SeedReport::default();
    for k in seed.keys {
        let mut alias = if k.alias.starts_with("alias/") { k.alias.clone() } else { format!("alias/{}", k.alias) };
        // The key's region: the server's own unless the entry names another it serves.
        let server = match k.region.as_deref() {
            None => server,
            Some(r) if r == server.config().region => server,
            Some(r) => match server.other_region(r) {
                Some(other) => other.as_ref(),
                None => {
                    return Err(KmsError::Config(format!(
                        "seed key {alias}: region {r} is not one this server serves (--region)"
                    )));
                }
            },
        };
        let run = |op: Operation, body: serde_json::Value| -> Result<serde_json::Value> {
            let bytes = serde_json::to_vec(&body).map_err(|e| KmsError::Internal(e.to_string()))?;
            let req = parse_request(op, &bytes)?;
            let out = server.execute(req, &root).result?;
            serde_json::from_slice(&out.body).or(Ok(serde_json::Value::Null))
        };
        let alias_name = alias.clone();
        if k.region.is_some() {
            alias = format!("{alias} ({})", server.config().region);
        }
        match run(Operation::DescribeKey, json!({ "KeyId": alias_name })) {
            Ok(_) => {
                report.existing.push(alias);
                continue;
            }
            Err(KmsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut create = json!({});
        if let Some(d) = &k.description {
            create["Description"] = json!(d);
        }
        if let Some(p) = &k.policy {
            let doc = match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            create["Policy"] = json!(doc);
        }
        if !k.tags.is_empty() {
            create["Tags"] = json!(k.tags.iter().map(|(t, v)| json!({"TagKey": t, "TagValue": v})).collect::<Vec<_>>());
        }
        let created =
            run(Operation::CreateKey, create).map_err(|e| KmsError::Config(format!("seed key {alias}: {e}")))?;
        let key_id = created["KeyMetadata"]["KeyId"]
            .as_str()
            .ok_or_else(|| KmsError::Internal("CreateKey returned no KeyId".into()))?
            .to_string();
        run(Operation::CreateAlias, json!({ "AliasName": alias_name, "TargetKeyId": key_id }))
            .map_err(|e| KmsError::Config(format!("seed alias {alias}: {e}")))?;
        if let Some(days) = k.rotation_period_days {
            run(Operation::EnableKeyRotation, json!({ "KeyId": key_id, "RotationPeriodInDays": days }))
                .map_err(|e| KmsError::Config(format!("seed rotation for {alias}: {e}")))?;
        }
        report.created.push(alias);
    }
    Ok(report)
}
