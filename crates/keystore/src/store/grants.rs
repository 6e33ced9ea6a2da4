//! Grants: create (idempotent by name), delete, and reads from the snapshot. The data plane
//! reads a key's grants from [`crate::KeyAttributes::grants`], in memory like its policy.

use std::sync::Arc;

use super::engine::GrantRow;
use super::{KeyStore, now, snapshot};
use crate::crypto::fill_random;
use crate::error::{Error, Result};
use crate::model::{Grant, GrantConstraints, KeyRef};

/// What a new grant is made of (the store adds its id, key and creation time).
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// The client's `Name`.
    pub name: Option<String>,
    /// Grantee principal.
    pub grantee: String,
    /// Retiring principal.
    pub retiring: Option<String>,
    /// The creator's account root.
    pub issuing_account: String,
    /// Grant operations (sorted and deduplicated here).
    pub operations: Vec<String>,
    /// Encryption-context constraints.
    pub constraints: Option<GrantConstraints>,
}

impl KeyStore {
    /// Adds a grant to a key (not one pending deletion) and returns its id; a retry of an
    /// existing grant (same name and parameters, [`Grant::same_request`]) returns that grant's
    /// id instead. [`Error::LimitExceeded`] when the key already has `limit` grants.
    pub fn create_grant(&self, key: &KeyRef, g: NewGrant, limit: usize) -> Result<String> {
        let (_, id) = self.resolve_db(key)?;
        let mut raw = [0u8; 32];
        fill_random(&mut raw)?;
        let mut operations = g.operations;
        operations.sort();
        operations.dedup();
        let grant = Grant {
            grant_id: hex::encode(raw),
            key_id: id,
            name: g.name,
            grantee: g.grantee,
            retiring: g.retiring,
            issuing_account: g.issuing_account,
            operations,
            constraints: g.constraints.filter(|c| !c.is_empty()),
            created_at: now(),
        };
        let grant_id = self.core.db.create_grant(&GrantRow::of(&grant)?, limit)?;
        self.refresh()?;
        Ok(grant_id)
    }

    /// Deletes grant `grant_id` of a key ([`Error::NotFound`] if the key has no such grant).
    pub fn delete_grant(&self, key: &KeyRef, grant_id: &str) -> Result<()> {
        let (_, id) = self.resolve_db(key)?;
        self.core.db.delete_grant(&id, grant_id)?;
        self.refresh()
    }

    /// The grant with this id, from the snapshot.
    pub fn grant(&self, grant_id: &str) -> Option<Arc<Grant>> {
        self.core.snapshot().grants.get(grant_id).cloned()
    }

    /// Every grant of every key, from the snapshot, ordered by creation time and grant id.
    pub fn all_grants(&self) -> Vec<Arc<Grant>> {
        let snap = self.core.snapshot();
        let mut v: Vec<_> = snap.grants.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at, &a.grant_id).cmp(&(b.created_at, &b.grant_id)));
        v
    }

    /// The grants of a key, from the snapshot.
    pub fn grants(&self, key: &KeyRef) -> Result<Vec<Arc<Grant>>> {
        let snap = self.core.snapshot();
        let kid = snapshot::resolve(&snap, key)?;
        snap.attrs.get(&kid).map(|a| a.grants.clone()).ok_or_else(|| Error::NotFound(key.to_string()))
    }
}
