//! The HPACK Huffman code (RFC 7541 §5.2 and Appendix B).
//!
//! The code is canonical: the codes of one length are consecutive integers
//! assigned in symbol order, and the first code of length `n + 1` follows
//! the last code of length `n` shifted left by one. It is therefore fully
//! determined by the code length of each symbol, which is all the table
//! below holds; the codes and the decoding tables are derived from it at
//! compile time. Compile-time assertions check that the lengths form a
//! complete prefix code and reproduce a few codes of the RFC's table; unit
//! tests compare every code against an independent decoder.
//!
//! Decoding reads up to 64 bits ahead and resolves a symbol with one lookup
//! of the next [`LOOKUP_BITS`] bits (every code used by typical header
//! values is that short); longer codes fall back to the canonical
//! first-code-per-length search.

use crate::decoder::HpackError;

/// Code length in bits of each symbol: bytes 0–255, then EOS (256).
/// RFC 7541 Appendix B, "len in bits" column.
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //   0
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //  16
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, //  32 ' '
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, //  48 '0'
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, //  64 '@'
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, //  80 'P'
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, //  96 '`'
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 112 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240
    30,                                                             // EOS
];

const EOS: u16 = 256;
/// Longest code (EOS and a few control bytes).
const MAX_LEN: usize = 30;
/// Bits resolved by one lookup in [`Tables::short`].
pub(crate) const LOOKUP_BITS: u32 = 11;

/// Decoding tables, all derived from [`CODE_LENGTHS`].
struct Tables {
    /// Code of each symbol, right-aligned.
    codes: [u32; 257],
    /// Indexed by the next [`LOOKUP_BITS`] bits: `symbol | length << 9` of
    /// the code they start with, or 0 if that code is longer.
    short: [u16; 1 << LOOKUP_BITS],
    /// First code of each length.
    first: [u32; MAX_LEN + 1],
    /// One past the last code of each length (`first` if there is none).
    limit: [u32; MAX_LEN + 1],
    /// Index into `sorted` of the first symbol of each length.
    offset: [u16; MAX_LEN + 1],
    /// Symbols ordered by (code length, symbol) — that is, by code.
    sorted: [u16; 257],
}

static TABLES: Tables = build_tables();

const fn build_tables() -> Tables {
    let mut count = [0u32; MAX_LEN + 1];
    let mut sym = 0;
    while sym < 257 {
        let len = CODE_LENGTHS[sym] as usize;
        assert!(len >= 5 && len <= MAX_LEN);
        count[len] += 1;
        sym += 1;
    }

    let mut first = [0u32; MAX_LEN + 1];
    let mut limit = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut index = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code = (code + count[len - 1]) << 1;
        first[len] = code;
        limit[len] = code + count[len];
        offset[len] = index;
        index += count[len] as u16;
        len += 1;
    }
    // A complete prefix code: the last 30-bit code is all ones.
    assert!(limit[MAX_LEN] == 1 << MAX_LEN);

    let mut next = first;
    let mut codes = [0u32; 257];
    let mut sorted = [0u16; 257];
    let mut short = [0u16; 1 << LOOKUP_BITS];
    let mut sym = 0;
    while sym < 257 {
        let len = CODE_LENGTHS[sym] as usize;
        let code = next[len];
        next[len] += 1;
        codes[sym] = code;
        sorted[offset[len] as usize + (code - first[len]) as usize] = sym as u16;
        if len <= LOOKUP_BITS as usize {
            let shift = LOOKUP_BITS as usize - len;
            let mut slot = (code as usize) << shift;
            let end = (code as usize + 1) << shift;
            while slot < end {
                short[slot] = sym as u16 | (len as u16) << 9;
                slot += 1;
            }
        }
        sym += 1;
    }
    Tables { codes, short, first, limit, offset, sorted }
}

// Spot checks against the "code as hex" column of RFC 7541 Appendix B.
const _: () = {
    let codes = &TABLES.codes;
    assert!(codes[0] == 0x1ff8);
    assert!(codes[1] == 0x7f_ffd8);
    assert!(codes[10] == 0x3fff_fffc);
    assert!(codes[b' ' as usize] == 0x14);
    assert!(codes[b'/' as usize] == 0x18);
    assert!(codes[b'0' as usize] == 0x0);
    assert!(codes[b'a' as usize] == 0x3);
    assert!(codes[b'z' as usize] == 0x7b);
    assert!(codes[b'~' as usize] == 0x1ffd);
    assert!(codes[200] == 0x3ff_ffe2);
    assert!(codes[255] == 0x3ff_ffee);
    assert!(codes[256] == 0x3fff_ffff);
};

/// Resolves a code longer than [`LOOKUP_BITS`] at the top of `bits`.
/// Returns `(symbol, length)`.
#[cold]
fn decode_long(bits: u64) -> (u16, u32) {
    let t = &TABLES;
    for len in LOOKUP_BITS as usize + 1..=MAX_LEN {
        let code = (bits >> (64 - len)) as u32;
        if code < t.limit[len] {
            let index = usize::from(t.offset[len]) + (code - t.first[len]) as usize;
            // In bounds for a complete code; EOS (an error) otherwise.
            let sym = t.sorted.get(index).copied().unwrap_or(EOS);
            return (sym, len as u32);
        }
    }
    // Unreachable: every 30-bit string starts with a code.
    (EOS, MAX_LEN as u32)
}

/// Decodes the Huffman-coded string `src`, appending the result to `dst`.
///
/// Errors (RFC 7541 §5.2): the EOS symbol inside the string, more than 7
/// bits of padding, or padding that is not a prefix of EOS (all ones).
pub(crate) fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    // Every code is at least 5 bits long.
    dst.reserve(src.len() * 8 / 5);
    let t = &TABLES;
    // The next `nbits` input bits, MSB-aligned; the bits below are zero.
    let mut bits = 0u64;
    let mut nbits = 0u32;
    let mut input = src.iter();
    loop {
        // Keep at least 57 bits buffered while input remains, so that a
        // code longer than `nbits` means the input is exhausted.
        while nbits <= 56 {
            let Some(&byte) = input.next() else { break };
            bits |= u64::from(byte) << (56 - nbits);
            nbits += 8;
        }
        if nbits == 0 {
            return Ok(());
        }
        let entry = t.short[(bits >> (64 - LOOKUP_BITS)) as usize];
        let (sym, len) = if entry != 0 { (entry & 0x1ff, u32::from(entry >> 9)) } else { decode_long(bits) };
        if len > nbits {
            // The remaining bits are a proper prefix of a code: padding.
            break;
        }
        if sym == EOS {
            return Err(HpackError::HuffmanEos);
        }
        dst.push(sym as u8);
        bits <<= len;
        nbits -= len;
    }
    if nbits > 7 {
        return Err(HpackError::HuffmanPaddingTooLong);
    }
    let ones = !0u64 << (64 - nbits);
    if bits & ones != ones {
        return Err(HpackError::HuffmanInvalidPadding);
    }
    Ok(())
}

/// Huffman-encodes `src`, appending the result to `dst` (padded with the
/// most significant bits of EOS).
pub(crate) fn encode(src: &[u8], dst: &mut Vec<u8>) {
    let codes = &TABLES.codes;
    // Only the low `nbits` bits of `pending` matter.
    let mut pending = 0u64;
    let mut nbits = 0u32;
    for &byte in src {
        let sym = usize::from(byte);
        let len = u32::from(CODE_LENGTHS[sym]);
        pending = pending << len | u64::from(codes[sym]);
        nbits += len;
        while nbits >= 8 {
            nbits -= 8;
            dst.push((pending >> nbits) as u8);
        }
    }
    if nbits > 0 {
        dst.push((pending << (8 - nbits)) as u8 | 0xff >> nbits);
    }
}

/// Length in bytes of the Huffman encoding of `src`.
pub(crate) fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| usize::from(CODE_LENGTHS[usize::from(b)])).sum();
    bits.div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(src: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    fn encoded(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(src, &mut out);
        assert_eq!(out.len(), encoded_len(src));
        out
    }

    /// loona-hpack's bit-by-bit decoder, for cross-checking.
    fn loona(src: &[u8]) -> Result<Vec<u8>, HpackError> {
        use loona_hpack::huffman::{HuffmanDecoder, HuffmanDecoderError};
        HuffmanDecoder::new().decode(src).map_err(|e| match e {
            HuffmanDecoderError::EOSInString => HpackError::HuffmanEos,
            HuffmanDecoderError::PaddingTooLarge => HpackError::HuffmanPaddingTooLong,
            HuffmanDecoderError::InvalidPadding => HpackError::HuffmanInvalidPadding,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn rfc_examples() {
        // RFC 7541 C.4.1 – C.4.3 and C.6.1.
        for (hex, text) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", &b"www.example.com"[..]),
            ("a8eb10649cbf", b"no-cache"),
            ("25a849e95ba97d7f", b"custom-key"),
            ("25a849e95bb8e8b4bf", b"custom-value"),
            ("6402", b"302"),
            ("aec3771a4b", b"private"),
            ("d07abe941054d444a8200595040b8166e082a62d1bff", b"Mon, 21 Oct 2013 20:13:21 GMT"),
            ("9d29ad171863c78f0b97c8e9ae82ae43d3", b"https://www.example.com"),
        ] {
            let raw = hex_bytes(hex);
            assert_eq!(decoded(&raw).unwrap(), text, "{hex}");
            assert_eq!(encoded(text), raw, "{hex}");
        }
    }

    #[test]
    fn every_symbol_matches_loona() {
        for sym in 0..=255u8 {
            for n in 1..=9 {
                let text = vec![sym; n];
                let enc = encoded(&text);
                assert_eq!(loona(&enc).unwrap(), text, "symbol {sym}");
                assert_eq!(decoded(&enc).unwrap(), text, "symbol {sym}");
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decoded(&encoded(&all)).unwrap(), all);
        assert_eq!(loona(&encoded(&all)).unwrap(), all);
    }

    #[test]
    fn padding_and_eos_are_rejected() {
        assert_eq!(decoded(&[]).unwrap(), b"");
        // Up to 7 one-bits of padding are fine ('0' is 00000).
        assert_eq!(decoded(&[0b0000_0111]).unwrap(), b"0");
        // 8 bits of padding.
        assert_eq!(decoded(&[0xff]), Err(HpackError::HuffmanPaddingTooLong));
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(HpackError::HuffmanPaddingTooLong));
        // Padding with a zero bit.
        assert_eq!(decoded(&[0b0000_0101]), Err(HpackError::HuffmanInvalidPadding));
        assert_eq!(decoded(&[0b0000_0110]), Err(HpackError::HuffmanInvalidPadding));
        // EOS (30 ones) in the string, with and without padding.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xfc]), Err(HpackError::HuffmanEos));
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(HpackError::HuffmanEos));
        // A long code cut short: padding too long.
        assert_eq!(decoded(&[0xff, 0xff, 0xfe]), Err(HpackError::HuffmanPaddingTooLong));
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn roundtrip_matches_loona(text in prop::collection::vec(any::<u8>(), 0..200)) {
            let enc = encoded(&text);
            prop_assert_eq!(&decoded(&enc).unwrap(), &text);
            prop_assert_eq!(loona(&enc).unwrap(), text);
        }

        #[test]
        fn arbitrary_input_matches_loona(src in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decoded(&src), loona(&src));
        }

        #[test]
        fn arbitrary_high_bit_input_matches_loona(
            src in prop::collection::vec(prop::sample::select(vec![0xffu8, 0xfe, 0xfd, 0xfb, 0xf7, 0xef, 0xdf, 0xbf, 0x7f, 0xf0, 0x0f]), 0..16),
        ) {
            // Mostly long codes, EOS and padding edge cases.
            prop_assert_eq!(decoded(&src), loona(&src));
        }
    }
}
