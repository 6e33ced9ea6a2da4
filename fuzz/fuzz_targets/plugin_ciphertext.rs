//! Plugin ciphertexts as they arrive in Decrypt: the envelope (format 1 or 2), then the key-store
//! blob (the embedded backend and the key server), or the local KEK layer's body and the wrapped
//! local KEK inside a KMS v1 body.
#![no_main]

use envelope_plugin::format::{Format, open_any, open_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match open_any(data) {
        Ok((Format::Direct, _kind, blob)) => {
            let _ = envelope_keystore::blob::parse(blob);
        }
        Ok((Format::LocalKek, _kind, body)) => {
            if let Ok(b) = envelope_plugin::kek::parse_body(body)
                && let Some(wrapped) = b.wrapped
                && let Ok((_, blob)) = open_envelope(wrapped)
            {
                let _ = envelope_keystore::blob::parse(blob);
            }
        }
        _ => {}
    }
    let _ = envelope_keystore::blob::parse(data);
});
