//! Backup and restore of a key store's database.
//!
//! A backup is a consistent copy of `keystore.db` taken with SQLite's `VACUUM INTO` while the
//! store may be in use. It holds only sealed material: it is useless without the root key, which
//! is backed up separately (and should be kept apart from it). Restoring checks that every
//! version unseals with the root key before the restored store is used.
//!
//! A store whose root key is derived from a passphrase keeps the derivation's salt and a
//! verifier in `root.passphrase`; a backup of it writes a copy next to the database copy
//! (`<backup>.passphrase`, not secret), and a restore needs it and the passphrase.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::root::{PASSPHRASE_FILE, RootKey};
use crate::store::{DB_FILE, KeyStore, ROOT_KEY_FILE, RootSource};

/// The file a backup of a passphrase store writes next to `backup`: `<backup>.passphrase`.
pub fn passphrase_params_of(backup: &Path) -> std::path::PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".passphrase");
    std::path::PathBuf::from(name)
}

/// Where the root key of a restored store comes from.
pub enum RestoreRoot {
    /// A root key file copied into the directory, or `None`: the one already there.
    File(Option<std::path::PathBuf>),
    /// A passphrase-derived root key: the passphrase and the store's salt and verifier (the
    /// `<backup>.passphrase` file written by the backup).
    Passphrase {
        /// The operator's passphrase.
        passphrase: zeroize::Zeroizing<String>,
        /// The saved `root.passphrase`.
        params: std::path::PathBuf,
    },
}

impl std::fmt::Debug for RestoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreRoot::File(p) => f.debug_tuple("File").field(p).finish(),
            RestoreRoot::Passphrase { params, .. } => {
                f.debug_struct("Passphrase").field("params", params).finish_non_exhaustive()
            }
        }
    }
}

/// Writes a consistent copy of the key store's database in `dir` to `out` (which must not
/// exist), mode 0600, and for a passphrase store its salt and verifier to `<out>.passphrase`.
/// Safe while the store is in use; the store is not opened, so no root key or passphrase is
/// needed (the copy holds sealed material only). Returns the number of keys in the copy.
pub fn backup_dir(dir: &Path, out: &Path) -> Result<usize> {
    let db = dir.join(DB_FILE);
    if !db.is_file() {
        return Err(Error::NotFound(format!("no key store in {} (no {DB_FILE})", dir.display())));
    }
    let target = check_backup_target(dir, out)?;
    let written = (|| -> Result<usize> {
        let conn = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute("VACUUM INTO ?1", [target])?;
        drop(conn);
        finish_backup(dir, out)?;
        // Counted in the copy itself, so the number matches what was saved.
        let copy = rusqlite::Connection::open_with_flags(
            out,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let keys: i64 = copy.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
        Ok(usize::try_from(keys).unwrap_or(0))
    })();
    if written.is_err() {
        // Never leave a partial backup behind (a retry would be refused as existing).
        let _ = fs::remove_file(out);
        let _ = fs::remove_file(passphrase_params_of(out));
    }
    written
}

fn check_backup_target<'a>(dir: &Path, out: &'a Path) -> Result<&'a str> {
    if out.exists() {
        return Err(Error::AlreadyExists(out.display().to_string()));
    }
    if dir.join(PASSPHRASE_FILE).exists() && passphrase_params_of(out).exists() {
        return Err(Error::AlreadyExists(passphrase_params_of(out).display().to_string()));
    }
    out.to_str().ok_or_else(|| Error::Invalid("backup path is not UTF-8".into()))
}

/// Makes the copy private and durable, and saves a passphrase store's salt and verifier.
fn finish_backup(dir: &Path, out: &Path) -> Result<()> {
    fs::set_permissions(out, fs::Permissions::from_mode(0o600)).map_err(|e| Error::Storage(e.to_string()))?;
    fs::File::open(out).and_then(|f| f.sync_all()).map_err(|e| Error::Storage(e.to_string()))?;
    let params = dir.join(PASSPHRASE_FILE);
    if params.exists() {
        let copy = passphrase_params_of(out);
        fs::copy(&params, &copy).map_err(|e| Error::Storage(format!("cannot write {}: {e}", copy.display())))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).map_err(|e| Error::Storage(e.to_string()))?;
        fs::File::open(&copy).and_then(|f| f.sync_all()).map_err(|e| Error::Storage(e.to_string()))?;
    }
    Ok(())
}

/// Restores `backup` into `dir`: the database is installed only after every key version in it
/// has been unsealed with the root key (`root_key`, copied into `dir`, or the one already there).
/// Refuses to overwrite an existing database unless `force`.
pub fn restore(dir: &Path, backup: &Path, root_key: Option<&Path>, force: bool) -> Result<KeyStore> {
    restore_with(dir, backup, RestoreRoot::File(root_key.map(Path::to_path_buf)), force)
}

/// Like [`restore`], with the root key from `root` (a file, or a passphrase and its saved salt).
pub fn restore_with(dir: &Path, backup: &Path, root: RestoreRoot, force: bool) -> Result<KeyStore> {
    let db = dir.join(DB_FILE);
    if db.exists() && !force {
        return Err(Error::AlreadyExists(format!("{} (use force to replace it)", db.display())));
    }
    if !backup.is_file() {
        return Err(Error::NotFound(backup.display().to_string()));
    }
    // Verify in a private staging directory inside `dir` (same file system, so the final renames
    // are atomic): nothing in `dir` changes unless the backup opens with the root key.
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::Storage(e.to_string()))?;
    }
    let staging = dir.join(format!(".restore-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", staging.display())))?;
    let source = match &root {
        RestoreRoot::File(_) => RootSource::File,
        RestoreRoot::Passphrase { passphrase, .. } => RootSource::Passphrase(passphrase.clone()),
    };
    let result = stage(dir, &staging, backup, &root, &source).and_then(|()| install(dir, &staging, &root));
    // The staging directory may hold a copy of the root key: it never outlives the restore.
    let _ = fs::remove_dir_all(&staging);
    result?;
    KeyStore::open_with(dir, &source)
}

/// Copies the backup and the root (key file or passphrase parameters) into `staging` and opens
/// the store there, which unseals every key version.
fn stage(dir: &Path, staging: &Path, backup: &Path, root: &RestoreRoot, source: &RootSource) -> Result<()> {
    match root {
        RestoreRoot::File(root_key) => {
            let root_src = match root_key {
                Some(p) => p.clone(),
                None => dir.join(ROOT_KEY_FILE),
            };
            if !root_src.is_file() {
                return Err(Error::RootKey(format!("no root key at {}", root_src.display())));
            }
            fs::copy(&root_src, staging.join(ROOT_KEY_FILE)).map_err(|e| Error::RootKey(e.to_string()))?;
            fs::set_permissions(staging.join(ROOT_KEY_FILE), fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::RootKey(e.to_string()))?;
            RootKey::load_or_create(&staging.join(ROOT_KEY_FILE))?;
        }
        RestoreRoot::Passphrase { params, .. } => {
            if dir.join(ROOT_KEY_FILE).exists() {
                return Err(Error::RootKey(format!(
                    "{} holds a root key file; restore a passphrase store into a directory without one",
                    dir.display()
                )));
            }
            if !params.is_file() {
                return Err(Error::RootKey(format!(
                    "no passphrase parameters at {} (written next to the backup as <backup>.passphrase)",
                    params.display()
                )));
            }
            fs::copy(params, staging.join(PASSPHRASE_FILE)).map_err(|e| Error::RootKey(e.to_string()))?;
            fs::set_permissions(staging.join(PASSPHRASE_FILE), fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::RootKey(e.to_string()))?;
        }
    }
    fs::copy(backup, staging.join(DB_FILE)).map_err(|e| Error::Storage(e.to_string()))?;
    // Opening unseals every version: a wrong root key or passphrase, or a damaged backup, fails
    // here. Closing checkpoints the staged database into its one file.
    drop(KeyStore::open_with(staging, source)?);
    Ok(())
}

/// Moves the current database (with its WAL) and root file aside into `staging/replaced`, then
/// the staged ones into place; on any failure puts everything back as it was.
fn install(dir: &Path, staging: &Path, root: &RestoreRoot) -> Result<()> {
    let root_file = match root {
        RestoreRoot::File(Some(_)) => Some(ROOT_KEY_FILE),
        RestoreRoot::File(None) => None,
        RestoreRoot::Passphrase { .. } => Some(PASSPHRASE_FILE),
    };
    let aside = staging.join("replaced");
    fs::create_dir(&aside).map_err(|e| Error::Storage(e.to_string()))?;
    let mut moved: Vec<&str> = Vec::new();
    let mut installed: Vec<&str> = Vec::new();
    let io = |e: std::io::Error| Error::Storage(e.to_string());
    let result = (|| -> Result<()> {
        for name in [DB_FILE, "keystore.db-wal", "keystore.db-shm"].into_iter().chain(root_file) {
            if dir.join(name).exists() {
                fs::rename(dir.join(name), aside.join(name)).map_err(io)?;
                moved.push(name);
            }
        }
        // A staged WAL (should closing not have checkpointed it) travels with its database.
        let wal = staging.join("keystore.db-wal").exists().then_some("keystore.db-wal");
        for name in root_file.into_iter().chain(wal).chain([DB_FILE]) {
            fs::rename(staging.join(name), dir.join(name)).map_err(io)?;
            installed.push(name);
        }
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    })();
    if result.is_err() {
        for name in &installed {
            let _ = fs::remove_file(dir.join(name));
        }
        for name in &moved {
            let _ = fs::rename(aside.join(name), dir.join(name));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EncryptionContext, KeyRef};

    #[test]
    fn backup_then_restore_elsewhere_decrypts_old_ciphertexts() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let ks = KeyStore::open(&src).unwrap();
        ks.create_key(Some("b"), "").unwrap();
        let r = KeyRef::parse("b").unwrap();
        let old = ks.encrypt(&r, b"before rotation", &EncryptionContext::new()).unwrap();
        ks.rotate(&r).unwrap();
        let new = ks.encrypt(&r, b"after rotation", &EncryptionContext::new()).unwrap();
        let bak = d.path().join("backup.db");
        assert_eq!(backup_dir(ks.dir(), &bak).unwrap(), 1);
        assert!(backup_dir(ks.dir(), &bak).is_err(), "never overwrites");
        assert_eq!(fs::metadata(&bak).unwrap().permissions().mode() & 0o777, 0o600);

        // Without the root key nothing is restored.
        let dst = d.path().join("dst");
        assert!(matches!(restore(&dst, &bak, None, false), Err(Error::RootKey(_))));
        assert!(!dst.join(DB_FILE).exists());
        // With the wrong root key the restore is refused and leaves nothing behind.
        let other = d.path().join("other");
        drop(KeyStore::open(&other).unwrap());
        assert!(restore(&dst, &bak, Some(&other.join(ROOT_KEY_FILE)), false).is_err());
        assert!(!dst.join(DB_FILE).exists());
        // With the right one, old and new ciphertexts decrypt.
        let restored = restore(&dst, &bak, Some(&src.join(ROOT_KEY_FILE)), false).unwrap();
        assert_eq!(&restored.decrypt(&old.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"before rotation");
        assert_eq!(&restored.decrypt(&new.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"after rotation");
        drop(restored);
        // An existing database is only replaced with force.
        assert!(matches!(restore(&dst, &bak, None, false), Err(Error::AlreadyExists(_))));
        assert!(restore(&dst, &bak, None, true).is_ok());
    }

    #[test]
    fn a_passphrase_store_restores_with_its_saved_salt_and_the_passphrase() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let pass = |p: &str| zeroize::Zeroizing::new(p.to_string());
        let ks = KeyStore::open_with(&src, &RootSource::Passphrase(pass("correct horse battery"))).unwrap();
        ks.create_key(Some("p"), "").unwrap();
        let ct =
            ks.encrypt(&KeyRef::parse("p").unwrap(), b"sealed under a passphrase", &EncryptionContext::new()).unwrap();
        let bak = d.path().join("backup.db");
        backup_dir(ks.dir(), &bak).unwrap();
        let params = passphrase_params_of(&bak);
        // Without opening the store (no passphrase needed) the same files are written.
        let bak2 = d.path().join("backup2.db");
        assert_eq!(backup_dir(&src, &bak2).unwrap(), 1);
        assert!(passphrase_params_of(&bak2).is_file());
        assert!(backup_dir(&src, &bak2).is_err(), "never overwrites");
        assert!(params.is_file(), "the salt and verifier travel with the backup");
        assert_eq!(fs::metadata(&params).unwrap().permissions().mode() & 0o777, 0o600);

        let dst = d.path().join("dst");
        let with =
            |p: &str, params: &Path| RestoreRoot::Passphrase { passphrase: pass(p), params: params.to_path_buf() };
        // A wrong passphrase or missing parameters restore nothing.
        assert!(restore_with(&dst, &bak, with("wrong passphrase!!", &params), false).is_err());
        assert!(restore_with(&dst, &bak, with("correct horse battery", &d.path().join("nope")), false).is_err());
        assert!(!dst.join(DB_FILE).exists());
        // A root-key restore of a passphrase backup fails too (nothing unseals).
        drop(KeyStore::open(&d.path().join("other")).unwrap());
        assert!(restore(&dst, &bak, Some(&d.path().join("other").join(ROOT_KEY_FILE)), false).is_err());
        assert!(!dst.join(DB_FILE).exists());
        // The right passphrase restores; the store then opens with it alone.
        let restored = restore_with(&dst, &bak, with("correct horse battery", &params), false).unwrap();
        assert_eq!(
            &restored.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..],
            b"sealed under a passphrase"
        );
        drop(restored);
        let reopened = KeyStore::open_with(&dst, &RootSource::Passphrase(pass("correct horse battery"))).unwrap();
        assert_eq!(
            &reopened.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..],
            b"sealed under a passphrase"
        );
    }

    #[test]
    fn a_failed_restore_leaves_the_current_store_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("live");
        let ks = KeyStore::open(&live).unwrap();
        ks.create_key(Some("live"), "").unwrap();
        let ct = ks.encrypt(&KeyRef::parse("live").unwrap(), b"live data", &EncryptionContext::new()).unwrap();
        drop(ks);
        let other = d.path().join("other");
        let ks2 = KeyStore::open(&other).unwrap();
        ks2.create_key(Some("other"), "").unwrap();
        let bak = d.path().join("other.db");
        backup_dir(ks2.dir(), &bak).unwrap();
        // Wrong root key (the live one) for the other store's backup: refused, nothing changes,
        // no staging directory or root key copy is left behind.
        assert!(restore(&live, &bak, None, true).is_err());
        let names: Vec<String> =
            fs::read_dir(&live).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.starts_with(".restore")), "{names:?}");
        let ks = KeyStore::open(&live).unwrap();
        assert_eq!(&ks.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"live data");
        drop(ks);
        // With its own root key it replaces the live store (forced), in place.
        let restored = restore(&live, &bak, Some(&other.join(ROOT_KEY_FILE)), true).unwrap();
        assert!(restored.describe(&KeyRef::parse("other").unwrap()).is_ok());
        assert!(restored.describe(&KeyRef::parse("live").unwrap()).is_err());
        let names: Vec<String> =
            fs::read_dir(&live).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.starts_with(".restore")), "{names:?}");
        // Nothing was staged next to the data directory either.
        let siblings: Vec<String> =
            fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(siblings.iter().all(|n| !n.contains("restore")), "{siblings:?}");
    }
}
