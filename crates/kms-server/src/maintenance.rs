//! Background maintenance: deleting keys whose deletion window has passed, rotating keys
//! whose automatic rotation is due, and deleting imported material that expired. Runs once
//! when the server is created and then every [`INTERVAL`] while it serves, in a task owned by a
//! [`Maintenance`] handle: `serve` starts it and stops it at shutdown; dropping the handle
//! stops it too. The interval is tokio time, so tests drive it with `tokio::time::pause`.
//!
//! The dates themselves (deletion dates, rotation dates, material expiry) are wall-clock Unix
//! seconds that clients see and send (`DeletionDate`, `NextRotationDate`, `ValidTo`), stored
//! with the keys. They come from a [`Clock`] (system time plus an offset): paused tokio time
//! cannot move the system time, and tests move past a 7-day deletion window with
//! [`Clock::advance`].
//!
//! Replicas on one PostgreSQL database elect one of them to do this work
//! ([`KeyStore::is_leader`]; another takes over at its next run when the leader goes away), and
//! each run re-checks inside its transactions what is due, so a second run finds nothing to do.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// One maintenance run at time `now` (Unix seconds). Blocking. On a store shared by several
/// servers (PostgreSQL) only the leader ([`KeyStore::is_leader`]) runs it; the others report
/// nothing done.
pub fn run(store: &KeyStore, now: i64) -> envelope_keystore::Result<Report> {
    if !store.is_leader()? {
        return Ok(Report::default());
    }
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

/// The periodic maintenance of a key store, running until [`Maintenance::stop`] or until the
/// handle is dropped (or the key store is gone).
#[derive(Debug)]
pub struct Maintenance {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts a task (on the current tokio runtime) that runs maintenance on `store` every
    /// [`INTERVAL`], the first time one interval from now.
    pub fn start(store: Weak<KeyStore>, clock: Arc<Clock>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let first = tokio::time::Instant::now() + INTERVAL;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                let Some(store) = store.upgrade() else { return };
                let now = clock.now();
                match tokio::task::spawn_blocking(move || run(&store, now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "key maintenance failed"),
                    Err(e) => tracing::error!(error = %e, "key maintenance failed"),
                }
            }
        });
        Self { stop: Some(stop), task: Some(task) }
    }

    /// Stops the task and waits for it (a run in progress finishes first).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Maintenance {
    /// Stops the task; a run in progress on the blocking pool still finishes.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envelope_keystore::KeyRef;

    /// A store with one key due for deletion since a minute ago, its id, and the clock.
    fn store_with_due_deletion(dir: &std::path::Path) -> (Arc<KeyStore>, String, Arc<Clock>) {
        let store = Arc::new(KeyStore::open(dir).unwrap());
        let clock = Arc::new(Clock::default());
        let id = store.create_key(None, "due").unwrap().key_id;
        store.schedule_deletion(&KeyRef::parse(&id).unwrap(), clock.now() - 60, 7).unwrap();
        (store, id, clock)
    }

    fn exists(store: &KeyStore, id: &str) -> bool {
        store.describe(&KeyRef::parse(id).unwrap()).is_ok()
    }

    /// Lets the maintenance task and its blocking run finish (time is paused: no interval
    /// passes meanwhile unless the test advances it).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runs_every_interval_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        let m = Maintenance::start(Arc::downgrade(&store), clock.clone());
        tokio::time::advance(INTERVAL - Duration::from_secs(1)).await;
        settle().await;
        assert!(exists(&store, &id), "nothing runs before the first interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(!exists(&store, &id), "the first interval deletes the due key");

        m.stop().await;
        let id2 = store.create_key(None, "due later").unwrap().key_id;
        store.schedule_deletion(&KeyRef::parse(&id2).unwrap(), clock.now() - 60, 7).unwrap();
        tokio::time::advance(INTERVAL * 3).await;
        settle().await;
        assert!(exists(&store, &id2), "a stopped maintenance no longer runs");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        drop(Maintenance::start(Arc::downgrade(&store), clock));
        tokio::time::advance(INTERVAL * 3).await;
        settle().await;
        assert!(exists(&store, &id), "a dropped maintenance never runs");
    }

    #[tokio::test(start_paused = true)]
    async fn serve_runs_it_while_serving_and_stops_it_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, _) = store_with_due_deletion(dir.path());
        // Server::new runs maintenance once: the key due now is gone at once.
        let creds = crate::CredentialStore::new(vec![crate::Credential::new(
            "AKIAMAINTENANCETEST1",
            zeroize::Zeroizing::new("secret".to_owned()),
            None,
            "arn:aws:iam::111122223333:user/test",
        )])
        .unwrap();
        let server = Arc::new(
            crate::Server::new(store.clone(), creds, crate::Config::new("us-east-1", "111122223333")).unwrap(),
        );
        assert!(!exists(&store, &id));
        let clock = server.clock().clone();
        let due = |store: &KeyStore| {
            let id = store.create_key(None, "due").unwrap().key_id;
            store.schedule_deletion(&KeyRef::parse(&id).unwrap(), clock.now() - 60, 7).unwrap();
            id
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(crate::serve(listener, server.clone(), async move {
            let _ = stopped.await;
        }));
        settle().await; // the server is up and its maintenance started
        let id = due(&store);
        tokio::time::advance(INTERVAL).await;
        settle().await;
        assert!(!exists(&store, &id), "maintenance runs while serving");

        stop.send(()).unwrap();
        serving.await.unwrap().unwrap();
        let id = due(&store);
        tokio::time::advance(INTERVAL * 3).await;
        settle().await;
        assert!(exists(&store, &id), "maintenance stopped with the server");
    }
}
