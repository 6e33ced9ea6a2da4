//! Test helpers shared by the unit tests (included via `#[path]`) and the
//! integration tests. Self-contained: only std and loona_hpack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause
#![allow(dead_code)]

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

pub fn headers(list: &[(&str, &str)]) -> Headers {
    list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

/// One raw frame.
pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn to_bytes(&self) -> Vec<u8> {
        frame(self.kind, self.flags, self.stream_id, &self.payload)
    }
}

/// Parses a complete sequence of frames (no preface).
pub fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 9, "truncated frame header");
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        assert!(bytes.len() >= 9 + len, "truncated frame payload");
        frames.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    frames
}

/// How to frame one header block on the input side.
#[derive(Debug, Clone, Default)]
pub struct Framing {
    pub stream_id: u32,
    pub end_stream: bool,
    pub priority: Option<[u8; 5]>,
    /// Pad length of the HEADERS frame (PADDED flag set when `Some`).
    pub padding: Option<u8>,
    /// Fragment boundaries (offsets into the block, any order, clamped).
    pub splits: Vec<usize>,
}

/// Frames an encoded header block as HEADERS + CONTINUATION frames.
pub fn header_block_frames(framing: &Framing, block: &[u8]) -> Vec<u8> {
    let mut cuts: Vec<usize> = framing.splits.iter().map(|&s| s.min(block.len())).collect();
    cuts.push(0);
    cuts.push(block.len());
    cuts.sort_unstable();
    cuts.dedup();
    let fragments: Vec<&[u8]> =
        if cuts.len() < 2 { vec![block] } else { cuts.windows(2).map(|w| &block[w[0]..w[1]]).collect() };
    let last = fragments.len() - 1;
    let mut out = Vec::new();
    for (i, fragment) in fragments.iter().enumerate() {
        let end_headers = if i == last { END_HEADERS } else { 0 };
        if i == 0 {
            let mut flags = end_headers;
            let mut payload = Vec::new();
            if framing.end_stream {
                flags |= END_STREAM;
            }
            if let Some(pad) = framing.padding {
                flags |= PADDED;
                payload.push(pad);
            }
            if let Some(priority) = framing.priority {
                flags |= PRIORITY_FLAG;
                payload.extend_from_slice(&priority);
            }
            payload.extend_from_slice(fragment);
            if let Some(pad) = framing.padding {
                payload.extend(std::iter::repeat_n(0u8, usize::from(pad)));
            }
            out.extend(frame(HEADERS, flags, framing.stream_id, &payload));
        } else {
            out.extend(frame(CONTINUATION, end_headers, framing.stream_id, fragment));
        }
    }
    out
}

/// A decoded header block from the rewriter's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub stream_id: u32,
    pub end_stream: bool,
    pub priority: Option<[u8; 5]>,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Block(Block),
    Other(Frame),
}

/// Checks that `output` is a preface followed by well-formed frames whose
/// header blocks are HEADERS (+CONTINUATION ≤ 16384 bytes, no padding)
/// and decodes them with one fresh decoder.
pub fn decode_output(output: &[u8]) -> Vec<Item> {
    assert!(output.starts_with(PREFACE), "output must start with the preface");
    let mut decoder = loona_hpack::Decoder::new();
    let mut items = Vec::new();
    let mut pending: Option<(Block, Vec<u8>)> = None;
    for f in parse_frames(&output[PREFACE.len()..]) {
        match f.kind {
            HEADERS => {
                assert!(pending.is_none(), "HEADERS inside a header block");
                assert!(f.payload.len() <= 16_384, "HEADERS frame too large");
                assert_eq!(f.flags & PADDED, 0, "output must not be padded");
                assert_eq!(f.flags & !(END_STREAM | END_HEADERS | PRIORITY_FLAG), 0);
                let (priority, fragment) = if f.flags & PRIORITY_FLAG != 0 {
                    (Some(<[u8; 5]>::try_from(&f.payload[..5]).unwrap()), f.payload[5..].to_vec())
                } else {
                    (None, f.payload.clone())
                };
                let block = Block {
                    stream_id: f.stream_id,
                    end_stream: f.flags & END_STREAM != 0,
                    priority,
                    headers: Vec::new(),
                };
                pending = Some((block, fragment));
                if f.flags & END_HEADERS == 0 {
                    continue;
                }
            }
            CONTINUATION => {
                let (block, fragment) = pending.as_mut().expect("CONTINUATION outside a block");
                assert_eq!(block.stream_id, f.stream_id);
                assert!(f.payload.len() <= 16_384, "CONTINUATION frame too large");
                assert_eq!(f.flags & !END_HEADERS, 0);
                fragment.extend_from_slice(&f.payload);
                if f.flags & END_HEADERS == 0 {
                    continue;
                }
            }
            _ => {
                assert!(pending.is_none(), "frame inside a header block");
                items.push(Item::Other(f));
                continue;
            }
        }
        let (mut block, fragment) = pending.take().unwrap();
        block.headers = decoder.decode(&fragment).expect("output must decode");
        items.push(Item::Block(block));
    }
    assert!(pending.is_none(), "unterminated header block in output");
    items
}

/// The headers of every block in `items`, in order.
pub fn blocks(items: &[Item]) -> Vec<Headers> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Block(b) => Some(b.headers.clone()),
            Item::Other(_) => None,
        })
        .collect()
}

/// Encodes header lists with one client-side encoder (dynamic table on).
pub fn encode_blocks(lists: &[Headers]) -> Vec<Vec<u8>> {
    let mut encoder = loona_hpack::Encoder::new();
    lists.iter().map(|l| encoder.encode(l.iter().map(|(n, v)| (&n[..], &v[..])))).collect()
}

/// A typical kube-apiserver request header list.
pub fn kms_request(authority: Option<&str>, path: &str) -> Headers {
    let mut list = vec![(":method", "POST"), (":scheme", "http"), (":path", path)];
    if let Some(a) = authority {
        list.push((":authority", a));
    }
    list.extend([
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.65.0"),
        ("te", "trailers"),
        ("grpc-timeout", "2999m"),
    ]);
    headers(&list)
}

/// `list` with an invalid `:authority` replaced by `localhost`.
pub fn expected_after_rewrite(list: &Headers) -> Headers {
    list.iter()
        .map(|(n, v)| {
            if n == b":authority" && http::uri::Authority::try_from(&v[..]).is_err() {
                (n.clone(), b"localhost".to_vec())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}
