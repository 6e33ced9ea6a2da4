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
//!
//! [`seal`] and [`open`] are the whole AEAD framing, as pure functions of the key, the nonce and
//! the context: the store only finds the key and draws the nonce.

use zeroize::Zeroizing;

use crate::context::{self, EncryptionContext};
use crate::crypto::{AeadKey, NONCE_LEN, TAG_LEN};
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

/// The additional authenticated data of a blob: its header, then the canonical context.
pub fn aad(header: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
    let ctx_bytes = context::encode(ctx);
    let mut aad = Vec::with_capacity(header.len() + ctx_bytes.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&ctx_bytes);
    aad
}

/// Makes a v1 blob of `plaintext` under `key` (the material `material_id` of key `key_id`) with
/// `nonce`, bound to `ctx`. Deterministic in its inputs; the caller must never reuse a nonce with
/// the same key (the store draws a fresh random one per blob).
pub fn seal(
    key: &AeadKey,
    key_id: &[u8; 16],
    material_id: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    write_header(key_id, material_id, &mut out);
    let aad = aad(&out, ctx);
    key.seal_with_nonce(nonce, &aad, plaintext, &mut out)?;
    Ok(out)
}

/// Opens a parsed blob under `key` (the material its header names) with the context it was
/// made with. An altered blob or another context is [`Error::AuthenticationFailed`].
pub fn open(key: &AeadKey, blob: &Blob<'_>, ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>> {
    key.open(&aad(blob.header, ctx), blob.sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn seal_is_deterministic_and_opens_only_with_its_context() {
        let key = AeadKey::new(&[9u8; 32]).unwrap();
        let (kid, mid, nonce) = ([1u8; 16], [2u8; 32], [3u8; NONCE_LEN]);
        let c = ctx(&[("a", "1")]);
        let b1 = seal(&key, &kid, &mid, nonce, b"secret", &c).unwrap();
        let b2 = seal(&key, &kid, &mid, nonce, b"secret", &c).unwrap();
        assert_eq!(b1, b2, "same inputs, same blob");
        assert_eq!(b1.len(), MIN_LEN + 6);
        assert_eq!(&b1[HEADER_LEN..HEADER_LEN + NONCE_LEN], &nonce);
        let parsed = parse(&b1).unwrap();
        assert_eq!((parsed.key_id, parsed.material_id), (kid, mid));
        assert_eq!(&open(&key, &parsed, &c).unwrap()[..], b"secret");
        assert!(matches!(open(&key, &parsed, &ctx(&[("a", "2")])), Err(Error::AuthenticationFailed)));
        assert!(matches!(open(&key, &parsed, &ctx(&[])), Err(Error::AuthenticationFailed)));
        let other = AeadKey::new(&[8u8; 32]).unwrap();
        assert!(matches!(open(&other, &parsed, &c), Err(Error::AuthenticationFailed)));
        // The header is authenticated: another material id in it fails.
        let mut moved = b1.clone();
        moved[20] ^= 1;
        assert!(matches!(open(&key, &parse(&moved).unwrap(), &c), Err(Error::AuthenticationFailed)));
        let other_nonce = seal(&key, &kid, &mid, [4u8; NONCE_LEN], b"secret", &c).unwrap();
        assert_ne!(b1, other_nonce);
    }

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
