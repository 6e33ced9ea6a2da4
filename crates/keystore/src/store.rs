//! [`KeyStore`]: keys and their versions in SQLite, material sealed under the root key, and an
//! in-memory snapshot that serves the hot path (encrypt/decrypt) without touching the database.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a mutation is fsynced before it returns.
//! Several processes may open the same store (the plugin serving, `envelope key rotate` from a
//! shell); a process sees another's changes after [`KeyStore::refresh`].

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use crate::blob;
use crate::context::{self, EncryptionContext};
use crate::crypto::{AeadKey, random_key};
use crate::error::{Error, Result};
use crate::model::{KeyAttributes, KeyMetadata, KeyRef, KeyState, KeyVersion, Rotation, RotationType, validate_alias};
use crate::root::RootKey;

/// Largest plaintext accepted by [`KeyStore::encrypt`] (the AWS KMS limit).
pub const MAX_PLAINTEXT: usize = 4096;
/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;
/// File name of the database inside the data directory.
pub const DB_FILE: &str = "keystore.db";
/// File name of the root key inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";

/// Where the root key comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum RootSource {
    /// `root.key` in the data directory, created on first use (the default).
    File,
    /// Derived from an operator passphrase; only a salt and a verifier are stored.
    Passphrase(Zeroizing<String>),
    /// Wrapped by a key inside a PKCS#11 token (`root.pkcs11`): only the token unwraps it.
    Pkcs11(Arc<dyn crate::root::RootWrapper>),
}

impl RootSource {
    /// The form of the root key this source reads (and creates).
    pub fn form(&self) -> crate::root::RootForm {
        match self {
            RootSource::File => crate::root::RootForm::File,
            RootSource::Passphrase(_) => crate::root::RootForm::Passphrase,
            RootSource::Pkcs11(_) => crate::root::RootForm::Pkcs11,
        }
    }

    /// Loads this source's root key from `dir`; creates it there only if `create` and `dir`
    /// holds no root key in any form. A key in another form is refused with what it needs. A
    /// second form beside this one (an interrupted reseal) is reported in the log.
    pub fn load(&self, dir: &Path, create: bool) -> Result<RootKey> {
        use crate::root::RootForm;
        let form = self.form();
        let path = dir.join(form.file_name());
        let others: Vec<RootForm> = RootForm::present(dir).into_iter().filter(|f| *f != form).collect();
        if !path.exists() {
            if let Some(other) = others.first() {
                return Err(Error::RootKey(format!("{} uses {}", dir.display(), other.needs())));
            }
            if !create {
                return Err(Error::NotFound(format!("no key store in {} (no {})", dir.display(), form.file_name())));
            }
        }
        let (key, _) = match self {
            RootSource::File => RootKey::load_or_create(&path)?,
            RootSource::Passphrase(p) => RootKey::from_passphrase(&path, p.as_bytes())?,
            RootSource::Pkcs11(w) => RootKey::from_pkcs11(&path, w.as_ref())?,
        };
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|f| f.file_name()).collect();
            tracing::warn!(
                dir = %dir.display(),
                used = form.file_name(),
                also_present = ?names,
                "the data directory holds the root key in more than one form (an interrupted reseal): run the reseal again to finish it"
            );
        }
        Ok(key)
    }
}

impl std::fmt::Debug for RootSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSource::File => f.write_str("RootSource::File"),
            RootSource::Passphrase(_) => f.write_str("RootSource::Passphrase(..)"),
            RootSource::Pkcs11(w) => write!(f, "RootSource::Pkcs11({})", w.key_uri()),
        }
    }
}

/// Result of [`KeyStore::encrypt`].
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// The ciphertext blob.
    pub blob: Vec<u8>,
    /// Binary key id.
    pub key_id: [u8; 16],
    /// Material id used.
    pub material_id: [u8; 32],
}

/// Result of [`KeyStore::decrypt`].
pub struct Decrypted {
    /// The plaintext, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Binary key id.
    pub key_id: [u8; 16],
    /// Material id that decrypted it.
    pub material_id: [u8; 32],
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted").field("key_id", &uuid::Uuid::from_bytes(self.key_id)).finish_non_exhaustive()
    }
}

/// An alias and the key it points at (see [`KeyStore::list_aliases`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AliasInfo {
    /// The alias name, `alias/...`.
    pub name: String,
    /// The key id (UUID) it points at.
    pub key_id: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Time of the last change of its target, Unix seconds (the creation time if never changed).
    pub updated_at: i64,
}

/// The embedded key store.
pub struct KeyStore {
    conn: Mutex<Connection>,
    root: RootKey,
    snap: RwLock<Arc<Snapshot>>,
    dir: PathBuf,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

struct Material {
    key_id: [u8; 16],
    aead: AeadKey,
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<[u8; 16], KeyMetadata>,
    current: HashMap<[u8; 16], [u8; 32]>,
    aliases: HashMap<String, [u8; 16]>,
    materials: HashMap<[u8; 32], Arc<Material>>,
    attrs: HashMap<[u8; 16], Arc<KeyAttributes>>,
}

impl KeyStore {
    /// Opens an existing store in `dir`; fails (instead of creating a new, empty store) when
    /// `dir` holds no root key. For tools that read or change keys that must already exist.
    pub fn open_existing(dir: &Path) -> Result<Self> {
        if !dir.join(ROOT_KEY_FILE).exists() {
            if dir.join(crate::root::PASSPHRASE_FILE).exists() {
                return Err(Error::RootKey(format!(
                    "this store's root key comes from a passphrase ({} instead of {ROOT_KEY_FILE}): it opens only \
                     with the passphrase (envelope kms serve --root-passphrase-file)",
                    crate::root::PASSPHRASE_FILE
                )));
            }
            if dir.join(crate::root::PKCS11_FILE).exists() {
                return Err(Error::RootKey(format!(
                    "this store's root key is wrapped by a key in a PKCS#11 token ({} instead of {ROOT_KEY_FILE}): \
                     it opens only with --root-key pkcs11:…",
                    crate::root::PKCS11_FILE
                )));
            }
            return Err(Error::NotFound(format!("no key store in {} (no {ROOT_KEY_FILE})", dir.display())));
        }
        Self::open(dir)
    }

    /// Opens the store in `dir`, creating the directory (0700), the root key file (0600) and the
    /// database on first use. Refuses a directory that group or others can write.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &RootSource::File)
    }

    /// Like [`KeyStore::open`], with the root key from `root` (a file, or derived from a
    /// passphrase). A store created under one source must always be opened with the same one.
    pub fn open_with(dir: &Path, root: &RootSource) -> Result<Self> {
        Self::open_inner(dir, root, true)
    }

    /// Like [`KeyStore::open_existing`], with the root key from `root`: fails (creating
    /// nothing) when `dir` holds no store.
    pub fn open_existing_with(dir: &Path, root: &RootSource) -> Result<Self> {
        Self::open_inner(dir, root, false)
    }

    fn open_inner(dir: &Path, root: &RootSource, create: bool) -> Result<Self> {
        if let Ok(m) = fs::metadata(dir)
            && m.permissions().mode() & 0o022 != 0
        {
            return Err(Error::Storage(format!(
                "{} is writable by group or others (mode {:o}); chmod 700 it",
                dir.display(),
                m.permissions().mode() & 0o777
            )));
        }
        if create && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let root = root.load(dir, create)?;
        let db = dir.join(DB_FILE);
        let conn = Connection::open(&db)?;
        let _ = fs::set_permissions(&db, fs::Permissions::from_mode(0o600));
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Switching a fresh database to WAL and migrating it can meet SQLITE_BUSY without the
        // busy handler being consulted when several processes open it at the same moment.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL").map_err(Error::from))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        retry_busy(|| migrate(&conn))?;
        let store = Self {
            conn: Mutex::new(conn),
            root,
            snap: RwLock::new(Arc::new(Snapshot::default())),
            dir: dir.to_path_buf(),
        };
        store.refresh()?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads keys, states, aliases and versions from the database (picking up changes made by
    /// other processes) and unseals any material not yet in memory.
    pub fn refresh(&self) -> Result<()> {
        let old = self.snapshot();
        let conn = self.lock_conn()?;
        let mut keys: HashMap<[u8; 16], KeyMetadata> = HashMap::new();
        let mut attrs: HashMap<[u8; 16], KeyAttributes> = HashMap::new();
        let mut current = HashMap::new();
        {
            let mut st = conn.prepare_cached(
                "SELECT k.key_id, k.description, k.state, k.created_at, k.current_material, a.deletion_date, \
                 a.pending_window_days, a.rotation_period_days, a.next_rotation \
                 FROM keys k LEFT JOIN key_attrs a ON a.key_id = k.key_id",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ),
                    KeyAttributes {
                        deletion_date: r.get(5)?,
                        pending_window_days: r.get(6)?,
                        rotation_period_days: r.get(7)?,
                        next_rotation: r.get(8)?,
                        ..KeyAttributes::default()
                    },
                ))
            })?;
            for row in rows {
                let ((id, description, state, created_at, cur), a) = row?;
                let kid = parse_key_id(&id)?;
                attrs.insert(kid, a);
                // An external key without imported material has no current material ('').
                if !cur.is_empty() {
                    current.insert(kid, parse_material_id(&cur)?);
                }
                keys.insert(
                    kid,
                    KeyMetadata {
                        key_id: id,
                        description,
                        state: KeyState::parse(&state)?,
                        created_at,
                        current_material_id: cur,
                        versions: Vec::new(),
                        aliases: Vec::new(),
                    },
                );
            }
        }
        let mut aliases = HashMap::new();
        {
            let mut st = conn.prepare_cached("SELECT name, key_id FROM aliases ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (name, id) = row?;
                let kid = parse_key_id(&id)?;
                if let Some(k) = keys.get_mut(&kid) {
                    k.aliases.push(name.clone());
                }
                aliases.insert(name, kid);
            }
        }
        let mut materials = HashMap::new();
        {
            let mut st = conn.prepare_cached(
                "SELECT v.material_id, v.key_id, v.seq, v.created_at, v.sealed, t.rotation_type FROM key_versions v \
                 LEFT JOIN version_types t ON t.material_id = v.material_id ORDER BY v.key_id, v.seq",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            for row in rows {
                let (mid_hex, kid_hex, seq, created_at, sealed, rtype) = row?;
                let mid = parse_material_id(&mid_hex)?;
                let kid = parse_key_id(&kid_hex)?;
                if let Some(a) = attrs.get_mut(&kid) {
                    // Versions written before schema 3 have no type: later ones were explicit rotations.
                    let kind = match (seq, rtype.as_deref()) {
                        (_, Some("AUTOMATIC")) => RotationType::Automatic,
                        (1, None) => RotationType::Initial,
                        _ => RotationType::OnDemand,
                    };
                    a.rotations.push(Rotation { material_id: mid_hex.clone(), seq, created_at, kind });
                }
                if let Some(k) = keys.get_mut(&kid) {
                    k.versions.push(KeyVersion { material_id: mid_hex, seq, created_at });
                }
                let m = match old.materials.get(&mid) {
                    Some(m) => m.clone(),
                    None => Arc::new(self.unseal(&kid, &mid, &sealed)?),
                };
                materials.insert(mid, m);
            }
        }
        {
            let mut st =
                conn.prepare_cached("SELECT key_id, tag_key, tag_value FROM key_tags ORDER BY key_id, tag_key")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
            for row in rows {
                let (id, k, v) = row?;
                if let Some(a) = attrs.get_mut(&parse_key_id(&id)?) {
                    a.tags.push((k, v));
                }
            }
            let mut st = conn.prepare_cached("SELECT key_id, material_id, valid_to FROM key_import")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<i64>>(2)?))
            })?;
            for row in rows {
                let (id, mid, valid_to) = row?;
                if let Some(a) = attrs.get_mut(&parse_key_id(&id)?) {
                    a.external = true;
                    a.imported_material_id = mid;
                    a.valid_to = valid_to;
                }
            }
            let mut st = conn.prepare_cached("SELECT key_id, policy FROM key_policies WHERE name = 'default'")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, p) = row?;
                let kid = parse_key_id(&id)?;
                if let Some(a) = attrs.get_mut(&kid) {
                    // Keep the same allocation when unchanged, so callers can cache by pointer.
                    a.policy = match old.attrs.get(&kid).and_then(|o| o.policy.clone()) {
                        Some(o) if *o == *p => Some(o),
                        _ => Some(Arc::from(p)),
                    };
                }
            }
        }
        let attrs = attrs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        let snap = Arc::new(Snapshot { keys, current, aliases, materials, attrs });
        // Published while the database lock is still held, so two refreshes cannot finish in the
        // wrong order and leave an older snapshot in place.
        *self.snap.write().map_err(|_| poisoned())? = snap;
        drop(conn);
        Ok(())
    }

    /// Creates a key with fresh random material, optionally with an alias. Durable on return.
    pub fn create_key(&self, alias: Option<&str>, description: &str) -> Result<KeyMetadata> {
        self.create_key_with(alias, description, &[], None)
    }

    /// [`KeyStore::create_key`] with initial tags and a key policy, all in one transaction.
    pub fn create_key_with(
        &self,
        alias: Option<&str>,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(alias, description, tags, policy, false)
    }

    /// Creates a key for imported material (origin `EXTERNAL`): no material, state
    /// [`KeyState::PendingImport`] until [`KeyStore::import_material`].
    pub fn create_external_key(
        &self,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
    ) -> Result<KeyMetadata> {
        self.create(None, description, tags, policy, true)
    }

    fn create(
        &self,
        alias: Option<&str>,
        description: &str,
        tags: &[(String, String)],
        policy: Option<&str>,
        external: bool,
    ) -> Result<KeyMetadata> {
        let alias = alias.map(normalise_alias).transpose()?;
        let kid = *uuid::Uuid::new_v4().as_bytes();
        let id = uuid::Uuid::from_bytes(kid).to_string();
        let now = now();
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(a) = &alias {
                let exists: Option<String> =
                    tx.query_row("SELECT key_id FROM aliases WHERE name = ?1", [a], |r| r.get(0)).optional()?;
                if exists.is_some() {
                    return Err(Error::AlreadyExists(a.clone()));
                }
            }
            if external {
                tx.execute(
                    "INSERT INTO keys (key_id, description, state, created_at, current_material) VALUES (?1, ?2, 'PendingImport', ?3, '')",
                    params![id, description, now],
                )?;
                tx.execute("INSERT INTO key_import (key_id) VALUES (?1)", [&id])?;
            } else {
                let (mid, sealed) = self.new_material(&kid)?;
                let mid_hex = hex::encode(mid);
                tx.execute(
                    "INSERT INTO keys (key_id, description, state, created_at, current_material) VALUES (?1, ?2, 'Enabled', ?3, ?4)",
                    params![id, description, now, mid_hex],
                )?;
                tx.execute(
                    "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, 1, ?3, ?4)",
                    params![mid_hex, id, now, sealed],
                )?;
            }
            if let Some(a) = &alias {
                tx.execute("INSERT INTO aliases (name, key_id, created_at) VALUES (?1, ?2, ?3)", params![a, id, now])?;
            }
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
                    params![id, k, v],
                )?;
            }
            if let Some(p) = policy {
                tx.execute(
                    "INSERT INTO key_policies (key_id, name, policy) VALUES (?1, 'default', ?2)",
                    params![id, p],
                )?;
            }
            tx.commit()?;
        }
        self.refresh()?;
        self.describe(&KeyRef::Id(uuid::Uuid::from_bytes(kid)))
    }

    /// Adds a new material version and makes it current. Older versions stay for decryption.
    pub fn rotate(&self, key: &KeyRef) -> Result<KeyMetadata> {
        self.rotate_as(key, RotationType::OnDemand, now())
    }

    /// [`KeyStore::rotate`] recording how (`kind`) and when (`at`, Unix seconds) it happened.
    pub fn rotate_as(&self, key: &KeyRef, kind: RotationType, at: i64) -> Result<KeyMetadata> {
        let kid = self.resolve_db(key)?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let state: String = tx.query_row("SELECT state FROM keys WHERE key_id = ?1", [&id], |r| r.get(0))?;
            let state = KeyState::parse(&state)?;
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id, state });
            }
            if is_external(&tx, &id)? {
                return Err(Error::Unsupported(format!("key {id} has imported key material and cannot be rotated")));
            }
            self.add_version(&tx, &kid, &id, kind, at)?;
            tx.commit()?;
        }
        self.refresh()?;
        self.describe(key)
    }

    /// Enables or disables a key. A key pending deletion cannot be changed this way.
    pub fn set_enabled(&self, key: &KeyRef, enabled: bool) -> Result<KeyMetadata> {
        let kid = self.resolve_db(key)?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let state: String = tx.query_row("SELECT state FROM keys WHERE key_id = ?1", [&id], |r| r.get(0))?;
            let state = KeyState::parse(&state)?;
            if matches!(state, KeyState::PendingDeletion | KeyState::PendingImport) {
                return Err(Error::InvalidState { key: id, state });
            }
            let new = if enabled { KeyState::Enabled } else { KeyState::Disabled };
            tx.execute("UPDATE keys SET state = ?1 WHERE key_id = ?2", params![new.as_str(), id])?;
            tx.commit()?;
        }
        self.refresh()?;
        self.describe(key)
    }

    /// Schedules deletion of a key (Enabled or Disabled) at `deletion_date` (Unix seconds):
    /// the key becomes PendingDeletion and unusable until [`KeyStore::cancel_deletion`], and
    /// [`KeyStore::purge_deleted`] deletes it once the date has passed.
    pub fn schedule_deletion(&self, key: &KeyRef, deletion_date: i64, window_days: u32) -> Result<KeyMetadata> {
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            tx.execute("UPDATE keys SET state = 'PendingDeletion' WHERE key_id = ?1", [id])?;
            upsert_attrs(
                tx,
                id,
                "deletion_date = ?2, pending_window_days = ?3",
                params![id, deletion_date, window_days],
            )?;
            Ok(())
        })?;
        self.describe(key)
    }

    /// Cancels a scheduled deletion; the key becomes Disabled (as in AWS KMS).
    pub fn cancel_deletion(&self, key: &KeyRef) -> Result<KeyMetadata> {
        self.mutate(key, |tx, id, state| {
            if state != KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            // A key without material (external, never imported or deleted) waits for an import.
            tx.execute(
                "UPDATE keys SET state = CASE WHEN current_material = '' THEN 'PendingImport' ELSE 'Disabled' END WHERE key_id = ?1",
                [id],
            )?;
            upsert_attrs(tx, id, "deletion_date = NULL, pending_window_days = NULL", params![id])?;
            Ok(())
        })?;
        self.describe(key)
    }

    /// Deletes every key pending deletion whose deletion date is at or before `now` (Unix
    /// seconds): its material versions, aliases, tags and policy go with it, irrecoverably.
    /// Returns the deleted key ids.
    pub fn purge_deleted(&self, now: i64) -> Result<Vec<String>> {
        let ids = {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT k.key_id FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
                     WHERE k.state = 'PendingDeletion' AND a.deletion_date IS NOT NULL AND a.deletion_date <= ?1",
                )?;
                let rows = st.query_map([now], |r| r.get::<_, String>(0))?;
                rows.collect::<std::result::Result<_, _>>()?
            };
            for id in &ids {
                tx.execute(
                    "DELETE FROM version_types WHERE material_id IN (SELECT material_id FROM key_versions WHERE key_id = ?1)",
                    [id],
                )?;
                for table in ["aliases", "key_tags", "key_policies", "key_attrs", "key_import", "key_versions", "keys"]
                {
                    tx.execute(&format!("DELETE FROM {table} WHERE key_id = ?1"), [id])?;
                }
            }
            tx.commit()?;
            ids
        };
        if !ids.is_empty() {
            self.refresh()?;
        }
        Ok(ids)
    }

    /// Replaces a key's description. Not for keys pending deletion.
    pub fn set_description(&self, key: &KeyRef, description: &str) -> Result<()> {
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            tx.execute("UPDATE keys SET description = ?1 WHERE key_id = ?2", params![description, id])?;
            Ok(())
        })
    }

    /// Turns automatic rotation on (`Some((period_days, next_rotation))`) or off (`None`).
    pub fn set_rotation(&self, key: &KeyRef, schedule: Option<(u32, i64)>) -> Result<()> {
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            let (period, next) = schedule.unzip();
            upsert_attrs(tx, id, "rotation_period_days = ?2, next_rotation = ?3", params![id, period, next])?;
            Ok(())
        })
    }

    /// Rotates every Enabled key whose automatic rotation is due at `now` (Unix seconds) and
    /// schedules its next rotation one period later. Returns the rotated key ids.
    pub fn rotate_due(&self, now: i64) -> Result<Vec<String>> {
        let due: Vec<(String, i64)> = {
            let conn = self.lock_conn()?;
            let mut st = conn.prepare(
                "SELECT k.key_id, a.rotation_period_days FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
                 WHERE k.state = 'Enabled' AND a.rotation_period_days IS NOT NULL AND a.next_rotation IS NOT NULL \
                 AND a.next_rotation <= ?1 AND k.key_id NOT IN (SELECT key_id FROM key_import)",
            )?;
            let rows = st.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.collect::<std::result::Result<_, _>>()?
        };
        let mut done = Vec::new();
        for (id, period) in due {
            let kid = parse_key_id(&id)?;
            {
                let mut conn = self.lock_conn()?;
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                self.add_version(&tx, &kid, &id, RotationType::Automatic, now)?;
                let next = now.saturating_add(period.saturating_mul(86_400));
                upsert_attrs(&tx, &id, "next_rotation = ?2", params![id, next])?;
                tx.commit()?;
            }
            done.push(id);
        }
        if !done.is_empty() {
            self.refresh()?;
        }
        Ok(done)
    }

    /// Adds or replaces tags of a key. Not for keys pending deletion.
    pub fn tag(&self, key: &KeyRef, tags: &[(String, String)]) -> Result<()> {
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            for (k, v) in tags {
                tx.execute(
                    "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
                    params![id, k, v],
                )?;
            }
            Ok(())
        })
    }

    /// Removes tags of a key by tag key (absent keys are ignored). Not for keys pending deletion.
    pub fn untag(&self, key: &KeyRef, tag_keys: &[String]) -> Result<()> {
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            for k in tag_keys {
                tx.execute("DELETE FROM key_tags WHERE key_id = ?1 AND tag_key = ?2", params![id, k])?;
            }
            Ok(())
        })
    }

    /// Replaces the key policy (name `default`). The document is stored as given.
    pub fn put_policy(&self, key: &KeyRef, policy: &str) -> Result<()> {
        self.mutate(key, |tx, id, _| {
            tx.execute(
                "INSERT INTO key_policies (key_id, name, policy) VALUES (?1, 'default', ?2) \
                 ON CONFLICT(key_id, name) DO UPDATE SET policy = excluded.policy",
                params![id, policy],
            )?;
            Ok(())
        })
    }

    /// The key's management attributes, from the in-memory snapshot. Cheap (an `Arc` clone).
    pub fn attributes(&self, key: &KeyRef) -> Result<Arc<KeyAttributes>> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        snap.attrs.get(&kid).cloned().ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Runs `f` in a transaction on an existing key (given its id and state), then refreshes.
    fn mutate<T>(
        &self,
        key: &KeyRef,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &str, KeyState) -> Result<T>,
    ) -> Result<T> {
        let kid = self.resolve_db(key)?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        let out = {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let state: String = tx
                .query_row("SELECT state FROM keys WHERE key_id = ?1", [&id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::NotFound(id.clone()))?;
            let out = f(&tx, &id, KeyState::parse(&state)?)?;
            tx.commit()?;
            out
        };
        self.refresh()?;
        Ok(out)
    }

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
        let kid = self.resolve_db(key)?;
        let mid = imported_material_id(&kid, material)?;
        let mid_hex = hex::encode(mid);
        self.mutate(key, |tx, id, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            let fixed: Option<Option<String>> =
                tx.query_row("SELECT material_id FROM key_import WHERE key_id = ?1", [id], |r| r.get(0)).optional()?;
            let Some(fixed) = fixed else {
                return Err(Error::Unsupported(format!("key {id} does not have origin EXTERNAL")));
            };
            if fixed.as_deref().is_some_and(|f| f != mid_hex) {
                return Err(Error::IncorrectMaterial(
                    "this is not the key material that was previously imported into this key".into(),
                ));
            }
            let present: Option<i64> = tx
                .query_row("SELECT 1 FROM key_versions WHERE material_id = ?1", [&mid_hex], |r| r.get(0))
                .optional()?;
            if present.is_none() {
                let seq: u32 = tx.query_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE key_id = ?1",
                    [id],
                    |r| r.get(0),
                )?;
                let sealed = self.root.seal(&seal_aad(&kid, &mid), material)?;
                tx.execute(
                    "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![mid_hex, id, seq, at, sealed],
                )?;
            }
            tx.execute("UPDATE key_import SET material_id = ?2, valid_to = ?3 WHERE key_id = ?1", params![id, mid_hex, valid_to])?;
            tx.execute("UPDATE keys SET current_material = ?2 WHERE key_id = ?1", params![id, mid_hex])?;
            if state == KeyState::PendingImport {
                tx.execute("UPDATE keys SET state = 'Enabled' WHERE key_id = ?1", [id])?;
            }
            Ok(())
        })?;
        Ok(mid_hex)
    }

    /// Deletes the imported material of an external key: the key becomes PendingImport (a key
    /// pending deletion stays so) and unusable until the same material is imported again.
    /// Returns the deleted material id (hex).
    pub fn delete_imported_material(&self, key: &KeyRef) -> Result<String> {
        self.mutate(key, delete_imported)
    }

    /// Deletes imported material whose expiry is at or before `now` (Unix seconds), as
    /// [`KeyStore::delete_imported_material`] does. Returns the affected key ids.
    pub fn expire_imported(&self, now: i64) -> Result<Vec<String>> {
        let ids = {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let due: Vec<(String, String)> = {
                let mut st = tx.prepare(
                    "SELECT k.key_id, k.state FROM keys k JOIN key_import i ON i.key_id = k.key_id \
                     WHERE k.current_material != '' AND i.valid_to IS NOT NULL AND i.valid_to <= ?1",
                )?;
                let rows = st.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<std::result::Result<_, _>>()?
            };
            for (id, state) in &due {
                delete_imported(&tx, id, KeyState::parse(state)?)?;
            }
            tx.commit()?;
            due.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        };
        if !ids.is_empty() {
            self.refresh()?;
        }
        Ok(ids)
    }

    /// Seals a short-lived secret (e.g. an import wrapping key) under the root key, bound to
    /// `label`. Domain-separated from sealed key material.
    pub fn seal_secret(&self, label: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        self.root.seal(&secret_aad(label), secret)
    }

    /// Opens a secret sealed by [`KeyStore::seal_secret`] with the same label; anything else
    /// (tampered, other label, other root key) is [`Error::InvalidCiphertext`].
    pub fn open_secret(&self, label: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.root.open(&secret_aad(label), sealed).map_err(|_| Error::InvalidCiphertext("sealed secret does not open"))
    }

    fn add_version(
        &self,
        tx: &rusqlite::Transaction<'_>,
        kid: &[u8; 16],
        id: &str,
        kind: RotationType,
        at: i64,
    ) -> Result<()> {
        let seq: u32 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE key_id = ?1", [id], |r| r.get(0))?;
        let (mid, sealed) = self.new_material(kid)?;
        let mid_hex = hex::encode(mid);
        tx.execute(
            "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![mid_hex, id, seq, at, sealed],
        )?;
        if let Some(t) = kind.as_str() {
            tx.execute("INSERT INTO version_types (material_id, rotation_type) VALUES (?1, ?2)", params![mid_hex, t])?;
        }
        tx.execute("UPDATE keys SET current_material = ?1 WHERE key_id = ?2", params![mid_hex, id])?;
        Ok(())
    }

    /// Points a new alias at an existing key. The key must not be pending deletion.
    pub fn create_alias(&self, alias: &str, target: &KeyRef) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let kid = self.resolve_db(target)?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_not_pending_deletion(&tx, &id)?;
            let exists: Option<String> =
                tx.query_row("SELECT key_id FROM aliases WHERE name = ?1", [&alias], |r| r.get(0)).optional()?;
            if exists.is_some() {
                return Err(Error::AlreadyExists(alias));
            }
            let now = now();
            tx.execute(
                "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![alias, id, now],
            )?;
            tx.commit()?;
        }
        self.refresh()
    }

    /// Points an existing alias at another key. The new key must not be pending deletion.
    ///
    /// With `expected`, the alias must still point at that key when the change commits
    /// ([`Error::Changed`] otherwise): a caller authorized on the alias's current key cannot
    /// move an alias that someone else re-pointed in between.
    pub fn update_alias(&self, alias: &str, target: &KeyRef, expected: Option<&KeyRef>) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let kid = self.resolve_db(target)?;
        let id = uuid::Uuid::from_bytes(kid).to_string();
        let expected = expected.map(|e| resolve(&self.snapshot(), e)).transpose()?;
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_not_pending_deletion(&tx, &id)?;
            require_alias_target(&tx, &alias, expected)?;
            let changed = tx.execute(
                "UPDATE aliases SET key_id = ?1, updated_at = ?2 WHERE name = ?3",
                params![id, now(), alias],
            )?;
            if changed == 0 {
                return Err(Error::NotFound(alias));
            }
            tx.commit()?;
        }
        self.refresh()
    }

    /// Deletes an alias. The key it pointed at is not affected. With `expected`, the alias must
    /// still point at that key ([`Error::Changed`] otherwise).
    pub fn delete_alias(&self, alias: &str, expected: Option<&KeyRef>) -> Result<()> {
        let alias = normalise_alias(alias)?;
        let expected = expected.map(|e| resolve(&self.snapshot(), e)).transpose()?;
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            require_alias_target(&tx, &alias, expected)?;
            let changed = tx.execute("DELETE FROM aliases WHERE name = ?1", [&alias])?;
            if changed == 0 {
                return Err(Error::NotFound(alias));
            }
            tx.commit()?;
        }
        self.refresh()
    }

    /// Lists all aliases, ordered by name, read from the database.
    pub fn list_aliases(&self) -> Result<Vec<AliasInfo>> {
        let conn = self.lock_conn()?;
        let mut st = conn.prepare_cached(
            "SELECT name, key_id, created_at, COALESCE(updated_at, created_at) FROM aliases ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(AliasInfo { name: r.get(0)?, key_id: r.get(1)?, created_at: r.get(2)?, updated_at: r.get(3)? })
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    /// Describes a key from the in-memory snapshot.
    pub fn describe(&self, key: &KeyRef) -> Result<KeyMetadata> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        snap.keys.get(&kid).cloned().ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// Lists all keys, ordered by creation time.
    pub fn list(&self) -> Result<Vec<KeyMetadata>> {
        let snap = self.snapshot();
        let mut v: Vec<_> = snap.keys.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(v)
    }

    /// The key's state and current material id, from the snapshot. Cheap. A key without
    /// material (external, not imported) is [`Error::InvalidState`].
    pub fn current(&self, key: &KeyRef) -> Result<([u8; 16], [u8; 32], KeyState)> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        let state = snap.keys.get(&kid).map(|k| k.state).ok_or_else(|| Error::NotFound(key.to_string()))?;
        let mid = *snap.current.get(&kid).ok_or_else(|| Error::InvalidState { key: key.to_string(), state })?;
        Ok((kid, mid, state))
    }

    /// The key's binary id and state, from the snapshot. Cheap; works for keys without material.
    pub fn state(&self, key: &KeyRef) -> Result<([u8; 16], KeyState)> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        let state = snap.keys.get(&kid).map(|k| k.state).ok_or_else(|| Error::NotFound(key.to_string()))?;
        Ok((kid, state))
    }

    /// Encrypts with the key's current material. The context is bound as AAD.
    pub fn encrypt(&self, key: &KeyRef, plaintext: &[u8], ctx: &EncryptionContext) -> Result<Encrypted> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        self.encrypt_with(&snap, kid, None, plaintext, ctx)
    }

    /// Encrypts with a specific material version of the key (normally the current one). Lets a
    /// caller that derived an identifier from `(key, material)` be sure the ciphertext matches it
    /// even if a rotation happens concurrently.
    pub fn encrypt_with_material(
        &self,
        key: &KeyRef,
        material_id: &[u8; 32],
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted> {
        let snap = self.snapshot();
        let kid = resolve(&snap, key)?;
        self.encrypt_with(&snap, kid, Some(material_id), plaintext, ctx)
    }

    fn encrypt_with(
        &self,
        snap: &Snapshot,
        kid: [u8; 16],
        want: Option<&[u8; 32]>,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Encrypted> {
        if plaintext.is_empty() {
            return Err(Error::Invalid("plaintext is empty".into()));
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::Invalid(format!("plaintext is longer than {MAX_PLAINTEXT} bytes")));
        }
        let meta = snap.keys.get(&kid).ok_or_else(|| Error::NotFound(hex::encode(kid)))?;
        check_usable(meta)?;
        let mid = match want {
            Some(w) => *w,
            None => *snap
                .current
                .get(&kid)
                .ok_or_else(|| Error::InvalidState { key: meta.key_id.clone(), state: KeyState::PendingImport })?,
        };
        let material = snap
            .materials
            .get(&mid)
            .filter(|m| m.key_id == kid)
            .ok_or_else(|| Error::NotFound(format!("{} material {}", meta.key_id, hex::encode(mid))))?;
        let ctx_bytes = context::encode(ctx);
        let mut out = Vec::with_capacity(blob::MIN_LEN + plaintext.len());
        blob::write_header(&kid, &mid, &mut out);
        let mut aad = Vec::with_capacity(blob::HEADER_LEN + ctx_bytes.len());
        aad.extend_from_slice(&out);
        aad.extend_from_slice(&ctx_bytes);
        material.aead.seal_into(&aad, plaintext, &mut out)?;
        Ok(Encrypted { blob: out, key_id: kid, material_id: mid })
    }

    /// Whether the material that made `data` is already in memory, so [`KeyStore::decrypt`] will
    /// not touch the database (callers on async threads use this to pick the blocking pool).
    pub fn is_cached(&self, data: &[u8]) -> bool {
        blob::parse(data).is_ok_and(|b| self.snapshot().materials.contains_key(&b.material_id))
    }

    /// Decrypts a blob made by [`KeyStore::encrypt`] with the same context.
    pub fn decrypt(&self, data: &[u8], ctx: &EncryptionContext) -> Result<Decrypted> {
        let b = blob::parse(data)?;
        let mut snap = self.snapshot();
        if !snap.materials.contains_key(&b.material_id) && self.material_in_db(&b.material_id)? {
            self.refresh()?;
            snap = self.snapshot();
        }
        let material = snap
            .materials
            .get(&b.material_id)
            .ok_or_else(|| Error::NotFound(format!("key material {}", hex::encode(b.material_id))))?;
        if material.key_id != b.key_id {
            return Err(Error::InvalidCiphertext("key id does not match key material"));
        }
        let meta = snap.keys.get(&b.key_id).ok_or(Error::InvalidCiphertext("unknown key"))?;
        check_usable(meta)?;
        let mut aad = Vec::with_capacity(blob::HEADER_LEN + 64);
        aad.extend_from_slice(b.header);
        aad.extend_from_slice(&context::encode(ctx));
        let plaintext = material.aead.open(&aad, b.sealed)?;
        Ok(Decrypted { plaintext, key_id: b.key_id, material_id: b.material_id })
    }

    fn material_in_db(&self, mid: &[u8; 32]) -> Result<bool> {
        let conn = self.lock_conn()?;
        let found: Option<i64> = conn
            .query_row("SELECT 1 FROM key_versions WHERE material_id = ?1", [hex::encode(mid)], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    fn new_material(&self, kid: &[u8; 16]) -> Result<([u8; 32], Vec<u8>)> {
        let mut mid = [0u8; 32];
        crate::crypto::fill_random(&mut mid)?;
        let material = random_key()?;
        let sealed = self.root.seal(&seal_aad(kid, &mid), &material[..])?;
        Ok((mid, sealed))
    }

    fn unseal(&self, kid: &[u8; 16], mid: &[u8; 32], sealed: &[u8]) -> Result<Material> {
        let material = self.root.open(&seal_aad(kid, mid), sealed)?;
        Ok(Material { key_id: *kid, aead: AeadKey::new(&material)? })
    }

    fn resolve_db(&self, key: &KeyRef) -> Result<[u8; 16]> {
        // Mutations resolve against the database, not the snapshot, so a key created by another
        // process is found without waiting for a refresh.
        self.refresh()?;
        resolve(&self.snapshot(), key)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The root key that seals this store's material (for export files, which carry it sealed).
    pub(crate) fn root_key(&self) -> &RootKey {
        &self.root
    }

    pub(crate) fn lock_conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| poisoned())
    }
}

/// Updates `set` (whose parameters start at ?2; ?1 is the key id) in the key's `key_attrs` row,
/// creating the row first if needed.
fn upsert_attrs(tx: &rusqlite::Transaction<'_>, id: &str, set: &str, p: &[&dyn rusqlite::ToSql]) -> Result<()> {
    tx.execute("INSERT INTO key_attrs (key_id) VALUES (?1) ON CONFLICT(key_id) DO NOTHING", [id])?;
    tx.execute(&format!("UPDATE key_attrs SET {set} WHERE key_id = ?1"), p)?;
    Ok(())
}

/// With `expected`, the alias must exist and point at that key.
fn require_alias_target(tx: &rusqlite::Transaction<'_>, alias: &str, expected: Option<[u8; 16]>) -> Result<()> {
    let Some(want) = expected else { return Ok(()) };
    let current: Option<String> =
        tx.query_row("SELECT key_id FROM aliases WHERE name = ?1", [alias], |r| r.get(0)).optional()?;
    match current {
        None => Err(Error::NotFound(alias.to_string())),
        Some(c) if c == uuid::Uuid::from_bytes(want).to_string() => Ok(()),
        Some(_) => Err(Error::Changed(alias.to_string())),
    }
}

fn require_not_pending_deletion(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<()> {
    let state: String = tx
        .query_row("SELECT state FROM keys WHERE key_id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    let state = KeyState::parse(&state)?;
    if state == KeyState::PendingDeletion {
        return Err(Error::InvalidState { key: id.to_string(), state });
    }
    Ok(())
}

fn is_external(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<bool> {
    let found: Option<i64> =
        tx.query_row("SELECT 1 FROM key_import WHERE key_id = ?1", [id], |r| r.get(0)).optional()?;
    Ok(found.is_some())
}

/// Removes the current imported material of external key `id` (in state `state`).
fn delete_imported(tx: &rusqlite::Transaction<'_>, id: &str, state: KeyState) -> Result<String> {
    if !is_external(tx, id)? {
        return Err(Error::Unsupported(format!("key {id} does not have origin EXTERNAL")));
    }
    let cur: String = tx.query_row("SELECT current_material FROM keys WHERE key_id = ?1", [id], |r| r.get(0))?;
    if cur.is_empty() {
        return Err(Error::InvalidState { key: id.to_string(), state });
    }
    tx.execute("DELETE FROM version_types WHERE material_id = ?1", [&cur])?;
    tx.execute("DELETE FROM key_versions WHERE material_id = ?1", [&cur])?;
    tx.execute("UPDATE key_import SET valid_to = NULL WHERE key_id = ?1", [id])?;
    let new_state = if state == KeyState::PendingDeletion { state } else { KeyState::PendingImport };
    tx.execute("UPDATE keys SET current_material = '', state = ?2 WHERE key_id = ?1", params![id, new_state.as_str()])?;
    Ok(cur)
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

fn secret_aad(label: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(18 + label.len());
    aad.extend_from_slice(b"envelope-secret-v1");
    aad.extend_from_slice(label);
    aad
}

fn check_usable(meta: &KeyMetadata) -> Result<()> {
    match meta.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(Error::Disabled(meta.key_id.clone())),
        state => Err(Error::InvalidState { key: meta.key_id.clone(), state }),
    }
}

fn resolve(snap: &Snapshot, key: &KeyRef) -> Result<[u8; 16]> {
    match key {
        KeyRef::Id(u) => {
            let kid = *u.as_bytes();
            if snap.keys.contains_key(&kid) { Ok(kid) } else { Err(Error::NotFound(key.to_string())) }
        }
        KeyRef::Alias(a) => snap.aliases.get(a).copied().ok_or_else(|| Error::NotFound(a.clone())),
    }
}

fn normalise_alias(a: &str) -> Result<String> {
    let name = if a.starts_with("alias/") { a.to_string() } else { format!("alias/{a}") };
    validate_alias(&name)?;
    Ok(name)
}

pub(crate) fn seal_aad(kid: &[u8; 16], mid: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 16 + 32);
    aad.extend_from_slice(b"envelope-seal-v1");
    aad.extend_from_slice(kid);
    aad.extend_from_slice(mid);
    aad
}

fn parse_key_id(s: &str) -> Result<[u8; 16]> {
    uuid::Uuid::parse_str(s)
        .map(|u| *u.as_bytes())
        .map_err(|_| Error::Storage(format!("malformed key id {s:?} in database")))
}

fn parse_material_id(s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| Error::Storage("malformed material id in database".into()))?;
    Ok(out)
}

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn poisoned() -> Error {
    Error::Storage("internal lock poisoned".into())
}

const MIGRATIONS: &[&str] = &[
    // version 1
    "CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        current_material TEXT NOT NULL
     );
     CREATE TABLE key_versions (
        material_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        seq INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        UNIQUE (key_id, seq)
     );
     CREATE TABLE aliases (
        name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        created_at INTEGER NOT NULL
     );",
    // version 2: when an alias was last re-pointed (NULL = never, i.e. its creation time)
    "ALTER TABLE aliases ADD COLUMN updated_at INTEGER",
    // version 3: deletion schedule, automatic rotation, rotation types, tags, key policies
    // (new tables only, created if missing, so the step is idempotent)
    "CREATE TABLE IF NOT EXISTS key_attrs (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        deletion_date INTEGER,
        pending_window_days INTEGER,
        rotation_period_days INTEGER,
        next_rotation INTEGER
     );
     CREATE TABLE IF NOT EXISTS version_types (
        material_id TEXT PRIMARY KEY REFERENCES key_versions(material_id),
        rotation_type TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS key_tags (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        tag_key TEXT NOT NULL,
        tag_value TEXT NOT NULL,
        PRIMARY KEY (key_id, tag_key)
     );
     CREATE TABLE IF NOT EXISTS key_policies (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        name TEXT NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (key_id, name)
     )",
    // version 4: keys with imported material (origin EXTERNAL): a row per such key, with the
    // material id fixed by its first import and the current material's expiry
    "CREATE TABLE IF NOT EXISTS key_import (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        material_id TEXT,
        valid_to INTEGER
     )",
];

/// Runs `f` again while it fails with SQLITE_BUSY/SQLITE_LOCKED, for at most 10 seconds.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.is_busy() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")?;
    let supported = MIGRATIONS.len() as i64;
    // Each step re-reads the version inside its own write transaction, so two processes opening
    // a fresh store at once never run the same migration twice.
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool> {
            let version: i64 = conn
                .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get::<_, String>(0))
                .optional()?
                .map(|v| v.parse().unwrap_or(i64::MAX))
                .unwrap_or(0);
            if version > supported {
                return Err(Error::SchemaVersion { found: version, supported });
            }
            let Some(sql) = MIGRATIONS.get(version as usize) else { return Ok(false) };
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT INTO meta (k, v) VALUES ('schema_version', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                [(version + 1).to_string()],
            )?;
            Ok(true)
        })();
        match step {
            Ok(true) => conn.execute_batch("COMMIT")?,
            Ok(false) => {
                conn.execute_batch("COMMIT")?;
                return Ok(());
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}
