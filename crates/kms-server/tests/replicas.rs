//! Key server replicas: several servers, each with its own key store handle and data directory
//! (the same root key), on one real PostgreSQL database (Debian's, a throwaway cluster). What
//! one replica changes, the others serve; conflicting writes through different replicas are
//! decided by the database; background work runs on one replica.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use std::sync::Arc;
use std::time::Duration;

use envelope_keystore::{KeyStore, Location, RootSource, StoreOptions};
use envelope_kms_server::Config;
use envelope_test_support::kms::*;
use envelope_test_support::postgres::Postgres;
use serde_json::json;

/// A database and the data directories of the replicas (each a copy of one root key).
struct Cluster {
    pg: Postgres,
    url: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let pg = Postgres::start();
        let url = pg.create_database("kms");
        let dir = tempfile::tempdir().unwrap();
        drop(KeyStore::open(&dir.path().join("first")).unwrap());
        Self { pg, url, dir }
    }

    /// A key store handle for replica `n`, checking for missed changes every `refresh`.
    fn store(&self, n: usize, refresh: Duration) -> Arc<KeyStore> {
        let data = self.dir.path().join(format!("replica-{n}"));
        if !data.exists() {
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            std::fs::copy(self.dir.path().join("first/root.key"), data.join("root.key")).unwrap();
        }
        let options =
            StoreOptions { location: Location::parse(&self.url).unwrap(), create: true, refresh_interval: refresh };
        Arc::new(KeyStore::open_with_options(&data, &RootSource::File, &options).unwrap())
    }

    async fn replica(&self, n: usize, refresh: Duration) -> KeyServer {
        start_on(self.store(n, refresh), Config::new(REGION, ACCOUNT), default_credentials(), None).await
    }
}

/// Polls `f` every 20 ms until it answers true; fails with `what` after 20 seconds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_on_one_replica_is_used_on_another() {
    let c = Cluster::new();
    let hour = Duration::from_secs(3600);
    let (a, b) = (c.replica(0, hour).await, c.replica(1, hour).await);
    let (id, _) = create_key(&a).await;
    eventually("replica b knows the key", || async {
        b.call("DescribeKey", json!({"KeyId": id})).await.error_type().is_empty()
    })
    .await;
    let enc = b.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"across replicas")})).await.ok();
    let dec = a.call("Decrypt", json!({"CiphertextBlob": enc["CiphertextBlob"]})).await.ok();
    assert_eq!(unb64(&dec["Plaintext"]), b"across replicas");

    // Rotation and disabling through a are served by b.
    let before = b.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    a.call("RotateKeyOnDemand", json!({"KeyId": id})).await.ok();
    let newest = a.call("DescribeKey", json!({"KeyId": id})).await.ok()["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    assert!(newest.is_string() && newest != before, "{newest} after {before}");
    eventually("b encrypts with the new version", || async {
        let d = b.call("DescribeKey", json!({"KeyId": id})).await.ok();
        d["KeyMetadata"]["CurrentKeyMaterialId"] == newest
    })
    .await;
    a.call("DisableKey", json!({"KeyId": id})).await.ok();
    eventually("b refuses the disabled key", || async {
        b.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"x")})).await.error_type() == "DisabledException"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_alias_created_through_two_replicas_at_once_exists_once() {
    let c = Cluster::new();
    let hour = Duration::from_secs(3600);
    let (a, b) = (c.replica(0, hour).await, c.replica(1, hour).await);
    for round in 0..5 {
        let (ka, _) = create_key(&a).await;
        let (kb, _) = create_key(&b).await;
        let name = format!("alias/raced-{round}");
        let (ra, rb) = tokio::join!(
            a.call("CreateAlias", json!({"AliasName": name, "TargetKeyId": ka})),
            b.call("CreateAlias", json!({"AliasName": name, "TargetKeyId": kb})),
        );
        let types = [ra.error_type().to_string(), rb.error_type().to_string()];
        assert_eq!(types.iter().filter(|t| t.is_empty()).count(), 1, "round {round}: {types:?}");
        assert!(types.iter().any(|t| t == "AlreadyExistsException"), "round {round}: {types:?}");
        let winner = if types[0].is_empty() { &ka } else { &kb };
        let d = a.call("DescribeKey", json!({"KeyId": name})).await;
        let d = if d.error_type().is_empty() {
            d.ok()
        } else {
            // a may not have heard of b's alias yet: b surely has.
            b.call("DescribeKey", json!({"KeyId": name})).await.ok()
        };
        assert_eq!(&d["KeyMetadata"]["KeyId"], winner, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_creating_keys_at_once_stay_within_the_key_quota() {
    let c = Cluster::new();
    let hour = Duration::from_secs(3600);
    let config = Config { max_keys: 5, ..Config::new(REGION, ACCOUNT) };
    let a = start_on(c.store(0, hour), config.clone(), default_credentials(), None).await;
    let b = start_on(c.store(1, hour), config, default_credentials(), None).await;
    async fn create_six(h: &KeyServer) -> Vec<String> {
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(h.call("CreateKey", json!({})).await.error_type().to_string());
        }
        outcomes
    }
    let (ra, rb) = tokio::join!(create_six(&a), create_six(&b));
    let outcomes: Vec<String> = ra.into_iter().chain(rb).collect();
    assert_eq!(outcomes.iter().filter(|t| t.is_empty()).count(), 5, "{outcomes:?}");
    assert!(outcomes.iter().all(|t| t.is_empty() || t == "LimitExceededException"), "{outcomes:?}");
    eventually("both replicas list 5 keys", || async {
        let la = a.call("ListKeys", json!({})).await.ok()["Keys"].as_array().map(Vec::len);
        let lb = b.call("ListKeys", json!({})).await.ok()["Keys"].as_array().map(Vec::len);
        la == Some(5) && lb == Some(5)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_runs_on_one_replica_of_three() {
    let c = Cluster::new();
    let hour = Duration::from_secs(3600);
    let stores: Vec<Arc<KeyStore>> = (0..3).map(|n| c.store(n, hour)).collect();
    let a = start_on(stores[0].clone(), Config::new(REGION, ACCOUNT), default_credentials(), None).await;
    let (id, _) = create_key(&a).await;
    a.call("EnableKeyRotation", json!({"KeyId": id, "RotationPeriodInDays": 90})).await.ok();
    let later = envelope_kms_server::maintenance::Clock::default();
    later.advance(91 * 86_400);
    let now = later.now();
    let runs: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::task::spawn_blocking(move || envelope_kms_server::maintenance::run(&s, now).unwrap())
        })
        .collect();
    let mut rotated = 0;
    for r in runs {
        rotated += r.await.unwrap().rotated.len();
    }
    assert_eq!(rotated, 1);
    let list = a.call("ListKeyRotations", json!({"KeyId": id})).await.ok();
    let kinds: Vec<&str> =
        list["Rotations"].as_array().unwrap().iter().map(|r| r["RotationType"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["AUTOMATIC"], "one automatic rotation: {list}");
}

/// GET `path` on 127.0.0.1:`port`; the status code.
async fn get_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return 0 };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// PostgreSQL stops under a replica: /readyz says unready, cryptography goes on from memory,
/// management calls fail; PostgreSQL comes back: ready again and writes work, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_makes_replicas_unready_until_it_is_back() {
    let c = Cluster::new();
    let a = c.replica(0, Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let obs = tokio::spawn(envelope_kms_server::metrics::serve_observability(listener, a.server.clone(), async move {
        let _ = stopped.await;
    }));
    assert_eq!(get_status(http, "/readyz").await, 200);
    let (id, _) = create_key(&a).await;
    let enc = a.call("Encrypt", json!({"KeyId": id, "Plaintext": b64(b"kept")})).await.ok();

    c.pg.stop();
    assert_eq!(get_status(http, "/readyz").await, 503);
    let dec = a.call("Decrypt", json!({"CiphertextBlob": enc["CiphertextBlob"]})).await.ok();
    assert_eq!(unb64(&dec["Plaintext"]), b"kept", "served from memory");
    let refused = a.call("CreateKey", json!({})).await;
    assert_eq!((refused.status, refused.error_type()), (500, "KMSInternalException"), "{}", refused.json);

    c.pg.resume();
    eventually("ready again", || async { get_status(http, "/readyz").await == 200 }).await;
    let (again, _) = create_key(&a).await;
    a.call("Encrypt", json!({"KeyId": again, "Plaintext": b64(b"x")})).await.ok();
    let _ = stop.send(());
    let _ = obs.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_made_on_one_replica_authorizes_and_is_revoked_on_another() {
    let c = Cluster::new();
    let hour = Duration::from_secs(3600);
    let (a, b) = (c.replica(0, hour).await, c.replica(1, hour).await);
    // A key only the admin may use: the app's access comes from the grant alone.
    let policy =
        json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]});
    let id = a.call("CreateKey", json!({"Policy": policy.to_string()})).await.ok()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let encrypt = json!({"KeyId": id, "Plaintext": b64(b"granted")});
    eventually("replica b knows the key", || async {
        b.call("DescribeKey", json!({"KeyId": id})).await.error_type().is_empty()
    })
    .await;
    b.call_as(APP_AKID, "Encrypt", encrypt.clone()).await.err("AccessDeniedException");
    let g = a.call("CreateGrant", json!({"KeyId": id, "GranteePrincipal": APP, "Operations": ["Encrypt"]})).await.ok();
    eventually("replica b honours the grant", || async {
        b.call_as(APP_AKID, "Encrypt", encrypt.clone()).await.error_type().is_empty()
    })
    .await;
    b.call("RevokeGrant", json!({"KeyId": id, "GrantId": g["GrantId"]})).await.ok();
    eventually("replica a forgets the revoked grant", || async {
        a.call_as(APP_AKID, "Encrypt", encrypt.clone()).await.error_type() == "AccessDeniedException"
    })
    .await;
}
