//! The audit log's life cycle on disk: when the live file is rotated (size, age), what the
//! rotated copy is called (`<name>.<UTC time>`, e.g. `audit.log.20261201T101500Z`), its
//! compression to `.gz` off the writer's path, and retention (the newest N copies are kept).
//!
//! Rotated copies sort by name in time order, which is how [`crate::lookup`] reads them back.
//! A copy being compressed is written under a hidden temporary name and renamed when complete,
//! so a search never reads half a gzip stream; only then is the uncompressed copy removed.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// When to rotate the live file, and how many rotated copies to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file reaches this many bytes (`None`: never by size).
    pub max_bytes: Option<u64>,
    /// Rotate once the file has been written to for this long (`None`: never by age).
    pub max_age: Option<Duration>,
    /// Rotated copies kept; older ones are deleted (0: keep all).
    pub retain: usize,
    /// Compress rotated copies with gzip.
    pub compress: bool,
}

impl Default for Rotation {
    /// No rotation by the server (an external logrotate may still move the file and send SIGHUP).
    fn default() -> Self {
        Self { max_bytes: None, max_age: None, retain: 0, compress: true }
    }
}

impl Rotation {
    /// Whether a file of `len` bytes, written to since `since`, is due at `now`.
    pub fn due(&self, len: u64, since: Instant, now: Instant) -> bool {
        len > 0
            && (self.max_bytes.is_some_and(|m| len >= m)
                || self.max_age.is_some_and(|a| now.saturating_duration_since(since) >= a))
    }

    /// Whether this rotates at all.
    pub fn enabled(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

/// The name of a copy rotated at `at`: `<name>.<YYYYMMDDTHHMMSSZ>`, with `-NNN` added when
/// needed so that it sorts after every copy already there (several rotations in one second, a
/// clock set back): names are never reused, even after retention deleted the copy that had one,
/// so name order stays time order.
pub fn rotated_name(live: &Path, at: SystemTime) -> PathBuf {
    let t = time::OffsetDateTime::from(at);
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let latest = our_copies(live).into_iter().map(|(suffix, _)| suffix).max();
    // A clock set back does not make a copy sort before older ones.
    let stamp = match &latest {
        Some(l) if l.get(..16).is_some_and(|s| s > stamp.as_str()) => l[..16].to_string(),
        _ => stamp,
    };
    let base = live.as_os_str().to_string_lossy().into_owned();
    let mut n = 0u32;
    loop {
        let suffix = if n == 0 { stamp.clone() } else { format!("{stamp}-{n:03}") };
        if latest.as_deref().is_none_or(|l| suffix.as_str() > l) {
            return PathBuf::from(format!("{base}.{suffix}"));
        }
        n += 1;
    }
}

/// The rotated copies written by [`rotate`]: their suffix (without `.gz`) and path.
fn our_copies(live: &Path) -> Vec<(String, PathBuf)> {
    rotated_copies(live)
        .into_iter()
        .filter(|(suffix, _)| is_stamp(suffix))
        .map(|(suffix, path)| (suffix.trim_end_matches(".gz").to_string(), path))
        .collect()
}

/// Every regular file next to `live` named `<name>.<suffix>` — rotated copies, ours and
/// logrotate's — as (suffix, path), in no particular order.
pub fn rotated_copies(live: &Path) -> Vec<(String, PathBuf)> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!("{name}.");
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| {
                let e = e.ok()?;
                let file = e.file_name().into_string().ok()?;
                let suffix = file.strip_prefix(&prefix)?.to_string();
                e.file_type().ok()?.is_file().then(|| (suffix, e.path()))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Moves the live file to its rotated name and opens a new live file (mode 0600) at `live`.
/// Returns the new file and the rotated copy's path. On failure nothing has moved, or the old
/// file is moved and `live` could not be created (the caller keeps writing the old handle).
pub fn rotate(live: &Path, at: SystemTime) -> std::io::Result<(File, PathBuf)> {
    let to = rotated_name(live, at);
    std::fs::rename(live, &to)?;
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(live)?;
    sync_dir(live);
    Ok((file, to))
}

/// Compresses `copy` to `copy.gz` (through a hidden temporary file, synced, then renamed) and
/// removes `copy`.
pub fn compress(copy: &Path) -> std::io::Result<PathBuf> {
    let name = copy.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = copy.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{name}.gz.tmp"));
    let gz = dir.join(format!("{name}.gz"));
    let result = (|| {
        let mut input = BufReader::new(File::open(copy)?);
        let out = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        std::fs::rename(&tmp, &gz)?;
        std::fs::remove_file(copy)?;
        sync_dir(copy);
        Ok(gz)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes the oldest rotated copies written by [`rotate`] (names `<name>.<YYYYMMDDTHHMMSSZ>…`)
/// beyond the newest `retain`. Copies named otherwise (logrotate's) are left alone. Returns how
/// many were deleted.
pub fn prune(live: &Path, retain: usize) -> std::io::Result<usize> {
    if retain == 0 {
        return Ok(0);
    }
    let mut ours = our_copies(live);
    ours.sort();
    let excess = ours.len().saturating_sub(retain);
    let mut deleted = 0;
    for (_, path) in ours.into_iter().take(excess) {
        std::fs::remove_file(&path)?;
        deleted += 1;
    }
    Ok(deleted)
}

/// `YYYYMMDDTHHMMSSZ`, optionally `-NNN`, optionally `.gz`.
fn is_stamp(suffix: &str) -> bool {
    let s = suffix.strip_suffix(".gz").unwrap_or(suffix);
    let (stamp, n) = match s.split_once('-') {
        Some((stamp, n)) => (stamp, Some(n)),
        None => (s, None),
    };
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && n.is_none_or(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
}

/// Makes a rename durable (best effort: the data itself is already synced).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn due_by_size_or_age_never_when_empty() {
        let t0 = Instant::now();
        let r = Rotation { max_bytes: Some(100), max_age: Some(Duration::from_secs(60)), retain: 3, compress: true };
        assert!(!r.due(99, t0, t0));
        assert!(r.due(100, t0, t0));
        assert!(r.due(1, t0, t0 + Duration::from_secs(60)));
        assert!(!r.due(0, t0, t0 + Duration::from_secs(600)), "an empty file is never rotated");
        assert!(!Rotation::default().due(u64::MAX, t0, t0 + Duration::from_secs(1 << 30)));
        assert!(!Rotation::default().enabled());
    }

    #[test]
    fn rotate_compress_prune() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.log");
        let mut f = OpenOptions::new().create(true).append(true).open(&live).unwrap();
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_159_960);
        let mut copies = Vec::new();
        for i in 0..4u64 {
            f.write_all(format!("{{\"n\":{i}}}\n").as_bytes()).unwrap();
            let (new, copy) = rotate(&live, base + Duration::from_secs(i)).unwrap();
            f = new;
            copies.push(compress(&copy).unwrap());
        }
        // Same second again: a distinct name.
        f.write_all(b"{\"n\":4}\n").unwrap();
        let (_, same) = rotate(&live, base + Duration::from_secs(3)).unwrap();
        assert!(same.to_string_lossy().ends_with("audit.log.20261201T211923Z-001"), "{}", same.display());
        // A clock set back still sorts after what is there.
        let back = rotated_name(&live, base - Duration::from_secs(3600));
        assert!(back.to_string_lossy().ends_with("audit.log.20261201T211923Z-002"), "{}", back.display());
        assert!(copies[0].to_string_lossy().ends_with("audit.log.20261201T211920Z.gz"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&copies[1]).unwrap()).read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"n\":1}\n");
        assert_eq!(std::fs::metadata(&live).unwrap().len(), 0);
        // A logrotate copy is not ours to delete.
        std::fs::write(dir.path().join("audit.log.1"), "x\n").unwrap();
        assert_eq!(prune(&live, 2).unwrap(), 3);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(
            left,
            ["audit.log", "audit.log.1", "audit.log.20261201T211923Z-001", "audit.log.20261201T211923Z.gz"]
        );
        // The search reads them oldest first, the live file last.
        let files = crate::lookup::audit_files(&live);
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            ["audit.log.1", "audit.log.20261201T211923Z.gz", "audit.log.20261201T211923Z-001", "audit.log"]
        );
    }

    #[test]
    fn stamps() {
        assert!(is_stamp("20261201T211920Z"));
        assert!(is_stamp("20261201T211920Z.gz"));
        assert!(is_stamp("20261201T211920Z-012.gz"));
        for bad in ["1", "2.gz", "20261201T211920", "20261201X211920Z", "20261201T211920Z-", "20261201T211920Z-a"] {
            assert!(!is_stamp(bad), "{bad}");
        }
    }
}
