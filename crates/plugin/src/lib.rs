//! The Kubernetes KMS plugin as a library.
//!
//! * [`format`]: pure contract rules — the plugin ciphertext envelope, annotation checks.
//! * [`backend`]: the [`KeyBackend`] trait and the embedded key-store backend.
//! * [`kek`]: [`KekLayer`], local KEKs between a remote backend and the data keys (one remote
//!   call per local KEK instead of one per Decrypt), with a cache and prompt revocation.
//! * [`plugin`]: [`Plugin`] — cached health (Status is O(1)), the background probe, and the
//!   Encrypt/Decrypt logic shared by both APIs.
//! * [`service`]: the KMS v2 and v1beta1 gRPC services (thin adapters).
//! * [`server`]: `serve(listener, shutdown)` on a Unix socket behind the HTTP/2 `:authority`
//!   adapter, and the `/livez` `/readyz` `/metrics` HTTP server.
//! * [`conn`]: the byte stream under each connection (read-only readiness, writes coalesced so
//!   a PING ACK leaves with the response).
//! * [`socket`]: socket creation, stale-socket handling, modes, abstract sockets.
//! * [`supervisor`]: several instances (key + socket) in one process: first probes, sockets,
//!   health loops, the shared HTTP server, shutdown together.
//! * [`deadline`]: the caller's gRPC deadline, carried to backends that retry.
//! * [`retry`]: the retry policy of remote backends (full-jitter backoff inside that deadline).
//! * [`metrics`]: Prometheus metrics, one registry per process, labelled per instance.
//! * [`error`]: [`PluginError`] and its single mapping to gRPC codes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod conn;
pub mod deadline;
pub mod error;
pub mod format;
pub mod kek;
pub mod metrics;
pub mod plugin;
pub mod retry;
pub mod server;
pub mod service;
pub mod socket;
pub mod supervisor;

pub use backend::{EmbeddedBackend, KeyBackend, Probe};
pub use envelope_keystore::RESERVED_CONTEXT_PREFIX;
pub use error::PluginError;
pub use kek::{KekConfig, KekLayer};
pub use metrics::{Instance, InstanceMetrics, Metrics};
pub use plugin::{Health, Plugin, PluginConfig};
pub use server::Readiness;
pub use socket::{BoundSocket, SocketSpec};
