//! The launchers start real servers that accept connections.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

use envelope_test_support::etcd::Etcd;
use envelope_test_support::postgres::Postgres;

#[test]
fn postgres_starts_and_accepts_a_connection() {
    let pg = Postgres::start();
    assert_eq!(pg.psql("select 40 + 2"), "42");
    assert_eq!(pg.psql("select current_user"), "postgres");
    // Over the Unix socket too.
    let out = std::process::Command::new(envelope_test_support::postgres::bin_dir().join("pg_isready"))
        .args(["-h", &pg.socket_dir().to_string_lossy(), "-p", &pg.port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn two_postgres_clusters_run_side_by_side_and_stop_on_drop() {
    let a = Postgres::start();
    let b = Postgres::start();
    assert_ne!(a.port, b.port);
    a.psql("create table t (x int)");
    assert_eq!(b.psql("select count(*) from pg_tables where tablename = 't'"), "0");
    let port = a.port;
    drop(a);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "dropped cluster still listening");
    assert_eq!(b.psql("select 1"), "1");
}

#[test]
fn etcd_starts_and_accepts_a_connection() {
    let etcd = Etcd::start();
    let addr = etcd.endpoint.strip_prefix("http://").unwrap();
    std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(etcd.args(), vec!["--etcd".to_string(), etcd.endpoint.clone()]);
}
