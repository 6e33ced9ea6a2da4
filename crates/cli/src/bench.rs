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
    /// Benchmark `envelope inspect` over many Secrets in etcd.
    Inspect(InspectBench),
    /// Benchmark signed Encrypt/Decrypt against `envelope kms serve` (and moto_server side by side).
    Kms(KmsBench),
}

/// Options of `envelope bench kms`.
#[derive(Debug, Args)]
pub struct KmsBench {
    /// In-flight requests.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured time per (server, operation).
    #[arg(long, default_value = "5s")]
    pub duration: String,
    /// Warm-up time per (server, operation).
    #[arg(long, default_value = "1s")]
    pub warmup: String,
    /// moto_server executable to compare with (pip install 'moto[server]'); "off" to skip.
    #[arg(long, default_value = "moto_server")]
    pub moto: String,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `envelope bench inspect`.
#[derive(Debug, Args)]
pub struct InspectBench {
    /// etcd endpoint to fill and inspect (needs --allow-writes: it writes test Secrets); omit
    /// with --spawn-etcd.
    #[arg(long, value_name = "URL", requires = "allow_writes")]
    pub etcd: Option<String>,
    /// Allow writing up to --count test Secrets under /registry/secrets/ of the --etcd given.
    #[arg(long)]
    pub allow_writes: bool,
    /// Start a private etcd (the `etcd` binary on PATH) on loopback in a temporary directory.
    #[arg(long)]
    pub spawn_etcd: bool,
    /// Number of Secrets to have under /registry/secrets/ (missing ones are written first,
    /// as KMS v2 values whose seed is wrapped by a plugin this command starts).
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Timed runs of `envelope inspect -o summary`; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
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
    let rt = match crate::runtime::build(crate::runtime::Flavor::MultiThread) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("envelope bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = match args.target {
        BenchTarget::Plugin(b) => rt.block_on(bench_plugin(b)),
        BenchTarget::Inspect(b) => rt.block_on(bench_inspect(b)),
        BenchTarget::Kms(b) => rt.block_on(crate::bench_kms::run(b)),
    };
    match r {
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
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
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

/// The `p` quantile (nearest rank) of latencies in microseconds, sorted ascending, in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
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
    let decrypt_req = DecryptRequest {
        ciphertext: enc.ciphertext,
        uid: "bench".into(),
        key_id: enc.key_id,
        annotations: enc.annotations,
    };

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
    let rss = pid.and_then(rss_kib);
    if b.json {
        println!(
            "{}",
            serde_json::json!({ "cells": cells, "plugin_rss_kib": rss, "connections": b.connections, "duration_s": duration.as_secs_f64() })
        );
    } else {
        println!("| method | concurrency | requests | errors | RPC/s | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for c in &cells {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.3} | {:.3} |",
                c.method, c.concurrency, c.requests, c.errors, c.rps, c.p50_ms, c.p99_ms
            );
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

struct SpawnedEtcd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_etcd() -> Result<(String, SpawnedEtcd)> {
    let dir = tempfile::tempdir()?;
    let (cp, pp) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{cp}");
    let child = std::process::Command::new("etcd")
        .args(["--name", "bench", "--log-level", "error", "--quota-backend-bytes", "4294967296"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{pp}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{pp}"),
        ])
        .args(["--initial-cluster", &format!("bench=http://127.0.0.1:{pp}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start etcd (is it installed? apt-get install etcd-server)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", cp)).is_err() {
        if Instant::now() > deadline {
            bail!("etcd did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok((url, SpawnedEtcd { child, _dir: dir }))
}

async fn bench_inspect(b: InspectBench) -> Result<()> {
    use envelope_inspect::writer;
    let (endpoint, _etcd) = match (&b.etcd, b.spawn_etcd) {
        (Some(e), false) => (e.clone(), None),
        (None, true) => {
            let (u, g) = spawn_etcd()?;
            (u, Some(g))
        }
        _ => bail!("give exactly one of --etcd URL or --spawn-etcd"),
    };
    let opts = crate::etcd::EtcdOptions { endpoints: vec![endpoint.clone()], ..Default::default() };
    let mut etcd = crate::etcd::Etcd::connect(&opts).await?;
    let have = etcd.count(b"/registry/secrets/").await?;
    if have < b.count {
        // A plugin wraps one seed, as kube-apiserver does; every Secret is then written with it.
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("kms.sock").to_string_lossy().into_owned();
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["plugin", "--socket", &socket, "--http-addr", "off", "--log-level", "warn", "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .spawn()?;
        let _plugin = Spawned { child, _dir: dir };
        wait_ready(&socket).await?;
        let mut c = KeyManagementServiceClient::new(connect(&socket).await?);
        let seed = writer::random_seed()?;
        let w = c.encrypt(EncryptRequest { plaintext: seed.to_vec(), uid: "bench-fill".into() }).await?.into_inner();
        let env = Arc::new(writer::KmsV2Envelope {
            provider_name: "envelope".into(),
            key_id: w.key_id,
            encrypted_dek_source: w.ciphertext,
            annotations: w.annotations.into_iter().collect(),
        });
        let seed = Arc::new(seed);
        let t = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(have));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (mut etcd, next, env, seed, count) = (etcd.clone(), next.clone(), env.clone(), seed.clone(), b.count);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let (ns, name) = (format!("ns-{:03}", i % 500), format!("secret-{i:07}"));
                    let key = format!("/registry/secrets/{ns}/{name}");
                    let meta = writer::new_object_meta(&ns, &name, &format!("uid-{i}"), 1_700_000_000);
                    let data =
                        std::collections::BTreeMap::from([("password".to_string(), format!("pw-{i}").into_bytes())]);
                    let obj = writer::encode_secret(&writer::new_secret(meta, data, "Opaque"));
                    let value = writer::kms_v2_seed(key.as_bytes(), &obj, &seed[..], &env)?;
                    etcd.put(key.as_bytes(), &value).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        eprintln!("wrote {} Secrets in {:.1} s", b.count - have, t.elapsed().as_secs_f64());
    }
    let total = etcd.count(b"/registry/secrets/").await?;
    let mut times = Vec::new();
    for run in 0..b.runs.max(1) {
        let t = Instant::now();
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["inspect", "-o", "summary", "--progress", "never", "--etcd", &endpoint])
            .output()?;
        let el = t.elapsed();
        if !out.status.success() {
            bail!("inspect failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains(&format!("Summary: {total} object(s)")) {
            bail!("inspect did not see all {total} objects:\n{text}");
        }
        eprintln!("run {}: {:.2} s", run + 1, el.as_secs_f64());
        times.push(el.as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    if b.json {
        println!(
            "{}",
            serde_json::json!({ "objects": total, "runs_s": times, "median_s": median, "objects_per_s": total as f64 / median })
        );
    } else {
        println!("| objects | runs | median s | min s | max s | objects/s |");
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {total} | {} | {median:.2} | {:.2} | {:.2} | {:.0} |",
            times.len(),
            times[0],
            times[times.len() - 1],
            total as f64 / median
        );
    }
    Ok(())
}
