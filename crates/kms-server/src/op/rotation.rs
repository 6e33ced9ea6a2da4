//! Rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, ListKeyRotations,
//! RotateKeyOnDemand. Only keys with generated material rotate (spec §3.3).

use envelope_keystore::{ImportedMaterial, MaterialState};
use serde::Serialize;

use super::{Call, DAY, Operation, Reply, Resolved, decode_marker, empty, encode_marker, usable};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::op::keys::KeyIdResponse;
use crate::protocol::{Raw, Validator};

/// A validated rotation request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    DisableKeyRotation { key_id: String },
    EnableKeyRotation { key_id: String, period_days: u32 },
    GetKeyRotationStatus { key_id: String },
    ListKeyRotations { key_id: String, all_material: bool, limit: usize, marker: Option<String> },
    RotateKeyOnDemand { key_id: String },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    Ok(match op {
        Operation::EnableKeyRotation => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let days = raw.rotation_period_in_days.unwrap_or(365);
            v.range("rotationPeriodInDays", days, 90, 2560);
            v.finish()?;
            Request::EnableKeyRotation {
                key_id: key_id.unwrap_or_default(),
                period_days: u32::try_from(days).unwrap_or(365),
            }
        }
        Operation::ListKeyRotations => {
            let key_id = v.key_id("keyId", raw.key_id.clone()).unwrap_or_default();
            let limit = v.limit(raw.limit, 1000, 100);
            let marker = v.marker(raw.marker.clone());
            if let Some(m) = &raw.include_key_material {
                v.one_of("includeKeyMaterial", m, &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]);
            }
            v.finish()?;
            let all_material = raw.include_key_material.as_deref() == Some("ALL_KEY_MATERIAL");
            Request::ListKeyRotations { key_id, all_material, limit, marker }
        }
        Operation::RotateKeyOnDemand => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            v.grant_tokens(&raw.grant_tokens);
            v.finish()?;
            Request::RotateKeyOnDemand { key_id: key_id.unwrap_or_default() }
        }
        // DisableKeyRotation, GetKeyRotationStatus.
        _ => {
            let key_id = v.key_id("keyId", raw.key_id.clone()).unwrap_or_default();
            v.finish()?;
            if op == Operation::DisableKeyRotation {
                Request::DisableKeyRotation { key_id }
            } else {
                Request::GetKeyRotationStatus { key_id }
            }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::EnableKeyRotation { key_id, period_days } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "EnableKeyRotation")?;
            symmetric(&k, "EnableKeyRotation")?;
            generated_material(call, &k)?;
            usable(&k)?;
            let next = s.clock.now().saturating_add(i64::from(period_days) * DAY);
            s.store
                .set_rotation(&k.r, Some((period_days, next)))
                .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::DisableKeyRotation { key_id } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "DisableKeyRotation")?;
            symmetric(&k, "DisableKeyRotation")?;
            usable(&k)?;
            s.store.set_rotation(&k.r, None).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::GetKeyRotationStatus { key_id } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "GetKeyRotationStatus")?;
            let a = call.attributes(&k)?;
            // A key pending deletion is not rotated; its status reads false until cancelled.
            let on = a.rotation_period_days.is_some() && k.state != envelope_keystore::KeyState::PendingDeletion;
            call.reply(&RotationStatusResponse {
                key_rotation_enabled: on,
                key_id: k.arn,
                rotation_period_in_days: a.rotation_period_days.filter(|_| on),
                next_rotation_date: a.next_rotation.filter(|_| on),
            })
        }
        Request::ListKeyRotations { key_id, all_material, limit, marker } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "ListKeyRotations")?;
            let after = marker.map(|m| decode_marker(&m, "r1")).transpose()?;
            let after: Option<u32> = after.map(|a| a.parse().map_err(|_| KmsError::InvalidMarker)).transpose()?;
            let a = call.attributes(&k)?;
            let meta = call.describe(&k)?;
            let items: Vec<(u32, RotationEntry)> = if a.external {
                // Imported material: every material of the key, each with its import state; the
                // first one and any pending rotation only with ALL_KEY_MATERIAL (as AWS lists).
                a.materials
                    .iter()
                    .filter(|m| all_material || m.rotated_at.is_some())
                    .map(|m| (m.seq, imported_entry(&k.arn, m)))
                    .collect()
            } else {
                a.rotations
                    .iter()
                    .filter(|r| all_material || r.kind != envelope_keystore::RotationType::Initial)
                    .map(|r| {
                        let entry = RotationEntry {
                            key_id: k.arn.clone(),
                            key_material_id: r.material_id.clone(),
                            key_material_state: if r.material_id == meta.current_material_id {
                                "CURRENT"
                            } else {
                                "NON_CURRENT"
                            },
                            rotation_date: Some(r.created_at),
                            rotation_type: r.kind.as_str(),
                            ..RotationEntry::default()
                        };
                        (r.seq, entry)
                    })
                    .collect()
            };
            let items: Vec<_> = items.into_iter().filter(|(seq, _)| after.is_none_or(|a| *seq > a)).collect();
            let truncated = items.len() > limit;
            let next_marker = if truncated {
                items.get(limit.saturating_sub(1)).map(|(seq, _)| encode_marker("r1", &seq.to_string()))
            } else {
                None
            };
            let page: Vec<RotationEntry> = items.into_iter().take(limit).map(|(_, e)| e).collect();
            call.reply(&ListRotationsResponse { rotations: page, next_marker, truncated })
        }
        Request::RotateKeyOnDemand { key_id } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "RotateKeyOnDemand")?;
            symmetric(&k, "RotateKeyOnDemand")?;
            let a = call.attributes(&k)?;
            usable(&k)?;
            let no_pending = || {
                KmsError::InvalidState(format!("No available key material pending rotation for the key: {}.", k.arn))
            };
            // Imported material rotates only to material imported for the purpose
            // (ImportKeyMaterial with NEW_KEY_MATERIAL), PENDING_ROTATION until now.
            if a.external && !a.materials.iter().any(|m| m.state == MaterialState::PendingRotation) {
                return Err(no_pending());
            }
            // The quota of on-demand rotations is checked in the rotation's own transaction (the
            // store's limits, set by Server::new): LimitExceededException once reached.
            if a.external {
                s.store.rotate_imported(&k.r, s.clock.now()).map_err(|e| match e {
                    envelope_keystore::Error::NoPendingMaterial(_) => no_pending(),
                    e => KmsError::from_store(e, Subject::Key(&k.arn)),
                })?;
            } else {
                s.store
                    .rotate_as(&k.r, envelope_keystore::RotationType::OnDemand, s.clock.now())
                    .map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            }
            // AWS answers with the key's ARN whatever form the caller used.
            call.reply(&KeyIdResponse { key_id: k.arn })
        }
    }
}

/// The ListKeyRotations entry of one material of an external key.
fn imported_entry(arn: &str, m: &ImportedMaterial) -> RotationEntry {
    RotationEntry {
        key_id: arn.to_string(),
        key_material_id: m.material_id.clone(),
        key_material_description: m.description.clone(),
        import_state: Some(if m.imported { "IMPORTED" } else { "PENDING_IMPORT" }),
        key_material_state: m.state.as_str(),
        // What the material was imported with, while it is imported.
        expiration_model: m.imported.then_some(if m.valid_to.is_some() {
            "KEY_MATERIAL_EXPIRES"
        } else {
            "KEY_MATERIAL_DOES_NOT_EXPIRE"
        }),
        valid_to: m.valid_to.filter(|_| m.imported),
        // Not for the first material or one pending rotation.
        rotation_date: m.rotated_at,
        rotation_type: m.rotated_at.map(|_| "ON_DEMAND"),
    }
}

/// Rotation (automatic or on demand) applies only to symmetric encryption keys, as in AWS.
fn symmetric(k: &Resolved, op: &str) -> Result<()> {
    if k.spec == envelope_keystore::KeySpec::SymmetricDefault {
        return Ok(());
    }
    // AWS answers UnsupportedOperationException; its text is not documented: envelope's own.
    Err(KmsError::UnsupportedOperation(format!(
        "{} key spec is {} which is not valid for {op}: only symmetric encryption keys rotate.",
        k.arn, k.spec
    )))
}

/// Rotation applies only to keys with generated material (spec §3.3).
fn generated_material(call: &Call<'_>, k: &Resolved) -> Result<()> {
    if call.attributes(k)?.external {
        Err(KmsError::UnsupportedOperation(format!(
            "{} has imported key material; it cannot be rotated by this server.",
            k.arn
        )))
    } else {
        Ok(())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RotationStatusResponse {
    key_rotation_enabled: bool,
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_date: Option<i64>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RotationEntry {
    key_id: String,
    key_material_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_material_description: Option<String>,
    key_material_state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_date: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    import_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration_model: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_to: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListRotationsResponse {
    rotations: Vec<RotationEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}
