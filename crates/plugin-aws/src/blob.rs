//! The AWS backend's ciphertext layout and key_id derivation. Pure functions; the parser never
//! panics.
//!
//! ```text
//! 0x01 (layout version) ‖ u16 BE length of the key ARN ‖ key ARN (UTF-8)
//!      ‖ key_id digest (16 bytes) ‖ AWS CiphertextBlob (≥ 1 byte)
//! ```
//!
//! The key ARN says which key Decrypt must use (never the alias: an alias may move to another
//! key). The digest is the one from which the KMS v2 key_id was formed at encrypt time, so
//! [`key_id_of`](crate::AwsBackend) needs no remote call. The key_id is also bound into the AWS
//! encryption context by the plugin, so altering these bytes makes Decrypt fail.

use envelope_plugin::PluginError;

/// Layout version of [`AwsBlob`].
pub const BLOB_V1: u8 = 0x01;
/// Length of the key_id digest stored in every blob.
pub const KEY_ID_DIGEST_LEN: usize = 16;
/// Longest key ARN accepted (the AWS limit on ARNs).
pub const MAX_ARN_LEN: usize = 2048;
/// Prefix of every key_id this backend reports.
pub const KEY_ID_PREFIX: &str = "aws-";

/// Domain-separation label of the key_id hash.
const KEY_ID_LABEL: &[u8] = b"envelope-aws-key-id-v1";

/// The first 16 bytes of SHA-256("envelope-aws-key-id-v1" ‖ key ARN ‖ 0x00 ‖ material id).
///
/// The NUL separates the ARN from the material id (neither contains one), so distinct pairs never
/// hash the same input. With no material id known, the hash covers the ARN alone.
pub fn key_id_digest(key_arn: &str, material_id: Option<&str>) -> [u8; KEY_ID_DIGEST_LEN] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(KEY_ID_LABEL);
    ctx.update(key_arn.as_bytes());
    if let Some(m) = material_id {
        ctx.update(&[0]);
        ctx.update(m.as_bytes());
    }
    let d = ctx.finish();
    let mut out = [0u8; KEY_ID_DIGEST_LEN];
    out.copy_from_slice(&d.as_ref()[..KEY_ID_DIGEST_LEN]);
    out
}

/// The public KMS v2 key_id for a digest: `aws-` + 32 hex digits.
pub fn key_id_from_digest(d: &[u8; KEY_ID_DIGEST_LEN]) -> String {
    format!("{KEY_ID_PREFIX}{}", hex::encode(d))
}

/// The KMS v2 key_id of a key version: changes whenever the key's current material changes
/// (rotation), and differs between keys (a re-created key has a new ARN).
pub fn aws_key_id(key_arn: &str, material_id: Option<&str>) -> String {
    key_id_from_digest(&key_id_digest(key_arn, material_id))
}

/// A parsed backend blob, borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsBlob<'a> {
    /// ARN of the key that made the ciphertext.
    pub key_arn: &'a str,
    /// Digest the key_id was formed from.
    pub key_id_digest: [u8; KEY_ID_DIGEST_LEN],
    /// The AWS `CiphertextBlob`.
    pub ciphertext: &'a [u8],
}

impl AwsBlob<'_> {
    /// The KMS v2 key_id recorded in the blob.
    pub fn key_id(&self) -> String {
        key_id_from_digest(&self.key_id_digest)
    }
}

/// Serializes a blob. Fails only on an ARN that could never come from a valid key.
pub fn encode(key_arn: &str, digest: &[u8; KEY_ID_DIGEST_LEN], ciphertext: &[u8]) -> Result<Vec<u8>, PluginError> {
    check_arn(key_arn).map_err(|m| PluginError::Internal(format!("key ARN from the KMS: {m}")))?;
    if ciphertext.is_empty() {
        return Err(PluginError::Internal("the KMS returned an empty CiphertextBlob".into()));
    }
    let arn_len = u16::try_from(key_arn.len()).map_err(|_| PluginError::Internal("key ARN is too long".into()))?;
    let mut out = Vec::with_capacity(3 + key_arn.len() + KEY_ID_DIGEST_LEN + ciphertext.len());
    out.push(BLOB_V1);
    out.extend_from_slice(&arn_len.to_be_bytes());
    out.extend_from_slice(key_arn.as_bytes());
    out.extend_from_slice(digest);
    out.extend_from_slice(ciphertext);
    Ok(out)
}

/// Parses a blob. Never panics; every failure is a specific
/// [`PluginError::InvalidCiphertext`].
pub fn parse(blob: &[u8]) -> Result<AwsBlob<'_>, PluginError> {
    let bad = |m: &str| PluginError::InvalidCiphertext(format!("aws backend blob: {m}"));
    let (version, rest) = blob.split_first().ok_or_else(|| bad("empty"))?;
    if *version != BLOB_V1 {
        return Err(bad(&format!("unknown layout version 0x{version:02x}")));
    }
    let (len, rest) = rest.split_at_checked(2).ok_or_else(|| bad("truncated before the key ARN length"))?;
    let arn_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let (arn, rest) = rest.split_at_checked(arn_len).ok_or_else(|| bad("truncated inside the key ARN"))?;
    let key_arn = std::str::from_utf8(arn).map_err(|_| bad("key ARN is not UTF-8"))?;
    check_arn(key_arn).map_err(|m| bad(&m))?;
    let (digest, ciphertext) =
        rest.split_at_checked(KEY_ID_DIGEST_LEN).ok_or_else(|| bad("truncated inside the key_id digest"))?;
    if ciphertext.is_empty() {
        return Err(bad("no AWS ciphertext"));
    }
    let mut key_id_digest = [0u8; KEY_ID_DIGEST_LEN];
    key_id_digest.copy_from_slice(digest);
    Ok(AwsBlob { key_arn, key_id_digest, ciphertext })
}

/// A key ARN: `arn:<partition>:kms:<region>:<account>:key/<id>`, printable ASCII, bounded.
fn check_arn(arn: &str) -> Result<(), String> {
    if arn.is_empty() || arn.len() > MAX_ARN_LEN {
        return Err(format!("key ARN length {} is outside 1..={MAX_ARN_LEN}", arn.len()));
    }
    if !arn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("key ARN has non-printable characters".into());
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "kms", _region, _account, resource]
            if !partition.is_empty() && resource.strip_prefix("key/").is_some_and(|id| !id.is_empty()) =>
        {
            Ok(())
        }
        _ => Err("not a KMS key ARN".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn round_trip_and_key_id() {
        let d = key_id_digest(ARN, Some("m1"));
        let b = encode(ARN, &d, b"ct").unwrap();
        let p = parse(&b).unwrap();
        assert_eq!(p.key_arn, ARN);
        assert_eq!(p.ciphertext, b"ct");
        assert_eq!(p.key_id(), aws_key_id(ARN, Some("m1")));
        assert!(p.key_id().starts_with("aws-"));
        assert_eq!(p.key_id().len(), 4 + 32);
    }

    #[test]
    fn key_id_changes_with_material_and_key() {
        let a = aws_key_id(ARN, Some("m1"));
        assert_ne!(a, aws_key_id(ARN, Some("m2")));
        assert_ne!(a, aws_key_id(ARN, None));
        assert_ne!(a, aws_key_id(&ARN.replace("1234abcd", "9999abcd"), Some("m1")));
        assert_eq!(a, aws_key_id(ARN, Some("m1")));
    }

    #[test]
    fn errors_are_specific() {
        let d = [7u8; 16];
        let good = encode(ARN, &d, b"x").unwrap();
        let msg = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert!(msg(&[]).contains("empty"));
        assert!(msg(&[2]).contains("layout version"));
        assert!(msg(&[1, 0]).contains("ARN length"));
        assert!(msg(&good[..10]).contains("inside the key ARN"));
        assert!(msg(&good[..3 + ARN.len() + 4]).contains("digest"));
        assert!(msg(&good[..3 + ARN.len() + 16]).contains("no AWS ciphertext"));
        let mut not_arn = vec![1, 0, 3];
        not_arn.extend_from_slice(b"abc");
        not_arn.extend_from_slice(&[0; 17]);
        assert!(msg(&not_arn).contains("not a KMS key ARN"));
        assert!(encode("alias/x", &d, b"x").is_err());
        assert!(encode(ARN, &d, b"").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&data);
        }

        #[test]
        fn parse_never_panics_near_valid(ct in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..200, flip in 0usize..200, bit in 0u8..8) {
            let mut b = encode(ARN, &[1; 16], b"c").unwrap();
            b.extend_from_slice(&ct);
            if flip < b.len() { b[flip] ^= 1 << bit; }
            b.truncate(cut.max(1));
            let _ = parse(&b);
        }

        #[test]
        fn encode_parse_round_trip(ct in proptest::collection::vec(any::<u8>(), 1..300), d in any::<[u8; 16]>()) {
            let b = encode(ARN, &d, &ct).unwrap();
            let p = parse(&b).unwrap();
            prop_assert_eq!(p.key_id_digest, d);
            prop_assert_eq!(p.ciphertext, &ct[..]);
        }
    }
}
