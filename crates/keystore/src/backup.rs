//! Backup and restore of a key store's database.
//!
//! A backup is a consistent copy of `keystore.db` taken with SQLite's `VACUUM INTO` while the
//! store may be in use. It holds only sealed material: it is useless without the root key.
//! Restoring checks that every version unseals with the root key before the restored store is
//! used.
//!
//! The root key's form travels with the backup when it holds no secret: a store whose root key
//! is derived from a passphrase keeps the derivation's salt and a verifier in `root.passphrase`,
//! copied next to the database copy as `<backup>.passphrase`; a store whose root key is wrapped
//! by a PKCS#11 token key keeps the wrapped key in `root.pkcs11`, copied as `<backup>.pkcs11`.
//! Neither opens anything alone: a restore needs them and the passphrase, or the token key. A
//! `root.key` file is the key itself and is never copied: it is backed up separately (and
//! should be kept apart from the backup).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::root::{PASSPHRASE_FILE, PKCS11_FILE, RootForm, RootKey, RootWrapper};
use crate::store::{DB_FILE, KeyStore, ROOT_KEY_FILE, RootSource};

/// The file a backup of a passphrase store writes next to `backup`: `<backup>.passphrase`.
pub fn passphrase_params_of(backup: &Path) -> PathBuf {
    descriptor_of(backup, RootForm::Passphrase)
}

/// The file a backup of a store sealed under a PKCS#11 token key writes next to `backup`:
/// `<backup>.pkcs11` (a copy of `root.pkcs11`).
pub fn pkcs11_params_of(backup: &Path) -> PathBuf {
    descriptor_of(backup, RootForm::Pkcs11)
}

/// The forms whose descriptor a backup wrote next to `backup` (`<backup>.passphrase`,
/// `<backup>.pkcs11`); empty for a store with a `root.key` file.
pub fn saved_root_forms(backup: &Path) -> Vec<RootForm> {
    SAVED_FORMS.into_iter().filter(|f| descriptor_of(backup, *f).is_file()).collect()
}

/// The root forms whose file holds no secret, saved next to a backup.
const SAVED_FORMS: [RootForm; 2] = [RootForm::Passphrase, RootForm::Pkcs11];

fn descriptor_of(backup: &Path, form: RootForm) -> PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(match form {
        RootForm::Pkcs11 => ".pkcs11",
        RootForm::Passphrase | RootForm::File => ".passphrase",
    });
    PathBuf::from(name)
}

/// Where the root key of a restored store comes from.
pub enum RestoreRoot {
    /// A root key file copied into the directory, or `None`: the one already there.
    File(Option<PathBuf>),
    /// A passphrase-derived root key: the passphrase and the store's salt and verifier (the
    /// `<backup>.passphrase` file written by the backup).
    Passphrase {
        /// The operator's passphrase.
        passphrase: zeroize::Zeroizing<String>,
        /// The saved `root.passphrase`.
        params: PathBuf,
    },
    /// A root key wrapped by a PKCS#11 token key: the token key and the wrapped root key (the
    /// `<backup>.pkcs11` file written by the backup, or the store's `root.pkcs11`).
    Pkcs11 {
        /// The token key that unwraps it.
        wrapper: Arc<dyn RootWrapper>,
        /// The saved `root.pkcs11`.
        params: PathBuf,
    },
}

impl RestoreRoot {
    /// The root source that opens the restored store.
    fn source(&self) -> RootSource {
        match self {
            RestoreRoot::File(_) => RootSource::File,
            RestoreRoot::Passphrase { passphrase, .. } => RootSource::Passphrase(passphrase.clone()),
            RestoreRoot::Pkcs11 { wrapper, .. } => RootSource::Pkcs11(Arc::clone(wrapper)),
        }
    }

    /// The root file installed with the database (`None`: the one already in the directory).
    fn installed(&self) -> Option<RootForm> {
        match self {
            RestoreRoot::File(None) => None,
            RestoreRoot::File(Some(_)) => Some(RootForm::File),
            RestoreRoot::Passphrase { .. } => Some(RootForm::Passphrase),
            RestoreRoot::Pkcs11 { .. } => Some(RootForm::Pkcs11),
        }
    }
}

impl std::fmt::Debug for RestoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreRoot::File(p) => f.debug_tuple("File").field(p).finish(),
            RestoreRoot::Passphrase { params, .. } => {
                f.debug_struct("Passphrase").field("params", params).finish_non_exhaustive()
            }
            RestoreRoot::Pkcs11 { wrapper, params } => {
                f.debug_struct("Pkcs11").field("key", &wrapper.key_uri()).field("params", params).finish()
            }
        }
    }
}

/// Writes a consistent copy of the key store's database in `dir` to `out` (which must not
/// exist), mode 0600, and the root key's descriptor when it holds no secret: a passphrase
/// store's salt and verifier to `<out>.passphrase`, a token-sealed store's wrapped root key to
/// `<out>.pkcs11`. Safe while the store is in use; the store is not opened, so no root key,
/// passphrase or token is needed (the copy holds sealed material only). Returns the number of
/// keys in the copy.
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
        for form in SAVED_FORMS {
            if dir.join(form.file_name()).exists() {
                let _ = fs::remove_file(descriptor_of(out, form));
            }
        }
    }
    written
}

fn check_backup_target<'a>(dir: &Path, out: &'a Path) -> Result<&'a str> {
    if out.exists() {
        return Err(Error::AlreadyExists(out.display().to_string()));
    }
    for form in SAVED_FORMS {
        if dir.join(form.file_name()).exists() && descriptor_of(out, form).exists() {
            return Err(Error::AlreadyExists(descriptor_of(out, form).display().to_string()));
        }
    }
    out.to_str().ok_or_else(|| Error::Invalid("backup path is not UTF-8".into()))
}

/// Makes the copy private and durable, and saves the root key's descriptors that hold no
/// secret (both, after an interrupted reseal between them).
fn finish_backup(dir: &Path, out: &Path) -> Result<()> {
    fs::set_permissions(out, fs::Permissions::from_mode(0o600)).map_err(|e| Error::Storage(e.to_string()))?;
    fs::File::open(out).and_then(|f| f.sync_all()).map_err(|e| Error::Storage(e.to_string()))?;
    for form in SAVED_FORMS {
        let params = dir.join(form.file_name());
        if !params.exists() {
            continue;
        }
        let copy = descriptor_of(out, form);
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

/// Like [`restore`], with the root key from `root`: a file, a passphrase and its saved salt,
/// or a token key and the root key it wrapped. A root that does not open the backup is refused
/// and nothing in `dir` changes. The root file installed replaces the replaced store's root
/// files of every form (they opened the old database, not this one); a directory holding a
/// root file of another form but no database is refused (its root key is not the backup's).
pub fn restore_with(dir: &Path, backup: &Path, root: RestoreRoot, force: bool) -> Result<KeyStore> {
    let db = dir.join(DB_FILE);
    if db.exists() && !force {
        return Err(Error::AlreadyExists(format!("{} (use force to replace it)", db.display())));
    }
    if !backup.is_file() {
        return Err(Error::NotFound(backup.display().to_string()));
    }
    if let Some(form) = root.installed()
        && !db.exists()
        && let Some(other) = RootForm::present(dir).into_iter().find(|f| *f != form)
    {
        return Err(Error::RootKey(format!(
            "{} holds {} but no key store; restore a store with a {} into a directory without it (or move it away)",
            dir.display(),
            other.file_name(),
            form.file_name()
        )));
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
    let source = root.source();
    let result = stage(dir, &staging, backup, &root, &source).and_then(|()| install(dir, &staging, &root));
    // The staging directory may hold a copy of the root key: it never outlives the restore.
    let _ = fs::remove_dir_all(&staging);
    result?;
    KeyStore::open_with(dir, &source)
}

/// Copies the backup and the root (key file, passphrase parameters or wrapped root key) into
/// `staging` and opens the store there, which unseals every key version.
fn stage(dir: &Path, staging: &Path, backup: &Path, root: &RestoreRoot, source: &RootSource) -> Result<()> {
    let copy_private = |from: &Path, name: &str| -> Result<()> {
        fs::copy(from, staging.join(name))
            .map_err(|e| Error::RootKey(format!("cannot copy {}: {e}", from.display())))?;
        fs::set_permissions(staging.join(name), fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::RootKey(e.to_string()))
    };
    match root {
        RestoreRoot::File(root_key) => {
            let root_src = match root_key {
                Some(p) => p.clone(),
                None => dir.join(ROOT_KEY_FILE),
            };
            if !root_src.is_file() {
                return Err(Error::RootKey(format!("no root key at {}", root_src.display())));
            }
            copy_private(&root_src, ROOT_KEY_FILE)?;
            RootKey::load_or_create(&staging.join(ROOT_KEY_FILE))?;
        }
        RestoreRoot::Passphrase { params, .. } => {
            if !params.is_file() {
                return Err(Error::RootKey(format!(
                    "no passphrase parameters at {} (written next to the backup as <backup>.passphrase)",
                    params.display()
                )));
            }
            copy_private(params, PASSPHRASE_FILE)?;
        }
        RestoreRoot::Pkcs11 { params, .. } => {
            if !params.is_file() {
                return Err(Error::RootKey(format!(
                    "no wrapped root key at {} (written next to the backup as <backup>.pkcs11; the store's \
                     root.pkcs11 serves too: the root key never changes)",
                    params.display()
                )));
            }
            copy_private(params, PKCS11_FILE)?;
        }
    }
    fs::copy(backup, staging.join(DB_FILE)).map_err(|e| Error::Storage(e.to_string()))?;
    // Opening unseals every version: a wrong root key, passphrase or token key, or a damaged
    // backup, fails here. Closing checkpoints the staged database into its one file.
    drop(KeyStore::open_existing_with(staging, source)?);
    Ok(())
}

/// Moves the current database (with its WAL) and root files aside into `staging/replaced`, then
/// the staged ones into place; on any failure puts everything back as it was.
fn install(dir: &Path, staging: &Path, root: &RestoreRoot) -> Result<()> {
    let root_file = root.installed().map(RootForm::file_name);
    // A new root file replaces the old store's root files of every form.
    let replaced_roots: Vec<&str> =
        if root_file.is_some() { RootForm::ALL.iter().map(|f| f.file_name()).collect() } else { Vec::new() };
    let aside = staging.join("replaced");
    fs::create_dir(&aside).map_err(|e| Error::Storage(e.to_string()))?;
    let mut moved: Vec<&str> = Vec::new();
    let mut installed: Vec<&str> = Vec::new();
    let io = |e: std::io::Error| Error::Storage(e.to_string());
    let result = (|| -> Result<()> {
        for name in [DB_FILE, "keystore.db-wal", "keystore.db-shm"].into_iter().chain(replaced_roots) {
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

    /// The material records of keys with imported material (several per key since on-demand
    /// rotation of imported material) travel with the backup.
    #[test]
    fn imported_material_records_survive_backup_and_restore() {
        use crate::model::{ImportOptions, ImportType};
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let ks = KeyStore::open(&src).unwrap();
        let k = ks.create_external_key("byok", &[], None).unwrap();
        let r = KeyRef::parse(&k.key_id).unwrap();
        ks.import_material(&r, &[1u8; 32], None, 1).unwrap();
        let old = ks.encrypt(&r, b"first material", &EncryptionContext::new()).unwrap();
        let new = ImportOptions {
            import_type: Some(ImportType::New),
            description: Some("second".into()),
            ..ImportOptions::default()
        };
        ks.import_material_with(&r, &[2u8; 32], &new, 2).unwrap();
        ks.rotate_imported(&r, 3).unwrap();
        ks.import_material_with(&r, &[3u8; 32], &ImportOptions { valid_to: Some(99), ..new }, 4).unwrap();
        let bak = d.path().join("backup.db");
        backup_dir(ks.dir(), &bak).unwrap();
        let restored = restore(&d.path().join("dst"), &bak, Some(&src.join(ROOT_KEY_FILE)), false).unwrap();
        assert_eq!(*restored.attributes(&r).unwrap(), *ks.attributes(&r).unwrap());
        assert_eq!(restored.attributes(&r).unwrap().materials.len(), 3);
        assert_eq!(restored.describe(&r).unwrap(), ks.describe(&r).unwrap());
        assert_eq!(&restored.decrypt(&old.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"first material");
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
    fn a_token_sealed_store_restores_with_its_wrapped_root_key_and_the_token_key() {
        use crate::root::FakeToken;
        const URI: &str = "pkcs11:token=kms;object=root";
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let ks = KeyStore::open_with(&src, &FakeToken::source(URI, 7)).unwrap();
        ks.create_key(Some("t"), "").unwrap();
        let ct = ks.encrypt(&KeyRef::parse("t").unwrap(), b"sealed by the token", &EncryptionContext::new()).unwrap();
        let bak = d.path().join("backup.db");
        assert_eq!(backup_dir(ks.dir(), &bak).unwrap(), 1);
        drop(ks);
        let params = pkcs11_params_of(&bak);
        assert_eq!(fs::read(&params).unwrap(), fs::read(src.join(PKCS11_FILE)).unwrap());
        assert_eq!(fs::metadata(&params).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(saved_root_forms(&bak), vec![RootForm::Pkcs11]);
        assert!(!passphrase_params_of(&bak).exists());
        assert!(backup_dir(&src, &bak).is_err(), "never overwrites");

        let dst = d.path().join("dst");
        let with = |uri: &str, seed: u8, params: &Path| RestoreRoot::Pkcs11 {
            wrapper: Arc::new(FakeToken::new(uri, seed)),
            params: params.to_path_buf(),
        };
        // Another token key under the same name does not unwrap it; a key of another name is
        // refused by name; without the wrapped root key nothing opens. Nothing is left behind.
        let e = restore_with(&dst, &bak, with(URI, 8, &params), false).unwrap_err().to_string();
        assert!(e.contains("does not unwrap"), "{e}");
        let e =
            restore_with(&dst, &bak, with("pkcs11:token=kms;object=other", 7, &params), false).unwrap_err().to_string();
        assert!(e.contains("not by pkcs11:token=kms;object=other"), "{e}");
        let e = restore_with(&dst, &bak, with(URI, 7, &d.path().join("nope")), false).unwrap_err().to_string();
        assert!(e.contains("no wrapped root key"), "{e}");
        // A root key file (of another store) or the default does not open it either.
        assert!(matches!(restore(&dst, &bak, None, false), Err(Error::RootKey(_))));
        drop(KeyStore::open(&d.path().join("other")).unwrap());
        let e = restore(&dst, &bak, Some(&d.path().join("other").join(ROOT_KEY_FILE)), false).unwrap_err().to_string();
        assert!(e.contains("does not open with this root key"), "{e}");
        assert!(!dst.join(DB_FILE).exists());
        assert!(RootForm::present(&dst).is_empty(), "{:?}", RootForm::present(&dst));

        // The right token key restores: the store opens under it alone, and still decrypts.
        let restored = restore_with(&dst, &bak, with(URI, 7, &params), false).unwrap();
        assert_eq!(
            &restored.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..],
            b"sealed by the token"
        );
        drop(restored);
        assert_eq!(RootForm::present(&dst), vec![RootForm::Pkcs11]);
        let reopened = KeyStore::open_existing_with(&dst, &FakeToken::source(URI, 7)).unwrap();
        assert_eq!(
            &reopened.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..],
            b"sealed by the token"
        );
    }

    #[test]
    fn a_backup_taken_during_an_interrupted_reseal_restores_under_either_root() {
        use crate::root::FakeToken;
        const URI: &str = "pkcs11:token=kms;object=root";
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let token = FakeToken::source(URI, 7);
        let ks = KeyStore::open_with(&src, &token).unwrap();
        ks.create_key(Some("t"), "").unwrap();
        let ct = ks.encrypt(&KeyRef::parse("t").unwrap(), b"mid-reseal", &EncryptionContext::new()).unwrap();
        drop(ks);
        // A reseal to a passphrase stopped after the new form was written: both forms present.
        let pass = RootSource::Passphrase(zeroize::Zeroizing::new("correct horse battery".into()));
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::reseal::reseal_with_hook(&src, &token, &pass, &mut |_| panic!("crash"))
        }));
        assert!(stopped.is_err());
        assert_eq!(RootForm::present(&src), vec![RootForm::Passphrase, RootForm::Pkcs11]);
        let bak = d.path().join("backup.db");
        backup_dir(&src, &bak).unwrap();
        assert_eq!(saved_root_forms(&bak), vec![RootForm::Passphrase, RootForm::Pkcs11]);
        // Each saved form restores, under its own root.
        let by_token = restore_with(
            &d.path().join("a"),
            &bak,
            RestoreRoot::Pkcs11 { wrapper: Arc::new(FakeToken::new(URI, 7)), params: pkcs11_params_of(&bak) },
            false,
        )
        .unwrap();
        assert_eq!(&by_token.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"mid-reseal");
        let by_passphrase = restore_with(
            &d.path().join("b"),
            &bak,
            RestoreRoot::Passphrase {
                passphrase: zeroize::Zeroizing::new("correct horse battery".into()),
                params: passphrase_params_of(&bak),
            },
            false,
        )
        .unwrap();
        assert_eq!(&by_passphrase.decrypt(&ct.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"mid-reseal");
        assert_eq!(RootForm::present(&d.path().join("b")), vec![RootForm::Passphrase]);
    }

    #[test]
    fn a_forced_restore_replaces_the_old_stores_root_files_of_every_form() {
        use crate::root::FakeToken;
        const URI: &str = "pkcs11:token=kms;object=root";
        let d = tempfile::tempdir().unwrap();
        // The backup: a token-sealed store.
        let src = d.path().join("src");
        let ks = KeyStore::open_with(&src, &FakeToken::source(URI, 7)).unwrap();
        ks.create_key(Some("t"), "").unwrap();
        let bak = d.path().join("backup.db");
        backup_dir(ks.dir(), &bak).unwrap();
        drop(ks);
        // The live store: a root.key file.
        let live = d.path().join("live");
        let ks = KeyStore::open(&live).unwrap();
        ks.create_key(Some("live"), "").unwrap();
        drop(ks);
        let with = || RestoreRoot::Pkcs11 { wrapper: Arc::new(FakeToken::new(URI, 7)), params: pkcs11_params_of(&bak) };
        // Forced, the live store and its root.key are replaced by the backup and its root.pkcs11.
        let restored = restore_with(&live, &bak, with(), true).unwrap();
        assert!(restored.describe(&KeyRef::parse("t").unwrap()).is_ok());
        drop(restored);
        assert_eq!(RootForm::present(&live), vec![RootForm::Pkcs11]);
        // A directory with a root key file of another form and no store is refused.
        let stray = d.path().join("stray");
        drop(KeyStore::open(&stray).unwrap());
        fs::remove_file(stray.join(DB_FILE)).unwrap();
        let e = restore_with(&stray, &bak, with(), false).unwrap_err().to_string();
        assert!(e.contains("holds root.key but no key store"), "{e}");
        assert_eq!(RootForm::present(&stray), vec![RootForm::File]);
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
