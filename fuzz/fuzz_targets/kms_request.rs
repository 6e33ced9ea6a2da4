//! Arbitrary bytes into the key server's request parsing: the `X-Amz-Target` parser, the
//! JSON body parser/validator of every operation, the audit log's request sanitizer, and the
//! SigV4 date parser. None may panic.
#![no_main]

use envelope_kms_server::{Operation, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let op = Operation::ALL[usize::from(selector) % Operation::ALL.len()];
    let _ = parse_request(op, body);
    let _ = envelope_kms_server::audit::sanitized_request(body);
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = Operation::from_target(s);
        let _ = envelope_kms_server::dates::parse_amz_date(s);
    }
});
