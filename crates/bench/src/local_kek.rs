//! `envelope bench local-kek`: what the plugin's local KEK layer saves. One `envelope kms serve`
//! and, for each mode (the layer on, then `--no-local-kek`), an `envelope plugin --backend aws`
//! against it: a writer plugin wraps N KMS v1 values (each its own DEK, as kube-apiserver writes
//! them), the plugin is restarted, and a reader decrypts them all at a fixed concurrency. For the
//! read phase the report gives the remote KMS calls (from the plugin's
//! `envelope_plugin_remote_calls_total`), Decrypt RPC p50/p99, and the CPU time of the key server
//! and of the plugin; both modes run against the same key server in one run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envelope_proto::v1beta1::key_management_service_client::KeyManagementServiceClient;
use envelope_proto::v1beta1::{DecryptRequest, EncryptRequest};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{Context, Result, bail};
use crate::kms::{AKID, REGION, SECRET, call, start_envelope, wait_port};
use crate::{Spawned, free_port, percentile_ms};

/// AWS KMS list price of a request: $0.03 per 10,000.
pub const USD_PER_REQUEST: f64 = 0.03 / 10_000.0;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LocalKekOptions {
    /// The `envelope` executable (runs `kms serve` and `plugin`).
    pub exe: PathBuf,
    /// KMS v1 values written, then read after a restart.
    pub values: usize,
    /// Decrypt RPCs in flight during the read phase.
    pub concurrency: usize,
}

/// One mode's read phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mode {
    /// `local KEK` or `--no-local-kek`.
    pub mode: &'static str,
    /// Values decrypted.
    pub values: usize,
    /// Remote KMS calls the reader made while decrypting them.
    pub remote_calls: u64,
    /// Remote KMS calls the writer made while wrapping them.
    pub write_remote_calls: u64,
    /// Median Decrypt RPC latency.
    pub p50_ms: f64,
    /// 99th percentile Decrypt RPC latency.
    pub p99_ms: f64,
    /// Wall time of the read phase.
    pub read_s: f64,
    /// CPU time (user + system) of the key server during the read phase.
    pub server_cpu_s: f64,
    /// CPU time of the plugin during the read phase.
    pub plugin_cpu_s: f64,
    /// What the read phase's remote calls cost at AWS list price.
    pub read_cost_usd: f64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct LocalKekReport {
    /// The layer on, then off.
    pub modes: Vec<Mode>,
    /// Decrypt RPCs in flight.
    pub concurrency: usize,
}

impl LocalKekReport {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "modes": self.modes, "concurrency": self.concurrency })
    }

    /// The report as a Markdown table, newline-terminated.
    pub fn to_table(&self) -> String {
        let mut out = String::from(
            "| mode | values read after a restart | remote calls (read) | remote calls (write) | Decrypt p50 ms | Decrypt p99 ms | read wall s | key server CPU s | plugin CPU s | read cost at $0.03/10k |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.modes {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | ${:.4} |\n",
                m.mode,
                m.values,
                m.remote_calls,
                m.write_remote_calls,
                m.p50_ms,
                m.p99_ms,
                m.read_s,
                m.server_cpu_s,
                m.plugin_cpu_s,
                m.read_cost_usd
            ));
        }
        out.push_str(&format!("\nDecrypt RPCs in flight: {}.\n", self.concurrency));
        out
    }
}

/// Runs the benchmark.
pub async fn run(o: &LocalKekOptions) -> Result<LocalKekReport> {
    if o.values == 0 || o.concurrency == 0 {
        bail!("values and concurrency must be at least 1");
    }
    let (port, server) = start_envelope(&o.exe)?;
    wait_port(port).await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let key = call(&client, port, "CreateKey", Bytes::from_static(b"{}")).await?;
    let Some(key) = key["KeyMetadata"]["Arn"].as_str().map(str::to_owned) else {
        bail!("CreateKey returned no ARN: {key}");
    };
    let dir = tempfile::tempdir()?;
    let mut modes = Vec::new();
    for (name, layer) in [("local KEK", true), ("--no-local-kek", false)] {
        modes.push(one_mode(o, name, layer, port, &key, server.child.id(), dir.path()).await?);
    }
    Ok(LocalKekReport { modes, concurrency: o.concurrency })
}

async fn one_mode(
    o: &LocalKekOptions,
    name: &'static str,
    layer: bool,
    port: u16,
    key: &str,
    server_pid: u32,
    dir: &Path,
) -> Result<Mode> {
    let socket = dir.join(format!("{}.sock", if layer { "kek" } else { "direct" })).to_string_lossy().into_owned();

    // Write: N values, each its own DEK.
    let (writer, http) = start_plugin(&o.exe, port, key, &socket, layer)?;
    crate::plugin::wait_ready(&socket).await?;
    let before = remote_calls(http).await?;
    let mut c = KeyManagementServiceClient::new(crate::plugin::connect(&socket).await?);
    let mut values = Vec::with_capacity(o.values);
    for i in 0..o.values {
        let mut dek = [0u8; 32];
        dek[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let r = c.encrypt(EncryptRequest { version: "v1beta1".into(), plain: dek.to_vec() }).await?;
        values.push((r.into_inner().cipher, dek));
    }
    let write_remote_calls = remote_calls(http).await? - before;
    drop(c);
    drop(writer);

    // Restart: a new process has nothing cached.
    let (reader, http) = start_plugin(&o.exe, port, key, &socket, layer)?;
    crate::plugin::wait_ready(&socket).await?;
    let reader_pid = reader.child.id();
    let before = remote_calls(http).await?;
    let (server_cpu, plugin_cpu) = (cpu_seconds(server_pid)?, cpu_seconds(reader_pid)?);
    let channel = crate::plugin::connect(&socket).await?;
    let values = Arc::new(values);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..o.concurrency {
        let (mut c, values, next) = (KeyManagementServiceClient::new(channel.clone()), values.clone(), next.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((cipher, dek)) = values.get(i) else { return Ok::<_, crate::BenchError>(lat) };
                let t = Instant::now();
                let r = c.decrypt(DecryptRequest { version: "v1beta1".into(), cipher: cipher.clone() }).await?;
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if r.into_inner().plain != dek {
                    bail!("value {i} decrypted to other bytes");
                }
            }
        });
    }
    let mut lat = Vec::with_capacity(values.len());
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.map_err(|e| crate::BenchError::Failed(format!("reader task: {e}")))??);
    }
    let read = start.elapsed();
    let (server_cpu, plugin_cpu) = (cpu_seconds(server_pid)? - server_cpu, cpu_seconds(reader_pid)? - plugin_cpu);
    let remote = remote_calls(http).await? - before;
    drop(reader);
    lat.sort_unstable();
    Ok(Mode {
        mode: name,
        values: values.len(),
        remote_calls: remote,
        write_remote_calls,
        p50_ms: percentile_ms(&lat, 0.5),
        p99_ms: percentile_ms(&lat, 0.99),
        read_s: read.as_secs_f64(),
        server_cpu_s: server_cpu,
        plugin_cpu_s: plugin_cpu,
        read_cost_usd: remote as f64 * USD_PER_REQUEST,
    })
}

/// `envelope plugin --backend aws` against the key server on `port`; its HTTP port.
fn start_plugin(exe: &Path, port: u16, key: &str, socket: &str, layer: bool) -> Result<(Spawned, u16)> {
    let http = free_port()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["plugin", "--backend", "aws", "--region", REGION, "--key", key, "--socket", socket])
        .args(["--endpoint", &format!("http://127.0.0.1:{port}"), "--http-addr", &format!("127.0.0.1:{http}")])
        // One call per probe, and few probes: the counts are the reads' own.
        .args(["--health-probe", "describe-key", "--health-interval", "30s", "--log-level", "warn"])
        .env("AWS_ACCESS_KEY_ID", AKID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null());
    if !layer {
        cmd.arg("--no-local-kek");
    }
    let child = cmd.spawn().context("cannot start envelope plugin")?;
    Ok((Spawned { child, _dir: None }, http))
}

/// The plugin's `envelope_plugin_remote_calls_total`, summed over operations and outcomes.
async fn remote_calls(http: u16) -> Result<u64> {
    wait_port(http).await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://127.0.0.1:{http}/metrics").parse().context("metrics URI")?;
    let resp = client.get(uri).await?;
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.map_err(|e| crate::BenchError::Other(Box::new(e)))?.to_bytes();
    Ok(sum_metric(&String::from_utf8_lossy(&body), "envelope_plugin_remote_calls_total"))
}

/// The sum of every series of `name` in an OpenMetrics text.
fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// User + system CPU time of a process so far, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { bail!("unreadable /proc/{pid}/stat") };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat (12 and 13 after the state field), in
    // USER_HZ ticks, which Linux fixes at 100 per second for /proc.
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_every_series_of_the_name_only() {
        let text = "# TYPE envelope_plugin_remote_calls counter\n\
                    envelope_plugin_remote_calls_total{operation=\"Decrypt\",outcome=\"ok\"} 3\n\
                    envelope_plugin_remote_calls_total{operation=\"DescribeKey\",outcome=\"ok\"} 2\n\
                    envelope_plugin_remote_calls_total_other 9\n";
        assert_eq!(sum_metric(text, "envelope_plugin_remote_calls_total"), 5);
    }

    #[test]
    fn cpu_of_this_process_is_readable() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }
}
