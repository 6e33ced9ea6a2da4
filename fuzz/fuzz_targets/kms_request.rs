//! Arbitrary bytes into the key server's request parsing: the `X-Amz-Target` parser, the
//! JSON body parser/validator of every operation, the audit log's request sanitizer, and the
//! SigV4 date parser, and key identifiers (key id, key ARN, alias name, alias ARN). None may
//! panic.
#![no_main]

use std::sync::LazyLock;

use envelope_kms_server::ids::{Forms, Names};
use envelope_kms_server::{Operation, parse_request};
use libfuzzer_sys::fuzz_target;

static NAMES: LazyLock<Names> = LazyLock::new(|| Names::new("us-east-1", "111122223333"));

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let op = Operation::ALL[usize::from(selector) % Operation::ALL.len()];
    let _ = parse_request(op, body);
    let _ = envelope_kms_server::audit::sanitized_request(body);
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = Operation::from_target(s);
        let _ = envelope_kms_server::dates::parse_amz_date(s);
        let _ = NAMES.resolve(s, Forms::Any);
        let _ = NAMES.resolve(s, Forms::KeyOnly);
    }
});
