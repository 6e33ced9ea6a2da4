//! The credentials file: the access keys `envelope kms serve` accepts, a YAML list of
//! `{access_key_id, secret_access_key, principal, session_token?, policy?, expires?}`, and its
//! edits (`envelope kms credentials add|list|rotate|remove`).
//!
//! Edits read, change and rewrite the whole file: a new file beside it (mode 0600), synced, then
//! renamed over it, so a running server (which re-reads the file when it changes, see
//! [`Watcher`]) and a crash see either the old list or the new one, never a mix. Concurrent
//! edits are serialized by an advisory lock on `<file>.lock`.
//!
//! `expires` (RFC 3339) ends an access key without an edit: from that instant its requests are
//! refused with `ExpiredTokenException` (checked per request, so no reload is needed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::Server;
use crate::auth::{Credential, CredentialStore};
use crate::error::{KmsError, Result};
use crate::policy;

/// One access key as the file lists it.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The access key id (`AKIA...`).
    pub access_key_id: String,
    /// Read straight into zeroizing memory (zeroize's `serde` feature).
    pub secret_access_key: Zeroizing<String>,
    /// A session token every request must carry, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Zeroizing<String>>,
    /// The principal this key authenticates (`arn:aws:iam::ACCOUNT:user/NAME`).
    pub principal: String,
    /// The identity policy: a YAML mapping or a JSON document in a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// When the key stops being accepted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// The identity policy as JSON text, if any.
    pub fn policy_text(&self) -> Option<String> {
        self.policy.as_ref().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// `expires` as a time; an error names the key and the value.
    pub fn expiry(&self) -> Result<Option<SystemTime>> {
        let Some(text) = &self.expires else { return Ok(None) };
        crate::dates::parse_rfc3339(text)
            .and_then(|s| u64::try_from(s).ok())
            .map(|s| Some(UNIX_EPOCH + Duration::from_secs(s)))
            .ok_or_else(|| {
                KmsError::Config(format!(
                    "expires of access key {} is not an RFC 3339 time (2026-12-31T23:59:59Z): {text:?}",
                    self.access_key_id
                ))
            })
    }

    /// Whether the key is past its expiry at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        matches!(self.expiry(), Ok(Some(t)) if now >= t)
    }

    fn credential(&self) -> Result<Credential> {
        let policy = match self.policy_text() {
            None => None,
            Some(text) => Some(
                policy::parse_identity(&text)
                    .map_err(|m| KmsError::Config(format!("policy of access key {}: {m}", self.access_key_id)))?,
            ),
        };
        let mut c = Credential::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            self.principal.clone(),
        )
        .expiring(self.expiry()?);
        if let Some(p) = policy {
            c = c.with_policy(p);
        }
        Ok(c)
    }
}

/// The parsed file, in its order.
#[derive(Debug, Default)]
pub struct CredentialsFile {
    /// The access keys.
    pub entries: Vec<Entry>,
}

impl CredentialsFile {
    /// Parses the file's text (every entry validated as the server would).
    pub fn parse(text: &str) -> Result<Self> {
        let entries: Vec<Entry> = serde_norway::from_str(text)
            .map_err(|e| KmsError::Config(format!("credentials file: {}", without_values(&e))))?;
        let file = Self { entries };
        file.store()?;
        Ok(file)
    }

    /// Reads and parses a credentials file. A file that its group or others may read is
    /// refused: its secrets sign requests.
    pub fn load(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).map_err(|e| KmsError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KmsError::Config(format!(
                "credentials file {} is accessible by group or others (mode {mode:o}); chmod 600 it",
                path.display()
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| KmsError::Config(format!("cannot read {}: {e}", path.display())))?,
        );
        Self::parse(&text)
    }

    /// The table the server checks requests against.
    pub fn store(&self) -> Result<CredentialStore> {
        CredentialStore::new(self.entries.iter().map(Entry::credential).collect::<Result<Vec<_>>>()?)
    }

    /// The file's text: a header comment, then the list (policies as JSON strings).
    pub fn render(&self) -> Result<Zeroizing<String>> {
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|e| Entry {
                access_key_id: e.access_key_id.clone(),
                secret_access_key: e.secret_access_key.clone(),
                session_token: e.session_token.clone(),
                principal: e.principal.clone(),
                policy: e.policy_text().map(serde_json::Value::String),
                expires: e.expires.clone(),
            })
            .collect();
        let list = Zeroizing::new(
            serde_norway::to_string(&entries).map_err(|e| KmsError::Internal(format!("credentials file: {e}")))?,
        );
        Ok(Zeroizing::new(format!(
            "# Credentials of `envelope kms serve`. Keep this file secret (mode 0600).\n\
             # Edit with `envelope kms credentials add|rotate|remove`; a running server reloads it.\n{}",
            list.as_str()
        )))
    }

    /// Adds a new access key for `principal` and returns its id and secret (shown once).
    pub fn add(
        &mut self,
        principal: &str,
        policy: Option<String>,
        expires: Option<SystemTime>,
    ) -> Result<(String, Zeroizing<String>)> {
        let (akid, secret) = generate_access_key()?;
        self.entries.push(Entry {
            access_key_id: akid.clone(),
            secret_access_key: secret.clone(),
            session_token: None,
            principal: principal.to_string(),
            policy: policy.map(serde_json::Value::String),
            expires: expires.map(crate::dates::rfc3339_seconds),
        });
        if let Err(e) = self.store() {
            self.entries.pop();
            return Err(e);
        }
        Ok((akid, secret))
    }

    /// Removes an access key. The last one stays: a server needs at least one.
    pub fn remove(&mut self, access_key_id: &str) -> Result<()> {
        let i = self.position(access_key_id)?;
        if self.entries.len() == 1 {
            return Err(KmsError::Config(format!(
                "{access_key_id} is the only access key; add another before removing it"
            )));
        }
        self.entries.remove(i);
        Ok(())
    }

    /// Replaces an access key by a new one for the same principal and policy; the old key is
    /// removed, or with a `grace` period kept until then (an earlier expiry stays).
    pub fn rotate(
        &mut self,
        access_key_id: &str,
        grace: Duration,
        now: SystemTime,
    ) -> Result<(String, Zeroizing<String>)> {
        let i = self.position(access_key_id)?;
        let old = &self.entries[i];
        let (principal, policy, expires) = (old.principal.clone(), old.policy_text(), old.expiry()?);
        let (akid, secret) = self.add(&principal, policy, expires)?;
        if grace.is_zero() {
            self.entries.remove(i);
        } else {
            let until = now + grace;
            let old = &mut self.entries[i];
            if expires.is_none_or(|t| t > until) {
                old.expires = Some(crate::dates::rfc3339_seconds(until));
            }
        }
        Ok((akid, secret))
    }

    fn position(&self, access_key_id: &str) -> Result<usize> {
        self.entries
            .iter()
            .position(|e| e.access_key_id == access_key_id)
            .ok_or_else(|| KmsError::Config(format!("no access key {access_key_id} in the credentials file")))
    }

    /// Writes the file atomically: `<file>.tmp` (0600, synced), renamed over `path`, the
    /// directory synced.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |what: &str, e: std::io::Error| KmsError::Config(format!("{what} {}: {e}", path.display()));
        let text = self.render()?;
        let tmp = sibling(path, ".tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create a new file beside", e))?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| io("cannot write beside", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync the directory of", e))?;
        }
        Ok(())
    }

    /// Runs `edit` on the file at `path` under the edit lock and saves the result; nothing is
    /// written when `edit` fails.
    pub fn edit<T>(path: &Path, edit: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(sibling(path, ".lock"))
            .map_err(|e| KmsError::Config(format!("cannot open the lock file of {}: {e}", path.display())))?;
        lock.lock().map_err(|e| KmsError::Config(format!("cannot lock {}: {e}", path.display())))?;
        let mut file = Self::load(path)?;
        let out = edit(&mut file)?;
        file.save(path)?;
        Ok(out)
    }
}

/// The parser's message without the values an `invalid type`/`invalid value` message quotes (a
/// secret of the wrong type would be echoed); other messages (unknown or missing fields, with
/// positions) stay as they are.
fn without_values(e: &serde_norway::Error) -> String {
    let msg = e.to_string();
    if !(msg.contains("invalid type") || msg.contains("invalid value")) {
        return msg;
    }
    let mut out = String::with_capacity(msg.len());
    let mut quote = None;
    for c in msg.chars() {
        match (quote, c) {
            (None, '`' | '"') => {
                quote = Some(c);
                out.push('…');
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// A new access key: `AKIA` + 16 base32 characters, and a 40-character secret.
pub fn generate_access_key() -> Result<(String, Zeroizing<String>)> {
    const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = Zeroizing::new([0u8; 56]);
    envelope_keystore::crypto::fill_random(&mut raw[..]).map_err(|e| KmsError::Internal(format!("random: {e}")))?;
    let mut akid = String::from("AKIA");
    akid.extend(raw[..16].iter().map(|b| char::from(B32[usize::from(b % 32)])));
    let mut secret = Zeroizing::new(String::with_capacity(40));
    secret.extend(raw[16..].iter().map(|b| char::from(B64[usize::from(b % 64)])));
    Ok((akid, secret))
}

/// Reloads a server's credentials when their file changes (checked every `interval`: its
/// inode, size and modification time). A file that does not parse keeps the credentials in use
/// and is logged; the task stops when the watcher is dropped.
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Starts watching `path` for `server` (inside a Tokio runtime).
    pub fn start(server: Arc<Server>, path: PathBuf, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut seen = stamp(&path);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                reload(&server, &path, "credentials file changed");
            }
        });
        Self { task }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the credentials file again into `server`; on failure the current credentials stay.
/// `why` goes into the log line.
pub fn reload(server: &Server, path: &Path, why: &str) {
    match CredentialsFile::load(path).and_then(|f| f.store()) {
        Ok(c) => {
            let n = c.len();
            server.reload_credentials(c);
            tracing::info!(path = %path.display(), access_keys = n, "{why}: credentials reloaded");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "{why}: credentials not reloaded; the current ones stay in use")
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINCIPAL: &str = "arn:aws:iam::111122223333:user/ci";

    fn one() -> CredentialsFile {
        let mut f = CredentialsFile::default();
        f.add("arn:aws:iam::111122223333:user/admin", Some(policy::ADMIN_IDENTITY_POLICY.into()), None).unwrap();
        f
    }

    #[test]
    fn add_renders_and_parses_back() {
        let mut f = one();
        let t = UNIX_EPOCH + Duration::from_secs(1_796_159_960);
        let (akid, secret) = f.add(PRINCIPAL, None, Some(t)).unwrap();
        assert!(akid.starts_with("AKIA") && akid.len() == 20 && secret.len() == 40);
        let back = CredentialsFile::parse(&f.render().unwrap()).unwrap();
        assert_eq!(back.entries.len(), 2);
        let e = &back.entries[1];
        assert_eq!((e.access_key_id.as_str(), e.principal.as_str()), (akid.as_str(), PRINCIPAL));
        assert_eq!(e.secret_access_key.as_str(), secret.as_str());
        assert_eq!(e.expiry().unwrap(), Some(t));
        assert_eq!(back.entries[0].policy_text().as_deref(), Some(policy::ADMIN_IDENTITY_POLICY));
        let store = back.store().unwrap();
        assert_eq!(store.get(&akid).unwrap().expires, Some(t));
    }

    #[test]
    fn a_bad_entry_is_not_added() {
        let mut f = one();
        assert!(f.add("not-an-arn", None, None).is_err());
        assert!(f.add(PRINCIPAL, Some("{\"Statement\": 3}".into()), None).is_err());
        assert_eq!(f.entries.len(), 1);
    }

    #[test]
    fn remove_keeps_the_last_key() {
        let mut f = one();
        let first = f.entries[0].access_key_id.clone();
        assert!(f.remove(&first).is_err());
        let (second, _) = f.add(PRINCIPAL, None, None).unwrap();
        f.remove(&first).unwrap();
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].access_key_id, second);
        assert!(f.remove("AKIANOSUCHKEY0000000").is_err());
    }

    #[test]
    fn rotate_replaces_or_keeps_the_old_key_for_the_grace_period() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_159_960);
        let mut f = one();
        let old = f.entries[0].access_key_id.clone();
        let (new, _) = f.rotate(&old, Duration::ZERO, now).unwrap();
        assert_eq!(f.entries.len(), 1);
        assert_eq!(f.entries[0].access_key_id, new);
        assert_eq!(f.entries[0].policy_text().as_deref(), Some(policy::ADMIN_IDENTITY_POLICY));

        let (newer, _) = f.rotate(&new, Duration::from_secs(3600), now).unwrap();
        assert_eq!(f.entries.len(), 2);
        let kept = f.entries.iter().find(|e| e.access_key_id == new).unwrap();
        assert_eq!(kept.expiry().unwrap(), Some(now + Duration::from_secs(3600)));
        assert!(!kept.expired(now) && kept.expired(now + Duration::from_secs(3600)));
        let fresh = f.entries.iter().find(|e| e.access_key_id == newer).unwrap();
        assert_eq!(fresh.expires, None);
    }

    #[test]
    fn save_is_0600_and_edit_writes_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.yaml");
        one().save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let before = std::fs::read(&path).unwrap();
        let akid = CredentialsFile::load(&path).unwrap().entries[0].access_key_id.clone();
        assert!(CredentialsFile::edit(&path, |f| f.remove(&akid)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let (added, _) = CredentialsFile::edit(&path, |f| f.add(PRINCIPAL, None, None)).unwrap();
        let after = CredentialsFile::load(&path).unwrap();
        assert_eq!(after.entries.len(), 2);
        assert_eq!(after.entries[1].access_key_id, added);
        assert!(!dir.path().join("credentials.yaml.tmp").exists());
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed() {
        for text in [
            "- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: {s: 918273645546372819}\n  principal: arn:aws:iam::1:user/a\n",
            "918273645546372819",
            "- 918273645546372819",
            "'918273645546372819'",
        ] {
            let e = CredentialsFile::parse(text).unwrap_err().to_string();
            assert!(!e.contains("918273645546372819"), "{e}");
        }
        let e = CredentialsFile::parse("- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret: x\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `secret`"), "{e}");
    }

    #[test]
    fn a_bad_expiry_is_refused() {
        let text = "- access_key_id: AKIAIOSFODNN7EXAMPLE\n  secret_access_key: s3cr3t\n  principal: arn:aws:iam::1:user/a\n  expires: tomorrow\n";
        let e = CredentialsFile::parse(text).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}
