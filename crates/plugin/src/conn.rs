//! The byte stream under one plugin connection: a Unix socket driven with as few system calls
//! and wake-ups per RPC as the HTTP/2 exchange allows.
//!
//! kube-apiserver holds one HTTP/2 connection per plugin and, with grpc-go's BDP estimator,
//! sends a PING with almost every request. Over a plain `tokio::net::UnixStream` the server then
//! makes two writes per RPC (the PING ACK as soon as the request is read, the response when the
//! handler is done), and the runtime wakes up once more per RPC for nothing: the stream is
//! registered for writability too, and every read by the client re-arms EPOLLOUT.
//! [`UdsIo`] does three things instead:
//!
//! * it is registered for **readability only**; writability is registered only while a write
//!   would block (a full socket buffer), and dropped again once the bytes are out;
//! * writes are **buffered** and go out on `flush` in one `write(2)`;
//! * a flush that has only connection-control frames to send (PING ACK, WINDOW_UPDATE,
//!   SETTINGS ACK) is **held** for at most [`MAX_HOLDS`] flushes: the connection task wakes
//!   itself and yields, the request handlers it has just spawned run first, and the response
//!   the peer is waiting for carries the control frames along. Anything else (HEADERS, DATA,
//!   RST_STREAM, GOAWAY, SETTINGS) goes out at the first flush. The hold costs no timer (a
//!   timer due sooner than the runtime's next wake-up would interrupt its `epoll_wait`, one
//!   more system call per RPC) and delays a PING ACK by a few task polls at most.
//!
//! Which frames are pending is known from the outgoing bytes' own 9-byte frame headers
//! ([`FrameScan`]); the HTTP/2 client preface never flows this way.
//!
//! Reads **peek** (`MSG_PEEK`) and consume the bytes from the socket only once the response is
//! written (or before the next read, or after [`CONSUME_AFTER`] without a write). Consuming
//! frees the sender's buffer space, and the kernel then wakes anyone polling the client's end
//! for writability — grpc-go's netpoller registers every connection for `EPOLLOUT`,
//! edge-triggered, so that is kube-apiserver, for nothing, on every request. Consumed at once,
//! that wake-up (an inter-processor interrupt when the client's thread sleeps on another core)
//! would sit between the request's arrival and its handling; consumed after the response is
//! written, it falls into the wake-up the response causes anyway.

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// How many flushes in a row a buffer holding only connection-control frames is held back.
pub const MAX_HOLDS: u8 = 3;

/// Bytes of the read staging buffer (one `read(2)` at most).
const READ_CHUNK: usize = 16 * 1024;

/// How long bytes already handed to the reader may stay in the socket when no write comes to
/// consume them (a peer that waits for its buffer space before sending the rest of a request:
/// not grpc-go, whose writes are buffered, but a peer of many tiny writes could fill its buffer
/// accounting with a few kilobytes). Longer than the server's timer-wheel tick
/// (`server::WHEEL_TICK`), so that arming it never brings the runtime's next wake-up forward:
/// that would cost an `eventfd` write and an extra `epoll_wait` per RPC.
pub const CONSUME_AFTER: Duration = Duration::from_secs(1);

/// Above this many buffered bytes, `poll_write` writes out before it accepts more.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// HTTP/2 frame types that only manage the connection.
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_WINDOW_UPDATE: u8 = 0x8;
const FLAG_ACK: u8 = 0x1;

/// Follows the frame boundaries of an outgoing HTTP/2 byte stream and tells whether a frame
/// other than a connection-control one has started since the last [`FrameScan::reset`].
#[derive(Debug, Default, Clone)]
pub struct FrameScan {
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    urgent: bool,
}

impl FrameScan {
    /// Feeds the next outgoing bytes.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                let h = self.header;
                self.header_len = 0;
                self.payload_left = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                let control = match h[3] {
                    FRAME_PING | FRAME_WINDOW_UPDATE => true,
                    FRAME_SETTINGS => h[4] & FLAG_ACK != 0,
                    _ => false,
                };
                if !control {
                    self.urgent = true;
                }
            }
        }
    }

    /// Whether a frame that should not wait has been seen since the last reset.
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    /// Called when everything fed so far has been written.
    pub fn reset(&mut self) {
        self.urgent = false;
    }
}

/// Registers `stream` with the runtime for `interest` only.
///
/// tokio marks the safe constructor deprecated because a generic `T` might not own its
/// descriptor; here `T` is a `std` stream that owns it, and the `AsyncFd` owns the stream until
/// it is dropped, so the descriptor stays open and the same for the registration's whole life.
#[allow(deprecated)]
fn register(stream: StdUnixStream, interest: Interest) -> io::Result<AsyncFd<StdUnixStream>> {
    AsyncFd::with_interest(stream, interest)
}

/// A connected Unix stream for the HTTP/2 server (see the module documentation).
pub struct UdsIo {
    read: AsyncFd<StdUnixStream>,
    /// Registered for writability only while a write would block.
    write_wait: Option<AsyncFd<StdUnixStream>>,
    rbuf: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    scan: FrameScan,
    holds: u8,
    /// Bytes handed to the reader (peeked) that are still in the socket's queue.
    unconsumed: usize,
    /// Consumes them if nothing else has within [`CONSUME_AFTER`]; armed while they wait.
    consume_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Takes `*unconsumed` bytes, already peeked, out of the socket's queue (into `scratch`).
fn consume(stream: &StdUnixStream, scratch: &mut [u8], unconsumed: &mut usize) -> io::Result<()> {
    while *unconsumed > 0 {
        let n = (*unconsumed).min(scratch.len());
        match recv(stream.as_raw_fd(), &mut scratch[..n], MsgFlags::MSG_DONTWAIT) {
            // Peeked bytes stay in the queue until taken: there is no way for them to be gone.
            Ok(0) | Err(Errno::EAGAIN) => {
                return Err(io::Error::other("peeked bytes vanished from the socket"));
            }
            Ok(k) => *unconsumed -= k.min(*unconsumed),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl UdsIo {
    /// Takes over an accepted stream (which must be in non-blocking mode, as tokio's are).
    pub fn new(stream: StdUnixStream) -> io::Result<UdsIo> {
        stream.set_nonblocking(true)?;
        Ok(UdsIo {
            read: register(stream, Interest::READABLE)?,
            write_wait: None,
            rbuf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            out: Vec::with_capacity(1024),
            out_pos: 0,
            scan: FrameScan::default(),
            holds: 0,
            unconsumed: 0,
            consume_timer: None,
        })
    }

    /// Consumes the bytes handed out so far (see the module documentation).
    fn consume_read(&mut self) -> io::Result<()> {
        self.consume_timer = None;
        consume(self.read.get_ref(), &mut self.rbuf, &mut self.unconsumed)
    }

    fn pending(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// Writes every buffered byte, waiting for writability when the socket buffer is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match self.read.get_ref().write(&self.out[self.out_pos..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let wait = match &mut self.write_wait {
                        Some(w) => w,
                        None => {
                            let dup = self.read.get_ref().try_clone()?;
                            self.write_wait.insert(register(dup, Interest::WRITABLE)?)
                        }
                    };
                    let mut guard = ready!(wait.poll_write_ready(cx))?;
                    guard.clear_ready();
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        self.scan.reset();
        self.holds = 0;
        // Writable again: stop being woken for it.
        self.write_wait = None;
        // The response is out: now the request's bytes may leave the socket.
        Poll::Ready(self.consume_read())
    }

    fn buffer(&mut self, bytes: &[u8]) {
        self.scan.feed(bytes);
        self.out.extend_from_slice(bytes);
    }
}

impl AsyncRead for UdsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(this.rbuf.len());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = match this.read.poll_read_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => {
                    // Nothing new: what was handed out waits for the response's write, or
                    // for the timer.
                    if this.unconsumed > 0 {
                        let timer =
                            this.consume_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(CONSUME_AFTER)));
                        if timer.as_mut().poll(cx).is_ready() {
                            this.consume_read()?;
                        }
                    }
                    return Poll::Pending;
                }
            };
            // A peek starts at the head of the queue: what was handed out goes first.
            if this.unconsumed > 0 {
                this.consume_timer = None;
                consume(guard.get_inner(), &mut this.rbuf, &mut this.unconsumed)?;
            }
            let fd = guard.get_inner().as_raw_fd();
            match recv(fd, &mut this.rbuf[..want], MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    // Readiness is edge-triggered: a read that did not fill the buffer saw
                    // everything in the socket, so the next read waits for the next edge
                    // instead of asking the kernel to say EAGAIN (a byte arriving meanwhile
                    // raises a new edge, which this clear cannot lose).
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    this.unconsumed = n;
                    buf.put_slice(&this.rbuf[..n]);
                    return Poll::Ready(Ok(()));
                }
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl AsyncWrite for UdsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.pending().len() >= WRITE_HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        self.buffer(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending().len() >= WRITE_HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buffer(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending().is_empty() {
            return Poll::Ready(Ok(()));
        }
        if !this.scan.urgent() && this.holds < MAX_HOLDS {
            // Only PING ACK / WINDOW_UPDATE / SETTINGS ACK: yield so that the handlers spawned
            // by this poll run before the connection flushes again.
            this.holds += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.poll_drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        match self.read.get_ref().shutdown(std::net::Shutdown::Write) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn scan_tells_control_frames_from_the_rest() {
        let mut s = FrameScan::default();
        s.feed(&frame(FRAME_PING, FLAG_ACK, &[0; 8]));
        s.feed(&frame(FRAME_WINDOW_UPDATE, 0, &[0, 0, 1, 0]));
        s.feed(&frame(FRAME_SETTINGS, FLAG_ACK, &[]));
        assert!(!s.urgent());
        s.feed(&frame(FRAME_SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        assert!(s.urgent(), "a SETTINGS frame that is not an ACK goes out at once");
        s.reset();
        assert!(!s.urgent());
        s.feed(&frame(0x1, 0x4, b"headers"));
        assert!(s.urgent(), "HEADERS goes out at once");
    }

    #[test]
    fn scan_follows_frames_split_anywhere() {
        // A PING ACK then a DATA frame, fed one byte at a time: the DATA header is found even
        // though no call sees a whole header, and the PING payload is not taken for a header.
        let mut bytes = frame(FRAME_PING, FLAG_ACK, &[0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01]);
        let ping_len = bytes.len();
        bytes.extend(frame(0x0, 0x1, &[7; 300]));
        let mut s = FrameScan::default();
        for (i, b) in bytes.iter().enumerate() {
            s.feed(std::slice::from_ref(b));
            assert_eq!(s.urgent(), i >= ping_len + 8, "after byte {i}");
        }
    }

    #[test]
    fn scan_survives_random_bytes() {
        use proptest::prelude::*;
        proptest!(|(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32))| {
            let mut whole = FrameScan::default();
            let mut parts = FrameScan::default();
            let joined: Vec<u8> = chunks.concat();
            whole.feed(&joined);
            for c in &chunks {
                parts.feed(c);
            }
            prop_assert_eq!(whole.urgent(), parts.urgent());
        });
    }

    fn pair() -> (UdsIo, tokio::net::UnixStream) {
        let (a, b) = StdUnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (UdsIo::new(a).unwrap(), tokio::net::UnixStream::from_std(b).unwrap())
    }

    /// Polls `poll_flush` once with a waker that counts its wake-ups.
    fn flush_once(io: &mut UdsIo, wakes: &Arc<AtomicUsize>) -> Poll<io::Result<()>> {
        let waker = Waker::from(Arc::new(CountWakes(wakes.clone())));
        Pin::new(io).poll_flush(&mut Context::from_waker(&waker))
    }

    struct CountWakes(Arc<AtomicUsize>);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn control_frames_wait_for_a_response_and_leave_with_it() {
        let (mut io, mut peer) = pair();
        let wakes = Arc::new(AtomicUsize::new(0));
        let ping_ack = frame(FRAME_PING, FLAG_ACK, &[1; 8]);
        io.write_all(&ping_ack).await.unwrap();
        // The flush is held, and the task is woken to come back to it.
        assert!(flush_once(&mut io, &wakes).is_pending(), "a flush of a PING ACK alone waits");
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "the held flush wakes its task");
        let mut probe = [0u8; 64];
        assert!(peer.try_read(&mut probe).is_err(), "no byte may have been written yet");
        // A response arrives: one flush sends both, in order.
        let headers = frame(0x1, 0x4, b"hdrs");
        io.write_all(&headers).await.unwrap();
        assert!(matches!(flush_once(&mut io, &wakes), Poll::Ready(Ok(()))));
        let mut got = vec![0u8; ping_ack.len() + headers.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [ping_ack, headers].concat());
    }

    #[tokio::test]
    async fn a_lone_control_frame_leaves_after_a_few_flushes() {
        let (mut io, mut peer) = pair();
        let wakes = Arc::new(AtomicUsize::new(0));
        let ping_ack = frame(FRAME_PING, FLAG_ACK, &[2; 8]);
        io.write_all(&ping_ack).await.unwrap();
        for _ in 0..MAX_HOLDS {
            assert!(flush_once(&mut io, &wakes).is_pending());
        }
        assert!(matches!(flush_once(&mut io, &wakes), Poll::Ready(Ok(()))), "held at most MAX_HOLDS times");
        let mut got = vec![0u8; ping_ack.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ping_ack);
        // The count starts again for the next control frame.
        io.write_all(&ping_ack).await.unwrap();
        assert!(flush_once(&mut io, &wakes).is_pending());
        // And AsyncWriteExt::flush gets there on its own.
        io.flush().await.unwrap();
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, ping_ack);
    }

    #[tokio::test]
    async fn large_writes_wait_for_a_slow_reader_and_lose_nothing() {
        let (mut io, mut peer) = pair();
        // Several megabytes: far more than a socket buffer, so writes must wait for writability.
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let data = frame(0x0, 0x0, &payload[..0xff_ffff.min(payload.len())]);
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            io.write_all(&data).await.unwrap();
            io.flush().await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "bytes arrive complete and in order");
    }

    #[tokio::test]
    async fn reads_see_what_the_peer_wrote_and_then_eof() {
        let (mut io, mut peer) = pair();
        peer.write_all(b"hello over the socket").await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello over the socket");
    }

    /// Bytes still in `io`'s socket queue (a peek from the side of the test).
    fn queued(io: &UdsIo) -> usize {
        let mut probe = [0u8; 4096];
        match recv(io.read.get_ref().as_raw_fd(), &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(Errno::EAGAIN) => 0,
            Err(e) => panic!("peek: {e}"),
        }
    }

    #[tokio::test]
    async fn a_request_leaves_the_socket_once_its_response_is_written() {
        let (mut io, mut peer) = pair();
        peer.write_all(b"request").await.unwrap();
        let mut got = [0u8; 64];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"request");
        assert_eq!(queued(&io), 7, "read, but still in the socket: the client is not woken for its buffer yet");
        io.write_all(&frame(0x1, 0x4, b"hdrs")).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(queued(&io), 0, "the response is out, so the request's bytes are taken");
        let mut resp = [0u8; 13];
        peer.read_exact(&mut resp).await.unwrap();
        assert_eq!(&resp[9..], b"hdrs");
    }

    #[tokio::test]
    async fn bytes_arriving_later_are_read_once_each_and_in_order() {
        let (mut io, mut peer) = pair();
        let mut got = [0u8; 64];
        peer.write_all(b"ab").await.unwrap();
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"ab");
        peer.write_all(b"cd").await.unwrap();
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"cd", "what was handed out is not handed out again");
        assert_eq!(queued(&io), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_no_response_follows_leave_the_socket_after_a_while() {
        let (mut io, mut peer) = pair();
        peer.write_all(b"half a frame").await.unwrap();
        let mut got = [0u8; 64];
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(n, 12);
        // The reader waits for the rest, which a peer short of buffer space would only send once
        // these bytes are taken: the timer takes them.
        let more = tokio::time::timeout(CONSUME_AFTER * 20, io.read(&mut got)).await;
        assert!(more.is_err(), "nothing more was sent");
        assert_eq!(queued(&io), 0, "taken after CONSUME_AFTER without a write");
        peer.write_all(b"rest").await.unwrap();
        let n = io.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"rest");
    }

    #[tokio::test]
    async fn a_peer_that_sends_far_more_than_a_socket_buffer_loses_nothing() {
        let (mut io, mut peer) = pair();
        let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        let expect = payload.clone();
        let writer = tokio::spawn(async move {
            // Small writes too: many buffers for the socket's accounting.
            for chunk in payload.chunks(1000) {
                peer.write_all(chunk).await.unwrap();
            }
        });
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == expect, "every byte once, in order");
    }

    #[tokio::test]
    async fn writes_to_a_closed_peer_fail_cleanly() {
        let (mut io, peer) = pair();
        drop(peer);
        io.write_all(&frame(0x1, 0x4, b"hdrs")).await.unwrap();
        let err = io.flush().await.unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{err}");
    }
}
