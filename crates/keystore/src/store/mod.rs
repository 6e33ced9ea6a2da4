//! [`KeyStore`]: keys and their versions in a database, material sealed under the root key, and
//! an in-memory snapshot that serves the hot path (encrypt/decrypt) without touching the
//! database.
//!
//! * [`engine`]: the storage trait ([`Engine`]) and the rows an engine reads and writes
//!   (material always sealed).
//! * [`sqlite`]: the SQLite engine, the embedded default (`keystore.db` in the data directory);
//!   [`schema`]: its schema and migrations.
//! * [`postgres`]: the PostgreSQL engine, one database shared by several processes (replicas).
//! * `snapshot`: the in-memory snapshot, refresh, reads, encrypt and decrypt.
//! * `keys`, `aliases`, `import`, `grants`: the mutations, each one transaction, then a refresh.
//! * `migrate`: copying a store from one engine to another, verified.
//!
//! Several processes may open the same store (the plugin serving, `envelope key rotate` from a
//! shell, replicas of the key server on PostgreSQL); a process sees another's changes after
//! [`KeyStore::refresh`]. On a shared engine a watcher thread refreshes on every change
//! notification and at least once per [`StoreOptions::refresh_interval`].

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::{KeyRef, validate_alias};
use crate::root::RootKey;

mod aliases;
pub mod engine;
mod grants;
mod import;
mod keys;
mod migrate;
pub mod postgres;
pub mod schema;
mod snapshot;
pub mod sqlite;

pub use engine::Engine;
pub use grants::NewGrant;
pub use migrate::MigrateReport;
pub use postgres::PostgresOptions;
pub use schema::SCHEMA_VERSION;
use snapshot::Snapshot;
use sqlite::Sqlite;

/// Largest plaintext accepted by [`KeyStore::encrypt`] (the AWS KMS limit).
pub const MAX_PLAINTEXT: usize = 4096;
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

/// Where a store keeps its keys and sealed versions. The root key always comes from the data
/// directory (or the PKCS#11 token it names), whatever the location.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Location {
    /// `keystore.db` in the data directory (the default).
    #[default]
    DataDir,
    /// `keystore.db` in another directory (`sqlite:DIR`).
    Sqlite(PathBuf),
    /// A PostgreSQL database, shared with other processes (`postgres://…`).
    Postgres(PostgresOptions),
}

impl Location {
    /// Parses `sqlite` (the data directory's database), `sqlite:DIR`, or a `postgres://` /
    /// `postgresql://` URL.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "sqlite" || s == "sqlite:" {
            return Ok(Location::DataDir);
        }
        if let Some(dir) = s.strip_prefix("sqlite:") {
            return Ok(Location::Sqlite(PathBuf::from(dir)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(PostgresOptions::new(s)));
        }
        Err(Error::Invalid(format!(
            "store {:?}: expected sqlite, sqlite:DIR, or a postgres:// URL",
            postgres::redact(s)
        )))
    }

    /// Whether other processes share this location and must be watched for changes.
    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }

    /// The location of a separate store named `name` beside this one, e.g. a key server's
    /// other region: `regions/<name>/` under the SQLite directory (`data_dir`'s for
    /// [`Location::DataDir`]; the caller creates it), or the schema `envelope_<name>` (`-` as
    /// `_`) of the same PostgreSQL database. `name` is lower-case letters, digits and `-`.
    pub fn partition(&self, data_dir: &Path, name: &str) -> Result<Self> {
        if name.is_empty()
            || name.len() > 48
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Invalid(format!("{name:?} cannot name a partition of a store")));
        }
        Ok(match self {
            Location::DataDir => Location::Sqlite(data_dir.join("regions").join(name)),
            Location::Sqlite(dir) => Location::Sqlite(dir.join("regions").join(name)),
            Location::Postgres(o) => {
                let mut o = o.clone();
                o.schema = Some(format!("envelope_{}", name.replace('-', "_")));
                Location::Postgres(o)
            }
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::DataDir => f.write_str("sqlite"),
            Location::Sqlite(d) => write!(f, "sqlite:{}", d.display()),
            Location::Postgres(o) => match &o.schema {
                None => f.write_str(&postgres::redact(&o.url)),
                Some(schema) => write!(f, "{} (schema {schema})", postgres::redact(&o.url)),
            },
        }
    }
}

/// How [`KeyStore::open_with_options`] opens a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Where the keys are.
    pub location: Location,
    /// Create the data directory and the root key if missing (else fail).
    pub create: bool,
    /// On a shared location, the longest time between two checks for changes made by other
    /// processes (change notifications usually arrive first).
    pub refresh_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { location: Location::DataDir, create: true, refresh_interval: DEFAULT_REFRESH_INTERVAL }
    }
}

/// Default of [`StoreOptions::refresh_interval`].
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Quotas the key store enforces inside its write transactions (`None`: no limit). Because the
/// check and the write are one transaction, and writers take turns (SQLite's IMMEDIATE
/// transactions, PostgreSQL's store lock), processes sharing one database cannot exceed a quota
/// together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Keys in the store (creation refused at this many).
    pub max_keys: Option<usize>,
    /// Tags per key.
    pub max_tags: Option<usize>,
    /// On-demand rotations per key (automatic rotations do not count).
    pub max_on_demand_rotations: Option<usize>,
}

/// The key store.
pub struct KeyStore {
    core: Arc<Core>,
    dir: PathBuf,
    limits: RwLock<Limits>,
}

/// What the store's background work shares with it.
struct Core {
    db: Box<dyn Engine>,
    root: RootKey,
    snap: RwLock<Arc<Snapshot>>,
    /// Held from reading the database to publishing the snapshot, so two refreshes cannot
    /// finish in the wrong order and leave an older snapshot in place.
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish_non_exhaustive()
    }
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
        Self::open_with_options(dir, root, &StoreOptions { create, ..StoreOptions::default() })
    }

    /// Opens the store whose root key is in `dir` (from `root`) and whose keys are at
    /// `options.location`; with `options.create`, creates what is missing.
    pub fn open_with_options(dir: &Path, root: &RootSource, options: &StoreOptions) -> Result<Self> {
        let create = options.create;
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
        let db: Box<dyn Engine> = match &options.location {
            Location::DataDir => Box::new(Sqlite::open(&dir.join(DB_FILE))?),
            Location::Sqlite(other) => {
                if !other.is_dir() {
                    return Err(Error::NotFound(format!("no directory {}", other.display())));
                }
                Box::new(Sqlite::open(&other.join(DB_FILE))?)
            }
            Location::Postgres(o) => Box::new(postgres::Postgres::open(o)?),
        };
        let core = Core { db, root, snap: RwLock::new(Arc::new(Snapshot::default())), refreshing: Mutex::new(()) };
        let store = Self { core: Arc::new(core), dir: dir.to_path_buf(), limits: RwLock::new(Limits::default()) };
        store.refresh()?;
        if options.location.is_shared() {
            watch(&store.core, options.refresh_interval)?;
        }
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets the quotas later writes are checked against (none by default).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// The quotas writes are checked against.
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads keys, states, aliases and versions from the database (picking up changes made by
    /// other processes) and unseals any material not yet in memory.
    pub fn refresh(&self) -> Result<()> {
        self.core.refresh()
    }

    /// Seals a short-lived secret (e.g. an import wrapping key) under the root key, bound to
    /// `label`. Domain-separated from sealed key material.
    pub fn seal_secret(&self, label: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        self.core.root.seal(&secret_aad(label), secret)
    }

    /// Opens a secret sealed by [`KeyStore::seal_secret`] with the same label; anything else
    /// (tampered, other label, other root key) is [`Error::InvalidCiphertext`].
    pub fn open_secret(&self, label: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.core
            .root
            .open(&secret_aad(label), sealed)
            .map_err(|_| Error::InvalidCiphertext("sealed secret does not open"))
    }

    /// Resolves a key reference against the database, not the snapshot, so a key created by
    /// another process is found without waiting for a refresh. Returns the binary and the text id.
    fn resolve_db(&self, key: &KeyRef) -> Result<([u8; 16], String)> {
        self.refresh()?;
        let kid = snapshot::resolve(&self.core.snapshot(), key)?;
        Ok((kid, uuid::Uuid::from_bytes(kid).to_string()))
    }

    /// The root key that seals this store's material (for export files, which carry it sealed).
    pub(crate) fn root_key(&self) -> &RootKey {
        &self.core.root
    }

    /// The SQLite connection (key export files read and merge in one SQLite transaction).
    pub(crate) fn lock_conn(&self) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>> {
        match self.core.db.as_sqlite() {
            Some(db) => db.lock(),
            None => Err(Error::Unsupported(format!(
                "key export files are for SQLite stores; {} is shared by every process that opens it already",
                self.core.db.describe()
            ))),
        }
    }

    /// What holds the keys and where, for messages (never a password).
    pub fn storage(&self) -> String {
        self.core.db.describe()
    }

    /// Whether this process should run the background work now (deletion after the window,
    /// automatic rotation, import expiry). Always true on SQLite; on PostgreSQL exactly one
    /// process holds the leadership at a time, and another takes over when it goes away. The
    /// work re-checks what is due inside its transactions, so a second run does nothing.
    pub fn is_leader(&self) -> Result<bool> {
        self.core.db.is_leader()
    }
}

/// Starts the watcher thread of a shared store: a refresh after each change notification (many
/// coalesce into one) and at least every `interval`. It stops when the store is dropped.
fn watch(core: &Arc<Core>, interval: Duration) -> Result<()> {
    let (poke, pokes) = mpsc::channel();
    core.db.watch(poke)?;
    let weak: Weak<Core> = Arc::downgrade(core);
    std::thread::Builder::new()
        .name("envelope-store-watch".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match pokes.recv_timeout(interval) {
                    Ok(()) => while pokes.try_recv().is_ok() {},
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let Some(core) = weak.upgrade() else { return };
                match core.refresh() {
                    Ok(()) if failing => {
                        tracing::info!(storage = %core.db.describe(), "key store refreshed again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!(storage = %core.db.describe(), error = %e, "cannot refresh the key store; serving the last snapshot");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        })
        .map_err(|e| Error::Storage(format!("cannot start the key store's watcher: {e}")))?;
    Ok(())
}

fn secret_aad(label: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(18 + label.len());
    aad.extend_from_slice(b"envelope-secret-v1");
    aad.extend_from_slice(label);
    aad
}

fn normalise_alias(a: &str) -> Result<String> {
    let name = if a.starts_with("alias/") { a.to_string() } else { format!("alias/{a}") };
    validate_alias(&name)?;
    Ok(name)
}

/// The additional data the material of a key of `spec` is sealed with. Symmetric keys keep the
/// first form ([`seal_aad`], so stores from before key specs open unchanged); every other spec is
/// the second form, which binds the spec too: material never unseals as another kind of key (a
/// row whose spec was altered does not open).
pub(crate) fn seal_aad_for(
    spec: crate::model::KeySpec,
    usage: crate::model::KeyUsage,
    kid: &[u8; 16],
    mid: &[u8; 32],
) -> Vec<u8> {
    if spec == crate::model::KeySpec::SymmetricDefault {
        return seal_aad(kid, mid);
    }
    // A key pair of another usage than its spec's default (RSA for ENCRYPT_DECRYPT, ECC for
    // KEY_AGREEMENT) is bound to it too: `SPEC:USAGE` (at most 27 bytes).
    let named;
    let name = if usage == spec.usage() {
        spec.as_str().as_bytes()
    } else {
        named = format!("{spec}:{usage}");
        named.as_bytes()
    };
    let mut aad = Vec::with_capacity(16 + 1 + name.len() + 16 + 32);
    aad.extend_from_slice(b"envelope-seal-v2");
    // Names are short ASCII constants (at most 17 bytes): the length fits in one byte.
    aad.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(name);
    aad.extend_from_slice(kid);
    aad.extend_from_slice(mid);
    aad
}

/// The additional data symmetric key material is sealed with (the first form): a label, the
/// key id and the material id.
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
