//! What the key store reads from and writes to its database, independent of the engine.
//!
//! Rows carry material only sealed under the root key ([`crate::root::RootKey`]): no engine ever
//! sees unsealed material. Every write is one transaction that checks the key's state inside it.

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

/// The import record of an external key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    /// Key id.
    pub key_id: String,
    /// Material id fixed by the first import.
    pub material_id: Option<String>,
    /// Expiry of the current material.
    pub valid_to: Option<i64>,
}

/// A key policy (name `default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// Key id.
    pub key_id: String,
    /// The document as stored.
    pub policy: String,
}

/// The whole store as read in one transaction (for the snapshot, and for migrations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// The store's change counter when read (0 for engines without one).
    pub version: i64,
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
    /// Key policies.
    pub policies: Vec<PolicyRow>,
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
}
