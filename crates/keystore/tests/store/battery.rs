//! The store battery: what every engine must do the same. Each case takes a [`Subject`] (one
//! store, opened as often as the case needs) and is instantiated per engine in main.rs.

use std::sync::{Arc, Barrier};

use envelope_keystore::{
    EncryptionContext, Error, ImportOptions, ImportType, KeyMetadata, KeyRef, KeySpec, KeyState, KeyStore, KeyUsage,
    Limit, Limits, MacAlgorithm, MaterialState, RotationType,
};

use crate::subject::Subject;

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn uuid_of(k: &KeyMetadata) -> uuid::Uuid {
    uuid::Uuid::parse_str(&k.key_id).unwrap()
}

pub fn create_encrypt_decrypt_with_context(s: &dyn Subject) {
    let ks = s.open();
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
    // Durable: a new handle (a restarted process) decrypts it.
    drop(ks);
    assert_eq!(&s.open().decrypt(&e.blob, &c).unwrap().plaintext[..], b"secret seed");
}

pub fn rotation_keeps_old_versions_decryptable(s: &dyn Subject) {
    let ks = s.open();
    let k = ks.create_key(Some("r"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let c = EncryptionContext::new();
    let old = ks.encrypt(&r, b"one", &c).unwrap();
    let k2 = ks.rotate(&r).unwrap();
    assert_ne!(k.current_material_id, k2.current_material_id);
    assert_eq!(k2.versions.len(), 2);
    assert_eq!(k2.versions.iter().map(|v| v.seq).collect::<Vec<_>>(), [1, 2]);
    let new = ks.encrypt(&r, b"two", &c).unwrap();
    assert_ne!(old.material_id, new.material_id);
    assert_eq!(&ks.decrypt(&old.blob, &c).unwrap().plaintext[..], b"one");
    assert_eq!(&ks.decrypt(&new.blob, &c).unwrap().plaintext[..], b"two");
}

pub fn disabled_key_refuses_both_directions_until_enabled(s: &dyn Subject) {
    let ks = s.open();
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

pub fn changes_from_another_handle_are_seen_after_refresh(s: &dyn Subject) {
    let a = s.open();
    let b = s.open();
    let k = a.create_key(Some("shared"), "").unwrap();
    let r = KeyRef::parse("shared").unwrap();
    if !s.shared() {
        assert!(matches!(b.describe(&r), Err(Error::NotFound(_))), "no refresh, no change");
    }
    b.refresh().unwrap();
    assert_eq!(b.describe(&r).unwrap().key_id, k.key_id);
    // b rotates; a decrypts a blob under the new material without an explicit refresh.
    b.rotate(&r).unwrap();
    let e = b.encrypt(&r, b"y", &EncryptionContext::new()).unwrap();
    assert_eq!(&a.decrypt(&e.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"y");
    // A change of state made on b is seen by a after a refresh.
    b.set_enabled(&r, false).unwrap();
    a.refresh().unwrap();
    assert_eq!(a.describe(&r).unwrap().state, KeyState::Disabled);
}

pub fn duplicate_alias_and_bad_input(s: &dyn Subject) {
    let ks = s.open();
    ks.create_key(Some("dup"), "").unwrap();
    assert!(matches!(ks.create_key(Some("dup"), ""), Err(Error::AlreadyExists(_))));
    assert_eq!(ks.list().unwrap().len(), 1, "a refused create leaves nothing behind");
    let r = KeyRef::parse("dup").unwrap();
    assert!(matches!(ks.encrypt(&r, b"", &EncryptionContext::new()), Err(Error::Invalid(_))));
    assert!(matches!(ks.encrypt(&r, &[0u8; 4097], &EncryptionContext::new()), Err(Error::Invalid(_))));
    assert!(matches!(
        ks.encrypt(&KeyRef::parse("nope").unwrap(), b"x", &EncryptionContext::new()),
        Err(Error::NotFound(_))
    ));
    assert!(ks.decrypt(&[1u8; 10], &EncryptionContext::new()).is_err());
}

pub fn alias_create_update_delete_and_list(s: &dyn Subject) {
    let ks = s.open();
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
    assert_eq!(e.key_id, *uuid_of(&a).as_bytes());

    ks.update_alias("alias/one", &rb, None).unwrap();
    let e = ks.encrypt(&KeyRef::parse("alias/one").unwrap(), b"x", &c).unwrap();
    assert_eq!(e.key_id, *uuid_of(&b).as_bytes());
    assert!(matches!(ks.update_alias("alias/nope", &rb, None), Err(Error::NotFound(_))));
    // Guarded changes: the alias must still point where the caller checked.
    assert!(matches!(ks.update_alias("alias/one", &ra, Some(&ra)), Err(Error::Changed(_))));
    assert!(matches!(ks.delete_alias("alias/one", Some(&ra)), Err(Error::Changed(_))));
    assert_eq!(ks.list_aliases().unwrap()[0].key_id, b.key_id, "a refused guarded change changes nothing");
    ks.update_alias("alias/one", &rb, Some(&rb)).unwrap();

    // Bytewise order on every engine (upper case before lower case).
    ks.create_alias("alias/Zed", &rb).unwrap();
    let list = ks.list_aliases().unwrap();
    assert_eq!(list.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["alias/Zed", "alias/one", "alias/two"]);
    assert_eq!(list[1].key_id, b.key_id);
    assert!(list[1].updated_at >= list[1].created_at);
    ks.delete_alias("alias/Zed", None).unwrap();

    ks.delete_alias("alias/one", None).unwrap();
    assert!(matches!(ks.delete_alias("alias/one", None), Err(Error::NotFound(_))));
    assert!(matches!(ks.describe(&KeyRef::parse("alias/one").unwrap()), Err(Error::NotFound(_))));
    // The key itself and the other alias are untouched.
    assert_eq!(ks.describe(&rb).unwrap().state, KeyState::Enabled);
    assert_eq!(ks.list_aliases().unwrap().len(), 1);
}

pub fn scheduled_deletion_cancel_and_purge(s: &dyn Subject) {
    let ks = s.open();
    let k = ks.create_key(Some("gone"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let c = EncryptionContext::new();
    let e = ks.encrypt(&r, b"x", &c).unwrap();
    ks.tag(&r, &[("a".into(), "1".into())]).unwrap();
    ks.put_policy(&r, "{}").unwrap();
    let m = ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert_eq!(m.state, KeyState::PendingDeletion);
    assert_eq!(ks.attributes(&r).unwrap().deletion_date, Some(1_000));
    assert_eq!(ks.attributes(&r).unwrap().pending_window_days, Some(7));
    assert!(matches!(ks.encrypt(&r, b"x", &c), Err(Error::InvalidState { .. })));
    assert!(matches!(ks.schedule_deletion(&r, 1_000, 7), Err(Error::InvalidState { .. })));
    assert!(matches!(ks.set_description(&r, "no"), Err(Error::InvalidState { .. })));
    assert_eq!(ks.cancel_deletion(&r).unwrap().state, KeyState::Disabled);
    assert_eq!(ks.attributes(&r).unwrap().deletion_date, None);
    assert!(matches!(ks.cancel_deletion(&r), Err(Error::InvalidState { .. })));
    ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert!(ks.purge_deleted(999).unwrap().is_empty());
    assert_eq!(ks.purge_deleted(1_000).unwrap(), vec![k.key_id.clone()]);
    assert!(ks.purge_deleted(1_000).unwrap().is_empty(), "purged once");
    assert!(matches!(ks.describe(&r), Err(Error::NotFound(_))));
    assert!(matches!(ks.describe(&KeyRef::parse("gone").unwrap()), Err(Error::NotFound(_))));
    assert!(ks.decrypt(&e.blob, &c).is_err());
    assert!(ks.list_aliases().unwrap().is_empty());
    assert!(matches!(ks.set_enabled(&r, true), Err(Error::NotFound(_))));
}

pub fn automatic_rotation_tags_policy_and_description(s: &dyn Subject) {
    let ks = s.open();
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
    assert!(ks.rotate_due(500).unwrap().is_empty(), "rescheduled: not due again");
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
    ks.put_policy(&r, "{\"p\":2}").unwrap();
    assert_eq!(ks.attributes(&r).unwrap().policy.as_deref(), Some("{\"p\":2}"));
}

pub fn imported_material_lifecycle(s: &dyn Subject) {
    let ks = s.open();
    let k = ks.create_external_key("byok", &[], None).unwrap();
    assert_eq!((k.state, k.current_material_id.as_str(), k.versions.len()), (KeyState::PendingImport, "", 0));
    let r = KeyRef::Id(uuid_of(&k));
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
    let reopened = s.open();
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
    assert!(ks.expire_imported(50).unwrap().is_empty(), "expired once");
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    assert_eq!(ks.describe(&gr).unwrap().state, KeyState::Enabled);

    // Deleting a key pending deletion purges its import row too.
    ks.schedule_deletion(&r, 10, 7).unwrap();
    assert_eq!(ks.purge_deleted(10).unwrap(), vec![k.key_id.clone()]);
}

/// Several materials in one external key (AWS's on-demand rotation of imported material): new
/// material waits PENDING_ROTATION, a rotation makes it current and keeps the old one
/// decrypting, deleting either makes the key PendingImport until it is imported again, and
/// each material expires on its own.
pub fn imported_material_rotation(s: &dyn Subject) {
    let ks = s.open();
    let k = ks.create_external_key("byok", &[], None).unwrap();
    let r = KeyRef::Id(uuid_of(&k));
    let c = ctx(&[("app", "a")]);
    let new = |description: &str| ImportOptions {
        import_type: Some(ImportType::New),
        description: Some(description.into()),
        ..ImportOptions::default()
    };
    // Existing material into a key never imported into: there is none.
    let existing = ImportOptions { import_type: Some(ImportType::Existing), ..ImportOptions::default() };
    assert!(matches!(ks.import_material_with(&r, &[1u8; 32], &existing, 1), Err(Error::IncorrectMaterial(_))));
    assert!(matches!(ks.rotate_imported(&r, 1), Err(Error::InvalidState { state: KeyState::PendingImport, .. })));
    let m1 = ks.import_material_with(&r, &[1u8; 32], &new("first"), 1).unwrap();
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::Enabled);
    let ct1 = ks.encrypt(&r, b"one", &c).unwrap();
    assert!(matches!(ks.rotate_imported(&r, 2), Err(Error::NoPendingMaterial(_))));

    // New material: pending, not used, one at a time; the same material cannot come back as new.
    assert!(matches!(ks.import_material_with(&r, &[1u8; 32], &new("again"), 2), Err(Error::IncorrectMaterial(_))));
    let m2 = ks.import_material_with(&r, &[2u8; 32], &new("second"), 2).unwrap();
    assert_ne!(m1, m2);
    assert!(matches!(ks.import_material_with(&r, &[3u8; 32], &new("third"), 3), Err(Error::PendingMaterialExists(_))));
    let a = ks.attributes(&r).unwrap();
    let view: Vec<_> = a.materials.iter().map(|m| (m.material_id.as_str(), m.state, m.imported)).collect();
    assert_eq!(
        view,
        [(m1.as_str(), MaterialState::Current, true), (m2.as_str(), MaterialState::PendingRotation, true)]
    );
    assert_eq!(a.materials[1].description.as_deref(), Some("second"));
    assert_eq!(ks.encrypt(&r, b"x", &c).unwrap().material_id, ct1.material_id, "pending material is not used");

    // The rotation: m2 current, m1 still decrypts; recorded as an on-demand rotation.
    assert_eq!(ks.rotate_imported(&r, 5).unwrap(), m2);
    assert!(matches!(ks.rotate_imported(&r, 6), Err(Error::NoPendingMaterial(_))));
    let ct2 = ks.encrypt(&r, b"two", &c).unwrap();
    assert_eq!(hex::encode(ct2.material_id), m2);
    assert_eq!(ks.describe(&r).unwrap().current_material_id, m2);
    let a = ks.attributes(&r).unwrap();
    let view: Vec<_> = a.materials.iter().map(|m| (m.state, m.rotated_at)).collect();
    assert_eq!(view, [(MaterialState::NonCurrent, None), (MaterialState::Current, Some(5))]);
    let kinds: Vec<_> = a.rotations.iter().map(|x| x.kind).collect();
    assert_eq!(kinds, [RotationType::Initial, RotationType::OnDemand]);
    assert_eq!(a.imported_material_id.as_deref(), Some(m2.as_str()));
    for (ct, text) in [(&ct1, &b"one"[..]), (&ct2, b"two")] {
        assert_eq!(&ks.decrypt(&ct.blob, &c).unwrap().plaintext[..], text);
    }
    // Another handle (process, replica) reads the same records.
    let other = s.open();
    other.refresh().unwrap();
    assert_eq!(*other.attributes(&r).unwrap(), *a);

    // Deleting the old material: the key waits for it, both ciphertexts with it.
    let unknown = "ab".repeat(32);
    assert!(matches!(ks.delete_imported_material_id(&r, Some(&unknown)), Err(Error::NotFound(_))));
    assert_eq!(ks.delete_imported_material_id(&r, Some(&m1)).unwrap(), m1);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    assert!(ks.decrypt(&ct1.blob, &c).is_err());
    assert!(matches!(ks.decrypt(&ct2.blob, &c), Err(Error::InvalidState { state: KeyState::PendingImport, .. })));
    assert!(matches!(ks.delete_imported_material_id(&r, Some(&m1)), Err(Error::InvalidState { .. })));
    let a = ks.attributes(&r).unwrap();
    assert_eq!((a.materials[0].imported, a.materials[0].description.as_deref()), (false, Some("first")));
    // Re-import: other bytes under m1's id are refused; m1's own bytes restore everything, and
    // the description is kept when none is given.
    let named = |mid: &str| ImportOptions { material_id: Some(mid.into()), ..existing.clone() };
    assert!(matches!(ks.import_material_with(&r, &[9u8; 32], &named(&m1), 7), Err(Error::IncorrectMaterial(_))));
    assert!(matches!(ks.import_material_with(&r, &[2u8; 32], &named(&m1), 7), Err(Error::IncorrectMaterial(_))));
    let expiring = ImportOptions { valid_to: Some(100), ..named(&m1) };
    assert_eq!(ks.import_material_with(&r, &[1u8; 32], &expiring, 7).unwrap(), m1);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::Enabled);
    for (ct, text) in [(&ct1, &b"one"[..]), (&ct2, b"two")] {
        assert_eq!(&ks.decrypt(&ct.blob, &c).unwrap().plaintext[..], text);
    }
    let a = ks.attributes(&r).unwrap();
    assert_eq!((a.materials[0].description.as_deref(), a.materials[0].valid_to), (Some("first"), Some(100)));
    assert_eq!(a.valid_to, None, "the key's expiry is its current material's");

    // A pending material deleted is forgotten (other material may take its place), the key
    // stays usable.
    let m3 = ks.import_material_with(&r, &[3u8; 32], &new("third"), 8).unwrap();
    assert_eq!(ks.delete_imported_material_id(&r, Some(&m3)).unwrap(), m3);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::Enabled);
    assert_eq!(ks.attributes(&r).unwrap().materials.len(), 2);
    let m4 = ks.import_material_with(&r, &[4u8; 32], &new("fourth"), 9).unwrap();
    assert_eq!(ks.attributes(&r).unwrap().materials[2].material_id, m4);

    // Expiry works per material: m1 expires at 100, the key waits for it; cancelling a deletion
    // leaves it waiting too.
    assert!(ks.expire_imported(99).unwrap().is_empty());
    assert_eq!(ks.expire_imported(100).unwrap(), vec![k.key_id.clone()]);
    assert!(ks.expire_imported(100).unwrap().is_empty(), "expired once");
    let a = ks.attributes(&r).unwrap();
    let view: Vec<_> = a.materials.iter().map(|m| (m.state, m.imported)).collect();
    assert_eq!(
        view,
        [(MaterialState::NonCurrent, false), (MaterialState::Current, true), (MaterialState::PendingRotation, true)]
    );
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    ks.schedule_deletion(&r, 1_000, 7).unwrap();
    ks.cancel_deletion(&r).unwrap();
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::PendingImport);
    assert_eq!(ks.import_material(&r, &[1u8; 32], None, 101).unwrap(), m1);
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::Enabled);
    // Purging the key purges its material records.
    ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert_eq!(ks.purge_deleted(1_000).unwrap(), vec![k.key_id.clone()]);
    assert!(ks.attributes(&r).is_err());
}

/// Two handles (two processes, or two replicas) move the same alias from the same key at the
/// same moment, each guarded by the key it saw: one wins, the other is told it changed.
pub fn concurrent_guarded_alias_updates_let_exactly_one_win(s: &dyn Subject) {
    let (a, b) = (Arc::new(s.open()), Arc::new(s.open()));
    let k0 = KeyRef::parse(&a.create_key(Some("contended"), "").unwrap().key_id).unwrap();
    let k1 = KeyRef::parse(&a.create_key(None, "").unwrap().key_id).unwrap();
    let k2 = KeyRef::parse(&a.create_key(None, "").unwrap().key_id).unwrap();
    b.refresh().unwrap();
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let run = |store: &Arc<KeyStore>, to: &KeyRef| {
            let (store, to, from, barrier) = (store.clone(), to.clone(), k0.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store.update_alias("alias/contended", &to, Some(&from))
            })
        };
        let (ra, rb) = (run(&a, &k1), run(&b, &k2));
        let results = [ra.join().unwrap(), rb.join().unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(results.iter().any(|r| matches!(r, Err(Error::Changed(_)))), "round {round}: {results:?}");
        let now = a.list_aliases().unwrap().into_iter().find(|x| x.name == "alias/contended").unwrap();
        let winner = if results[0].is_ok() { &k1 } else { &k2 };
        assert_eq!(KeyRef::parse(&now.key_id).unwrap(), *winner, "round {round}");
        a.update_alias("alias/contended", &k0, None).unwrap();
        b.refresh().unwrap();
    }
}

/// Rotations and tag changes from two handles at once: every one lands (no lost update), and
/// version numbers stay unique.
pub fn concurrent_rotations_and_tags_lose_no_update(s: &dyn Subject) {
    let (a, b) = (Arc::new(s.open()), Arc::new(s.open()));
    let k = a.create_key(Some("busy"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    b.refresh().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let work = |store: &Arc<KeyStore>, name: &'static str| {
        let (store, r, barrier) = (store.clone(), r.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            for i in 0..5 {
                store.rotate(&r).unwrap();
                store.tag(&r, &[(format!("{name}{i}"), "x".into())]).unwrap();
            }
        })
    };
    let (ta, tb) = (work(&a, "a"), work(&b, "b"));
    ta.join().unwrap();
    tb.join().unwrap();
    a.refresh().unwrap();
    let m = a.describe(&r).unwrap();
    assert_eq!(m.versions.iter().map(|v| v.seq).collect::<Vec<_>>(), (1..=11).collect::<Vec<u32>>());
    assert_eq!(m.current_material_id, m.versions[10].material_id, "the newest version is current");
    assert_eq!(a.attributes(&r).unwrap().tags.len(), 10);
    // Every version still decrypts what it made.
    let e = a.encrypt(&r, b"z", &EncryptionContext::new()).unwrap();
    assert_eq!(&b.decrypt(&e.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"z");
}

/// Quotas hold across handles (processes, replicas) writing at once: each check runs in its
/// write's transaction, so 2 × 6 concurrent creations against a limit of 5 keys make 5, and the
/// same for tags per key and on-demand rotations per key.
pub fn limits_hold_across_concurrent_handles(s: &dyn Subject) {
    let limits = Limits { max_keys: Some(5), max_tags: Some(4), max_on_demand_rotations: Some(3) };
    let (a, b) = (Arc::new(s.open()), Arc::new(s.open()));
    a.set_limits(limits);
    b.set_limits(limits);
    let k = a.create_key(Some("limited"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    b.refresh().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let work = |store: &Arc<KeyStore>, name: &'static str| {
        let (store, r, barrier) = (store.clone(), r.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let mut refused = [0usize; 3];
            for i in 0..6 {
                match store.create_key(None, "") {
                    Ok(_) => {}
                    Err(Error::LimitExceeded(Limit::Keys(5))) => refused[0] += 1,
                    Err(e) => panic!("create: {e}"),
                }
                match store.tag(&r, &[(format!("{name}{i}"), "x".into())]) {
                    Ok(()) => {}
                    Err(Error::LimitExceeded(Limit::Tags(4))) => refused[1] += 1,
                    Err(e) => panic!("tag: {e}"),
                }
                match store.rotate(&r) {
                    Ok(_) => {}
                    Err(Error::LimitExceeded(Limit::OnDemandRotations(3))) => refused[2] += 1,
                    Err(e) => panic!("rotate: {e}"),
                }
            }
            refused
        })
    };
    let (ta, tb) = (work(&a, "a"), work(&b, "b"));
    let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
    a.refresh().unwrap();
    assert_eq!(a.list().unwrap().len(), 5, "keys");
    assert_eq!(ra[0] + rb[0], 12 - 4, "refused creations");
    assert_eq!(a.attributes(&r).unwrap().tags.len(), 4, "tags");
    assert_eq!(ra[1] + rb[1], 12 - 4, "refused tag changes");
    assert_eq!(a.describe(&r).unwrap().versions.len(), 1 + 3, "versions");
    assert_eq!(ra[2] + rb[2], 12 - 3, "refused rotations");
    // Replacing the value of a tag the key has is no new tag; automatic rotations do not count.
    let present = a.attributes(&r).unwrap().tags[0].0.clone();
    a.tag(&r, &[(present, "y".into())]).unwrap();
    a.rotate_as(&r, RotationType::Automatic, 1_000).unwrap();
    // Without limits (the plugin's store, the CLI) nothing is refused.
    a.set_limits(Limits::default());
    a.create_key(None, "").unwrap();
    a.tag(&r, &[("free".into(), "x".into())]).unwrap();
    a.rotate(&r).unwrap();
}

/// Three handles run the automatic rotation of one due key at once: it rotates once.
pub fn automatic_rotation_runs_once_from_several_handles(s: &dyn Subject) {
    let stores: Vec<Arc<KeyStore>> = (0..3).map(|_| Arc::new(s.open())).collect();
    let k = stores[0].create_key(Some("auto"), "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    stores[0].set_rotation(&r, Some((30, 1_000))).unwrap();
    let barrier = Arc::new(Barrier::new(3));
    let runs: Vec<_> = stores
        .iter()
        .map(|st| {
            let (st, barrier) = (st.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                st.rotate_due(2_000).unwrap()
            })
        })
        .collect();
    let rotated: Vec<Vec<String>> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(rotated.iter().map(Vec::len).sum::<usize>(), 1, "{rotated:?}");
    stores[1].refresh().unwrap();
    let m = stores[1].describe(&r).unwrap();
    assert_eq!(m.versions.len(), 2);
    assert_eq!(stores[1].attributes(&r).unwrap().next_rotation, Some(2_000 + 30 * 86_400));
}

/// The database holds material sealed under the root key only: with another root key nothing
/// opens (the store refuses to start rather than serve without its keys).
pub fn another_root_key_opens_nothing(s: &dyn Subject) {
    let ks = s.open();
    ks.create_key(Some("sealed"), "").unwrap();
    drop(ks);
    let e = s.open_with_other_root().unwrap_err();
    assert!(matches!(e, Error::RootKey(_)), "{e:?}");
}

pub fn grants_idempotency_limit_and_purge(s: &dyn Subject) {
    use envelope_keystore::GrantConstraints;
    use envelope_keystore::store::NewGrant;
    let ks = s.open();
    let k = ks.create_key(None, "").unwrap();
    let other = ks.create_key(None, "").unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let ro = KeyRef::parse(&other.key_id).unwrap();
    let subset = GrantConstraints {
        encryption_context_subset: Some([("app".to_string(), "web".to_string())].into()),
        ..GrantConstraints::default()
    };
    let new = |name: Option<&str>, ops: &[&str], c: Option<GrantConstraints>| NewGrant {
        name: name.map(str::to_string),
        grantee: "arn:aws:iam::111122223333:user/app".into(),
        retiring: Some("arn:aws:iam::111122223333:user/admin".into()),
        issuing_account: "arn:aws:iam::111122223333:root".into(),
        operations: ops.iter().map(|o| o.to_string()).collect(),
        constraints: c,
    };
    let g1 = ks.create_grant(&r, new(Some("n"), &["Encrypt", "Decrypt"], Some(subset.clone())), 3).unwrap();
    assert_eq!(g1.len(), 64);
    // The same name and parameters (operations in another order): the same grant.
    assert_eq!(ks.create_grant(&r, new(Some("n"), &["Decrypt", "Encrypt"], Some(subset.clone())), 3).unwrap(), g1);
    // Other parameters, or no name: a new grant.
    let g2 = ks.create_grant(&r, new(Some("n"), &["Decrypt"], Some(subset.clone())), 3).unwrap();
    let g3 = ks.create_grant(&r, new(None, &["Decrypt"], None), 3).unwrap();
    assert!(g2 != g1 && g3 != g1 && g3 != g2);
    assert!(matches!(ks.create_grant(&r, new(None, &["Decrypt"], None), 3), Err(Error::LimitExceeded(_))));
    // Another key's quota is its own.
    ks.create_grant(&ro, new(None, &["Encrypt"], None), 3).unwrap();
    // Durable, and in the snapshot of a new handle.
    drop(ks);
    let ks = s.open();
    let grants = ks.grants(&r).unwrap();
    assert_eq!(grants.len(), 3);
    let g = ks.grant(&g1).unwrap();
    assert_eq!(g.operations, ["Decrypt", "Encrypt"]);
    assert_eq!(g.constraints.as_ref(), Some(&subset));
    assert_eq!(g.key_id, k.key_id);
    assert_eq!(ks.attributes(&r).unwrap().grants_for("arn:aws:iam::111122223333:user/app").count(), 3);
    // Deleting: only on its own key, once.
    assert!(matches!(ks.delete_grant(&ro, &g1), Err(Error::NotFound(_))));
    ks.delete_grant(&r, &g1).unwrap();
    assert!(matches!(ks.delete_grant(&r, &g1), Err(Error::NotFound(_))));
    assert!(ks.grant(&g1).is_none());
    assert_eq!(ks.all_grants().len(), 3);
    // A key pending deletion takes no new grant; its grants go when it is purged.
    ks.schedule_deletion(&r, 1_000, 7).unwrap();
    assert!(matches!(ks.create_grant(&r, new(None, &["Decrypt"], None), 3), Err(Error::InvalidState { .. })));
    assert_eq!(ks.purge_deleted(1_000).unwrap(), vec![k.key_id.clone()]);
    assert!(ks.grant(&g2).is_none() && ks.grant(&g3).is_none());
    assert_eq!(ks.all_grants().len(), 1, "the other key's grant stays");
}

pub fn hmac_keys_keep_their_spec_and_material(s: &dyn Subject) {
    let ks = s.open();
    let k = ks.create_key_of(KeySpec::Hmac384, "mac", &[("t".into(), "v".into())], Some("{\"p\":1}")).unwrap();
    assert_eq!((k.key_spec, k.key_usage, k.state), (KeySpec::Hmac384, KeyUsage::GenerateVerifyMac, KeyState::Enabled));
    let r = KeyRef::parse(&k.key_id).unwrap();
    let mac = ks.generate_mac(&r, MacAlgorithm::HmacSha384, b"hello").unwrap();
    assert_eq!(mac.len(), 48);
    assert!(ks.verify_mac(&r, MacAlgorithm::HmacSha384, b"hello", &mac).unwrap());
    assert!(matches!(ks.encrypt(&r, b"x", &EncryptionContext::new()), Err(Error::WrongKeyType { .. })));
    assert!(matches!(ks.rotate(&r), Err(Error::Unsupported(_))));
    let aes = ks.create_key(None, "aes").unwrap();
    assert_eq!((aes.key_spec, aes.key_usage), (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt));
    // Another handle (a restarted process, a replica) reads the same spec and material.
    drop(ks);
    let other = s.open();
    let m = other.describe(&r).unwrap();
    assert_eq!((m.key_spec, m.key_usage), (KeySpec::Hmac384, KeyUsage::GenerateVerifyMac));
    assert_eq!(other.generate_mac(&r, MacAlgorithm::HmacSha384, b"hello").unwrap(), mac);
    other.set_enabled(&r, false).unwrap();
    assert!(matches!(other.generate_mac(&r, MacAlgorithm::HmacSha384, b"hello"), Err(Error::Disabled(_))));
}

/// Imported material for an HMAC key and a key pair: the key keeps its spec while it waits
/// PendingImport, takes only material its spec allows (HMAC lengths, a PKCS#8 key of its curve),
/// never a second material or an import type, and another handle unseals the same material.
pub fn imported_hmac_and_key_pair_material(s: &dyn Subject) {
    let ks = s.open();
    let mac_key = ks.create_external_key_for(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac, "mac", &[], None).unwrap();
    assert_eq!((mac_key.key_spec, mac_key.state), (KeySpec::Hmac256, KeyState::PendingImport));
    let r = KeyRef::parse(&mac_key.key_id).unwrap();
    let none = ImportOptions::default();
    for bad in [&[7u8; 31][..], &[7u8; 65][..]] {
        assert!(matches!(ks.import_material_with(&r, bad, &none, 1), Err(Error::IncorrectMaterial(_))));
    }
    let typed = ImportOptions { import_type: Some(ImportType::New), ..ImportOptions::default() };
    assert!(matches!(ks.import_material_with(&r, &[7u8; 40], &typed, 1), Err(Error::Unsupported(_))));
    ks.import_material_with(&r, &[7u8; 40], &none, 1).unwrap();
    assert_eq!(ks.describe(&r).unwrap().state, KeyState::Enabled);
    let mac = ks.generate_mac(&r, MacAlgorithm::HmacSha256, b"m").unwrap();
    assert!(matches!(ks.import_material_with(&r, &[8u8; 40], &none, 2), Err(Error::IncorrectMaterial(_))));

    let pair = ks.create_external_key_for(KeySpec::EccNistP256, KeyUsage::SignVerify, "pair", &[], None).unwrap();
    let p = KeyRef::parse(&pair.key_id).unwrap();
    assert!(ks.public_key(&p).is_err(), "no public key before the import");
    let p384 = envelope_keystore::crypto::SigningKey::generate_pkcs8(KeySpec::EccNistP384).unwrap();
    assert!(matches!(ks.import_material_with(&p, &p384, &none, 1), Err(Error::IncorrectMaterial(_))));
    assert!(matches!(ks.import_material_with(&p, &[1u8; 32], &none, 1), Err(Error::IncorrectMaterial(_))));
    let p256 = envelope_keystore::crypto::SigningKey::generate_pkcs8(KeySpec::EccNistP256).unwrap();
    ks.import_material_with(&p, &p256, &none, 1).unwrap();
    let public = envelope_keystore::crypto::SigningKey::from_pkcs8(KeySpec::EccNistP256, &p256)
        .unwrap()
        .public_key_der()
        .unwrap();
    assert_eq!(ks.public_key(&p).unwrap(), public);
    drop(ks);
    let other = s.open();
    assert_eq!(other.generate_mac(&r, MacAlgorithm::HmacSha256, b"m").unwrap(), mac);
    assert_eq!(other.public_key(&p).unwrap(), public);
    assert_eq!(other.describe(&p).unwrap().key_spec, KeySpec::EccNistP256);
}

pub fn asymmetric_keys_keep_their_usage_and_key_pair(s: &dyn Subject) {
    use envelope_keystore::EncryptionAlgorithm as A;
    let ks = s.open();
    let rsa = ks.create_key_for(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "rsa", &[], None).unwrap();
    let ecdh = ks.create_key_for(KeySpec::EccNistP256, KeyUsage::KeyAgreement, "ecdh", &[], None).unwrap();
    assert_eq!((ecdh.key_spec, ecdh.key_usage), (KeySpec::EccNistP256, KeyUsage::KeyAgreement));
    let (r, e) = (KeyRef::parse(&rsa.key_id).unwrap(), KeyRef::parse(&ecdh.key_id).unwrap());
    let ct = ks.rsa_encrypt(&r, A::RsaesOaepSha1, b"hello").unwrap();
    let public = ks.public_key(&e).unwrap();
    assert!(matches!(ks.encrypt(&r, b"x", &EncryptionContext::new()), Err(Error::WrongKeyType { .. })));
    // Another handle (a restarted process, a replica) reads the same usage and key pairs.
    drop(ks);
    let other = s.open();
    assert_eq!(other.describe(&r).unwrap().key_usage, KeyUsage::EncryptDecrypt);
    assert_eq!(other.describe(&e).unwrap().key_usage, KeyUsage::KeyAgreement);
    assert_eq!(&other.rsa_decrypt(&r, A::RsaesOaepSha1, &ct).unwrap()[..], b"hello");
    assert_eq!(other.public_key(&e).unwrap(), public);
    // Its own public key as the peer's: ECDH with itself, the same on every handle.
    let secret = other.derive_shared_secret(&e, &public).unwrap();
    assert_eq!(secret.len(), 32);
    assert_eq!(s.open().derive_shared_secret(&e, &public).unwrap(), secret);
}
