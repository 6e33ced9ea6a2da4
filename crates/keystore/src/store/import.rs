//! Imported key material (origin `EXTERNAL` keys): import, delete, expiry.

use super::engine::NewVersion;
use super::{KeyStore, seal_aad};
use crate::error::{Error, Result};
use crate::model::KeyRef;

impl KeyStore {
    /// Imports `material` (exactly 32 bytes) into an external key at time `at` (Unix seconds),
    /// expiring at `valid_to` (`None`: never). Its material id is derived from key id and
    /// material, so re-importing the same material after [`KeyStore::delete_imported_material`]
    /// restores the same version and old ciphertexts decrypt again. Only the material of the
    /// first import is accepted later ([`Error::IncorrectMaterial`] otherwise). A key
    /// PendingImport becomes Enabled; re-importing into a key that has the material updates its
    /// expiry. Returns the material id (hex).
    pub fn import_material(&self, key: &KeyRef, material: &[u8], valid_to: Option<i64>, at: i64) -> Result<String> {
        if material.len() != crate::crypto::KEY_LEN {
            return Err(Error::IncorrectMaterial(format!("key material must be {} bytes", crate::crypto::KEY_LEN)));
        }
        let (kid, id) = self.resolve_db(key)?;
        let mid = imported_material_id(&kid, material)?;
        let sealed = self.core.root.seal(&seal_aad(&kid, &mid), material)?;
        let v = NewVersion { material_id: hex::encode(mid), sealed };
        self.core.db.import_material(&id, &v, valid_to, at)?;
        self.refresh()?;
        Ok(v.material_id)
    }

    /// Deletes the imported material of an external key: the key becomes PendingImport (a key
    /// pending deletion stays so) and unusable until the same material is imported again.
    /// Returns the deleted material id (hex).
    pub fn delete_imported_material(&self, key: &KeyRef) -> Result<String> {
        let (_, id) = self.resolve_db(key)?;
        let mid = self.core.db.delete_imported(&id)?;
        self.refresh()?;
        Ok(mid)
    }

    /// Deletes imported material whose expiry is at or before `now` (Unix seconds), as
    /// [`KeyStore::delete_imported_material`] does. Returns the affected key ids.
    pub fn expire_imported(&self, now: i64) -> Result<Vec<String>> {
        let ids = self.core.db.expire_imported(now)?;
        if !ids.is_empty() {
            self.refresh()?;
        }
        Ok(ids)
    }
}

/// The material id of imported material: HMAC-SHA-256 keyed with the material over a label and
/// the key id, so the same material in the same key always gets the same id (and blobs made
/// before a delete + re-import find it again) without the id revealing anything about it.
fn imported_material_id(kid: &[u8; 16], material: &[u8]) -> Result<[u8; 32]> {
    use aws_lc_rs::hmac;
    let k = hmac::Key::new(hmac::HMAC_SHA256, material);
    let mut msg = Vec::with_capacity(32 + 16);
    msg.extend_from_slice(b"envelope-imported-material-id-v1");
    msg.extend_from_slice(kid);
    let tag = hmac::sign(&k, &msg);
    <[u8; 32]>::try_from(tag.as_ref()).map_err(|_| Error::Crypto)
}
