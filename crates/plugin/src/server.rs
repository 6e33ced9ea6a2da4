//! Serving: the gRPC server on a Unix socket (both KMS APIs, behind the `:authority` adapter)
//! and the loopback HTTP server for `/livez`, `/readyz` and `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use envelope_h2authority::RewriteIo;
use envelope_proto::{v1beta1, v2};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::{Connected, UdsConnectInfo};

use crate::backend::KeyBackend;
use crate::metrics::{InstanceMetrics, Metrics};
use crate::plugin::Plugin;
use crate::service::{V1Service, V2Service};

/// One accepted connection: the Unix stream behind the `:authority` rewriter.
pub struct PluginConn(RewriteIo<UnixStream>, InstanceMetrics);

impl Drop for PluginConn {
    fn drop(&mut self) {
        self.1.authority_rewrites(self.0.rewrites());
    }
}

impl Connected for PluginConn {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> UdsConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for PluginConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PluginConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<B: KeyBackend> Plugin<B> {
    /// Serves KMS v2 and v1beta1 on `listener` until `shutdown` completes, then stops accepting
    /// and lets in-flight RPCs finish for at most `shutdown_grace`.
    pub async fn serve(&self, listener: UnixListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
        let cfg = self.config().clone();
        let max = cfg.max_message_bytes;
        let v2svc = v2::key_management_service_server::KeyManagementServiceServer::new(V2Service(self.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let v1svc = v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1Service(self.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let metrics = self.metrics().clone();
        let incoming = UnixListenerStream::new(listener).map(move |r| {
            r.map(|s| {
                metrics.connection_opened();
                PluginConn(RewriteIo::new(s), metrics.clone())
            })
        });
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
    pub async fn serve_http(&self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
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
        && name.is_empty() {
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
                    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve_router(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
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
        assert_eq!(readyz(&[check("", Err("key k is disabled"))]), (StatusCode::SERVICE_UNAVAILABLE, "key k is disabled\n".into()));
        assert_eq!(readyz(&[check("/a (k1)", Ok(())), check("/b (k2)", Ok(()))]).0, StatusCode::OK);
        let (code, body) = readyz(&[check("/a (k1)", Ok(())), check("/b (k2)", Err("throttled"))]);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "[+] /a (k1) ok\n[-] /b (k2): throttled\n");
    }
}
