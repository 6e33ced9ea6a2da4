//! The harness every envelope test crate shares (a dev-dependency only; never in a product
//! build).
//!
//! * [`kms`]: the key server in process on 127.0.0.1:0 with test credentials, requests signed
//!   with `aws-sigv4` (the SDKs' signer) and sent as HTTP/1.1; stop and restart on the same port;
//!   BYOK helpers. With the `sdk` feature, an `aws-sdk-kms` client of it ([`kms::sdk_client`]).
//! * [`plugin`]: a [`envelope_plugin::Plugin`] served on a socket in a temporary directory, with
//!   KMS v2 and v1beta1 clients.
//! * [`net`]: free ports, waiting for a port, a temporary socket path, a TCP endpoint that
//!   accepts and never answers.
//! * [`etcd`]: a real etcd on loopback ports (optionally TLS with client certificates).
//! * [`postgres`]: a real PostgreSQL (initdb + pg_ctl) in a temporary directory on a free port.
//! * [`softhsm`]: SoftHSM2 as the PKCS#11 token: the in-process configuration, an isolated
//!   one with `softhsm2-util` tokens for child processes, PIN files.
//! * [`conformance`]: the `KeyBackend` conformance battery and [`key_backend_battery!`], which
//!   runs it against one backend.
//!
//! A failed step panics with its cause: this crate is test code, like the test files using it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod conformance;
pub mod etcd;
pub mod kms;
pub mod net;
pub mod plugin;
pub mod postgres;
pub mod softhsm;

/// Polls `f` until it returns true or `timeout` passes; returns whether it did.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
