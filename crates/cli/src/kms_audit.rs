//! `envelope kms audit`: search the key server's audit log (the live file and its rotated,
//! compressed copies) from the host, with the filters of CloudTrail's LookupEvents combined, and
//! `--follow` to watch new records arrive. The search itself is
//! `envelope_kms_server::lookup`'s, the one LookupEvents answers from.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use envelope_kms_server::lookup::{self, AttributeKey, Record};

/// Options of `envelope kms audit`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  envelope kms audit --event-name Decrypt --since 1h\n  \
    envelope kms audit --user ops --errors --output json\n  envelope kms audit --resource 1234abcd-12ab-34cd-56ef-1234567890ab --follow\n\
    Every filter given must match. Records of the live file and its rotated copies \
    (<audit-log>.<suffix>, .gz) are read.")]
pub struct AuditArgs {
    /// Data directory of the key server (its audit log is <DIR>/audit.log).
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The audit log file, if not <data-dir>/audit.log.
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Only this operation (CloudTrail eventName), e.g. Decrypt.
    #[arg(long, value_name = "NAME")]
    pub event_name: Option<String>,
    /// Only calls by this user (the last part of the principal ARN, e.g. ops).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Only calls signed with this access key id.
    #[arg(long, value_name = "AKID")]
    pub access_key_id: Option<String>,
    /// Only calls that touched this key (key ARN or key id).
    #[arg(long, value_name = "KEY")]
    pub resource: Option<String>,
    /// Only read-only calls (true) or only changes (false).
    #[arg(long, value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// Only the event with this eventID.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// Only failed calls (records with an errorCode).
    #[arg(long)]
    pub errors: bool,
    /// Only events at or after this time: RFC 3339 (2026-12-01T10:00:00Z) or an age (90m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this time: RFC 3339 or an age.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Show the last N matching events (0: all).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// Output format: a table, or the records themselves (one CloudTrail JSON object per line).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// After the matching events, keep watching the log and print new matching ones as they are
    /// written (follows rotation). Stop with Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns: time, event, user, access key, key, error.
    Table,
    /// One CloudTrail-shaped JSON record per line, as written to the log.
    Json,
}

struct Filter {
    attributes: Vec<(AttributeKey, String)>,
    start: Option<i64>,
    end: Option<i64>,
    errors: bool,
}

impl Filter {
    fn of(a: &AuditArgs, now: SystemTime) -> Result<Self> {
        let mut attributes = Vec::new();
        let mut add = |k: AttributeKey, v: &Option<String>| {
            if let Some(v) = v {
                attributes.push((k, v.clone()));
            }
        };
        add(AttributeKey::EventName, &a.event_name);
        add(AttributeKey::Username, &a.user);
        add(AttributeKey::AccessKeyId, &a.access_key_id);
        add(AttributeKey::ResourceName, &a.resource);
        add(AttributeKey::EventId, &a.event_id);
        add(AttributeKey::ReadOnly, &a.read_only.map(|b| b.to_string()));
        let start = a.since.as_deref().map(|s| parse_time(s, now).context("--since")).transpose()?;
        let end = a.until.as_deref().map(|s| parse_time(s, now).context("--until")).transpose()?;
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            bail!("--since is after --until");
        }
        Ok(Self { attributes, start, end, errors: a.errors })
    }

    fn matches(&self, r: &Record) -> bool {
        let t = r.position.time;
        (!self.errors || r.error_code.is_some())
            && self.start.is_none_or(|s| t >= s)
            && self.end.is_none_or(|e| t <= e)
            && self.attributes.iter().all(|(k, v)| lookup::attribute_matches(*k, v, r))
    }
}

/// RFC 3339, or an age before `now` in humantime's syntax (`90m`, `2h`, `7d`).
fn parse_time(s: &str, now: SystemTime) -> Result<i64> {
    if let Some(t) = envelope_kms_server::dates::parse_rfc3339(s) {
        return Ok(t);
    }
    let age = humantime::parse_duration(s)
        .with_context(|| format!("{s:?} is neither an RFC 3339 time nor an age like 2h"))?;
    let at = now.checked_sub(age).unwrap_or(UNIX_EPOCH);
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64))
}

/// Runs `envelope kms audit`.
pub fn run(a: AuditArgs) -> Result<()> {
    let path = match (&a.audit_log, &a.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("audit.log"),
        (None, None) => crate::config::default_data_dir().join("kms").join("audit.log"),
    };
    let filter = Filter::of(&a, SystemTime::now())?;
    let files = lookup::audit_files(&path);
    if !files.iter().any(|f| f.exists()) && !a.follow {
        bail!("no audit log at {} (see --data-dir, --audit-log)", path.display());
    }
    // The last `limit` matches, oldest first.
    let mut shown: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    lookup::calls(&files, |r| {
        if filter.matches(&r) {
            shown.push_back(r);
            if a.limit > 0 && shown.len() > a.limit {
                shown.pop_front();
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut shown: Vec<Record> = shown.into();
    shown.sort_by(|x, y| x.position.cmp(&y.position));
    if a.output == Format::Table {
        println!("{}", header());
    }
    for r in &shown {
        print_record(r, a.output);
    }
    if a.follow {
        follow(&path, &filter, a.output)?;
    }
    Ok(())
}

fn header() -> String {
    format!("{:<20}  {:<32}  {:<12}  {:<20}  {:<36}  ERROR", "TIME (UTC)", "EVENT", "USER", "ACCESS KEY", "KEY")
}

fn print_record(r: &Record, output: Format) {
    match output {
        Format::Json => println!("{}", r.event.cloudtrail_event),
        Format::Table => {
            let e = &r.event;
            let key = e
                .resources
                .iter()
                .map(|x| x.resource_name.rsplit_once('/').map_or(x.resource_name.as_str(), |(_, id)| id))
                .collect::<Vec<_>>()
                .join(",");
            let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.event_time.max(0) as u64));
            let stage = match r.stage.as_deref() {
                Some("intent") => " (intent only)",
                _ => "",
            };
            let row = format!(
                "{:<20}  {:<32}  {:<12}  {:<20}  {:<36}  {}",
                when.to_string(),
                format!("{}{stage}", e.event_name),
                e.username.as_deref().unwrap_or("-"),
                e.access_key_id.as_deref().unwrap_or("-"),
                if key.is_empty() { "-" } else { key.as_str() },
                r.error_code.as_deref().unwrap_or("")
            );
            println!("{}", row.trim_end());
        }
    }
}

/// Prints matching records appended to the live file from its current end on, reopening it
/// when it is rotated (another file at the path, or the file cut shorter).
fn follow(path: &Path, filter: &Filter, output: Format) -> Result<()> {
    let open = |from_end: bool| -> Result<Option<(BufReader<std::fs::File>, u64)>> {
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let ino = f.metadata()?.ino();
                if from_end {
                    f.seek(SeekFrom::End(0))?;
                }
                Ok(Some((BufReader::new(f), ino)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
    };
    let mut current = open(true)?;
    let mut line = String::new();
    loop {
        let mut read_any = false;
        if let Some((reader, _)) = current.as_mut() {
            loop {
                line.clear();
                let n = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
                if n == 0 || !line.ends_with('\n') {
                    // A partial line is read again whole once the writer finishes it.
                    if n > 0 {
                        reader.seek_relative(-(n as i64))?;
                    }
                    break;
                }
                read_any = true;
                if let Some(r) = lookup::parse_record(&line)
                    && r.stage.as_deref() != Some("intent")
                    && filter.matches(&r)
                {
                    print_record(&r, output);
                }
            }
        }
        if !read_any {
            std::thread::sleep(Duration::from_millis(250));
            // Rotated away (a new file at the path) or truncated: start on the new one.
            let rotated = match (&mut current, std::fs::metadata(path)) {
                (None, Ok(_)) => true,
                (Some((reader, ino)), Ok(m)) => {
                    m.ino() != *ino || reader.get_mut().stream_position().is_ok_and(|pos| m.len() < pos)
                }
                (_, Err(_)) => false,
            };
            if rotated {
                // What the old file got after our last read is in its rotated copy; the new
                // file is read from its start.
                current = open(false)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_time("1970-01-01T00:00:10Z", now).unwrap(), 10);
        assert_eq!(parse_time("1h", now).unwrap(), 10_000 - 3600);
        assert_eq!(parse_time("1000d", now).unwrap(), 0);
        assert!(parse_time("yesterday", now).is_err());
    }
}
