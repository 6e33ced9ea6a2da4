//! Background maintenance: deleting keys whose deletion window has passed, rotating keys
//! whose automatic rotation is due, and deleting imported material that expired. Runs once
//! when the server is created and then every [`INTERVAL`] on a background thread that ends
//! when the key store is dropped.
//!
//! Time comes from a [`Clock`] (system time plus an adjustable offset) so tests can move past a
//! 7-day deletion window without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envelope_keystore::KeyStore;

/// How often maintenance runs.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The server's clock: system time plus an offset (zero unless a test moves it).
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
}

impl Clock {
    /// Now, Unix seconds.
    pub fn now(&self) -> i64 {
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        sys.saturating_add(self.offset.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `secs` (for tests).
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
}

/// What one maintenance run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Keys deleted because their deletion date passed.
    pub deleted: Vec<String>,
    /// Keys rotated because their automatic rotation was due.
    pub rotated: Vec<String>,
    /// Keys whose imported material expired (deleted; the keys are PendingImport).
    pub expired: Vec<String>,
}

/// One maintenance run at time `now` (Unix seconds). Blocking.
pub fn run(store: &KeyStore, now: i64) -> envelope_keystore::Result<Report> {
    let deleted = store.purge_deleted(now)?;
    let rotated = store.rotate_due(now)?;
    let expired = store.expire_imported(now)?;
    for k in &deleted {
        tracing::info!(key_id = %k, "deleted key after its deletion window");
    }
    for k in &rotated {
        tracing::info!(key_id = %k, "rotated key (automatic rotation)");
    }
    for k in &expired {
        tracing::info!(key_id = %k, "deleted expired imported key material");
    }
    Ok(Report { deleted, rotated, expired })
}

/// Starts the background thread (a plain thread: the server may be created outside a runtime).
pub(crate) fn spawn(store: Weak<KeyStore>, clock: Arc<Clock>) {
    let started = std::thread::Builder::new().name("envelope-kms-maintenance".into()).spawn(move || {
        loop {
            std::thread::sleep(INTERVAL);
            let Some(store) = store.upgrade() else { return };
            if let Err(e) = run(&store, clock.now()) {
                tracing::error!(error = %e, "key maintenance failed");
            }
        }
    });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the key maintenance thread");
    }
}
