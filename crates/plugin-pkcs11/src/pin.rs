//! The token's user PIN: read from a file at each login (so a corrected file is picked up
//! without a restart), refused unless only its owner may read it, held in zeroizing memory,
//! never logged. A PIN the token refused is remembered (as a SHA-256 digest) and never presented
//! again, so a wrong PIN cannot be retried into a token lockout.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::types::AuthPin;
use envelope_plugin::PluginError;
use zeroize::Zeroizing;

/// Longest PIN accepted from a file.
pub const MAX_PIN_LEN: usize = 256;

/// Where the PIN comes from.
#[derive(Debug)]
pub struct PinSource {
    path: PathBuf,
    rejected: Mutex<Option<[u8; 32]>>,
}

impl PinSource {
    /// The PIN in the file at `path` (the whole file, less one trailing newline).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), rejected: Mutex::new(None) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and checks the PIN; refuses a PIN the token already refused. Returns the PIN and
    /// its digest (for [`PinSource::reject`]).
    pub fn read(&self) -> Result<(AuthPin, [u8; 32]), PluginError> {
        let pin = read_pin_file(&self.path)?;
        let digest = digest(&pin);
        if self.rejected.lock().map(|r| *r == Some(digest)).unwrap_or(false) {
            return Err(PluginError::PermissionDenied(format!(
                "the token refused the PIN in {}; not presented again (fix the file: the next login reads it)",
                self.path.display()
            )));
        }
        Ok((AuthPin::new(pin.as_str().into()), digest))
    }

    /// Records that the token refused the PIN with `digest`.
    pub fn reject(&self, digest: [u8; 32]) {
        if let Ok(mut r) = self.rejected.lock() {
            *r = Some(digest);
        }
    }
}

fn digest(pin: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pin.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads a PIN file: a regular file of mode 0600 or stricter (no group or other access),
/// 1–[`MAX_PIN_LEN`] bytes of UTF-8 after removing one trailing newline.
pub fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, PluginError> {
    let shown = path.display();
    let md =
        std::fs::metadata(path).map_err(|e| PluginError::InvalidRequest(format!("PIN file {shown}: {}", e.kind())))?;
    if !md.is_file() {
        return Err(PluginError::InvalidRequest(format!("PIN file {shown} is not a regular file")));
    }
    if md.mode() & 0o077 != 0 {
        return Err(PluginError::InvalidRequest(format!(
            "PIN file {shown} has mode {:04o}; group and others must have no access (chmod 600)",
            md.mode() & 0o7777
        )));
    }
    if md.len() > (MAX_PIN_LEN + 2) as u64 {
        return Err(PluginError::InvalidRequest(format!("PIN file {shown} is longer than {MAX_PIN_LEN} bytes")));
    }
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| PluginError::InvalidRequest(format!("PIN file {shown}: {}", e.kind())))?,
    );
    let mut s: &[u8] = &bytes;
    if let Some(rest) = s.strip_suffix(b"\n") {
        s = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if s.is_empty() || s.len() > MAX_PIN_LEN {
        return Err(PluginError::InvalidRequest(format!("PIN file {shown} holds no PIN of 1 to {MAX_PIN_LEN} bytes")));
    }
    let s =
        std::str::from_utf8(s).map_err(|_| PluginError::InvalidRequest(format!("PIN file {shown} is not UTF-8")))?;
    Ok(Zeroizing::new(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn pin_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(&*read_pin_file(&write(d.path(), "a", b"5678\n", 0o600)).unwrap(), "5678");
        assert_eq!(&*read_pin_file(&write(d.path(), "b", b"56 78\r\n", 0o400)).unwrap(), "56 78");
        assert_eq!(&*read_pin_file(&write(d.path(), "c", b"5678", 0o600)).unwrap(), "5678");
        let e = read_pin_file(&write(d.path(), "d", b"5678\n", 0o640)).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("5678"), "the PIN never appears in errors: {e}");
        assert!(read_pin_file(&write(d.path(), "e", b"\n", 0o600)).is_err());
        assert!(read_pin_file(&write(d.path(), "f", &[b'1'; MAX_PIN_LEN + 1], 0o600)).is_err());
        assert!(read_pin_file(&write(d.path(), "g", b"\xff\xfe", 0o600)).is_err());
        assert!(read_pin_file(&d.path().join("missing")).unwrap_err().to_string().contains("not found"));
        assert!(read_pin_file(d.path()).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn a_refused_pin_is_not_presented_again() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "pin", b"0000\n", 0o600);
        let src = PinSource::file(&p);
        let (_, digest) = src.read().unwrap();
        src.reject(digest);
        let e = src.read().unwrap_err();
        assert!(matches!(e, PluginError::PermissionDenied(_)), "{e:?}");
        // A corrected file is read at the next login.
        write(d.path(), "pin", b"5678\n", 0o600);
        assert!(src.read().is_ok());
    }
}
