//! Plugin ciphertexts as they arrive in Decrypt: the envelope, then the key-store blob (the
//! embedded backend and the key server).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_kind, blob)) = envelope_plugin::format::open_envelope(data) {
        let _ = envelope_keystore::blob::parse(blob);
    }
    let _ = envelope_keystore::blob::parse(data);
});
