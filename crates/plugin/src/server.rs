//! Serving: the gRPC server on a Unix socket (both KMS APIs, behind the `:authority` adapter)
//! and the loopback HTTP server for `/livez`, `/readyz` and `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use envelope_h2authority::RewriteIo;
use envelope_proto::{v1beta1, v2};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::backend::KeyBackend;
use crate::conn::UdsIo;
use crate::metrics::{InstanceMetrics, Metrics};
use crate::plugin::Plugin;
use crate::service::{V1Service, V2Service};

/// One accepted connection: the Unix stream behind the `:authority` rewriter, holding one of
/// the socket's connection slots, closed after `idle_timeout` without a byte from the client.
pub struct PluginConn {
    io: RewriteIo<UdsIo>,
    info: UdsConnectInfo,
    metrics: InstanceMetrics,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_read: Instant,
}

impl Drop for PluginConn {
    fn drop(&mut self) {
        self.metrics.authority_rewrites(self.io.rewrites());
    }
}

impl Connected for PluginConn {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> UdsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PluginConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    // Re-arm the idle timer at most once a second (a timer reset per read would
                    // cost more than the read).
                    let now = Instant::now();
                    if now.duration_since(this.last_read) >= Duration::from_secs(1) {
                        this.last_read = now;
                        this.idle.as_mut().reset(now + this.idle_timeout);
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Accepts connections for [`Plugin::serve`]: at most `max` at once (the rest wait in the
/// listen backlog), and on errors such as EMFILE (out of file descriptors) it backs off
/// instead of spinning on a listener that stays readable.
fn accept_loop(
    listener: UnixListener,
    max: usize,
    idle_timeout: Duration,
    metrics: InstanceMetrics,
) -> (ReceiverStream<std::io::Result<PluginConn>>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(max.max(1)));
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            match listener.accept().await {
                Ok((stream, addr)) => {
                    backoff = Duration::from_millis(5);
                    let info = UdsConnectInfo { peer_addr: Some(Arc::new(addr)), peer_cred: stream.peer_cred().ok() };
                    let io = match stream.into_std().and_then(UdsIo::new) {
                        Ok(io) => io,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot set up an accepted connection");
                            continue;
                        }
                    };
                    metrics.connection_opened();
                    let conn = PluginConn {
                        io: RewriteIo::new(io),
                        info,
                        metrics: metrics.clone(),
                        _slot: slot,
                        idle: Box::pin(tokio::time::sleep(idle_timeout)),
                        idle_timeout,
                        last_read: Instant::now(),
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset before it was
                    // accepted: the listener stays readable, so wait before trying again.
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept a connection");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    (ReceiverStream::new(rx), AbortOnDrop(task))
}

/// Keeps a timer due within [`WHEEL_TICK`] at all times.
///
/// Every RPC arms a timer for its deadline (kube-apiserver sends `grpc-timeout`, 3 s by
/// default). When the runtime's next planned wake-up is later than that deadline (only the
/// health loop's timer is armed, up to `health_interval` away), arming it makes tokio's timer
/// driver interrupt its own `epoll_wait` through its eventfd: one extra system call and event
/// per RPC. With a timer always due sooner than any RPC deadline the driver already plans to
/// wake in time, and the cost is one wake-up per [`WHEEL_TICK`].
async fn keep_timer_wheel_warm() {
    let mut tick = tokio::time::interval(WHEEL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// See [`keep_timer_wheel_warm`]; shorter than any deadline kube-apiserver uses, and than the
/// connections' own timer ([`crate::conn::CONSUME_AFTER`]).
const WHEEL_TICK: Duration = Duration::from_millis(500);
const _: () = assert!(WHEEL_TICK.as_millis() < crate::conn::CONSUME_AFTER.as_millis());

/// Stops the accept task when serving ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AsyncWrite for PluginConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<B: KeyBackend> Plugin<B> {
    /// Serves KMS v2 and v1beta1 on `listener` until `shutdown` completes, then stops accepting
    /// and lets in-flight RPCs finish for at most `shutdown_grace`.
    pub async fn serve(
        &self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let cfg = self.config().clone();
        let max = cfg.max_message_bytes;
        let v2svc = v2::key_management_service_server::KeyManagementServiceServer::new(V2Service(self.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let v1svc = v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1Service(self.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let (incoming, _accepting) =
            accept_loop(listener, cfg.max_connections, cfg.idle_timeout, self.metrics().clone());
        let _wheel = AbortOnDrop(tokio::spawn(keep_timer_wheel_warm()));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let span = self.span().clone();
        let signal = async move {
            shutdown.await;
            span.in_scope(|| tracing::info!("shutting down: no new connections; finishing in-flight requests"));
            let _ = started_tx.send(());
        };
        let server = tonic::transport::Server::builder()
            .timeout(cfg.request_timeout)
            .add_service(v2svc)
            .add_service(v1svc)
            .serve_with_incoming_shutdown(incoming, signal);
        let grace = async move {
            if started_rx.await.is_ok() {
                tokio::time::sleep(cfg.shutdown_grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = server => r,
            _ = grace => {
                let _instance = self.span().enter();
                tracing::warn!(grace = ?cfg.shutdown_grace, "shutdown grace period over; dropping remaining connections");
                Ok(())
            }
        }
    }

    /// This instance's readiness, for [`http_router`].
    pub fn readiness(&self) -> Readiness {
        let p = self.clone();
        Readiness {
            name: self.metrics().instance().name(),
            check: Arc::new(move || {
                let h = p.health();
                if h.is_ready() { Ok(()) } else { Err(h.healthz()) }
            }),
        }
    }

    /// The HTTP router for `/livez`, `/readyz` and `/metrics` of this instance alone.
    pub fn http_router(&self) -> Router {
        http_router(vec![self.readiness()], self.metrics().shared().clone())
    }

    /// Serves [`Plugin::http_router`] on `listener` until `shutdown` completes.
    pub async fn serve_http(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        serve_router(listener, self.http_router(), shutdown).await
    }
}

/// One instance's readiness check: its name (`socket (key)`, empty for a single instance) and a
/// cheap function reading its cached health (`Err` carries the reason).
#[derive(Clone)]
pub struct Readiness {
    /// Shown in the `/readyz` body.
    pub name: String,
    /// `Ok` when the instance can serve Encrypt now.
    pub check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// `/readyz` body and status for `checks`: 200 `ok` when every instance is ready, else 503 with
/// one line per instance (`[+] name ok` / `[-] name: reason`); a single unnamed instance
/// answers with just its reason.
pub fn readyz(checks: &[Readiness]) -> (StatusCode, String) {
    let results: Vec<(&str, Result<(), String>)> = checks.iter().map(|c| (c.name.as_str(), (c.check)())).collect();
    if results.iter().all(|(_, r)| r.is_ok()) {
        return (StatusCode::OK, "ok\n".to_string());
    }
    if let [(name, Err(reason))] = results.as_slice()
        && name.is_empty()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    let mut body = String::new();
    for (name, r) in &results {
        match r {
            Ok(()) => body.push_str(&format!("[+] {name} ok\n")),
            Err(reason) => body.push_str(&format!("[-] {name}: {reason}\n")),
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// The HTTP router of a process serving the instances behind `checks`: `/livez` (up while the
/// process runs, whatever the keys' state), `/readyz` (every instance ready) and `/metrics`.
pub fn http_router(checks: Vec<Readiness>, metrics: Arc<Metrics>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = readyz(&checks);
                async move { r }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                        .into_response()
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, r: Result<(), &str>) -> Readiness {
        let r = r.map_err(str::to_string);
        Readiness { name: name.into(), check: Arc::new(move || r.clone()) }
    }

    #[test]
    fn readyz_aggregates_instances() {
        assert_eq!(readyz(&[check("", Ok(()))]), (StatusCode::OK, "ok\n".into()));
        assert_eq!(
            readyz(&[check("", Err("key k is disabled"))]),
            (StatusCode::SERVICE_UNAVAILABLE, "key k is disabled\n".into())
        );
        assert_eq!(readyz(&[check("/a (k1)", Ok(())), check("/b (k2)", Ok(()))]).0, StatusCode::OK);
        let (code, body) = readyz(&[check("/a (k1)", Ok(())), check("/b (k2)", Err("throttled"))]);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "[+] /a (k1) ok\n[-] /b (k2): throttled\n");
    }
}
