//! The root key: seals every key version's material at rest.
//!
//! The data directory holds the root key in exactly one of three forms (plus, only after an
//! interrupted [`crate::reseal`], a second form that unwraps to the same key):
//!
//! * `root.key` ([`crate::store::ROOT_KEY_FILE`]): the 32 bytes themselves (mode 0600);
//! * `root.passphrase` ([`PASSPHRASE_FILE`]): a PBKDF2 salt and either a verifier (the key *is*
//!   the derived key, stores created with a passphrase) or the key sealed under the derived key
//!   (stores resealed to a passphrase);
//! * `root.pkcs11` ([`PKCS11_FILE`]): JSON naming a key inside a PKCS#11 token by its RFC 7512
//!   URI, with the root key AES-GCM-wrapped by it; only the token unwraps it ([`RootWrapper`]).
//!
//! The root key itself never changes: moving between forms rewrites one small file, never the
//! database.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::{AeadKey, KEY_LEN, random_key};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ENVROOT1";
const PASS_MAGIC: &[u8; 8] = b"ENVPASS1";
const PASS_WRAP_MAGIC: &[u8; 8] = b"ENVPASS2";
const PASS_WRAP_AAD: &[u8] = b"envelope-root-passphrase-wrap-v2";
/// File that holds the root key wrapped by a key inside a PKCS#11 token.
pub const PKCS11_FILE: &str = "root.pkcs11";
/// Additional data of the root key's AES-GCM wrap inside the token.
pub const PKCS11_WRAP_AAD: &[u8] = b"envelope-root-key-pkcs11-v1";
/// Length of the GCM IV of the token's wrap.
pub const WRAP_IV_LEN: usize = 12;
const PKCS11_FORMAT: &str = "envelope-root-pkcs11-v1";
/// PBKDF2-HMAC-SHA256 iterations for passphrase-derived root keys.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// File that holds the salt and a verifier of a passphrase-derived root key.
pub const PASSPHRASE_FILE: &str = "root.passphrase";
const VERIFIER_AAD: &[u8] = b"envelope-root-passphrase-verifier-v1";

/// The unsealed root key.
pub struct RootKey(AeadKey, Zeroizing<[u8; KEY_LEN]>);

/// A key held elsewhere (a PKCS#11 token) that wraps and unwraps the root key with AES-GCM, so
/// that the data directory holds no usable root key. Implemented outside this crate (the
/// keystore does not link a PKCS#11 library).
pub trait RootWrapper: Send + Sync {
    /// The wrapping key's name, stored beside the wrapped key: the path part of its RFC 7512
    /// URI (`pkcs11:token=…;object=…;id=…`). Holds no secret (no PIN).
    fn key_uri(&self) -> String;
    /// Encrypts `root` with AES-GCM under the wrapping key and `aad`; returns the IV and the
    /// ciphertext followed by its 16-byte tag.
    fn wrap(&self, aad: &[u8], root: &[u8]) -> Result<([u8; WRAP_IV_LEN], Vec<u8>)>;
    /// Decrypts what [`RootWrapper::wrap`] returned. A tampered file or another key fails.
    fn unwrap(&self, aad: &[u8], iv: &[u8; WRAP_IV_LEN], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
}

/// The forms a root key takes in a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootForm {
    /// `root.key`.
    File,
    /// `root.passphrase`.
    Passphrase,
    /// `root.pkcs11`.
    Pkcs11,
}

impl RootForm {
    /// Every form, in the order they are reported.
    pub const ALL: [RootForm; 3] = [RootForm::File, RootForm::Passphrase, RootForm::Pkcs11];

    /// The form's file name inside the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            RootForm::File => crate::store::ROOT_KEY_FILE,
            RootForm::Passphrase => PASSPHRASE_FILE,
            RootForm::Pkcs11 => PKCS11_FILE,
        }
    }

    /// The forms present in `dir`.
    pub fn present(dir: &Path) -> Vec<RootForm> {
        Self::ALL.into_iter().filter(|f| dir.join(f.file_name()).exists()).collect()
    }

    /// What an operator must give to open a store of this form.
    pub fn needs(self) -> &'static str {
        match self {
            RootForm::File => "a root key file (root.key); open it without --root-key or a passphrase",
            RootForm::Passphrase => {
                "a passphrase-derived root key: give the passphrase (--root-key passphrase-file:PATH; \
                 kms serve: --root-passphrase-file)"
            }
            RootForm::Pkcs11 => "a root key wrapped by a PKCS#11 token key: give --root-key pkcs11:…",
        }
    }
}

/// The JSON content of [`PKCS11_FILE`].
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pkcs11File {
    format: String,
    key: String,
    iv: String,
    wrapped: String,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(..)")
    }
}

impl RootKey {
    /// Loads the root key file at `path`, or creates it (mode 0600, fsynced, with its directory)
    /// if it does not exist. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match fs::File::open(path) {
            Ok(mut f) => {
                let mode = f.metadata().map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(Error::RootKey(format!(
                        "{} is accessible by group or others (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
                let mut buf = Zeroizing::new(Vec::new());
                f.read_to_end(&mut buf).map_err(io)?;
                Ok((Self::from_file_bytes(&buf)?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Written to a private temporary file, fsynced, then linked into place: a crash
                // never leaves a partial root key, and of two processes starting at once one
                // wins the link and the other loads the winner's key.
                let material = random_key()?;
                let mut nonce = [0u8; 8];
                crate::crypto::fill_random(&mut nonce)?;
                let tmp = path.with_extension(format!("tmp.{}", hex::encode(nonce)));
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
                let mut contents = Zeroizing::new(Vec::with_capacity(MAGIC.len() + KEY_LEN));
                contents.extend_from_slice(MAGIC);
                contents.extend_from_slice(&material[..]);
                let written = f.write_all(&contents).and_then(|()| f.sync_all());
                let linked = written.and_then(|()| fs::hard_link(&tmp, path));
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        if let Some(dir) = path.parent() {
                            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                        }
                        Ok((Self::from_bytes(&material[..])?, true))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Derives the root key from an operator passphrase (PBKDF2-HMAC-SHA256, 600,000
    /// iterations, 16-byte random salt). The salt and a verifier — an AES-GCM seal of nothing
    /// under the derived key — live in `path` (created 0600 on first use), so a wrong passphrase
    /// is reported as such instead of as undecryptable material. No key is stored on disk.
    pub fn from_passphrase(path: &Path, passphrase: &[u8]) -> Result<(Self, bool)> {
        check_passphrase(passphrase)?;
        match fs::read(path) {
            Ok(buf) => {
                let magic_len = PASS_MAGIC.len();
                if buf.len() < magic_len + 16
                    || (&buf[..magic_len] != PASS_MAGIC && &buf[..magic_len] != PASS_WRAP_MAGIC)
                {
                    return Err(Error::RootKey(format!("{} is malformed", path.display())));
                }
                let salt = &buf[magic_len..magic_len + 16];
                let derived = derive_passphrase(passphrase, salt)?;
                let kek = AeadKey::new(&derived[..])?;
                let wrong = |_| Error::RootKey("wrong root key passphrase".into());
                if &buf[..magic_len] == PASS_MAGIC {
                    // Created with the passphrase: the derived key is the root key.
                    kek.open(VERIFIER_AAD, &buf[magic_len + 16..]).map_err(wrong)?;
                    Ok((Self::from_bytes(&derived[..])?, false))
                } else {
                    // Resealed to the passphrase: the root key is sealed under the derived key.
                    let root = kek.open(PASS_WRAP_AAD, &buf[magic_len + 16..]).map_err(wrong)?;
                    Ok((Self::from_bytes(&root)?, false))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = [0u8; 16];
                crate::crypto::fill_random(&mut salt)?;
                let derived = derive_passphrase(passphrase, &salt)?;
                let key = AeadKey::new(&derived[..])?;
                let mut contents = Vec::new();
                contents.extend_from_slice(PASS_MAGIC);
                contents.extend_from_slice(&salt);
                key.seal_into(VERIFIER_AAD, b"", &mut contents)?;
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                f.write_all(&contents).and_then(|()| f.sync_all()).map_err(io)?;
                Ok((Self::from_bytes(&derived[..])?, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Loads the root key wrapped in the token (`path`: [`PKCS11_FILE`]), or creates a fresh
    /// one wrapped by `wrapper` (written 0600 to a temporary file, fsynced, linked into place).
    /// The file must name the same token key as `wrapper`.
    pub fn from_pkcs11(path: &Path, wrapper: &dyn RootWrapper) -> Result<(Self, bool)> {
        match fs::read(path) {
            Ok(buf) => Ok((Self::unwrap_pkcs11(path, &buf, wrapper)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let material = random_key()?;
                let contents = pkcs11_file_contents(&material[..], wrapper)?;
                match write_new(path, &contents, false) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::from_pkcs11(path, wrapper),
                    Err(e) => return Err(io(e)),
                }
                Ok((Self::from_bytes(&material[..])?, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn unwrap_pkcs11(path: &Path, buf: &[u8], wrapper: &dyn RootWrapper) -> Result<Self> {
        let malformed = || Error::RootKey(format!("{} is malformed", path.display()));
        let f: Pkcs11File = serde_json::from_slice(buf).map_err(|_| malformed())?;
        if f.format != PKCS11_FORMAT {
            return Err(malformed());
        }
        let configured = wrapper.key_uri();
        if f.key != configured {
            return Err(Error::RootKey(format!(
                "{} holds a root key wrapped by {}, not by {configured}",
                path.display(),
                f.key
            )));
        }
        let iv: [u8; WRAP_IV_LEN] = hex::decode(&f.iv).ok().and_then(|v| v.try_into().ok()).ok_or_else(malformed)?;
        let wrapped = hex::decode(&f.wrapped).map_err(|_| malformed())?;
        let root = wrapper.unwrap(PKCS11_WRAP_AAD, &iv, &wrapped)?;
        if root.len() != KEY_LEN {
            return Err(Error::RootKey(format!("{} unwraps to {} bytes, not a root key", path.display(), root.len())));
        }
        Self::from_bytes(&root)
    }

    /// The contents of the file of `form` holding this root key (`passphrase` for
    /// [`RootForm::Passphrase`], `wrapper` for [`RootForm::Pkcs11`]).
    pub(crate) fn encode_form(
        &self,
        form: RootForm,
        passphrase: Option<&[u8]>,
        wrapper: Option<&dyn RootWrapper>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        match form {
            RootForm::File => {
                let mut v = Zeroizing::new(Vec::with_capacity(MAGIC.len() + KEY_LEN));
                v.extend_from_slice(MAGIC);
                v.extend_from_slice(&self.1[..]);
                Ok(v)
            }
            RootForm::Passphrase => {
                let passphrase = passphrase.ok_or_else(|| Error::RootKey("no passphrase given".into()))?;
                check_passphrase(passphrase)?;
                let mut salt = [0u8; 16];
                crate::crypto::fill_random(&mut salt)?;
                let kek = AeadKey::new(&derive_passphrase(passphrase, &salt)?[..])?;
                let mut v = Zeroizing::new(Vec::new());
                v.extend_from_slice(PASS_WRAP_MAGIC);
                v.extend_from_slice(&salt);
                kek.seal_into(PASS_WRAP_AAD, &self.1[..], &mut v)?;
                Ok(v)
            }
            RootForm::Pkcs11 => {
                let wrapper = wrapper.ok_or_else(|| Error::RootKey("no token key given".into()))?;
                Ok(Zeroizing::new(pkcs11_file_contents(&self.1[..], wrapper)?))
            }
        }
    }

    /// Whether `other` is the same root key (compared in constant time).
    pub fn same_as(&self, other: &RootKey) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.1[..], &other.1[..]).is_ok()
    }

    fn from_file_bytes(buf: &[u8]) -> Result<Self> {
        if buf.len() != MAGIC.len() + KEY_LEN || &buf[..MAGIC.len()] != MAGIC {
            return Err(Error::RootKey("root key file is malformed".into()));
        }
        Self::from_bytes(&buf[MAGIC.len()..])
    }

    fn from_bytes(material: &[u8]) -> Result<Self> {
        if material.len() != KEY_LEN {
            return Err(Error::RootKey("a root key is 32 bytes".into()));
        }
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(material);
        Ok(Self(AeadKey::new(&raw[..])?, raw))
    }

    /// Seals `material` with `aad` as additional data.
    pub fn seal(&self, aad: &[u8], material: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.0.seal_into(aad, material, &mut out)?;
        Ok(out)
    }

    /// Opens material sealed by [`RootKey::seal`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.0
            .open(aad, sealed)
            .map_err(|_| Error::RootKey("sealed key material does not open with this root key".into()))
    }
}

fn io(e: std::io::Error) -> Error {
    Error::RootKey(e.to_string())
}

fn check_passphrase(passphrase: &[u8]) -> Result<()> {
    if passphrase.len() < 12 {
        return Err(Error::RootKey("the root key passphrase must be at least 12 bytes".into()));
    }
    Ok(())
}

fn derive_passphrase(passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    let iterations = std::num::NonZeroU32::new(PBKDF2_ITERATIONS).ok_or(Error::Crypto)?;
    aws_lc_rs::pbkdf2::derive(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, passphrase, &mut k[..]);
    Ok(k)
}

fn pkcs11_file_contents(root: &[u8], wrapper: &dyn RootWrapper) -> Result<Vec<u8>> {
    let (iv, wrapped) = wrapper.wrap(PKCS11_WRAP_AAD, root)?;
    let f = Pkcs11File {
        format: PKCS11_FORMAT.into(),
        key: wrapper.key_uri(),
        iv: hex::encode(iv),
        wrapped: hex::encode(wrapped),
    };
    let mut v = serde_json::to_vec_pretty(&f).map_err(|e| Error::RootKey(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

/// Writes `contents` to `path` (mode 0600) through a temporary file in the same directory:
/// fsynced, then renamed over `path` (`replace`) or linked to it (refused if it exists), then
/// the directory fsynced. A crash leaves the old file or the new one, never a partial one.
pub(crate) fn write_new(path: &Path, contents: &[u8], replace: bool) -> std::io::Result<()> {
    let mut nonce = [0u8; 8];
    crate::crypto::fill_random(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp.{}", hex::encode(nonce)));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    let placed = written.and_then(|()| if replace { fs::rename(&tmp, path) } else { fs::hard_link(&tmp, path) });
    let _ = fs::remove_file(&tmp);
    placed?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

/// A token key stand-in for tests: AES-256-GCM with a key held in memory.
#[cfg(test)]
pub(crate) struct FakeToken {
    uri: String,
    key: AeadKey,
}

#[cfg(test)]
impl FakeToken {
    /// A [`crate::RootSource::Pkcs11`] whose token key is named `uri` and made of `seed` bytes.
    pub(crate) fn source(uri: &str, seed: u8) -> crate::RootSource {
        crate::RootSource::Pkcs11(std::sync::Arc::new(Self::new(uri, seed)))
    }

    /// The stand-in itself.
    pub(crate) fn new(uri: &str, seed: u8) -> Self {
        FakeToken { uri: uri.into(), key: AeadKey::new(&[seed; 32]).expect("a 32-byte key") }
    }
}

#[cfg(test)]
impl RootWrapper for FakeToken {
    fn key_uri(&self) -> String {
        self.uri.clone()
    }

    fn wrap(&self, aad: &[u8], root: &[u8]) -> Result<([u8; WRAP_IV_LEN], Vec<u8>)> {
        let mut out = Vec::new();
        self.key.seal_into(aad, root, &mut out)?;
        let mut iv = [0u8; WRAP_IV_LEN];
        iv.copy_from_slice(&out[..WRAP_IV_LEN]);
        Ok((iv, out[WRAP_IV_LEN..].to_vec()))
    }

    fn unwrap(&self, aad: &[u8], iv: &[u8; WRAP_IV_LEN], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut joined = iv.to_vec();
        joined.extend_from_slice(wrapped);
        self.key.open(aad, &joined).map_err(|_| Error::RootKey("the token key does not unwrap it".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        let (k1, created) = RootKey::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = k1.seal(b"x", b"material").unwrap();
        let (k2, created) = RootKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(&k2.open(b"x", &sealed).unwrap()[..], b"material");
    }

    #[test]
    fn passphrase_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(PASSPHRASE_FILE);
        assert!(RootKey::from_passphrase(&p, b"short").is_err());
        let (k1, created) = RootKey::from_passphrase(&p, b"correct horse battery staple").unwrap();
        assert!(created);
        let sealed = k1.seal(b"x", b"material").unwrap();
        let (k2, created) = RootKey::from_passphrase(&p, b"correct horse battery staple").unwrap();
        assert!(!created);
        assert_eq!(&k2.open(b"x", &sealed).unwrap()[..], b"material");
        let e = RootKey::from_passphrase(&p, b"wrong horse battery staple").unwrap_err().to_string();
        assert!(e.contains("wrong root key passphrase"), "{e}");
        let text = fs::read(&p).unwrap();
        assert!(!text.windows(5).any(|w| w == b"horse"), "the passphrase is not stored");
    }

    #[test]
    fn refuses_loose_permissions_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        fs::write(&p, b"garbage").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(RootKey::load_or_create(&p), Err(Error::RootKey(_))));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = RootKey::load_or_create(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
