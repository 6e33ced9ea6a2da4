//! The conformance battery against the pkcs11 backend: a SoftHSM2 token per case; the operator
//! (rotate, disable, enable) works through a read-write session of its own, as `envelope key …
//! --backend pkcs11` does from another process.

use std::sync::Arc;
use std::time::Duration;

use envelope_plugin::{Metrics, Plugin, PluginConfig};
use envelope_plugin_pkcs11::{Pkcs11Backend, Token};
use envelope_test_support::conformance::Subject;

use super::{KEY, TestToken, fast_retry, plugin};

pub struct Hsm {
    token: TestToken,
    admin: Token,
}

impl Subject for Hsm {
    type Backend = Pkcs11Backend;

    async fn start() -> Self {
        let token = tokio::task::spawn_blocking(TestToken::new).await.unwrap();
        let admin = token.admin();
        admin.create_key(KEY).unwrap();
        Hsm { token, admin }
    }

    fn plugin(&self) -> Plugin<Pkcs11Backend> {
        plugin(&self.token.config(KEY))
    }

    async fn rotate(&self) {
        self.admin.rotate_key(KEY).unwrap();
    }

    async fn disable(&self) {
        assert_eq!(self.admin.set_enabled(KEY, false).unwrap(), 1);
    }

    async fn enable(&self) {
        assert_eq!(self.admin.set_enabled(KEY, true).unwrap(), 1);
    }

    /// The token is removed: its directory leaves SoftHSM2's token directory (SoftHSM2 then
    /// fails every call on it, as a pulled HSM does).
    async fn cut_off(&mut self) {
        self.token.remove();
    }

    /// The token is inserted again; the backend sees it after re-initialising the module.
    async fn reconnect(&mut self) {
        self.token.reinsert();
    }

    /// A backend with one session, held by a token call that does not return for 1.5 s: every
    /// other call waits for the session, as behind a hung HSM.
    async fn stalled_plugin(&self, config: PluginConfig) -> Plugin<Pkcs11Backend> {
        let (backend, metrics) = self.stalled_backend().await;
        Plugin::new(backend, config, metrics)
    }
}

impl Hsm {
    /// A backend whose one session is held by a token call for 1.5 s (see `stalled_plugin`).
    async fn stalled_backend(&self) -> (Pkcs11Backend, Arc<Metrics>) {
        let mut c = self.token.config(KEY);
        c.sessions = 1;
        let metrics = Arc::new(Metrics::new());
        let backend = Pkcs11Backend::with_retry(&c, fast_retry()).unwrap().with_metrics(metrics.clone());
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let pool = backend.pool().clone();
        tokio::spawn(async move {
            let op = Arc::new(move |_: &mut envelope_plugin_pkcs11::pool::Pooled| {
                let _ = held_tx.send(());
                std::thread::sleep(Duration::from_millis(1500));
                Ok(())
            });
            let _ = envelope_plugin::deadline::scope(
                tokio::time::Instant::now() + Duration::from_secs(5),
                pool.call("Hold", None, op),
            )
            .await;
        });
        tokio::task::spawn_blocking(move || held_rx.recv_timeout(Duration::from_secs(10))).await.unwrap().unwrap();
        (backend, metrics)
    }
}

envelope_test_support::key_backend_battery! {
    Hsm;
    round_trip: run,
    key_id_rules: run,
    rotation: run,
    disable_enable: run,
    outage: run,
    deadlines: run,
    concurrency: run,
    malformed_ciphertext: run,
}

/// The battery through the local KEK layer over the pkcs11 backend.
mod local_kek {
    use std::sync::Arc;

    use envelope_plugin::{KekConfig, KekLayer, Metrics, Plugin, PluginConfig};
    use envelope_plugin_pkcs11::Pkcs11Backend;
    use envelope_test_support::conformance::Subject;

    use super::super::{KEY, fast_retry};
    use super::Hsm;

    pub struct Layered(Hsm);

    impl Subject for Layered {
        type Backend = KekLayer<Pkcs11Backend>;
        const KEEPS_UNWRAPPED_KEYS: bool = true;

        async fn start() -> Self {
            Layered(Hsm::start().await)
        }

        fn plugin(&self) -> Plugin<KekLayer<Pkcs11Backend>> {
            let metrics = Arc::new(Metrics::new());
            let backend = Pkcs11Backend::with_retry(&self.0.token.config(KEY), fast_retry())
                .unwrap()
                .with_metrics(metrics.clone());
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

        async fn stalled_plugin(&self, config: PluginConfig) -> Plugin<KekLayer<Pkcs11Backend>> {
            let (backend, metrics) = self.0.stalled_backend().await;
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
