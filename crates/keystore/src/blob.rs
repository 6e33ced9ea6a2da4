//! The key store's ciphertext blob: self-describing and versioned.
//!
//! Version 1 layout (61-byte header, then the AEAD output):
//!
//! ```text
//! offset  size  field
//! 0       1     format version = 0x01
//! 1       16    key id (UUID, binary)
//! 17      32    key material id (random per key version)
//! 49      12    AES-GCM nonce
//! 61      n+16  AES-256-GCM ciphertext ‖ tag
//! ```
//!
//! The AAD is the 49-byte prefix (version, key id, material id) followed by the canonical
//! encoding of the encryption context ([`crate::context`]), so neither the header nor the
//! context can be altered without failing authentication.

use crate::crypto::TAG_LEN;
use crate::error::{Error, Result};

/// Current blob format version.
pub const VERSION_1: u8 = 0x01;
/// Size of the authenticated header (version, key id, material id).
pub const HEADER_LEN: usize = 1 + 16 + 32;
/// Smallest valid v1 blob: header, nonce, empty ciphertext, tag.
pub const MIN_LEN: usize = HEADER_LEN + 12 + TAG_LEN;
/// Largest blob accepted by the parser (AWS's CiphertextBlob limit).
pub const MAX_LEN: usize = 6144;

/// A parsed (not yet authenticated) blob, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob<'a> {
    /// Binary UUID of the key.
    pub key_id: [u8; 16],
    /// Material id of the key version that encrypted it.
    pub material_id: [u8; 32],
    /// The authenticated header bytes.
    pub header: &'a [u8],
    /// `nonce ‖ ciphertext ‖ tag`.
    pub sealed: &'a [u8],
}

/// Parses a blob. Never panics; every malformed input is an [`Error::InvalidCiphertext`].
pub fn parse(input: &[u8]) -> Result<Blob<'_>> {
    let Some(&version) = input.first() else {
        return Err(Error::InvalidCiphertext("empty"));
    };
    if version != VERSION_1 {
        return Err(Error::InvalidCiphertext("unknown format version"));
    }
    if input.len() < MIN_LEN {
        return Err(Error::InvalidCiphertext("truncated"));
    }
    if input.len() > MAX_LEN {
        return Err(Error::InvalidCiphertext("too long"));
    }
    let (header, sealed) = input.split_at(HEADER_LEN);
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(&header[1..17]);
    let mut material_id = [0u8; 32];
    material_id.copy_from_slice(&header[17..49]);
    Ok(Blob { key_id, material_id, header, sealed })
}

/// Writes the header of a v1 blob into `out`.
pub fn write_header(key_id: &[u8; 16], material_id: &[u8; 32], out: &mut Vec<u8>) {
    out.push(VERSION_1);
    out.extend_from_slice(key_id);
    out.extend_from_slice(material_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_empty_unknown_and_short() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[2u8; 100]).is_err());
        assert!(parse(&[1u8; MIN_LEN - 1]).is_err());
        assert!(parse(&[1u8; MAX_LEN + 1]).is_err());
        assert!(parse(&[1u8; MIN_LEN]).is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }

        #[test]
        fn header_round_trips(k in any::<[u8; 16]>(), m in any::<[u8; 32]>(), tail in proptest::collection::vec(any::<u8>(), 28..100)) {
            let mut out = Vec::new();
            write_header(&k, &m, &mut out);
            out.extend_from_slice(&tail);
            let b = parse(&out).unwrap();
            prop_assert_eq!(b.key_id, k);
            prop_assert_eq!(b.material_id, m);
            prop_assert_eq!(b.sealed, &tail[..]);
        }
    }
}
