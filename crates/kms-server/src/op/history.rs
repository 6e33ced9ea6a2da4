//! The audit history: CloudTrail's `LookupEvents` on the key server's endpoint
//! (`X-Amz-Target: com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents`, signed
//! for service `cloudtrail`), answered from the audit log and its rotated copies by
//! [`crate::lookup`]. Authorized by the caller's identity policy (`cloudtrail:LookupEvents`,
//! resource `*`); a key policy cannot grant it.

use super::{Call, Operation, Reply};
use crate::error::{KmsError, Result};
use crate::lookup::{self, LookupError, Query};
use crate::protocol::to_body;

/// The policy action of a lookup.
pub const LOOKUP_ACTION: &str = "cloudtrail:LookupEvents";

/// A validated history request.
#[derive(Debug)]
pub enum Request {
    /// `LookupEvents`.
    LookupEvents(Query),
}

/// Parses a `LookupEvents` body (its members are CloudTrail's, not KMS's).
pub(crate) fn parse(op: Operation, body: &[u8]) -> Result<Request> {
    match op {
        Operation::LookupEvents => lookup::parse_request(body).map(Request::LookupEvents).map_err(error),
        _ => Err(KmsError::Internal(format!("{} is not a history operation", op.name()))),
    }
}

pub(crate) fn run(r: Request, call: &Call<'_>) -> Result<Reply> {
    match r {
        Request::LookupEvents(mut q) => {
            call.authorize_account(LOOKUP_ACTION)?;
            // Each region's history is its own, as in CloudTrail.
            q.region = Some(call.server().config().region.clone());
            let Some(log) = call.server().audit() else {
                return Err(KmsError::UnsupportedOperation(
                    "The audit log is off (--audit-log off): there is no history to search.".into(),
                ));
            };
            let page = lookup::lookup(&lookup::audit_files(log.path()), &q).map_err(error)?;
            // The events are the history itself: the lookup's own record does not repeat them
            // (CloudTrail records `responseElements: null` for LookupEvents).
            Ok(Reply { body: to_body(&page)?, key_arn: None, elements: None })
        }
    }
}

/// A file that cannot be read is an internal error (its path and reason are logged, not sent).
fn error(e: LookupError) -> KmsError {
    match e {
        LookupError::Io { .. } => KmsError::Internal(e.to_string()),
        LookupError::Serialization(m) => KmsError::Serialization(m),
        other => KmsError::Lookup(other),
    }
}
