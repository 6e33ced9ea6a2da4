//! Several plugin instances (a key and a socket each) in one process: their first probes, their
//! sockets, their health loops, the one HTTP server they share (`/livez`, aggregated `/readyz`,
//! `/metrics`), and their shutdown together.
//!
//! Two steps, so the caller can announce what is served in between: [`start`] probes every
//! instance once, binds every socket and the HTTP port, and starts the health loops and the
//! HTTP server; [`Running::serve`] then serves every socket until a stop request (the first
//! lets in-flight requests finish within the shutdown grace, a second stops at once) or until
//! one instance's server fails, which stops the others. Stop requests come as the names of
//! the signals that asked for them, from any source (the binary forwards SIGTERM and SIGINT).
//!
//! Everything started here is owned by [`Running`]: dropping it stops the health loops and the
//! HTTP server and unlinks the sockets that are still ours.

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::socket::{BoundSocket, SocketError, SocketSpec};
use crate::{KeyBackend, Metrics, Plugin};

/// One instance to serve: a plugin and the socket it listens on.
pub struct Instance<B: KeyBackend> {
    /// The plugin (its key, backend and metrics).
    pub plugin: Plugin<B>,
    /// Its socket.
    pub socket: SocketSpec,
    /// The key as configured (for logs).
    pub key: String,
}

/// Why the instances could not start, or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A socket could not be created; the error names the socket.
    #[error(transparent)]
    Socket(SocketError),
    /// A socket could not be created.
    #[error("socket {socket}")]
    NamedSocket {
        /// The socket.
        socket: String,
        /// What went wrong.
        #[source]
        source: SocketError,
    },
    /// A bound socket could not be registered with the runtime.
    #[error("socket {socket}")]
    Listener {
        /// The socket.
        socket: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr} for HTTP")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A first health probe did not finish.
    #[error("first health probe")]
    Probe(#[source] tokio::task::JoinError),
    /// An instance's gRPC server failed.
    #[error("gRPC server on {socket} failed")]
    Server {
        /// The instance's socket.
        socket: String,
        /// What went wrong.
        #[source]
        source: tonic::transport::Error,
    },
    /// An instance's server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(tokio::task::JoinError),
}

impl SupervisorError {
    /// `e` for `socket`, prefixed with the socket unless its message names it already.
    fn socket(socket: &str, e: SocketError) -> Self {
        if e.to_string().contains(socket) {
            SupervisorError::Socket(e)
        } else {
            SupervisorError::NamedSocket { socket: socket.to_owned(), source: e }
        }
    }
}

/// The instances, probed once and bound, with their health loops and the HTTP server running.
pub struct Running<B: KeyBackend> {
    instances: Vec<Instance<B>>,
    listeners: Vec<tokio::net::UnixListener>,
    key_ids: Vec<Option<String>>,
    http_addr: Option<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    /// Health loops and the HTTP server: aborted when this is dropped.
    background: Tasks,
    /// Unlinked when this is dropped.
    sockets: BoundSockets,
}

/// Probes every instance once (all at once: a slow KMS delays the start once, not per key),
/// then binds every socket and `http` (the shared `/livez` `/readyz` `/metrics` port), and
/// starts the health loops and the HTTP server. `Ok(None)` when a stop request came first.
///
/// A key that is not usable yet is logged; the instance serves anyway and reports unhealthy.
pub async fn start<B: KeyBackend>(
    instances: Vec<Instance<B>>,
    http: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    stop: &mut mpsc::UnboundedReceiver<&'static str>,
) -> Result<Option<Running<B>>, SupervisorError> {
    let probes: Vec<_> = instances
        .iter()
        .map(|i| {
            let p = i.plugin.clone();
            tokio::spawn(async move { p.probe_now().await })
        })
        .collect();
    let first = async {
        let mut key_ids = Vec::new();
        for (probe, i) in probes.into_iter().zip(&instances) {
            let h = probe.await.map_err(SupervisorError::Probe)?;
            if let Some(e) = &h.error {
                tracing::warn!(key = %i.key, error = %e, "the key is not usable yet; serving anyway and reporting unhealthy");
            }
            key_ids.push(h.key_id.clone());
        }
        Ok::<_, SupervisorError>(key_ids)
    };
    let key_ids = tokio::select! {
        r = first => r?,
        Some(name) = stop.recv() => {
            tracing::info!("received {name} before serving; stopped");
            return Ok(None);
        }
    };

    // Sockets are unlinked when `sockets` goes out of scope: on every error path and at exit.
    let mut sockets = BoundSockets(Vec::new());
    let mut listeners = Vec::new();
    if let Some(mode) = instances.iter().map(|i| i.socket.mode).find(|m| m & 0o007 != 0) {
        tracing::warn!(
            socket_mode = format!("{mode:04o}"),
            "the socket mode is wider than 0660: every local user can ask the plugin to decrypt; use --socket-group with 0660"
        );
    }
    for i in &instances {
        let path = &i.socket.path;
        if path.starts_with('@') {
            tracing::warn!(
                socket = %path,
                "an abstract socket has no file permissions: any process in this network namespace can connect to it"
            );
        }
        // Most socket errors name the socket already ("socket X is in use ..."): say it once.
        let b = crate::socket::bind(&i.socket).map_err(|e| SupervisorError::socket(path, e))?;
        let listener = b.listener.try_clone().and_then(tokio::net::UnixListener::from_std);
        sockets.0.push(b);
        listeners.push(listener.map_err(|source| SupervisorError::Listener { socket: path.clone(), source })?);
    }
    let http = match http {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| SupervisorError::Http { addr, source })?)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = Tasks(Vec::new());
    for i in &instances {
        background.0.push(i.plugin.spawn_health_loop(stop_rx.clone()));
    }
    let mut http_addr = None;
    if let Some(l) = http {
        let router = crate::server::http_router(instances.iter().map(|i| i.plugin.readiness()).collect(), metrics);
        http_addr = l.local_addr().ok();
        let mut rx = stop_rx.clone();
        background.0.push(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = crate::server::serve_router(l, router, stop).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
        let addr = http_addr.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "health and metrics on http://{addr}/livez, /readyz, /metrics");
    }
    Ok(Some(Running { instances, listeners, key_ids, http_addr, stop_tx, background, sockets }))
}

impl<B: KeyBackend> Running<B> {
    /// Each instance's key_id after the first probe (`None`: not available yet).
    pub fn key_ids(&self) -> &[Option<String>] {
        &self.key_ids
    }

    /// The address of the HTTP server, if one runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Serves every instance until a stop request, then waits for all of them (each at most
    /// its shutdown grace); a second stop request stops at once. A server that fails stops the
    /// others too, and its error is returned. Everything is stopped and the sockets unlinked
    /// when this returns.
    pub async fn serve(mut self, stop: &mut mpsc::UnboundedReceiver<&'static str>) -> Result<(), SupervisorError> {
        let stop_rx = self.stop_tx.subscribe();
        let mut servers = JoinSet::new();
        for (i, listener) in self.instances.iter().zip(std::mem::take(&mut self.listeners)) {
            tracing::info!(socket = %i.socket.path, key = %i.key, "serving KMS v2 and v1beta1");
            let mut rx = stop_rx.clone();
            let p = i.plugin.clone();
            let socket = i.socket.path.clone();
            servers.spawn(async move {
                p.serve(listener, async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
                .map_err(|source| SupervisorError::Server { socket, source })
            });
        }
        let mut failure: Option<SupervisorError> = None;
        loop {
            let signal = tokio::select! {
                Some(name) = stop.recv() => Some(name),
                done = servers.join_next() => {
                    match done {
                        None => break,
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(e))) => {
                            tracing::error!(error = %error_chain(&e), "stopping every instance");
                            failure.get_or_insert(e);
                            let _ = self.stop_tx.send(true);
                        }
                        Some(Err(e)) => {
                            failure.get_or_insert(SupervisorError::Task(e));
                            let _ = self.stop_tx.send(true);
                        }
                    }
                    None
                }
            };
            if let Some(name) = signal {
                if *self.stop_tx.borrow() {
                    tracing::warn!("received {name} again: stopping now without waiting for in-flight requests");
                    servers.abort_all();
                    break;
                }
                tracing::info!("received {name}");
                let _ = self.stop_tx.send(true);
            }
        }
        drop(self.background);
        drop(self.sockets);
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// `e` and its causes on one line, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Background tasks, aborted on drop.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// The instances' sockets; each is unlinked on drop if it is still ours.
#[derive(Debug)]
struct BoundSockets(Vec<BoundSocket>);

impl Drop for BoundSockets {
    fn drop(&mut self) {
        for b in &self.0 {
            b.cleanup();
        }
    }
}
