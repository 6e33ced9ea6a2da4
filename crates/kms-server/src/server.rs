//! HTTP: every request goes to one handler that reads the body (bounded), verifies SigV4,
//! dispatches on `X-Amz-Target`, runs the operation on the blocking pool, and answers with the
//! AWS JSON shape — `Content-Type: application/x-amz-json-1.1` and `x-amzn-RequestId` on every
//! response, errors as `{"__type": ..., "message": ...}`.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::Server;
use crate::audit::AuditEvent;
use crate::error::{KmsError, Result};
use crate::protocol::{Operation, parse_request};

/// Content type of every request and response body.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// After the body limit is exceeded, up to this many further bytes are read and discarded so the
/// client receives the error instead of a connection reset; beyond it the connection is dropped.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Serves the AWS KMS JSON API on `listener` until `shutdown` completes, then finishes
/// in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<Server>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The axum router (one fallback handler for every method and path).
pub fn router(state: Arc<Server>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(server): State<Arc<Server>>, req: Request<Body>) -> Response<Body> {
    let started = std::time::Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let source_ip = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    let user_agent = req.headers().get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut audit = AuditInfo::default();
    let outcome = process(&server, req, &mut audit).await;
    let (mut status, mut body, op, principal, mut code) = match outcome {
        Ok(ok) => (StatusCode::OK, ok.body, Some(ok.op), Some(ok.principal), None),
        Err(failed) => {
            let (code, status) = failed.error.aws();
            if let KmsError::Internal(detail) = &failed.error {
                tracing::error!(request_id = %request_id, error = %detail, "internal error");
            }
            audit.error_message = Some(failed.error.to_string());
            let body = serde_json::to_vec(&serde_json::json!({"__type": code, "message": failed.error.to_string()}))
                .map(Zeroizing::new)
                .unwrap_or_default();
            (status, body, failed.op, failed.principal, Some(code))
        }
    };
    if let Some(log) = server.audit() {
        let response = match (code, op) {
            (None, Some(o)) => audit_response(o, &body),
            _ => None,
        };
        let ev = AuditEvent {
            operation: op.map(Operation::name),
            request_id: &request_id,
            region: &server.config.region,
            account_id: &server.config.account_id,
            source_ip,
            user_agent: user_agent.as_deref(),
            access_key_id: audit.access_key_id.as_deref(),
            principal: principal.as_deref(),
            request: audit.request.as_ref(),
            response: response.as_ref(),
            error_code: code,
            error_message: audit.error_message.take(),
        };
        if let Err(e) = log.write(&ev) {
            tracing::error!(request_id = %request_id, error = %e, path = %log.path().display(), "cannot write the audit record");
            if log.fail_closed() {
                let refused = KmsError::Internal("audit log unavailable".into());
                let (c, s) = refused.aws();
                status = s;
                code = Some(c);
                body = Zeroizing::new(
                    serde_json::to_vec(&serde_json::json!({"__type": c, "message": "The request was refused because its audit record could not be written."}))
                        .unwrap_or_default(),
                );
            }
        }
    }
    server.metrics().request(op.map(Operation::name).unwrap_or("-"), code.unwrap_or(""), started.elapsed());
    tracing::info!(
        request_id = %request_id,
        operation = op.map(Operation::name).unwrap_or("-"),
        principal = principal.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        error = code.unwrap_or(""),
        "request"
    );
    let mut resp = Response::new(Body::from(Bytes::from_owner(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(code) = code {
        h.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    resp
}

/// What the audit record needs from request processing, filled as far as it got.
#[derive(Default)]
struct AuditInfo {
    access_key_id: Option<String>,
    /// The request with secret members already removed.
    request: Option<serde_json::Value>,
    error_message: Option<String>,
}

/// The response members the audit record may show: everything but secrets for management
/// calls; only the resolved key for cryptographic ones (their bodies are never parsed whole).
fn audit_response(op: Operation, body: &[u8]) -> Option<serde_json::Value> {
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        #[serde(rename = "KeyId")]
        key_id: Option<String>,
    }
    if crate::audit::is_crypto(op.name()) {
        let k: KeyOnly = serde_json::from_slice(body).ok()?;
        return Some(serde_json::json!({ "KeyId": k.key_id }));
    }
    serde_json::from_slice::<serde_json::Value>(body).ok().map(|v| crate::audit::sanitize(&v))
}

struct Done {
    op: Operation,
    principal: String,
    body: Zeroizing<Vec<u8>>,
}

struct Failed {
    error: KmsError,
    op: Option<Operation>,
    principal: Option<String>,
}

impl From<KmsError> for Failed {
    fn from(error: KmsError) -> Self {
        Failed { error, op: None, principal: None }
    }
}

async fn process(server: &Arc<Server>, req: Request<Body>, audit: &mut AuditInfo) -> std::result::Result<Done, Failed> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST || parts.uri.path() != "/" || parts.uri.query().is_some() {
        return Err(KmsError::UnknownOperation("This service accepts only POST / with an X-Amz-Target header.".into()).into());
    }
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = read_body(body, server.config.max_body, length).await?;
    let cred = server.credentials.verify("POST", "/", &parts.headers, &body, &server.config.region, SystemTime::now())?;
    let principal = cred.principal.clone();
    if server.audit().is_some() {
        audit.access_key_id = Some(cred.access_key_id.clone());
        audit.request = serde_json::from_slice::<serde_json::Value>(&body).ok().map(|v| crate::audit::sanitize(&v));
    }
    let fail = |error: KmsError, op: Option<Operation>| Failed { error, op, principal: Some(principal.clone()) };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail(KmsError::UnknownOperation("Missing X-Amz-Target header.".into()), None))?;
    let op = Operation::from_target(target).map_err(|e| fail(e, None))?;
    let request = parse_request(op, &body).map_err(|e| fail(e, Some(op)))?;
    drop(body);
    let s = server.clone();
    let out = tokio::task::spawn_blocking({ let principal = principal.clone(); move || s.execute(request, &principal) })
        .await
        .map_err(|e| fail(KmsError::Internal(format!("operation task failed: {e}")), Some(op)))?
        .map_err(|e| fail(e, Some(op)))?;
    Ok(Done { op, principal, body: out })
}

/// Reads the body into zeroizing memory, at most `max` bytes. `length` (the Content-Length)
/// sizes the buffer up front so it is not reallocated (which would leave unzeroized copies).
async fn read_body(mut body: Body, max: usize, length: Option<usize>) -> Result<Zeroizing<Vec<u8>>> {
    let too_large = || KmsError::Validation(format!("Request body is larger than the limit of {max} bytes."));
    if length.is_some_and(|n| n > max.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large());
    }
    let mut out = Zeroizing::new(Vec::with_capacity(length.unwrap_or(4096).min(max)));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| KmsError::Serialization("Could not read the request body.".into()))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen > max {
            if seen > max.saturating_add(DRAIN_LIMIT) {
                break;
            }
            continue;
        }
        out.extend_from_slice(&data);
    }
    if seen > max {
        return Err(too_large());
    }
    Ok(out)
}
