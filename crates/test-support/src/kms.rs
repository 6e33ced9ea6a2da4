//! The key server in process: a real [`Server`] on 127.0.0.1:0 with the test credentials,
//! requests signed with `aws-sigv4` (the SDKs' signer) and sent over plain TCP as HTTP/1.1.
//! [`KeyServer::stop`] and [`KeyServer::restart`] take it away and bring it back on the same
//! port (an outage). With the `sdk` feature, [`sdk_client`] and [`KeyServer::sdk_client`] give an
//! `aws-sdk-kms` client of it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use envelope_keystore::KeyStore;
use envelope_kms_server::audit::AuditLog;
use envelope_kms_server::{Config, Credential, CredentialStore, Server, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// The admin's access key (no identity policy; principal [`ADMIN`]).
pub const AKID: &str = "AKIAENVELOPETEST0001";
pub const SECRET: &str = "envelope-test-secret-0123456789abcdefghij";
pub const TOKEN_AKID: &str = "ASIAENVELOPETEST0002";
pub const TOKEN: &str = "session-token-value";
pub const REGION: &str = "us-east-1";
/// The application's access key (no identity policy; principal [`APP`]).
pub const APP_AKID: &str = "AKIAENVELOPETEST0003";
pub const ADMIN: &str = "arn:aws:iam::111122223333:user/admin";
pub const APP: &str = "arn:aws:iam::111122223333:user/app";
pub const ACCOUNT: &str = "111122223333";

/// A running key server.
pub struct KeyServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The server (its store, clock, metrics).
    pub server: Arc<Server>,
    dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A key server response.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub json: Value,
}

impl Reply {
    /// The value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `__type` of an error response.
    pub fn error_type(&self) -> &str {
        self.json["__type"].as_str().unwrap_or("")
    }

    /// The JSON of a 200 response (panics otherwise).
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{}", self.json);
        self.json
    }

    /// The message of a 400 response of type `code` (panics otherwise).
    #[track_caller]
    pub fn err(self, code: &str) -> String {
        assert_eq!((self.status, self.error_type()), (400, code), "{}", self.json);
        assert_eq!(self.header("x-amzn-errortype"), Some(code));
        self.json["message"].as_str().unwrap_or("").to_string()
    }
}

/// How to sign (or mis-sign) a request.
#[derive(Clone)]
pub struct Signer {
    pub akid: &'static str,
    pub secret: &'static str,
    pub token: Option<&'static str>,
    pub region: &'static str,
    pub time: SystemTime,
}

impl Default for Signer {
    fn default() -> Self {
        Signer { akid: AKID, secret: SECRET, token: None, region: REGION, time: SystemTime::now() }
    }
}

/// A key server with a fresh key store, the default configuration and credentials.
pub async fn start() -> KeyServer {
    start_with(Config::new(REGION, ACCOUNT)).await
}

/// A key server with `config` and the default credentials.
pub async fn start_with(config: Config) -> KeyServer {
    start_custom(config, default_credentials(), None).await
}

/// The admin, a session-token credential and the app, none with an identity policy.
pub fn default_credentials() -> Vec<Credential> {
    vec![
        Credential::new(AKID, Zeroizing::new(SECRET.into()), None, ADMIN),
        Credential::new(
            TOKEN_AKID,
            Zeroizing::new(SECRET.into()),
            Some(Zeroizing::new(TOKEN.into())),
            "arn:aws:sts::111122223333:assumed-role/ops/session",
        ),
        Credential::new(APP_AKID, Zeroizing::new(SECRET.into()), None, APP),
    ]
}

/// A server with these credentials and, optionally, an audit log.
pub async fn start_custom(config: Config, creds: Vec<Credential>, audit: Option<AuditLog>) -> KeyServer {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(KeyStore::open(&dir.path().join("data")).unwrap());
    let mut h = start_on(store, config, creds, audit).await;
    h.dir = Some(dir);
    h
}

/// A server over an existing key store (several servers may share one).
pub async fn start_on(
    store: Arc<KeyStore>,
    config: Config,
    creds: Vec<Credential>,
    audit: Option<AuditLog>,
) -> KeyServer {
    let mut server = Server::new(store, CredentialStore::new(creds).unwrap(), config).unwrap();
    if let Some(log) = audit {
        server = server.with_audit(log);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut h = KeyServer { port, server: Arc::new(server), dir: None, stop: None, task: None };
    h.serve_on(listener);
    h
}

impl KeyServer {
    fn serve_on(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = self.server.clone();
        self.task = Some(tokio::spawn(async move {
            let _ = serve(listener, served, async move {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops serving (the port is closed) and waits for the server to finish.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Serves the same server (same store) again on the same port, after [`KeyServer::stop`].
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve_on(listener);
    }

    /// Sends `op` (`TrentService.<op>`) with a JSON body, signed as the admin ([`AKID`]).
    pub async fn call(&self, op: &str, body: Value) -> Reply {
        self.call_with(op, body.to_string().into_bytes(), &Signer::default()).await
    }

    /// Sends `op` signed with the access key `akid` (its secret is [`SECRET`]).
    pub async fn call_as(&self, akid: &'static str, op: &str, body: Value) -> Reply {
        self.call_with(op, body.to_string().into_bytes(), &Signer { akid, ..Signer::default() }).await
    }

    /// Sends `op` with a raw body, signed as `s` says.
    pub async fn call_with(&self, op: &str, body: Vec<u8>, s: &Signer) -> Reply {
        let target = format!("TrentService.{op}");
        let headers = self.signed_headers(&target, &body, &body, s);
        self.send("POST", "/", &headers, &body).await
    }

    /// Headers for a request signed over `signed_body` (which may differ from what is sent).
    pub fn signed_headers(&self, target: &str, _sent: &[u8], signed_body: &[u8], s: &Signer) -> Vec<(String, String)> {
        self.sign_headers(self.base_headers(target), signed_body, s, SigningSettings::default())
    }

    /// `host`, `content-type` and `x-amz-target` as the SDKs send them.
    pub fn base_headers(&self, target: &str) -> Vec<(String, String)> {
        vec![
            ("host".to_string(), format!("127.0.0.1:{}", self.port)),
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("x-amz-target".to_string(), target.to_string()),
        ]
    }

    /// `headers` plus the signature headers, signed with `settings` (e.g. some headers excluded).
    pub fn sign_headers(
        &self,
        mut headers: Vec<(String, String)>,
        body: &[u8],
        s: &Signer,
        settings: SigningSettings,
    ) -> Vec<(String, String)> {
        let host = format!("127.0.0.1:{}", self.port);
        let identity =
            aws_credential_types::Credentials::new(s.akid, s.secret, s.token.map(str::to_string), None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(s.region)
            .name("kms")
            .time(s.time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let req = SignableRequest::new(
            "POST",
            format!("http://{host}/"),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut http_req = http::Request::builder().uri(format!("http://{host}/")).body(()).unwrap();
        instructions.apply_to_request_http1x(&mut http_req);
        for (k, v) in http_req.headers() {
            headers.push((k.as_str().to_string(), v.to_str().unwrap().to_string()));
        }
        headers
    }

    /// Sends a raw HTTP/1.1 request and reads the whole response.
    pub async fn send(&self, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let has_host = headers.iter().any(|(k, _)| k == "host");
        if !has_host {
            head.push_str(&format!("host: 127.0.0.1:{}\r\n", self.port));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
        let (mut rd, mut wr) = conn.split();
        let write = async {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(body).await;
        };
        let mut raw = Vec::new();
        let read = rd.read_to_end(&mut raw);
        let (_, r) = tokio::join!(write, read);
        r.unwrap();
        parse_response(&raw)
    }
}

/// Parses an HTTP/1.1 response and checks what every key server response carries.
pub fn parse_response(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    let json = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON body") };
    let reply = Reply { status, headers, json };
    assert_eq!(reply.header("content-type"), Some("application/x-amz-json-1.1"));
    let rid = reply.header("x-amzn-requestid").expect("x-amzn-RequestId on every response");
    assert!(uuid::Uuid::parse_str(rid).is_ok());
    reply
}

/// The body of a chunked transfer encoding.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// Standard base64.
pub fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// Decodes a JSON base64 string.
pub fn unb64(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().expect("base64 string")).unwrap()
}

/// Creates a key; returns its id and ARN.
pub async fn create_key(h: &KeyServer) -> (String, String) {
    let m = h.call("CreateKey", json!({"Description": "test"})).await.ok();
    let m = &m["KeyMetadata"];
    (m["KeyId"].as_str().unwrap().to_string(), m["Arn"].as_str().unwrap().to_string())
}

// ---- BYOK helpers ----

/// Wraps `material` with the DER public key as `alg` (a WrappingAlgorithm name) does.
pub fn wrap(public_der: &[u8], alg: &str, material: &[u8]) -> Vec<u8> {
    use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
    use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
    let public = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public_der).unwrap()).unwrap();
    let oaep = if alg.ends_with("SHA_1") { &OAEP_SHA1_MGF1SHA1 } else { &OAEP_SHA256_MGF1SHA256 };
    let rsa = |pt: &[u8]| {
        let mut out = vec![0u8; public.ciphertext_size()];
        public.encrypt(oaep, pt, &mut out, None).unwrap().to_vec()
    };
    if alg.starts_with("RSAES_OAEP") {
        return rsa(material);
    }
    let mut aes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut aes).unwrap();
    let mut wrapped = vec![0u8; material.len() + 16];
    let wrapped = AesKek::new(&AES_256, &aes).unwrap().wrap_with_padding(material, &mut wrapped).unwrap().to_vec();
    let mut out = rsa(&aes);
    out.extend_from_slice(&wrapped);
    out
}

/// Creates a key of origin EXTERNAL; returns its id.
pub async fn external_key(h: &KeyServer) -> String {
    let m = h.call("CreateKey", json!({"Origin": "EXTERNAL"})).await.ok();
    m["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// GetParametersForImport → (public key DER, token base64).
pub async fn import_params(h: &KeyServer, id: &str, alg: &str, spec: &str) -> (Vec<u8>, String) {
    let p = h
        .call("GetParametersForImport", json!({"KeyId": id, "WrappingAlgorithm": alg, "WrappingKeySpec": spec}))
        .await
        .ok();
    (unb64(&p["PublicKey"]), p["ImportToken"].as_str().unwrap().to_string())
}

/// Imports `material` into `id`, wrapped as `alg` says.
pub async fn import(h: &KeyServer, id: &str, alg: &str, material: &[u8]) -> Reply {
    let (public, token) = import_params(h, id, alg, "RSA_2048").await;
    let body = json!({"KeyId": id, "ImportToken": token, "EncryptedKeyMaterial": b64(&wrap(&public, alg, material)),
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    h.call("ImportKeyMaterial", body).await
}

// ---- the official SDK ----

/// An `aws-sdk-kms` client of `endpoint` with the access key `akid` and `secret`, in [`REGION`].
#[cfg(feature = "sdk")]
pub fn sdk_client(endpoint: &str, akid: &str, secret: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_kms::config::Credentials::new(akid, secret, None, None, "test"))
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

#[cfg(feature = "sdk")]
impl KeyServer {
    /// An `aws-sdk-kms` client of this server signing with `akid` (secret [`SECRET`]).
    pub fn sdk_client(&self, akid: &str) -> aws_sdk_kms::Client {
        sdk_client(&self.endpoint(), akid, SECRET)
    }
}
