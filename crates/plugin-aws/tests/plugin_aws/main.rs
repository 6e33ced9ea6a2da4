//! AwsBackend through envelope_plugin::Plugin against `envelope kms serve`, served in process on
//! a loopback port (envelope_test_support::kms) with real SigV4 and real HTTP, driven by the
//! official aws-sdk-kms client.
//!
//! * `conformance`: the KeyBackend conformance battery (envelope_test_support::conformance).
//! * `aws`: what only this backend has: the AWS encryption context, key states and policies of
//!   a KMS, aliases moving between keys, the key_id without `CurrentKeyMaterialId`, the probe
//!   modes, metrics of abandoned calls, the blob parser.
//! * `local_kek`: the local KEK layer over this backend, remote calls counted in the key server's
//!   audit log (restart, single-flight, revocation, old ciphertexts, tampered annotations).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod aws;
mod conformance;
mod local_kek;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::Client;
use envelope_plugin::{Metrics, Plugin, PluginConfig};
use envelope_plugin_aws::{AwsBackend, RetryPolicy};

/// The alias every test's plugin is configured with.
const ALIAS: &str = "alias/k8s-master-key";

/// Creates a key and points `alias` at it; returns the key id.
async fn create_key(c: &Client, alias: Option<&str>) -> String {
    let md = c.create_key().description("plugin-aws").send().await.unwrap().key_metadata.unwrap();
    let id = md.key_id().to_string();
    if let Some(a) = alias {
        c.create_alias().alias_name(a).target_key_id(&id).send().await.unwrap();
    }
    id
}

/// Retries that give up within a test's patience.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_millis(400),
        reserve: Duration::from_millis(20),
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        max_attempts: 4,
    }
}

/// A plugin using `key` through `c`, with the extra encryption context `ctx`.
fn plugin(c: &Client, key: &str, ctx: &[(&str, &str)]) -> Plugin<AwsBackend> {
    let ctx: BTreeMap<String, String> = ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let backend = AwsBackend::new(c.clone(), key.to_string(), ctx, 8).unwrap().with_retry(fast_retry());
    Plugin::new(backend, PluginConfig::default(), Arc::new(Metrics::new()))
}
