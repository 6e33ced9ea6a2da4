//! Tokio I/O adapter running a [`Rewriter`] on the read side of a stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{RewriteError, Rewriter};

/// Size of the buffer bytes are read into before rewriting.
const READ_CHUNK: usize = 16 * 1024;

/// Pass-through payload at least this large is read straight into the
/// caller's buffer instead of going through the rewriter's buffers; smaller
/// remainders are cheaper to pick up together with the following frames in
/// one read.
const DIRECT_READ_MIN: usize = 4 * 1024;

/// Output kept beyond this capacity is released once drained.
const SHRINK_ABOVE: usize = 64 * 1024;

/// Wraps the server side of an HTTP/2 connection (e.g. an accepted
/// `UnixStream`) so that h2 reads client bytes through a [`Rewriter`].
///
/// Reads pull from the inner stream, rewrite header blocks and serve the
/// result; frames other than HEADERS/CONTINUATION are forwarded unchanged
/// (large payloads are read directly into the caller's buffer). Writes,
/// flushes and shutdown go straight to the inner stream.
///
/// A rewriting error surfaces as an [`io::ErrorKind::InvalidData`] read
/// error wrapping a [`RewriteError`]; every later read fails the same way.
#[derive(Debug)]
pub struct RewriteIo<S> {
    inner: S,
    rewriter: Rewriter,
    read_buf: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<S> RewriteIo<S> {
    /// Wraps `inner` with a [`Rewriter::new`] (replacement `localhost`).
    pub fn new(inner: S) -> Self {
        Self::with_rewriter(inner, Rewriter::new())
    }

    /// Wraps `inner` with a custom (fresh) rewriter, e.g. one built by
    /// [`Rewriter::with_replacement`].
    pub fn with_rewriter(inner: S, rewriter: Rewriter) -> Self {
        RewriteIo {
            inner,
            rewriter,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream. Reading from it directly desynchronises the
    /// rewriter; use it for socket options and the like.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The rewriter's state and counters.
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }

    /// Number of `:authority` values replaced on this connection.
    pub fn rewrites(&self) -> u64 {
        self.rewriter.rewrites()
    }

    /// Unwraps the stream. Rewritten bytes not yet read, and a partially
    /// received frame, are lost.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn invalid_data(err: RewriteError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<S: AsyncRead + Unpin> AsyncRead for RewriteIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // 1. Serve rewritten bytes first.
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                    if this.out.capacity() > SHRINK_ABOVE {
                        this.out.shrink_to(READ_CHUNK);
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_failed() {
                return Poll::Ready(Err(invalid_data(RewriteError::Poisoned)));
            }

            // 2. Large pass-through payload: read it in place.
            let budget = this.rewriter.passthrough_budget().min(buf.remaining());
            if budget >= DIRECT_READ_MIN {
                let dst = buf.initialize_unfilled_to(budget);
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    this.eof = true;
                } else {
                    this.rewriter.consume_passthrough(n);
                    buf.advance(n);
                }
                return Poll::Ready(Ok(()));
            }

            // 3. Read a chunk and run it through the rewriter.
            let mut chunk = ReadBuf::new(&mut this.read_buf[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            if let Err(err) = this.rewriter.feed(&this.read_buf[..n], &mut this.out) {
                this.out = Vec::new();
                this.out_pos = 0;
                return Poll::Ready(Err(invalid_data(err)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RewriteIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
