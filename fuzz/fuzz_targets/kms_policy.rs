//! Key policy and identity policy documents (CreateKey/PutKeyPolicy bodies, the credentials
//! file's `policy`): both parsers, then every accepted document evaluated and combined with
//! `authorize` for a few callers, actions and contexts; and the wildcard matcher on its own.
//! None of it may panic.
#![no_main]

use std::collections::BTreeMap;

use envelope_kms_server::policy::{self, GrantRequest, Query};
use libfuzzer_sys::fuzz_target;

const ACCOUNT: &str = "111122223333";
const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    let empty = BTreeMap::new();
    let operations = ["Decrypt".to_string(), "CreateGrant".to_string()];
    let grant = GrantRequest {
        operations: &operations,
        grantee: "arn:aws:iam::111122223333:role/worker",
        retiring: Some("arn:aws:iam::111122223333:user/admin"),
    };
    let context = BTreeMap::from([("Purpose".to_string(), "fuzz".to_string()), ("é".to_string(), "*".to_string())]);
    let queries = [
        Query {
            principal: "arn:aws:iam::111122223333:user/app",
            action: "Encrypt",
            resource: KEY_ARN,
            context: &context,
            grant: None,
        },
        Query {
            principal: "arn:aws:iam::111122223333:root",
            action: "PutKeyPolicy",
            resource: KEY_ARN,
            context: &empty,
            grant: None,
        },
        Query {
            principal: "arn:aws:iam::111122223333:user/app",
            action: "CreateGrant",
            resource: KEY_ARN,
            context: &empty,
            grant: Some(&grant),
        },
        Query {
            principal: "arn:aws:iam::444455556666:role/x",
            action: "Decrypt",
            resource: "*",
            context: &context,
            grant: None,
        },
        Query { principal: "", action: "", resource: "", context: &empty, grant: None },
    ];
    let key = policy::parse(text).ok();
    let identity = policy::parse_identity(text).ok();
    for q in &queries {
        if let Some(p) = &key {
            let _ = policy::evaluate(p, q);
        }
        if let Some(p) = &identity {
            let _ = policy::evaluate(p, q);
        }
        let _ = policy::authorize(key.as_ref(), identity.as_ref(), ACCOUNT, q);
        let _ = policy::authorize(None, identity.as_ref(), ACCOUNT, q);
    }

    let _ = policy::account_root(text);
    let _ = policy::account_of(text);
    // The matcher itself: pattern and text split at the first NUL.
    if let Some((pattern, subject)) = text.split_once('\0') {
        let _ = policy::glob(pattern, subject);
    }
});
