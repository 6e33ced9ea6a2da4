//! envelope-inspect integration tests, one binary (one link step):
//! recorded and computed vectors (spec §11), writer → classify → decrypt → object round trips,
//! EncryptionConfiguration parsing, and property tests (no panics on any input).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod config;
mod props;
mod roundtrip;
mod vectors;

/// Hex to bytes; test data only.
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).expect("test vector hex")
}
