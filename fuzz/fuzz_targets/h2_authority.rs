//! Feeds arbitrary bytes after the HTTP/2 client preface into the
//! `:authority` rewriter, once in one piece and once split at a
//! fuzzer-chosen point. Neither may panic, and both must agree.
#![no_main]

use envelope_h2authority::{PREFACE, Rewriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, body) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, data),
    };
    let mut input = Vec::with_capacity(PREFACE.len() + body.len());
    input.extend_from_slice(PREFACE);
    input.extend_from_slice(body);
    let split = split % (input.len() + 1);

    let mut whole = Rewriter::new();
    let mut whole_out = Vec::new();
    let whole_result = whole.feed(&input, &mut whole_out);

    let mut parts = Rewriter::new();
    let mut parts_out = Vec::new();
    let parts_result =
        parts.feed(&input[..split], &mut parts_out).and_then(|()| parts.feed(&input[split..], &mut parts_out));

    assert_eq!(whole_result, parts_result);
    assert_eq!(whole_out, parts_out);
    assert_eq!(whole.rewrites(), parts.rewrites());
});
