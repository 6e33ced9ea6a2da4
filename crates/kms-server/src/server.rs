//! HTTP: every request goes to one handler that reads the body (bounded), verifies SigV4,
//! dispatches on `X-Amz-Target`, runs the operation (on its own task when the key store can
//! answer from memory, on the blocking pool otherwise), and answers with the
//! AWS JSON shape — `Content-Type: application/x-amz-json-1.1` and `x-amzn-RequestId` on every
//! response, errors as `{"__type": ..., "message": ...}`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::Server;
use crate::audit::{AuditEvent, Params};
use crate::error::{KmsError, Result};
use crate::op::{Operation, Reply};

/// Content type of every request and response body.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// After the body limit is exceeded, up to this many further bytes are read and discarded so the
/// client receives the error instead of a connection reset; beyond it the connection is dropped.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Most concurrent requests on one HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 256;

/// Serves the AWS KMS JSON API over plain HTTP on `listener` until `shutdown` completes, then
/// lets in-flight requests finish (at most 10 s). Limits: see [`serve_connections`].
pub async fn serve(
    listener: TcpListener,
    state: Arc<Server>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(listener, state, None, shutdown).await
}

/// The accept loop of both HTTP and HTTPS; it also runs the key maintenance every
/// [`crate::maintenance::INTERVAL`] until it returns. It keeps slow, idle or numerous clients from
/// exhausting the server: at most [`Config::max_connections`](crate::Config::max_connections)
/// connections are served at once (further ones wait in the kernel's listen backlog); with
/// `client_timeout` = [`Config::client_timeout`](crate::Config::client_timeout), a connection
/// must send its first bytes and each request's headers within `client_timeout`, a body within
/// `client_timeout` more, and a connection with no request in progress for `client_timeout`
/// (idle keep-alive, idle HTTP/2, or a response the client never reads) is shut down and
/// dropped `client_timeout` later; a TLS handshake gets 10 s; an HTTP/2 connection carries at
/// most 256 concurrent requests. After `shutdown`, in-flight requests get 10 s, then every
/// connection is dropped.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    state: Arc<Server>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let client_timeout = state.config.client_timeout;
    // Key maintenance runs while the server serves: stopped at shutdown, or when this future
    // is dropped.
    let maintenance: Vec<_> = std::iter::once(&state)
        .chain(state.other_regions())
        .map(|s| crate::maintenance::Maintenance::start(Arc::downgrade(s.store()), s.clock().clone(), s.recorder()))
        .collect();
    let permits = Arc::new(Semaphore::new(state.config.max_connections));
    let app = state;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, mut stop) = (app.clone(), tls.clone(), stop_rx.clone());
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, app, client_timeout, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => serve_connection(stream, peer, app, client_timeout, stop).await,
                            Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                        },
                        _ = stopped(&mut stop) => {}
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    for m in maintenance {
        m.stop().await;
    }
    Ok(())
}

/// Completes once the server is shutting down.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_end: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How long the connection has had no request in progress (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_end.lock().map(|t| t.elapsed()).unwrap_or(Duration::ZERO)
    }
}

/// One request in progress; ends when dropped (also when the request is cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_end.lock() {
            *t = tokio::time::Instant::now();
        }
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a connection's first bytes (at most `limit` for them) until they tell HTTP/2 (the
/// preface) from HTTP/1. Returns the bytes read and whether it is HTTP/2; `None` when the peer
/// sent nothing usable in time or closed. hyper's own detection has no time limit, so a client
/// that connects and stays silent would hold its connection slot forever.
async fn detect_version<I: AsyncRead + Unpin>(io: &mut I, limit: Duration) -> Option<(Vec<u8>, bool)> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        let mut chunk = [0u8; 24];
        loop {
            let want = H2_PREFACE.len() - buf.len();
            let n = io.read(&mut chunk[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf[..] != H2_PREFACE[..buf.len()] {
                return Some(false);
            }
            if buf.len() == H2_PREFACE.len() {
                return Some(true);
            }
        }
    };
    let h2 = tokio::time::timeout(limit, read).await.ok()??;
    Some((buf, h2))
}

/// Serves one connection: every request goes to [`handle_request`] (what [`router`]'s one
/// fallback handler calls too, without the router in between).
async fn serve_connection<I>(
    mut io: I,
    peer: SocketAddr,
    app: Arc<Server>,
    client_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let detected = tokio::select! {
        d = detect_version(&mut io, client_timeout) => d,
        _ = stopped(&mut stop) => return,
    };
    let Some((first, h2)) = detected else {
        tracing::debug!(peer = %peer, "no request within the client timeout; closing");
        return;
    };
    let activity = Arc::new(Activity {
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        last_end: std::sync::Mutex::new(tokio::time::Instant::now()),
    });
    let tracked = activity.clone();
    // The audit records' sourceIPAddress, written once per connection.
    let source_ip: Arc<str> = peer.ip().to_string().into();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let request = tracked.begin();
        let app = app.clone();
        let source_ip = source_ip.clone();
        async move {
            let r = handle_request(app, req.map(Body::new), Some(source_ip)).await;
            drop(request);
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(client_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(client_timeout)
        .keep_alive_timeout(client_timeout);
    let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    let conn = builder.serve_connection(TokioIo::new(Prefixed { prefix: first, at: 0, io }), svc);
    tokio::pin!(conn);
    // Shut the connection down (finishing what is in progress) on server shutdown or when it has
    // been idle for the client timeout; drop it if it has not closed a client timeout later.
    let mut closing_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(client_timeout / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped(&mut stop), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(tokio::time::Instant::now());
            }
            _ = tick.tick() => match closing_since {
                Some(t) if t.elapsed() >= client_timeout => {
                    tracing::debug!(peer = %peer, "connection did not close in time; dropping it");
                    return;
                }
                Some(_) => {}
                None if activity.idle_for() >= client_timeout => {
                    tracing::debug!(peer = %peer, "connection idle; closing it");
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                }
                None => {}
            },
        }
    }
}

/// A stream whose first bytes were already read: they are returned again before the rest.
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The axum router (one fallback handler for every method and path).
pub fn router(state: Arc<Server>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(server): State<Arc<Server>>, req: Request<Body>) -> Response<Body> {
    let source_ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| Arc::from(c.0.ip().to_string()));
    handle_request(server, req, source_ip).await
}

/// Answers one request from the client at `source_ip`.
async fn handle_request(server: Arc<Server>, req: Request<Body>, source_ip: Option<Arc<str>>) -> Response<Body> {
    let started = std::time::Instant::now();
    // The region the request's credential scope names picks the keys it acts on; verification
    // then holds the signature to that scope. A region not served stays with the server's own,
    // whose verification refuses the scope as AWS does.
    // (A server of one region, the usual case, skips the header's parse.)
    let other = if server.other_regions().is_empty() {
        None
    } else {
        crate::auth::claimed_region(req.headers()).and_then(|r| server.other_region(r)).cloned()
    };
    let server = other.unwrap_or(server);
    let request_id = crate::ids::random_uuid();
    let user_agent = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut audit = AuditInfo { request_id, source_ip, user_agent, ..AuditInfo::default() };
    let outcome = process(&server, req, &mut audit).await;
    let (mut status, mut body, mut code, mut reply) = match outcome {
        Ok(reply) => (StatusCode::OK, Zeroizing::new(Vec::new()), None, Some(reply)),
        Err(error) => {
            let (code, status) = error.aws();
            if let KmsError::Internal(detail) = &error {
                tracing::error!(request_id = %audit.request_id, error = %detail, "internal error");
            }
            let message = error.to_string();
            let body = error_body(code, &message);
            audit.error_message = (!message.is_empty()).then_some(message);
            (status, body, Some(code), None)
        }
    };
    let op = audit.op;
    if let Some(log) = server.audit() {
        if let (Some(params), Some(o)) = (audit.request.as_mut(), op) {
            params.complete(o.name(), reply.as_ref().and_then(|r| r.key_arn.as_deref()));
        }
        // A request that got as far as its intent record may have changed state.
        let mutating = audit.intent;
        let stage = mutating.then_some(crate::audit::Stage::Outcome);
        let ev = audit.event(&server, reply.as_ref(), code, stage);
        if let Err(e) = log.append(&ev, false).await {
            tracing::error!(request_id = %audit.request_id, error = %e, path = %log.path().display(), "cannot write the audit record");
            server.metrics().audit_failure();
            // A state change already has its durable intent record (written before it ran), and
            // its client must learn that it happened: refusing now would make SDKs retry it.
            // Anything else is withheld (a Decrypt's plaintext is never released unaudited).
            if log.fail_closed() && !mutating {
                let refused = KmsError::AuditUnavailable;
                let (c, s) = refused.aws();
                status = s;
                code = Some(c);
                reply = None;
                body = error_body(c, &refused.to_string());
            }
        }
    }
    if let Some(r) = reply {
        body = r.body;
    }
    server.metrics().request(op.map(Operation::name).unwrap_or("-"), code.unwrap_or(""), started.elapsed());
    tracing::info!(
        request_id = %audit.request_id,
        operation = op.map(Operation::name).unwrap_or("-"),
        principal = audit.principal.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        error = code.unwrap_or(""),
        "request"
    );
    let mut resp = Response::new(Body::from(Bytes::from_owner(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&audit.request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(code) = code {
        h.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    resp
}

/// `{"__type": code, "message": message}`, or `{"__type": code}` when the message is empty (AWS's InvalidCiphertextException).
fn error_body(code: &str, message: &str) -> Zeroizing<Vec<u8>> {
    let body = if message.is_empty() {
        serde_json::json!({"__type": code})
    } else {
        serde_json::json!({"__type": code, "message": message})
    };
    serde_json::to_vec(&body).map(Zeroizing::new).unwrap_or_default()
}

/// What the audit record needs from request processing, filled as far as it got.
#[derive(Default)]
struct AuditInfo {
    request_id: String,
    source_ip: Option<Arc<str>>,
    user_agent: Option<String>,
    /// The operation named by `X-Amz-Target` (known before authentication).
    op: Option<Operation>,
    /// The verified access key id, or before (and without) verification the claimed one.
    access_key_id: Option<String>,
    /// The verified principal.
    principal: Option<String>,
    /// The request's parameters (secret members never included).
    request: Option<Params>,
    /// Key ARNs the request touched.
    resources: Vec<String>,
    /// Whether an intent record was attempted (the request is a state change that was run or
    /// refused for want of that record).
    intent: bool,
    error_message: Option<String>,
}

impl AuditInfo {
    fn event<'a>(
        &'a self,
        server: &'a Server,
        reply: Option<&'a Reply>,
        error_code: Option<&'a str>,
        stage: Option<crate::audit::Stage>,
    ) -> AuditEvent<'a> {
        AuditEvent {
            operation: self.op.map(Operation::name),
            request_id: &self.request_id,
            region: &server.config.region,
            account_id: &server.config.account_id,
            source_ip: self.source_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            access_key_id: self.access_key_id.as_deref(),
            principal: self.principal.as_deref(),
            request: self.request.as_ref(),
            response: reply.and_then(|r| r.elements.as_ref()),
            key_arn: reply.and_then(|r| r.key_arn.as_deref()),
            resources: &self.resources,
            error_code,
            error_message: self.error_message.as_deref(),
            stage,
            service: false,
        }
    }
}

async fn process(server: &Arc<Server>, req: Request<Body>, audit: &mut AuditInfo) -> Result<Reply> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST || parts.uri.path() != "/" || parts.uri.query().is_some() {
        return Err(KmsError::UnknownOperation("This service accepts only POST / with an X-Amz-Target header.".into()));
    }
    // Known before authentication, so even a refused request's record names what it attempted
    // and with which access key id.
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok());
    audit.op = target.and_then(|t| Operation::from_target(t).ok());
    audit.access_key_id = crate::auth::claimed_access_key_id(&parts.headers).map(str::to_string);
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let timeout = server.config.client_timeout;
    // Usually the whole body came with the headers: the timer is armed only when it did not.
    let mut reading = std::pin::pin!(read_body(body, server.config.max_body, length));
    let body = match std::future::poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
        Poll::Ready(body) => body?,
        Poll::Pending => tokio::time::timeout(timeout, reading).await.map_err(|_| {
            KmsError::Serialization(format!("The request body was not received within {} ms.", timeout.as_millis()))
        })??,
    };
    // HTTP/2 clients send the host as `:authority` (RFC 9113 §8.3.1), with no Host header; it is
    // what they signed as `host`.
    let mut with_host;
    let headers = match (parts.headers.contains_key(http::header::HOST), parts.uri.authority()) {
        (false, Some(authority)) => {
            with_host = parts.headers.clone();
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                with_host.insert(http::header::HOST, v);
            }
            &with_host
        }
        _ => &parts.headers,
    };
    let credentials = server.credentials();
    // The audit search is CloudTrail's API: signed for `cloudtrail`; everything else for `kms`.
    let service = audit.op.map_or("kms", Operation::service);
    let cred =
        credentials.verify_for(service, "POST", "/", headers, &body, &server.config.region, SystemTime::now())?;
    let caller = crate::Caller::of(cred);
    audit.access_key_id = Some(cred.access_key_id.clone());
    audit.principal = Some(cred.principal.clone());
    // Only authenticated requests' parameters are recorded: an anonymous client cannot fill the
    // audit log with request bodies. The body is parsed once: its typed members are the audit
    // view; only a body that does not parse is read again, as JSON, for its record.
    let audited = server.audit().is_some();
    let parsed = match target {
        Some(t) => Operation::from_target(t),
        None => Err(KmsError::UnknownOperation("Missing X-Amz-Target header.".into())),
    }
    .and_then(|op| crate::op::parse(op, &body).map(|p| (op, p)));
    let (op, parsed) = match parsed {
        Ok(x) => x,
        Err(e) => {
            if audited {
                audit.request = crate::audit::sanitized_request(&body).map(Params::Json);
            }
            return Err(e);
        }
    };
    drop(body);
    if audited {
        audit.request = Some(parsed.params);
    }
    let request = parsed.request;
    if op.mutates() {
        write_intent(server, audit).await?;
    }
    // Requests the key store answers from memory run here; the rest (SQLite, fsync) on the
    // blocking pool.
    let outcome = if request.in_memory(server) {
        server.execute(request, &caller)
    } else {
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.execute(request, &caller))
            .await
            .map_err(|e| KmsError::Internal(format!("operation task failed: {e}")))?
    };
    audit.resources = outcome.resources;
    outcome.result
}

/// Writes (and syncs) the intent record of a state-changing request before it runs. Under
/// `--audit-fail-closed` a failure refuses the request, so nothing changes unaudited.
async fn write_intent(server: &Server, audit: &mut AuditInfo) -> Result<()> {
    let Some(log) = server.audit() else { return Ok(()) };
    audit.intent = true;
    let ev = audit.event(server, None, None, Some(crate::audit::Stage::Intent));
    match log.append(&ev, true).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(request_id = %audit.request_id, error = %e, path = %log.path().display(), "cannot write the audit intent record");
            server.metrics().audit_failure();
            if log.fail_closed() { Err(KmsError::AuditUnavailable) } else { Ok(()) }
        }
    }
}

/// Reads the body into zeroizing memory, at most `max` bytes. `length` (the Content-Length)
/// sizes the buffer up front so it is not reallocated (which would leave unzeroized copies).
async fn read_body(mut body: Body, max: usize, length: Option<usize>) -> Result<Zeroizing<Vec<u8>>> {
    let too_large = || KmsError::Validation(format!("Request body is larger than the limit of {max} bytes."));
    if length.is_some_and(|n| n > max.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(length.unwrap_or(4096).min(max)));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| KmsError::Serialization("Could not read the request body.".into()))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > max {
            if seen > max.saturating_add(DRAIN_LIMIT) {
                break;
            }
            continue;
        }
        out.extend_from_slice(&data);
    }
    if seen > max {
        return Err(too_large());
    }
    Ok(out)
}
