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

use envelope_keystore::{KeyRef, KeyState, KeyStore};

use crate::audit::{AuditEvent, AuditLog, Stage};
use crate::ids::Names;

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

/// One maintenance run at time `now` (Unix seconds), not audited (tests and tools working on a
/// bare key store); the server runs [`run_recorded`]. Blocking.
pub fn run(store: &KeyStore, now: i64) -> envelope_keystore::Result<Report> {
    run_recorded(store, now, None)
}

/// One maintenance run at time `now` (Unix seconds). Blocking. On a store shared by several
/// servers (PostgreSQL) only the leader ([`KeyStore::is_leader`]) runs it; the others report
/// nothing done.
///
/// With a [`Recorder`], each change is audited as AWS's service events are (`DeleteKey`,
/// `RotateKey`, `DeleteExpiredKeyMaterial`, by `kms.amazonaws.com`): an intent record per key
/// due, synced before the change, then an outcome record per key changed. When an intent
/// record cannot be written and the log is fail-closed, that change waits for the next run.
pub fn run_recorded(store: &KeyStore, now: i64, rec: Option<&Recorder>) -> envelope_keystore::Result<Report> {
    if !store.is_leader()? {
        return Ok(Report::default());
    }
    let due = Due::at(store, now)?;
    let deleted = step(rec, "DeleteKey", &due.deletions, || store.purge_deleted(now))?;
    let rotated = step(rec, "RotateKey", &due.rotations, || store.rotate_due(now))?;
    let expired = step(rec, "DeleteExpiredKeyMaterial", &due.expiries, || store.expire_imported(now))?;
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

/// Where maintenance records the changes it makes: the server's audit log and the region and
/// account its records name.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<AuditLog>,
    names: Names,
    region: String,
    account: String,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("log", &self.log.path()).finish_non_exhaustive()
    }
}

impl Recorder {
    /// Records into `log` for keys of `region` and `account`.
    pub fn new(log: Arc<AuditLog>, region: &str, account: &str) -> Self {
        Self { log, names: Names::new(region, account), region: region.into(), account: account.into() }
    }

    fn write(&self, op: &str, key_id: &str, request_id: &str, stage: Stage) -> std::io::Result<()> {
        let arn = [self.names.key_arn(key_id)];
        let ev = AuditEvent {
            operation: Some(op),
            request_id,
            region: &self.region,
            account_id: &self.account,
            resources: &arn,
            stage: Some(stage),
            service: true,
            ..Default::default()
        };
        match stage {
            Stage::Intent => self.log.write_durable(&ev),
            Stage::Outcome => self.log.write(&ev),
        }
    }
}

/// The keys a run will change, from the key store's snapshot (the store's own transactions
/// decide again; see [`run_recorded`]).
#[derive(Default)]
struct Due {
    deletions: Vec<String>,
    rotations: Vec<String>,
    expiries: Vec<String>,
}

impl Due {
    fn at(store: &KeyStore, now: i64) -> envelope_keystore::Result<Self> {
        let mut due = Self::default();
        for m in store.list()? {
            let Ok(kid) = uuid::Uuid::parse_str(&m.key_id) else { continue };
            let a = store.attributes(&KeyRef::Id(kid))?;
            if m.state == KeyState::PendingDeletion && a.deletion_date.is_some_and(|d| d <= now) {
                due.deletions.push(m.key_id.clone());
            }
            if m.state == KeyState::Enabled
                && !a.external
                && a.rotation_period_days.is_some()
                && a.next_rotation.is_some_and(|t| t <= now)
            {
                due.rotations.push(m.key_id.clone());
            }
            if a.materials.iter().any(|x| x.imported && x.valid_to.is_some_and(|t| t <= now)) {
                due.expiries.push(m.key_id.clone());
            }
        }
        Ok(due)
    }
}

/// One kind of change: intent records for the keys due, the change, outcome records for the
/// keys it changed. Nothing due (in the snapshot): nothing to do until the next run.
fn step(
    rec: Option<&Recorder>,
    op: &str,
    due: &[String],
    change: impl FnOnce() -> envelope_keystore::Result<Vec<String>>,
) -> envelope_keystore::Result<Vec<String>> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = due.iter().map(|_| crate::ids::random_uuid()).collect();
    if let Some(r) = rec {
        for (key, id) in due.iter().zip(&ids) {
            if let Err(e) = r.write(op, key, id, Stage::Intent) {
                tracing::error!(operation = op, key_id = %key, error = %e, "cannot write the audit record of a maintenance change");
                if r.log.fail_closed() {
                    return Ok(Vec::new());
                }
            }
        }
    }
    let done = change()?;
    if let Some(r) = rec {
        for key in &done {
            // A key changed without an intent of this run (the snapshot was behind) still gets
            // its outcome record.
            let id = due.iter().position(|k| k == key).map_or_else(crate::ids::random_uuid, |i| ids[i].clone());
            if let Err(e) = r.write(op, key, &id, Stage::Outcome) {
                tracing::error!(operation = op, key_id = %key, error = %e, "cannot write the audit record of a maintenance change");
            }
        }
    }
    Ok(done)
}

/// The periodic maintenance of a key store, running until [`Maintenance::stop`] or until the
/// handle is dropped (or the key store is gone).
#[derive(Debug)]
pub struct Maintenance {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts a task (on the current tokio runtime) that runs maintenance on `store` at once
    /// and then every [`INTERVAL`], recording its changes with `rec`.
    pub fn start(store: Weak<KeyStore>, clock: Arc<Clock>, rec: Option<Recorder>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let first = tokio::time::Instant::now();
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
                let rec = rec.clone();
                match tokio::task::spawn_blocking(move || run_recorded(&store, now, rec.as_ref())).await {
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
    async fn runs_at_start_then_every_interval_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        let m = Maintenance::start(Arc::downgrade(&store), clock.clone(), None);
        settle().await;
        assert!(!exists(&store, &id), "the run at start deletes the due key");
        let id = store.create_key(None, "due next").unwrap().key_id;
        store.schedule_deletion(&KeyRef::parse(&id).unwrap(), clock.now() - 60, 7).unwrap();
        tokio::time::advance(INTERVAL - Duration::from_secs(1)).await;
        settle().await;
        assert!(exists(&store, &id), "nothing runs before the next interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(!exists(&store, &id), "the next interval deletes the due key");

        m.stop().await;
        let id2 = store.create_key(None, "due later").unwrap().key_id;
        store.schedule_deletion(&KeyRef::parse(&id2).unwrap(), clock.now() - 60, 7).unwrap();
        tokio::time::advance(INTERVAL * 3).await;
        settle().await;
        assert!(exists(&store, &id2), "a stopped maintenance no longer runs");
    }

    #[test]
    fn changes_are_audited_as_service_events_intent_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        let rotating = store.create_key(None, "rotates").unwrap().key_id;
        store.set_rotation(&KeyRef::parse(&rotating).unwrap(), Some((90, clock.now() - 1))).unwrap();
        let path = dir.path().join("audit.log");
        let rec = Recorder::new(Arc::new(AuditLog::open(&path, true).unwrap()), "us-east-1", "111122223333");
        let report = run_recorded(&store, clock.now(), Some(&rec)).unwrap();
        assert_eq!((report.deleted, report.rotated), (vec![id.clone()], vec![rotating.clone()]));
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let of = |name: &str| records.iter().filter(|r| r["eventName"] == name).collect::<Vec<_>>();
        for (name, key) in [("DeleteKey", &id), ("RotateKey", &rotating)] {
            let rs = of(name);
            assert_eq!(rs.len(), 2, "{name}: {text}");
            assert_eq!(rs[0]["additionalEventData"]["auditStage"], "intent");
            assert_eq!(rs[1]["additionalEventData"]["auditStage"], "outcome");
            assert_eq!(rs[0]["requestID"], rs[1]["requestID"]);
            for r in rs {
                assert_eq!(r["eventType"], "AwsServiceEvent");
                assert_eq!(
                    r["userIdentity"],
                    serde_json::json!({"accountId": "111122223333", "invokedBy": "kms.amazonaws.com"})
                );
                assert_eq!(r["sourceIPAddress"], "kms.amazonaws.com");
                assert_eq!(r["readOnly"], false);
                assert_eq!(r["resources"][0]["ARN"], format!("arn:aws:kms:us-east-1:111122223333:key/{key}"));
            }
        }
        // Nothing due: nothing written.
        run_recorded(&store, clock.now(), Some(&rec)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_fail_closed_log_that_cannot_be_written_holds_the_change_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        // A log whose every write fails (a full disk: /dev/full answers ENOSPC).
        let path = dir.path().join("audit.log");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let log = AuditLog::open(&path, true).unwrap();
        let rec = Recorder::new(Arc::new(log), "us-east-1", "111122223333");
        let report = run_recorded(&store, clock.now(), Some(&rec)).unwrap();
        assert!(report.deleted.is_empty(), "{report:?}");
        assert!(exists(&store, &id), "the key stays until its deletion can be audited");
        // A log that is not fail-closed lets the change go on (the failure is logged).
        let open = Recorder::new(Arc::new(AuditLog::open(&path, false).unwrap()), "us-east-1", "111122223333");
        assert_eq!(run_recorded(&store, clock.now(), Some(&open)).unwrap().deleted, vec![id.clone()]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, clock) = store_with_due_deletion(dir.path());
        drop(Maintenance::start(Arc::downgrade(&store), clock, None));
        tokio::time::advance(INTERVAL * 3).await;
        settle().await;
        assert!(exists(&store, &id), "a dropped maintenance never runs");
    }

    #[tokio::test(start_paused = true)]
    async fn serve_runs_it_while_serving_and_stops_it_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id, _) = store_with_due_deletion(dir.path());
        // Server::new runs nothing; serving runs maintenance at once.
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
        assert!(exists(&store, &id));
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
        settle().await; // the server is up and its maintenance ran once
        assert!(!exists(&store, &id), "serving runs maintenance at start");
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
