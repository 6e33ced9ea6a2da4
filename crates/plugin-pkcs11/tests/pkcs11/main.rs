//! Pkcs11Backend through envelope_plugin::Plugin against SoftHSM2, a real PKCS#11 token, loaded
//! in this process (envelope_test_support::softhsm). Every test makes a token of its own
//! through PKCS#11 (`C_InitToken`, `C_InitPIN`).
//!
//! * `conformance`: the KeyBackend conformance battery (envelope_test_support::conformance).
//! * `faults`: what only this backend has: wrong PIN (never retried into a lockout), missing
//!   token or key, a key without CKA_DECRYPT, a lost login, the key's attributes in the token,
//!   destroyed key objects, the session pool under load.
//! * `root`: a key store's root key wrapped by a token key (restart, reseal, wrong keys).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod conformance;
mod faults;
mod root;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use envelope_plugin::{Metrics, Plugin, PluginConfig};
use envelope_plugin_pkcs11::module::Module;
use envelope_plugin_pkcs11::{Pkcs11Backend, Pkcs11Config, RetryPolicy, Token, TokenSelector};
use envelope_test_support::softhsm;

/// The key label every test's plugin is configured with.
const KEY: &str = "k8s-kek";
const SO_PIN: &str = "12345678";
const PIN: &str = "5678";

/// A SoftHSM2 token made for one test, with a PIN file.
pub struct TestToken {
    pub label: String,
    pub serial: String,
    pub pin_file: PathBuf,
    /// SoftHSM2's token directory of this process.
    pub tokens: PathBuf,
    pub dir: tempfile::TempDir,
}

/// Tokens are made one at a time (each takes the module's one free slot).
static MAKING: Mutex<()> = Mutex::new(());

pub fn module() -> Module {
    softhsm::process_conf();
    Module::load(&softhsm::module_path()).unwrap()
}

impl TestToken {
    pub fn new() -> Self {
        let conf = softhsm::process_conf();
        let tokens = conf.parent().unwrap().join("tokens");
        let m = module();
        let mut rnd = [0u8; 8];
        aws_lc_rs::rand::fill(&mut rnd).unwrap();
        let label = format!("test-{}", hex::encode(rnd));
        let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
        let g = m.enter().unwrap();
        let ctx = g.ctx();
        let free = ctx
            .get_all_slots()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).map(|i| !i.token_initialized()).unwrap_or(false))
            .expect("SoftHSM2 offers a free slot");
        let so = AuthPin::new(SO_PIN.into());
        ctx.init_token(free, &so, &label).unwrap();
        let (slot, serial) = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find_map(|s| {
                let i = ctx.get_token_info(s).ok()?;
                (i.label().trim_end() == label).then(|| (s, i.serial_number().trim_end().to_string()))
            })
            .expect("the new token");
        let s = ctx.open_rw_session(slot).unwrap();
        s.login(UserType::So, Some(&so)).unwrap();
        s.init_pin(&AuthPin::new(PIN.into())).unwrap();
        s.logout().unwrap();
        drop(s);
        drop(g);
        let dir = tempfile::tempdir().unwrap();
        let pin_file = softhsm::write_pin_file(dir.path(), "pin", PIN);
        TestToken { label, serial, pin_file, tokens, dir }
    }

    pub fn config(&self, key: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: softhsm::module_path(),
            token: TokenSelector::Label(self.label.clone()),
            pin_file: self.pin_file.clone(),
            key_label: key.to_string(),
            sessions: 4,
        }
    }

    pub fn admin(&self) -> Token {
        Token::open(&self.config(KEY)).unwrap()
    }

    /// Where the token's directory is while it is "removed".
    fn away(&self) -> PathBuf {
        self.dir.path().join("away")
    }

    /// Removes the token (its directory leaves SoftHSM2's token directory).
    pub fn remove(&self) {
        let d = softhsm::token_dir(&self.tokens, &self.serial).expect("the token's directory");
        std::fs::rename(&d, self.away()).unwrap();
        std::fs::write(self.dir.path().join("away.name"), d.file_name().unwrap().to_str().unwrap()).unwrap();
    }

    /// Puts the token back.
    pub fn reinsert(&self) {
        let name = std::fs::read_to_string(self.dir.path().join("away.name")).unwrap();
        std::fs::rename(self.away(), self.tokens.join(name)).unwrap();
    }
}

impl Default for TestToken {
    fn default() -> Self {
        Self::new()
    }
}

/// Retries that give up within a test's patience.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_millis(1500),
        reserve: Duration::from_millis(20),
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_attempts: 8,
    }
}

/// A plugin over `config`.
pub fn plugin(config: &Pkcs11Config) -> Plugin<Pkcs11Backend> {
    let metrics = Arc::new(Metrics::new());
    let backend = Pkcs11Backend::with_retry(config, fast_retry()).unwrap().with_metrics(metrics.clone());
    Plugin::new(backend, PluginConfig::default(), metrics)
}
