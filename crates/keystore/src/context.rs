//! Canonical, unambiguous encoding of an encryption context, used as AEAD additional data.
//!
//! Layout: `"EC1"` ‖ u32 BE pair count ‖ for each pair in ascending byte order of the key:
//! u32 BE key length ‖ key ‖ u32 BE value length ‖ value. Lengths make the encoding injective:
//! no two different contexts encode to the same bytes (unlike joining with separators).

use std::collections::BTreeMap;

/// An encryption context: non-secret string pairs bound to a ciphertext.
pub type EncryptionContext = BTreeMap<String, String>;

/// Prefix of the encryption-context keys the KMS plugin binds into its own wraps
/// (`envelope:api`, `envelope:key-id`, ...; see [`reserved_key`]). Plugin wraps and the key
/// server's share the key store's blob format, so the key server refuses these keys from its
/// clients: no client can make or open a plugin wrap. Over the AWS API the plugin sends them as
/// `k8s-envelope:…`.
pub const RESERVED_CONTEXT_PREFIX: &str = "envelope:";

/// The reserved context key `envelope:<name>` ([`RESERVED_CONTEXT_PREFIX`]).
pub fn reserved_key(name: &str) -> String {
    [RESERVED_CONTEXT_PREFIX, name].concat()
}

/// Encodes `ctx` canonically (keys sorted by their bytes, which `BTreeMap<String, _>` guarantees).
pub fn encode(ctx: &EncryptionContext) -> Vec<u8> {
    let size = 7 + ctx.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"EC1");
    push_len(&mut out, ctx.len());
    for (k, v) in ctx {
        push_len(&mut out, k.len());
        out.extend_from_slice(k.as_bytes());
        push_len(&mut out, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    // Contexts are bounded far below 4 GiB by every caller; saturate rather than wrap.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserved_keys() {
        assert_eq!(reserved_key("api"), "envelope:api");
        assert!(reserved_key("").starts_with(RESERVED_CONTEXT_PREFIX));
    }

    #[test]
    fn empty_context_is_fixed() {
        assert_eq!(encode(&EncryptionContext::new()), b"EC1\0\0\0\0");
    }

    #[test]
    fn separator_tricks_do_not_collide() {
        let a: EncryptionContext = [("a=b".into(), "c".into())].into();
        let b: EncryptionContext = [("a".into(), "b=c".into())].into();
        assert_ne!(encode(&a), encode(&b));
    }

    proptest! {
        #[test]
        fn encoding_is_injective(a in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
                                 b in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4)) {
            prop_assert_eq!(a == b, encode(&a) == encode(&b));
        }
    }
}
