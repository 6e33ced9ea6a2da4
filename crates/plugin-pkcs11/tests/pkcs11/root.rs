//! A key store's root key wrapped by a SoftHSM2 token key (Pkcs11RootWrapper): the store opens
//! again after a "restart" (a new wrapper), moves to a root key file and back, and refuses
//! another token key.

use std::sync::Arc;

use envelope_keystore::reseal::{Resealed, reseal};
use envelope_keystore::root::{PKCS11_FILE, RootForm};
use envelope_keystore::{EncryptionContext, KeyRef, KeyStore, RootSource};
use envelope_plugin_pkcs11::{Pkcs11RootWrapper, Pkcs11Uri};
use envelope_test_support::softhsm;

use super::TestToken;

fn uri(t: &TestToken, object: &str) -> String {
    format!(
        "pkcs11:token={};object={object}?module-path={}&pin-source=file:{}",
        t.label,
        softhsm::module_path().display(),
        t.pin_file.display()
    )
}

fn source(uri: &str) -> RootSource {
    RootSource::Pkcs11(Arc::new(Pkcs11RootWrapper::from_uri(uri).unwrap()))
}

#[test]
fn a_store_sealed_by_a_token_key_reopens_moves_to_a_file_and_back() {
    let t = TestToken::new();
    let admin = t.admin();
    let root_obj = admin.create_key("root").unwrap();
    admin.create_key("other").unwrap();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("data");
    let ctx = EncryptionContext::new();
    let blob = {
        let ks = KeyStore::open_with(&dir, &source(&uri(&t, "root"))).unwrap();
        ks.create_key(Some("k"), "").unwrap();
        ks.encrypt(&KeyRef::parse("k").unwrap(), b"seed", &ctx).unwrap().blob
    };
    assert_eq!(RootForm::present(&dir), vec![RootForm::Pkcs11], "no root key on disk");
    let text = std::fs::read_to_string(dir.join(PKCS11_FILE)).unwrap();
    assert!(text.contains(&format!("pkcs11:token={};object=root", t.label)), "{text}");
    assert!(!text.contains("pin"), "no PIN source or PIN in the file: {text}");

    // A restart: a new wrapper (new sessions, a new login) unwraps the same root key.
    let reopened = KeyStore::open_existing_with(&dir, &source(&uri(&t, "root"))).unwrap();
    assert_eq!(&reopened.decrypt(&blob, &ctx).unwrap().plaintext[..], b"seed");
    drop(reopened);
    // The URI may name the key by label and CKA_ID; the stored name must match it.
    let with_id = format!(
        "pkcs11:token={};object=root;id={}?module-path={}&pin-source=file:{}",
        t.label,
        root_obj.id.iter().map(|b| format!("%{b:02x}")).collect::<String>(),
        softhsm::module_path().display(),
        t.pin_file.display()
    );
    assert!(Pkcs11Uri::parse(&with_id).unwrap().id.is_some());
    let e = KeyStore::open_existing_with(&dir, &source(&with_id)).unwrap_err().to_string();
    assert!(e.contains("not by"), "{e}");

    // Another token key: the stored name differs, and a file copied under its name does not unwrap.
    let e = KeyStore::open_existing_with(&dir, &source(&uri(&t, "other"))).unwrap_err().to_string();
    assert!(e.contains("not by"), "{e}");
    let forged = text.replace("object=root", "object=other");
    let moved = d.path().join("forged");
    std::fs::create_dir(&moved).unwrap();
    std::fs::set_permissions(&moved, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(dir.join(envelope_keystore::store::DB_FILE), moved.join(envelope_keystore::store::DB_FILE)).unwrap();
    std::fs::write(moved.join(PKCS11_FILE), forged).unwrap();
    let e = KeyStore::open_existing_with(&moved, &source(&uri(&t, "other"))).unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");

    // To a root key file, then to the token key with its CKA_ID, then a restart.
    assert_eq!(
        reseal(&dir, &source(&uri(&t, "root")), &RootSource::File).unwrap(),
        Resealed::Moved(RootForm::Pkcs11, RootForm::File)
    );
    assert_eq!(&KeyStore::open_existing(&dir).unwrap().decrypt(&blob, &ctx).unwrap().plaintext[..], b"seed");
    reseal(&dir, &RootSource::File, &source(&with_id)).unwrap();
    assert_eq!(RootForm::present(&dir), vec![RootForm::Pkcs11]);
    let ks = KeyStore::open_existing_with(&dir, &source(&with_id)).unwrap();
    assert_eq!(&ks.decrypt(&blob, &ctx).unwrap().plaintext[..], b"seed");
}

#[test]
fn a_missing_or_ambiguous_token_key_is_named() {
    let t = TestToken::new();
    let admin = t.admin();
    admin.create_key("twice").unwrap();
    admin.rotate_key("twice").unwrap();
    let d = tempfile::tempdir().unwrap();
    let e = KeyStore::open_with(&d.path().join("a"), &source(&uri(&t, "missing"))).unwrap_err().to_string();
    assert!(e.contains("no AES key pkcs11:token=") && e.contains("object=missing"), "{e}");
    let e = KeyStore::open_with(&d.path().join("b"), &source(&uri(&t, "twice"))).unwrap_err().to_string();
    assert!(e.contains("2 AES keys match") && e.contains("add id="), "{e}");
    assert!(!d.path().join("a").join(PKCS11_FILE).exists());
}
