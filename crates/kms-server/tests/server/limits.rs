//! Connection limits and timeouts: slow headers and bodies, idle HTTP/1 and HTTP/2 connections, the
//! connection limit, clients that never read, shutdown with silent connections.

use std::sync::Arc;
use std::time::Duration;

use envelope_keystore::KeyStore;
use envelope_kms_server::{Config, Credential, CredentialStore, Server, serve};
use envelope_test_support::kms::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// Reads until the peer closes the connection (or `limit` passes); returns what was read and
/// whether the peer closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

fn slow_config(timeout_ms: u64, max_connections: usize) -> Config {
    let mut c = Config::new(REGION, ACCOUNT);
    c.client_timeout = Duration::from_millis(timeout_ms);
    c.max_connections = max_connections;
    c
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let h = start_with(slow_config(300, 64)).await;
    // Headers that never finish (slowloris).
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListKeys\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a request whose headers never end must not hold the connection");
    // A connection that never sends anything.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection must be closed");
    // The server still answers.
    assert_eq!(h.call("ListKeys", json!({})).await.status, 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_an_error() {
    let h = start_with(slow_config(300, 64)).await;
    let body = br#"{"KeyId":"alias/x","Plaintext":"AAAA"}"#;
    let headers = h.signed_headers("TrentService.Encrypt", body, body, &Signer::default());
    let mut req = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in &headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(&body[..5]).await.unwrap();
    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("SerializationException") && text.contains("not received within 300 ms"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let h = start_with(slow_config(10_000, 2)).await;
    // Two clients hold both slots (connected, nothing sent).
    let a = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let _b = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third request is not served while they do...
    let port = h.port;
    let signer = Signer::default();
    let body = b"{}".to_vec();
    let headers = h.signed_headers("TrentService.ListKeys", &body, &body, &signer);
    let third = tokio::spawn(async move {
        let mut req = String::from("POST / HTTP/1.1\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("content-length: 2\r\nconnection: close\r\n\r\n{}");
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        read_until_closed(&mut s, Duration::from_secs(20)).await.0
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "the third connection was served beyond the limit of 2");
    // ...and is served as soon as one of them goes away.
    drop(a);
    let raw = tokio::time::timeout(Duration::from_secs(10), third).await.expect("served after a slot freed").unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn limits_are_validated() {
    for (timeout_ms, conns) in [(50, 10), (5_000_000, 10), (1000, 0), (1000, 2_000_000)] {
        let c = slow_config(timeout_ms, conns);
        assert!(c.validate().is_err(), "{timeout_ms} ms, {conns} connections");
    }
    assert!(slow_config(1000, 10).validate().is_ok());
}

#[tokio::test]
async fn a_partial_http2_preface_does_not_hold_the_connection() {
    let h = start_with(slow_config(300, 64)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let h = start_with(slow_config(300, 64)).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_client, conn) = h2::client::handshake(tcp).await.unwrap();
    // The client answers pings by itself; with no request the server still closes it.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
}

#[tokio::test]
async fn a_client_that_never_reads_its_responses_is_dropped() {
    let h = start_with(slow_config(300, 64)).await;
    let s = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (_rd, mut wr) = s.into_split();
    // Pipelined requests, responses never read: the server's writes block once the buffers fill.
    let request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".repeat(64);
    let writer = tokio::spawn(async move {
        loop {
            if wr.write_all(&request).await.is_err() {
                return;
            }
        }
    });
    assert!(tokio::time::timeout(Duration::from_secs(20), writer).await.is_ok(), "the connection was never dropped");
    assert_eq!(h.call("ListKeys", json!({})).await.status, 200);
}

#[tokio::test]
async fn shutdown_does_not_wait_for_silent_connections() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(KeyStore::open(&dir.path().join("data")).unwrap());
    let creds = CredentialStore::new(vec![Credential::new(AKID, Zeroizing::new(SECRET.into()), None, ADMIN)]).unwrap();
    let server = Arc::new(Server::new(store, creds, Config::new(REGION, ACCOUNT)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, server, async move {
        let _ = rx.await;
    }));
    // Connected, nothing sent (a TCP health probe, say), and an idle keep-alive connection.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (_h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("serve returned").unwrap().unwrap();
    // The grace period (10 s) is for requests in progress; there were none.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
