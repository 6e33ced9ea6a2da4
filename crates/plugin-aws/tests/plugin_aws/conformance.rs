//! The conformance battery against the aws backend: a key server in process, managed by its
//! admin; the plugin signs as the application.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_kms::Client;
use envelope_plugin::{Metrics, Plugin, PluginConfig};
use envelope_plugin_aws::AwsBackend;
use envelope_test_support::conformance::Subject;
use envelope_test_support::kms::{self, APP_AKID, KeyServer, SECRET};

use super::{ALIAS, create_key, plugin};

/// A key server with one key behind [`ALIAS`].
pub struct Aws {
    pub server: KeyServer,
    /// Signs as the admin: creates, rotates, disables, sets policies.
    pub admin: Client,
    /// Signs as the application: the plugin's identity.
    pub app: Client,
    /// The key's id.
    pub key: String,
}

impl Subject for Aws {
    type Backend = AwsBackend;

    async fn start() -> Self {
        let server = kms::start().await;
        let admin = server.sdk_client(kms::AKID);
        let app = server.sdk_client(APP_AKID);
        let key = create_key(&admin, Some(ALIAS)).await;
        Aws { server, admin, app, key }
    }

    fn plugin(&self) -> Plugin<AwsBackend> {
        plugin(&self.app, ALIAS, &[])
    }

    async fn rotate(&self) {
        self.admin.rotate_key_on_demand().key_id(&self.key).send().await.unwrap();
    }

    async fn disable(&self) {
        self.admin.disable_key().key_id(&self.key).send().await.unwrap();
    }

    async fn enable(&self) {
        self.admin.enable_key().key_id(&self.key).send().await.unwrap();
    }

    async fn cut_off(&mut self) {
        self.server.stop().await;
    }

    async fn reconnect(&mut self) {
        self.server.restart().await;
    }

    /// The same key through an endpoint that never answers, with the default retry policy and
    /// its own metrics registry.
    async fn stalled_plugin(&self, config: PluginConfig) -> Plugin<AwsBackend> {
        let port = envelope_test_support::net::silent_endpoint().await;
        let client = kms::sdk_client(&format!("http://127.0.0.1:{port}"), APP_AKID, SECRET);
        let metrics = Arc::new(Metrics::new());
        let backend =
            AwsBackend::new(client, ALIAS.to_string(), BTreeMap::new(), 8).unwrap().with_metrics(metrics.clone());
        Plugin::new(backend, config, metrics)
    }
}

envelope_test_support::key_backend_battery! {
    Aws;
    round_trip: run,
    key_id_rules: run,
    rotation: run,
    disable_enable: run,
    outage: run,
    deadlines: run,
    concurrency: run,
    malformed_ciphertext: run,
}

/// The battery through the local KEK layer over the aws backend.
mod local_kek {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use envelope_plugin::{KekConfig, KekLayer, Metrics, Plugin, PluginConfig};
    use envelope_plugin_aws::AwsBackend;
    use envelope_test_support::conformance::Subject;
    use envelope_test_support::kms::{self, APP_AKID, SECRET};

    use super::super::{ALIAS, fast_retry};
    use super::Aws;

    pub struct Layered(Aws);

    impl Subject for Layered {
        type Backend = KekLayer<AwsBackend>;
        const KEEPS_UNWRAPPED_KEYS: bool = true;

        async fn start() -> Self {
            Layered(Aws::start().await)
        }

        fn plugin(&self) -> Plugin<KekLayer<AwsBackend>> {
            let backend = AwsBackend::new(self.0.app.clone(), ALIAS.to_string(), BTreeMap::new(), 8)
                .unwrap()
                .with_retry(fast_retry());
            let metrics = Arc::new(Metrics::new());
            let layer = KekLayer::new(backend, KekConfig::default()).unwrap().with_metrics(metrics.clone().into());
            Plugin::new(layer, PluginConfig::default(), metrics)
        }

        async fn rotate(&self) {
            self.0.rotate().await;
        }

        async fn disable(&self) {
            self.0.disable().await;
        }

        async fn enable(&self) {
            self.0.enable().await;
        }

        async fn cut_off(&mut self) {
            self.0.cut_off().await;
        }

        async fn reconnect(&mut self) {
            self.0.reconnect().await;
        }

        async fn stalled_plugin(&self, config: PluginConfig) -> Plugin<KekLayer<AwsBackend>> {
            let port = envelope_test_support::net::silent_endpoint().await;
            let client = kms::sdk_client(&format!("http://127.0.0.1:{port}"), APP_AKID, SECRET);
            let metrics = Arc::new(Metrics::new());
            let backend =
                AwsBackend::new(client, ALIAS.to_string(), BTreeMap::new(), 8).unwrap().with_metrics(metrics.clone());
            Plugin::new(KekLayer::new(backend, KekConfig::default()).unwrap(), config, metrics)
        }
    }

    envelope_test_support::key_backend_battery! {
        Layered;
        round_trip: run,
        key_id_rules: run,
        rotation: run,
        disable_enable: run,
        outage: run,
        deadlines: run,
        concurrency: run,
        malformed_ciphertext: run,
    }
}
