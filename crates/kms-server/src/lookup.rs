//! Searching the audit log: CloudTrail's `LookupEvents` (request, filters, pages, response) over
//! the audit file and its rotated copies, and the same search for `envelope kms audit`.
//!
//! The search streams every record once, oldest file first, and keeps only the page it will
//! answer (a bounded heap), so memory does not grow with the log. A state change has two records
//! (intent, then outcome; see [`crate::audit`]): the outcome stands for the call, and an intent
//! whose outcome never came (the server stopped in between) is returned on its own, so a change
//! is never missing from the search. Events come newest first, ordered by `(eventTime,
//! eventID)`; a `NextToken` names the last event returned and a digest of the query it belongs
//! to.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most events in one page (and the default).
pub const MAX_RESULTS: usize = 50;
/// Longest accepted `AttributeValue`.
pub const MAX_ATTRIBUTE_VALUE: usize = 2000;

/// What went wrong with a lookup; each maps to the CloudTrail error of the same name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// `InvalidLookupAttributesException`.
    #[error("{0}")]
    InvalidLookupAttributes(String),
    /// `InvalidTimeRangeException`.
    #[error("{0}")]
    InvalidTimeRange(String),
    /// `InvalidMaxResultsException`.
    #[error("{0}")]
    InvalidMaxResults(String),
    /// `InvalidNextTokenException`.
    #[error("{0}")]
    InvalidNextToken(String),
    /// `InvalidEventCategoryException`.
    #[error("{0}")]
    InvalidEventCategory(String),
    /// The request body is not the operation's JSON (`SerializationException`).
    #[error("{0}")]
    Serialization(String),
    /// The audit files could not be read.
    #[error("cannot read the audit log {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl LookupError {
    /// The CloudTrail error code.
    pub fn code(&self) -> &'static str {
        match self {
            LookupError::InvalidLookupAttributes(_) => "InvalidLookupAttributesException",
            LookupError::InvalidTimeRange(_) => "InvalidTimeRangeException",
            LookupError::InvalidMaxResults(_) => "InvalidMaxResultsException",
            LookupError::InvalidNextToken(_) => "InvalidNextTokenException",
            LookupError::InvalidEventCategory(_) => "InvalidEventCategoryException",
            LookupError::Serialization(_) => "SerializationException",
            LookupError::Io { .. } => "InternalFailure",
        }
    }
}

/// The attribute a lookup filters on (CloudTrail's `LookupAttributeKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributeKey {
    /// `eventID`.
    EventId,
    /// `eventName`, e.g. `Decrypt`.
    EventName,
    /// `readOnly`: `true` or `false`.
    ReadOnly,
    /// The caller's user name (the last part of its principal ARN).
    Username,
    /// A resource's type, e.g. `AWS::KMS::Key`.
    ResourceType,
    /// A resource's ARN, or the key id it ends with.
    ResourceName,
    /// `eventSource`, `kms.amazonaws.com`.
    EventSource,
    /// The access key id that signed the request.
    AccessKeyId,
}

impl AttributeKey {
    /// All keys, in CloudTrail's order.
    pub const ALL: [AttributeKey; 8] = [
        AttributeKey::EventId,
        AttributeKey::EventName,
        AttributeKey::ReadOnly,
        AttributeKey::Username,
        AttributeKey::ResourceType,
        AttributeKey::ResourceName,
        AttributeKey::EventSource,
        AttributeKey::AccessKeyId,
    ];

    /// The CloudTrail name.
    pub fn name(self) -> &'static str {
        match self {
            AttributeKey::EventId => "EventId",
            AttributeKey::EventName => "EventName",
            AttributeKey::ReadOnly => "ReadOnly",
            AttributeKey::Username => "Username",
            AttributeKey::ResourceType => "ResourceType",
            AttributeKey::ResourceName => "ResourceName",
            AttributeKey::EventSource => "EventSource",
            AttributeKey::AccessKeyId => "AccessKeyId",
        }
    }

    /// The key of a CloudTrail name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A lookup: at most one attribute, a time window, a page size and where the page starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// The attribute and the value it must have.
    pub attribute: Option<(AttributeKey, String)>,
    /// Only events at or after this time (Unix seconds).
    pub start: Option<i64>,
    /// Only events at or before this time (Unix seconds).
    pub end: Option<i64>,
    /// Page size, 1..=50.
    pub max_results: usize,
    /// Resume after this event (from a `NextToken`).
    pub after: Option<Position>,
    /// `EventCategory: insight` was asked: there are no Insights events, so nothing matches.
    pub insights: bool,
    /// Only events of this region (`awsRegion`), as CloudTrail's history is per region; set by
    /// the server from the request's region, not by the request.
    pub region: Option<String>,
}

/// Where an event stands in the order of results (newest first).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// `eventTime`, Unix seconds.
    pub time: i64,
    /// `eventID`.
    pub id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(rename = "LookupAttributes")]
    lookup_attributes: Option<Vec<RawAttribute>>,
    #[serde(rename = "StartTime")]
    start_time: Option<f64>,
    #[serde(rename = "EndTime")]
    end_time: Option<f64>,
    #[serde(rename = "EventCategory")]
    event_category: Option<String>,
    #[serde(rename = "MaxResults")]
    max_results: Option<i64>,
    #[serde(rename = "NextToken")]
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttribute {
    #[serde(rename = "AttributeKey")]
    key: Option<String>,
    #[serde(rename = "AttributeValue")]
    value: Option<String>,
}

/// Parses and validates a `LookupEvents` request body (JSON 1.1; times as Unix seconds).
pub fn parse_request(body: &[u8]) -> Result<Query, LookupError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| LookupError::Serialization(format!("The request is not valid JSON for LookupEvents: {e}")))?;
    let attributes = raw.lookup_attributes.unwrap_or_default();
    if attributes.len() > 1 {
        return Err(LookupError::InvalidLookupAttributes(
            "You can specify at most one lookup attribute in a request.".into(),
        ));
    }
    let attribute = match attributes.into_iter().next() {
        None => None,
        Some(a) => {
            let (Some(key), Some(value)) = (a.key, a.value) else {
                return Err(LookupError::InvalidLookupAttributes(
                    "A lookup attribute needs both AttributeKey and AttributeValue.".into(),
                ));
            };
            let key = AttributeKey::from_name(&key).ok_or_else(|| {
                LookupError::InvalidLookupAttributes(format!(
                    "Unsupported lookup attribute key {key:?}; supported: {}.",
                    AttributeKey::ALL.map(AttributeKey::name).join(", ")
                ))
            })?;
            let weight: usize = value.chars().map(|c| if matches!(c, '_' | ' ' | ',' | '\n') { 2 } else { 1 }).sum();
            if value.is_empty() || weight > MAX_ATTRIBUTE_VALUE {
                return Err(LookupError::InvalidLookupAttributes(format!(
                    "AttributeValue must be 1 to {MAX_ATTRIBUTE_VALUE} characters long."
                )));
            }
            Some((key, value))
        }
    };
    let time = |t: Option<f64>| -> Result<Option<i64>, LookupError> {
        match t {
            None => Ok(None),
            Some(t) if t.is_finite() && (0.0..=253_402_300_799.0).contains(&t) => Ok(Some(t.floor() as i64)),
            Some(_) => Err(LookupError::InvalidTimeRange("The time is outside the range of possible values.".into())),
        }
    };
    let (start, end) = (time(raw.start_time)?, time(raw.end_time)?);
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err(LookupError::InvalidTimeRange("Start time must be before or equal to end time.".into()));
    }
    let insights = match raw.event_category.as_deref() {
        None => false,
        Some("insight") => true,
        Some(other) => {
            return Err(LookupError::InvalidEventCategory(format!(
                "Event category {other:?} is not valid; the only value is \"insight\"."
            )));
        }
    };
    let max_results = match raw.max_results {
        None => MAX_RESULTS,
        Some(n) if (1..=MAX_RESULTS as i64).contains(&n) => n as usize,
        Some(_) => {
            return Err(LookupError::InvalidMaxResults(format!("MaxResults must be between 1 and {MAX_RESULTS}.")));
        }
    };
    let mut q = Query { attribute, start, end, max_results, after: None, insights, region: None };
    if let Some(token) = raw.next_token {
        q.after = Some(decode_token(&token, &q)?);
    }
    Ok(q)
}

/// The token after `last`, bound to the query's filters (not to its page size).
pub fn encode_token(last: &Position, q: &Query) -> String {
    let text = format!("{}|{}|{}", last.time, last.id, query_digest(q));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_token(token: &str, q: &Query) -> Result<Position, LookupError> {
    let invalid = || {
        LookupError::InvalidNextToken(
            "The NextToken is not valid, or was returned for a request with other parameters.".into(),
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '|');
    let (Some(time), Some(id), Some(digest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if digest != query_digest(q) {
        return Err(invalid());
    }
    Ok(Position { time: time.parse().map_err(|_| invalid())?, id: id.to_string() })
}

/// A short digest of the filters, so a token is refused with other parameters.
fn query_digest(q: &Query) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let _ =
        write!(text, "{:?}/{:?}/{:?}/{}", q.attribute.as_ref().map(|(k, v)| (k.name(), v)), q.start, q.end, q.insights);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    hex::encode(&digest.as_ref()[..12])
}

/// One event as `LookupEvents` returns it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// `eventID`.
    #[serde(rename = "EventId")]
    pub event_id: String,
    /// `eventName`.
    #[serde(rename = "EventName")]
    pub event_name: String,
    /// `"true"` or `"false"`.
    #[serde(rename = "ReadOnly")]
    pub read_only: String,
    /// The access key id that signed the request, if known.
    #[serde(rename = "AccessKeyId", skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `eventTime`, Unix seconds.
    #[serde(rename = "EventTime")]
    pub event_time: i64,
    /// `eventSource`.
    #[serde(rename = "EventSource")]
    pub event_source: String,
    /// The caller's user name, if authenticated.
    #[serde(rename = "Username", skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The resources the call touched.
    #[serde(rename = "Resources")]
    pub resources: Vec<EventResource>,
    /// The whole record, as written to the audit log.
    #[serde(rename = "CloudTrailEvent")]
    pub cloudtrail_event: String,
}

/// A resource of an [`Event`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventResource {
    /// e.g. `AWS::KMS::Key`.
    #[serde(rename = "ResourceType")]
    pub resource_type: String,
    /// The resource's ARN.
    #[serde(rename = "ResourceName")]
    pub resource_name: String,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Page {
    /// The events.
    #[serde(rename = "Events")]
    pub events: Vec<Event>,
    /// Present when more events match.
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// One audit record, read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its order position.
    pub position: Position,
    /// The LookupEvents view of it.
    pub event: Event,
    /// `requestID`.
    pub request_id: String,
    /// `additionalEventData.auditStage` (`intent`, `outcome`), if any.
    pub stage: Option<String>,
    /// `errorCode`, if the call failed.
    pub error_code: Option<String>,
    /// `awsRegion`.
    pub region: Option<String>,
}

/// Reads one line of the audit log; `None` for a line that is not a record (e.g. cut short).
pub fn parse_record(line: &str) -> Option<Record> {
    let v: Value = serde_json::from_str(line).ok()?;
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let id = s("/eventID")?;
    let time = crate::dates::parse_rfc3339(v.get("eventTime")?.as_str()?)?;
    let arn = s("/userIdentity/arn");
    let username = s("/userIdentity/userName").or_else(|| arn.as_deref().map(user_name_of));
    let resources = v
        .get("resources")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some(EventResource {
                        resource_type: r.get("type")?.as_str()?.to_string(),
                        resource_name: r.get("ARN")?.as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let event = Event {
        event_id: id.clone(),
        event_name: s("/eventName").unwrap_or_default(),
        read_only: v.get("readOnly").and_then(Value::as_bool).unwrap_or(false).to_string(),
        access_key_id: s("/userIdentity/accessKeyId"),
        event_time: time,
        event_source: s("/eventSource").unwrap_or_default(),
        username,
        resources,
        cloudtrail_event: line.trim_end().to_string(),
    };
    Some(Record {
        position: Position { time, id },
        event,
        request_id: s("/requestID").unwrap_or_default(),
        stage: s("/additionalEventData/auditStage"),
        error_code: s("/errorCode"),
        region: s("/awsRegion"),
    })
}

/// The user name in a principal ARN: what follows its last `/` (`arn:aws:iam::…:user/ops` →
/// `ops`), or after `:` for the account root (`root`).
fn user_name_of(arn: &str) -> String {
    match arn.rsplit_once('/') {
        Some((_, name)) => name.to_string(),
        None => arn.rsplit(':').next().unwrap_or(arn).to_string(),
    }
}

impl Query {
    /// Whether a record passes the attribute and time filters (not the page position).
    pub fn matches(&self, r: &Record) -> bool {
        if self.insights {
            return false;
        }
        if self.start.is_some_and(|s| r.position.time < s) || self.end.is_some_and(|e| r.position.time > e) {
            return false;
        }
        if let (Some(want), Some(got)) = (&self.region, &r.region)
            && want != got
        {
            return false;
        }
        let Some((key, value)) = &self.attribute else { return true };
        attribute_matches(*key, value, r)
    }

    /// Whether the record comes after the page's start (strictly older than the token's).
    fn after_start(&self, r: &Record) -> bool {
        self.after.as_ref().is_none_or(|a| r.position < *a)
    }
}

/// Whether `r` has `value` for attribute `key` (as LookupEvents compares it).
pub fn attribute_matches(key: AttributeKey, value: &str, r: &Record) -> bool {
    let e = &r.event;
    match key {
        AttributeKey::EventId => e.event_id == value,
        AttributeKey::EventName => e.event_name == value,
        AttributeKey::ReadOnly => e.read_only.eq_ignore_ascii_case(value),
        AttributeKey::Username => e.username.as_deref() == Some(value),
        AttributeKey::ResourceType => e.resources.iter().any(|x| x.resource_type == value),
        AttributeKey::ResourceName => e
            .resources
            .iter()
            .any(|x| x.resource_name == value || x.resource_name.rsplit_once('/').is_some_and(|(_, id)| id == value)),
        AttributeKey::EventSource => e.event_source == value,
        AttributeKey::AccessKeyId => e.access_key_id.as_deref() == Some(value),
    }
}

/// The audit file and its rotated copies (`<name>.<anything>`, gzip-compressed when they end in
/// `.gz`), oldest first: rotated copies sorted by name (their suffixes are UTC timestamps or
/// logrotate's numbers, where a larger number is older), the live file last.
pub fn audit_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(RotatedOrder, PathBuf)> = crate::audit_rotate::rotated_copies(path)
        .into_iter()
        .map(|(suffix, p)| (RotatedOrder::of(&suffix), p))
        .collect();
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(path.to_path_buf());
    out
}

/// Sort key of a rotated copy: logrotate's numbered copies (`.1`, `.2.gz`) oldest (largest)
/// first, then timestamped ones in name order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RotatedOrder {
    Numbered(Reverse<u64>),
    Named(String),
}

impl RotatedOrder {
    fn of(suffix: &str) -> Self {
        let base = suffix.strip_suffix(".gz").unwrap_or(suffix);
        match base.parse::<u64>() {
            Ok(n) => RotatedOrder::Numbered(Reverse(n)),
            Err(_) => RotatedOrder::Named(base.to_string()),
        }
    }
}

/// Reads every record of `files` in order, handing each to `f`. A line that is not a record is
/// skipped; an unreadable file is an error.
pub fn for_each_record(files: &[PathBuf], mut f: impl FnMut(Record)) -> Result<(), LookupError> {
    for path in files {
        let io = |e: std::io::Error| LookupError::Io { path: path.display().to_string(), reason: e.to_string() };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            // The live file may not exist yet, and a rotated copy may be removed by retention
            // while the search runs.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let reader: Box<dyn Read> = if path.extension().is_some_and(|x| x == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut lines = BufReader::with_capacity(256 * 1024, reader);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if let Some(r) = parse_record(&line) {
                        f(r);
                    }
                }
                // A line that is not UTF-8 is skipped, not fatal.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(())
}

/// Records as the search sees them: each outcome stands for its call, and an intent without an
/// outcome (the server stopped in between) stands on its own.
pub fn calls(files: &[PathBuf], mut f: impl FnMut(Record)) -> Result<(), LookupError> {
    let mut pending: HashMap<String, Record> = HashMap::new();
    for_each_record(files, |r| match r.stage.as_deref() {
        Some("intent") => {
            pending.insert(r.request_id.clone(), r);
        }
        Some("outcome") => {
            pending.remove(&r.request_id);
            f(r);
        }
        _ => f(r),
    })?;
    for (_, r) in pending {
        f(r);
    }
    Ok(())
}

/// One page of the events matching `q` in `files`, newest first.
pub fn lookup(files: &[PathBuf], q: &Query) -> Result<Page, LookupError> {
    // The newest `max_results + 1` matches after the start: a min-heap on position keeps the
    // largest; the extra one tells whether there is a next page.
    let keep = q.max_results + 1;
    let mut heap: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(keep + 1);
    calls(files, |r| {
        if !q.matches(&r) || !q.after_start(&r) {
            return;
        }
        heap.push(Reverse(Ranked(r)));
        if heap.len() > keep {
            heap.pop();
        }
    })?;
    let mut found: Vec<Record> = heap.into_iter().map(|Reverse(Ranked(r))| r).collect();
    found.sort_by(|a, b| b.position.cmp(&a.position));
    let more = found.len() > q.max_results;
    found.truncate(q.max_results);
    let next_token = if more { found.last().map(|r| encode_token(&r.position, q)) } else { None };
    Ok(Page { events: found.into_iter().map(|r| r.event).collect(), next_token })
}

struct Ranked(Record);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.0.position == other.0.position
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.position.cmp(&other.0.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, time: &str, name: &str, extra: &str) -> String {
        format!(
            r#"{{"eventID":"{id}","eventTime":"{time}","eventName":"{name}","eventSource":"kms.amazonaws.com","readOnly":{ro},"requestID":"r-{id}","userIdentity":{{"accessKeyId":"AKIA1","arn":"arn:aws:iam::111122223333:user/ops"}},"resources":[{{"ARN":"arn:aws:kms:us-east-1:111122223333:key/k1","type":"AWS::KMS::Key"}}]{extra}}}"#,
            ro = name == "Decrypt"
        ) + "\n"
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn request_validation() {
        assert_eq!(parse_request(b"").unwrap().max_results, 50);
        let q = parse_request(
            br#"{"LookupAttributes":[{"AttributeKey":"EventName","AttributeValue":"Decrypt"}],"StartTime":1700000000,"EndTime":1700000100.5,"MaxResults":3}"#,
        )
        .unwrap();
        assert_eq!(q.attribute, Some((AttributeKey::EventName, "Decrypt".into())));
        assert_eq!((q.start, q.end, q.max_results), (Some(1_700_000_000), Some(1_700_000_100), 3));
        let code = |b: &[u8]| parse_request(b).unwrap_err().code();
        assert_eq!(code(br#"{"MaxResults":0}"#), "InvalidMaxResultsException");
        assert_eq!(code(br#"{"MaxResults":51}"#), "InvalidMaxResultsException");
        assert_eq!(code(br#"{"StartTime":20,"EndTime":10}"#), "InvalidTimeRangeException");
        assert_eq!(code(br#"{"EventCategory":"data"}"#), "InvalidEventCategoryException");
        assert_eq!(code(br#"{"NextToken":"nonsense"}"#), "InvalidNextTokenException");
        assert_eq!(
            code(br#"{"LookupAttributes":[{"AttributeKey":"Color","AttributeValue":"x"}]}"#),
            "InvalidLookupAttributesException"
        );
        assert_eq!(
            code(
                br#"{"LookupAttributes":[{"AttributeKey":"EventName","AttributeValue":"a"},{"AttributeKey":"EventName","AttributeValue":"b"}]}"#
            ),
            "InvalidLookupAttributesException"
        );
        let long = format!(
            r#"{{"LookupAttributes":[{{"AttributeKey":"EventName","AttributeValue":"{}"}}]}}"#,
            "_".repeat(1001)
        );
        assert_eq!(code(long.as_bytes()), "InvalidLookupAttributesException");
        assert_eq!(code(b"[1,2"), "SerializationException");
        assert_eq!(code(br#"{"Bogus":1}"#), "SerializationException");
    }

    #[test]
    fn pages_newest_first_with_tokens_bound_to_the_query() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..7 {
            text += &line(&format!("e{i}"), &format!("2026-12-01T10:00:0{i}Z"), "Decrypt", "");
        }
        text += &line("x", "2026-12-01T10:00:09Z", "Encrypt", "");
        let path = write(dir.path(), "audit.log", &text);
        let files = audit_files(&path);
        let mut q = parse_request(
            br#"{"LookupAttributes":[{"AttributeKey":"EventName","AttributeValue":"Decrypt"}],"MaxResults":3}"#,
        )
        .unwrap();
        let mut seen = Vec::new();
        loop {
            let page = lookup(&files, &q).unwrap();
            seen.extend(page.events.iter().map(|e| e.event_id.clone()));
            let Some(token) = page.next_token else { break };
            let body = format!(
                r#"{{"LookupAttributes":[{{"AttributeKey":"EventName","AttributeValue":"Decrypt"}}],"MaxResults":3,"NextToken":"{token}"}}"#
            );
            q = parse_request(body.as_bytes()).unwrap();
            // The same token with another filter is refused.
            let other = format!(r#"{{"MaxResults":3,"NextToken":"{token}"}}"#);
            assert_eq!(parse_request(other.as_bytes()).unwrap_err().code(), "InvalidNextTokenException");
        }
        assert_eq!(seen, ["e6", "e5", "e4", "e3", "e2", "e1", "e0"]);
    }

    #[test]
    fn filters_by_each_attribute_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "audit.log",
            &(line("a", "2026-12-01T10:00:00Z", "Decrypt", "")
                + &line("b", "2026-12-01T11:00:00Z", "CreateKey", "")
                + "not json\n"),
        );
        let files = audit_files(&path);
        let ids = |body: &str| -> Vec<String> {
            lookup(&files, &parse_request(body.as_bytes()).unwrap())
                .unwrap()
                .events
                .into_iter()
                .map(|e| e.event_id)
                .collect()
        };
        let attr = |k: &str, v: &str| {
            ids(&format!(r#"{{"LookupAttributes":[{{"AttributeKey":"{k}","AttributeValue":"{v}"}}]}}"#))
        };
        assert_eq!(attr("ReadOnly", "true"), ["a"]);
        assert_eq!(attr("ReadOnly", "false"), ["b"]);
        assert_eq!(attr("EventId", "b"), ["b"]);
        assert_eq!(attr("Username", "ops"), ["b", "a"]);
        assert_eq!(attr("Username", "dev"), Vec::<String>::new());
        assert_eq!(attr("AccessKeyId", "AKIA1"), ["b", "a"]);
        assert_eq!(attr("ResourceName", "k1"), ["b", "a"]);
        assert_eq!(attr("ResourceName", "arn:aws:kms:us-east-1:111122223333:key/k1"), ["b", "a"]);
        assert_eq!(attr("ResourceType", "AWS::KMS::Key"), ["b", "a"]);
        assert_eq!(attr("EventSource", "kms.amazonaws.com"), ["b", "a"]);
        let t = crate::dates::parse_rfc3339("2026-12-01T10:30:00Z").unwrap();
        assert_eq!(ids(&format!(r#"{{"StartTime":{t}}}"#)), ["b"]);
        assert_eq!(ids(&format!(r#"{{"EndTime":{t}}}"#)), ["a"]);
        assert_eq!(ids(r#"{"EventCategory":"insight"}"#), Vec::<String>::new());
    }

    #[test]
    fn each_region_sees_its_own_events() {
        let dir = tempfile::tempdir().unwrap();
        let region = |r: &str| format!(r#","awsRegion":"{r}""#);
        let text = line("e", "2026-12-01T10:00:00Z", "CreateKey", &region("us-east-1"))
            + &line("w", "2026-12-01T10:00:01Z", "CreateKey", &region("us-west-2"));
        let path = write(dir.path(), "audit.log", &text);
        let ids = |r: Option<&str>| -> Vec<String> {
            let mut q = parse_request(b"{}").unwrap();
            q.region = r.map(str::to_string);
            lookup(&audit_files(&path), &q).unwrap().events.into_iter().map(|e| e.event_id).collect()
        };
        assert_eq!(ids(Some("us-west-2")), ["w"]);
        assert_eq!(ids(Some("us-east-1")), ["e"]);
        assert_eq!(ids(Some("eu-west-1")), Vec::<String>::new());
        assert_eq!(ids(None), ["w", "e"]);
    }

    #[test]
    fn an_outcome_stands_for_its_call_and_an_orphan_intent_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stage = |s: &str| format!(r#","additionalEventData":{{"auditStage":"{s}"}}"#);
        let mut text = line("i1", "2026-12-01T10:00:00Z", "CreateKey", &stage("intent"));
        text += &line("o1", "2026-12-01T10:00:01Z", "CreateKey", &stage("outcome")).replace("r-o1", "r-i1");
        text += &line("i2", "2026-12-01T10:00:02Z", "ScheduleKeyDeletion", &stage("intent"));
        let path = write(dir.path(), "audit.log", &text);
        let page = lookup(&audit_files(&path), &parse_request(b"{}").unwrap()).unwrap();
        let ids: Vec<_> = page.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["i2", "o1"]);
    }

    #[test]
    fn rotated_copies_are_read_oldest_first_including_gzip() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let live = write(dir.path(), "audit.log", &line("new", "2026-12-03T00:00:00Z", "Decrypt", ""));
        write(dir.path(), "audit.log.1", &line("mid", "2026-12-02T00:00:00Z", "Decrypt", ""));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(line("old", "2026-12-01T00:00:00Z", "Decrypt", "").as_bytes()).unwrap();
        std::fs::write(dir.path().join("audit.log.2.gz"), gz.finish().unwrap()).unwrap();
        write(dir.path(), "other.log", &line("no", "2026-12-04T00:00:00Z", "Decrypt", ""));
        let files = audit_files(&live);
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(names, ["audit.log.2.gz", "audit.log.1", "audit.log"]);
        let page = lookup(&files, &parse_request(b"{}").unwrap()).unwrap();
        let ids: Vec<_> = page.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["new", "mid", "old"]);
    }

    proptest::proptest! {
        #[test]
        fn random_requests_and_lines_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_request(&body);
            if let Ok(s) = std::str::from_utf8(&body) {
                let _ = parse_record(s);
            }
        }
    }
}
