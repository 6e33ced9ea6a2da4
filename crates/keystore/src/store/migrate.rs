//! Copying a store from one engine to another (SQLite to PostgreSQL and back), verified: the
//! target must be empty and use the same root key; afterwards it must hold exactly the source's
//! rows, and every version must unseal there.

use super::KeyStore;
use super::engine::Rows;
use crate::error::{Error, Result};

/// What [`KeyStore::migrate_to`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// The source, as [`KeyStore::storage`] names it.
    pub from: String,
    /// The target.
    pub to: String,
    /// Keys copied.
    pub keys: usize,
    /// Versions copied, every one unsealed in the target.
    pub versions: usize,
    /// Aliases copied.
    pub aliases: usize,
}

impl KeyStore {
    /// Copies every key, version (still sealed), alias, tag, policy, import, material record and grant of this
    /// store into `to`, in one transaction there, then verifies `to`: the same rows, and every
    /// version unseals with the root key. `to` must hold no key and use the same root key.
    pub fn migrate_to(&self, to: &KeyStore) -> Result<MigrateReport> {
        if !self.core.root.same_as(&to.core.root) {
            return Err(Error::RootKey(format!(
                "{} and {} do not use the same root key: nothing copied",
                self.storage(),
                to.storage()
            )));
        }
        let rows = self.core.db.load()?;
        to.core.db.restore(&rows)?;
        to.refresh()?;
        let copied = to.core.db.load()?;
        if normalise(rows.clone()) != normalise(copied) {
            return Err(Error::Storage(format!("{} does not read back what was copied into it", to.storage())));
        }
        // Every version, unsealed one by one (a refresh reuses material already in memory).
        let snap = to.core.snapshot();
        for v in &rows.versions {
            let kid = super::parse_key_id(&v.key_id)?;
            let mid = super::parse_material_id(&v.material_id)?;
            let (spec, usage) = snap.keys.get(&kid).map(|k| (k.key_spec, k.key_usage)).unwrap_or_default();
            to.core.unseal(&kid, &mid, spec, usage, &v.sealed).map_err(|_| {
                Error::RootKey(format!("version {} of key {} does not unseal in {}", v.seq, v.key_id, to.storage()))
            })?;
            if !snap.materials.contains_key(&mid) {
                return Err(Error::Storage(format!(
                    "version {} of key {} is missing in {}",
                    v.seq,
                    v.key_id,
                    to.storage()
                )));
            }
        }
        Ok(MigrateReport {
            from: self.storage(),
            to: to.storage(),
            keys: rows.keys.len(),
            versions: rows.versions.len(),
            aliases: rows.aliases.len(),
        })
    }
}

/// The rows in one order, without the engine's change counter.
fn normalise(mut r: Rows) -> Rows {
    r.version = None;
    r.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    r.versions.sort_by(|a, b| (&a.key_id, a.seq).cmp(&(&b.key_id, b.seq)));
    r.aliases.sort_by(|a, b| a.name.cmp(&b.name));
    r.tags.sort_by(|a, b| (&a.key_id, &a.key).cmp(&(&b.key_id, &b.key)));
    r.imports.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    r.policies.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    r.materials.sort_by(|a, b| (&a.key_id, a.seq).cmp(&(&b.key_id, b.seq)));
    r.grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    r
}
