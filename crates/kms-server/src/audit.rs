//! The audit log: one CloudTrail-shaped JSON record per request (spec §7), appended to a file
//! before the response is sent. Records carry the encryption context (audit material) but never
//! plaintext, ciphertext, key material or import tokens.
//!
//! A state-changing request gets two records sharing its `requestID`: an **intent** record,
//! written and synced to disk before the change runs, and an **outcome** record after it
//! (`additionalEventData.auditStage` tells them apart). With `fail_closed`, a request whose
//! intent record cannot be written is refused (`KMSInternalException`) before anything changes,
//! and a read whose record cannot be written is refused instead of answered. A failed write
//! leaves no partial line: the file is cut back to where the write began. (A failed `fdatasync`
//! leaves the record in place — other records may follow it by then — and still fails the
//! request under `fail_closed`.)
//!
//! Records are typed values serialized straight into their line ([`AuditEvent`]: the request
//! as sent minus secrets, [`Params`]; the response's audit view, built by the operation).
//! [`AuditLog::append`] writes a record that needs no sync from the request's own task (one
//! `write` of a page-cache file under the file's lock, which is only ever held for a `write` or
//! a rotation's rename: no thread hand-off), or, when another task is writing at the time, has
//! that task write it with the others that arrived meanwhile, in its next single `write` (group
//! commit on the runtime's own threads); intent records go to a writer thread
//! that commits in groups: every record queued while it writes goes into its next single
//! `write`, followed by one `fdatasync` outside the lock, so an `fdatasync` never blocks a
//! runtime thread. Either way each request waits for its own record's result, so no response
//! leaves before its record is in the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::Raw;

/// Request and response members that are never written to the audit log.
const SECRET_MEMBERS: &[&str] = &[
    "Plaintext",
    "CiphertextBlob",
    "EncryptedKeyMaterial",
    "ImportToken",
    "PublicKey",
    "Recipient",
    "Message",
    "Mac",
    "Signature",
    "PrivateKeyPlaintext",
    "PrivateKeyCiphertextBlob",
    "SharedSecret",
    "CiphertextForRecipient",
];

/// Members whose values are user maps: their keys are data, not member names, and stay as sent.
const MAP_MEMBERS: &[&str] = &["EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext"];

/// Operations whose responses carry secrets or key-bound data: `responseElements` is `null`.
const CRYPTO_OPS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateRandom",
    "GenerateMac",
    "VerifyMac",
    "Sign",
    "Verify",
    "DeriveSharedSecret",
];

/// Most records one group commit writes.
const MAX_GROUP: usize = 512;

/// Most groups a request's task writes for others after its own record before a task of its
/// own takes over (so that no response waits long for other requests' records).
const MAX_ROUNDS: usize = 4;

/// An append-only audit file and the writer thread that commits records to it in groups.
#[derive(Debug)]
pub struct AuditLog {
    file: Arc<LogFile>,
    /// Records for the writer thread; `None` once dropped (the thread then ends).
    queue: Option<mpsc::UnboundedSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The file and its settings, shared with the writer thread.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<Live>,
    fail_closed: bool,
    rotation: crate::audit_rotate::Rotation,
    /// Records that need no sync, waiting while another request's task writes.
    waiting: Mutex<Waiting>,
}

/// Unsynced records that arrived while a write was in progress: the task writing takes them
/// into its next `write` and answers them.
#[derive(Debug, Default)]
struct Waiting {
    /// A task is writing (and will take what waits here).
    writing: bool,
    lines: Vec<u8>,
    waiters: Vec<oneshot::Sender<std::io::Result<()>>>,
}

/// One record for the writer: its line, whether it must be synced, and who waits for it.
/// The file records go to now, and since when (for rotation by age).
#[derive(Debug)]
struct Live {
    /// Shared with a writer that syncs it after letting go of the lock.
    file: Arc<File>,
    since: Instant,
}

#[derive(Debug)]
struct Job {
    line: Vec<u8>,
    sync: bool,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// A request's parameters for its record.
#[derive(Debug)]
#[non_exhaustive]
pub enum Params {
    /// The members as sent, from the request's one parse (secret members are never written).
    Typed(Box<Raw>),
    /// A body that did not parse as the operation's request: its members read as JSON with the
    /// secret ones skipped ([`sanitized_request`]).
    Json(Value),
}

impl Params {
    /// Completes the parameters as CloudTrail shows them: the encryption algorithm of
    /// Encrypt/Decrypt/ReEncrypt (default `SYMMETRIC_DEFAULT`), and Decrypt's `keyId` as the
    /// key that decrypted (`key_arn`).
    pub fn complete(&mut self, op: &str, key_arn: Option<&str>) {
        let algorithm = matches!(op, "Encrypt" | "Decrypt" | "ReEncrypt");
        let key_arn = key_arn.filter(|_| op == "Decrypt");
        match self {
            Params::Typed(raw) => {
                if algorithm && raw.encryption_algorithm.is_none() {
                    raw.encryption_algorithm = Some("SYMMETRIC_DEFAULT".into());
                }
                if let Some(arn) = key_arn {
                    raw.key_id = Some(arn.to_string());
                }
            }
            Params::Json(Value::Object(m)) => {
                if algorithm {
                    m.entry("EncryptionAlgorithm").or_insert_with(|| json!("SYMMETRIC_DEFAULT"));
                }
                if let Some(arn) = key_arn {
                    m.insert("KeyId".into(), json!(arn));
                }
            }
            Params::Json(_) => {}
        }
    }
}

/// Everything known about one request, for its record.
#[derive(Debug, Default)]
pub struct AuditEvent<'a> {
    /// Operation name, if the target was understood.
    pub operation: Option<&'a str>,
    /// `x-amzn-RequestId` returned to the caller.
    pub request_id: &'a str,
    /// Region served.
    pub region: &'a str,
    /// Account that owns the keys.
    pub account_id: &'a str,
    /// Caller address.
    pub source_ip: Option<&'a str>,
    /// Caller's User-Agent.
    pub user_agent: Option<&'a str>,
    /// Verified access key id, if authentication succeeded.
    pub access_key_id: Option<&'a str>,
    /// Verified principal ARN, if authentication succeeded.
    pub principal: Option<&'a str>,
    /// The request's parameters, if it was authenticated and its body read.
    pub request: Option<&'a Params>,
    /// On success, the response members the record shows (secrets already left out; PascalCase
    /// as sent); `None` for cryptographic calls and empty responses.
    pub response: Option<&'a Value>,
    /// On success, the key ARN the response names.
    pub key_arn: Option<&'a str>,
    /// AWS error code on failure.
    pub error_code: Option<&'a str>,
    /// Error message on failure.
    pub error_message: Option<&'a str>,
    /// ARNs of the keys the request touched (empty: the response's key, if any).
    pub resources: &'a [String],
    /// For state-changing requests: which of their two records this is.
    pub stage: Option<Stage>,
    /// A change the server made on its own (a key deleted after its window, an automatic
    /// rotation, expired imported material deleted): CloudTrail's `AwsServiceEvent`, invoked by
    /// `kms.amazonaws.com`, with no caller.
    pub service: bool,
}

/// The two records of a state-changing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Written (and synced) before the change runs.
    Intent,
    /// Written after it, with its result.
    Outcome,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Intent => "intent",
            Stage::Outcome => "outcome",
        }
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600) the audit file for appending, and starts its writer
    /// thread (it ends when the log is dropped).
    pub fn open(path: &Path, fail_closed: bool) -> std::io::Result<Self> {
        Self::open_with(path, fail_closed, crate::audit_rotate::Rotation::default())
    }

    /// [`AuditLog::open`], rotating the file by size and/or age as `rotation` says (the writer
    /// thread rotates between groups of records, so no record is split; compression and
    /// retention run on a thread of their own).
    pub fn open_with(path: &Path, fail_closed: bool, rotation: crate::audit_rotate::Rotation) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let live = Live { file: Arc::new(file), since: Instant::now() };
        let file = Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(live),
            fail_closed,
            rotation,
            waiting: Mutex::new(Waiting::default()),
        });
        let (queue, jobs) = mpsc::unbounded_channel();
        let shared = file.clone();
        let writer =
            std::thread::Builder::new().name("audit-writer".into()).spawn(move || write_groups(&shared, jobs))?;
        Ok(Self { file, queue: Some(queue), writer: Some(writer) })
    }

    /// Opens the file again at its path (after log rotation moved it away) and writes there
    /// from now on. On failure the current file stays in use.
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.file.path)?;
        let mut f = self.file.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        *f = Live { file: Arc::new(file), since: Instant::now() };
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Whether requests are refused when their record cannot be written.
    pub fn fail_closed(&self) -> bool {
        self.file.fail_closed
    }

    /// Appends one record (one line) and hands it to the operating system, from the calling
    /// thread.
    pub fn write(&self, ev: &AuditEvent<'_>) -> std::io::Result<()> {
        self.file.append(&line(ev, SystemTime::now())?, false)
    }

    /// Appends one record and syncs it to disk before returning, from the calling thread.
    pub fn write_durable(&self, ev: &AuditEvent<'_>) -> std::io::Result<()> {
        self.file.append(&line(ev, SystemTime::now())?, true)
    }

    /// Appends one record and completes once it is in the file — synced to disk first if
    /// `durable`, through the writer thread (with the records queued beside it). A record that
    /// needs no sync is written by the calling task, or, if another task is writing, by that
    /// task in its next `write` (group commit without a thread hand-off).
    pub async fn append(&self, ev: &AuditEvent<'_>, durable: bool) -> std::io::Result<()> {
        let line = line(ev, SystemTime::now())?;
        if !durable {
            return self.file.clone().append_unsynced(line).await;
        }
        let (done, result) = oneshot::channel();
        let gone = || std::io::Error::other("the audit writer has stopped");
        self.queue.as_ref().ok_or_else(gone)?.send(Job { line, sync: durable, done }).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what was queued.
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl LogFile {
    /// Writes `line` (one record) and what other tasks queue meanwhile, in as few `write`s as
    /// they arrive; see [`AuditLog::append`]. The task that finds no write in progress writes
    /// (with no await in between, so no cancelled request can leave records unwritten); the
    /// others queue their lines and wait for its answer.
    async fn append_unsynced(self: Arc<Self>, line: Vec<u8>) -> std::io::Result<()> {
        let queued = {
            // Its holders only move bytes and senders: a panic elsewhere leaves it consistent.
            let mut w = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if w.writing {
                w.lines.extend_from_slice(&line);
                let (done, result) = oneshot::channel();
                w.waiters.push(done);
                Some(result)
            } else {
                w.writing = true;
                None
            }
        };
        if let Some(result) = queued {
            return result.await.map_err(|_| std::io::Error::other("the audit writer has stopped"))?;
        }
        let mine = self.append(&line, false);
        drop(line);
        if self.write_waiting(MAX_ROUNDS) {
            // Others keep coming: a task of its own writes them, this response goes.
            let file = self.clone();
            tokio::spawn(async move { while file.write_waiting(MAX_ROUNDS) {} });
        }
        self.rotate_if_due();
        mine
    }

    /// Writes what waits, at most `rounds` times, and answers each record. Returns whether
    /// records still wait (and this task is still the writer); otherwise writing has ended.
    fn write_waiting(&self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let (lines, waiters) = {
                let mut w = self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if w.lines.is_empty() {
                    w.writing = false;
                    return false;
                }
                (std::mem::take(&mut w.lines), std::mem::take(&mut w.waiters))
            };
            let result = self.append(&lines, false);
            for done in waiters {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                };
                let _ = done.send(r);
            }
        }
        true
    }

    /// Writes `bytes` (whole lines) in one `write`, then syncs them if `sync` (after letting
    /// go of the lock, so that writers of unsynced records never wait for a disk flush). A
    /// failed write cuts the file back to where it began, so a full disk never leaves half a
    /// line that would corrupt the next record.
    fn append(&self, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        let file = {
            let live = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
            write_lines(&live.file, bytes)?;
            live.file.clone()
        };
        // The file the lines went to, even if a rotation has replaced it since.
        if sync { file.sync_data() } else { Ok(()) }
    }

    /// Rotates the file if it is due (size or age). The rotated copy is compressed and old
    /// copies pruned on a thread of their own; failures are logged and writing goes on.
    fn rotate_if_due(&self) {
        if !self.rotation.enabled() {
            return;
        }
        let copy = {
            let Ok(mut live) = self.file.lock() else { return };
            let len = live.file.metadata().map(|m| m.len()).unwrap_or(0);
            if !self.rotation.due(len, live.since, Instant::now()) {
                return;
            }
            match crate::audit_rotate::rotate(&self.path, SystemTime::now()) {
                Ok((file, copy)) => {
                    *live = Live { file: Arc::new(file), since: Instant::now() };
                    copy
                }
                Err(e) => {
                    // Not again before the next size or age threshold is checked.
                    live.since = Instant::now();
                    tracing::error!(path = %self.path.display(), error = %e, "cannot rotate the audit log; writing on to the current file");
                    return;
                }
            }
        };
        tracing::info!(path = %self.path.display(), rotated = %copy.display(), "audit log rotated");
        let (path, rotation) = (self.path.clone(), self.rotation);
        let tidy = move || {
            if rotation.compress
                && let Err(e) = crate::audit_rotate::compress(&copy)
            {
                tracing::error!(copy = %copy.display(), error = %e, "cannot compress the rotated audit log");
            }
            match crate::audit_rotate::prune(&path, rotation.retain) {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, retain = rotation.retain, "old audit log copies deleted"),
                Err(e) => tracing::error!(error = %e, "cannot delete old audit log copies"),
            }
        };
        if let Err(e) = std::thread::Builder::new().name("audit-tidy".into()).spawn(tidy) {
            tracing::error!(error = %e, "cannot start compressing the rotated audit log");
        }
    }
}

/// Writes whole lines at the end of `f` (opened for appending). On failure the file is cut back
/// by what this call wrote (the caller holds the file's lock, so nothing was appended after it),
/// so a full disk never leaves half a line that would corrupt the next record.
fn write_lines(mut f: &File, bytes: &[u8]) -> std::io::Result<()> {
    let mut done = 0usize;
    let mut written = Ok(());
    while done < bytes.len() {
        match f.write(&bytes[done..]) {
            Ok(0) => {
                written = Err(std::io::ErrorKind::WriteZero.into());
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                written = Err(e);
                break;
            }
        }
    }
    if written.is_err()
        && done > 0
        && let Ok(m) = f.metadata()
    {
        let _ = f.set_len(m.len().saturating_sub(done as u64));
    }
    written
}

/// The writer thread: takes every record queued, writes them as one group, answers each.
fn write_groups(file: &LogFile, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut group: Vec<Job> = Vec::with_capacity(64);
    let mut bytes: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        bytes.clear();
        for j in &group {
            bytes.extend_from_slice(&j.line);
        }
        let sync = group.iter().any(|j| j.sync);
        let result = file.append(&bytes, sync);
        for j in group.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            let _ = j.done.send(r);
        }
        // Between groups: every answered record is whole in the file being rotated away.
        file.rotate_if_due();
    }
}

/// The record's line: its JSON and a newline.
fn line(ev: &AuditEvent<'_>, now: SystemTime) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, &Record::of(ev, now)).map_err(std::io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// Builds the CloudTrail-shaped record of one request (as JSON, e.g. for tests).
pub fn record(ev: &AuditEvent<'_>, now: SystemTime) -> Value {
    serde_json::to_value(Record::of(ev, now)).unwrap_or(Value::Null)
}

/// One record. Members in name order, as CloudTrail's JSON read into a map is written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    additional_event_data: Option<AdditionalData>,
    aws_region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
    event_category: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    event_name: &'a str,
    event_source: &'static str,
    event_time: String,
    event_type: &'static str,
    event_version: &'static str,
    management_event: bool,
    read_only: bool,
    recipient_account_id: &'a str,
    #[serde(rename = "requestID")]
    request_id: &'a str,
    request_parameters: RequestParameters<'a>,
    resources: Vec<Resource<'a>>,
    response_elements: Option<Value>,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: &'a str,
    user_agent: &'a str,
    user_identity: UserIdentity<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdditionalData {
    audit_stage: &'static str,
}

/// `requestParameters`: the typed members as sent, a fallback JSON object, or `null`.
enum RequestParameters<'a> {
    Typed(&'a Raw),
    Json(Value),
    None,
}

impl Serialize for RequestParameters<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            RequestParameters::Typed(raw) => raw.serialize(s),
            RequestParameters::Json(v) => v.serialize(s),
            RequestParameters::None => s.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    #[serde(rename = "accountId")]
    account_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoked_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal_id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<&'a str>,
}

/// Who acts in a service event (CloudTrail's `invokedBy`, `sourceIPAddress` and `userAgent`).
const SERVICE: &str = "kms.amazonaws.com";

impl<'a> Record<'a> {
    fn of(ev: &'a AuditEvent<'a>, now: SystemTime) -> Self {
        let op = ev.operation.unwrap_or("Unknown");
        let crypto = CRYPTO_OPS.contains(&op);
        let request_parameters = match ev.request {
            Some(Params::Typed(raw)) => RequestParameters::Typed(raw),
            Some(Params::Json(v)) => RequestParameters::Json(camel_clean(v, false)),
            None => RequestParameters::None,
        };
        let mut resources: Vec<&str> = ev.resources.iter().map(String::as_str).collect();
        if resources.is_empty()
            && let Some(arn) = ev.key_arn
        {
            resources.push(arn);
        }
        Record {
            additional_event_data: ev.stage.map(|s| AdditionalData { audit_stage: s.as_str() }),
            aws_region: ev.region,
            error_code: ev.error_code,
            error_message: ev.error_code.map(|_| ev.error_message.unwrap_or_default()),
            event_category: "Management",
            event_id: crate::ids::random_uuid(),
            event_name: op,
            // The audit search is CloudTrail's own call.
            event_source: if op == "LookupEvents" { "cloudtrail.amazonaws.com" } else { "kms.amazonaws.com" },
            event_time: crate::dates::rfc3339_seconds(now),
            event_type: if ev.service { "AwsServiceEvent" } else { "AwsApiCall" },
            event_version: "1.11",
            management_event: true,
            read_only: read_only(op),
            recipient_account_id: ev.account_id,
            request_id: ev.request_id,
            request_parameters,
            resources: resources
                .into_iter()
                .map(|arn| Resource { arn, account_id: ev.account_id, kind: "AWS::KMS::Key" })
                .collect(),
            response_elements: ev.response.filter(|_| !crypto).map(|r| camel_clean(r, false)),
            source_ip_address: if ev.service { SERVICE } else { ev.source_ip.unwrap_or_default() },
            user_agent: if ev.service { SERVICE } else { ev.user_agent.unwrap_or("") },
            user_identity: user_identity(ev),
        }
    }
}

/// Whether `op`'s responses carry secrets (its `responseElements` are `null`).
pub fn is_crypto(op: &str) -> bool {
    CRYPTO_OPS.contains(&op)
}

/// Parses a JSON request body for the audit record with its secret members skipped while
/// parsing: their values (base64 plaintext, ciphertext, key material) are scanned, never copied
/// into a string. `None` when the body is not a JSON object.
pub fn sanitized_request(body: &[u8]) -> Option<Value> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Self::Value, A::Error> {
            let mut m = Map::new();
            while let Some(k) = a.next_key::<String>()? {
                if SECRET_MEMBERS.contains(&k.as_str()) {
                    a.next_value::<IgnoredAny>()?;
                } else {
                    let v = a.next_value::<Value>()?;
                    m.insert(k, v);
                }
            }
            Ok(m)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let m = (&mut de).deserialize_map(Members).ok()?;
    de.end().ok()?;
    Some(Value::Object(m))
}

/// A request or response body with secret members removed (PascalCase kept).
pub fn sanitize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !SECRET_MEMBERS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// CloudTrail's `readOnly`: reads and cryptographic operations (which change no state).
pub fn read_only(op: &str) -> bool {
    op.starts_with("Describe")
        || op.starts_with("List")
        || op.starts_with("Get")
        || op.starts_with("Lookup")
        || matches!(
            op,
            "Encrypt"
                | "Decrypt"
                | "ReEncrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "GenerateDataKeyPair"
                | "GenerateDataKeyPairWithoutPlaintext"
                | "GenerateRandom"
                | "GenerateMac"
                | "VerifyMac"
                | "Sign"
                | "Verify"
                | "DeriveSharedSecret"
        )
}

fn user_identity<'a>(ev: &AuditEvent<'a>) -> UserIdentity<'a> {
    let unknown = UserIdentity {
        access_key_id: None,
        account_id: None,
        arn: None,
        invoked_by: None,
        principal_id: None,
        kind: Some("Unknown"),
        user_name: None,
    };
    if ev.service {
        return UserIdentity { account_id: Some(ev.account_id), invoked_by: Some(SERVICE), kind: None, ..unknown };
    }
    let Some(arn) = ev.principal else {
        // Not authenticated: only the access key id the request claimed, if any.
        return UserIdentity { access_key_id: ev.access_key_id, ..unknown };
    };
    let resource = arn.splitn(6, ':').nth(5).unwrap_or("");
    let kind = if resource == "root" {
        "Root"
    } else if resource.starts_with("assumed-role/") {
        "AssumedRole"
    } else if resource.starts_with("role/") {
        "Role"
    } else {
        "IAMUser"
    };
    UserIdentity {
        access_key_id: Some(ev.access_key_id.unwrap_or("")),
        account_id: Some(arn.split(':').nth(4).unwrap_or(ev.account_id)),
        arn: Some(arn),
        invoked_by: None,
        principal_id: Some(ev.access_key_id.unwrap_or("")),
        kind: Some(kind),
        user_name: if kind == "IAMUser" { resource.rsplit('/').next() } else { None },
    }
}

/// The key ARN a response names (`KeyId` of crypto responses, `KeyMetadata.Arn` of management ones).
pub(crate) fn resolved_key_arn(resp: &Value) -> Option<String> {
    let arn =
        resp.get("KeyMetadata").and_then(|m| m.get("Arn")).or_else(|| resp.get("KeyId")).and_then(Value::as_str)?;
    arn.contains(":key/").then(|| arn.to_string())
}

/// camelCase member names, secrets removed; user maps (encryption contexts) kept as sent.
fn camel_clean(v: &Value, inside_map: bool) -> Value {
    match v {
        Value::Object(m) if !inside_map => {
            let mut out = Map::new();
            for (k, val) in m {
                if SECRET_MEMBERS.contains(&k.as_str()) {
                    continue;
                }
                let is_map = MAP_MEMBERS.contains(&k.as_str());
                out.insert(camel(k), camel_clean(val, is_map));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| camel_clean(x, inside_map)).collect()),
        other => other.clone(),
    }
}

fn camel(k: &str) -> String {
    let mut c = k.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn decrypt_record_has_context_and_no_secrets() {
        let body = br#"{"CiphertextBlob": "c2VjcmV0", "EncryptionContext": {"Tenant": "a", "KeyId": "x"}}"#;
        let arn = "arn:aws:kms:us-east-1:111122223333:key/1234";
        let typed = crate::op::parse(crate::Operation::Decrypt, body).unwrap().params;
        // The typed parameters and the JSON fallback make the same record.
        for mut params in [typed, Params::Json(sanitized_request(body).unwrap())] {
            params.complete("Decrypt", Some(arn));
            let ev = AuditEvent {
                operation: Some("Decrypt"),
                request_id: "req-1",
                region: "us-east-1",
                account_id: "111122223333",
                source_ip: Some("127.0.0.1"),
                user_agent: Some("aws-cli/1"),
                access_key_id: Some("AKIATEST"),
                principal: Some("arn:aws:iam::111122223333:user/admin"),
                request: Some(&params),
                key_arn: Some(arn),
                ..Default::default()
            };
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_747_773_900);
            let text = String::from_utf8(line(&ev, now).unwrap()).unwrap();
            assert!(!text.contains("c2VjcmV0"), "{text}");
            let r: Value = serde_json::from_str(&text).unwrap();
            // Members in name order: the text is that of the record read into a map.
            assert_eq!(text.trim_end(), r.to_string());
            assert_eq!(r["eventName"], "Decrypt");
            assert_eq!(r["eventSource"], "kms.amazonaws.com");
            assert_eq!(r["eventTime"], "2025-05-20T20:45:00Z");
            assert_eq!(r["requestParameters"]["encryptionContext"]["Tenant"], "a");
            assert_eq!(r["requestParameters"]["encryptionContext"]["KeyId"], "x", "context keys kept as sent");
            assert_eq!(r["requestParameters"]["encryptionAlgorithm"], "SYMMETRIC_DEFAULT");
            assert_eq!(r["requestParameters"]["keyId"], arn);
            assert_eq!(r["responseElements"], Value::Null);
            assert_eq!(r["readOnly"], true);
            assert_eq!(r["resources"], json!([{"ARN": arn, "accountId": "111122223333", "type": "AWS::KMS::Key"}]));
            assert_eq!(
                r["userIdentity"],
                json!({"type": "IAMUser", "principalId": "AKIATEST", "arn": "arn:aws:iam::111122223333:user/admin",
                    "accountId": "111122223333", "accessKeyId": "AKIATEST", "userName": "admin"})
            );
            assert!(r.get("errorCode").is_none() && r.get("additionalEventData").is_none());
        }
    }

    #[test]
    fn failures_and_management_calls() {
        let resp = json!({"KeyMetadata": {"KeyId": "1234", "Arn": "arn:aws:kms:us-east-1:111122223333:key/1234"}});
        let arn = resolved_key_arn(&resp);
        let ev = AuditEvent {
            operation: Some("CreateKey"),
            request_id: "r",
            region: "us-east-1",
            account_id: "111122223333",
            response: Some(&resp),
            key_arn: arn.as_deref(),
            ..Default::default()
        };
        let r = record(&ev, SystemTime::now());
        assert_eq!(r["responseElements"]["keyMetadata"]["arn"], "arn:aws:kms:us-east-1:111122223333:key/1234");
        assert_eq!(r["readOnly"], false);
        assert_eq!(r["resources"][0]["ARN"], "arn:aws:kms:us-east-1:111122223333:key/1234");
        let ev = AuditEvent {
            operation: None,
            request_id: "r",
            region: "us-east-1",
            account_id: "111122223333",
            error_code: Some("InvalidSignatureException"),
            error_message: Some("bad"),
            access_key_id: Some("AKIACLAIMED"),
            stage: Some(Stage::Outcome),
            ..Default::default()
        };
        let r = record(&ev, SystemTime::now());
        assert_eq!(r["errorCode"], "InvalidSignatureException");
        assert_eq!(r["errorMessage"], "bad");
        assert_eq!(r["userIdentity"], json!({"type": "Unknown", "accessKeyId": "AKIACLAIMED"}));
        assert_eq!(r["additionalEventData"], json!({"auditStage": "outcome"}));
        assert_eq!(r["requestParameters"], Value::Null);
    }

    #[test]
    fn file_is_private_and_appended() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, true).unwrap();
        let ev = AuditEvent {
            operation: Some("ListKeys"),
            request_id: "a",
            region: "r",
            account_id: "1",
            ..Default::default()
        };
        log.write(&ev).unwrap();
        log.write(&ev).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["eventName"], "ListKeys");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn records_arriving_during_a_write_wait_for_it_and_go_out_in_one_group() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&p, true).unwrap());
        let append = |i: usize| {
            let log = log.clone();
            async move {
                let id = format!("req-{i}");
                let ev = AuditEvent {
                    operation: Some("Decrypt"),
                    request_id: &id,
                    region: "r",
                    account_id: "1",
                    ..Default::default()
                };
                log.append(&ev, false).await
            }
        };
        let waiting = |log: &AuditLog| {
            let w = log.file.waiting.lock().unwrap();
            (w.writing, w.waiters.len())
        };
        // The file is busy (a thread holds it until told to let go): the first record's task
        // becomes the writer and waits for it.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let log = log.clone();
            std::thread::spawn(move || {
                let _busy = log.file.file.lock().unwrap();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        held_rx.recv().unwrap();
        let first = tokio::spawn(append(0));
        while waiting(&log) != (true, 0) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let rest: Vec<_> = (1..=20).map(|i| tokio::spawn(append(i))).collect();
        while waiting(&log) != (true, 20) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "", "nothing is answered before it is written");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        first.await.unwrap().unwrap();
        for t in rest {
            t.await.unwrap().unwrap();
        }
        assert_eq!(waiting(&log), (false, 0), "the writer is done and nothing waits");
        let text = std::fs::read_to_string(&p).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["requestID"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.first().map(String::as_str), Some("req-0"), "the writer's own record first");
        ids.sort();
        let mut want: Vec<String> = (0..=20).map(|i| format!("req-{i}")).collect();
        want.sort();
        assert_eq!(ids, want, "every record once, each line whole");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commits_write_every_record_and_answer_each() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&p, true).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.spawn(async move {
                let id = format!("req-{i}");
                let ev = AuditEvent {
                    operation: Some("Encrypt"),
                    request_id: &id,
                    region: "r",
                    account_id: "1",
                    ..Default::default()
                };
                log.append(&ev, i % 10 == 0).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["requestID"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        let mut want: Vec<String> = (0..200).map(|i| format!("req-{i}")).collect();
        want.sort();
        assert_eq!(ids, want);

        // A sink that refuses writes fails each record of the group, and the log goes on.
        let full = AuditLog::open(Path::new("/dev/full"), true).unwrap();
        let ev = AuditEvent {
            operation: Some("Decrypt"),
            request_id: "x",
            region: "r",
            account_id: "1",
            ..Default::default()
        };
        assert!(full.append(&ev, false).await.is_err());
        assert!(full.append(&ev, true).await.is_err());
        drop(full);
        // Dropping a log stops its writer after what was queued.
        let ev = AuditEvent {
            operation: Some("ListKeys"),
            request_id: "last",
            region: "r",
            account_id: "1",
            ..Default::default()
        };
        let log = Arc::try_unwrap(log).unwrap();
        log.append(&ev, false).await.unwrap();
        drop(log);
        assert!(std::fs::read_to_string(&p).unwrap().lines().last().unwrap().contains("\"last\""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_by_size_keeps_every_acknowledged_record_and_the_newest_copies() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let rotation =
            crate::audit_rotate::Rotation { max_bytes: Some(2048), max_age: None, retain: 3, compress: true };
        let log = AuditLog::open_with(&p, true, rotation).unwrap();
        for i in 0..60 {
            let id = format!("req-{i:03}");
            let ev = AuditEvent {
                operation: Some("Encrypt"),
                request_id: &id,
                region: "r",
                account_id: "1",
                ..Default::default()
            };
            log.append(&ev, false).await.unwrap();
        }
        drop(log);
        // Compression runs beside the writer: wait until no uncompressed copy is left.
        let copies = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n != "audit.log")
                .collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while copies().iter().any(|n| !n.ends_with(".gz")) || copies().len() > 3 {
            assert!(Instant::now() < deadline, "copies left: {:?}", copies());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kept = copies();
        assert_eq!(kept.len(), 3, "{kept:?}");
        // What is left — the newest copies and the live file — is a run of consecutive records
        // ending with the last one: rotation split no record and lost none after the pruned ones.
        let mut ids = Vec::new();
        crate::lookup::for_each_record(&crate::lookup::audit_files(&p), |r| ids.push(r.request_id)).unwrap();
        assert!(!ids.is_empty());
        let first: usize = ids[0]["req-".len()..].parse().unwrap();
        let want: Vec<String> = (first..60).map(|i| format!("req-{i:03}")).collect();
        assert_eq!(ids, want);
        assert!(first > 0, "the oldest copies were deleted (retain 3)");
        assert!(std::fs::metadata(&p).unwrap().len() < 2048 + 1024);
    }

    #[test]
    fn sanitized_request_matches_sanitize_and_skips_secrets() {
        for body in [
            &br#"{"KeyId":"alias/a","Plaintext":"c2VjcmV0","EncryptionContext":{"Plaintext":"kept: a context key"}}"#[..],
            br#"{"CiphertextBlob":"AAEC\u0041","GrantTokens":["t"],"Limit":5}"#,
            br#"{"EncryptedKeyMaterial":"eA==","ImportToken":"eQ==","KeyId":"k","ValidTo":1.5e9}"#,
            br#"{}"#,
        ] {
            let parsed: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(sanitized_request(body), Some(sanitize(&parsed)), "{}", String::from_utf8_lossy(body));
            let text = sanitized_request(body).unwrap().to_string();
            assert!(!text.contains("c2VjcmV0") && !text.contains("AAEC") && !text.contains("eA=="), "{text}");
        }
        for bad in [&b"[1,2]"[..], b"{", b"{\"a\":1} trailing", b"", b"\"str\""] {
            assert_eq!(sanitized_request(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn sanitized_request_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = sanitized_request(&body);
        }

        #[test]
        fn sanitized_request_never_keeps_a_secret_member(secret in "\\+/[A-Za-z0-9+/]{4,40}", other in "[a-z]{1,10}") {
            // `+/` starts every secret and cannot occur in the other member or the member names.
            let body = format!(r#"{{"Plaintext":"{secret}","CiphertextBlob":"{secret}","KeyId":"{other}"}}"#);
            let v = sanitized_request(body.as_bytes()).unwrap();
            proptest::prop_assert!(!v.to_string().contains(&secret));
            proptest::prop_assert_eq!(v["KeyId"].as_str(), Some(other.as_str()));
        }
    }
}
