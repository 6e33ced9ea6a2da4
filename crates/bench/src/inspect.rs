//! `envelope bench inspect`: fills etcd with KMS v2 Secrets (their seed wrapped by a plugin
//! started for the purpose) and times `envelope inspect -o summary` over them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use envelope_inspect::writer;
use envelope_proto::v2::EncryptRequest;
use envelope_proto::v2::key_management_service_client::KeyManagementServiceClient;

use crate::error::{BoxError, Result, bail};
use crate::free_port;
use crate::plugin::{connect, start_plugin, wait_ready};

/// The etcd operations the benchmark needs; the caller provides the client.
pub trait EtcdKv: Sized + Clone + Send + 'static {
    /// Connects to `endpoint` (a URL).
    fn connect(endpoint: &str) -> impl Future<Output = Result<Self, BoxError>> + Send;
    /// The number of keys under `prefix`.
    fn count(&mut self, prefix: &[u8]) -> impl Future<Output = Result<u64, BoxError>> + Send;
    /// Writes `value` at `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// The `envelope` executable (runs `plugin` to wrap the seed and `inspect` to time).
    pub exe: PathBuf,
    /// etcd endpoint to fill and inspect; `None` starts a private etcd (the `etcd` binary on
    /// PATH) on loopback in a temporary directory.
    pub etcd: Option<String>,
    /// Number of Secrets to have under /registry/secrets/ (missing ones are written first).
    pub count: u64,
    /// Timed runs; the median is reported.
    pub runs: usize,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct InspectReport {
    /// Objects under /registry/secrets/.
    pub objects: u64,
    /// Each run's time in seconds, sorted ascending.
    pub runs_s: Vec<f64>,
}

impl InspectReport {
    /// The median run time in seconds.
    pub fn median_s(&self) -> f64 {
        self.runs_s[self.runs_s.len() / 2]
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let (total, median) = (self.objects, self.median_s());
        serde_json::json!({ "objects": total, "runs_s": self.runs_s, "median_s": median, "objects_per_s": total as f64 / median })
    }

    /// The report as a Markdown table, newline-terminated.
    pub fn to_table(&self) -> String {
        let (total, times, median) = (self.objects, &self.runs_s, self.median_s());
        format!(
            "| objects | runs | median s | min s | max s | objects/s |\n|---:|---:|---:|---:|---:|---:|\n\
             | {total} | {} | {median:.2} | {:.2} | {:.2} | {:.0} |\n",
            times.len(),
            times[0],
            times[times.len() - 1],
            total as f64 / median
        )
    }
}

/// Runs the benchmark; `progress` gets one line per step (Secrets written, each run's time).
pub async fn run<E: EtcdKv>(o: &InspectOptions, progress: &mut (dyn FnMut(&str) + Send)) -> Result<InspectReport> {
    let (endpoint, _etcd) = match &o.etcd {
        Some(e) => (e.clone(), None),
        None => {
            let (u, g) = spawn_etcd()?;
            (u, Some(g))
        }
    };
    let mut etcd = E::connect(&endpoint).await?;
    let have = etcd.count(b"/registry/secrets/").await?;
    if have < o.count {
        // A plugin wraps one seed, as kube-apiserver does; every Secret is then written with it.
        let (socket, _plugin) = start_plugin(&o.exe)?;
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
            let (mut etcd, next, env, seed, count) = (etcd.clone(), next.clone(), env.clone(), seed.clone(), o.count);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<_, crate::BenchError>(());
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
        progress(&format!("wrote {} Secrets in {:.1} s", o.count - have, t.elapsed().as_secs_f64()));
    }
    let total = etcd.count(b"/registry/secrets/").await?;
    let mut times = Vec::new();
    for run in 0..o.runs.max(1) {
        let t = Instant::now();
        let out = std::process::Command::new(&o.exe)
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
        progress(&format!("run {}: {:.2} s", run + 1, el.as_secs_f64()));
        times.push(el.as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(InspectReport { objects: total, runs_s: times })
}

/// A private etcd on loopback: its client URL and the guard that stops it.
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
        .spawn();
    let child =
        crate::error::Context::context(child, "cannot start etcd (is it installed? apt-get install etcd-server)")?;
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

/// etcd is killed (not asked to stop) on drop: its data is thrown away anyway.
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
