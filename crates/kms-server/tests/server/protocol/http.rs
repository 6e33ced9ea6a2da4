//! HTTP: AWS-shaped protocol errors, HTTP/2 with prior knowledge.

use envelope_test_support::kms::*;
use serde_json::{Value, json};

#[tokio::test]
async fn protocol_errors_are_aws_shaped() {
    let h = start().await;
    let s = Signer::default();
    h.call_with("Encrypt", b"{not json".to_vec(), &s).await.err("SerializationException");
    h.call_with("Encrypt", br#"{"KeyId": 12, "Plaintext": "eA=="}"#.to_vec(), &s).await.err("SerializationException");
    let msg = h.call("Encrypt", json!({"Plaintext": "eA=="})).await.err("ValidationException");
    assert_eq!(
        msg,
        "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null"
    );
    h.call("Encrypt", json!({"KeyId": "alias/x", "Plaintext": b64(&[0u8; 4097])})).await.err("ValidationException");
    h.call("NoSuchOperation", json!({})).await.err("UnknownOperationException");
    h.call("ReplicateKey", json!({"KeyId": "x"})).await.err("UnsupportedOperationException");
    h.call("CreateKey", json!({"KeySpec": "SM2", "KeyUsage": "SIGN_VERIFY"}))
        .await
        .err("UnsupportedOperationException");

    // Oversized body: an AWS-shaped 400, not a bare 413 or a reset.
    let big = vec![b' '; envelope_kms_server::DEFAULT_MAX_BODY + 1000];
    let msg = h.call_with("ListKeys", big, &s).await.err("ValidationException");
    assert!(msg.contains("larger than the limit"), "{msg}");

    // Wrong method / path / missing target.
    let r = h.send("GET", "/", &[], b"").await;
    assert_eq!(r.error_type(), "UnknownOperationException");
    let r = h.send("POST", "/other", &[], b"{}").await;
    assert_eq!(r.error_type(), "UnknownOperationException");
    let headers: Vec<_> = h
        .signed_headers("TrentService.ListKeys", b"{}", b"{}", &s)
        .into_iter()
        .filter(|(k, _)| k != "x-amz-target")
        .collect();
    // Dropping a signed header breaks the signature before the target is looked at.
    h.send("POST", "/", &headers, b"{}").await.err("InvalidSignatureException");

    // Empty-output operations answer 200 with an empty body.
    let (id, _) = create_key(&h).await;
    let r = h.call("DisableKey", json!({"KeyId": id})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json, Value::Null);
}

#[tokio::test]
async fn http2_prior_knowledge_with_authority_instead_of_host() {
    let h = start().await;
    let body = br#"{"Limit":5}"#.to_vec();
    // Signed over host = the authority, sent as HTTP/2 `:authority` with no Host header.
    let headers = h.signed_headers("TrentService.ListKeys", &body, &body, &Signer::default());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder().method("POST").uri(format!("http://127.0.0.1:{}/", h.port));
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k.as_str(), v.as_str());
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(body.into(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status();
    let mut data = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = data.data().await {
        let chunk = chunk.unwrap();
        let _ = data.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v.get("Keys").is_some(), "{v}");
}
