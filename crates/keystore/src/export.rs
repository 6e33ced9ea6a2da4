//! Key export files: moving keys between stores that share a root key (the plugin on several
//! control-plane nodes).
//!
//! [`KeyStore::export`] reads the keys, their versions (material still sealed under the root key:
//! nothing is unsealed into the file), rotation types, states and aliases in one read transaction,
//! so the file is consistent while other processes write, and includes what is still only in the
//! WAL. [`KeyStore::import`] merges such a file into another store in one write transaction:
//! it adds the keys, versions and aliases that store lacks, makes a key's newest version current,
//! and changes nothing else; importing the same file again changes nothing.
//!
//! File layout (JSON): `{"format": "envelope-key-export", "version": 1, "payload": "<JSON text>",
//! "seal": "<hex>"}`. `seal` is an AES-256-GCM seal of nothing under the root key with the SHA-256
//! of `payload` as additional data, so the whole file is authenticated by the root key: a file
//! from a store with another root key, or one altered after export, is refused before anything is
//! read from it. Each version's material is sealed as in the database, bound to its key id and
//! material id.
//!
//! Keys with imported material (origin `EXTERNAL`), keys other than symmetric encryption keys
//! (the key server's HMAC keys), and the key server's tags, policies and
//! rotation schedules are not exported (back up a key server with [`crate::backup`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::{KeyState, validate_alias};
use crate::root::RootKey;
use crate::store::{KeyStore, ROOT_KEY_FILE, now, seal_aad};

/// The `format` field of an export file.
pub const FORMAT: &str = "envelope-key-export";
/// The export format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest export file read (far above any real key store).
pub const MAX_FILE_LEN: u64 = 64 << 20;
const SEAL_LABEL: &[u8] = b"envelope-key-export-v1";
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Outer {
    format: String,
    version: u32,
    payload: String,
    seal: String,
}

/// What an export file holds (authenticated by its seal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// When the export was written, Unix seconds.
    pub exported_at: i64,
    /// The keys, each with all its versions.
    pub keys: Vec<ExportedKey>,
    /// The aliases of the exported keys.
    pub aliases: Vec<ExportedAlias>,
}

/// One key of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedKey {
    /// The key id (UUID).
    pub key_id: String,
    /// Free-form description.
    pub description: String,
    /// `Enabled`, `Disabled` or `PendingDeletion`.
    pub state: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Material id of the current version.
    pub current_material_id: String,
    /// For a key pending deletion: when it will be deleted, Unix seconds.
    pub deletion_date: Option<i64>,
    /// For a key pending deletion: the waiting period chosen, days.
    pub pending_window_days: Option<u32>,
    /// Every version, oldest first.
    pub versions: Vec<ExportedVersion>,
}

/// One key version of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedVersion {
    /// Material id, 64 lowercase hex characters.
    pub material_id: String,
    /// 1 for the original material, +1 per rotation.
    pub seq: u32,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// `AUTOMATIC`, `ON_DEMAND`, or none (the original material).
    pub rotation_type: Option<String>,
    /// The material sealed under the root key (hex), exactly as in the database.
    pub sealed: String,
}

/// One alias of an export file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedAlias {
    /// `alias/...`.
    pub name: String,
    /// The key id it points at.
    pub key_id: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Last change of its target, Unix seconds (`None`: never changed).
    pub updated_at: Option<i64>,
}

/// Result of [`KeyStore::export`].
pub struct Export {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// Number of keys in it.
    pub keys: usize,
    /// Number of key versions in it.
    pub versions: usize,
    /// Number of aliases in it.
    pub aliases: usize,
    /// Ids of keys left out because their material is imported (origin `EXTERNAL`).
    pub skipped_external: Vec<String>,
    /// Ids of keys left out because they are not symmetric encryption keys (the key server's
    /// HMAC keys).
    pub skipped_specs: Vec<String>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("keys", &self.keys)
            .field("versions", &self.versions)
            .field("aliases", &self.aliases)
            .field("skipped_external", &self.skipped_external)
            .field("skipped_specs", &self.skipped_specs)
            .finish_non_exhaustive()
    }
}

/// A key whose current version an import changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentChange {
    /// The key id.
    pub key_id: String,
    /// Version (seq) current before.
    pub from_seq: u32,
    /// Version (seq) current now.
    pub to_seq: u32,
}

/// A key whose state differs between the file and the store (imports never change the state of
/// a key the store already has: nothing says which of the two is newer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateDifference {
    /// The key id.
    pub key_id: String,
    /// Its state in this store (kept).
    pub here: String,
    /// Its state in the file.
    pub file: String,
}

/// Result of [`KeyStore::import`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// When the file was exported, Unix seconds.
    pub exported_at: i64,
    /// Keys the store did not have.
    pub keys_added: Vec<String>,
    /// Versions the store did not have (of new and existing keys).
    pub versions_added: usize,
    /// Aliases the store did not have.
    pub aliases_added: Vec<String>,
    /// Existing keys whose current version moved to a newer one from the file.
    pub current_advanced: Vec<CurrentChange>,
    /// Existing keys whose state differs from the file's (not changed).
    pub state_differs: Vec<StateDifference>,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
}

impl ImportSummary {
    /// Whether the import added or changed anything (or, in a dry run, would have).
    pub fn changed(&self) -> bool {
        !self.keys_added.is_empty()
            || self.versions_added > 0
            || !self.aliases_added.is_empty()
            || !self.current_advanced.is_empty()
    }
}

/// Encodes `payload` as an export file sealed under `root`.
pub fn encode(payload: &Payload, root: &RootKey) -> Result<Vec<u8>> {
    let text = serde_json::to_string(payload).map_err(|e| Error::Storage(format!("cannot encode export: {e}")))?;
    let seal = root.seal(&seal_label(&text), b"")?;
    let outer = Outer { format: FORMAT.into(), version: FORMAT_VERSION, payload: text, seal: hex::encode(seal) };
    let mut out =
        serde_json::to_vec_pretty(&outer).map_err(|e| Error::Storage(format!("cannot encode export: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Decodes and checks an export file: its seal must open with `root`, and every field must be
/// well formed. Never panics on any input. `root_path` names the root key in messages.
pub fn decode(bytes: &[u8], root: &RootKey, root_path: &Path) -> Result<Payload> {
    if bytes.starts_with(SQLITE_MAGIC) {
        return Err(Error::Invalid(
            "this is an SQLite database (a keystore.db, or a backup from `envelope kms backup`), not a key export: \
             write one with `envelope key export` (a backup is restored with `envelope kms restore`)"
                .into(),
        ));
    }
    let outer: Outer = serde_json::from_slice(bytes).map_err(|e| {
        Error::Invalid(format!("not a key export written by `envelope key export` (damaged or truncated?): {e}"))
    })?;
    if outer.format != FORMAT {
        return Err(Error::Invalid(format!("not a key export: format is {:?}, expected {FORMAT:?}", outer.format)));
    }
    if outer.version != FORMAT_VERSION {
        return Err(Error::Invalid(format!(
            "key export format version {} is not supported by this build (it reads version {FORMAT_VERSION}): \
             use the same envelope version on both nodes",
            outer.version
        )));
    }
    let seal = hex::decode(&outer.seal).map_err(|_| Error::Invalid("the export's seal is not hex".into()))?;
    let payload: std::result::Result<Payload, _> = serde_json::from_str(&outer.payload);
    if root.open(&seal_label(&outer.payload), &seal).is_err() {
        // Tell a different root key from an altered file: material that opens means the root key
        // is the same, so the file itself was changed.
        let opens = payload.as_ref().is_ok_and(|p| {
            p.keys.iter().flat_map(|k| k.versions.iter().map(move |v| (k, v))).any(|(k, v)| unseal(root, k, v).is_ok())
        });
        if opens {
            return Err(Error::Invalid(
                "the export file was altered after it was written (its seal does not verify); export again".into(),
            ));
        }
        return Err(Error::RootKey(format!(
            "the export file was written by a store with a different root key (or altered): it does not open with \
             {}. Every node needs the same root.key: copy it once from the node that exported, over a secure \
             channel, mode 0600, into a data directory that has no keys of its own yet (see docs/operations.md, \
             High availability)",
            root_path.display()
        )));
    }
    let payload = payload.map_err(|e| Error::Invalid(format!("the export's contents are malformed: {e}")))?;
    validate(&payload)?;
    Ok(payload)
}

fn seal_label(payload: &str) -> Vec<u8> {
    let mut aad = SEAL_LABEL.to_vec();
    aad.extend_from_slice(&crate::crypto::sha256(&[payload.as_bytes()]));
    aad
}

fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    match uuid::Uuid::parse_str(s) {
        Ok(u) if u.to_string() == s => Ok(*u.as_bytes()),
        _ => Err(Error::Invalid(format!("malformed key id {s:?} in the export"))),
    }
}

fn parse_mid(s: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) || hex::decode_to_slice(s, &mut out).is_err() {
        return Err(Error::Invalid(format!("malformed material id {s:?} in the export")));
    }
    Ok(out)
}

/// Unseals one version's material with `root` (checks it belongs to that key and material id).
fn unseal(root: &RootKey, k: &ExportedKey, v: &ExportedVersion) -> Result<Zeroizing<Vec<u8>>> {
    let kid = parse_uuid(&k.key_id)?;
    let mid = parse_mid(&v.material_id)?;
    let sealed = hex::decode(&v.sealed).map_err(|_| Error::Invalid("sealed material is not hex".into()))?;
    root.open(&seal_aad(&kid, &mid), &sealed)
}

fn validate(p: &Payload) -> Result<()> {
    let mut keys = HashSet::new();
    let mut mids = HashSet::new();
    for k in &p.keys {
        parse_uuid(&k.key_id)?;
        if !keys.insert(k.key_id.as_str()) {
            return Err(Error::Invalid(format!("key {} appears twice in the export", k.key_id)));
        }
        match KeyState::parse(&k.state) {
            Ok(KeyState::Enabled | KeyState::Disabled | KeyState::PendingDeletion) => {}
            _ => return Err(Error::Invalid(format!("key {} has an unexpected state {:?}", k.key_id, k.state))),
        }
        let mut seqs = HashSet::new();
        for v in &k.versions {
            parse_mid(&v.material_id)?;
            if v.seq == 0 || !seqs.insert(v.seq) {
                return Err(Error::Invalid(format!("key {} has a bad or repeated version {}", k.key_id, v.seq)));
            }
            if !mids.insert(v.material_id.as_str()) {
                return Err(Error::Invalid(format!("material {} appears twice in the export", v.material_id)));
            }
            if !matches!(v.rotation_type.as_deref(), None | Some("AUTOMATIC" | "ON_DEMAND")) {
                return Err(Error::Invalid(format!("key {} has an unknown rotation type", k.key_id)));
            }
        }
        if !k.versions.iter().any(|v| v.material_id == k.current_material_id) {
            return Err(Error::Invalid(format!("key {}'s current version is not in the export", k.key_id)));
        }
    }
    let mut names = HashSet::new();
    for a in &p.aliases {
        validate_alias(&a.name)?;
        if !names.insert(a.name.as_str()) {
            return Err(Error::Invalid(format!("alias {} appears twice in the export", a.name)));
        }
        if !keys.contains(a.key_id.as_str()) {
            return Err(Error::Invalid(format!("alias {} points at a key that is not in the export", a.name)));
        }
    }
    Ok(())
}

/// Writes an export file to `out`, mode 0600, fsynced: through a private temporary file in the
/// same directory, so `out` is never seen half-written. Refuses an existing `out` unless `force`.
pub fn write_file(out: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::Storage(format!("cannot write {}: {e}", out.display()));
    if !force && fs::symlink_metadata(out).is_ok() {
        return Err(Error::AlreadyExists(format!("{} (use --force to replace it)", out.display())));
    }
    let mut nonce = [0u8; 8];
    crate::crypto::fill_random(&mut nonce)?;
    let name = out.file_name().ok_or_else(|| Error::Invalid(format!("{} is not a file name", out.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", hex::encode(nonce)));
    let tmp = out.with_file_name(tmp_name);
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
        if force {
            fs::rename(&tmp, out).map_err(io)?;
        } else {
            // A link fails if `out` appeared meanwhile: never replaced without --force.
            fs::hard_link(&tmp, out).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::AlreadyExists(format!("{} (use --force to replace it)", out.display()))
                }
                _ => io(e),
            })?;
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Reads an export file (at most [`MAX_FILE_LEN`] bytes).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let f = fs::File::open(path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Storage(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_FILE_LEN {
        return Err(Error::Invalid(format!(
            "{} is larger than {MAX_FILE_LEN} bytes: not a key export",
            path.display()
        )));
    }
    Ok(buf)
}

impl KeyStore {
    /// Writes the store's keys, versions (sealed), states and aliases into an export file's bytes,
    /// read in one transaction (consistent while other processes write). Every version is checked
    /// to unseal first, so a damaged store never produces a file.
    pub fn export(&self) -> Result<Export> {
        let mut keys: Vec<ExportedKey> = Vec::new();
        let mut aliases: Vec<ExportedAlias> = Vec::new();
        let mut skipped_external = Vec::new();
        let mut skipped_specs = Vec::new();
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction()?;
            let external: HashSet<String> = {
                let mut st = tx.prepare("SELECT key_id FROM key_import")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<std::result::Result<_, _>>()?
            };
            let mut index = HashMap::new();
            {
                let mut st = tx.prepare(
                    "SELECT k.key_id, k.description, k.state, k.created_at, k.current_material, a.deletion_date, \
                     a.pending_window_days, k.key_spec FROM keys k LEFT JOIN key_attrs a ON a.key_id = k.key_id \
                     ORDER BY k.created_at, k.key_id",
                )?;
                let rows = st.query_map([], |r| {
                    let spec: String = r.get(7)?;
                    Ok((
                        spec,
                        ExportedKey {
                            key_id: r.get(0)?,
                            description: r.get(1)?,
                            state: r.get(2)?,
                            created_at: r.get(3)?,
                            current_material_id: r.get(4)?,
                            deletion_date: r.get(5)?,
                            pending_window_days: r.get(6)?,
                            versions: Vec::new(),
                        },
                    ))
                })?;
                for row in rows {
                    let (spec, mut k) = row?;
                    if external.contains(&k.key_id) {
                        skipped_external.push(k.key_id);
                        continue;
                    }
                    if spec != crate::model::KeySpec::SymmetricDefault.as_str() {
                        skipped_specs.push(k.key_id);
                        continue;
                    }
                    if k.state != KeyState::PendingDeletion.as_str() {
                        k.deletion_date = None;
                        k.pending_window_days = None;
                    }
                    index.insert(k.key_id.clone(), keys.len());
                    keys.push(k);
                }
            }
            {
                let mut st = tx.prepare(
                    "SELECT v.key_id, v.material_id, v.seq, v.created_at, t.rotation_type, v.sealed FROM key_versions v \
                     LEFT JOIN version_types t ON t.material_id = v.material_id ORDER BY v.key_id, v.seq",
                )?;
                let rows = st.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        ExportedVersion {
                            material_id: r.get(1)?,
                            seq: r.get(2)?,
                            created_at: r.get(3)?,
                            rotation_type: r.get(4)?,
                            sealed: hex::encode(r.get::<_, Vec<u8>>(5)?),
                        },
                    ))
                })?;
                for row in rows {
                    let (kid, v) = row?;
                    if let Some(&i) = index.get(&kid) {
                        keys[i].versions.push(v);
                    }
                }
            }
            {
                let mut st = tx.prepare("SELECT name, key_id, created_at, updated_at FROM aliases ORDER BY name")?;
                let rows = st.query_map([], |r| {
                    Ok(ExportedAlias {
                        name: r.get(0)?,
                        key_id: r.get(1)?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                })?;
                for row in rows {
                    let a = row?;
                    if index.contains_key(&a.key_id) {
                        aliases.push(a);
                    }
                }
            }
            tx.commit()?;
        }
        for k in &keys {
            for v in &k.versions {
                unseal(self.root_key(), k, v).map_err(|_| {
                    Error::RootKey(format!(
                        "version {} of key {} does not open with this store's root key: not exported",
                        v.seq, k.key_id
                    ))
                })?;
            }
        }
        let payload = Payload { exported_at: now(), keys, aliases };
        validate(&payload)?;
        let versions = payload.keys.iter().map(|k| k.versions.len()).sum();
        Ok(Export {
            bytes: encode(&payload, self.root_key())?,
            keys: payload.keys.len(),
            versions,
            aliases: payload.aliases.len(),
            skipped_external,
            skipped_specs,
        })
    }

    /// Merges an export file into this store, in one write transaction (safe while other
    /// processes, such as a running plugin, use the store; they see the result on their next
    /// refresh). Adds the keys, versions and aliases the store lacks and makes a key's newest
    /// version current; never removes anything, and never changes the state or description of a
    /// key the store already has (differences are reported). All or nothing: a file that does not
    /// open with this store's root key ([`Error::RootKey`]), a malformed one ([`Error::Invalid`]),
    /// or one that disagrees with the store about a key, version or alias ([`Error::Conflict`])
    /// changes nothing. With `dry_run`, reports what would change and writes nothing.
    pub fn import(&self, bytes: &[u8], dry_run: bool) -> Result<ImportSummary> {
        let root_path = self.dir().join(ROOT_KEY_FILE);
        let payload = decode(bytes, self.root_key(), &root_path)?;
        // Every version must unseal here (the seal proves the root key; this proves the material).
        let mut material: HashMap<&str, Zeroizing<Vec<u8>>> = HashMap::new();
        for k in &payload.keys {
            for v in &k.versions {
                let m = unseal(self.root_key(), k, v).map_err(|_| {
                    Error::Invalid(format!("version {} of key {} in the export does not unseal", v.seq, k.key_id))
                })?;
                material.insert(v.material_id.as_str(), m);
            }
        }
        let mut summary = ImportSummary { exported_at: payload.exported_at, dry_run, ..ImportSummary::default() };
        {
            let mut conn = self.lock_conn()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for k in &payload.keys {
                self.import_key(&tx, k, &material, &mut summary)?;
            }
            for a in &payload.aliases {
                let here: Option<String> =
                    tx.query_row("SELECT key_id FROM aliases WHERE name = ?1", [&a.name], |r| r.get(0)).optional()?;
                match here {
                    None => {
                        tx.execute(
                            "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)",
                            params![a.name, a.key_id, a.created_at, a.updated_at],
                        )?;
                        summary.aliases_added.push(a.name.clone());
                    }
                    Some(h) if h == a.key_id => {}
                    Some(h) => {
                        return Err(Error::Conflict(format!(
                            "{} points at key {h} here but at key {} in the export; nothing was imported. Was a key \
                             created on this node (a plugin started before the first import creates one)? Import \
                             before starting the plugin, or start it with --no-create-key",
                            a.name, a.key_id
                        )));
                    }
                }
            }
            if dry_run {
                tx.rollback()?;
            } else {
                tx.commit()?;
            }
        }
        if !dry_run && summary.changed() {
            self.refresh()?;
        }
        Ok(summary)
    }

    fn import_key(
        &self,
        tx: &rusqlite::Transaction<'_>,
        k: &ExportedKey,
        material: &HashMap<&str, Zeroizing<Vec<u8>>>,
        summary: &mut ImportSummary,
    ) -> Result<()> {
        let here: Option<(String, String)> = tx
            .query_row("SELECT state, current_material FROM keys WHERE key_id = ?1", [&k.key_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let file_current_seq = k.versions.iter().find(|v| v.material_id == k.current_material_id).map_or(0, |v| v.seq);
        let Some((state_here, current_here)) = here else {
            tx.execute(
                "INSERT INTO keys (key_id, description, state, created_at, current_material) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.key_id, k.description, k.state, k.created_at, k.current_material_id],
            )?;
            if k.state == KeyState::PendingDeletion.as_str() {
                tx.execute(
                    "INSERT INTO key_attrs (key_id, deletion_date, pending_window_days) VALUES (?1, ?2, ?3)",
                    params![k.key_id, k.deletion_date, k.pending_window_days],
                )?;
            }
            for v in &k.versions {
                let owner: Option<String> = tx
                    .query_row("SELECT key_id FROM key_versions WHERE material_id = ?1", [&v.material_id], |r| r.get(0))
                    .optional()?;
                if let Some(owner) = owner {
                    return Err(Error::Conflict(format!(
                        "material {} belongs to key {} in the export but to key {owner} here; nothing was imported",
                        v.material_id, k.key_id
                    )));
                }
                self.insert_version(tx, k, v)?;
                summary.versions_added += 1;
            }
            summary.keys_added.push(k.key_id.clone());
            return Ok(());
        };
        let external: Option<i64> =
            tx.query_row("SELECT 1 FROM key_import WHERE key_id = ?1", [&k.key_id], |r| r.get(0)).optional()?;
        if external.is_some() {
            return Err(Error::Conflict(format!(
                "key {} has imported key material (origin EXTERNAL) here; nothing was imported",
                k.key_id
            )));
        }
        let kid = parse_uuid(&k.key_id)?;
        for v in &k.versions {
            let same_mid: Option<(String, u32, Vec<u8>)> = tx
                .query_row(
                    "SELECT key_id, seq, sealed FROM key_versions WHERE material_id = ?1",
                    [&v.material_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((owner, seq, sealed)) = same_mid {
                let mid = parse_mid(&v.material_id)?;
                let mine = self.root_key().open(&seal_aad(&kid, &mid), &sealed).ok();
                let theirs = material.get(v.material_id.as_str());
                let equal = match (&mine, theirs) {
                    (Some(a), Some(b)) => aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok(),
                    _ => false,
                };
                if owner != k.key_id || seq != v.seq || !equal {
                    return Err(Error::Conflict(format!(
                        "material {} is version {} of key {} in the export but version {seq} of key {owner} here, \
                         with {} material; nothing was imported",
                        v.material_id,
                        v.seq,
                        k.key_id,
                        if equal { "the same" } else { "different" }
                    )));
                }
                continue;
            }
            let taken: Option<String> = tx
                .query_row(
                    "SELECT material_id FROM key_versions WHERE key_id = ?1 AND seq = ?2",
                    params![k.key_id, v.seq],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(other) = taken {
                return Err(Error::Conflict(format!(
                    "key {} has a different version {} here ({other}) than in the export ({}): the key was rotated on \
                     more than one node, and each node's kube-apiserver may have wrapped data with its own version. \
                     Nothing was imported; rotate on one node only (see docs/operations.md, High availability)",
                    k.key_id, v.seq, v.material_id
                )));
            }
            self.insert_version(tx, k, v)?;
            summary.versions_added += 1;
        }
        let current_seq: u32 = tx
            .query_row("SELECT seq FROM key_versions WHERE material_id = ?1", [&current_here], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if file_current_seq > current_seq {
            tx.execute(
                "UPDATE keys SET current_material = ?2 WHERE key_id = ?1",
                params![k.key_id, k.current_material_id],
            )?;
            summary.current_advanced.push(CurrentChange {
                key_id: k.key_id.clone(),
                from_seq: current_seq,
                to_seq: file_current_seq,
            });
        }
        if state_here != k.state {
            summary.state_differs.push(StateDifference {
                key_id: k.key_id.clone(),
                here: state_here,
                file: k.state.clone(),
            });
        }
        Ok(())
    }

    fn insert_version(&self, tx: &rusqlite::Transaction<'_>, k: &ExportedKey, v: &ExportedVersion) -> Result<()> {
        let sealed = hex::decode(&v.sealed).map_err(|_| Error::Invalid("sealed material is not hex".into()))?;
        tx.execute(
            "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![v.material_id, k.key_id, v.seq, v.created_at, sealed],
        )?;
        if let Some(t) = &v.rotation_type {
            tx.execute(
                "INSERT INTO version_types (material_id, rotation_type) VALUES (?1, ?2)",
                params![v.material_id, t],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::{EncryptionContext, KeyRef, store::DB_FILE};

    /// A store in `<tmp>/a` and a directory `<tmp>/<name>` holding a copy of its root key (mode
    /// 0600), as the operations guide has the operator prepare another node.
    fn node_with_root_of(a: &Path, name: &str) -> PathBuf {
        let dir = a.parent().unwrap().join(name);
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        fs::copy(a.join(ROOT_KEY_FILE), dir.join(ROOT_KEY_FILE)).unwrap();
        fs::set_permissions(dir.join(ROOT_KEY_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        dir
    }

    /// Node A: a store in `<tmp>/a` with the key `kubernetes`; node B: an empty store in
    /// `<tmp>/b` with a copy of A's root key. Returns the temporary directory, A, B's directory
    /// and B.
    fn two_nodes() -> (tempfile::TempDir, KeyStore, PathBuf, KeyStore) {
        let d = tempfile::tempdir().unwrap();
        let a_dir = d.path().join("a");
        let a = KeyStore::open(&a_dir).unwrap();
        a.create_key(Some("kubernetes"), "").unwrap();
        let b_dir = node_with_root_of(&a_dir, "b");
        let b = KeyStore::open_existing(&b_dir).unwrap();
        (d, a, b_dir, b)
    }

    fn key() -> KeyRef {
        KeyRef::parse("kubernetes").unwrap()
    }

    fn ctx() -> EncryptionContext {
        EncryptionContext::new()
    }

    /// Everything a store holds about its keys, to prove an import changed nothing.
    fn dump(dir: &Path) -> String {
        let ks = KeyStore::open_existing(dir).unwrap();
        format!("{:?} {:?}", ks.list().unwrap(), ks.list_aliases().unwrap())
    }

    #[test]
    fn a_rotation_reaches_the_other_node_and_its_running_store_picks_it_up() {
        let d = tempfile::tempdir().unwrap();
        let a_dir = d.path().join("a");
        let a = KeyStore::open(&a_dir).unwrap();
        a.create_key(Some("kubernetes"), "k8s").unwrap();
        let old = a.encrypt(&key(), b"before rotation", &ctx()).unwrap();
        let b_dir = node_with_root_of(&a_dir, "b");
        let b_cli = KeyStore::open_existing(&b_dir).unwrap();
        let first = b_cli.import(&a.export().unwrap().bytes, false).unwrap();
        assert_eq!(first.keys_added.len(), 1);
        assert_eq!(first.versions_added, 1);
        assert_eq!(first.aliases_added, vec!["alias/kubernetes".to_string()]);

        // Node B's plugin holds its store open; node A rotates (from another process).
        let b_plugin = KeyStore::open_existing(&b_dir).unwrap();
        KeyStore::open_existing(&a_dir).unwrap().rotate(&key()).unwrap();
        a.refresh().unwrap();
        let (_, a_mid, _) = a.current(&key()).unwrap();
        let new = a.encrypt(&key(), b"after rotation", &ctx()).unwrap();
        assert_eq!(new.material_id, a_mid);

        let export = KeyStore::open_existing(&a_dir).unwrap().export().unwrap();
        assert_eq!((export.keys, export.versions, export.aliases), (1, 2, 1));
        let s = b_cli.import(&export.bytes, false).unwrap();
        assert!(s.keys_added.is_empty() && s.aliases_added.is_empty(), "{s:?}");
        assert_eq!(s.versions_added, 1);
        let k = b_cli.describe(&key()).unwrap();
        assert_eq!(s.current_advanced, vec![CurrentChange { key_id: k.key_id.clone(), from_seq: 1, to_seq: 2 }]);

        // What the plugin's health loop does: refresh, then read the current version.
        b_plugin.refresh().unwrap();
        assert_eq!(b_plugin.current(&key()).unwrap().1, a_mid);
        assert_eq!(&b_plugin.decrypt(&new.blob, &ctx()).unwrap().plaintext[..], b"after rotation");
        assert_eq!(&b_plugin.decrypt(&old.blob, &ctx()).unwrap().plaintext[..], b"before rotation");
        // And the other way round: what B wraps now, A decrypts.
        let from_b = b_plugin.encrypt(&key(), b"from b", &ctx()).unwrap();
        assert_eq!(&a.decrypt(&from_b.blob, &ctx()).unwrap().plaintext[..], b"from b");
        // The rotation type travels too.
        let rot = b_plugin.attributes(&key()).unwrap().rotations.clone();
        assert_eq!(
            rot.iter().map(|r| r.kind).collect::<Vec<_>>(),
            vec![crate::RotationType::Initial, crate::RotationType::OnDemand]
        );
    }

    #[test]
    fn importing_again_or_an_older_export_changes_nothing() {
        let (_d, a, b_dir, b) = two_nodes();
        let older = a.export().unwrap().bytes;
        a.rotate(&key()).unwrap();
        let newer = a.export().unwrap().bytes;
        assert!(b.import(&newer, false).unwrap().changed());
        let before = dump(&b_dir);
        let again = b.import(&newer, false).unwrap();
        assert!(!again.changed(), "{again:?}");
        assert_eq!(again, ImportSummary { exported_at: again.exported_at, ..ImportSummary::default() });
        // An older export never moves the current version back.
        assert!(!b.import(&older, false).unwrap().changed());
        assert_eq!(dump(&b_dir), before);
        assert_eq!(b.current(&key()).unwrap().1, a.current(&key()).unwrap().1);
    }

    #[test]
    fn a_dry_run_reports_and_writes_nothing() {
        let (_d, a, b_dir, b) = two_nodes();
        let s = b.import(&a.export().unwrap().bytes, true).unwrap();
        assert!(s.changed() && s.dry_run);
        assert_eq!(s.versions_added, 1);
        assert!(b.list().unwrap().is_empty());
        assert!(KeyStore::open_existing(&b_dir).unwrap().list().unwrap().is_empty());
    }

    #[test]
    fn a_different_root_key_is_refused_with_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let a = KeyStore::open(&d.path().join("a")).unwrap();
        a.create_key(Some("kubernetes"), "").unwrap();
        let c = KeyStore::open(&d.path().join("c")).unwrap();
        c.create_key(Some("own"), "").unwrap();
        let before = dump(c.dir());
        let e = c.import(&a.export().unwrap().bytes, false).unwrap_err();
        assert!(matches!(e, Error::RootKey(_)), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("different root key") && msg.contains("root.key"), "{msg}");
        assert_eq!(dump(c.dir()), before);
    }

    #[test]
    fn a_key_rotated_on_two_nodes_is_a_conflict_and_nothing_is_imported() {
        let (_d, a, b_dir, b) = two_nodes();
        a.create_key(Some("second"), "").unwrap();
        b.import(&a.export().unwrap().bytes, false).unwrap();
        a.rotate(&key()).unwrap();
        a.rotate(&KeyRef::parse("second").unwrap()).unwrap();
        b.rotate(&key()).unwrap();
        let before = dump(&b_dir);
        let e = b.import(&a.export().unwrap().bytes, false).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        assert!(e.to_string().contains("rotated on more than one node"), "{e}");
        // All or nothing: not even the other key's rotation was taken.
        assert_eq!(dump(&b_dir), before);
    }

    #[test]
    fn an_alias_pointing_elsewhere_is_a_conflict() {
        let (_d, a, b_dir, b) = two_nodes();
        // Node B's plugin was started before the first import and created its own key.
        b.create_key(Some("kubernetes"), "").unwrap();
        let before = dump(&b_dir);
        let e = b.import(&a.export().unwrap().bytes, false).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        assert!(e.to_string().contains("alias/kubernetes") && e.to_string().contains("--no-create-key"), "{e}");
        assert_eq!(dump(&b_dir), before);
    }

    #[test]
    fn the_same_material_id_with_other_material_is_a_conflict() {
        let (_d, a, _, b) = two_nodes();
        b.import(&a.export().unwrap().bytes, false).unwrap();
        // Replace B's material of that version with other material (sealed correctly).
        let k = b.describe(&key()).unwrap();
        let kid = *uuid::Uuid::parse_str(&k.key_id).unwrap().as_bytes();
        let mid = parse_mid(&k.current_material_id).unwrap();
        let other = b.root_key().seal(&seal_aad(&kid, &mid), &[7u8; 32]).unwrap();
        b.lock_conn()
            .unwrap()
            .execute(
                "UPDATE key_versions SET sealed = ?1 WHERE material_id = ?2",
                params![other, k.current_material_id],
            )
            .unwrap();
        let e = b.import(&a.export().unwrap().bytes, false).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        assert!(e.to_string().contains("different material"), "{e}");
    }

    #[test]
    fn states_of_new_keys_travel_and_existing_keys_keep_theirs() {
        let (_d, a, _, b) = two_nodes();
        a.create_key(Some("off"), "").unwrap();
        a.set_enabled(&KeyRef::parse("off").unwrap(), false).unwrap();
        let gone = a.create_key(Some("gone"), "").unwrap();
        a.schedule_deletion(&KeyRef::parse("gone").unwrap(), 4_000_000_000, 7).unwrap();
        a.create_external_key("", &[], None).unwrap();
        let export = a.export().unwrap();
        assert_eq!(export.keys, 3);
        assert_eq!(export.skipped_external.len(), 1);
        b.import(&export.bytes, false).unwrap();
        assert_eq!(b.describe(&KeyRef::parse("off").unwrap()).unwrap().state, KeyState::Disabled);
        let g = KeyRef::parse(&gone.key_id).unwrap();
        assert_eq!(b.describe(&g).unwrap().state, KeyState::PendingDeletion);
        assert_eq!(b.attributes(&g).unwrap().deletion_date, Some(4_000_000_000));
        // B disables its copy; a later import reports the difference and leaves it.
        b.set_enabled(&key(), false).unwrap();
        let s = b.import(&a.export().unwrap().bytes, false).unwrap();
        assert!(!s.changed());
        assert_eq!(s.state_differs.len(), 1);
        assert_eq!((s.state_differs[0].here.as_str(), s.state_differs[0].file.as_str()), ("Disabled", "Enabled"));
        assert_eq!(b.describe(&key()).unwrap().state, KeyState::Disabled);
    }

    #[test]
    fn the_export_has_what_a_copy_of_the_database_file_misses() {
        let d = tempfile::tempdir().unwrap();
        let a_dir = d.path().join("a");
        drop(KeyStore::open(&a_dir).unwrap().create_key(Some("kubernetes"), "").unwrap());
        // The plugin holds the store open (so nothing checkpoints the WAL); a rotation from a shell.
        let plugin = KeyStore::open_existing(&a_dir).unwrap();
        KeyStore::open_existing(&a_dir).unwrap().rotate(&key()).unwrap();
        plugin.refresh().unwrap();
        assert_eq!(plugin.describe(&key()).unwrap().versions.len(), 2);
        // The old advice: copy root.key and keystore.db. The rotation is not in the copy.
        let copy = node_with_root_of(&a_dir, "copy");
        fs::copy(a_dir.join(DB_FILE), copy.join(DB_FILE)).unwrap();
        let copied = KeyStore::open_existing(&copy).unwrap();
        assert!(copied.describe(&key()).map_or(0, |k| k.versions.len()) < 2, "the copy lost the rotation");
        // The export, taken while the plugin runs, has it.
        let export = KeyStore::open_existing(&a_dir).unwrap().export().unwrap();
        assert_eq!(export.versions, 2);
        let b = KeyStore::open_existing(&node_with_root_of(&a_dir, "b")).unwrap();
        b.import(&export.bytes, false).unwrap();
        assert_eq!(b.current(&key()).unwrap().1, plugin.current(&key()).unwrap().1);
    }

    #[test]
    fn damaged_files_are_errors_and_change_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a_dir = d.path().join("a");
        let a = KeyStore::open(&a_dir).unwrap();
        a.create_key(Some("kubernetes"), "").unwrap();
        a.rotate(&key()).unwrap();
        let good = a.export().unwrap().bytes;
        let b_dir = node_with_root_of(&a_dir, "b");
        let b = KeyStore::open_existing(&b_dir).unwrap();
        let before = dump(&b_dir);
        // Every truncation.
        for n in 0..good.len() - 1 {
            assert!(b.import(&good[..n], false).is_err(), "truncated to {n} bytes");
        }
        // A flipped bit anywhere.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(b.import(&bad, false).is_err(), "flipped byte {i} was accepted");
        }
        // An edited payload under the original seal: refused as altered, not as another root key.
        let text = String::from_utf8(good.clone()).unwrap();
        let edited = text.replacen("Enabled", "Disabled", 1);
        let e = b.import(edited.as_bytes(), false).unwrap_err();
        assert!(e.to_string().contains("altered"), "{e}");
        // A database backup passed by mistake.
        let bak = d.path().join("backup.db");
        crate::backup::backup_dir(&a_dir, &bak).unwrap();
        let e = b.import(&fs::read(&bak).unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("envelope kms restore"), "{e}");
        assert_eq!(dump(&b_dir), before);
        // The same file, intact, still imports.
        assert!(b.import(&good, false).unwrap().changed());
    }

    #[test]
    fn export_files_are_private_and_never_overwritten_without_force() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("keys.export");
        write_file(&out, b"one", false).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_file(&out, b"two", false).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)) && e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read(&out).unwrap(), b"one");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&out, b"two", true).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"two");
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_file(&out).unwrap(), b"two");
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        assert!(read_file(&d.path().join("missing")).unwrap_err().to_string().contains("cannot read"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_input_is_an_error_never_a_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let d = tempfile::tempdir().unwrap();
            let ks = KeyStore::open(d.path().join("s").as_path()).unwrap();
            prop_assert!(ks.import(&data, false).is_err());
            let mut json = br#"{"format":"envelope-key-export","version":1,"payload":""#.to_vec();
            json.extend(data.iter().map(|b| b'a' + b % 26));
            json.extend_from_slice(br#"","seal":"00"}"#);
            prop_assert!(ks.import(&json, false).is_err());
        }
    }
}
