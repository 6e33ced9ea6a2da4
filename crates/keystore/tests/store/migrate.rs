//! Moving a store between SQLite and PostgreSQL: everything copied, verified, and usable there.

use std::time::Duration;

use envelope_keystore::{
    EncryptionContext, Error, ImportOptions, ImportType, KeyRef, KeySpec, KeyStore, Location, MacAlgorithm, RootSource,
    StoreOptions,
};

use crate::subject::Pg;

fn open(dir: &std::path::Path, location: Location) -> KeyStore {
    let options = StoreOptions { location, create: true, refresh_interval: Duration::from_secs(3600) };
    KeyStore::open_with_options(dir, &RootSource::File, &options).unwrap()
}

#[test]
fn hmac_keys_migrate_with_their_spec_and_material() {
    let s = Pg::new();
    let data = s.data_dir();
    let lite = KeyStore::open(&data).unwrap();
    let k = lite.create_key_of(KeySpec::Hmac224, "mac", &[], None).unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let mac = lite.generate_mac(&r, MacAlgorithm::HmacSha224, b"m").unwrap();
    let pg = open(&data, Location::parse(&s.url).unwrap());
    let report = lite.migrate_to(&pg).unwrap();
    assert_eq!((report.keys, report.versions), (1, 1));
    assert_eq!(pg.describe(&r).unwrap().key_spec, KeySpec::Hmac224);
    assert_eq!(pg.generate_mac(&r, MacAlgorithm::HmacSha224, b"m").unwrap(), mac);
}

#[test]
fn sqlite_to_postgres_and_back_keeps_every_key_and_version() {
    let s = Pg::new();
    let data = s.data_dir();
    let lite = KeyStore::open(&data).unwrap();
    let c = EncryptionContext::new();
    let k = lite.create_key_with(Some("app"), "app key", &[("team".into(), "a".into())], Some("{\"p\":1}")).unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let old = lite.encrypt(&r, b"version one", &c).unwrap();
    lite.rotate(&r).unwrap();
    lite.set_rotation(&r, Some((30, 9_999))).unwrap();
    let new = lite.encrypt(&r, b"version two", &c).unwrap();
    let ext = lite.create_external_key("byok", &[], None).unwrap();
    let er = KeyRef::parse(&ext.key_id).unwrap();
    lite.import_material(&er, &[3u8; 32], Some(77), 5).unwrap();
    // Several materials: one rotated to, one pending rotation with a description.
    let fresh = ImportOptions { import_type: Some(ImportType::New), ..ImportOptions::default() };
    lite.import_material_with(&er, &[4u8; 32], &fresh, 6).unwrap();
    lite.rotate_imported(&er, 7).unwrap();
    let imported = lite.encrypt(&er, b"imported", &c).unwrap();
    let pending = ImportOptions { description: Some("next".into()), valid_to: Some(88), ..fresh };
    lite.import_material_with(&er, &[5u8; 32], &pending, 8).unwrap();
    let gone = lite.create_key(None, "doomed").unwrap();
    lite.schedule_deletion(&KeyRef::parse(&gone.key_id).unwrap(), 123, 7).unwrap();

    let pg = open(&data, Location::parse(&s.url).unwrap());
    let report = lite.migrate_to(&pg).unwrap();
    assert_eq!((report.keys, report.versions, report.aliases), (3, 6, 1));
    assert_eq!(*lite.attributes(&er).unwrap(), *pg.attributes(&er).unwrap());
    assert_eq!(pg.attributes(&er).unwrap().materials.len(), 3);
    assert_eq!(&pg.decrypt(&imported.blob, &c).unwrap().plaintext[..], b"imported");
    assert_eq!(lite.list().unwrap(), pg.list().unwrap());
    assert_eq!(lite.list_aliases().unwrap(), pg.list_aliases().unwrap());
    assert_eq!(*lite.attributes(&r).unwrap(), *pg.attributes(&r).unwrap());
    assert_eq!(&pg.decrypt(&old.blob, &c).unwrap().plaintext[..], b"version one");
    assert_eq!(&pg.decrypt(&new.blob, &c).unwrap().plaintext[..], b"version two");
    // Again into the same (now full) database: refused, nothing changed.
    let e = lite.migrate_to(&pg).unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert_eq!(pg.list().unwrap().len(), 3);

    // Back to SQLite in another directory holding the same root key.
    let back_dir = s.data_dir().with_file_name("back");
    std::fs::create_dir(&back_dir).unwrap();
    std::fs::set_permissions(&back_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let back = open(&data, Location::Sqlite(back_dir.clone()));
    pg.rotate(&r).unwrap();
    let newest = pg.encrypt(&r, b"version three", &c).unwrap();
    let report = pg.migrate_to(&back).unwrap();
    assert_eq!(report.versions, 7);
    assert_eq!(*pg.attributes(&er).unwrap(), *back.attributes(&er).unwrap());
    assert_eq!(pg.list().unwrap(), back.list().unwrap());
    for (blob, text) in [(&old, &b"version one"[..]), (&new, b"version two"), (&newest, b"version three")] {
        assert_eq!(&back.decrypt(&blob.blob, &c).unwrap().plaintext[..], text);
    }
}

#[test]
fn a_store_with_another_root_key_is_refused() {
    let s = Pg::new();
    let lite = KeyStore::open(&s.data_dir()).unwrap();
    lite.create_key(Some("k"), "").unwrap();
    let other_dir = s.data_dir().with_file_name("other");
    let pg = open(&other_dir, Location::parse(&s.url).unwrap());
    let e = lite.migrate_to(&pg).unwrap_err();
    assert!(matches!(e, Error::RootKey(_)), "{e:?}");
    assert!(pg.list().unwrap().is_empty());
}
