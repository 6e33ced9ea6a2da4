//! The pkcs11 backend's ciphertext (inside the plugin envelope) and its key_id.
//!
//! Layout v1: `0x01 ‖ id length (1 byte, 1–64) ‖ CKA_ID ‖ IV (12) ‖ AES-256-GCM ciphertext ‖ tag (16)`.
//! Additional data: `"envelope-pkcs11-v1" ‖ the header (version ‖ id length ‖ CKA_ID) ‖ the
//! canonical encryption context` (the plugin's context carries the API, the key_id and the
//! annotations digest), so a ciphertext opens only with the same key object, the same key_id
//! and the same annotations.

use envelope_keystore::EncryptionContext;
use envelope_plugin::PluginError;

/// Blob format version.
pub const BLOB_V1: u8 = 0x01;
/// GCM IV length (96 bits).
pub const IV_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Longest CKA_ID accepted (envelope's keys use 16 bytes).
pub const MAX_ID_LEN: usize = 64;
const AAD_LABEL: &[u8] = b"envelope-pkcs11-v1";

/// A parsed blob, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pkcs11Blob<'a> {
    /// The header (version ‖ id length ‖ CKA_ID), bound into the additional data.
    pub header: &'a [u8],
    /// CKA_ID of the key object that made it.
    pub id: &'a [u8],
    /// The GCM IV.
    pub iv: &'a [u8],
    /// Ciphertext ‖ tag, as `C_Decrypt` with `CKM_AES_GCM` takes it.
    pub sealed: &'a [u8],
}

impl Pkcs11Blob<'_> {
    /// The KMS v2 key_id of the key object that made this blob.
    pub fn key_id(&self) -> String {
        pkcs11_key_id(self.id)
    }
}

/// The public KMS v2 key_id of a key object: `pkcs11-` + hex of the first 16 bytes of
/// SHA-256("envelope-pkcs11-key-id-v1" ‖ CKA_ID). A rotation creates a new object with a new
/// random CKA_ID, hence a new key_id.
pub fn pkcs11_key_id(id: &[u8]) -> String {
    let d =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &[b"envelope-pkcs11-key-id-v1".as_slice(), id].concat());
    format!("pkcs11-{}", hex::encode(&d.as_ref()[..16]))
}

/// The header of blobs made by the key object `id`.
pub fn header(id: &[u8]) -> Result<Vec<u8>, PluginError> {
    let len = u8::try_from(id.len()).ok().filter(|n| (1..=MAX_ID_LEN).contains(&usize::from(*n))).ok_or_else(|| {
        PluginError::Internal(format!("CKA_ID is {} bytes; 1 to {MAX_ID_LEN} are supported", id.len()))
    })?;
    let mut h = Vec::with_capacity(2 + id.len());
    h.push(BLOB_V1);
    h.push(len);
    h.extend_from_slice(id);
    Ok(h)
}

/// The GCM additional data for a blob with `header` under `ctx`.
pub fn aad(header: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_LABEL.len() + header.len() + 64);
    a.extend_from_slice(AAD_LABEL);
    a.extend_from_slice(header);
    a.extend_from_slice(&envelope_keystore::context::encode(ctx));
    a
}

/// Joins a blob.
pub fn encode(header: &[u8], iv: &[u8; IV_LEN], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + IV_LEN + sealed.len());
    out.extend_from_slice(header);
    out.extend_from_slice(iv);
    out.extend_from_slice(sealed);
    out
}

/// Parses a blob. Never panics; every malformed input is `InvalidCiphertext`.
pub fn parse(blob: &[u8]) -> Result<Pkcs11Blob<'_>, PluginError> {
    let bad = |m: &str| PluginError::InvalidCiphertext(format!("pkcs11 blob: {m}"));
    let (&version, rest) = blob.split_first().ok_or_else(|| bad("empty"))?;
    if version != BLOB_V1 {
        return Err(bad(&format!("unknown version 0x{version:02x}")));
    }
    let (&len, rest) = rest.split_first().ok_or_else(|| bad("truncated before the CKA_ID length"))?;
    let len = usize::from(len);
    if len == 0 || len > MAX_ID_LEN {
        return Err(bad(&format!("CKA_ID length {len} is out of range")));
    }
    if rest.len() < len + IV_LEN + TAG_LEN + 1 {
        return Err(bad("truncated"));
    }
    let (id, rest) = rest.split_at(len);
    let (iv, sealed) = rest.split_at(IV_LEN);
    Ok(Pkcs11Blob { header: &blob[..2 + len], id, iv, sealed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_key_id() {
        let id = [7u8; 16];
        let h = header(&id).unwrap();
        let b = encode(&h, &[1u8; IV_LEN], &[2u8; 48]);
        assert_eq!(b.len(), 2 + 16 + 12 + 48);
        let p = parse(&b).unwrap();
        assert_eq!(p.id, &id);
        assert_eq!(p.header, &h[..]);
        assert_eq!(p.iv, &[1u8; IV_LEN]);
        assert_eq!(p.sealed, &[2u8; 48]);
        let kid = p.key_id();
        assert!(kid.starts_with("pkcs11-") && kid.len() == 7 + 32, "{kid}");
        assert_ne!(kid, pkcs11_key_id(&[8u8; 16]));
        assert_eq!(kid, pkcs11_key_id(&id), "the key_id depends on the CKA_ID only");
    }

    #[test]
    fn header_limits() {
        assert!(header(&[]).is_err());
        assert!(header(&[0u8; MAX_ID_LEN + 1]).is_err());
        assert!(header(&[0u8; MAX_ID_LEN]).is_ok());
    }

    #[test]
    fn malformed_blobs_are_invalid_ciphertext() {
        let good = encode(&header(&[7u8; 16]).unwrap(), &[1u8; IV_LEN], &[2u8; 48]);
        for n in 0..2 + 16 + IV_LEN + TAG_LEN + 1 {
            assert!(matches!(parse(&good[..n]), Err(PluginError::InvalidCiphertext(_))), "{n}");
        }
        let mut v = good.clone();
        v[0] = 2;
        assert!(parse(&v).unwrap_err().to_string().contains("version"));
        let mut l = good.clone();
        l[1] = 0;
        assert!(parse(&l).is_err());
        l[1] = 65;
        assert!(parse(&l).is_err());
    }

    #[test]
    fn aad_binds_header_and_context() {
        let ctx = EncryptionContext::from([("envelope:api".to_string(), "kms-v2".to_string())]);
        let a = aad(&header(&[1u8; 16]).unwrap(), &ctx);
        assert_ne!(a, aad(&header(&[2u8; 16]).unwrap(), &ctx));
        assert_ne!(a, aad(&header(&[1u8; 16]).unwrap(), &EncryptionContext::new()));
        assert!(a.starts_with(b"envelope-pkcs11-v1\x01\x10"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_inverts_encode(id in proptest::collection::vec(any::<u8>(), 1..=MAX_ID_LEN),
                                iv in any::<[u8; IV_LEN]>(),
                                sealed in proptest::collection::vec(any::<u8>(), TAG_LEN + 1..200)) {
            let h = header(&id).unwrap();
            let b = encode(&h, &iv, &sealed);
            let p = parse(&b).unwrap();
            prop_assert_eq!(p.id, &id[..]);
            prop_assert_eq!(p.iv, &iv[..]);
            prop_assert_eq!(p.sealed, &sealed[..]);
        }
    }
}
