//! `envelope bench kms`: signed AWS KMS Encrypt and Decrypt requests per second against
//! `envelope kms serve`, and against moto_server in the same run for comparison. Every request
//! is signed with SigV4 (aws-sigv4, as the AWS SDKs do) at send time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::{BenchError, Context, Result, bail};
use crate::{Spawned, free_port, percentile_ms};

/// What to measure.
#[derive(Debug, Clone)]
pub struct KmsOptions {
    /// The `envelope` executable (runs `kms serve`).
    pub exe: PathBuf,
    /// In-flight requests.
    pub concurrency: usize,
    /// Measured time per (server, operation).
    pub duration: Duration,
    /// Warm-up time per (server, operation).
    pub warmup: Duration,
    /// moto_server executable to compare with; `None` to skip.
    pub moto: Option<String>,
}

pub(crate) const AKID: &str = "AKIAENVELOPEBENCH001";
pub(crate) const SECRET: &str = "bench-secret-0123456789abcdefghijklmnopq";
pub(crate) const REGION: &str = "us-east-1";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn anyhow(m: String) -> BenchError {
    BenchError::Failed(m)
}
pub(crate) async fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("server on port {port} did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) fn start_envelope(exe: &Path) -> Result<(u16, Spawned)> {
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("credentials.yaml");
    std::fs::write(
        &creds,
        format!(
            "- access_key_id: {AKID}\n  secret_access_key: '{SECRET}'\n  principal: arn:aws:iam::111122223333:user/bench\n"
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))?;
    let port = free_port()?;
    let child = std::process::Command::new(exe)
        .args([
            "kms",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-addr",
            "off",
            "--log-level",
            "warn",
            "--credentials",
        ])
        .arg(&creds)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start envelope kms serve")?;
    Ok((port, Spawned { child, _dir: Some(dir) }))
}

fn start_moto(bin: &str) -> Result<(u16, Spawned)> {
    let port = free_port()?;
    let child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {bin} (pip install 'moto[server]')"))?;
    Ok((port, Spawned { child, _dir: None }))
}

fn signed(port: u16, target: &str, body: Bytes) -> Result<http::Request<Full<Bytes>>> {
    let host = format!("127.0.0.1:{port}");
    let target = format!("TrentService.{target}");
    let headers =
        [("host", host.as_str()), ("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
    let identity = aws_credential_types::Credentials::new(AKID, SECRET, None, None, "bench").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| anyhow(format!("signing params: {e}")))?
        .into();
    let uri = format!("http://{host}/");
    let req = SignableRequest::new("POST", uri.clone(), headers.iter().copied(), SignableBody::Bytes(&body))
        .map_err(|e| anyhow(format!("sign: {e}")))?;
    let (instructions, _) = sign(req, &params).map_err(|e| anyhow(format!("sign: {e}")))?.into_parts();
    let mut r = http::Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    let mut r = r.body(Full::new(body))?;
    instructions.apply_to_request_http1x(&mut r);
    Ok(r)
}

pub(crate) async fn call(client: &HttpClient, port: u16, target: &str, body: Bytes) -> Result<serde_json::Value> {
    let resp = client.request(signed(port, target, body)?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| BenchError::Other(Box::new(e)))?.to_bytes();
    if !status.is_success() {
        bail!("{target}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// One (server, operation) measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// `envelope` or `moto`.
    pub server: String,
    /// `Encrypt` or `Decrypt`.
    pub operation: &'static str,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Successful requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
}

async fn load(
    client: &HttpClient,
    port: u16,
    target: &'static str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
) -> (Vec<u32>, u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, stop, body) = (client.clone(), stop.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::with_capacity(1 << 14), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match call(&client, port, target, body.clone()).await {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    (all, errors, start.elapsed())
}

async fn bench_server(name: &str, port: u16, o: &KmsOptions) -> Result<Vec<Cell>> {
    wait_port(port).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(o.concurrency * 2).build(connector);
    // Servers may take a moment after binding; retry the first call.
    let mut key = None;
    for _ in 0..100 {
        match call(&client, port, "CreateKey", Bytes::from_static(b"{}")).await {
            Ok(v) => {
                key = v["KeyMetadata"]["KeyId"].as_str().map(str::to_string);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let key = key.ok_or_else(|| anyhow(format!("{name}: CreateKey failed")))?;
    let plaintext = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let enc_body = Bytes::from(serde_json::to_vec(&serde_json::json!({"KeyId": key, "Plaintext": plaintext}))?);
    let ct = call(&client, port, "Encrypt", enc_body.clone()).await?;
    let blob = ct["CiphertextBlob"].as_str().ok_or_else(|| anyhow(format!("{name}: no CiphertextBlob")))?.to_string();
    let dec_body = Bytes::from(serde_json::to_vec(&serde_json::json!({"CiphertextBlob": blob}))?);
    let back = call(&client, port, "Decrypt", dec_body.clone()).await?;
    if back["Plaintext"].as_str() != Some(plaintext.as_str()) {
        bail!("{name}: Decrypt did not return the plaintext");
    }
    let mut cells = Vec::new();
    for (op, body) in [("Encrypt", enc_body), ("Decrypt", dec_body)] {
        let _ = load(&client, port, op, body.clone(), o.concurrency, o.warmup).await;
        let (mut lat, errors, el) = load(&client, port, op, body, o.concurrency, o.duration).await;
        lat.sort_unstable();
        let pct = |p: f64| percentile_ms(&lat, p);
        cells.push(Cell {
            server: name.to_string(),
            operation: op,
            requests: lat.len() as u64,
            errors,
            rps: lat.len() as f64 / el.as_secs_f64(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        });
    }
    Ok(cells)
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct KmsReport {
    /// In-flight requests.
    pub concurrency: usize,
    /// The measurements: envelope's, then moto's.
    pub cells: Vec<Cell>,
}

impl KmsReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "concurrency": self.concurrency, "cells": self.cells })
    }

    /// The report as a Markdown table and envelope/moto ratios, newline-terminated.
    pub fn to_table(&self) -> String {
        let mut s =
            String::from("| server | operation | concurrency | requests | errors | req/s | p50 ms | p99 ms |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.cells {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.3} |\n",
                c.server, c.operation, self.concurrency, c.requests, c.errors, c.rps, c.p50_ms, c.p99_ms
            ));
        }
        for op in ["Encrypt", "Decrypt"] {
            let e = self.cells.iter().find(|c| c.server == "envelope" && c.operation == op);
            let m = self.cells.iter().find(|c| c.server == "moto" && c.operation == op);
            if let (Some(e), Some(m)) = (e, m)
                && m.rps > 0.0
            {
                s.push_str(&format!("\n{op}: envelope / moto = {:.1}×\n", e.rps / m.rps));
            }
        }
        s
    }
}

/// Runs the benchmark.
pub async fn run(o: &KmsOptions) -> Result<KmsReport> {
    let mut cells = Vec::new();
    {
        let (port, _server) = start_envelope(&o.exe)?;
        cells.extend(bench_server("envelope", port, o).await?);
    }
    if let Some(moto) = &o.moto {
        let (port, _server) = start_moto(moto)?;
        cells.extend(bench_server("moto", port, o).await?);
    }
    Ok(KmsReport { concurrency: o.concurrency, cells })
}
