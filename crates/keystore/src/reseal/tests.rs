//! Reseal tests: every move between the three forms, and a crash after each step.

use std::panic::{AssertUnwindSafe, catch_unwind};

use zeroize::Zeroizing;

use super::*;
use crate::crypto::TAG_LEN;
use crate::root::{FakeToken, PASSPHRASE_FILE, PKCS11_FILE, WRAP_IV_LEN};
use crate::store::ROOT_KEY_FILE;
use crate::{EncryptionContext, KeyRef, KeyStore};

fn pass(p: &str) -> RootSource {
    RootSource::Passphrase(Zeroizing::new(p.into()))
}

const URI: &str = "pkcs11:token=kms;object=root;id=%01";

/// A store with one key and a ciphertext made under `source`.
fn seeded(source: &RootSource) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("data");
    let ks = KeyStore::open_with(&dir, source).unwrap();
    ks.create_key(Some("k"), "").unwrap();
    let blob = ks.encrypt(&KeyRef::parse("k").unwrap(), b"seed", &EncryptionContext::new()).unwrap().blob;
    (d, dir, blob)
}

fn decrypts(dir: &Path, source: &RootSource, blob: &[u8]) -> bool {
    match KeyStore::open_existing_with(dir, source) {
        Ok(ks) => &ks.decrypt(blob, &EncryptionContext::new()).unwrap().plaintext[..] == b"seed",
        Err(_) => false,
    }
}

fn forms(dir: &Path) -> Vec<RootForm> {
    RootForm::present(dir)
}

#[test]
fn a_fresh_store_under_a_token_key_keeps_no_root_key_on_disk() {
    let token = FakeToken::source(URI, 7);
    let (_d, dir, blob) = seeded(&token);
    assert_eq!(forms(&dir), vec![RootForm::Pkcs11]);
    assert!(decrypts(&dir, &token, &blob));
    // Another token key, another URI, a file or a passphrase: refused.
    assert!(!decrypts(&dir, &FakeToken::source(URI, 8), &blob));
    let e = KeyStore::open_existing_with(&dir, &FakeToken::source("pkcs11:token=kms;object=other", 7)).unwrap_err();
    assert!(e.to_string().contains("not by pkcs11:token=kms;object=other"), "{e}");
    let e = KeyStore::open_with(&dir, &RootSource::File).unwrap_err().to_string();
    assert!(e.contains("PKCS#11") && !dir.join(ROOT_KEY_FILE).exists(), "{e}");
    assert!(KeyStore::open_existing(&dir).unwrap_err().to_string().contains("--root-key pkcs11:"));
    assert!(KeyStore::open_with(&dir, &pass("a long enough passphrase")).is_err());
    // The file is JSON naming the token key; a changed byte no longer unwraps.
    let text = fs::read_to_string(dir.join(PKCS11_FILE)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["key"], URI);
    assert_eq!(v["iv"].as_str().unwrap().len(), 2 * WRAP_IV_LEN);
    assert_eq!(v["wrapped"].as_str().unwrap().len(), 2 * (32 + TAG_LEN));
    let mut tampered = v.clone();
    let w = v["wrapped"].as_str().unwrap();
    tampered["wrapped"] = format!("{}{}", if &w[..1] == "0" { "1" } else { "0" }, &w[1..]).into();
    fs::write(dir.join(PKCS11_FILE), serde_json::to_vec(&tampered).unwrap()).unwrap();
    assert!(!decrypts(&dir, &token, &blob));
}

#[test]
fn the_root_key_moves_through_every_form_and_back_without_touching_the_database() {
    let (_d, dir, blob) = seeded(&RootSource::File);
    let db = fs::read(dir.join(crate::store::DB_FILE)).unwrap();
    let steps = [
        (RootSource::File, FakeToken::source(URI, 1), RootForm::Pkcs11),
        (FakeToken::source(URI, 1), FakeToken::source("pkcs11:token=kms;object=root2", 2), RootForm::Pkcs11),
        (FakeToken::source("pkcs11:token=kms;object=root2", 2), pass("first passphrase!"), RootForm::Passphrase),
        (pass("first passphrase!"), pass("second passphrase"), RootForm::Passphrase),
        (pass("second passphrase"), RootSource::File, RootForm::File),
    ];
    for (from, to, form) in &steps {
        let r = reseal(&dir, from, to).unwrap();
        assert_eq!(r, Resealed::Moved(from.form(), *form));
        assert_eq!(forms(&dir), vec![*form], "{from:?} → {to:?}");
        assert!(decrypts(&dir, to, &blob), "{from:?} → {to:?}");
        assert!(!decrypts(&dir, from, &blob), "the old root form no longer opens: {from:?} → {to:?}");
        // Again: nothing to do.
        if from.form() != to.form() {
            assert_eq!(reseal(&dir, from, to).unwrap(), Resealed::AlreadyDone(*form));
        }
    }
    assert_eq!(fs::read(dir.join(crate::store::DB_FILE)).unwrap(), db, "the database is never rewritten");
    assert!(fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("root.tmp")));
}

#[test]
fn a_store_created_with_a_passphrase_moves_to_a_token_key_and_back() {
    let p = pass("created with this one");
    let (_d, dir, blob) = seeded(&p);
    let token = FakeToken::source(URI, 3);
    reseal(&dir, &p, &token).unwrap();
    assert!(decrypts(&dir, &token, &blob));
    let q = pass("a different passphrase");
    reseal(&dir, &token, &q).unwrap();
    assert!(decrypts(&dir, &q, &blob));
    assert!(!decrypts(&dir, &p, &blob));
    assert_eq!(&fs::read(dir.join(PASSPHRASE_FILE)).unwrap()[..8], b"ENVPASS2");
}

#[test]
fn a_wrong_old_root_changes_nothing() {
    let (_d, dir, blob) = seeded(&pass("the right passphrase"));
    let before = fs::read(dir.join(PASSPHRASE_FILE)).unwrap();
    assert!(reseal(&dir, &pass("the wrong passphrase"), &FakeToken::source(URI, 1)).is_err());
    assert!(reseal(&dir, &RootSource::File, &FakeToken::source(URI, 1)).is_err());
    assert_eq!(forms(&dir), vec![RootForm::Passphrase]);
    assert_eq!(fs::read(dir.join(PASSPHRASE_FILE)).unwrap(), before);
    assert!(decrypts(&dir, &pass("the right passphrase"), &blob));
}

#[test]
fn a_target_file_of_another_store_is_refused() {
    let (_d, dir, blob) = seeded(&RootSource::File);
    let (_d2, other, _) = seeded(&FakeToken::source(URI, 1));
    fs::copy(other.join(PKCS11_FILE), dir.join(PKCS11_FILE)).unwrap();
    let e = reseal(&dir, &RootSource::File, &FakeToken::source(URI, 1)).unwrap_err().to_string();
    assert!(e.contains("another root key"), "{e}");
    assert!(dir.join(ROOT_KEY_FILE).exists());
    assert!(decrypts(&dir, &RootSource::File, &blob));
}

/// A crash after each step of each kind of move: the store opens under the old root or the new
/// one, and running the reseal again finishes it.
#[test]
fn a_crash_at_any_step_leaves_a_store_that_opens_and_a_rerun_finishes() {
    let moves = || {
        vec![
            (RootSource::File, FakeToken::source(URI, 1)),
            (FakeToken::source(URI, 1), pass("a passphrase here")),
            (pass("a passphrase here"), RootSource::File),
            (RootSource::File, pass("another passphrase")),
            (FakeToken::source(URI, 1), FakeToken::source("pkcs11:token=kms;object=b", 2)),
        ]
    };
    for (i, (from, to)) in moves().into_iter().enumerate() {
        let steps: &[ResealStep] = if from.form() == to.form() {
            &[ResealStep::NewWritten]
        } else {
            &[ResealStep::NewWritten, ResealStep::OldRemoved]
        };
        for &crash_at in steps {
            let (_d, dir, blob) = seeded(&from);
            let crashed = catch_unwind(AssertUnwindSafe(|| {
                reseal_with_hook(&dir, &from, &to, &mut |step| {
                    if step == crash_at {
                        panic!("simulated crash after {step:?}");
                    }
                })
            }));
            assert!(crashed.is_err(), "move {i} crashed at {crash_at:?}");
            let old_opens = decrypts(&dir, &from, &blob);
            let new_opens = decrypts(&dir, &to, &blob);
            assert!(new_opens, "move {i}, crash after {crash_at:?}: the new root opens");
            match crash_at {
                ResealStep::NewWritten if from.form() != to.form() => {
                    assert!(old_opens, "move {i}: both forms are there and both open");
                    assert_eq!(forms(&dir).len(), 2);
                    assert_eq!(reseal(&dir, &from, &to).unwrap(), Resealed::Finished(to.form()));
                }
                _ => {
                    assert!(!old_opens, "move {i}, crash after {crash_at:?}: the old form is gone");
                    // The same command run again says it is done (within one form too, where
                    // the old root no longer opens anything).
                    assert_eq!(reseal(&dir, &from, &to).unwrap(), Resealed::AlreadyDone(to.form()), "move {i}");
                }
            }
            assert_eq!(forms(&dir), vec![to.form()], "move {i}, crash after {crash_at:?}");
            assert!(decrypts(&dir, &to, &blob));
        }
    }
}
