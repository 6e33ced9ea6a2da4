//! The ceiling of `scripts/bench-kms-wrk`: the most trivial JSON handler axum can serve on the
//! same runtime settings as `envelope kms serve` (tokio multi-thread, HTTP/1.1). It parses the
//! request body as KMS JSON (`KeyId`, `CiphertextBlob`) and answers a KMS-shaped JSON document
//! — no signature check, no key, no audit — so the key server's figures can be read as a share
//! of what the HTTP stack alone costs on this machine.
//!
//! Usage: `axum_ceiling 127.0.0.1:PORT`

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(serde::Deserialize)]
struct Request {
    #[serde(rename = "KeyId")]
    key_id: Option<String>,
    #[serde(rename = "CiphertextBlob")]
    ciphertext: Option<String>,
}

#[derive(serde::Serialize)]
struct Answer {
    #[serde(rename = "KeyId")]
    key_id: String,
    #[serde(rename = "Plaintext")]
    plaintext: &'static str,
    #[serde(rename = "EncryptionAlgorithm")]
    algorithm: &'static str,
}

async fn handle(body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Request>(&body) else {
        return (StatusCode::BAD_REQUEST, "{\"__type\":\"SerializationException\"}").into_response();
    };
    let len = req.ciphertext.map_or(0, |c| c.len());
    let answer = Answer {
        key_id: req.key_id.unwrap_or_else(|| format!("ceiling-{len}")),
        plaintext: "aGVsbG8=",
        algorithm: "SYMMETRIC_DEFAULT",
    };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"))], body).into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4597".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, axum::Router::new().route("/", post(handle))).await
}
