//! Key store tests of what only the SQLite engine has (its file, schema migrations, the data
//! directory), against a real database in a temporary directory. What every engine must do is
//! the store battery in tests/store.

use super::*;
use crate::model::SigningAlgorithm;
use proptest::prelude::*;

fn store() -> (tempfile::TempDir, KeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(&dir.path().join("data")).unwrap();
    (dir, ks)
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
fn schema_v1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let k = {
        let ks = KeyStore::open(dir.path()).unwrap();
        ks.create_key(Some("old"), "").unwrap()
    };
    // Turn the database back into a version-1 one, as an older build wrote it.
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute_batch(
        "ALTER TABLE aliases DROP COLUMN updated_at; ALTER TABLE keys DROP COLUMN key_spec; \
         ALTER TABLE keys DROP COLUMN key_usage; UPDATE meta SET v = '1' WHERE k = 'schema_version';",
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

/// A schema-5 store (before key specs) opens with every key a symmetric encryption key whose
/// material still unseals and decrypts; HMAC keys created after the migration work beside them.
#[test]
fn schema_v5_keys_become_symmetric_default_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (k, blob) = {
        let ks = KeyStore::open(dir.path()).unwrap();
        let k = ks.create_key(Some("old"), "").unwrap();
        let e = ks.encrypt(&KeyRef::parse("old").unwrap(), b"before specs", &EncryptionContext::new()).unwrap();
        (k, e.blob)
    };
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute_batch(
        "ALTER TABLE keys DROP COLUMN key_spec; ALTER TABLE keys DROP COLUMN key_usage; \
         UPDATE meta SET v = '5' WHERE k = 'schema_version';",
    )
    .unwrap();
    drop(conn);
    let ks = KeyStore::open(dir.path()).unwrap();
    let r = KeyRef::parse(&k.key_id).unwrap();
    let m = ks.describe(&r).unwrap();
    assert_eq!((m.key_spec, m.key_usage), (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt));
    assert_eq!(&ks.decrypt(&blob, &EncryptionContext::new()).unwrap().plaintext[..], b"before specs");
    let h = ks.create_key_of(KeySpec::Hmac256, "mac", &[], None).unwrap();
    let hr = KeyRef::parse(&h.key_id).unwrap();
    let mac = ks.generate_mac(&hr, MacAlgorithm::HmacSha256, b"m").unwrap();
    assert!(ks.verify_mac(&hr, MacAlgorithm::HmacSha256, b"m", &mac).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    let v: String = conn.query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(v, store::SCHEMA_VERSION.to_string());
}

/// HMAC keys: material of the spec's length, sealed bound to the spec, one MAC per message,
/// refused for encryption (and symmetric keys for MACs), never rotated, and still working after
/// the store is opened again.
#[test]
fn hmac_keys_compute_macs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(dir.path()).unwrap();
    let aes = ks.create_key(Some("aes"), "").unwrap();
    let aes = KeyRef::parse(&aes.key_id).unwrap();
    let mut macs = Vec::new();
    for (spec, alg, len) in [
        (KeySpec::Hmac224, MacAlgorithm::HmacSha224, 28),
        (KeySpec::Hmac256, MacAlgorithm::HmacSha256, 32),
        (KeySpec::Hmac384, MacAlgorithm::HmacSha384, 48),
        (KeySpec::Hmac512, MacAlgorithm::HmacSha512, 64),
    ] {
        let m = ks.create_key_of(spec, "mac", &[("t".into(), "v".into())], None).unwrap();
        assert_eq!((m.key_spec, m.key_usage), (spec, KeyUsage::GenerateVerifyMac));
        let r = KeyRef::parse(&m.key_id).unwrap();
        let mac = ks.generate_mac(&r, alg, b"message").unwrap();
        assert_eq!(mac.len(), len);
        assert_eq!(ks.generate_mac(&r, alg, b"message").unwrap(), mac, "deterministic");
        assert_ne!(ks.generate_mac(&r, alg, b"messagf").unwrap(), mac);
        assert!(ks.verify_mac(&r, alg, b"message", &mac).unwrap());
        assert!(!ks.verify_mac(&r, alg, b"massage", &mac).unwrap());
        let other = MacAlgorithm::ALL.into_iter().find(|a| *a != alg).unwrap();
        assert!(matches!(ks.generate_mac(&r, other, b"message"), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.encrypt(&r, b"x", &EncryptionContext::new()), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.rotate(&r), Err(Error::Unsupported(_))));
        // The sealed material is the spec's length and opens only bound to the spec.
        let (kid, mid, _) = ks.current(&r).unwrap();
        let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
        let sealed: Vec<u8> = conn
            .query_row("SELECT sealed FROM key_versions WHERE material_id = ?1", [hex::encode(mid)], |r| r.get(0))
            .unwrap();
        let root = ks.root_key();
        assert_eq!(root.open(&store::seal_aad_for(spec, spec.usage(), &kid, &mid), &sealed).unwrap().len(), len);
        assert!(root.open(&store::seal_aad(&kid, &mid), &sealed).is_err());
        macs.push((m.key_id, alg, mac));
    }
    assert!(matches!(
        ks.generate_mac(&aes, MacAlgorithm::HmacSha256, b"m"),
        Err(Error::WrongKeyType { spec: KeySpec::SymmetricDefault, .. })
    ));
    // Disabled: refused as any key.
    let r = KeyRef::parse(&macs[0].0).unwrap();
    ks.set_enabled(&r, false).unwrap();
    assert!(matches!(ks.generate_mac(&r, macs[0].1, b"message"), Err(Error::Disabled(_))));
    ks.set_enabled(&r, true).unwrap();
    drop(ks);
    let ks = KeyStore::open(dir.path()).unwrap();
    for (id, alg, mac) in &macs {
        let r = KeyRef::parse(id).unwrap();
        assert_eq!(&ks.generate_mac(&r, *alg, b"message").unwrap(), mac, "the same material after reopening");
    }
    // A key export leaves HMAC keys out.
    let e = ks.export().unwrap();
    assert_eq!(e.keys, 1);
    assert_eq!(e.skipped_specs.len(), 4);
}

/// RSA encryption keys and ECDH keys: key pairs of a spec's second usage, sealed bound to spec
/// and usage, used only for what their usage allows, the same after the store is opened again.
#[test]
fn rsa_encryption_and_key_agreement_keys_do_what_their_usage_allows() {
    use crate::EncryptionAlgorithm as A;
    use crate::crypto::{AgreementKey, Signed};
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(dir.path()).unwrap();
    let rsa = ks.create_key_for(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt, "rsa", &[], None).unwrap();
    assert_eq!((rsa.key_spec, rsa.key_usage), (KeySpec::Rsa2048, KeyUsage::EncryptDecrypt));
    let ecdh = ks.create_key_for(KeySpec::EccNistP384, KeyUsage::KeyAgreement, "ecdh", &[], None).unwrap();
    assert_eq!((ecdh.key_spec, ecdh.key_usage), (KeySpec::EccNistP384, KeyUsage::KeyAgreement));
    assert!(matches!(
        ks.create_key_for(KeySpec::EccSecgP256k1, KeyUsage::KeyAgreement, "", &[], None),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(ks.create_key_for(KeySpec::Hmac256, KeyUsage::SignVerify, "", &[], None), Err(Error::Invalid(_))));
    let (r, e) = (KeyRef::parse(&rsa.key_id).unwrap(), KeyRef::parse(&ecdh.key_id).unwrap());
    let c = ks.rsa_encrypt(&r, A::RsaesOaepSha256, b"secret").unwrap();
    assert_eq!(c.len(), 256);
    assert_eq!(&ks.rsa_decrypt(&r, A::RsaesOaepSha256, &c).unwrap()[..], b"secret");
    assert!(matches!(ks.rsa_decrypt(&r, A::RsaesOaepSha1, &c), Err(Error::InvalidCiphertext(_))));
    assert!(matches!(ks.rsa_encrypt(&r, A::RsaesOaepSha1, &[0u8; 215]), Err(Error::Invalid(_))));
    // Neither signs, encrypts symmetrically nor does the other's job.
    for k in [&r, &e] {
        assert!(matches!(
            ks.sign(k, crate::SigningAlgorithm::EcdsaSha384, Signed::Raw(b"m")),
            Err(Error::WrongKeyType { .. })
        ));
        assert!(matches!(ks.encrypt(k, b"x", &EncryptionContext::new()), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.rotate(k), Err(Error::Unsupported(_))));
    }
    assert!(matches!(ks.rsa_encrypt(&e, A::RsaesOaepSha1, b"x"), Err(Error::WrongKeyType { .. })));
    let peer_doc = crate::crypto::SigningKey::generate_pkcs8(KeySpec::EccNistP384).unwrap();
    let peer = AgreementKey::from_pkcs8(KeySpec::EccNistP384, &peer_doc).unwrap();
    assert!(matches!(ks.derive_shared_secret(&r, &peer.public_key_der()), Err(Error::WrongKeyType { .. })));
    let secret = ks.derive_shared_secret(&e, &peer.public_key_der()).unwrap();
    let public = ks.public_key(&e).unwrap();
    assert_eq!(peer.derive(&public).unwrap(), secret, "both sides agree");
    assert!(matches!(ks.derive_shared_secret(&e, &ks.public_key(&r).unwrap()), Err(Error::Invalid(_))));
    // Sealed bound to spec and usage: not openable as the spec's default usage.
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    let root = ks.root_key();
    for (k, spec, usage) in
        [(&r, KeySpec::Rsa2048, KeyUsage::EncryptDecrypt), (&e, KeySpec::EccNistP384, KeyUsage::KeyAgreement)]
    {
        let (kid, mid, _) = ks.current(k).unwrap();
        let sealed: Vec<u8> = conn
            .query_row("SELECT sealed FROM key_versions WHERE material_id = ?1", [hex::encode(mid)], |r| r.get(0))
            .unwrap();
        assert!(root.open(&store::seal_aad_for(spec, usage, &kid, &mid), &sealed).is_ok());
        assert!(root.open(&store::seal_aad_for(spec, spec.usage(), &kid, &mid), &sealed).is_err());
    }
    // Disabled: refused as any key.
    ks.set_enabled(&e, false).unwrap();
    assert!(matches!(ks.derive_shared_secret(&e, &peer.public_key_der()), Err(Error::Disabled(_))));
    ks.set_enabled(&e, true).unwrap();
    drop(ks);
    let ks = KeyStore::open(dir.path()).unwrap();
    assert_eq!(&ks.rsa_decrypt(&r, A::RsaesOaepSha256, &c).unwrap()[..], b"secret", "the same pair after reopening");
    assert_eq!(ks.derive_shared_secret(&e, &peer.public_key_der()).unwrap(), secret);
    assert_eq!(ks.describe(&e).unwrap().key_usage, KeyUsage::KeyAgreement);
}

/// Signing keys: a PKCS#8 key pair per spec, sealed bound to the spec, signatures that verify
/// (raw messages and digests), the same public key after the store is opened again.
#[test]
fn signing_keys_sign_and_keep_their_key_pair() {
    use crate::crypto::Signed;
    let dir = tempfile::tempdir().unwrap();
    let ks = KeyStore::open(dir.path()).unwrap();
    let mut keys = Vec::new();
    for (spec, alg) in [
        (KeySpec::EccNistP256, SigningAlgorithm::EcdsaSha256),
        (KeySpec::EccNistP384, SigningAlgorithm::EcdsaSha384),
        (KeySpec::EccNistP521, SigningAlgorithm::EcdsaSha512),
        (KeySpec::Rsa2048, SigningAlgorithm::RsassaPssSha256),
    ] {
        let m = ks.create_key_of(spec, "", &[], None).unwrap();
        assert_eq!((m.key_spec, m.key_usage), (spec, KeyUsage::SignVerify));
        let r = KeyRef::parse(&m.key_id).unwrap();
        let sig = ks.sign(&r, alg, Signed::Raw(b"m")).unwrap();
        assert!(ks.verify(&r, alg, Signed::Raw(b"m"), &sig).unwrap());
        assert!(!ks.verify(&r, alg, Signed::Raw(b"n"), &sig).unwrap());
        let other = SigningAlgorithm::ALL.into_iter().find(|a| !spec.signing_algorithms().contains(a)).unwrap();
        assert!(matches!(ks.sign(&r, other, Signed::Raw(b"m")), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.encrypt(&r, b"x", &EncryptionContext::new()), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.generate_mac(&r, MacAlgorithm::HmacSha256, b"x"), Err(Error::WrongKeyType { .. })));
        assert!(matches!(ks.rotate(&r), Err(Error::Unsupported(_))));
        let public = ks.public_key(&r).unwrap();
        keys.push((r, alg, sig, public));
    }
    let aes = ks.create_key(None, "").unwrap();
    assert!(matches!(ks.public_key(&KeyRef::parse(&aes.key_id).unwrap()), Err(Error::WrongKeyType { .. })));
    drop(ks);
    let ks = KeyStore::open(dir.path()).unwrap();
    for (r, alg, sig, public) in &keys {
        assert_eq!(&ks.public_key(r).unwrap(), public);
        assert!(ks.verify(r, *alg, Signed::Raw(b"m"), sig).unwrap());
    }
}

/// A key whose stored spec was altered does not open: HMAC material never serves as an AES key.
#[test]
fn an_altered_key_spec_does_not_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let ks = KeyStore::open(dir.path()).unwrap();
        ks.create_key_of(KeySpec::Hmac256, "", &[], None).unwrap().key_id
    };
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute(
        "UPDATE keys SET key_spec = 'SYMMETRIC_DEFAULT', key_usage = 'ENCRYPT_DECRYPT' WHERE key_id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(KeyStore::open(dir.path()), Err(Error::RootKey(_))));
}

/// A schema-4 store (one material per external key, in key_import) opens with each import as
/// the key's CURRENT material record: imported, or waiting for re-import after a delete.
#[test]
fn schema_v4_imports_become_current_material_records() {
    let dir = tempfile::tempdir().unwrap();
    let (live, gone) = {
        let ks = KeyStore::open(dir.path()).unwrap();
        let a = ks.create_external_key("live", &[], None).unwrap();
        let b = ks.create_external_key("deleted", &[], None).unwrap();
        let c = ks.create_external_key("never imported", &[], None).unwrap();
        let (ra, rb) = (KeyRef::parse(&a.key_id).unwrap(), KeyRef::parse(&b.key_id).unwrap());
        let ma = ks.import_material(&ra, &[1u8; 32], Some(500), 10).unwrap();
        let mb = ks.import_material(&rb, &[2u8; 32], None, 10).unwrap();
        ks.delete_imported_material(&rb).unwrap();
        let e = ks.encrypt(&ra, b"kept", &EncryptionContext::new()).unwrap();
        drop(c);
        ((a.key_id, ma, e), (b.key_id, mb))
    };
    // What a schema-4 build wrote: the material id and current expiry in key_import.
    let conn = rusqlite::Connection::open(dir.path().join(store::DB_FILE)).unwrap();
    conn.execute("UPDATE key_import SET material_id = ?2, valid_to = 500 WHERE key_id = ?1", [&live.0, &live.1])
        .unwrap();
    conn.execute("UPDATE key_import SET material_id = ?2 WHERE key_id = ?1", [&gone.0, &gone.1]).unwrap();
    conn.execute_batch(
        "DROP TABLE key_materials; ALTER TABLE keys DROP COLUMN key_spec; ALTER TABLE keys DROP COLUMN key_usage; \
         UPDATE meta SET v = '4' WHERE k = 'schema_version';",
    )
    .unwrap();
    drop(conn);

    let ks = KeyStore::open(dir.path()).unwrap();
    let ra = KeyRef::parse(&live.0).unwrap();
    let a = ks.attributes(&ra).unwrap();
    assert_eq!(a.materials.len(), 1);
    let m = &a.materials[0];
    assert_eq!(
        (m.material_id.as_str(), m.state, m.imported, m.valid_to),
        (live.1.as_str(), MaterialState::Current, true, Some(500))
    );
    assert_eq!((a.valid_to, m.created_at), (Some(500), 10));
    assert_eq!(&ks.decrypt(&live.2.blob, &EncryptionContext::new()).unwrap().plaintext[..], b"kept");
    let rb = KeyRef::parse(&gone.0).unwrap();
    let b = ks.attributes(&rb).unwrap();
    let view: Vec<_> = b.materials.iter().map(|m| (m.material_id.as_str(), m.state, m.imported)).collect();
    assert_eq!(view, [(gone.1.as_str(), MaterialState::Current, false)]);
    assert_eq!(ks.describe(&rb).unwrap().state, KeyState::PendingImport);
    // Only the same material comes back, and the key with it.
    assert!(matches!(ks.import_material(&rb, &[3u8; 32], None, 20), Err(Error::IncorrectMaterial(_))));
    assert_eq!(ks.import_material(&rb, &[2u8; 32], None, 20).unwrap(), gone.1);
    assert_eq!(ks.describe(&rb).unwrap().state, KeyState::Enabled);
    // Expiry still applies to the migrated record.
    assert_eq!(ks.expire_imported(500).unwrap(), vec![live.0.clone()]);
    assert_eq!(ks.describe(&ra).unwrap().state, KeyState::PendingImport);
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
fn sealed_secrets_are_bound_to_their_label() {
    let (_d, ks) = store();
    let s = ks.seal_secret(b"label-a", b"wrapping key").unwrap();
    assert_eq!(&ks.open_secret(b"label-a", &s).unwrap()[..], b"wrapping key");
    assert!(matches!(ks.open_secret(b"label-b", &s), Err(Error::InvalidCiphertext(_))));
    let mut t = s.clone();
    t[20] ^= 1;
    assert!(matches!(ks.open_secret(b"label-a", &t), Err(Error::InvalidCiphertext(_))));
}
