//! Several processes on one PostgreSQL database (replicas): a change made through one is seen
//! by the others through LISTEN/NOTIFY, or at the latest by the periodic check; the background
//! work has one leader at a time; the database going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use envelope_keystore::store::postgres::PG_SCHEMA_VERSION;
use envelope_keystore::{EncryptionContext, Error, KeyRef, KeyState, KeyStore, Location, RootSource, StoreOptions};

use crate::subject::{Pg, eventually};

const HOUR: Duration = Duration::from_secs(3600);

/// With the periodic check an hour away, only the notification can tell the other replica.
#[test]
fn a_key_created_on_one_replica_is_usable_on_another_by_notification() {
    let s = Pg::new();
    let (a, b) = (s.open_every(HOUR), s.open_every(HOUR));
    let k = a.create_key(Some("fresh"), "").unwrap();
    let r = KeyRef::parse("fresh").unwrap();
    eventually("the key reaches the other replica", || b.describe(&r).is_ok());
    assert_eq!(b.describe(&r).unwrap().key_id, k.key_id);
    let c = EncryptionContext::new();
    let e = b.encrypt(&r, b"made on b", &c).unwrap();
    assert_eq!(&a.decrypt(&e.blob, &c).unwrap().plaintext[..], b"made on b");

    // Rotation and disabling on one are seen on the other the same way.
    let rotated = a.rotate(&r).unwrap();
    eventually("the rotation reaches the other replica", || {
        b.current(&r).is_ok_and(|(_, mid, _)| hex::encode(mid) == rotated.current_material_id)
    });
    let e = b.encrypt(&r, b"new version", &c).unwrap();
    assert_eq!(hex::encode(e.material_id), rotated.current_material_id);
    a.set_enabled(&r, false).unwrap();
    eventually("the disable reaches the other replica", || b.describe(&r).is_ok_and(|m| m.state == KeyState::Disabled));
    assert!(matches!(b.encrypt(&r, b"x", &c), Err(Error::Disabled(_))));
}

/// A change that comes with no notification (written by hand here) is still seen within one
/// refresh interval; a replica whose interval is an hour away does not see it meanwhile.
#[test]
fn a_missed_notification_costs_at_most_one_refresh_interval() {
    let s = Pg::new();
    let a = s.open_every(HOUR);
    let k = a.create_key(Some("quiet"), "before").unwrap();
    let r = KeyRef::parse("quiet").unwrap();
    let checking = s.open_every(Duration::from_millis(200));
    let waiting = s.open_every(HOUR);
    // The waiting replica refreshes once when its LISTEN takes effect (changes made before it
    // was listening are not left to the periodic check): wait until it listens — a notified
    // change reaches it — and until that refresh and the notification's are behind it.
    a.create_key(Some("listening"), "").unwrap();
    let probe = KeyRef::parse("listening").unwrap();
    eventually("the waiting replica listens", || waiting.describe(&probe).is_ok());
    std::thread::sleep(Duration::from_millis(500));
    s.pg.psql_in(
        "envelope",
        &format!(
            "BEGIN; UPDATE keys SET description = 'after' WHERE key_id = '{}'; \
             UPDATE envelope_meta SET change = change + 1; COMMIT;",
            k.key_id
        ),
    );
    eventually("the periodic check finds the change", || checking.describe(&r).is_ok_and(|m| m.description == "after"));
    assert_eq!(waiting.describe(&r).unwrap().description, "before", "no notification was sent");
    waiting.refresh().unwrap();
    assert_eq!(waiting.describe(&r).unwrap().description, "after");
}

/// Exactly one of three replicas leads the background work; when it goes away (its session
/// ends), another takes over.
#[test]
fn background_work_has_one_leader_and_fails_over() {
    let s = Pg::new();
    let replicas: Vec<KeyStore> = (0..3).map(|_| s.open_every(HOUR)).collect();
    let leaders: Vec<bool> = replicas.iter().map(|r| r.is_leader().unwrap()).collect();
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
    // Asking again changes nothing.
    let again: Vec<bool> = replicas.iter().map(|r| r.is_leader().unwrap()).collect();
    assert_eq!(leaders, again);
    let first = leaders.iter().position(|l| *l).unwrap();
    let mut rest: Vec<KeyStore> =
        replicas.into_iter().enumerate().filter(|(i, _)| *i != first).map(|(_, r)| r).collect();
    // The leader's process ends: its session closes and releases the lock.
    eventually("another replica takes over", || rest.iter().any(|r| r.is_leader().unwrap()));
    let now: Vec<bool> = rest.iter().map(|r| r.is_leader().unwrap()).collect();
    assert_eq!(now.iter().filter(|l| **l).count(), 1, "{now:?}");
    rest.clear();
}

/// Automatic rotation with three replicas each running their maintenance: the leader rotates,
/// once; the others do nothing (and would find nothing due if they ran).
#[test]
fn automatic_rotation_happens_once_with_three_replicas() {
    let s = Pg::new();
    let replicas: Vec<Arc<KeyStore>> = (0..3).map(|_| Arc::new(s.open_every(HOUR))).collect();
    let k = replicas[0].create_key(Some("auto"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    replicas[0].set_rotation(&r, Some((7, 1_000))).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let ticks: Vec<_> = replicas
        .iter()
        .map(|st| {
            let (st, barrier) = (st.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                if st.is_leader().unwrap() { Some(st.rotate_due(5_000).unwrap()) } else { None }
            })
        })
        .collect();
    let ran: Vec<Option<Vec<String>>> = ticks.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(ran.iter().filter(|x| x.is_some()).count(), 1, "one leader ran it: {ran:?}");
    assert_eq!(ran.iter().flatten().map(Vec::len).sum::<usize>(), 1, "{ran:?}");
    for st in &replicas {
        assert!(st.rotate_due(5_000).unwrap().is_empty(), "not due any more");
        st.refresh().unwrap();
        assert_eq!(st.describe(&r).unwrap().versions.len(), 2);
    }
}

/// PostgreSQL stops: the replicas keep serving encrypt and decrypt from their snapshots, writes
/// fail as unavailable; it comes back: writes work again without reopening the store, and a
/// change made on one replica reaches the other (its notification connection reconnected).
#[test]
fn database_restart_fails_writes_then_recovers_without_a_restart() {
    let s = Pg::new();
    let (a, b) = (s.open_every(Duration::from_millis(300)), s.open_every(Duration::from_millis(300)));
    a.create_key(Some("steady"), "").unwrap();
    let r = KeyRef::parse("steady").unwrap();
    eventually("b has the key", || b.describe(&r).is_ok());
    let c = EncryptionContext::new();
    let e = a.encrypt(&r, b"kept", &c).unwrap();

    s.pg.stop();
    assert_eq!(&b.decrypt(&e.blob, &c).unwrap().plaintext[..], b"kept", "served from memory");
    assert!(b.encrypt(&r, b"x", &c).is_ok());
    let err = a.create_key(None, "while down").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(matches!(b.refresh(), Err(Error::Unavailable(_))));

    s.pg.resume();
    eventually("writes work again", || a.create_key(Some("after"), "").is_ok());
    eventually("b sees a change made after the restart", || b.describe(&KeyRef::parse("after").unwrap()).is_ok());
    a.rotate(&r).unwrap();
    let rotated = a.describe(&r).unwrap().current_material_id;
    eventually("b sees the rotation", || b.current(&r).is_ok_and(|(_, mid, _)| hex::encode(mid) == rotated));
}

/// Replicas starting together on an empty database create the schema once; a database written
/// by a newer schema is refused.
#[test]
fn schema_is_created_once_and_newer_schemas_are_refused() {
    let s = Arc::new(Pg::new());
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.try_open(&s.data_dir(), HOUR).map(|_| ()))
        })
        .collect();
    for o in opens {
        o.join().unwrap().unwrap();
    }
    assert_eq!(s.pg.psql_in("envelope", "SELECT schema_version FROM envelope_meta"), PG_SCHEMA_VERSION.to_string());
    s.pg.psql_in("envelope", "UPDATE envelope_meta SET schema_version = 99");
    let e = s.try_open(&s.data_dir(), HOUR).unwrap_err();
    assert!(matches!(e, Error::SchemaVersion { found: 99, supported: PG_SCHEMA_VERSION }), "{e:?}");
}

/// A database at schema 1 (one material per external key, in key_import) is migrated forward:
/// each import becomes the key's CURRENT material record.
#[test]
fn schema_1_imports_become_current_material_records() {
    let s = Pg::new();
    let ks = s.open_every(HOUR);
    let k = ks.create_external_key("", &[], None).unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let mid = ks.import_material(&r, &[6u8; 32], Some(500), 10).unwrap();
    let e = ks.encrypt(&r, b"kept", &envelope_keystore::EncryptionContext::new()).unwrap();
    drop(ks);
    // What a build with schema 1 wrote: the material id and current expiry in key_import.
    s.pg.psql_in(
        "envelope",
        &format!(
            "UPDATE key_import SET material_id = '{mid}', valid_to = 500; DROP TABLE key_materials; \
             ALTER TABLE keys DROP COLUMN key_spec; ALTER TABLE keys DROP COLUMN key_usage; \
             UPDATE envelope_meta SET schema_version = 1"
        ),
    );
    let ks = s.open_every(HOUR);
    assert_eq!(s.pg.psql_in("envelope", "SELECT schema_version FROM envelope_meta"), PG_SCHEMA_VERSION.to_string());
    // Every key from before key specs is a symmetric encryption key.
    assert_eq!(ks.describe(&r).unwrap().key_spec, envelope_keystore::KeySpec::SymmetricDefault);
    let a = ks.attributes(&r).unwrap();
    let view: Vec<_> = a.materials.iter().map(|m| (m.material_id.as_str(), m.state, m.imported, m.valid_to)).collect();
    assert_eq!(view, [(mid.as_str(), envelope_keystore::MaterialState::Current, true, Some(500))]);
    assert_eq!(&ks.decrypt(&e.blob, &envelope_keystore::EncryptionContext::new()).unwrap().plaintext[..], b"kept");
    assert_eq!(ks.expire_imported(500).unwrap(), vec![k.key_id.clone()]);
    assert_eq!(ks.describe(&r).unwrap().state, envelope_keystore::KeyState::PendingImport);
}

/// The database sees sealed material only: no row holds the bytes of a key version.
#[test]
fn the_database_holds_no_unsealed_material() {
    let s = Pg::new();
    let ks = s.open_every(HOUR);
    let k = ks.create_external_key("", &[], None).unwrap();
    let material = [0x5au8; 32];
    ks.import_material(&KeyRef::parse(&k.key_id).unwrap(), &material, None, 1).unwrap();
    let dump = s.pg.psql_in("envelope", "SELECT encode(sealed, 'hex') FROM key_versions");
    assert_eq!(dump.lines().count(), 1);
    assert!(!dump.contains(&hex::encode(material)), "sealed: {dump}");
    assert!(!dump.contains(&hex::encode(&material[..8])), "sealed: {dump}");
}

/// Stores in separate schemas of one database (a key server's regions): each has its own keys
/// and aliases (the same alias name in both), a change in one is not seen in the other, each
/// elects its own leader, and reopening finds each schema's keys again.
#[test]
fn partitions_in_one_database_keep_their_keys_and_leaders_apart() {
    let s = Pg::new();
    let open = |partition: Option<&str>| {
        let mut location = Location::parse(&s.url).unwrap();
        if let Some(p) = partition {
            location = location.partition(&s.data_dir(), p).unwrap();
        }
        let options = StoreOptions { location, create: true, refresh_interval: HOUR };
        KeyStore::open_with_options(&s.data_dir(), &RootSource::File, &options).unwrap()
    };
    let (home, west) = (open(None), open(Some("us-west-2")));
    assert!(west.storage().contains("schema envelope_us_west_2"), "{}", west.storage());
    let h = home.create_key(Some("app"), "home").unwrap();
    let w = west.create_key(Some("app"), "west").unwrap();
    assert_ne!(h.key_id, w.key_id);
    let app = KeyRef::parse("app").unwrap();
    assert_eq!(home.describe(&app).unwrap().key_id, h.key_id);
    assert_eq!(west.describe(&app).unwrap().key_id, w.key_id);
    assert!(matches!(west.describe(&KeyRef::parse(&h.key_id).unwrap()), Err(Error::NotFound(_))));
    assert!(matches!(home.describe(&KeyRef::parse(&w.key_id).unwrap()), Err(Error::NotFound(_))));
    assert_eq!(home.list().unwrap().len(), 1);
    assert_eq!(west.list().unwrap().len(), 1);
    // A ciphertext of one partition's key does not decrypt in the other.
    let c = EncryptionContext::new();
    let e = home.encrypt(&app, b"home data", &c).unwrap();
    assert!(west.decrypt(&e.blob, &c).is_err());
    assert_eq!(&home.decrypt(&e.blob, &c).unwrap().plaintext[..], b"home data");
    // One leader per partition, even with both partitions open in the same process twice.
    let (home2, west2) = (open(None), open(Some("us-west-2")));
    let homes = [home.is_leader().unwrap(), home2.is_leader().unwrap()];
    let wests = [west.is_leader().unwrap(), west2.is_leader().unwrap()];
    assert_eq!(homes.iter().filter(|l| **l).count(), 1, "{homes:?}");
    assert_eq!(wests.iter().filter(|l| **l).count(), 1, "{wests:?}");
    drop((home, west, home2, west2));
    // Reopened, each partition finds its own key again.
    assert_eq!(open(Some("us-west-2")).describe(&app).unwrap().key_id, w.key_id);
    assert_eq!(open(None).describe(&app).unwrap().key_id, h.key_id);
    // A name that cannot be a schema is refused before anything is created.
    assert!(Location::parse(&s.url).unwrap().partition(&s.data_dir(), "US West").is_err());
}
