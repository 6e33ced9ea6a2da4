//! The encoder toward h2.
//!
//! Header blocks are re-encoded without touching the receiver's dynamic
//! table: a field is either a reference to a full static-table entry or a
//! "literal header field without indexing" whose name may reference the
//! static table (RFC 7541 §6.1 and §6.2.2). Such a block is valid whatever
//! `SETTINGS_HEADER_TABLE_SIZE` the server advertised, never emits a dynamic
//! table size update, and leaves h2's dynamic table empty forever — so the
//! encoder needs no state at all.

use crate::decoder::STATIC_TABLE;

/// HPACK integer representation (RFC 7541 §5.1) with an `prefix_bits`-bit
/// prefix; `pattern` supplies the bits above the prefix.
pub(crate) fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u32, pattern: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(pattern | value as u8);
        return;
    }
    out.push(pattern | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Raw (non-Huffman) string literal (RFC 7541 §5.2).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Appends one header field to `out` without using the dynamic table.
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = 0;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == name {
            if *v == value {
                // Indexed header field (§6.1).
                encode_integer(out, i + 1, 7, 0x80);
                return;
            }
            if name_index == 0 {
                name_index = i + 1;
            }
        }
    }
    // Literal header field without indexing (§6.2.2); index 0 = literal name.
    encode_integer(out, name_index, 4, 0x00);
    if name_index == 0 {
        encode_string(out, name);
    }
    encode_string(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_match_rfc_examples() {
        // RFC 7541 C.1.1 – C.1.3
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 5, 0);
        assert_eq!(out, [10]);
        out.clear();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        encode_integer(&mut out, 42, 8, 0);
        assert_eq!(out, [42]);
        out.clear();
        encode_integer(&mut out, 15, 4, 0x10);
        assert_eq!(out, [0x1f, 0]);
    }

    #[test]
    fn encoding_decodes_with_loona() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/v2.KeyManagementService/Status"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"x-long", &[b'a'; 300]),
            (b"", b""),
        ];
        let mut out = Vec::new();
        for (n, v) in &headers {
            encode_field(&mut out, n, v);
        }
        assert_eq!(out[0], 0x83, ":method POST is a static-table hit");
        assert_eq!(out[1], 0x86, ":scheme http is a static-table hit");
        let mut decoder = loona_hpack::Decoder::new();
        let decoded = decoder.decode(&out).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = headers.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
        assert_eq!(decoded, expected);
        // The block must not have touched the dynamic table: index 62 is
        // still out of bounds.
        assert!(decoder.decode(&[0x80 | 62]).is_err());
    }
}
