//! `envelope decrypt --value-file`: values saved by an operator, as docs/inspect.md's recovery
//! recipe saves them (`etcdctl get --print-value-only KEY > value.bin`, which appends one `\n`),
//! and the errors for files that hold something else. No etcd needed; the KMS v2 seed is wrapped
//! by a running `envelope plugin`, as kube-apiserver has it wrapped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use envelope_inspect::writer;
use envelope_proto::v2;

const ETCD_KEY: &str = "/registry/secrets/prod/db";
const PASSWORD: &str = "s3cret-pw-value";

/// A KMS v2 value for ETCD_KEY whose seed the plugin wrapped.
async fn kms_v2_value(p: &RunningPlugin) -> Vec<u8> {
    let mut c = p.v2().await.unwrap();
    let seed = writer::random_seed().unwrap();
    let w = c.encrypt(v2::EncryptRequest { plaintext: seed.to_vec(), uid: "t".into() }).await.unwrap().into_inner();
    let env = writer::KmsV2Envelope {
        provider_name: "envelope".into(),
        key_id: w.key_id,
        encrypted_dek_source: w.ciphertext,
        annotations: w.annotations.into_iter().collect(),
    };
    let meta = writer::new_object_meta("prod", "db", "uid-db", 1_700_000_000);
    let secret =
        writer::new_secret(meta, BTreeMap::from([("password".into(), PASSWORD.as_bytes().to_vec())]), "Opaque");
    writer::kms_v2_seed(ETCD_KEY.as_bytes(), &writer::encode_secret(&secret), &seed[..], &env).unwrap()
}

fn decrypt(file: &Path, p: &RunningPlugin) -> Output {
    Command::new(BIN)
        .args(["decrypt", "-o", "json", "--etcd-key", ETCD_KEY, "--plugin-socket", &p.socket, "--value-file"])
        .arg(file)
        .output()
        .unwrap()
}

fn assert_decrypted(out: &Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["name"], "db");
    use base64::Engine;
    assert_eq!(v["data"]["password"], base64::engine::general_purpose::STANDARD.encode(PASSWORD));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn value_file_with_the_newline_etcdctl_appends_decrypts() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let value = kms_v2_value(&p).await;
    let f = d.path().join("value.bin");

    // As `etcdctl get --print-value-only KEY > value.bin` saves it: one '\n' appended.
    let mut saved = value.clone();
    saved.push(b'\n');
    std::fs::write(&f, &saved).unwrap();
    assert_decrypted(&decrypt(&f, &p));

    // The exact bytes still work.
    std::fs::write(&f, &value).unwrap();
    assert_decrypted(&decrypt(&f, &p));

    // A complete value whose last byte is 0x0a is taken as it is, not cut: here the
    // EncryptedObject ends with an unknown varint field 15 = 10 (0x78 0x0a), which decoders skip.
    let mut ends_in_0a = value.clone();
    ends_in_0a.extend_from_slice(&[0x78, 0x0a]);
    std::fs::write(&f, &ends_in_0a).unwrap();
    assert_decrypted(&decrypt(&f, &p));
    // ... and with etcdctl's newline after it.
    ends_in_0a.push(b'\n');
    std::fs::write(&f, &ends_in_0a).unwrap();
    assert_decrypted(&decrypt(&f, &p));

    // Only one newline is etcdctl's: two are a damaged value, and the error says what was
    // expected (without echoing value bytes).
    let mut two = value.clone();
    two.extend_from_slice(b"\n\n");
    std::fs::write(&f, &two).unwrap();
    let out = decrypt(&f, &p);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("expected a KMS v2 value") && err.contains("EncryptedObject"), "{err}");
    assert!(err.contains("found k8s:enc:kms:v2:envelope:"), "{err}");
    assert!(err.contains("line break"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn value_file_that_is_not_a_value_says_what_was_expected() {
    let d = tempfile::tempdir().unwrap();
    let p = RunningPlugin::start(d.path(), &[]).await;
    let value = kms_v2_value(&p).await;
    let f = d.path().join("value.bin");
    let no_secret = |err: &str| {
        assert!(!err.contains(PASSWORD), "{err}");
        assert!(!err.contains("\\x"), "no value bytes echoed: {err}");
    };

    // `etcdctl get KEY` without --print-value-only: the key on the first line, then the value.
    let mut saved = format!("{ETCD_KEY}\n").into_bytes();
    saved.extend_from_slice(&value);
    saved.push(b'\n');
    std::fs::write(&f, &saved).unwrap();
    let out = decrypt(&f, &p);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("expected a value starting with k8s:enc:"), "{err}");
    assert!(err.contains("--print-value-only"), "{err}");
    no_secret(&err);

    // The value in base64 (as `etcdctl get -w json` shows values).
    use base64::Engine;
    std::fs::write(&f, base64::engine::general_purpose::STANDARD.encode(&value) + "\n").unwrap();
    let err = stderr(&decrypt(&f, &p));
    assert!(err.contains("expected a value starting with k8s:enc:") && err.contains("base64 -d"), "{err}");
    no_secret(&err);

    // `etcdctl get -w json` output itself.
    let json =
        serde_json::json!({"header": {"revision": 5}, "kvs": [{"key": "L3JlZw==", "value": "eA=="}], "count": 1});
    std::fs::write(&f, json.to_string()).unwrap();
    let out = decrypt(&f, &p);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert!(err.contains("etcdctl") && err.contains("--print-value-only"), "{err}");

    // A truncated value.
    std::fs::write(&f, &value[..value.len() - 20]).unwrap();
    let err = stderr(&decrypt(&f, &p));
    assert!(err.contains("expected a KMS v2 value") && err.contains("found k8s:enc:kms:v2:envelope:"), "{err}");
    no_secret(&err);

    // Something else entirely, and an empty file.
    std::fs::write(&f, format!("password: {PASSWORD}\n")).unwrap();
    let err = stderr(&decrypt(&f, &p));
    assert!(err.contains("expected a value starting with k8s:enc:") && err.contains("found 26 bytes"), "{err}");
    no_secret(&err);
    std::fs::write(&f, b"").unwrap();
    let err = stderr(&decrypt(&f, &p));
    assert!(err.contains("expected a value starting with k8s:enc:") && err.contains("empty"), "{err}");
}

#[tokio::test]
async fn a_passphrase_store_decrypts_with_its_root_key_alone() {
    let d = tempfile::tempdir().unwrap();
    let phrase = d.path().join("passphrase");
    std::fs::write(&phrase, "a long recovery passphrase\n").unwrap();
    let root = format!("passphrase-file:{}", phrase.display());
    let mut p = RunningPlugin::start(d.path(), &["--root-key", &root]).await;
    let f = d.path().join("value.bin");
    std::fs::write(&f, kms_v2_value(&p).await).unwrap();
    p.stop();
    assert!(!p.data_dir.join("root.key").exists(), "no root key on disk");
    let from_store = |extra: &[&str], env: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(["decrypt", "-o", "json", "--etcd-key", ETCD_KEY, "--data-dir"])
            .arg(&p.data_dir)
            .arg("--value-file")
            .arg(&f)
            .args(extra)
            .env_remove("ENVELOPE_ROOT_KEY");
        if let Some(v) = env {
            c.env("ENVELOPE_ROOT_KEY", v);
        }
        c.output().unwrap()
    };
    // The plugin's own spelling, as a flag or in ENVELOPE_ROOT_KEY.
    assert_decrypted(&from_store(&["--root-key", &root], None));
    assert_decrypted(&from_store(&[], Some(&root)));
    // Without it the store is named for what it needs, and no root.key is created.
    let out = from_store(&[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("passphrase-derived root key") && err.contains("--root-key passphrase-file:"), "{err}");
    assert!(!p.data_dir.join("root.key").exists());
    // A wrong passphrase, an unreadable passphrase file and a malformed root are refused clearly.
    let wrong = d.path().join("wrong");
    std::fs::write(&wrong, "not the recovery passphrase").unwrap();
    let err = stderr(&from_store(&["--root-key", &format!("passphrase-file:{}", wrong.display())], None));
    assert!(err.contains("wrong root key passphrase"), "{err}");
    let err = stderr(&from_store(&["--root-key", "passphrase-file:/nonexistent/phrase"], None));
    assert!(err.contains("--root-key") && err.contains("/nonexistent/phrase"), "{err}");
    let out = from_store(&["--root-key", "root.key"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--root-key") && !err.contains("panicked"), "{err}");
}
