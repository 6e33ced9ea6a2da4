//! Property tests: random header lists, framings and interleavings.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use common::*;
use envelope_h2authority::Rewriter;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Authority {
    Host(String),
    RawPath(String),
    PercentPath(String),
    Arbitrary(Vec<u8>),
}

impl Authority {
    fn value(&self) -> Vec<u8> {
        match self {
            Authority::Host(h) => h.as_bytes().to_vec(),
            Authority::RawPath(p) => p.as_bytes().to_vec(),
            Authority::PercentPath(p) => p.replace('/', "%2F").into_bytes(),
            Authority::Arbitrary(b) => b.clone(),
        }
    }
}

fn authority() -> impl Strategy<Value = Authority> {
    prop_oneof![
        "[a-z]{1,12}(\\.[a-z]{1,8})?(:[0-9]{1,5})?".prop_map(Authority::Host),
        Just(Authority::Host("localhost".into())),
        "(/[a-z0-9_-]{1,10}){1,4}\\.sock".prop_map(Authority::RawPath),
        Just(Authority::RawPath("/var/run/kms/x.sock".into())),
        "(/[a-z0-9_-]{1,10}){1,4}\\.sock".prop_map(Authority::PercentPath),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Authority::Arbitrary),
    ]
}

fn header_field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let name = prop_oneof![
        4 => prop::sample::select(vec![
            "content-type", "user-agent", "te", "grpc-timeout", "x-trace-id", "authorization", "host", "accept",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => "[a-z-]{1,16}".prop_map(String::into_bytes),
    ];
    let value = prop_oneof![
        4 => prop::sample::select(vec!["", "application/grpc", "trailers", "/var/run/kms/x.sock", "1S", "abc"])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => "[ -~]{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..20_000).prop_map(|n| vec![b'z'; n]),
    ];
    (name, value)
}

#[derive(Debug, Clone)]
struct BlockSpec {
    headers: Headers,
    framing: Framing,
    /// HPACK dynamic table size update to signal at the start of the block.
    size_update: Option<usize>,
}

fn block_spec() -> impl Strategy<Value = BlockSpec> {
    (
        prop::option::weighted(0.8, authority()),
        prop::collection::vec(header_field(), 0..8),
        any::<prop::sample::Index>(),
        prop::option::weighted(0.1, authority()),
        prop::sample::select(vec!["/v2.KeyManagementService/Status", "/v2.KeyManagementService/Encrypt", "/"]),
        (any::<bool>(), prop::option::of(any::<[u8; 5]>()), prop::option::of(any::<u8>())),
        prop::collection::vec(0usize..50_000, 0..4),
        prop::option::weighted(0.1, 0usize..=4096),
    )
        .prop_map(|(auth, extra, dup_at, dup, path, (end_stream, priority, padding), splits, size_update)| {
            let mut headers = headers(&[(":method", "POST"), (":scheme", "http"), (":path", path)]);
            if let Some(a) = auth {
                headers.push((b":authority".to_vec(), a.value()));
            }
            headers.extend(extra);
            if let Some(a) = dup {
                let at = dup_at.index(headers.len() + 1);
                headers.insert(at, (b":authority".to_vec(), a.value()));
            }
            BlockSpec { headers, framing: Framing { stream_id: 0, end_stream, priority, padding, splits }, size_update }
        })
}

fn other_frame() -> impl Strategy<Value = Frame> {
    let data = (any::<u8>(), 1u32..100, prop::collection::vec(any::<u8>(), 0..3000))
        .prop_map(|(flags, stream_id, payload)| Frame { kind: DATA, flags, stream_id, payload });
    let settings = prop::collection::vec(any::<u8>(), 0..5).prop_map(|v| Frame {
        kind: SETTINGS,
        flags: 0,
        stream_id: 0,
        payload: v.repeat(6),
    });
    let ping = (any::<bool>(), any::<[u8; 8]>()).prop_map(|(ack, p)| Frame {
        kind: PING,
        flags: u8::from(ack),
        stream_id: 0,
        payload: p.to_vec(),
    });
    let window = (0u32..10, any::<[u8; 4]>()).prop_map(|(s, p)| Frame {
        kind: WINDOW_UPDATE,
        flags: 0,
        stream_id: s,
        payload: p.to_vec(),
    });
    let misc = (
        prop::sample::select(vec![PRIORITY, RST_STREAM, GOAWAY, 0x0a, 0xff]),
        any::<u8>(),
        0u32..10,
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(kind, flags, stream_id, payload)| Frame { kind, flags, stream_id, payload });
    prop_oneof![3 => data, 1 => settings, 1 => ping, 1 => window, 1 => misc]
}

/// Builds the client byte stream and the items the output must decode to.
/// `others[i]` goes before block `i`; any remaining groups go at the end.
fn build(specs: &[BlockSpec], others: &[Vec<Frame>]) -> (Vec<u8>, Vec<Item>, u64) {
    let mut encoder = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut expected = Vec::new();
    let mut rewrites = 0;
    let push_others = |group: &[Frame], input: &mut Vec<u8>, expected: &mut Vec<Item>| {
        for f in group {
            input.extend(f.to_bytes());
            expected.push(Item::Other(f.clone()));
        }
    };
    for (i, spec) in specs.iter().enumerate() {
        if let Some(group) = others.get(i) {
            push_others(group, &mut input, &mut expected);
        }
        let mut block = Vec::new();
        if let Some(size) = spec.size_update {
            loona_hpack::encoder::encode_integer_into(size, 5, 0x20, &mut block).unwrap();
            encoder.set_max_table_size(size);
        }
        block.extend(encoder.encode(spec.headers.iter().map(|(n, v)| (&n[..], &v[..]))));
        let stream_id = 1 + 2 * u32::try_from(i).unwrap();
        let framing = Framing { stream_id, ..spec.framing.clone() };
        input.extend(header_block_frames(&framing, &block));
        let after = expected_after_rewrite(&spec.headers);
        rewrites += after.iter().zip(&spec.headers).filter(|(a, b)| a != b).count() as u64;
        expected.push(Item::Block(Block {
            stream_id,
            end_stream: spec.framing.end_stream,
            priority: spec.framing.priority,
            headers: after,
        }));
    }
    for group in others.iter().skip(specs.len()) {
        push_others(group, &mut input, &mut expected);
    }
    (input, expected, rewrites)
}

fn feed_chunked(input: &[u8], sizes: &[usize]) -> (Result<(), envelope_h2authority::RewriteError>, Vec<u8>, Rewriter) {
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(rest.len()).clamp(1, rest.len());
        i += 1;
        if let Err(e) = r.feed(&rest[..n], &mut out) {
            return (Err(e), out, r);
        }
        rest = &rest[n..];
    }
    (Ok(()), out, r)
}

/// Feeds `input` at once and in `chunks`: both ways must give the same result and the same
/// output, which are returned.
fn one_shot_equals_chunked(
    input: &[u8],
    chunks: &[usize],
) -> Result<(Result<(), envelope_h2authority::RewriteError>, Vec<u8>), TestCaseError> {
    let mut one_shot = Vec::new();
    let res = Rewriter::new().feed(input, &mut one_shot);
    let (chunked_res, chunked, _) = feed_chunked(input, chunks);
    prop_assert_eq!(&res, &chunked_res);
    prop_assert!(one_shot == chunked);
    Ok((res, one_shot))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rewrites_only_invalid_authorities(
        specs in prop::collection::vec(block_spec(), 1..6),
        others in prop::collection::vec(prop::collection::vec(other_frame(), 0..3), 0..7),
        chunks in prop::collection::vec(1usize..5000, 1..20),
    ) {
        let (input, expected, rewrites) = build(&specs, &others);

        let mut r = Rewriter::new();
        let mut one_shot = Vec::new();
        r.feed(&input, &mut one_shot).unwrap();
        prop_assert_eq!(r.rewrites(), rewrites);
        prop_assert_eq!(r.header_blocks(), specs.len() as u64);

        let items = decode_output(&one_shot);
        prop_assert_eq!(items.len(), expected.len());
        for (got, want) in items.iter().zip(&expected) {
            prop_assert_eq!(got, want);
        }

        let (res, chunked, _) = feed_chunked(&input, &chunks);
        prop_assert!(res.is_ok());
        prop_assert!(chunked == one_shot, "chunked output differs from one-shot output");
    }

    #[test]
    fn random_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..4096),
        chunks in prop::collection::vec(1usize..300, 1..10),
    ) {
        let input = [PREFACE, &body[..]].concat();
        // Random bytes may well be refused; what matters is that both ways agree.
        let _ = one_shot_equals_chunked(&input, &chunks)?;
    }

    #[test]
    fn random_frames_never_panic(
        frames in prop::collection::vec(
            (
                prop::sample::select(vec![DATA, HEADERS, HEADERS, CONTINUATION, CONTINUATION, PING, 0x20]),
                prop::sample::select(vec![0u8, END_HEADERS, END_HEADERS | PADDED, END_HEADERS | PRIORITY_FLAG, 0x2d, 0xff, 0x01]),
                0u32..4,
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..12,
        ),
        chunks in prop::collection::vec(1usize..100, 1..10),
    ) {
        let mut input = PREFACE.to_vec();
        for (kind, flags, stream_id, payload) in &frames {
            input.extend(frame(*kind, *flags, *stream_id, payload));
        }
        let (res, one_shot) = one_shot_equals_chunked(&input, &chunks)?;
        if res.is_ok() {
            // Whatever got through must be well-formed for h2.
            decode_output(&one_shot);
        }
    }
}
