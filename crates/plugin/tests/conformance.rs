//! The KeyBackend conformance battery (envelope_test_support::conformance) against the embedded
//! backend: a key store in a temporary directory, changed through a second handle on the same
//! directory, as `envelope key rotate|disable|enable` change it from another process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;

use envelope_keystore::{KeyRef, KeyStore};
use envelope_plugin::{EmbeddedBackend, Metrics, Plugin, PluginConfig};
use envelope_test_support::conformance::Subject;

struct Embedded {
    /// The store the plugins read.
    store: Arc<KeyStore>,
    /// Another handle on the same directory, for the operator's changes.
    admin: KeyStore,
    key: KeyRef,
    _dir: tempfile::TempDir,
}

impl Subject for Embedded {
    type Backend = EmbeddedBackend;

    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let admin = KeyStore::open(&data).unwrap();
        admin.create_key(Some("alias/kubernetes"), "conformance").unwrap();
        let store = Arc::new(KeyStore::open(&data).unwrap());
        Embedded { store, admin, key: KeyRef::parse("kubernetes").unwrap(), _dir: dir }
    }

    fn plugin(&self) -> Plugin<EmbeddedBackend> {
        let backend = EmbeddedBackend::new(self.store.clone(), self.key.clone());
        Plugin::new(backend, PluginConfig::default(), Arc::new(Metrics::new()))
    }

    async fn rotate(&self) {
        self.admin.rotate(&self.key).unwrap();
    }

    async fn disable(&self) {
        self.admin.set_enabled(&self.key, false).unwrap();
    }

    async fn enable(&self) {
        self.admin.set_enabled(&self.key, true).unwrap();
    }
}

envelope_test_support::key_backend_battery! {
    Embedded;
    round_trip: run,
    key_id_rules: run,
    rotation: run,
    disable_enable: run,
    outage: not_applicable("the embedded key store is in process: there is no remote end to lose"),
    deadlines: not_applicable("the embedded backend never waits on a remote end; the gRPC deadline itself is tested in tests/lifecycle.rs"),
    concurrency: run,
    malformed_ciphertext: run,
}

/// The battery through the local KEK layer over the embedded backend.
mod local_kek {
    use std::sync::Arc;

    use envelope_plugin::{EmbeddedBackend, KekConfig, KekLayer, Metrics, Plugin, PluginConfig};
    use envelope_test_support::conformance::Subject;

    struct Layered(super::Embedded);

    impl Subject for Layered {
        type Backend = KekLayer<EmbeddedBackend>;
        const KEEPS_UNWRAPPED_KEYS: bool = true;

        async fn start() -> Self {
            Layered(super::Embedded::start().await)
        }

        fn plugin(&self) -> Plugin<KekLayer<EmbeddedBackend>> {
            let backend = EmbeddedBackend::new(self.0.store.clone(), self.0.key.clone());
            let layer = KekLayer::new(backend, KekConfig::default()).unwrap();
            Plugin::new(layer, PluginConfig::default(), Arc::new(Metrics::new()))
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
    }

    envelope_test_support::key_backend_battery! {
        Layered;
        round_trip: run,
        key_id_rules: run,
        rotation: run,
        disable_enable: run,
        outage: not_applicable("the embedded key store is in process: there is no remote end to lose"),
        deadlines: not_applicable("the embedded backend never waits on a remote end; the gRPC deadline itself is tested in tests/lifecycle.rs"),
        concurrency: run,
        malformed_ciphertext: run,
    }
}
