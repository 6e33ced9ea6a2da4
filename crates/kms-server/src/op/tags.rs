//! Tags: TagResource, UntagResource, ListResourceTags.

use serde::Serialize;

use super::{Call, Operation, Reply, decode_marker, empty, encode_marker, not_pending};
use crate::error::{KmsError, Result, Subject};
use crate::ids::Forms;
use crate::protocol::{Raw, Validator, tag_rules};

/// A validated tag request.
#[derive(Debug)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Request {
    ListResourceTags { key_id: String, limit: usize, marker: Option<String> },
    TagResource { key_id: String, tags: Vec<(String, String)> },
    UntagResource { key_id: String, tag_keys: Vec<String> },
}

pub(super) fn parse(op: Operation, raw: &Raw) -> Result<Request> {
    let mut v = Validator::default();
    Ok(match op {
        Operation::TagResource => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            v.required("tags", raw.tags.as_ref().map(|_| ()));
            let tags = v.tags(&raw.tags);
            v.finish()?;
            tag_rules(&tags)?;
            Request::TagResource { key_id: key_id.unwrap_or_default(), tags }
        }
        Operation::UntagResource => {
            let key_id = v.key_id("keyId", raw.key_id.clone());
            let tag_keys = v.required("tagKeys", raw.tag_keys.clone());
            for k in tag_keys.iter().flatten() {
                v.len("tagKeys.member", k, 1, 128);
            }
            v.finish()?;
            Request::UntagResource { key_id: key_id.unwrap_or_default(), tag_keys: tag_keys.unwrap_or_default() }
        }
        // ListResourceTags.
        _ => {
            let key_id = v.key_id("keyId", raw.key_id.clone()).unwrap_or_default();
            let limit = v.limit(raw.limit, 1000, 50);
            let marker = v.marker(raw.marker.clone());
            if let Some(m) = &raw.include_key_material {
                v.one_of("includeKeyMaterial", m, &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]);
            }
            v.finish()?;
            // ListResourceTags pages hold at most 50 tags whatever the limit.
            Request::ListResourceTags { key_id, limit: limit.min(50), marker }
        }
    })
}

pub(super) fn run(req: Request, call: &Call<'_>) -> Result<Reply> {
    let s = call.server();
    match req {
        Request::TagResource { key_id, tags } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "TagResource")?;
            not_pending(&k)?;
            // A key ending up with more than MAX_TAGS: TagException "Too many tags", checked in
            // the write's own transaction (the store's limits, set by Server::new).
            s.store.tag(&k.r, &tags).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::UntagResource { key_id, tag_keys } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "UntagResource")?;
            not_pending(&k)?;
            s.store.untag(&k.r, &tag_keys).map_err(|e| KmsError::from_store(e, Subject::Key(&k.arn)))?;
            empty()
        }
        Request::ListResourceTags { key_id, limit, marker } => {
            let k = call.resolve(&key_id, Forms::KeyOnly)?;
            call.allow(&k, "ListResourceTags")?;
            let after = marker.map(|m| decode_marker(&m, "t1")).transpose()?;
            let a = call.attributes(&k)?;
            let items: Vec<_> =
                a.tags.iter().filter(|(t, _)| after.as_deref().is_none_or(|m| t.as_str() > m)).collect();
            let truncated = items.len() > limit;
            let page: Vec<TagOut> =
                items.iter().take(limit).map(|(t, v)| TagOut { tag_key: t.clone(), tag_value: v.clone() }).collect();
            let next_marker = if truncated { page.last().map(|t| encode_marker("t1", &t.tag_key)) } else { None };
            call.reply(&ListTagsResponse { tags: page, next_marker, truncated })
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TagOut {
    tag_key: String,
    tag_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListTagsResponse {
    tags: Vec<TagOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_marker: Option<String>,
    truncated: bool,
}
