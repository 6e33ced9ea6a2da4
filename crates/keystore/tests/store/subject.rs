//! One store, opened as many times as a case needs, on each engine.

use std::path::PathBuf;
use std::time::Duration;

use envelope_keystore::{KeyStore, Location, RootSource, StoreOptions};
use envelope_test_support::postgres::Postgres;

/// A store that a case opens one or more times (handles of the same keys).
pub trait Subject {
    /// A new handle on the store.
    fn open(&self) -> KeyStore;
    /// A handle whose root key is another one (its own data directory).
    fn open_with_other_root(&self) -> envelope_keystore::Result<KeyStore>;
    /// Whether the engine is shared (handles refresh on their own).
    fn shared(&self) -> bool;
}

/// `keystore.db` in a temporary data directory.
pub struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
}

impl Subject for Sqlite {
    fn open(&self) -> KeyStore {
        KeyStore::open(&self.dir.path().join("data")).unwrap()
    }

    fn open_with_other_root(&self) -> envelope_keystore::Result<KeyStore> {
        let other = self.dir.path().join("other");
        drop(KeyStore::open(&other)?);
        std::fs::copy(self.dir.path().join("data/keystore.db"), other.join("keystore.db")).unwrap();
        KeyStore::open(&other)
    }

    fn shared(&self) -> bool {
        false
    }
}

/// A throwaway PostgreSQL cluster; the root key in a temporary data directory.
pub struct Pg {
    pub pg: Postgres,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Pg {
    pub fn new() -> Self {
        let pg = Postgres::start();
        let url = pg.create_database("envelope");
        Self { pg, url, dir: tempfile::tempdir().unwrap() }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A handle that checks for changes at least every `interval`.
    pub fn open_every(&self, interval: Duration) -> KeyStore {
        self.try_open(&self.data_dir(), interval).unwrap()
    }

    pub fn try_open(&self, dir: &std::path::Path, interval: Duration) -> envelope_keystore::Result<KeyStore> {
        let options =
            StoreOptions { location: Location::parse(&self.url).unwrap(), create: true, refresh_interval: interval };
        KeyStore::open_with_options(dir, &RootSource::File, &options)
    }
}

impl Subject for Pg {
    fn open(&self) -> KeyStore {
        self.open_every(Duration::from_secs(5))
    }

    fn open_with_other_root(&self) -> envelope_keystore::Result<KeyStore> {
        self.try_open(&self.dir.path().join("other"), Duration::from_secs(5))
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Polls `f` every 20 ms until it returns true; panics with `what` after 20 seconds.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
