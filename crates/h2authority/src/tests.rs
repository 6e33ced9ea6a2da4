//! Unit tests of the rewriter state machine and the I/O wrapper.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::test_support::*;
use crate::{
    HpackError, MAX_CONTINUATION_FRAMES, MAX_HEADER_BLOCK_SIZE, MAX_HEADER_LIST_SIZE, RewriteError, RewriteIo,
    Rewriter, authority_is_valid,
};

const SOCKET: &str = "/var/run/kms/x.sock";
const SOCKET_PCT: &str = "%2Fvar%2Frun%2Fkms%2Fx.sock";
const STATUS: &str = "/v2.KeyManagementService/Status";

fn run(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    r.feed(input, &mut out)?;
    Ok(out)
}

fn run_bytewise(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    for b in input {
        r.feed(std::slice::from_ref(b), &mut out)?;
    }
    Ok(out)
}

fn connection(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

fn simple_headers(stream_id: u32, list: &Headers) -> Vec<u8> {
    let block = encode_blocks(std::slice::from_ref(list)).remove(0);
    header_block_frames(&Framing { stream_id, end_stream: true, ..Framing::default() }, &block)
}

fn only_block(items: &[Item]) -> Block {
    let blocks: Vec<&Block> = items
        .iter()
        .filter_map(|i| match i {
            Item::Block(b) => Some(b),
            Item::Other(_) => None,
        })
        .collect();
    assert_eq!(blocks.len(), 1);
    blocks[0].clone()
}

#[test]
fn authority_validity_matches_http() {
    for valid in ["localhost", "localhost:8080", "example.com", "127.0.0.1:1", "[::1]:443", "user@host"] {
        assert!(authority_is_valid(valid.as_bytes()), "{valid}");
    }
    for invalid in [SOCKET, SOCKET_PCT, "", "unix:///var/run/kms.sock", "a b", "host/path"] {
        assert!(!authority_is_valid(invalid.as_bytes()), "{invalid}");
    }
    assert!(!authority_is_valid(&[0xff, 0xfe]));
}

#[test]
fn replacement_must_be_valid() {
    assert!(Rewriter::with_replacement("kms.local:1").is_ok());
    assert_eq!(Rewriter::with_replacement(SOCKET).unwrap_err(), RewriteError::InvalidReplacement(SOCKET.to_owned()));
}

#[test]
fn preface_and_control_frames_pass_through() {
    let input = connection(&[
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(SETTINGS, ACK, 0, &[]),
        frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
        frame(0xfa, 0xff, 7, b"unknown extension frame"),
    ]);
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    r.feed(&input, &mut out).unwrap();
    assert_eq!(out, input);
    assert_eq!(r.rewrites(), 0);
    assert!(!r.is_transparent());
}

#[test]
fn socket_path_authorities_are_rewritten() {
    for (authority, rewritten) in [
        (Some(SOCKET), true),
        (Some(SOCKET_PCT), true),
        (Some("localhost"), false),
        (Some("kms:80"), false),
        (None, false),
    ] {
        let list = kms_request(authority, STATUS);
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        r.feed(&connection(&[simple_headers(1, &list)]), &mut out).unwrap();
        let block = only_block(&decode_output(&out));
        assert_eq!(block.headers, expected_after_rewrite(&list));
        assert_eq!(block.stream_id, 1);
        assert!(block.end_stream);
        assert_eq!(block.priority, None);
        assert_eq!(r.rewrites(), u64::from(rewritten));
        assert_eq!(r.header_blocks(), 1);
        if rewritten {
            assert!(block.headers.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        }
    }
}

#[test]
fn custom_replacement() {
    let list = kms_request(Some(SOCKET), STATUS);
    let mut r = Rewriter::with_replacement("kms.invalid").unwrap();
    let mut out = Vec::new();
    r.feed(&connection(&[simple_headers(1, &list)]), &mut out).unwrap();
    let block = only_block(&decode_output(&out));
    assert_eq!(block.headers[3], (b":authority".to_vec(), b"kms.invalid".to_vec()));
}

#[test]
fn dynamic_table_state_spans_blocks() {
    // The second and third blocks are mostly dynamic-table references
    // into entries created by the first one.
    let lists = [
        kms_request(Some(SOCKET), STATUS),
        kms_request(Some(SOCKET), "/v2.KeyManagementService/Encrypt"),
        kms_request(Some(SOCKET), STATUS),
    ];
    let blocks = encode_blocks(&lists);
    assert!(blocks[2].len() < blocks[0].len(), "client encoder should use its dynamic table");
    let parts: Vec<Vec<u8>> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let sid = 1 + 2 * u32::try_from(i).unwrap();
            header_block_frames(&Framing { stream_id: sid, ..Framing::default() }, b)
        })
        .collect();
    let out = run(&connection(&parts)).unwrap();
    let expected: Vec<Headers> = lists.iter().map(expected_after_rewrite).collect();
    assert_eq!(blocks_of(&out), expected);
}

/// Three requests of one client encoder as HEADERS frames on streams 1, 3, 5.
fn three_requests(authorities: [&str; 3]) -> (Vec<Headers>, Vec<Vec<u8>>) {
    let lists: Vec<Headers> = authorities.iter().map(|a| kms_request(Some(a), STATUS)).collect();
    let blocks = encode_blocks(&lists);
    let parts = blocks
        .iter()
        .zip([1u32, 3, 5])
        .map(|(b, stream_id)| header_block_frames(&Framing { stream_id, end_stream: true, ..Framing::default() }, b))
        .collect();
    (lists, parts)
}

#[test]
fn valid_authorities_reach_h2_as_the_client_encoded_them() {
    // kube-apiserver >= 1.32 sends `localhost`: nothing to rewrite, so the
    // blocks (dynamic-table references included) are forwarded untouched.
    let (lists, parts) = three_requests(["localhost", "localhost", "localhost"]);
    let input = connection(&parts);
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    r.feed(&input, &mut out).unwrap();
    assert_eq!(out, input, "forwarded byte for byte");
    assert_eq!(blocks_of(&out), lists);
    assert_eq!((r.rewrites(), r.header_blocks()), (0, 3));
}

#[test]
fn the_first_rewrite_switches_the_connection_to_reencoding() {
    // Block 1 goes as encoded (h2's table learns its entries), block 2 needs
    // a rewrite, block 3 refers to the client's table and is re-encoded too:
    // a stateful decoder of the output sees the right headers throughout.
    let (lists, parts) = three_requests(["localhost", SOCKET, "localhost"]);
    let out = run(&connection(&parts)).unwrap();
    let expected: Vec<Headers> = lists.iter().map(expected_after_rewrite).collect();
    assert_eq!(blocks_of(&out), expected);
    assert!(out.starts_with(&connection(&parts[..1])), "the first block is forwarded as it came");
    assert!(!out.ends_with(&parts[2]), "blocks after the first rewrite are re-encoded");
}

#[test]
fn an_authority_after_regular_headers_is_still_rewritten() {
    // Malformed for h2 (pseudo-header after a regular one), but the adapter
    // still never lets a socket path through, and keeps the header order.
    let list = headers(&[(":method", "POST"), ("te", "trailers"), (":authority", SOCKET), (":path", STATUS)]);
    let out = run(&connection(&[simple_headers(1, &list)])).unwrap();
    assert_eq!(blocks_of(&out), vec![expected_after_rewrite(&list)]);
}

fn blocks_of(out: &[u8]) -> Vec<Headers> {
    blocks(&decode_output(out))
}

#[test]
fn padding_is_stripped_and_priority_kept() {
    let list = kms_request(Some(SOCKET), STATUS);
    for (padding, priority) in
        [(Some(0), None), (Some(17), None), (None, Some([0x80, 0, 0, 3, 200])), (Some(255), Some([0, 0, 0, 0, 15]))]
    {
        let block = encode_blocks(std::slice::from_ref(&list)).remove(0);
        let framing = Framing { stream_id: 3, end_stream: false, priority, padding, splits: vec![] };
        let out = run(&connection(&[header_block_frames(&framing, &block)])).unwrap();
        let b = only_block(&decode_output(&out));
        assert_eq!(b.headers, expected_after_rewrite(&list));
        assert_eq!(b.priority, priority);
        assert!(!b.end_stream);
        assert_eq!(b.stream_id, 3);
    }
}

#[test]
fn padding_longer_than_payload_is_rejected() {
    // PADDED, pad length 10, but only 4 bytes follow.
    let input = connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[10, 0x82, 0x86, 0x84, 0])]);
    assert!(matches!(
        run(&input),
        Err(RewriteError::InvalidPadding { stream_id: 1, pad_length: 10, payload_length: 5 })
    ));
    // Pad length equal to the remaining bytes leaves an empty fragment: fine.
    let ok = connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[3, 0, 0, 0])]);
    let out = run(&ok).unwrap();
    assert_eq!(only_block(&decode_output(&out)).headers, Headers::new());
    // PADDED + PRIORITY: the priority fields count against the payload too.
    let bad = connection(&[frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, &[1, 0, 0, 0, 0, 16])]);
    assert!(matches!(run(&bad), Err(RewriteError::InvalidPadding { .. })));
}

#[test]
fn frames_too_short_for_their_flags_are_rejected() {
    for (flags, len) in [(PADDED, 0), (PRIORITY_FLAG, 4), (PADDED | PRIORITY_FLAG, 5)] {
        let input = connection(&[frame(HEADERS, END_HEADERS | flags, 1, &vec![0; len])]);
        assert!(matches!(run(&input), Err(RewriteError::FrameTooShort { .. })), "{flags:#x}");
    }
}

#[test]
fn continuations_are_reassembled() {
    let list = kms_request(Some(SOCKET_PCT), STATUS);
    let block = encode_blocks(std::slice::from_ref(&list)).remove(0);
    let framing = Framing {
        stream_id: 1,
        end_stream: true,
        priority: Some([0, 0, 0, 0, 1]),
        padding: Some(3),
        splits: vec![1, 2, 2, 10, block.len() - 1],
    };
    let input = connection(&[header_block_frames(&framing, &block), frame(DATA, END_STREAM, 1, b"body")]);
    assert_eq!(parse_frames(&input[24..]).len(), 6);
    let out = run(&input).unwrap();
    let items = decode_output(&out);
    assert_eq!(parse_frames(&out[24..]).len(), 2, "one HEADERS + the DATA frame");
    assert_eq!(only_block(&items).headers, expected_after_rewrite(&list));
    assert_eq!(only_block(&items).priority, Some([0, 0, 0, 0, 1]));
    assert_eq!(items[1], Item::Other(parse_frames(&frame(DATA, END_STREAM, 1, b"body")).remove(0)));
}

#[test]
fn large_blocks_are_reemitted_with_continuations() {
    let mut list = kms_request(Some(SOCKET), STATUS);
    list.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let block = encode_blocks(std::slice::from_ref(&list)).remove(0);
    let framing = Framing { stream_id: 1, splits: vec![16_000, 32_000], ..Framing::default() };
    let out = run(&connection(&[header_block_frames(&framing, &block)])).unwrap();
    let frames = parse_frames(&out[24..]);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].kind, HEADERS);
    assert_eq!(frames[0].payload.len(), 16_384);
    assert_eq!(frames[1].kind, CONTINUATION);
    assert_eq!(frames[2].flags, END_HEADERS);
    assert_eq!(only_block(&decode_output(&out)).headers, expected_after_rewrite(&list));
}

#[test]
fn continuation_without_headers_is_rejected() {
    let input = connection(&[frame(CONTINUATION, END_HEADERS, 1, &[0x82])]);
    assert_eq!(run(&input), Err(RewriteError::UnexpectedContinuation { stream_id: 1 }));
}

#[test]
fn interleaved_frames_are_rejected() {
    let start = frame(HEADERS, 0, 1, &[0x83, 0x86]);
    let ping = frame(PING, 0, 0, &[0; 8]);
    let other_stream = frame(CONTINUATION, END_HEADERS, 3, &[0x84]);
    let other_headers = frame(HEADERS, END_HEADERS, 3, &[0x84]);
    assert_eq!(
        run(&connection(&[start.clone(), ping])),
        Err(RewriteError::InterleavedFrame { expected_stream_id: 1, frame_type: PING, stream_id: 0 })
    );
    assert_eq!(
        run(&connection(&[start.clone(), other_stream])),
        Err(RewriteError::InterleavedFrame { expected_stream_id: 1, frame_type: CONTINUATION, stream_id: 3 })
    );
    assert!(matches!(
        run(&connection(&[start, other_headers])),
        Err(RewriteError::InterleavedFrame { frame_type: HEADERS, .. })
    ));
}

#[test]
fn header_block_size_is_capped() {
    let chunk = vec![0u8; 16_384];
    let mut parts = vec![frame(HEADERS, 0, 1, &chunk)];
    for _ in 0..(MAX_HEADER_BLOCK_SIZE / chunk.len()) {
        parts.push(frame(CONTINUATION, 0, 1, &chunk));
    }
    let err = run(&connection(&parts)).unwrap_err();
    assert_eq!(err, RewriteError::HeaderBlockTooLarge { stream_id: 1, limit: MAX_HEADER_BLOCK_SIZE });
}

#[test]
fn continuation_flood_is_capped() {
    let mut parts = vec![frame(HEADERS, 0, 1, &[0x82])];
    for _ in 0..=MAX_CONTINUATION_FRAMES {
        parts.push(frame(CONTINUATION, 0, 1, &[]));
    }
    assert_eq!(
        run(&connection(&parts)),
        Err(RewriteError::TooManyContinuations { stream_id: 1, limit: MAX_CONTINUATION_FRAMES })
    );
    // Exactly the limit is fine.
    let mut parts = vec![frame(HEADERS, 0, 1, &[0x82])];
    for i in 0..MAX_CONTINUATION_FRAMES {
        let flags = if i + 1 == MAX_CONTINUATION_FRAMES { END_HEADERS } else { 0 };
        parts.push(frame(CONTINUATION, flags, 1, &[]));
    }
    assert!(run(&connection(&parts)).is_ok());
}

#[test]
fn hpack_bomb_is_capped() {
    // One 4000-byte dynamic entry, then a block of references to it.
    let mut first = vec![0x40, 1, b'x'];
    first.extend(loona_hpack::encoder::encode_integer(3990, 7));
    first.extend(vec![b'a'; 3990]);
    let bomb = vec![0x80 | 62; 300];
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &first), frame(HEADERS, END_HEADERS, 3, &bomb)]);
    assert_eq!(run(&input), Err(RewriteError::HeaderListTooLarge { limit: MAX_HEADER_LIST_SIZE }));
}

#[test]
fn hpack_errors_are_reported_and_poison() {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    // Index 70 does not exist in an empty dynamic table.
    let input = connection(&[frame(HEADERS, END_HEADERS, 1, &[0x80 | 70])]);
    match r.feed(&input, &mut out) {
        Err(RewriteError::Hpack(HpackError::IndexOutOfBounds(70))) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(r.is_failed());
    assert_eq!(r.feed(&frame(PING, 0, 0, &[0; 8]), &mut out), Err(RewriteError::Poisoned));
}

#[test]
fn table_size_updates_are_bounded_by_4096() {
    // Size update to 4096 (0x3f e1 1f) followed by :method GET.
    let ok = connection(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x1f, 0x82])]);
    assert!(run(&ok).is_ok());
    // Size update to 4097.
    let too_big = connection(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x82])]);
    assert_eq!(run(&too_big), Err(RewriteError::Hpack(HpackError::TableSizeTooLarge { size: 4097, limit: 4096 })));
}

#[test]
fn a_block_ending_in_a_table_size_update_is_refused() {
    // A block of a size update alone (after a PRIORITY prefix, as a fuzzed
    // case had it), and one whose fields precede the update: neither goes on.
    for block in [&[0, 0, 0, 0, 0, 0x20][..], &[0x20][..], &[0x20, 0x3f, 0xe1, 0x1f][..]] {
        let flags = if block.len() == 6 { END_HEADERS | PRIORITY_FLAG } else { END_HEADERS };
        let input = connection(&[frame(HEADERS, flags, 1, block)]);
        assert_eq!(run(&input), Err(RewriteError::Hpack(HpackError::TableSizeUpdateAtEnd)), "{block:?}");
    }
    let late = connection(&[frame(HEADERS, END_HEADERS, 1, &[0x82, 0x20])]);
    assert_eq!(run(&late), Err(RewriteError::Hpack(HpackError::LateTableSizeUpdate)));
}

#[test]
fn preface_mismatch_switches_to_transparent() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: /var/run/kms/x.sock\r\n\r\n"[..],
        b"PRI * HTTP/1.1\r\n\r\nxxxxxxxxxxxx",
        b"\x16\x03\x01\x02\x00",
    ] {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        r.feed(input, &mut out).unwrap();
        // Later bytes, even an apparent HEADERS frame, are not touched.
        let later = frame(CONTINUATION, 0, 1, &[1, 2, 3]);
        r.feed(&later, &mut out).unwrap();
        assert!(r.is_transparent());
        assert_eq!(out, [input, &later[..]].concat());
        assert_eq!(run_bytewise(&[input, &later[..]].concat()).unwrap(), out);
    }
}

#[test]
fn partial_preface_is_forwarded_immediately() {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    r.feed(&PREFACE[..10], &mut out).unwrap();
    assert_eq!(out, &PREFACE[..10]);
    r.feed(&PREFACE[10..], &mut out).unwrap();
    assert_eq!(out, PREFACE);
}

#[test]
fn split_anywhere_matches_one_shot() {
    let lists =
        [kms_request(Some(SOCKET), STATUS), kms_request(Some(SOCKET_PCT), "/v1beta1.KeyManagementService/Decrypt")];
    let blocks = encode_blocks(&lists);
    let input = connection(&[
        frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]),
        header_block_frames(
            &Framing {
                stream_id: 1,
                priority: Some([0, 0, 0, 0, 9]),
                padding: Some(4),
                splits: vec![5],
                ..Framing::default()
            },
            &blocks[0],
        ),
        frame(DATA, PADDED, 1, &[2, b'h', b'i', 0, 0]),
        frame(DATA, END_STREAM, 1, &[]),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]),
        header_block_frames(
            &Framing { stream_id: 3, end_stream: true, splits: vec![3, 7], ..Framing::default() },
            &blocks[1],
        ),
        frame(PING, 0, 0, b"12345678"),
    ]);
    let one_shot = run(&input).unwrap();
    assert_eq!(run_bytewise(&input).unwrap(), one_shot);
    for split in 0..input.len() {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        r.feed(&input[..split], &mut out).unwrap();
        r.feed(&input[split..], &mut out).unwrap();
        assert_eq!(out, one_shot, "split at {split}");
        assert_eq!(r.rewrites(), 2);
    }
    let expected: Vec<Headers> = lists.iter().map(expected_after_rewrite).collect();
    assert_eq!(blocks_of(&one_shot), expected);
}

#[test]
fn large_data_frames_stream_without_buffering() {
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let input = connection(&[frame(DATA, 0, 1, &payload)]);
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    for chunk in input.chunks(7_777) {
        out.clear();
        r.feed(chunk, &mut out).unwrap();
        // Everything fed is forwarded at once.
        assert_eq!(out, chunk);
    }
}

/// An `AsyncRead` serving its data in pre-chosen chunk sizes.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.next % self.sizes.len()].max(1);
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn mixed_connection() -> Vec<u8> {
    let lists = [kms_request(Some(SOCKET), STATUS), kms_request(Some("localhost"), STATUS)];
    let blocks = encode_blocks(&lists);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    connection(&[
        frame(SETTINGS, 0, 0, &[]),
        header_block_frames(&Framing { stream_id: 1, splits: vec![4], ..Framing::default() }, &blocks[0]),
        frame(DATA, 0, 1, &big),
        frame(DATA, END_STREAM, 1, &big[..5000]),
        header_block_frames(&Framing { stream_id: 3, end_stream: true, ..Framing::default() }, &blocks[1]),
        frame(DATA, 0, 3, &big[..20_000]),
    ])
}

#[tokio::test]
async fn io_wrapper_matches_rewriter_for_any_chunking() {
    let input = mixed_connection();
    let expected = run(&input).unwrap();
    for (sizes, read_size) in [
        (vec![1], 3),
        (vec![100_000], 100_000),
        (vec![9, 4096, 5, 17_000, 1], 65_536),
        (vec![30_000, 3], 8192),
        (vec![16_384], 7),
    ] {
        let reader = Chunked { data: input.clone(), pos: 0, sizes, next: 0 };
        let mut io = RewriteIo::new(reader);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, expected);
        assert_eq!(io.rewrites(), 1);
        assert_eq!(io.rewriter().header_blocks(), 2);
    }
}

#[tokio::test]
async fn io_wrapper_reports_invalid_data() {
    let input = connection(&[frame(SETTINGS, 0, 0, &[]), frame(CONTINUATION, END_HEADERS, 1, &[0x82])]);
    let mut io = RewriteIo::new(&input[..]);
    let mut out = Vec::new();
    let err = io.read_to_end(&mut out).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<RewriteError>()).unwrap();
    assert_eq!(*inner, RewriteError::UnexpectedContinuation { stream_id: 1 });
    let again = io.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn io_wrapper_writes_pass_through() {
    let (a, mut b) = tokio::io::duplex(1024);
    let mut io = RewriteIo::new(a);
    io.write_all(b"server bytes are not touched: /var/run/kms/x.sock").await.unwrap();
    io.flush().await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    b.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"server bytes are not touched: /var/run/kms/x.sock");
    let _inner: tokio::io::DuplexStream = io.into_inner();
}

#[test]
fn io_wrapper_is_send_and_unpin() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<RewriteIo<tokio::net::UnixStream>>();
    check::<Rewriter>();
}
