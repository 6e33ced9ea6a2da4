//! Key store tests against a real SQLite database in a temporary directory.

use super::*;
use proptest::prelude::*;

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn store() -> (tempfile::TempDir, KeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(&dir.path().join("data")).unwrap();
    (dir, ks)
}

#[test]
fn create_encrypt_decrypt_with_context() {
    let (_d, ks) = store();
    let k = ks.create_key(Some("k8s"), "test").unwrap();
    assert_eq!(k.state, KeyState::Enabled);
    assert_eq!(k.aliases, vec!["alias/k8s".to_string()]);
    assert_eq!(k.current_material_id.len(), 64);
    let r = KeyRef::parse("k8s").unwrap();
    let c = ctx(&[("a", "1")]);
    let e = ks.encrypt(&r, b"secret seed", &c).unwrap();
    assert_eq!(&ks.decrypt(&e.blob, &c).unwrap().plaintext[..], b"secret seed");
    assert!(matches!(ks.decrypt(&e.blob, &ctx(&[("a", "2")])), Err(Error::AuthenticationFailed)));
    assert!(matches!(ks.decrypt(&e.blob, &EncryptionContext::new()), Err(Error::AuthenticationFailed)));
}

#[test]
fn rotation_keeps_old_versions_decryptable() {
    let (_d, ks) = store();
    let k = ks.create_key(Some("r"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let c = EncryptionContext::new();
    let old = ks.encrypt(&r, b"one", &c).unwrap();
    let k2 = ks.rotate(&r).unwrap();
    assert_ne!(k.current_material_id, k2.current_material_id);
    assert_eq!(k2.versions.len(), 2);
    let new = ks.encrypt(&r, b"two", &c).unwrap();
    assert_ne!(old.material_id, new.material_id);
    assert_eq!(&ks.decrypt(&old.blob, &c).unwrap().plaintext[..], b"one");
    assert_eq!(&ks.decrypt(&new.blob, &c).unwrap().plaintext[..], b"two");
}

#[test]
fn disabled_key_refuses_both_directions_until_enabled() {
    let (_d, ks) = store();
    ks.create_key(Some("d"), "").unwrap();
    let r = KeyRef::parse("d").unwrap();
    let c = EncryptionContext::new();
    let e = ks.encrypt(&r, b"x", &c).unwrap();
    ks.set_enabled(&r, false).unwrap();
    assert!(matches!(ks.encrypt(&r, b"x", &c), Err(Error::Disabled(_))));
    assert!(matches!(ks.decrypt(&e.blob, &c), Err(Error::Disabled(_))));
    ks.set_enabled(&r, true).unwrap();
    assert_eq!(&ks.decrypt(&e.blob, &c).unwrap().plaintext[..], b"x");
}

#[test]
fn changes_from_another_handle_are_seen_after_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let a = KeyStore::open(dir.path()).unwrap();
    let b = KeyStore::open(dir.path()).unwrap();
    let k = a.create_key(Some("shared"), "").unwrap();
    let r = KeyRef::parse("shared").unwrap();
    assert!(matches!(b.describe(&r), Err(Error::NotFound(_))));
    b.refresh().unwrap();
    assert_eq!(b.describe(&r).unwrap().key_id, k.key_id);
    // b rotates; a decrypts a blob under the new material without an explicit refresh.
    b.rotate(&r).unwrap();
    let e = b.encrypt(&r, b"y", &EncryptionContext::new()).unwrap();
    assert_eq!(&a.decrypt(&e.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"y");
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let e = {
        let ks = KeyStore::open(dir.path()).unwrap();
        ks.create_key(Some("p"), "").unwrap();
        ks.encrypt(&KeyRef::parse("p").unwrap(), b"durable", &EncryptionContext::new()).unwrap()
    };
    let ks = KeyStore::open(dir.path()).unwrap();
    assert_eq!(&ks.decrypt(&e.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"durable");
}

#[test]
fn wrong_root_key_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ks = KeyStore::open(dir.path()).unwrap();
        ks.create_key(Some("p"), "").unwrap();
    }
    std::fs::remove_file(dir.path().join(store::ROOT_KEY_FILE)).unwrap();
    let err = KeyStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::RootKey(_)), "{err}");
}

#[test]
fn no_key_material_or_plaintext_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(dir.path()).unwrap();
    ks.create_key(Some("p"), "").unwrap();
    let plaintext = b"PLAINTEXT-MARKER-0123456789abcdef";
    let e = ks.encrypt(&KeyRef::parse("p").unwrap(), plaintext, &EncryptionContext::new()).unwrap();
    drop(ks);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(plaintext.len()).any(|w| w == plaintext));
        // The nonce+ciphertext portion must not appear either (ciphertexts are not stored).
        assert!(!bytes.windows(e.blob.len()).any(|w| w == e.blob.as_slice()));
    }
}

#[test]
fn duplicate_alias_and_bad_input() {
    let (_d, ks) = store();
    ks.create_key(Some("dup"), "").unwrap();
    assert!(matches!(ks.create_key(Some("dup"), ""), Err(Error::AlreadyExists(_))));
    let r = KeyRef::parse("dup").unwrap();
    assert!(matches!(ks.encrypt(&r, b"", &EncryptionContext::new()), Err(Error::Invalid(_))));
    assert!(matches!(ks.encrypt(&r, &[0u8; 4097], &EncryptionContext::new()), Err(Error::Invalid(_))));
    assert!(matches!(
        ks.encrypt(&KeyRef::parse("nope").unwrap(), b"x", &EncryptionContext::new()),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(KeyStore::open(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute("UPDATE meta SET v = '99' WHERE k = 'schema_version'", []).unwrap();
    drop(conn);
    assert!(matches!(KeyStore::open(dir.path()), Err(Error::SchemaVersion { found: 99, .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn tampering_any_byte_fails(pos in 0usize..200, bit in 0u8..8) {
        let (_d, ks) = store();
        ks.create_key(Some("t"), "").unwrap();
        let e = ks.encrypt(&KeyRef::parse("t").unwrap(), &[9u8; 32], &EncryptionContext::new()).unwrap();
        let mut bad = e.blob.clone();
        let i = pos % bad.len();
        bad[i] ^= 1 << bit;
        prop_assert!(ks.decrypt(&bad, &EncryptionContext::new()).is_err());
    }

    #[test]
    fn random_and_truncated_blobs_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
        let (_d, ks) = store();
        ks.create_key(Some("t"), "").unwrap();
        let _ = ks.decrypt(&data, &EncryptionContext::new());
        let e = ks.encrypt(&KeyRef::parse("t").unwrap(), &[1u8; 32], &EncryptionContext::new()).unwrap();
        let cut = cut % e.blob.len();
        prop_assert!(ks.decrypt(&e.blob[..cut], &EncryptionContext::new()).is_err());
    }
}

#[test]
fn alias_create_update_delete_and_list() {
    let (_d, ks) = store();
    let a = ks.create_key(None, "a").unwrap();
    let b = ks.create_key(None, "b").unwrap();
    assert!(a.aliases.is_empty());
    let ra = KeyRef::parse(&a.key_id).unwrap();
    let rb = KeyRef::parse(&b.key_id).unwrap();
    ks.create_alias("alias/one", &ra).unwrap();
    ks.create_alias("two", &ra).unwrap();
    assert!(matches!(ks.create_alias("alias/one", &rb), Err(Error::AlreadyExists(_))));
    assert!(matches!(ks.create_alias("alias/aws/x", &rb), Err(Error::Invalid(_))));
    let missing = KeyRef::Id(uuid::Uuid::new_v4());
    assert!(matches!(ks.create_alias("alias/three", &missing), Err(Error::NotFound(_))));
    assert_eq!(ks.describe(&ra).unwrap().aliases, vec!["alias/one".to_string(), "alias/two".to_string()]);

    let c = EncryptionContext::new();
    let e = ks.encrypt(&KeyRef::parse("alias/one").unwrap(), b"x", &c).unwrap();
    assert_eq!(e.key_id, *ra_uuid(&a).as_bytes());

    ks.update_alias("alias/one", &rb, None).unwrap();
    let e = ks.encrypt(&KeyRef::parse("alias/one").unwrap(), b"x", &c).unwrap();
    assert_eq!(e.key_id, *ra_uuid(&b).as_bytes());
    assert!(matches!(ks.update_alias("alias/nope", &rb, None), Err(Error::NotFound(_))));
    // Guarded changes: the alias must still point where the caller checked.
    assert!(matches!(ks.update_alias("alias/one", &ra, Some(&ra)), Err(Error::Changed(_))));
    assert!(matches!(ks.delete_alias("alias/one", Some(&ra)), Err(Error::Changed(_))));
    assert_eq!(ks.list_aliases().unwrap()[0].key_id, b.key_id, "a refused guarded change changes nothing");
    ks.update_alias("alias/one", &rb, Some(&rb)).unwrap();

    let list = ks.list_aliases().unwrap();
    assert_eq!(list.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["alias/one", "alias/two"]);
    assert_eq!(list[0].key_id, b.key_id);
    assert!(list[0].updated_at >= list[0].created_at);

    ks.delete_alias("alias/one", None).unwrap();
    assert!(matches!(ks.delete_alias("alias/one", None), Err(Error::NotFound(_))));
    assert!(matches!(ks.describe(&KeyRef::parse("alias/one").unwrap()), Err(Error::NotFound(_))));
    // The key itself and the other alias are untouched.
    assert_eq!(ks.describe(&rb).unwrap().state, KeyState::Enabled);
    assert_eq!(ks.list_aliases().unwrap().len(), 1);
}

fn ra_uuid(k: &KeyMetadata) -> uuid::Uuid {
    uuid::Uuid::parse_str(&k.key_id).unwrap()
}

#[test]
fn schema_v1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let k = {
        let ks = KeyStore::open(dir.path()).unwrap();
        ks.create_key(Some("old"), "").unwrap()
    };
    // Turn the database back into a version-1 one, as an older build wrote it.
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute_batch(
        "ALTER TABLE aliases DROP COLUMN updated_at; UPDATE meta SET v = '1' WHERE k = 'schema_version';",
    )
    .unwrap();
    drop(conn);
    let ks = KeyStore::open(dir.path()).unwrap();
    let list = ks.list_aliases().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].key_id, k.key_id);
    assert_eq!(list[0].updated_at, list[0].created_at);
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    let v: String = conn.query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(v, store::SCHEMA_VERSION.to_string());
}

#[test]
fn scheduled_deletion_cancel_and_purge() {
    let (_d, ks) = store();
    let k = ks.create_key(Some("gone"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let c = EncryptionContext::new();
    let e = ks.encrypt(&r, b"x", &c).unwrap();
    ks.tag(&r, &[("a".into(), "1".into())]).unwrap();
    ks.put_policy(&r, "{}").unwrap();
    let m = ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert_eq!(m.state, KeyState::PendingDeletion);
    assert_eq!(ks.attributes(&r).unwrap().deletion_date, Some(1_000));
    assert!(matches!(ks.encrypt(&r, b"x", &c), Err(Error::InvalidState { .. })));
    assert!(matches!(ks.schedule_deletion(&r, 1_000, 7), Err(Error::InvalidState { .. })));
    assert_eq!(ks.cancel_deletion(&r).unwrap().state, KeyState::Disabled);
    assert_eq!(ks.attributes(&r).unwrap().deletion_date, None);
    assert!(matches!(ks.cancel_deletion(&r), Err(Error::InvalidState { .. })));
    ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert!(ks.purge_deleted(999).unwrap().is_empty());
    assert_eq!(ks.purge_deleted(1_000).unwrap(), vec![k.key_id.clone()]);
    assert!(matches!(ks.describe(&r), Err(Error::NotFound(_))));
    assert!(matches!(ks.describe(&KeyRef::parse("gone").unwrap()), Err(Error::NotFound(_))));
    assert!(ks.decrypt(&e.blob, &c).is_err());
    assert!(ks.list_aliases().unwrap().is_empty());
}

#[test]
fn automatic_rotation_tags_policy_and_description() {
    let (_d, ks) = store();
    let k = ks.create_key_with(None, "d", &[("t".into(), "v".into())], Some("{\"p\":1}")).unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let a = ks.attributes(&r).unwrap();
    assert_eq!(a.tags, vec![("t".to_string(), "v".to_string())]);
    assert_eq!(a.policy.as_deref(), Some("{\"p\":1}"));
    assert_eq!(a.rotations.len(), 1);
    assert_eq!(a.rotations[0].kind, RotationType::Initial);
    ks.set_rotation(&r, Some((90, 500))).unwrap();
    assert!(ks.rotate_due(499).unwrap().is_empty());
    assert_eq!(ks.rotate_due(500).unwrap(), vec![k.key_id.clone()]);
    ks.rotate(&r).unwrap();
    let a = ks.attributes(&r).unwrap();
    assert_eq!(a.next_rotation, Some(500 + 90 * 86_400));
    let kinds: Vec<_> = a.rotations.iter().map(|x| x.kind).collect();
    assert_eq!(kinds, [RotationType::Initial, RotationType::Automatic, RotationType::OnDemand]);
    assert_eq!(a.rotations[1].created_at, 500);
    ks.set_rotation(&r, None).unwrap();
    assert_eq!(ks.attributes(&r).unwrap().rotation_period_days, None);
    ks.tag(&r, &[("t".into(), "w".into()), ("u".into(), "".into())]).unwrap();
    ks.untag(&r, &["u".into(), "absent".into()]).unwrap();
    assert_eq!(ks.attributes(&r).unwrap().tags, vec![("t".to_string(), "w".to_string())]);
    ks.set_description(&r, "new").unwrap();
    assert_eq!(ks.describe(&r).unwrap().description, "new");
}

#[test]
fn open_existing_refuses_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("typo");
    assert!(matches!(KeyStore::open_existing(&d), Err(Error::NotFound(_))));
    assert!(!d.exists(), "nothing is created");
    drop(KeyStore::open(&d).unwrap());
    assert!(KeyStore::open_existing(&d).is_ok());
}

#[test]
fn open_existing_names_a_passphrase_store_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("kms");
    let pass = crate::RootSource::Passphrase(zeroize::Zeroizing::new("correct horse battery".to_owned()));
    drop(KeyStore::open_with(&d, &pass).unwrap());
    let e = KeyStore::open_existing(&d).unwrap_err().to_string();
    assert!(e.contains("comes from a passphrase") && e.contains("--root-passphrase-file"), "{e}");
    assert!(!e.contains("no key store"), "{e}");
}

#[test]
fn key_state_pads_in_tables() {
    assert_eq!(format!("[{:<9}]", crate::KeyState::Enabled), "[Enabled  ]");
    assert_eq!(format!("[{:>9}]", crate::KeyState::Disabled), "[ Disabled]");
}

#[test]
fn group_writable_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let e = KeyStore::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("chmod 700"), "{e}");
}

#[test]
fn concurrent_first_opens_of_one_store_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("fresh");
    std::fs::create_dir(&d).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || KeyStore::open(&d).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    // Everyone ended up with the same root key: a key made by one opens in another.
    let a = KeyStore::open(&d).unwrap();
    a.create_key(Some("k"), "").unwrap();
    let e = a.encrypt(&KeyRef::parse("k").unwrap(), b"x", &EncryptionContext::new()).unwrap();
    let b = KeyStore::open(&d).unwrap();
    assert_eq!(&b.decrypt(&e.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"x");
}

#[test]
fn imported_material_lifecycle() {
    let (_d, ks) = store();
    let k = ks.create_external_key("byok", &[], None).unwrap();
    assert_eq!((k.state, k.current_material_id.as_str(), k.versions.len()), (KeyState::PendingImport, "", 0));
    let r = KeyRef::Id(uuid::Uuid::parse_str(&k.key_id).unwrap());
    assert!(ks.attributes(&r).unwrap().external);
    assert!(matches!(ks.encrypt(&r, b"x", &ctx(&[])), Err(Error::InvalidState { state: KeyState::PendingImport, .. })));
    assert!(matches!(ks.current(&r), Err(Error::InvalidState { .. })));
    assert_eq!(ks.state(&r).unwrap().1, KeyState::PendingImport);
    assert!(matches!(ks.set_enabled(&r, true), Err(Error::InvalidState { .. })));
    assert!(matches!(ks.rotate(&r), Err(Error::Unsupported(_))));
    assert!(matches!(ks.delete_imported_material(&r), Err(Error::InvalidState { .. })));
    assert!(matches!(ks.import_material(&r, &[1u8; 16], None, 1), Err(Error::IncorrectMaterial(_))));

    let mid = ks.import_material(&r, &[1u8; 32], None, 1).unwrap();
    assert_eq!(mid.len(), 64);
    let m = ks.describe(&r).unwrap();
    assert_eq!((m.state, m.current_material_id.as_str()), (KeyState::Enabled, mid.as_str()));
    let e = ks.encrypt(&r, b"secret", &ctx(&[])).unwrap();
    assert!(matches!(ks.import_material(&r, &[2u8; 32], None, 2), Err(Error::IncorrectMaterial(_))));
    // Same material: accepted, same id, expiry updated.
    assert_eq!(ks.import_material(&r, &[1u8; 32], Some(99), 2).unwrap(), mid);
    assert_eq!(ks.attributes(&r).unwrap().valid_to, Some(99));

    assert_eq!(ks.delete_imported_material(&r).unwrap(), mid);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    assert!(ks.decrypt(&e.blob, &ctx(&[])).is_err());
    // The sealed material is gone from the database, not just from memory.
    let reopened = KeyStore::open(ks.dir()).unwrap();
    assert!(reopened.decrypt(&e.blob, &ctx(&[])).is_err());
    assert!(matches!(ks.import_material(&r, &[2u8; 32], None, 3), Err(Error::IncorrectMaterial(_))));
    assert_eq!(ks.import_material(&r, &[1u8; 32], Some(50), 3).unwrap(), mid);
    assert_eq!(&ks.decrypt(&e.blob, &ctx(&[])).unwrap().plaintext[..], b"secret");

    // Expiry deletes the material; other keys (and generated keys) are not touched.
    let g = ks.create_key(None, "generated").unwrap();
    let gr = KeyRef::parse(&g.key_id).unwrap();
    assert!(matches!(ks.import_material(&gr, &[1u8; 32], None, 1), Err(Error::Unsupported(_))));
    assert!(ks.expire_imported(49).unwrap().is_empty());
    assert_eq!(ks.expire_imported(50).unwrap(), vec![k.key_id.clone()]);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    assert_eq!(ks.describe(&gr).unwrap().state, KeyState::Enabled);

    // Deleting a key pending deletion purges its import row too.
    ks.schedule_deletion(&r, 10, 7).unwrap();
    assert_eq!(ks.purge_deleted(10).unwrap(), vec![k.key_id.clone()]);
}

#[test]
fn sealed_secrets_are_bound_to_their_label() {
    let (_d, ks) = store();
    let s = ks.seal_secret(b"label-a", b"wrapping key").unwrap();
    assert_eq!(&ks.open_secret(b"label-a", &s).unwrap()[..], b"wrapping key");
    assert!(matches!(ks.open_secret(b"label-b", &s), Err(Error::InvalidCiphertext(_))));
    let mut t = s.clone();
    t[20] ^= 1;
    assert!(matches!(ks.open_secret(b"label-a", &t), Err(Error::InvalidCiphertext(_))));
}
