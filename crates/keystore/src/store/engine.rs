//! What the key store reads from and writes to its database, independent of the engine.
//!
//! Rows carry material only sealed under the root key ([`crate::root::RootKey`]): no engine ever
//! sees unsealed material. Every write is one transaction that checks the key's state inside it.
//!
//! [`Engine`] is the storage trait: [`super::sqlite::Sqlite`] (the embedded default, a file in
//! the data directory) and [`super::postgres::Postgres`] (one database shared by several
//! processes) implement it. The key store above it owns the root key and the snapshot.

use std::sync::mpsc::Sender;

use super::AliasInfo;
use super::sqlite::Sqlite;
use crate::error::{Error, Limit, Result};
use crate::model::RotationType;

/// A database holding a key store. Every method is one transaction (reads: a consistent one);
/// mutations re-check inside it the state they depend on, so two writers (threads, processes or
/// replicas) never lose each other's update.
pub trait Engine: Send + Sync + 'static {
    /// What and where it is, for messages (no credentials).
    fn describe(&self) -> String;
    /// The whole store, read in one transaction.
    fn load(&self) -> Result<Rows>;
    /// The change counter (bumped by every committed change), or `None` when the engine keeps
    /// none (then every refresh reads everything).
    fn change(&self) -> Result<Option<i64>>;
    /// Whether a version with this material id exists.
    fn has_material(&self, mid: &str) -> Result<bool>;
    /// Creates a key (with its first version, alias, tags and policy); refused with
    /// [`crate::Error::LimitExceeded`] when the store already holds `k.max_keys` keys.
    fn create_key(&self, k: &NewKey<'_>) -> Result<()>;
    /// Adds `v` as the key's new current version (not for keys pending deletion or external);
    /// with `max_on_demand`, refused when the key already had that many on-demand rotations.
    fn rotate(&self, id: &str, v: &NewVersion, kind: RotationType, at: i64, max_on_demand: Option<usize>)
    -> Result<()>;
    /// Enables or disables a key (not one pending deletion or import).
    fn set_enabled(&self, id: &str, enabled: bool) -> Result<()>;
    /// Makes a key PendingDeletion until `deletion_date`.
    fn schedule_deletion(&self, id: &str, deletion_date: i64, window_days: u32) -> Result<()>;
    /// Cancels a scheduled deletion: Disabled, or PendingImport for a key without material.
    fn cancel_deletion(&self, id: &str) -> Result<()>;
    /// Deletes every key pending deletion whose date is at or before `now`; returns their ids.
    fn purge_deleted(&self, now: i64) -> Result<Vec<String>>;
    /// Replaces a key's description.
    fn set_description(&self, id: &str, description: &str) -> Result<()>;
    /// Turns automatic rotation on (`Some((period_days, next_rotation))`) or off.
    fn set_rotation(&self, id: &str, schedule: Option<(u32, i64)>) -> Result<()>;
    /// Enabled, non-external keys whose automatic rotation is due at `now`, with their periods.
    fn due_rotations(&self, now: i64) -> Result<Vec<(String, i64)>>;
    /// Adds `v` as an automatic rotation at `now` and schedules the next one at `next`, if the
    /// rotation is still due when the transaction runs (false: someone else did it).
    fn rotate_automatic(&self, id: &str, v: &NewVersion, now: i64, next: i64) -> Result<bool>;
    /// Adds or replaces tags; with `max_tags`, refused when the key would end up with more.
    fn tag(&self, id: &str, tags: &[(String, String)], max_tags: Option<usize>) -> Result<()>;
    /// Removes tags by tag key.
    fn untag(&self, id: &str, tag_keys: &[String]) -> Result<()>;
    /// Replaces the key policy.
    fn put_policy(&self, id: &str, policy: &str) -> Result<()>;
    /// Adds grant `g` to its key (not one pending deletion), unless `g` is a retry of an existing
    /// grant ([`crate::Grant::same_request`]): returns the id of the grant that holds, `g`'s or
    /// the existing one's. [`crate::Error::LimitExceeded`] if the key already has `limit` grants.
    fn create_grant(&self, g: &GrantRow, limit: usize) -> Result<String>;
    /// Deletes grant `grant_id` of key `id` ([`crate::Error::NotFound`] if it has no such grant).
    fn delete_grant(&self, id: &str, grant_id: &str) -> Result<()>;
    /// Imports material into an external key as `import::plan_import` decides.
    fn import_material(&self, id: &str, req: &ImportRequest) -> Result<()>;
    /// Deletes one imported material of an external key (`None`: the current one), as
    /// `import::plan_delete` decides; returns its id.
    fn delete_imported(&self, id: &str, which: Option<&str>) -> Result<String>;
    /// Makes the external key's material pending rotation current at `at`; returns its id.
    /// With `max_on_demand`, refused when the key already had that many on-demand rotations.
    fn rotate_imported(&self, id: &str, at: i64, max_on_demand: Option<usize>) -> Result<String>;
    /// Deletes every imported material expired at `now`; returns the affected key ids.
    fn expire_imported(&self, now: i64) -> Result<Vec<String>>;
    /// Creates an alias of key `id` (which must not be pending deletion).
    fn create_alias(&self, alias: &str, id: &str, now: i64) -> Result<()>;
    /// Points `alias` at key `id`; with `expected`, only if it still points at that key.
    fn update_alias(&self, alias: &str, id: &str, expected: Option<&str>, now: i64) -> Result<()>;
    /// Deletes `alias`; with `expected`, only if it still points at that key.
    fn delete_alias(&self, alias: &str, expected: Option<&str>) -> Result<()>;
    /// All aliases, ordered by name (bytewise).
    fn list_aliases(&self) -> Result<Vec<AliasInfo>>;
    /// Writes `rows` (another store's, from [`Engine::load`]) into this store, which must hold
    /// no key, in one transaction.
    fn restore(&self, rows: &Rows) -> Result<()>;
    /// Whether this process should run the store's background work (deletions after the
    /// window, automatic rotation, import expiry) now. Engines shared by several processes elect
    /// one; the work is safe to run twice anyway (it re-checks inside its transactions).
    fn is_leader(&self) -> Result<bool> {
        Ok(true)
    }
    /// Asks the engine to send on `poke` whenever another process may have changed the store.
    fn watch(&self, poke: Sender<()>) -> Result<()> {
        drop(poke);
        Ok(())
    }
    /// The SQLite engine, for the features only it has (key export files).
    fn as_sqlite(&self) -> Option<&Sqlite> {
        None
    }
}

/// A key with its management attributes (the `keys` row joined with `key_attrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id (UUID, hyphenated).
    pub key_id: String,
    /// Description.
    pub description: String,
    /// State, as [`crate::KeyState::as_str`] writes it.
    pub state: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Current material id (hex), empty for an external key without material.
    pub current_material: String,
    /// Scheduled deletion time.
    pub deletion_date: Option<i64>,
    /// Waiting period of the scheduled deletion.
    pub pending_window_days: Option<u32>,
    /// Automatic rotation period.
    pub rotation_period_days: Option<u32>,
    /// Next automatic rotation.
    pub next_rotation: Option<i64>,
    /// Key spec, as [`crate::KeySpec::as_str`] writes it (`SYMMETRIC_DEFAULT` before schema 7).
    pub key_spec: String,
    /// Key usage, as [`crate::KeyUsage::as_str`] writes it (`ENCRYPT_DECRYPT` before schema 7).
    pub key_usage: String,
}

/// A material version, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// Material id (hex).
    pub material_id: String,
    /// Key id it belongs to.
    pub key_id: String,
    /// 1 for the first version, then one more per rotation or import.
    pub seq: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// The material sealed under the root key (AAD [`super::seal_aad`]).
    pub sealed: Vec<u8>,
    /// `AUTOMATIC` or `ON_DEMAND` (`None` for a key's first version and pre-schema-3 versions).
    pub rotation_type: Option<String>,
}

/// An alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRow {
    /// `alias/...`.
    pub name: String,
    /// Target key id.
    pub key_id: String,
    /// Creation time.
    pub created_at: i64,
    /// Last re-pointing (`None`: never).
    pub updated_at: Option<i64>,
}

/// A tag of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// Key id.
    pub key_id: String,
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
}

/// The import record of an external key: its row marks the key as one (origin `EXTERNAL`).
/// Since schema 5 (PostgreSQL 2) its materials are [`MaterialRow`]s; the two columns below are
/// what earlier schemas kept (the first import's material id and the current expiry), read by
/// the migration only and never written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// Key id.
    pub key_id: String,
    /// Before schema 5: the material id fixed by the first import.
    pub material_id: Option<String>,
    /// Before schema 5: the expiry of the current material.
    pub valid_to: Option<i64>,
}

/// One material of an external key (schema 5 / PostgreSQL 2: `key_materials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterialRow {
    /// Material id (hex).
    pub material_id: String,
    /// Key id.
    pub key_id: String,
    /// Order of first import within the key, from 1.
    pub seq: u32,
    /// `CURRENT`, `NON_CURRENT` or `PENDING_ROTATION`.
    pub state: String,
    /// Whether the sealed material is in the store (a version of the key).
    pub imported: bool,
    /// `KeyMaterialDescription`.
    pub description: Option<String>,
    /// Expiry while imported.
    pub valid_to: Option<i64>,
    /// First import.
    pub created_at: i64,
    /// When an on-demand rotation made it current.
    pub rotated_at: Option<i64>,
}

/// An import into an external key, material already sealed.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The material (its id derived from key id and material).
    pub version: NewVersion,
    /// New or existing material; `None`: the default for the key.
    pub import_type: Option<crate::model::ImportType>,
    /// The material id the caller named.
    pub named: Option<String>,
    /// The description to keep (`None`: keep the one it had).
    pub description: Option<String>,
    /// Expiry (`None`: never).
    pub valid_to: Option<i64>,
    /// Time of the import.
    pub at: i64,
}

/// A key policy (name `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// Key id.
    pub key_id: String,
    /// The document as stored.
    pub policy: String,
}

/// A grant (schema 6 / PostgreSQL 3: `key_grants`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// 64 lowercase hex characters.
    pub grant_id: String,
    /// Key id.
    pub key_id: String,
    /// The client's `Name`.
    pub name: Option<String>,
    /// Grantee principal.
    pub grantee: String,
    /// Retiring principal.
    pub retiring: Option<String>,
    /// The creator's account root.
    pub issuing_account: String,
    /// The operations, sorted, comma-separated.
    pub operations: String,
    /// The constraints as JSON (`GrantConstraints`'s wire form), if any.
    pub constraints: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl GrantRow {
    /// The row of a grant.
    pub fn of(g: &crate::Grant) -> Result<Self> {
        let constraints = match &g.constraints {
            Some(c) if !c.is_empty() => {
                Some(serde_json::to_string(c).map_err(|e| crate::Error::Storage(format!("grant constraints: {e}")))?)
            }
            _ => None,
        };
        Ok(Self {
            grant_id: g.grant_id.clone(),
            key_id: g.key_id.clone(),
            name: g.name.clone(),
            grantee: g.grantee.clone(),
            retiring: g.retiring.clone(),
            issuing_account: g.issuing_account.clone(),
            operations: g.operations.join(","),
            constraints,
            created_at: g.created_at,
        })
    }

    /// The grant a row holds.
    pub fn grant(&self) -> Result<crate::Grant> {
        let constraints = self
            .constraints
            .as_deref()
            .map(serde_json::from_str::<crate::GrantConstraints>)
            .transpose()
            .map_err(|_| crate::Error::Storage(format!("malformed constraints of grant {}", self.grant_id)))?;
        Ok(crate::Grant {
            grant_id: self.grant_id.clone(),
            key_id: self.key_id.clone(),
            name: self.name.clone(),
            grantee: self.grantee.clone(),
            retiring: self.retiring.clone(),
            issuing_account: self.issuing_account.clone(),
            operations: self.operations.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect(),
            constraints,
            created_at: self.created_at,
        })
    }
}

/// The whole store as read in one transaction (for the snapshot, and for migrations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// The store's change counter when read (`None` for engines without one).
    pub version: Option<i64>,
    /// Keys.
    pub keys: Vec<KeyRow>,
    /// Versions, ordered by key and sequence.
    pub versions: Vec<VersionRow>,
    /// Aliases, ordered by name.
    pub aliases: Vec<AliasRow>,
    /// Tags, ordered by key and tag key.
    pub tags: Vec<TagRow>,
    /// Import records.
    pub imports: Vec<ImportRow>,
    /// Materials of external keys, ordered by key and sequence.
    pub materials: Vec<MaterialRow>,
    /// Key policies.
    pub policies: Vec<PolicyRow>,
    /// Grants, ordered by key, creation time and grant id.
    pub grants: Vec<GrantRow>,
}

/// A fresh material version, already sealed.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Material id (hex).
    pub material_id: String,
    /// Sealed material.
    pub sealed: Vec<u8>,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    /// Key id.
    pub key_id: &'a str,
    /// Description.
    pub description: &'a str,
    /// Creation time.
    pub created_at: i64,
    /// Alias to create with it (normalised).
    pub alias: Option<&'a str>,
    /// First version; `None` for an external key (PendingImport, no material).
    pub version: Option<NewVersion>,
    /// Initial tags.
    pub tags: &'a [(String, String)],
    /// Key policy.
    pub policy: Option<&'a str>,
    /// Refuse the creation when the store already holds this many keys.
    pub max_keys: Option<usize>,
    /// Key spec (its usage is the spec's).
    pub key_spec: crate::model::KeySpec,
    /// Its usage (one of the spec's).
    pub key_usage: crate::model::KeyUsage,
}

/// Counts the on-demand rotations of a key that is not external: versions after the first that
/// are not automatic (untyped versions from before schema 3 were explicit rotations), as
/// [`super::snapshot`] classifies them. Parameter 1: the key id (`?1` / `$1`).
pub(super) const ON_DEMAND_VERSIONS: &str = "SELECT COUNT(*) FROM key_versions v LEFT JOIN version_types t ON t.material_id = v.material_id \
     WHERE v.key_id = $1 AND v.seq > 1 AND COALESCE(t.rotation_type, '') <> 'AUTOMATIC'";

/// Counts the on-demand rotations of an external key: its materials made current by one.
pub(super) const ON_DEMAND_MATERIALS: &str =
    "SELECT COUNT(*) FROM key_materials WHERE key_id = $1 AND rotated_at IS NOT NULL";

/// Refuses a change when `count` already reached `max`.
pub(super) fn check_count(count: i64, max: Option<usize>, limit: fn(usize) -> Limit) -> Result<()> {
    match max {
        Some(max) if count >= i64::try_from(max).unwrap_or(i64::MAX) => Err(Error::LimitExceeded(limit(max))),
        _ => Ok(()),
    }
}

/// Refuses adding or replacing `tags` on a key with tag keys `existing` when it would end up
/// with more than `max` tags.
pub(super) fn check_tags(existing: &[String], tags: &[(String, String)], max: Option<usize>) -> Result<()> {
    let Some(max) = max else { return Ok(()) };
    let mut keys: std::collections::BTreeSet<&str> = existing.iter().map(String::as_str).collect();
    keys.extend(tags.iter().map(|(k, _)| k.as_str()));
    if keys.len() > max { Err(Error::LimitExceeded(Limit::Tags(max))) } else { Ok(()) }
}
