//! SigV4 authentication failures.

use std::time::{Duration, SystemTime};

use envelope_test_support::kms::*;

#[tokio::test]
async fn authentication_failures() {
    let h = start().await;
    let body = br#"{"NumberOfBytes": 8}"#.to_vec();
    let ok = Signer::default();
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &ok).await.status, 200);

    let wrong_secret = Signer { secret: "not-the-secret-at-all-0000000000000000000", ..ok.clone() };
    let msg = h.call_with("GenerateRandom", body.clone(), &wrong_secret).await.err("InvalidSignatureException");
    assert!(msg.starts_with("The request signature we calculated does not match"), "{msg}");

    let unknown = Signer { akid: "AKIAUNKNOWNUNKNOWN00", ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &unknown).await.err("UnrecognizedClientException");

    let stale = Signer { time: SystemTime::now() - Duration::from_secs(10 * 60), ..ok.clone() };
    let msg = h.call_with("GenerateRandom", body.clone(), &stale).await.err("InvalidSignatureException");
    assert!(msg.starts_with("Signature expired"), "{msg}");
    let future = Signer { time: SystemTime::now() + Duration::from_secs(10 * 60), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &future).await.err("InvalidSignatureException");
    let skewed_ok = Signer { time: SystemTime::now() - Duration::from_secs(4 * 60), ..ok.clone() };
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &skewed_ok).await.status, 200);

    let region = Signer { region: "eu-west-1", ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &region).await.err("InvalidSignatureException");

    // Body changed after signing.
    let headers = h.signed_headers("TrentService.GenerateRandom", &body, br#"{"NumberOfBytes": 9}"#, &ok);
    h.send("POST", "/", &headers, &body).await.err("InvalidSignatureException");
    // Target changed after signing.
    let mut headers = h.signed_headers("TrentService.GenerateRandom", &body, &body, &ok);
    for (k, v) in headers.iter_mut() {
        if k == "x-amz-target" {
            *v = "TrentService.ListKeys".into();
        }
    }
    h.send("POST", "/", &headers, &body).await.err("InvalidSignatureException");

    // No Authorization header at all; a malformed one.
    let plain = vec![("x-amz-target".to_string(), "TrentService.ListKeys".to_string())];
    h.send("POST", "/", &plain, b"{}").await.err("MissingAuthenticationTokenException");
    let bad = vec![("authorization".to_string(), "AWS4-HMAC-SHA256 Credential=x".to_string())];
    h.send("POST", "/", &bad, b"{}").await.err("IncompleteSignatureException");

    // Session tokens: required for the key that has one, refused for the key that has none.
    let with_token = Signer { akid: TOKEN_AKID, token: Some(TOKEN), ..ok.clone() };
    assert_eq!(h.call_with("GenerateRandom", body.clone(), &with_token).await.status, 200);
    let missing_token = Signer { akid: TOKEN_AKID, token: None, ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &missing_token).await.err("UnrecognizedClientException");
    let wrong_token = Signer { akid: TOKEN_AKID, token: Some("other"), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &wrong_token).await.err("UnrecognizedClientException");
    let extra_token = Signer { token: Some(TOKEN), ..ok.clone() };
    h.call_with("GenerateRandom", body.clone(), &extra_token).await.err("UnrecognizedClientException");
}
