//! TLS to PostgreSQL (rustls): a server that accepts TLS only, its CA given in the URL.

use std::time::Duration;

use envelope_keystore::{Error, KeyRef, KeyStore, Location, RootSource, StoreOptions};
use envelope_test_support::postgres::Postgres;

fn open(url: &str, dir: &std::path::Path) -> envelope_keystore::Result<KeyStore> {
    let options = StoreOptions {
        location: Location::parse(url).unwrap(),
        create: true,
        refresh_interval: Duration::from_secs(3600),
    };
    KeyStore::open_with_options(dir, &RootSource::File, &options)
}

#[test]
fn connects_over_tls_verifying_the_server_and_refuses_otherwise() {
    let pg = Postgres::start_tls();
    let ca = pg.ca_cert().unwrap().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);

    let ks = open(&format!("{base}?sslmode=require&sslrootcert={ca}"), &data).unwrap();
    ks.create_key(Some("over-tls"), "").unwrap();
    assert!(ks.storage().contains("127.0.0.1"), "{}", ks.storage());
    drop(ks);
    // verify-full is accepted as a synonym (rustls always checks the chain and the name).
    let ks = open(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"), &data).unwrap();
    assert!(ks.describe(&KeyRef::parse("over-tls").unwrap()).is_ok());
    drop(ks);

    // The server refuses a connection without TLS (hostssl only).
    let e = open(&format!("{base}?sslmode=disable"), &data).unwrap_err();
    assert!(matches!(e, Error::Postgres(_) | Error::Unavailable(_)), "{e:?}");
    // A server certificate that the given CA did not sign is refused.
    let other = Postgres::start_tls();
    let wrong = other.ca_cert().unwrap().to_string_lossy().into_owned();
    let e = open(&format!("{base}?sslmode=require&sslrootcert={wrong}"), &data).unwrap_err();
    assert!(matches!(e, Error::Unavailable(_) | Error::Postgres(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    // A CA file that is not there is a clear configuration error.
    let e = open(&format!("{base}?sslmode=require&sslrootcert=/nonexistent/ca.pem"), &data).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
}
