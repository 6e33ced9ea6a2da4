//! The sans-I/O rewriting state machine for the client→server direction.

use std::fmt;

use crate::decoder::Decoder;
use crate::frame::{
    self, DEFAULT_MAX_FRAME_SIZE, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, FRAME_HEADER_LEN,
    FrameHeader, PREFACE, PRIORITY_LEN, TYPE_CONTINUATION, TYPE_HEADERS,
};
use crate::{RewriteError, authority_is_valid, hpack};

/// The authority substituted for an invalid one by [`Rewriter::new`].
pub const DEFAULT_REPLACEMENT: &str = "localhost";

/// Largest compressed header block (HEADERS + CONTINUATION fragments,
/// without padding and priority fields) accepted before the connection is
/// failed with [`RewriteError::HeaderBlockTooLarge`].
pub const MAX_HEADER_BLOCK_SIZE: usize = 256 * 1024;

/// Largest decoded header list, measured as in `SETTINGS_MAX_HEADER_LIST_SIZE`
/// (name + value + 32 octets per field). It bounds "HPACK bombs": a block of
/// one-byte references to a large dynamic-table entry. h2 behind hyper/tonic
/// defaults to 16 KiB, so legitimate requests are far below this.
pub const MAX_HEADER_LIST_SIZE: usize = 1024 * 1024;

/// Most CONTINUATION frames accepted for one header block (bounds
/// "CONTINUATION flood" attacks with empty fragments). A client using
/// 16 KiB frames needs at most 16 for a [`MAX_HEADER_BLOCK_SIZE`] block.
pub const MAX_CONTINUATION_FRAMES: u32 = 64;

/// HPACK dynamic table size the client's encoder may use: the HTTP/2 default
/// `SETTINGS_HEADER_TABLE_SIZE`, which h2 advertises unless configured
/// otherwise. Size updates above it are decoding errors.
pub const HEADER_TABLE_SIZE: usize = 4096;

/// Buffers that grew beyond this while handling an unusually large header
/// block are shrunk back afterwards.
const SHRINK_ABOVE: usize = 64 * 1024;
const AUTHORITY_CACHE_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the client connection preface; `matched` bytes seen so far.
    Preface { matched: usize },
    /// Not HTTP/2 (preface mismatch): everything is forwarded untouched.
    Transparent,
    /// Collecting a frame header; `filled` bytes are in `Rewriter::header`.
    FrameHeader { filled: usize },
    /// Forwarding the payload of a frame that is not part of a header block.
    Passthrough { remaining: usize },
    /// Expecting the Pad Length octet of a PADDED HEADERS frame; `rest` is
    /// the payload length after that octet.
    PadLength { rest: usize, priority: bool },
    /// Reading the 5 priority octets of a HEADERS frame.
    Priority { filled: usize, fragment: usize, padding: usize },
    /// Accumulating a header block fragment.
    Fragment { remaining: usize, padding: usize },
    /// Dropping padding at the end of a HEADERS frame.
    Padding { remaining: usize },
    /// A previous call failed; the connection is unusable.
    Failed,
}

/// The header block currently being accumulated.
#[derive(Debug, Clone, Copy)]
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    /// END_HEADERS flag of the frame currently being read.
    end_headers: bool,
    continuations: u32,
}

/// Remembers the validity of the last `:authority` value seen. A client
/// sends the same authority on every request of a connection, so this keeps
/// the per-request validity check (which allocates when the value is valid)
/// off the hot path.
#[derive(Debug, Default)]
struct AuthorityCache {
    value: Vec<u8>,
    valid: Option<bool>,
}

impl AuthorityCache {
    fn is_valid(&mut self, value: &[u8]) -> bool {
        if let Some(valid) = self.valid
            && self.value == value
        {
            return valid;
        }
        let valid = authority_is_valid(value);
        if value.len() <= AUTHORITY_CACHE_MAX {
            self.value.clear();
            self.value.extend_from_slice(value);
            self.valid = Some(valid);
        }
        valid
    }
}

/// Sans-I/O rewriter for the client→server byte stream of one HTTP/2
/// connection.
///
/// Feed it the bytes read from the client, in order and split anywhere; it
/// appends the bytes h2 should see. Every header block is HPACK-decoded with
/// a per-connection decoder (mirroring the client's encoder). Until the first
/// block with an `:authority` that h2 would reject (see [`authority_is_valid`]),
/// blocks are forwarded as the client encoded them (h2's decoder then mirrors
/// the client's encoder too, and modern clients, which send `localhost`, never
/// pay for a re-encoding). From that block on, every block is re-encoded
/// without dynamic-table use, with the `:authority` replaced: h2's table keeps
/// whatever the forwarded blocks put there and is never referenced again. All
/// other frames are forwarded byte-for-byte, streamed without buffering.
///
/// After an error the rewriter is poisoned: every later [`feed`](Self::feed)
/// returns [`RewriteError::Poisoned`]. The connection must be closed.
pub struct Rewriter {
    state: State,
    header: [u8; FRAME_HEADER_LEN],
    pending: Option<Pending>,
    /// Compressed header block being accumulated.
    block: Vec<u8>,
    /// Re-encoded header block.
    encoded: Vec<u8>,
    decoder: Decoder,
    replacement: Box<[u8]>,
    authority_cache: AuthorityCache,
    /// No block has needed a rewrite yet: blocks are forwarded as received.
    verbatim: bool,
    /// Fields of the current block, while it is still forwarded as received.
    seen: Fields,
    rewrites: u64,
    header_blocks: u64,
}

impl fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("pending", &self.pending)
            .field("buffered_block", &self.block.len())
            .field("replacement", &String::from_utf8_lossy(&self.replacement))
            .field("rewrites", &self.rewrites)
            .field("header_blocks", &self.header_blocks)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter replacing invalid authorities with `localhost`.
    pub fn new() -> Self {
        Self::build(DEFAULT_REPLACEMENT.as_bytes())
    }

    /// A rewriter replacing invalid authorities with `replacement`, which
    /// must itself be a valid authority.
    pub fn with_replacement(replacement: &str) -> Result<Self, RewriteError> {
        if !authority_is_valid(replacement.as_bytes()) {
            return Err(RewriteError::InvalidReplacement(replacement.to_owned()));
        }
        Ok(Self::build(replacement.as_bytes()))
    }

    fn build(replacement: &[u8]) -> Self {
        Rewriter {
            state: State::Preface { matched: 0 },
            header: [0; FRAME_HEADER_LEN],
            pending: None,
            block: Vec::new(),
            encoded: Vec::new(),
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            replacement: replacement.into(),
            authority_cache: AuthorityCache::default(),
            verbatim: true,
            seen: Fields::default(),
            rewrites: 0,
            header_blocks: 0,
        }
    }

    /// Number of `:authority` values replaced so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// Number of header blocks re-encoded so far.
    pub fn header_blocks(&self) -> u64 {
        self.header_blocks
    }

    /// True once the input turned out not to start with the HTTP/2 client
    /// preface; everything is then forwarded untouched.
    pub fn is_transparent(&self) -> bool {
        self.state == State::Transparent
    }

    /// True after `feed` returned an error.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Processes the next chunk of client bytes, appending the rewritten
    /// bytes to `out`. Input may be split at any byte boundary; incomplete
    /// frame headers and header blocks are buffered internally.
    ///
    /// On error, `out` may hold output produced for earlier frames of this
    /// chunk, and the rewriter is poisoned.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if self.state == State::Failed {
            return Err(RewriteError::Poisoned);
        }
        let result = self.run(input, out);
        if result.is_err() {
            self.state = State::Failed;
            self.pending = None;
            self.block = Vec::new();
            self.encoded = Vec::new();
        }
        result
    }

    /// How many upcoming input bytes would be forwarded verbatim, without
    /// state changes other than counting them down. The I/O wrapper uses it
    /// to read such bytes straight into the caller's buffer.
    pub(crate) fn passthrough_budget(&self) -> usize {
        match self.state {
            State::Transparent => usize::MAX,
            State::Passthrough { remaining } => remaining,
            _ => 0,
        }
    }

    /// Accounts for `n ≤ passthrough_budget()` bytes forwarded by the caller.
    pub(crate) fn consume_passthrough(&mut self, n: usize) {
        if let State::Passthrough { remaining } = &mut self.state {
            debug_assert!(n <= *remaining);
            *remaining = remaining.saturating_sub(n);
        }
    }

    fn run(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        loop {
            match self.state {
                State::Failed => return Err(RewriteError::Poisoned),
                State::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Preface { matched } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let expected = &PREFACE[matched..];
                    let n = expected.len().min(input.len());
                    if input[..n] != expected[..n] {
                        // Not HTTP/2 with prior knowledge: stay out of the
                        // way and let the server produce its own error.
                        self.state = State::Transparent;
                        continue;
                    }
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if matched + n == PREFACE.len() {
                        State::FrameHeader { filled: 0 }
                    } else {
                        State::Preface { matched: matched + n }
                    };
                }
                State::FrameHeader { filled } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = (FRAME_HEADER_LEN - filled).min(input.len());
                    self.header[filled..filled + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    if filled + n < FRAME_HEADER_LEN {
                        self.state = State::FrameHeader { filled: filled + n };
                        return Ok(());
                    }
                    self.on_frame_header(out)?;
                }
                State::Passthrough { remaining } => {
                    if remaining == 0 {
                        self.state = State::FrameHeader { filled: 0 };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Passthrough { remaining: remaining - n };
                }
                State::PadLength { rest, priority } => {
                    let Some((&pad, tail)) = input.split_first() else {
                        return Ok(());
                    };
                    input = tail;
                    let priority_len = if priority { PRIORITY_LEN } else { 0 };
                    let padding = usize::from(pad);
                    let Some(fragment) = rest.checked_sub(priority_len + padding) else {
                        return Err(RewriteError::InvalidPadding {
                            stream_id: self.pending()?.stream_id,
                            pad_length: padding,
                            payload_length: rest + 1,
                        });
                    };
                    self.state = if priority_len > 0 {
                        State::Priority { filled: 0, fragment, padding }
                    } else {
                        self.start_fragment(fragment, padding)?
                    };
                }
                State::Priority { filled, fragment, padding } => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = (PRIORITY_LEN - filled).min(input.len());
                    let pending = self.pending_mut()?;
                    let priority = pending.priority.get_or_insert([0; PRIORITY_LEN]);
                    priority[filled..filled + n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if filled + n < PRIORITY_LEN {
                        State::Priority { filled: filled + n, fragment, padding }
                    } else {
                        self.start_fragment(fragment, padding)?
                    };
                }
                State::Fragment { remaining, padding } => {
                    if remaining == 0 {
                        self.state = State::Padding { remaining: padding };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(input.len());
                    self.block.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = State::Fragment { remaining: remaining - n, padding };
                }
                State::Padding { remaining } => {
                    if remaining == 0 {
                        self.end_of_block_frame(out)?;
                        self.state = State::FrameHeader { filled: 0 };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(input.len());
                    input = &input[n..];
                    self.state = State::Padding { remaining: remaining - n };
                }
            }
        }
    }

    fn pending(&self) -> Result<Pending, RewriteError> {
        self.pending.ok_or(RewriteError::Internal("no pending header block"))
    }

    fn pending_mut(&mut self) -> Result<&mut Pending, RewriteError> {
        self.pending.as_mut().ok_or(RewriteError::Internal("no pending header block"))
    }

    /// Dispatches on a complete frame header in `self.header`.
    fn on_frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let header = FrameHeader::parse(&self.header);

        if let Some(pending) = &mut self.pending {
            // Inside a header block only CONTINUATION frames of the same
            // stream may follow (RFC 9113 §6.10).
            if header.kind != TYPE_CONTINUATION || header.stream_id != pending.stream_id {
                return Err(RewriteError::InterleavedFrame {
                    expected_stream_id: pending.stream_id,
                    frame_type: header.kind,
                    stream_id: header.stream_id,
                });
            }
            pending.continuations += 1;
            if pending.continuations > MAX_CONTINUATION_FRAMES {
                return Err(RewriteError::TooManyContinuations {
                    stream_id: pending.stream_id,
                    limit: MAX_CONTINUATION_FRAMES,
                });
            }
            pending.end_headers = header.has(FLAG_END_HEADERS);
            self.state = self.start_fragment(header.length, 0)?;
            return Ok(());
        }

        match header.kind {
            TYPE_HEADERS => {
                let padded = header.has(FLAG_PADDED);
                let priority = header.has(FLAG_PRIORITY);
                let overhead = usize::from(padded) + if priority { PRIORITY_LEN } else { 0 };
                if header.length < overhead {
                    return Err(RewriteError::FrameTooShort {
                        stream_id: header.stream_id,
                        length: header.length,
                        required: overhead,
                    });
                }
                self.block.clear();
                self.pending = Some(Pending {
                    stream_id: header.stream_id,
                    end_stream: header.has(FLAG_END_STREAM),
                    priority: None,
                    end_headers: header.has(FLAG_END_HEADERS),
                    continuations: 0,
                });
                self.state = if padded {
                    State::PadLength { rest: header.length - 1, priority }
                } else if priority {
                    State::Priority { filled: 0, fragment: header.length - PRIORITY_LEN, padding: 0 }
                } else {
                    self.start_fragment(header.length, 0)?
                };
            }
            TYPE_CONTINUATION => {
                return Err(RewriteError::UnexpectedContinuation { stream_id: header.stream_id });
            }
            _ => {
                out.extend_from_slice(&self.header);
                self.state = State::Passthrough { remaining: header.length };
            }
        }
        Ok(())
    }

    /// Checks the block size limit before accepting a fragment.
    fn start_fragment(&mut self, fragment: usize, padding: usize) -> Result<State, RewriteError> {
        if self.block.len() + fragment > MAX_HEADER_BLOCK_SIZE {
            let stream_id = self.pending()?.stream_id;
            return Err(RewriteError::HeaderBlockTooLarge { stream_id, limit: MAX_HEADER_BLOCK_SIZE });
        }
        self.block.reserve(fragment);
        Ok(State::Fragment { remaining: fragment, padding })
    }

    /// Called when a HEADERS or CONTINUATION frame has been fully read.
    fn end_of_block_frame(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let pending = self.pending()?;
        if !pending.end_headers {
            return Ok(());
        }
        self.pending = None;
        let as_received = self.rewrite_block()?;
        frame::write_header_block(
            out,
            pending.stream_id,
            pending.end_stream,
            pending.priority,
            if as_received { &self.block } else { &self.encoded },
            DEFAULT_MAX_FRAME_SIZE,
        );
        self.header_blocks += 1;
        shrink(&mut self.block);
        shrink(&mut self.encoded);
        Ok(())
    }

    /// Decodes `self.block`; returns `true` when it is to be forwarded as
    /// received, else its re-encoding is in `self.encoded`.
    ///
    /// While the connection is verbatim the decoded fields are only copied
    /// aside (cheaper than encoding them); the first `:authority` to replace
    /// encodes the copies, in order, and the rest of the block is encoded as
    /// it is decoded.
    fn rewrite_block(&mut self) -> Result<bool, RewriteError> {
        let Rewriter { block, encoded, decoder, replacement, authority_cache, verbatim, seen, .. } = self;
        encoded.clear();
        seen.clear();
        let mut list_size = 0usize;
        let mut rewrites = 0u64;
        decoder.decode(block, |name, value| {
            list_size = list_size.saturating_add(name.len() + value.len() + 32);
            if list_size > MAX_HEADER_LIST_SIZE {
                return Err(RewriteError::HeaderListTooLarge { limit: MAX_HEADER_LIST_SIZE });
            }
            let replace = name == b":authority" && !authority_cache.is_valid(value);
            if *verbatim {
                if !replace {
                    seen.push(name, value);
                    return Ok(());
                }
                *verbatim = false;
                encoded.reserve(block.len() + replacement.len());
                for (n, v) in seen.iter() {
                    hpack::encode_field(encoded, n, v);
                }
            }
            if replace {
                rewrites += 1;
                hpack::encode_field(encoded, name, replacement);
            } else {
                hpack::encode_field(encoded, name, value);
            }
            Ok(())
        })?;
        self.rewrites += rewrites;
        Ok(self.verbatim)
    }
}

/// Header fields decoded so far in a block, copied back to back.
#[derive(Default)]
struct Fields {
    bytes: Vec<u8>,
    /// (name length, value length) of each field, in order.
    lens: Vec<(usize, usize)>,
}

impl Fields {
    fn clear(&mut self) {
        self.bytes.clear();
        self.lens.clear();
        shrink(&mut self.bytes);
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.lens.push((name.len(), value.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut at = 0;
        self.lens.iter().map(move |&(n, v)| {
            let field = (&self.bytes[at..at + n], &self.bytes[at + n..at + n + v]);
            at += n + v;
            field
        })
    }
}

fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > SHRINK_ABOVE {
        buf.clear();
        buf.shrink_to(SHRINK_ABOVE / 4);
    }
}
