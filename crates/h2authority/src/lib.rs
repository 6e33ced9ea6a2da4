//! HTTP/2 `:authority` compatibility adapter for Unix-socket gRPC servers.
//!
//! # The problem
//!
//! kube-apiserver talks to KMS plugins over gRPC on a Unix socket. Its gRPC
//! clients (KMS v1 in every release, KMS v2 before Kubernetes 1.32) put the
//! socket path into the HTTP/2 `:authority` pseudo-header, either raw
//! (`/var/run/kms/x.sock`) or percent-encoded (`%2Fvar%2Frun%2Fkms%2Fx.sock`).
//! Neither parses as an [`http::uri::Authority`], and the Rust `h2` crate
//! (under hyper and tonic) answers such a request with `RST_STREAM`
//! (`PROTOCOL_ERROR`, "malformed authority") before the application sees it.
//!
//! # The fix
//!
//! [`RewriteIo`] sits on the server's byte stream, between the accepted
//! socket and h2, and rewrites the client→server direction only:
//!
//! * the 24-byte client preface is forwarded (a stream that does not start
//!   with it is forwarded untouched so that h2 reports its own error);
//! * frames other than HEADERS/CONTINUATION are forwarded byte-for-byte and
//!   streamed, never buffered whole;
//! * every header block (HEADERS plus CONTINUATIONs, padding stripped,
//!   priority kept) is HPACK-decoded with one decoder per connection — the
//!   client's encoder uses the dynamic table, so no block can be skipped.
//!   Until a block carries an `:authority` for which [`authority_is_valid`]
//!   is false, blocks reach h2 as the client encoded them (h2's decoder then
//!   follows the client's dynamic table itself; a client that sends
//!   `localhost`, as kube-apiserver does since 1.32, costs no re-encoding).
//!   From that block on, every block is re-encoded using only the static
//!   table and literals (valid for any table size h2 advertises; h2's table
//!   is never referenced again), with the `:authority` replaced by
//!   `localhost` (configurable); nothing else changes, header order
//!   included. `host` is left alone: h2 does not validate it.
//!
//! Decoding uses the crate's own RFC 7541 decoder, whose Huffman tables are
//! computed at compile time: grpc-go Huffman-codes a fresh `grpc-timeout`
//! value in every request, so per-string table setup would dominate.
//!
//! The state machine is the sans-I/O [`Rewriter`], usable (and fuzzable) on
//! its own. Server→client traffic is never inspected.
//!
//! # Limits
//!
//! The client must respect h2's default `SETTINGS_HEADER_TABLE_SIZE` of
//! [`HEADER_TABLE_SIZE`] (a server configured with a larger table is not
//! supported). Header blocks are capped at [`MAX_HEADER_BLOCK_SIZE`]
//! compressed, [`MAX_HEADER_LIST_SIZE`] decoded and
//! [`MAX_CONTINUATION_FRAMES`] CONTINUATION frames; exceeding a cap, an HPACK
//! error or a framing error fails the connection with a [`RewriteError`].
//! Re-encoding loses the "never indexed" marking of sensitive literals,
//! which only matters to intermediaries.
//!
//! # Example
//!
//! ```no_run
//! # async fn serve(listener: tokio::net::UnixListener) -> std::io::Result<()> {
//! use envelope_h2authority::RewriteIo;
//!
//! let (socket, _) = listener.accept().await?;
//! let io = RewriteIo::new(socket);
//! // hand `io` to h2 / hyper / tonic instead of `socket`
//! # drop(io); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod frame;
mod hpack;
mod huffman;
mod io;
mod rewriter;

pub use decoder::HpackError;
pub use frame::{DEFAULT_MAX_FRAME_SIZE, PREFACE};
pub use io::RewriteIo;
pub use rewriter::{
    DEFAULT_REPLACEMENT, HEADER_TABLE_SIZE, MAX_CONTINUATION_FRAMES, MAX_HEADER_BLOCK_SIZE, MAX_HEADER_LIST_SIZE,
    Rewriter,
};

/// Why a client→server byte stream could not be rewritten. Any of these
/// means the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RewriteError {
    /// The header block could not be HPACK-decoded.
    #[error("HPACK decoding failed: {0}")]
    Hpack(#[from] HpackError),
    /// The compressed header block exceeds [`MAX_HEADER_BLOCK_SIZE`].
    #[error("header block on stream {stream_id} exceeds {limit} bytes")]
    HeaderBlockTooLarge {
        /// Stream of the header block.
        stream_id: u32,
        /// The limit.
        limit: usize,
    },
    /// The decoded header list exceeds [`MAX_HEADER_LIST_SIZE`].
    #[error("decoded header list exceeds {limit} bytes")]
    HeaderListTooLarge {
        /// The limit.
        limit: usize,
    },
    /// More than [`MAX_CONTINUATION_FRAMES`] CONTINUATION frames in one block.
    #[error("more than {limit} CONTINUATION frames in one header block on stream {stream_id}")]
    TooManyContinuations {
        /// Stream of the header block.
        stream_id: u32,
        /// The limit.
        limit: u32,
    },
    /// A CONTINUATION frame arrived outside a header block.
    #[error("CONTINUATION frame on stream {stream_id} without a preceding HEADERS frame")]
    UnexpectedContinuation {
        /// Stream of the CONTINUATION frame.
        stream_id: u32,
    },
    /// A header block was interrupted by another frame (RFC 9113 §6.10).
    #[error(
        "frame of type {frame_type:#04x} on stream {stream_id} inside the header block of stream {expected_stream_id}"
    )]
    InterleavedFrame {
        /// Stream whose header block is incomplete.
        expected_stream_id: u32,
        /// Type of the offending frame.
        frame_type: u8,
        /// Stream of the offending frame.
        stream_id: u32,
    },
    /// A PADDED HEADERS frame with more padding than payload.
    #[error("HEADERS frame on stream {stream_id}: padding of {pad_length} exceeds payload of {payload_length} bytes")]
    InvalidPadding {
        /// Stream of the frame.
        stream_id: u32,
        /// The Pad Length field.
        pad_length: usize,
        /// The frame's payload length.
        payload_length: usize,
    },
    /// A HEADERS frame too short for the fields its flags announce.
    #[error("HEADERS frame on stream {stream_id} is {length} bytes, flags require at least {required}")]
    FrameTooShort {
        /// Stream of the frame.
        stream_id: u32,
        /// The frame's payload length.
        length: usize,
        /// Bytes required by the PADDED/PRIORITY flags.
        required: usize,
    },
    /// The configured replacement is not a valid authority itself.
    #[error("replacement authority {0:?} is not a valid authority")]
    InvalidReplacement(String),
    /// An earlier error left the rewriter unusable.
    #[error("the rewriter failed earlier; the connection must be closed")]
    Poisoned,
    /// An internal invariant did not hold (a bug in this crate).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Whether h2 accepts `value` as the `:authority` pseudo-header, i.e.
/// whether it parses as an [`http::uri::Authority`] (the check h2's server
/// applies). Socket paths and their percent-encoded forms do not.
pub fn authority_is_valid(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Internals exposed for the benchmark example only; not a stable API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::decoder::Decoder;

    /// Huffman-encodes `src` (RFC 7541 §5.2), appending to `dst`.
    pub fn huffman_encode(src: &[u8], dst: &mut Vec<u8>) {
        crate::huffman::encode(src, dst);
    }

    /// Length of the Huffman encoding of `src`.
    pub fn huffman_encoded_len(src: &[u8]) -> usize {
        crate::huffman::encoded_len(src)
    }
}

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_support;
#[cfg(test)]
mod tests;
