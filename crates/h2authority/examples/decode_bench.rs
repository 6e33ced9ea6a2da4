//! Times HPACK decoding of a realistic grpc-go request stream: our decoder
//! versus loona-hpack's, plus the whole rewriter (frame parsing, decoding,
//! re-encoding) on the same stream.
//!
//! ```text
//! cargo run --release -p envelope-h2authority --example decode_bench
//! ```
//!
//! The blocks are produced the way Go's `hpack.Encoder` (used by grpc-go in
//! kube-apiserver) produces them: exact table matches become indexed
//! fields, everything else a literal with incremental indexing, and strings
//! are Huffman-coded whenever that is shorter. The first block is all
//! literals; later ones reference the dynamic table and carry a fresh
//! `grpc-timeout` literal, which eventually evicts older entries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use envelope_h2authority::__bench::{Decoder, huffman_encode, huffman_encoded_len};
use envelope_h2authority::{HpackError, PREFACE, Rewriter};

const BLOCKS: usize = 200_000;
const ROUNDS: usize = 5;
const TABLE_SIZE: usize = 4096;

/// Static-table entries (RFC 7541 Appendix A) for the names used here.
const STATIC: &[(usize, &str, &str)] = &[
    (1, ":authority", ""),
    (3, ":method", "POST"),
    (4, ":path", "/"),
    (6, ":scheme", "http"),
    (31, "content-type", ""),
    (58, "user-agent", ""),
];

/// A model of Go's `hpack.Encoder`.
#[derive(Default)]
struct GoEncoder {
    table: VecDeque<(String, String)>,
    size: usize,
}

impl GoEncoder {
    fn integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u32, pattern: u8) {
        let max = (1usize << prefix_bits) - 1;
        if value < max {
            out.push(pattern | value as u8);
            return;
        }
        out.push(pattern | max as u8);
        value -= max;
        while value >= 0x80 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        let huffman_len = huffman_encoded_len(s.as_bytes());
        if huffman_len < s.len() {
            Self::integer(out, huffman_len, 7, 0x80);
            huffman_encode(s.as_bytes(), out);
        } else {
            Self::integer(out, s.len(), 7, 0);
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// (index, exact match); static name matches win over dynamic ones.
    fn search(&self, name: &str, value: &str) -> (usize, bool) {
        let mut name_index = 0;
        for &(i, n, v) in STATIC {
            if n == name {
                if v == value {
                    return (i, true);
                }
                name_index = i;
            }
        }
        for (i, (n, v)) in self.table.iter().enumerate() {
            if n == name {
                if v == value {
                    return (62 + i, true);
                }
                if name_index == 0 {
                    name_index = 62 + i;
                }
            }
        }
        (name_index, false)
    }

    fn add(&mut self, name: &str, value: &str) {
        self.size += name.len() + value.len() + 32;
        self.table.push_front((name.to_owned(), value.to_owned()));
        while self.size > TABLE_SIZE {
            if let Some((n, v)) = self.table.pop_back() {
                self.size -= n.len() + v.len() + 32;
            }
        }
    }

    /// Strings Huffman-coded in the block are counted in `huffman`.
    fn encode(&mut self, fields: &[(&str, &str)], huffman: &mut usize) -> Vec<u8> {
        let mut out = Vec::new();
        for &(name, value) in fields {
            let (index, exact) = self.search(name, value);
            if exact {
                Self::integer(&mut out, index, 7, 0x80);
                continue;
            }
            self.add(name, value);
            Self::integer(&mut out, index, 6, 0x40);
            if index == 0 {
                *huffman += usize::from(huffman_encoded_len(name.as_bytes()) < name.len());
                Self::string(&mut out, name);
            }
            *huffman += usize::from(huffman_encoded_len(value.as_bytes()) < value.len());
            Self::string(&mut out, value);
        }
        out
    }
}

fn request_blocks() -> (Vec<Vec<u8>>, usize) {
    let paths =
        ["/v2.KeyManagementService/Encrypt", "/v2.KeyManagementService/Decrypt", "/v2.KeyManagementService/Status"];
    let mut encoder = GoEncoder::default();
    let mut huffman = 0;
    let blocks = (0..BLOCKS)
        .map(|i| {
            // grpc-go sends the remaining deadline, e.g. "2999868u".
            let timeout = format!("{}u", 2_999_000 + (i * 7919) % 1000);
            encoder.encode(
                &[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", paths[i % 5 / 2]),
                    (":authority", "%2Fvar%2Frun%2Fkmsplugin%2Fsocket.sock"),
                    ("content-type", "application/grpc"),
                    ("user-agent", "grpc-go/1.65.0"),
                    ("te", "trailers"),
                    ("grpc-timeout", &timeout),
                ],
                &mut huffman,
            )
        })
        .collect();
    (blocks, huffman)
}

/// Best time per block over `ROUNDS` runs of `run`.
fn time(mut run: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        run();
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / BLOCKS as f64
}

fn ours(blocks: &[Vec<u8>]) {
    let mut decoder = Decoder::new(TABLE_SIZE);
    for block in blocks {
        decoder
            .decode(block, |name, value| {
                black_box((name, value));
                Ok::<(), HpackError>(())
            })
            .expect("valid block");
    }
}

fn loona(blocks: &[Vec<u8>]) {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    for block in blocks {
        decoder
            .decode_with_cb(block, |name, value| {
                black_box((&name, &value));
            })
            .expect("valid block");
    }
}

fn frames(blocks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let len = (block.len() as u32).to_be_bytes();
            let stream_id = (1 + 2 * i as u32).to_be_bytes();
            // HEADERS, END_HEADERS | END_STREAM.
            let mut frame = vec![len[1], len[2], len[3], 0x1, 0x5];
            frame.extend_from_slice(&stream_id);
            frame.extend_from_slice(block);
            frame
        })
        .collect()
}

fn rewriter(frames: &[Vec<u8>]) {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::with_capacity(1024);
    rewriter.feed(PREFACE, &mut out).expect("preface");
    for frame in frames {
        out.clear();
        rewriter.feed(frame, &mut out).expect("valid frame");
        black_box(&out);
    }
    assert_eq!(rewriter.rewrites(), BLOCKS as u64);
}

fn main() {
    let (blocks, huffman) = request_blocks();
    let bytes: usize = blocks.iter().map(Vec::len).sum();

    // Both decoders must agree before their speed means anything.
    let mut a = Decoder::new(TABLE_SIZE);
    let mut b = loona_hpack::Decoder::new();
    for block in &blocks[..5_000] {
        let mut got = Vec::new();
        a.decode(block, |n, v| {
            got.push((n.to_vec(), v.to_vec()));
            Ok::<(), HpackError>(())
        })
        .expect("valid block");
        assert_eq!(got, b.decode(block).expect("valid block"));
    }

    println!(
        "{BLOCKS} grpc-go request header blocks: {:.1} bytes and {:.2} Huffman strings per block \
         (first block {} bytes)",
        bytes as f64 / BLOCKS as f64,
        huffman as f64 / BLOCKS as f64,
        blocks[0].len(),
    );
    let ours_ns = time(|| ours(&blocks));
    let loona_ns = time(|| loona(&blocks));
    let frames = frames(&blocks);
    let rewriter_ns = time(|| rewriter(&frames));
    println!("envelope decoder:      {ours_ns:8.0} ns/block");
    println!("loona-hpack decoder:   {loona_ns:8.0} ns/block");
    println!("speed-up:              {:8.1}x", loona_ns / ours_ns);
    println!("Rewriter::feed total:  {rewriter_ns:8.0} ns/block (frame + decode + re-encode)");
}
