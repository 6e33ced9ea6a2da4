//! `envelope kms migrate` and `envelope kms serve --store` with the real binary and a real
//! PostgreSQL (Debian's, a throwaway cluster).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use envelope_test_support::net::free_port;
use envelope_test_support::postgres::Postgres;

fn envelope(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn migrate_to_postgres_and_back_and_serve_from_it() {
    let pg = Postgres::start();
    let url = pg.create_database("kms");
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let data_s = data.to_str().unwrap();
    key_cmd(&data, &["create", "app"]);
    key_cmd(&data, &["rotate", "app"]);
    let before = String::from_utf8(key_cmd(&data, &["list"]).stdout).unwrap();

    let out = envelope(&["kms", "migrate", "--data-dir", data_s, "--from", "sqlite", "--to", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("copied 1 key(s), 2 version(s) and 1 alias(es)"), "{}", text(&out));
    assert_eq!(pg.psql_in("kms", "SELECT count(*) FROM key_versions"), "2");
    // Not twice into the same database.
    let again = envelope(&["kms", "migrate", "--data-dir", data_s, "--from", "sqlite", "--to", &url]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("restore needs an empty store"), "{}", text(&again));
    assert_eq!(pg.psql_in("kms", "SELECT count(*) FROM key_versions"), "2");

    // A key server on the database (its own data directory, the same root key) serves and is
    // ready.
    let replica = d.path().join("replica");
    std::fs::create_dir(&replica).unwrap();
    std::fs::set_permissions(&replica, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::copy(data.join("root.key"), replica.join("root.key")).unwrap();
    let (port, http) = (free_port(), free_port());
    let mut server = Command::new(BIN)
        .args(["kms", "serve", "--listen", &format!("127.0.0.1:{port}"), "--http-addr", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(&replica)
        .env("ENVELOPE_KMS_STORE", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ready = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", http)).await.is_ok()
                && http_get(http, "/readyz").await.0 == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    let _ = server.kill();
    let out = server.wait_with_output().unwrap();
    assert!(ready, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PostgreSQL database 127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Back to SQLite in another directory: the same keys and versions.
    let back = d.path().join("back");
    let out = envelope(&[
        "kms",
        "migrate",
        "--data-dir",
        data_s,
        "--from",
        &url,
        "--to",
        &format!("sqlite:{}", back.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(data.join("root.key"), back.join("root.key")).unwrap();
    let after = String::from_utf8(key_cmd(&back, &["list"]).stdout).unwrap();
    assert_eq!(before, after);
}

#[test]
fn a_bad_store_is_a_configuration_error() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["kms", "serve", "--http-addr", "off", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(d.path().join("kms"))
        .args(["--store", "mysql://somewhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("--store"), "{}", text(&out));
    let out = envelope(&["kms", "migrate", "--from", "sqlite", "--to", "sqlite"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("the same store"), "{}", text(&out));
}
