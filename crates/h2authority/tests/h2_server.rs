//! End-to-end: a real `h2` server behind `RewriteIo`, driven by a
//! hand-rolled HTTP/2 client that sends the `:authority` kube-apiserver
//! sends over a Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics with its cause

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use envelope_h2authority::RewriteIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

const SOCKET: &str = "/var/run/kms/x.sock";
const SOCKET_PCT: &str = "%2Fvar%2Frun%2Fkms%2Fx.sock";
const STATUS: &str = "/v2.KeyManagementService/Status";
const PROTOCOL_ERROR: u32 = 0x1;

/// Runs an h2 server on `io`, reporting the URI of every accepted request
/// and answering each with `200` + "ok" + trailers.
fn spawn_server<T>(io: T) -> mpsc::UnboundedReceiver<http::Uri>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            let _ = tx.send(request.uri().clone());
            let mut body = request.into_body();
            tokio::spawn(async move {
                while let Some(chunk) = body.data().await {
                    let Ok(chunk) = chunk else { return };
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let response = http::Response::builder().status(200).body(()).unwrap();
                let Ok(mut send) = respond.send_response(response, false) else {
                    return;
                };
                let _ = send.send_data(Bytes::from_static(b"ok"), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            });
        }
    });
    rx
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Response { status: Vec<u8> },
    Reset { error_code: u32 },
    GoAway { error_code: u32 },
}

async fn read_frame(io: &mut DuplexStream) -> Frame {
    let mut header = [0u8; 9];
    io.read_exact(&mut header).await.expect("server closed the connection");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.unwrap();
    Frame {
        kind: header[3],
        flags: header[4],
        stream_id: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// Minimal client: preface, SETTINGS, then one HEADERS frame per request
/// (all encoded with one HPACK encoder, so later requests use its dynamic
/// table). Returns what the server answered on each stream.
async fn raw_client(mut io: DuplexStream, authorities: &[Option<&str>]) -> Vec<Outcome> {
    let mut encoder = loona_hpack::Encoder::new();
    let mut decoder = loona_hpack::Decoder::new();
    io.write_all(PREFACE).await.unwrap();
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    for (i, authority) in authorities.iter().enumerate() {
        let list = kms_request(*authority, STATUS);
        let block = encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])));
        let stream_id = 1 + 2 * u32::try_from(i).unwrap();
        io.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block)).await.unwrap();
    }
    io.flush().await.unwrap();

    let mut outcomes: Vec<Option<Outcome>> = authorities.iter().map(|_| None).collect();
    while outcomes.iter().any(Option::is_none) {
        let f = read_frame(&mut io).await;
        let slot = usize::try_from(f.stream_id / 2).unwrap();
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap(),
            HEADERS => {
                assert_ne!(f.flags & END_HEADERS, 0, "test client expects single-frame blocks");
                let headers = decoder.decode(&f.payload).unwrap();
                if let Some((_, status)) = headers.iter().find(|(n, _)| n == b":status") {
                    outcomes[slot].get_or_insert(Outcome::Response { status: status.clone() });
                }
            }
            RST_STREAM => {
                let error_code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                outcomes[slot].get_or_insert(Outcome::Reset { error_code });
            }
            GOAWAY => {
                let error_code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                return vec![Outcome::GoAway { error_code }];
            }
            _ => {}
        }
    }
    outcomes.into_iter().map(Option::unwrap).collect()
}

async fn with_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("test timed out")
}

fn drain(rx: &mut mpsc::UnboundedReceiver<http::Uri>) -> Vec<String> {
    let mut uris = Vec::new();
    while let Ok(uri) = rx.try_recv() {
        uris.push(uri.to_string());
    }
    uris
}

#[tokio::test]
async fn socket_path_authority_is_accepted_through_the_adapter() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut uris = spawn_server(RewriteIo::new(server));
    let outcomes = with_timeout(raw_client(client, &[Some(SOCKET), Some(SOCKET_PCT), Some(SOCKET)])).await;
    let ok = || Outcome::Response { status: b"200".to_vec() };
    assert_eq!(outcomes, [ok(), ok(), ok()]);
    let expected = format!("http://localhost{STATUS}");
    assert_eq!(drain(&mut uris), [expected.clone(), expected.clone(), expected]);
}

#[tokio::test]
async fn socket_path_authority_is_reset_without_the_adapter() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut uris = spawn_server(server);
    let outcomes = with_timeout(raw_client(client, &[Some(SOCKET), Some(SOCKET_PCT)])).await;
    let reset = || Outcome::Reset { error_code: PROTOCOL_ERROR };
    assert_eq!(outcomes, [reset(), reset()]);
    assert!(drain(&mut uris).is_empty(), "h2 must not have delivered the request");
}

#[tokio::test]
async fn valid_and_missing_authorities_are_untouched() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let mut uris = spawn_server(RewriteIo::new(server));
    let outcomes = with_timeout(raw_client(client, &[Some("kms.example:8443"), None])).await;
    let ok = || Outcome::Response { status: b"200".to_vec() };
    assert_eq!(outcomes, [ok(), ok()]);
    assert_eq!(drain(&mut uris), [format!("http://kms.example:8443{STATUS}"), STATUS.to_owned()]);
}

/// A real h2 client (Huffman coding, dynamic table, request bodies, flow
/// control) through the adapter: everything must work unchanged.
#[tokio::test]
async fn real_h2_client_round_trips_through_the_adapter() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let io = RewriteIo::new(server);
    let mut uris = spawn_server(io);

    with_timeout(async move {
        let (h2, connection) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let body = Bytes::from(vec![0xa5; 200_000]);
        for i in 0..20 {
            let request = http::Request::post(format!("http://kms.local/v2.KeyManagementService/Encrypt?i={i}"))
                .header("content-type", "application/grpc")
                .header("grpc-timeout", format!("{}m", 1000 + i))
                .body(())
                .unwrap();
            let (response, mut send) = h2.send_request(request, false).unwrap();
            send.reserve_capacity(body.len());
            send.send_data(body.clone(), true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let mut recv = response.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.unwrap();
                recv.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, b"ok");
            let trailers = recv.trailers().await.unwrap().unwrap();
            assert_eq!(trailers["grpc-status"], "0");
            h2 = h2.ready().await.unwrap();
        }
    })
    .await;

    let seen = drain(&mut uris);
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().enumerate().all(|(i, u)| *u == format!("http://kms.local/v2.KeyManagementService/Encrypt?i={i}"))
    );
}
