//! The YAML files the library parses: the key server's credentials file (with identity
//! policies), the kube-apiserver EncryptionConfiguration the inspector reads, and the key
//! server's seed file, applied to a server that may hold at most a few keys. None may panic.
#![no_main]

use std::sync::{Arc, LazyLock};

use envelope_inspect::EncryptionConfig;
use envelope_keystore::KeyStore;
use envelope_kms_server::{Config, Credential, CredentialStore, Server};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

struct Setup {
    server: Server,
    _dir: tempfile::TempDir,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(KeyStore::open(dir.path()).expect("a key store"));
    let creds = CredentialStore::new(vec![Credential::new(
        "AKIDFUZZFUZZFUZZ0001",
        Zeroizing::new("fuzz-secret".to_string()),
        None,
        "arn:aws:iam::111122223333:user/fuzz",
    )])
    .expect("credentials");
    let mut config = Config::new("us-east-1", "111122223333");
    // Seeds that parse create keys: a small quota keeps the store (and each run) small.
    config.max_keys = 4;
    let server = Server::new(store, creds, config).expect("a key server");
    Setup { server, _dir: dir }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = CredentialStore::from_yaml(text);
    if let Ok(config) = EncryptionConfig::from_yaml(text) {
        let _ = config.kms_providers();
        let _ = config.rules();
    }
    let _ = envelope_kms_server::seed::apply(&SETUP.server, text);
});
