//! Imported key material (origin `EXTERNAL` keys): import, on-demand rotation, delete, expiry.
//!
//! An external key holds several materials (AWS's multi-material import, 2025): the first import
//! makes its CURRENT material; an import of `NEW_KEY_MATERIAL` adds one PENDING_ROTATION
//! material, which [`KeyStore::rotate_imported`] makes CURRENT (the previous one becomes
//! NON_CURRENT and keeps decrypting). Deleting (or expiry of) a material keeps its record with
//! the material gone (PENDING_IMPORT) until the same material is imported again; deleting one
//! that is permanently associated with the key (every material but one pending rotation) makes
//! the key PendingImport until all of them are imported again.
//!
//! The rules are pure functions over a key's material records ([`plan_import`], [`plan_delete`],
//! [`plan_rotate`], [`plan_expire`]); each engine reads the records inside its write transaction,
//! asks them, and writes the [`Change`] they return, so both engines decide the same way.

use super::engine::{ImportRequest, MaterialRow, NewVersion};
use super::{KeyStore, seal_aad_for};
use crate::error::{Error, Result};
use crate::model::{ImportOptions, ImportType, KeyRef, KeySpec, KeyState, MaterialState};

impl KeyStore {
    /// Imports `material` (32 bytes for a symmetric key, see [`KeyStore::import_material_with`])
    /// into an external key at time `at` (Unix seconds), expiring at `valid_to` (`None`: never), with the default import type: the first material
    /// of a key, or material imported into it before. See [`KeyStore::import_material_with`].
    pub fn import_material(&self, key: &KeyRef, material: &[u8], valid_to: Option<i64>, at: i64) -> Result<String> {
        self.import_material_with(key, material, &ImportOptions { valid_to, ..ImportOptions::default() }, at)
    }

    /// Imports `material` into an external key at time `at` (Unix seconds): 32 bytes for a
    /// symmetric key, the lengths [`KeySpec::material_lens`] allows for an HMAC key, a PKCS#8
    /// (DER) private key of the spec for a key pair (whose material never changes after the
    /// first import: `opts.import_type` is for symmetric keys only). Its material id is derived from key id and material, so re-importing the same material
    /// after [`KeyStore::delete_imported_material`] restores the same version and old
    /// ciphertexts decrypt again.
    ///
    /// - The first import (default [`ImportType::New`]) makes the material CURRENT and a key
    ///   PendingImport Enabled.
    /// - [`ImportType::New`] on a key with material adds it PENDING_ROTATION (one at a time:
    ///   [`Error::PendingMaterialExists`]); material already associated is refused
    ///   ([`Error::IncorrectMaterial`]).
    /// - [`ImportType::Existing`] (the default after the first import) takes only material
    ///   imported before (and the named id, if any, must be its id): it is imported again with
    ///   the new expiry; a key PendingImport becomes Enabled once all its permanently associated
    ///   materials are imported.
    ///
    /// Returns the material id (hex).
    pub fn import_material_with(&self, key: &KeyRef, material: &[u8], opts: &ImportOptions, at: i64) -> Result<String> {
        let (kid, id) = self.resolve_db(key)?;
        let (spec, usage) = self.core.snapshot().keys.get(&kid).map(|k| (k.key_spec, k.key_usage)).unwrap_or_default();
        check_material(spec, material)?;
        if spec != KeySpec::SymmetricDefault && opts.import_type.is_some() {
            return Err(Error::Unsupported(format!(
                "ImportType is only usable with symmetric encryption keys, not with {spec} keys"
            )));
        }
        let mid = imported_material_id(&kid, material)?;
        let sealed = self.core.root.seal(&seal_aad_for(spec, usage, &kid, &mid), material)?;
        let req = ImportRequest {
            version: NewVersion { material_id: hex::encode(mid), sealed },
            import_type: opts.import_type,
            named: opts.material_id.clone(),
            description: opts.description.clone(),
            valid_to: opts.valid_to,
            at,
        };
        self.core.db.import_material(&id, &req)?;
        self.refresh()?;
        Ok(req.version.material_id)
    }

    /// Deletes the CURRENT imported material of an external key: the key becomes PendingImport
    /// (a key pending deletion stays so) and unusable until the same material is imported again.
    /// Returns the deleted material id (hex).
    pub fn delete_imported_material(&self, key: &KeyRef) -> Result<String> {
        self.delete_imported_material_id(key, None)
    }

    /// Deletes one imported material of an external key (`None`: the CURRENT one). Material
    /// pending rotation is dropped altogether (other material may take its place); any other
    /// stays listed as not imported, and the key becomes PendingImport until it is imported
    /// again. An id the key does not have is [`Error::NotFound`]. Returns the material id.
    pub fn delete_imported_material_id(&self, key: &KeyRef, material_id: Option<&str>) -> Result<String> {
        let (_, id) = self.resolve_db(key)?;
        let mid = self.core.db.delete_imported(&id, material_id)?;
        self.refresh()?;
        Ok(mid)
    }

    /// On-demand rotation of an external key at `at` (Unix seconds): its material pending
    /// rotation becomes CURRENT, the CURRENT one NON_CURRENT (still decrypting). None pending:
    /// [`Error::NoPendingMaterial`]. Returns the new current material id.
    pub fn rotate_imported(&self, key: &KeyRef, at: i64) -> Result<String> {
        let (_, id) = self.resolve_db(key)?;
        let mid = self.core.db.rotate_imported(&id, at, self.limits().max_on_demand_rotations)?;
        self.refresh()?;
        Ok(mid)
    }

    /// Deletes imported material whose expiry is at or before `now` (Unix seconds), each as
    /// [`KeyStore::delete_imported_material_id`] does. Returns the affected key ids.
    pub fn expire_imported(&self, now: i64) -> Result<Vec<String>> {
        let ids = self.core.db.expire_imported(now)?;
        if !ids.is_empty() {
            self.refresh()?;
        }
        Ok(ids)
    }
}

/// What an engine writes for one external key after a decision below, in its transaction:
/// delete the versions in `drop_versions` (the sealed material), add `add_version` unless that
/// version is already there, replace the key's material records with `rows`, and set the key's
/// current material and state.
#[derive(Debug, Clone)]
pub(super) struct Change {
    /// The key's state afterwards.
    pub state: KeyState,
    /// `keys.current_material` afterwards: the CURRENT material's id while it is imported, else ''.
    pub current: String,
    /// Every material record of the key afterwards.
    pub rows: Vec<MaterialRow>,
    /// Sealed material to store as a version of the key (if not there yet).
    pub add_version: Option<NewVersion>,
    /// Versions (material ids) whose sealed material goes.
    pub drop_versions: Vec<String>,
    /// The material the call was about.
    pub material_id: String,
}

/// An import into key `id` (in `state`, with material records `rows`).
pub(super) fn plan_import(
    id: &str,
    state: KeyState,
    mut rows: Vec<MaterialRow>,
    req: &ImportRequest,
) -> Result<Change> {
    if state == KeyState::PendingDeletion {
        return Err(Error::InvalidState { key: id.to_string(), state });
    }
    let mid = &req.version.material_id;
    let existing = rows.iter().position(|r| r.material_id == *mid);
    let kind = req.import_type.unwrap_or(if rows.is_empty() { ImportType::New } else { ImportType::Existing });
    match kind {
        ImportType::New => {
            if req.named.is_some() {
                return Err(Error::Invalid(
                    "a key material id cannot be given with ImportType NEW_KEY_MATERIAL".into(),
                ));
            }
            if existing.is_some() {
                return Err(Error::IncorrectMaterial(
                    "this key material is already associated with the key; import it with ImportType \
                     EXISTING_KEY_MATERIAL"
                        .into(),
                ));
            }
            let material_state = if rows.is_empty() {
                MaterialState::Current
            } else if rows.iter().any(|r| r.state == MaterialState::PendingRotation.as_str()) {
                return Err(Error::PendingMaterialExists(id.to_string()));
            } else {
                MaterialState::PendingRotation
            };
            let seq = rows.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
            rows.push(MaterialRow {
                material_id: mid.clone(),
                key_id: id.to_string(),
                seq,
                state: material_state.as_str().to_string(),
                imported: true,
                description: req.description.clone(),
                valid_to: req.valid_to,
                created_at: req.at,
                rotated_at: None,
            });
        }
        ImportType::Existing => {
            if let Some(named) = &req.named
                && named != mid
            {
                return Err(Error::IncorrectMaterial(if rows.iter().any(|r| r.material_id == *named) {
                    format!("this is not the key material with id {named}")
                } else {
                    format!("the key has no key material with id {named}")
                }));
            }
            let Some(i) = existing else {
                return Err(Error::IncorrectMaterial(if rows.is_empty() {
                    "no key material was imported into this key before; import it with ImportType NEW_KEY_MATERIAL"
                        .into()
                } else {
                    "this is not the key material that was previously imported into this key".into()
                }));
            };
            let r = &mut rows[i];
            r.imported = true;
            r.valid_to = req.valid_to;
            if let Some(d) = &req.description {
                r.description = Some(d.clone());
            }
        }
    }
    Ok(settle(state, rows, Some(req.version.clone()), Vec::new(), mid.clone()))
}

/// Deleting material `which` (`None`: the CURRENT one) of key `id`.
pub(super) fn plan_delete(
    id: &str,
    state: KeyState,
    mut rows: Vec<MaterialRow>,
    which: Option<&str>,
) -> Result<Change> {
    let i = match which {
        None => rows.iter().position(|r| r.state == MaterialState::Current.as_str()),
        Some(m) => Some(
            rows.iter()
                .position(|r| r.material_id == m)
                .ok_or_else(|| Error::NotFound(format!("key material {m} of key {id}")))?,
        ),
    };
    let Some(i) = i.filter(|&i| rows[i].imported) else {
        // Nothing imported to delete (never imported, or deleted already).
        return Err(Error::InvalidState { key: id.to_string(), state });
    };
    let mid = rows[i].material_id.clone();
    drop_material(&mut rows, i);
    Ok(settle(state, rows, None, vec![mid.clone()], mid))
}

/// An on-demand rotation of key `id` at `at`.
pub(super) fn plan_rotate(id: &str, state: KeyState, mut rows: Vec<MaterialRow>, at: i64) -> Result<Change> {
    match state {
        KeyState::Enabled => {}
        KeyState::Disabled => return Err(Error::Disabled(id.to_string())),
        state => return Err(Error::InvalidState { key: id.to_string(), state }),
    }
    let pending = rows
        .iter()
        .position(|r| r.state == MaterialState::PendingRotation.as_str())
        .ok_or_else(|| Error::NoPendingMaterial(id.to_string()))?;
    for r in rows.iter_mut().filter(|r| r.state == MaterialState::Current.as_str()) {
        r.state = MaterialState::NonCurrent.as_str().to_string();
    }
    let r = &mut rows[pending];
    r.state = MaterialState::Current.as_str().to_string();
    r.rotated_at = Some(at);
    let mid = r.material_id.clone();
    Ok(settle(state, rows, None, Vec::new(), mid))
}

/// Expiry at `now` of a key's materials: `None` when none is due.
pub(super) fn plan_expire(state: KeyState, mut rows: Vec<MaterialRow>, now: i64) -> Option<Change> {
    let due = |r: &MaterialRow| r.imported && r.valid_to.is_some_and(|t| t <= now);
    let mut dropped = Vec::new();
    while let Some(i) = rows.iter().position(due) {
        dropped.push(rows[i].material_id.clone());
        drop_material(&mut rows, i);
    }
    let first = dropped.first()?.clone();
    Some(settle(state, rows, None, dropped, first))
}

/// Material `i` leaves the store: one pending rotation is forgotten, any other stays listed as
/// not imported (its expiry with it).
fn drop_material(rows: &mut Vec<MaterialRow>, i: usize) {
    if rows[i].state == MaterialState::PendingRotation.as_str() {
        rows.remove(i);
    } else {
        rows[i].imported = false;
        rows[i].valid_to = None;
    }
}

/// The key's state and current material given its material records: usable only while every
/// permanently associated material (all but one pending rotation) is imported. A key pending
/// deletion stays so; a disabled one stays disabled while complete.
fn settle(
    state: KeyState,
    rows: Vec<MaterialRow>,
    add_version: Option<NewVersion>,
    drop_versions: Vec<String>,
    material_id: String,
) -> Change {
    let current = rows.iter().find(|r| r.state == MaterialState::Current.as_str());
    let complete =
        current.is_some() && rows.iter().all(|r| r.imported || r.state == MaterialState::PendingRotation.as_str());
    let current = current.filter(|r| r.imported).map(|r| r.material_id.clone()).unwrap_or_default();
    let state = match state {
        KeyState::PendingImport if complete => KeyState::Enabled,
        KeyState::Enabled | KeyState::Disabled if !complete => KeyState::PendingImport,
        other => other,
    };
    Change { state, current, rows, add_version, drop_versions, material_id }
}

/// The material id of imported material: HMAC-SHA-256 keyed with the material over a label and
/// the key id, so the same material in the same key always gets the same id (and blobs made
/// before a delete + re-import find it again) without the id revealing anything about it.
/// Whether `material` can be a key of `spec`: its length for symmetric and HMAC keys
/// ([`KeySpec::material_lens`]), a private key of the spec's curve or size in PKCS#8 (DER) for
/// key pairs.
fn check_material(spec: KeySpec, material: &[u8]) -> Result<()> {
    match spec.material_lens() {
        Some(lens) if lens.contains(&material.len()) => Ok(()),
        Some(lens) if lens.start() == lens.end() => {
            Err(Error::IncorrectMaterial(format!("key material of a {spec} key must be {} bytes", lens.start())))
        }
        Some(lens) => Err(Error::IncorrectMaterial(format!(
            "key material of a {spec} key must be {} to {} bytes",
            lens.start(),
            lens.end()
        ))),
        None => crate::crypto::SigningKey::from_pkcs8(spec, material).map(drop).map_err(|_| {
            Error::IncorrectMaterial(format!("the key material is not a {spec} private key in PKCS#8 (DER) form"))
        }),
    }
}

fn imported_material_id(kid: &[u8; 16], material: &[u8]) -> Result<[u8; 32]> {
    use aws_lc_rs::hmac;
    let k = hmac::Key::new(hmac::HMAC_SHA256, material);
    let mut msg = Vec::with_capacity(32 + 16);
    msg.extend_from_slice(b"envelope-imported-material-id-v1");
    msg.extend_from_slice(kid);
    let tag = hmac::sign(&k, &msg);
    <[u8; 32]>::try_from(tag.as_ref()).map_err(|_| Error::Crypto)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "k";

    fn req(mid: &str, kind: Option<ImportType>, named: Option<&str>, at: i64) -> ImportRequest {
        ImportRequest {
            version: NewVersion { material_id: mid.into(), sealed: vec![1] },
            import_type: kind,
            named: named.map(str::to_string),
            description: None,
            valid_to: None,
            at,
        }
    }

    fn states(c: &Change) -> Vec<(&str, &str, bool)> {
        c.rows.iter().map(|r| (r.material_id.as_str(), r.state.as_str(), r.imported)).collect()
    }

    /// First import, new material, rotation: the sequence AWS documents.
    fn rotated() -> Vec<MaterialRow> {
        let c = plan_import(K, KeyState::PendingImport, vec![], &req("a", None, None, 1)).unwrap();
        assert_eq!((c.state, c.current.as_str()), (KeyState::Enabled, "a"));
        let c = plan_import(K, c.state, c.rows, &req("b", Some(ImportType::New), None, 2)).unwrap();
        assert_eq!(states(&c), [("a", "CURRENT", true), ("b", "PENDING_ROTATION", true)]);
        assert_eq!((c.state, c.current.as_str()), (KeyState::Enabled, "a"), "pending material is not used yet");
        let c = plan_rotate(K, c.state, c.rows, 3).unwrap();
        assert_eq!(states(&c), [("a", "NON_CURRENT", true), ("b", "CURRENT", true)]);
        assert_eq!((c.current.as_str(), c.rows[1].rotated_at), ("b", Some(3)));
        c.rows
    }

    #[test]
    fn import_type_defaults_new_first_then_existing() {
        let c = plan_import(K, KeyState::PendingImport, vec![], &req("a", None, None, 1)).unwrap();
        // Other material without an import type: taken as existing, and it is not.
        let e = plan_import(K, c.state, c.rows.clone(), &req("b", None, None, 2)).unwrap_err();
        assert!(matches!(e, Error::IncorrectMaterial(_)), "{e:?}");
        let again = plan_import(K, c.state, c.rows, &req("a", None, None, 2)).unwrap();
        assert_eq!(states(&again), [("a", "CURRENT", true)]);
    }

    #[test]
    fn existing_material_needs_a_previous_import() {
        let e = plan_import(K, KeyState::PendingImport, vec![], &req("a", Some(ImportType::Existing), None, 1));
        assert!(matches!(e, Err(Error::IncorrectMaterial(_))));
    }

    #[test]
    fn new_material_already_associated_is_refused() {
        let rows = rotated();
        for mid in ["a", "b"] {
            let e = plan_import(K, KeyState::Enabled, rows.clone(), &req(mid, Some(ImportType::New), None, 5));
            assert!(matches!(e, Err(Error::IncorrectMaterial(_))), "{mid}");
        }
    }

    #[test]
    fn only_one_material_pending_rotation() {
        let c = plan_import(K, KeyState::PendingImport, vec![], &req("a", None, None, 1)).unwrap();
        let c = plan_import(K, c.state, c.rows, &req("b", Some(ImportType::New), None, 2)).unwrap();
        let e = plan_import(K, c.state, c.rows.clone(), &req("c", Some(ImportType::New), None, 3)).unwrap_err();
        assert!(matches!(e, Error::PendingMaterialExists(_)), "{e:?}");
        // Deleting the pending material forgets it, the key stays usable, and other material
        // can take its place.
        let d = plan_delete(K, c.state, c.rows, Some("b")).unwrap();
        assert_eq!((states(&d), d.state), (vec![("a", "CURRENT", true)], KeyState::Enabled));
        let c = plan_import(K, d.state, d.rows, &req("c", Some(ImportType::New), None, 4)).unwrap();
        assert_eq!(states(&c)[1], ("c", "PENDING_ROTATION", true));
    }

    #[test]
    fn a_named_id_must_be_the_materials_own() {
        let rows = rotated();
        // Material a's bytes under b's id: refused, whichever id it is.
        for named in ["b", "f"] {
            let e = plan_import(K, KeyState::Enabled, rows.clone(), &req("a", None, Some(named), 5));
            assert!(matches!(e, Err(Error::IncorrectMaterial(_))), "{named}");
        }
        assert!(plan_import(K, KeyState::Enabled, rows.clone(), &req("a", None, Some("a"), 5)).is_ok());
        let e = plan_import(K, KeyState::Enabled, rows, &req("c", Some(ImportType::New), Some("c"), 5));
        assert!(matches!(e, Err(Error::Invalid(_))));
    }

    #[test]
    fn deleting_any_associated_material_makes_the_key_pending_import_until_it_is_back() {
        let rows = rotated();
        let d = plan_delete(K, KeyState::Enabled, rows, Some("a")).unwrap();
        assert_eq!(states(&d), [("a", "NON_CURRENT", false), ("b", "CURRENT", true)]);
        assert_eq!(
            (d.state, d.current.as_str(), d.drop_versions.as_slice()),
            (KeyState::PendingImport, "b", &["a".to_string()][..])
        );
        // A rotation needs the key usable; deleting it again finds nothing imported.
        assert!(matches!(plan_rotate(K, d.state, d.rows.clone(), 9), Err(Error::InvalidState { .. })));
        assert!(matches!(plan_delete(K, d.state, d.rows.clone(), Some("a")), Err(Error::InvalidState { .. })));
        let c = plan_import(K, d.state, d.rows, &req("a", Some(ImportType::Existing), Some("a"), 6)).unwrap();
        assert_eq!((c.state, states(&c)[0]), (KeyState::Enabled, ("a", "NON_CURRENT", true)));
    }

    #[test]
    fn deleting_the_current_material_by_default() {
        let rows = rotated();
        let d = plan_delete(K, KeyState::Disabled, rows, None).unwrap();
        assert_eq!((d.material_id.as_str(), d.current.as_str(), d.state), ("b", "", KeyState::PendingImport));
        assert!(matches!(plan_delete(K, d.state, d.rows.clone(), Some("zz")), Err(Error::NotFound(_))));
        // Pending deletion stays pending deletion.
        let d = plan_delete(K, KeyState::PendingDeletion, rotated(), None).unwrap();
        assert_eq!(d.state, KeyState::PendingDeletion);
        assert!(matches!(plan_delete(K, KeyState::PendingImport, vec![], None), Err(Error::InvalidState { .. })));
    }

    #[test]
    fn rotation_needs_material_pending_and_an_enabled_key() {
        let c = plan_import(K, KeyState::PendingImport, vec![], &req("a", None, None, 1)).unwrap();
        assert!(matches!(plan_rotate(K, c.state, c.rows.clone(), 2), Err(Error::NoPendingMaterial(_))));
        assert!(matches!(plan_rotate(K, KeyState::Disabled, c.rows.clone(), 2), Err(Error::Disabled(_))));
        assert!(matches!(plan_rotate(K, KeyState::PendingImport, vec![], 2), Err(Error::InvalidState { .. })));
    }

    #[test]
    fn expiry_drops_each_due_material() {
        let mut rows = rotated();
        rows[0].valid_to = Some(10);
        rows[1].valid_to = Some(20);
        assert!(plan_expire(KeyState::Enabled, rows.clone(), 9).is_none());
        let c = plan_expire(KeyState::Enabled, rows.clone(), 10).unwrap();
        assert_eq!(
            (states(&c), c.state),
            (vec![("a", "NON_CURRENT", false), ("b", "CURRENT", true)], KeyState::PendingImport)
        );
        let c = plan_expire(KeyState::Enabled, rows, 20).unwrap();
        assert_eq!((c.drop_versions.len(), c.current.as_str()), (2, ""));
        assert!(c.rows.iter().all(|r| r.valid_to.is_none()));
    }

    #[test]
    fn import_into_a_key_pending_deletion_is_refused() {
        let e = plan_import(K, KeyState::PendingDeletion, rotated(), &req("a", None, None, 5));
        assert!(matches!(e, Err(Error::InvalidState { state: KeyState::PendingDeletion, .. })));
    }
}
