//! A [`KeyBackend`](envelope_plugin::KeyBackend) of the envelope KMS plugin for any endpoint that
//! speaks the AWS KMS API — AWS KMS itself or `envelope kms serve` — through the official
//! `aws-sdk-kms` client.
//!
//! * [`blob`]: the backend's self-describing ciphertext layout and the key_id derivation (pure).
//! * [`classify`]: the one mapping of SDK errors to [`PluginError`](envelope_plugin::PluginError).
//! * [`retry`]: bounded exponential backoff with full jitter for transient errors.
//! * [`backend`]: [`AwsBackend`] itself.
//! * [`client`]: building the SDK client from the AWS configuration chain, checked at start
//!   (region, credentials), and how the endpoint is named in logs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod blob;
pub mod classify;
pub mod client;
pub mod retry;

pub use backend::{AwsBackend, AwsKeyVersion, PLUGIN_CONTEXT_PREFIX, ProbeMode};
pub use blob::{AwsBlob, aws_key_id};
pub use classify::{classify, one_line};
pub use client::{ClientError, ClientOptions, build_client};
pub use retry::RetryPolicy;
