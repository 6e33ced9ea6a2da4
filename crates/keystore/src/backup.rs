//! Backup and restore of a key store's database.
//!
//! A backup is a consistent copy of `keystore.db` taken with SQLite's `VACUUM INTO` while the
//! store may be in use. It holds only sealed material: it is useless without the root key, which
//! is backed up separately (and should be kept apart from it). Restoring checks that every
//! version unseals with the root key before the restored store is used.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::root::RootKey;
use crate::store::{DB_FILE, KeyStore, ROOT_KEY_FILE};

impl KeyStore {
    /// Writes a consistent copy of the database to `out` (which must not exist), mode 0600.
    pub fn backup_to(&self, out: &Path) -> Result<()> {
        if out.exists() {
            return Err(Error::AlreadyExists(out.display().to_string()));
        }
        let target = out.to_str().ok_or_else(|| Error::Invalid("backup path is not UTF-8".into()))?;
        {
            let conn = self.lock_conn()?;
            conn.execute("VACUUM INTO ?1", [target])?;
        }
        fs::set_permissions(out, fs::Permissions::from_mode(0o600)).map_err(|e| Error::Storage(e.to_string()))?;
        fs::File::open(out).and_then(|f| f.sync_all()).map_err(|e| Error::Storage(e.to_string()))?;
        Ok(())
    }
}

/// Restores `backup` into `dir`: the database is installed only after every key version in it
/// has been unsealed with the root key (`root_key`, copied into `dir`, or the one already there).
/// Refuses to overwrite an existing database unless `force`.
pub fn restore(dir: &Path, backup: &Path, root_key: Option<&Path>, force: bool) -> Result<KeyStore> {
    let db = dir.join(DB_FILE);
    if db.exists() && !force {
        return Err(Error::AlreadyExists(format!("{} (use force to replace it)", db.display())));
    }
    if !backup.is_file() {
        return Err(Error::NotFound(backup.display().to_string()));
    }
    // Verify in a private staging directory first: nothing in `dir` changes unless it all opens.
    let staging = dir.with_file_name(format!(
        ".{}.restore-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("envelope"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::Storage(format!("cannot create {}: {e}", staging.display())))?;
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o700)).map_err(|e| Error::Storage(e.to_string()))?;
    let result = (|| -> Result<()> {
        let root_src = match root_key {
            Some(p) => p.to_path_buf(),
            None => dir.join(ROOT_KEY_FILE),
        };
        if !root_src.is_file() {
            return Err(Error::RootKey(format!("no root key at {}", root_src.display())));
        }
        fs::copy(&root_src, staging.join(ROOT_KEY_FILE)).map_err(|e| Error::RootKey(e.to_string()))?;
        fs::set_permissions(staging.join(ROOT_KEY_FILE), fs::Permissions::from_mode(0o600)).map_err(|e| Error::RootKey(e.to_string()))?;
        RootKey::load_or_create(&staging.join(ROOT_KEY_FILE))?;
        fs::copy(backup, staging.join(DB_FILE)).map_err(|e| Error::Storage(e.to_string()))?;
        // Opening unseals every version: a wrong root key or a damaged backup fails here.
        drop(KeyStore::open(&staging)?);
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).create(dir).map_err(|e| Error::Storage(e.to_string()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::Storage(e.to_string()))?;
    }
    for stale in ["keystore.db-wal", "keystore.db-shm"] {
        let _ = fs::remove_file(dir.join(stale));
    }
    if root_key.is_some() {
        fs::rename(staging.join(ROOT_KEY_FILE), dir.join(ROOT_KEY_FILE)).map_err(|e| Error::RootKey(e.to_string()))?;
    }
    fs::rename(staging.join(DB_FILE), &db).map_err(|e| Error::Storage(e.to_string()))?;
    let _ = fs::remove_dir_all(&staging);
    KeyStore::open(dir)
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
        ks.backup_to(&bak).unwrap();
        assert!(ks.backup_to(&bak).is_err(), "never overwrites");
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
}
