//! `envelope bench plugin`: a load driver for the KMS plugin over its Unix socket.
//!
//! Runs Encrypt and Decrypt (KMS v2) at each requested concurrency for a fixed time, and
//! reports throughput, p50 and p99 latency, and the plugin's resident memory afterwards. By
//! default it starts its own plugin (this binary, in a temporary data directory) so the run is
//! self-contained and repeatable.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient;
use envelope_proto::v2::{DecryptRequest, EncryptRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

/// Options of `envelope bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Benchmark KMS v2 Encrypt and Decrypt RPCs of a plugin.
    Plugin(PluginBench),
}

/// Options of `envelope bench plugin`.
#[derive(Debug, Args)]
pub struct PluginBench {
    /// Socket of a running plugin. Without it, a plugin is started for the run.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// PID of the running plugin given with --socket, to report its memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Concurrency levels (in-flight requests), comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Measured time per (method, concurrency) cell.
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Warm-up time per cell (not measured).
    #[arg(long, default_value = "1s")]
    pub warmup: String,
    /// HTTP/2 connections the load is spread over (kube-apiserver uses one per provider).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Methods to measure, comma-separated: encrypt, decrypt.
    #[arg(long, default_value = "encrypt,decrypt", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Print results as JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> ExitCode {
    let BenchTarget::Plugin(b) = args.target;
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("envelope bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench_plugin(b)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelope bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Spawned {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

async fn connect(socket: &str) -> Result<Channel> {
    Endpoint::from_shared(format!("unix://{socket}"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {socket}"))
}

async fn wait_ready(socket: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = connect(socket).await {
            if KeyManagementServiceClient::new(ch).status(StatusRequest {}).await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("plugin on {socket} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident set size of a process, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[derive(serde::Serialize)]
struct Cell {
    method: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn bench_plugin(b: PluginBench) -> Result<()> {
    let duration = crate::config::parse_duration("duration", &b.duration)?;
    let warmup = humantime::parse_duration(&b.warmup).context("warmup")?;
    let (socket, pid, _spawned) = match &b.socket {
        Some(s) => (s.clone(), b.pid, None),
        None => {
            let dir = tempfile::tempdir()?;
            let socket = dir.path().join("kms.sock").to_string_lossy().into_owned();
            let exe = std::env::current_exe()?;
            let child = std::process::Command::new(exe)
                .args(["plugin", "--socket", &socket, "--http-addr", "off", "--log-level", "warn", "--data-dir"])
                .arg(dir.path().join("data"))
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start the plugin")?;
            let pid = child.id();
            (socket, Some(pid), Some(Spawned { child, _dir: dir }))
        }
    };
    wait_ready(&socket).await?;
    let mut channels = Vec::new();
    for _ in 0..b.connections.max(1) {
        channels.push(KeyManagementServiceClient::new(connect(&socket).await?));
    }
    let mut probe = channels[0].clone();
    let enc = probe
        .encrypt(EncryptRequest { plaintext: vec![7u8; 32], uid: "bench".into() })
        .await
        .context("encrypt")?
        .into_inner();
    let decrypt_req = DecryptRequest { ciphertext: enc.ciphertext, uid: "bench".into(), key_id: enc.key_id, annotations: enc.annotations };

    let mut cells = Vec::new();
    for &c in &b.concurrency {
        for m in &b.methods {
            let method = m.as_str();
            if method != "encrypt" && method != "decrypt" {
                bail!("unknown method {method:?} (encrypt, decrypt)");
            }
            let _ = run_cell(&channels, method, c, warmup, &decrypt_req).await;
            let (lat, errors, elapsed) = run_cell(&channels, method, c, duration, &decrypt_req).await;
            let mut lat = lat;
            lat.sort_unstable();
            let pct = |p: f64| -> f64 {
                if lat.is_empty() {
                    return 0.0;
                }
                let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
                lat[i] as f64 / 1000.0
            };
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
    let rss = pid.and_then(rss_kib);
    if b.json {
        println!("{}", serde_json::json!({ "cells": cells, "plugin_rss_kib": rss, "connections": b.connections, "duration_s": duration.as_secs_f64() }));
    } else {
        println!("| method | concurrency | requests | errors | RPC/s | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for c in &cells {
            println!("| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} |", c.method, c.concurrency, c.requests, c.errors, c.rps, c.p50_ms, c.p99_ms);
        }
        match rss {
            Some(k) => println!("\nplugin RSS after the run: {:.1} MiB", k as f64 / 1024.0),
            None => println!("\nplugin RSS: unknown (pass --pid)"),
        }
    }
    Ok(())
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

