//! HTTP/2 frame layout (RFC 9113 §4.1) — just the parts the rewriter needs.

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Size of the fixed frame header.
pub const FRAME_HEADER_LEN: usize = 9;

/// The default `SETTINGS_MAX_FRAME_SIZE` (RFC 9113 §6.5.2). Every HTTP/2
/// peer must accept frames of this size, so re-emitted header blocks are
/// split at this boundary regardless of what the server advertised.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

pub(crate) const TYPE_HEADERS: u8 = 0x1;
pub(crate) const TYPE_CONTINUATION: u8 = 0x9;

pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;

/// Length of the stream-dependency + weight fields carried by a HEADERS
/// frame with the PRIORITY flag.
pub(crate) const PRIORITY_LEN: usize = 5;

/// A decoded 9-byte frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) length: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// Stream identifier with the reserved bit cleared.
    pub(crate) stream_id: u32,
}

impl FrameHeader {
    pub(crate) fn parse(raw: &[u8; FRAME_HEADER_LEN]) -> Self {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *raw;
        FrameHeader {
            length: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
            kind,
            flags,
            stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        }
    }

    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// Appends a frame header. `length` must fit in 24 bits; callers only pass
/// values ≤ [`DEFAULT_MAX_FRAME_SIZE`].
pub(crate) fn write_frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream_id: u32) {
    debug_assert!(length < 1 << 24);
    let len = (length as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// Emits a complete header block as one HEADERS frame followed by as many
/// CONTINUATION frames as needed, none larger than `max_frame_size`.
pub(crate) fn write_header_block(
    out: &mut Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    block: &[u8],
    max_frame_size: usize,
) {
    let priority_len = if priority.is_some() { PRIORITY_LEN } else { 0 };
    let first_len = block.len().min(max_frame_size - priority_len);
    let (first, mut rest) = block.split_at(first_len);
    let continuations = rest.len().div_ceil(max_frame_size);
    out.reserve(block.len() + priority_len + FRAME_HEADER_LEN * (1 + continuations));

    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame_header(out, priority_len + first.len(), TYPE_HEADERS, flags, stream_id);
    if let Some(priority) = priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(first);

    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(max_frame_size));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut out = Vec::new();
        write_frame_header(&mut out, 0x01_02_03, 0x7, 0xab, 0x1234_5678);
        let raw: [u8; 9] = out.as_slice().try_into().unwrap();
        assert_eq!(raw, [1, 2, 3, 7, 0xab, 0x12, 0x34, 0x56, 0x78]);
        let h = FrameHeader::parse(&raw);
        assert_eq!(h, FrameHeader { length: 0x01_02_03, kind: 7, flags: 0xab, stream_id: 0x1234_5678 });
    }

    #[test]
    fn reserved_bit_is_ignored() {
        let h = FrameHeader::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 3]);
        assert_eq!(h.stream_id, 3);
        assert_eq!(h.length, 0);
    }

    #[test]
    fn large_block_is_split_into_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_header_block(&mut out, 5, true, Some([0, 0, 0, 3, 15]), &block, DEFAULT_MAX_FRAME_SIZE);

        let mut rest = out.as_slice();
        let mut reassembled = Vec::new();
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let h = FrameHeader::parse(rest[..9].try_into().unwrap());
            assert!(h.length <= DEFAULT_MAX_FRAME_SIZE);
            let payload = &rest[9..9 + h.length];
            if frames.is_empty() {
                assert_eq!(&payload[..5], &[0, 0, 0, 3, 15]);
                reassembled.extend_from_slice(&payload[5..]);
            } else {
                reassembled.extend_from_slice(payload);
            }
            frames.push(h);
            rest = &rest[9 + h.length..];
        }
        assert_eq!(reassembled, block);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind, TYPE_HEADERS);
        assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_PRIORITY);
        assert_eq!(frames[1].kind, TYPE_CONTINUATION);
        assert_eq!(frames[1].flags, 0);
        assert_eq!(frames[2].kind, TYPE_CONTINUATION);
        assert_eq!(frames[2].flags, FLAG_END_HEADERS);
        assert!(frames.iter().all(|f| f.stream_id == 5));
    }

    #[test]
    fn empty_block_is_one_frame() {
        let mut out = Vec::new();
        write_header_block(&mut out, 1, false, None, &[], DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(out, [0, 0, 0, TYPE_HEADERS, FLAG_END_HEADERS, 0, 0, 0, 1]);
    }
}
