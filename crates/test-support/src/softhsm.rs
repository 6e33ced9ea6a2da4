//! SoftHSM2 (Debian package softhsm2, installed by scripts/test) as the real PKCS#11 token of
//! the pkcs11 backend's tests.
//!
//! * In process: SoftHSM2 reads `SOFTHSM2_CONF` once, at `C_Initialize`, and a threaded test
//!   process cannot set it, so `.cargo/config.toml` gives every test process a path under
//!   `target/softhsm2/`; [`process_conf`] writes that file and its token directory (pruning
//!   token directories of runs older than a day). Each test then makes its own token, with a
//!   label of its own, through PKCS#11 itself (`C_InitToken`: a token made by another process
//!   after `C_Initialize` would not be seen).
//! * Child processes (the `envelope` binary): [`Isolated`] is a configuration and token
//!   directory of their own, tokens made with `softhsm2-util`, passed as `SOFTHSM2_CONF`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The SoftHSM2 module: `$ENVELOPE_SOFTHSM_MODULE`, else Debian's path.
pub fn module_path() -> PathBuf {
    let p = std::env::var_os("ENVELOPE_SOFTHSM_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(p.exists(), "SoftHSM2 module not found at {}: run scripts/test (it installs softhsm2)", p.display());
    p
}

fn conf_text(tokens: &Path) -> String {
    format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    )
}

/// The configuration SoftHSM2 reads in this test process (`SOFTHSM2_CONF`), written if missing,
/// with its token directory. Panics with the reason if `SOFTHSM2_CONF` is not set.
pub fn process_conf() -> PathBuf {
    let conf = std::env::var_os("SOFTHSM2_CONF").map(PathBuf::from).unwrap_or_else(|| {
        panic!("SOFTHSM2_CONF is not set: run the tests through cargo (.cargo/config.toml sets it) or set it")
    });
    let dir = conf.parent().expect("SOFTHSM2_CONF has a parent directory").to_path_buf();
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    if !conf.exists() {
        // Tests of one process may get here at the same moment: each writes a file of its own
        // and renames it into place (the same content; the last rename wins).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".softhsm2.conf.{}.{n}", std::process::id()));
        std::fs::write(&tmp, conf_text(&tokens)).unwrap();
        std::fs::rename(&tmp, &conf).unwrap();
    }
    prune(&tokens, Duration::from_secs(86_400));
    conf
}

fn prune(tokens: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(tokens) else { return };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|d| d > age);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The directory of the token with `serial` under `tokens` (SoftHSM2 names it after a UUID
/// whose last 16 hex digits are the serial).
pub fn token_dir(tokens: &Path, serial: &str) -> Option<PathBuf> {
    std::fs::read_dir(tokens)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.replace('-', "").ends_with(serial)))
}

/// Writes `pin` to `dir/name` with mode 0600; returns the path.
pub fn write_pin_file(dir: &Path, name: &str, pin: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{pin}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A SoftHSM2 configuration and token directory of their own, for child processes.
pub struct Isolated {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub tokens: PathBuf,
}

impl Isolated {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, conf_text(&tokens)).unwrap();
        Isolated { dir, conf, tokens }
    }

    /// Initialises a token with `softhsm2-util`; returns its serial.
    pub fn init_token(&self, label: &str, so_pin: &str, pin: &str) -> String {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin])
            .output()
            .expect("softhsm2-util (package softhsm2, installed by scripts/test)");
        assert!(out.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&out.stderr));
        let out =
            Command::new("softhsm2-util").env("SOFTHSM2_CONF", &self.conf).args(["--show-slots"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // Blocks of "Label: <label>" ... "Serial number: <serial>".
        let mut serial = None;
        let mut in_ours = false;
        for line in text.lines().map(str::trim) {
            if let Some(l) = line.strip_prefix("Label:") {
                in_ours = l.trim() == label;
            }
            if in_ours && let Some(s) = line.strip_prefix("Serial number:") {
                serial = Some(s.trim().to_string());
            }
        }
        serial.unwrap_or_else(|| panic!("token {label} not in softhsm2-util --show-slots:\n{text}"))
    }
}

impl Default for Isolated {
    fn default() -> Self {
        Self::new()
    }
}
