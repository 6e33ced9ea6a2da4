//! `envelope bench plugin`: a load driver for the KMS plugin over its Unix socket.
//!
//! Runs Encrypt and Decrypt (KMS v2) at each requested concurrency for a fixed time, and
//! reports throughput, p50 and p99 latency, and the plugin's resident memory afterwards. By
//! default it starts its own plugin (the `envelope` executable given, in a temporary data
//! directory) so the run is self-contained and repeatable.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient;
use envelope_proto::v2::{DecryptRequest, EncryptRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Context, Result, bail};
use crate::{Spawned, percentile_ms, rss_kib};

/// What to measure.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// The `envelope` executable, to start a plugin when no socket is given.
    pub exe: PathBuf,
    /// Socket of a running plugin. Without it, a plugin is started for the run.
    pub socket: Option<String>,
    /// PID of the running plugin given with `socket`, to report its memory.
    pub pid: Option<u32>,
    /// Concurrency levels (in-flight requests).
    pub concurrency: Vec<usize>,
    /// Measured time per (method, concurrency) cell.
    pub duration: Duration,
    /// Warm-up time per cell (not measured).
    pub warmup: Duration,
    /// HTTP/2 connections the load is spread over.
    pub connections: usize,
    /// Methods to measure: `encrypt`, `decrypt`.
    pub methods: Vec<String>,
}

/// One (method, concurrency) measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// `encrypt` or `decrypt`.
    pub method: String,
    /// In-flight requests.
    pub concurrency: usize,
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

/// The result of a run.
#[derive(Debug, Clone)]
pub struct PluginReport {
    /// The measurements, in order.
    pub cells: Vec<Cell>,
    /// The plugin's resident memory after the run, when known.
    pub plugin_rss_kib: Option<u64>,
    /// HTTP/2 connections used.
    pub connections: usize,
    /// Measured time per cell.
    pub duration: Duration,
}

impl PluginReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "cells": self.cells, "plugin_rss_kib": self.plugin_rss_kib, "connections": self.connections, "duration_s": self.duration.as_secs_f64() })
    }

    /// The report as a Markdown table and the plugin's memory, newline-terminated.
    pub fn to_table(&self) -> String {
        let mut s = String::from("| method | concurrency | requests | errors | RPC/s | p50 ms | p99 ms |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for c in &self.cells {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} |\n",
                c.method, c.concurrency, c.requests, c.errors, c.rps, c.p50_ms, c.p99_ms
            ));
        }
        match self.plugin_rss_kib {
            Some(k) => s.push_str(&format!("\nplugin RSS after the run: {:.1} MiB\n", k as f64 / 1024.0)),
            None => s.push_str("\nplugin RSS: unknown (pass --pid)\n"),
        }
        s
    }
}

/// Runs the benchmark.
pub async fn run(o: &PluginOptions) -> Result<PluginReport> {
    let (socket, pid, _spawned) = match &o.socket {
        Some(s) => (s.clone(), o.pid, None),
        None => {
            let (socket, spawned) = start_plugin(&o.exe).context("cannot start the plugin")?;
            (socket, Some(spawned.child.id()), Some(spawned))
        }
    };
    wait_ready(&socket).await?;
    let mut channels = Vec::new();
    for _ in 0..o.connections.max(1) {
        channels.push(KeyManagementServiceClient::new(connect(&socket).await?));
    }
    let mut probe = channels[0].clone();
    let enc = probe
        .encrypt(EncryptRequest { plaintext: vec![7u8; 32], uid: "bench".into() })
        .await
        .context("encrypt")?
        .into_inner();
    let decrypt_req = DecryptRequest {
        ciphertext: enc.ciphertext,
        uid: "bench".into(),
        key_id: enc.key_id,
        annotations: enc.annotations,
    };

    let mut cells = Vec::new();
    for &c in &o.concurrency {
        for m in &o.methods {
            let method = m.as_str();
            if method != "encrypt" && method != "decrypt" {
                bail!("unknown method {method:?} (encrypt, decrypt)");
            }
            let _ = run_cell(&channels, method, c, o.warmup, &decrypt_req).await;
            let (lat, errors, elapsed) = run_cell(&channels, method, c, o.duration, &decrypt_req).await;
            let mut lat = lat;
            lat.sort_unstable();
            let pct = |p: f64| percentile_ms(&lat, p);
            cells.push(Cell {
                method: method.to_string(),
                concurrency: c,
                requests: lat.len() as u64,
                errors,
                rps: lat.len() as f64 / elapsed.as_secs_f64(),
                p50_ms: pct(0.50),
                p99_ms: pct(0.99),
            });
        }
    }
    Ok(PluginReport { cells, plugin_rss_kib: pid.and_then(rss_kib), connections: o.connections, duration: o.duration })
}

/// Starts `exe plugin` on a socket in a fresh temporary directory (embedded key store there).
pub(crate) fn start_plugin(exe: &Path) -> std::io::Result<(String, Spawned)> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("kms.sock").to_string_lossy().into_owned();
    let child = std::process::Command::new(exe)
        .args(["plugin", "--socket", &socket, "--http-addr", "off", "--log-level", "warn", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .spawn()?;
    Ok((socket, Spawned { child, _dir: Some(dir) }))
}

pub(crate) async fn connect(socket: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("unix://{socket}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {socket}"))
}

pub(crate) async fn wait_ready(socket: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = connect(socket).await
            && KeyManagementServiceClient::new(ch).status(StatusRequest {}).await.is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("plugin on {socket} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_cell(
    channels: &[KeyManagementServiceClient<Channel>],
    method: &str,
    concurrency: usize,
    duration: Duration,
    decrypt_req: &DecryptRequest,
) -> (Vec<u32>, u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut client = channels[i % channels.len()].clone();
        let stop = stop.clone();
        let dreq = decrypt_req.clone();
        let encrypt = method == "encrypt";
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = if encrypt {
                    client.encrypt(EncryptRequest { plaintext: vec![1u8; 32], uid: String::new() }).await.is_ok()
                } else {
                    client.decrypt(dreq.clone()).await.is_ok()
                };
                if ok {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    (all, errors, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_documented_layout() {
        let r = PluginReport {
            cells: vec![Cell {
                method: "encrypt".into(),
                concurrency: 1,
                requests: 10,
                errors: 0,
                rps: 2.0,
                p50_ms: 0.5,
                p99_ms: 1.0,
            }],
            plugin_rss_kib: Some(2048),
            connections: 1,
            duration: Duration::from_secs(5),
        };
        assert_eq!(
            r.to_table(),
            "| method | concurrency | requests | errors | RPC/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n\
             | encrypt | 1 | 10 | 0 | 2 | 0.500 | 1.000 |\n\nplugin RSS after the run: 2.0 MiB\n"
        );
        assert_eq!(r.to_json()["duration_s"], 5.0);
    }
}
