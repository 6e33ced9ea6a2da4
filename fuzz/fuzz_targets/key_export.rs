//! Key export files (`envelope key export` / `key import`): the outer JSON, the seal, the
//! payload and its validation, then a dry-run import into a store that has keys and an alias
//! of its own. None may panic.
//!
//! The first byte picks how the rest is used: as a whole export file (almost never sealed
//! correctly, so this mostly exercises the outer layer), or as the payload JSON, which the
//! target seals with the fixed root key so that validation and the merge are reached. A
//! payload that seals must decode to itself or be refused by validation.
#![no_main]

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::LazyLock;

use envelope_keystore::export::{self, Payload};
use envelope_keystore::root::RootKey;
use envelope_keystore::{KeyRef, KeyStore};
use libfuzzer_sys::fuzz_target;

/// The root key of the fuzz store (`fuzz/examples/seeds.rs` writes its seeds with the same).
const ROOT_KEY_FILE: [u8; 40] = *b"ENVROOT1ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";

struct Setup {
    root: RootKey,
    root_path: PathBuf,
    store: KeyStore,
    _dir: tempfile::TempDir,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root_path = dir.path().join("root.key");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&root_path)
            .expect("root key file");
        f.write_all(&ROOT_KEY_FILE).expect("root key written");
    }
    let (root, _) = RootKey::load_or_create(&root_path).expect("the root key");
    let store = KeyStore::open(dir.path()).expect("a key store");
    let key = store.create_key(Some("alias/fuzz"), "fuzz").expect("a key");
    store.rotate(&KeyRef::parse(&key.key_id).expect("a key id")).expect("a rotation");
    store.create_key(None, "second").expect("a key");
    Setup { root, root_path, store, _dir: dir }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let s = &*SETUP;
    if mode & 1 == 0 {
        let _ = export::decode(rest, &s.root, &s.root_path);
        let _ = s.store.import(rest, true);
        return;
    }
    let Ok(payload) = serde_json::from_slice::<Payload>(rest) else { return };
    let Ok(file) = export::encode(&payload, &s.root) else { return };
    if let Ok(decoded) = export::decode(&file, &s.root, &s.root_path) {
        assert_eq!(decoded, payload, "a sealed payload decodes to itself");
    }
    let _ = s.store.import(&file, true);
});
