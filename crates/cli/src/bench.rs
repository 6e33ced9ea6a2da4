//! `envelope bench …`: the options, then the load drivers of `envelope-bench`; the reports are
//! printed here (as a Markdown table or JSON).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use envelope_bench::BoxError;

use crate::etcd::{Etcd, EtcdOptions};

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
    /// Remote KMS calls, Decrypt latency and CPU of reads after a plugin restart, with the local
    /// KEK layer and without (`envelope plugin --backend aws` against `envelope kms serve`).
    LocalKek(LocalKekBench),
}

/// Options of `envelope bench local-kek`.
#[derive(Debug, Args)]
pub struct LocalKekBench {
    /// KMS v1 values written (each with its own DEK), then decrypted after a plugin restart.
    #[arg(long, default_value_t = 10_000)]
    pub values: usize,
    /// Decrypt RPCs in flight while reading.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
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
        BenchTarget::Kms(b) => rt.block_on(bench_kms(b)),
        BenchTarget::LocalKek(b) => rt.block_on(bench_local_kek(b)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelope bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The measured time and the warm-up.
fn durations(duration: &str, warmup: &str) -> Result<(std::time::Duration, std::time::Duration)> {
    let duration = crate::config::parse_duration("duration", duration)?;
    let warmup = humantime::parse_duration(warmup).context("warmup")?;
    Ok((duration, warmup))
}

async fn bench_plugin(b: PluginBench) -> Result<()> {
    let (duration, warmup) = durations(&b.duration, &b.warmup)?;
    let options = envelope_bench::plugin::PluginOptions {
        exe: std::env::current_exe()?,
        socket: b.socket,
        pid: b.pid,
        concurrency: b.concurrency,
        duration,
        warmup,
        connections: b.connections,
        methods: b.methods,
    };
    let report = envelope_bench::plugin::run(&options).await?;
    if b.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

async fn bench_inspect(b: InspectBench) -> Result<()> {
    let etcd = match (b.etcd, b.spawn_etcd) {
        (Some(e), false) => Some(e),
        (None, true) => None,
        _ => anyhow::bail!("give exactly one of --etcd URL or --spawn-etcd"),
    };
    let options =
        envelope_bench::inspect::InspectOptions { exe: std::env::current_exe()?, etcd, count: b.count, runs: b.runs };
    let report = envelope_bench::inspect::run::<Etcd>(&options, &mut |line| eprintln!("{line}")).await?;
    if b.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

async fn bench_kms(b: KmsBench) -> Result<()> {
    let (duration, warmup) = durations(&b.duration, &b.warmup)?;
    let options = envelope_bench::kms::KmsOptions {
        exe: std::env::current_exe()?,
        concurrency: b.concurrency,
        duration,
        warmup,
        moto: Some(b.moto).filter(|m| m != "off"),
    };
    let report = envelope_bench::kms::run(&options).await?;
    if b.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

async fn bench_local_kek(b: LocalKekBench) -> Result<()> {
    let options = envelope_bench::local_kek::LocalKekOptions {
        exe: std::env::current_exe()?,
        values: b.values,
        concurrency: b.concurrency,
    };
    let report = envelope_bench::local_kek::run(&options).await?;
    if b.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// `bench inspect` fills and counts through the inspector's etcd client.
impl envelope_bench::inspect::EtcdKv for Etcd {
    async fn connect(endpoint: &str) -> Result<Self, BoxError> {
        let opts = EtcdOptions { endpoints: vec![endpoint.to_owned()], ..Default::default() };
        Ok(Etcd::connect(&opts).await?)
    }

    async fn count(&mut self, prefix: &[u8]) -> Result<u64, BoxError> {
        Ok(Etcd::count(self, prefix).await?)
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BoxError> {
        Ok(Etcd::put(self, key, value).await?)
    }
}
