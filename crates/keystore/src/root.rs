//! The root key: seals every key version's material at rest.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::{AeadKey, KEY_LEN, random_key};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ENVROOT1";
const PASS_MAGIC: &[u8; 8] = b"ENVPASS1";
/// PBKDF2-HMAC-SHA256 iterations for passphrase-derived root keys.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// File that holds the salt and a verifier of a passphrase-derived root key.
pub const PASSPHRASE_FILE: &str = "root.passphrase";
const VERIFIER_AAD: &[u8] = b"envelope-root-passphrase-verifier-v1";

/// The unsealed root key.
pub struct RootKey(AeadKey);

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
                        Ok((Self(AeadKey::new(&material[..])?), true))
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
        if passphrase.len() < 12 {
            return Err(Error::RootKey("the root key passphrase must be at least 12 bytes".into()));
        }
        let derive = |salt: &[u8]| -> Result<AeadKey> {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            let iterations = std::num::NonZeroU32::new(PBKDF2_ITERATIONS).ok_or(Error::Crypto)?;
            aws_lc_rs::pbkdf2::derive(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, passphrase, &mut k[..]);
            AeadKey::new(&k[..])
        };
        match fs::read(path) {
            Ok(buf) => {
                if buf.len() < PASS_MAGIC.len() + 16 || &buf[..PASS_MAGIC.len()] != PASS_MAGIC {
                    return Err(Error::RootKey(format!("{} is malformed", path.display())));
                }
                let salt = &buf[PASS_MAGIC.len()..PASS_MAGIC.len() + 16];
                let key = derive(salt)?;
                key.open(VERIFIER_AAD, &buf[PASS_MAGIC.len() + 16..])
                    .map_err(|_| Error::RootKey("wrong root key passphrase".into()))?;
                Ok((Self(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut salt = [0u8; 16];
                crate::crypto::fill_random(&mut salt)?;
                let key = derive(&salt)?;
                let mut contents = Vec::new();
                contents.extend_from_slice(PASS_MAGIC);
                contents.extend_from_slice(&salt);
                key.seal_into(VERIFIER_AAD, b"", &mut contents)?;
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                f.write_all(&contents).and_then(|()| f.sync_all()).map_err(io)?;
                Ok((Self(key), true))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_file_bytes(buf: &[u8]) -> Result<Self> {
        if buf.len() != MAGIC.len() + KEY_LEN || &buf[..MAGIC.len()] != MAGIC {
            return Err(Error::RootKey("root key file is malformed".into()));
        }
        Ok(Self(AeadKey::new(&buf[MAGIC.len()..])?))
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
