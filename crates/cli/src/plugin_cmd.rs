//! `envelope plugin`: wires configuration, logging, signals, the key store, the socket and the
//! HTTP server together, then hands over to the plugin library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use envelope_keystore::{KeyRef, KeyStore};
use envelope_plugin::{EmbeddedBackend, Instance, InstanceMetrics, Metrics, Plugin, PluginConfig, SocketSpec};
use tokio::sync::watch;

use crate::EXIT_CONFIG;
use crate::cli::PluginArgs;
use crate::config::{InstanceSettings, PluginSettings, resolve};

pub fn run(args: PluginArgs) -> ExitCode {
    let settings = match resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("envelope: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(settings.log_json, &settings.log_level);
    harden_process();
    // One thread serves every socket: an RPC's work is microseconds of CPU, and on one thread
    // the tasks of a connection never wake each other across cores, its responses leave in one
    // write, and nothing contends (docs/benchmarks.md). Blocking work (SQLite) still goes to
    // the blocking pool.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envelope: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<StartupConfigError>().is_some() => {
            eprintln!("envelope: invalid configuration: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "plugin stopped with an error");
            eprintln!("envelope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration mistake found only when the backend is set up (e.g. no AWS region or no
/// credentials anywhere in the AWS chain): exit 64 like the flags' own checks.
#[derive(Debug)]
struct StartupConfigError(String);

impl std::fmt::Display for StartupConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupConfigError {}

/// Logs go to stderr, as text or one JSON object per line.
pub fn init_logging(json: bool, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// No core dumps and no ptrace by other processes of the same user: key material lives in memory.
pub fn harden_process() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = nix::sys::prctl::set_dumpable(false);
}

async fn serve(s: PluginSettings) -> Result<()> {
    let config = PluginConfig {
        status_version: s.status_version.clone(),
        health_interval: s.health_interval,
        request_timeout: s.request_timeout,
        shutdown_grace: s.shutdown_grace,
        ..PluginConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    match &s.backend {
        crate::config::Backend::Embedded => {
            let backends = embedded_backends(&s).await?;
            let plugins = backends
                .into_iter()
                .zip(&s.instances)
                .map(|(b, i)| Plugin::new(b, config.clone(), instance_metrics(&metrics, &s, i)))
                .collect();
            serve_plugins(plugins, metrics, &s).await
        }
        #[cfg(feature = "aws")]
        crate::config::Backend::Aws { region, endpoint, max_in_flight, ca_bundle, fips } => {
            use envelope_plugin_aws::ProbeMode;
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(r) = region {
                loader = loader.region(aws_config::Region::new(r.clone()));
            }
            if let Some(e) = endpoint {
                loader = loader.endpoint_url(e.clone());
            }
            if *fips {
                loader = loader.use_fips(true);
            }
            if let Some(bundle) = ca_bundle {
                use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
                let pem = bundle.pem.clone();
                let f = &bundle.path;
                let trust = TlsContext::builder()
                    // The system roots stay: credential providers (STS for web identity) use
                    // this client too.
                    .with_trust_store(TrustStore::default().with_pem_certificate(pem))
                    .build()
                    .map_err(|e| anyhow::anyhow!("ca-bundle {}: {e}", f.display()))?;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                    .tls_context(trust)
                    .build_https();
                loader = loader.http_client(http);
                tracing::info!(ca_bundle = %f.display(), "trusting the CA certificates of the bundle for the KMS endpoint");
            }
            let sdk_config = loader.load().await;
            check_aws_setup(&sdk_config).await?;
            let client = aws_sdk_kms::Client::new(&sdk_config);
            // One limit for the process: several keys never multiply the load on the KMS.
            let permits = Arc::new(tokio::sync::Semaphore::new(*max_in_flight));
            let mut plugins = Vec::new();
            for i in &s.instances {
                let m = instance_metrics(&metrics, &s, i);
                let backend = envelope_plugin_aws::AwsBackend::new(
                    client.clone(),
                    i.key.clone(),
                    i.encryption_context.clone(),
                    *max_in_flight,
                )
                .map_err(|e| anyhow::anyhow!("aws backend, key {}: {e}", i.key))?
                .with_shared_limit(permits.clone())
                .with_probe(if i.round_trip_probe { ProbeMode::RoundTrip } else { ProbeMode::DescribeKey })
                .with_metrics(m.clone());
                let endpoint = crate::config::describe_aws_endpoint(endpoint.as_deref(), |v| std::env::var(v).ok());
                let region = region.as_deref().unwrap_or("(from the AWS configuration)");
                tracing::info!(key = %i.key, socket = %i.socket, %endpoint, %region, "using the aws backend");
                plugins.push(Plugin::new(backend, config.clone(), m));
            }
            serve_plugins(plugins, metrics, &s).await
        }
        #[cfg(not(feature = "aws"))]
        crate::config::Backend::Aws { .. } => anyhow::bail!("this build has no aws backend"),
    }
}

/// The mistakes that would otherwise start a plugin that serves but can never be healthy: no
/// region, and no credentials anywhere in the standard AWS chain (which then tries the instance
/// metadata service again on every call).
#[cfg(feature = "aws")]
async fn check_aws_setup(c: &aws_config::SdkConfig) -> Result<()> {
    use aws_credential_types::provider::ProvideCredentials;
    if c.region().is_none() {
        return Err(StartupConfigError(
            "the aws backend has no region: pass --region (or region: in the config file), or set AWS_REGION".into(),
        )
        .into());
    }
    let Some(provider) = c.credentials_provider() else {
        return Err(StartupConfigError("the aws backend has no credentials provider".into()).into());
    };
    match tokio::time::timeout(std::time::Duration::from_secs(15), provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StartupConfigError(format!(
            "the aws backend found no credentials ({}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, \
             a web identity token (IRSA), or run where an instance or task role is available",
            envelope_plugin_aws::one_line(&e)
        ))
        .into()),
        Err(_) => Err(StartupConfigError(
            "the aws backend found no credentials within 15 s (the standard chain: environment, profile, web identity, \
             container and instance metadata)"
                .into(),
        )
        .into()),
    }
}

/// A single instance records unlabelled series; several carry `socket` and `key` labels.
fn instance_metrics(metrics: &Arc<Metrics>, s: &PluginSettings, i: &InstanceSettings) -> InstanceMetrics {
    if s.instances.len() == 1 {
        InstanceMetrics::from(metrics.clone())
    } else {
        metrics.instance(Instance::new(i.socket.clone(), i.key.clone()))
    }
}

/// Opens the embedded key store once and makes sure every instance's key exists (aliases are
/// created on first start unless --no-create-key).
async fn embedded_backends(s: &PluginSettings) -> Result<Vec<EmbeddedBackend>> {
    let data_dir = s.data_dir.clone();
    let keys: Vec<String> = s.instances.iter().map(|i| i.key.clone()).collect();
    let create = s.create_key;
    let (store, created) = tokio::task::spawn_blocking(move || -> Result<(Arc<KeyStore>, Vec<String>)> {
        let store = KeyStore::open(&data_dir)
            .with_context(|| format!("cannot open the key store in {}", data_dir.display()))?;
        let mut created = Vec::new();
        for key_text in &keys {
            let key = KeyRef::parse(key_text)?;
            match store.describe(&key) {
                Ok(_) => {}
                Err(envelope_keystore::Error::NotFound(_)) if create => {
                    let alias = match &key {
                        KeyRef::Alias(a) => a.clone(),
                        KeyRef::Id(_) => {
                            anyhow::bail!("key id {key} does not exist (only aliases are created automatically)")
                        }
                    };
                    // The same alias given twice is created once.
                    if !created.contains(key_text) {
                        store.create_key(Some(&alias), "created by envelope plugin on first start")?;
                        created.push(key_text.clone());
                    }
                }
                Err(e) => return Err(e).context(format!("key {key}")),
            }
        }
        Ok((Arc::new(store), created))
    })
    .await??;
    for key in &created {
        tracing::info!(key = %key, data_dir = %s.data_dir.display(), "created a new key on first start");
    }
    s.instances.iter().map(|i| Ok(EmbeddedBackend::new(store.clone(), KeyRef::parse(&i.key)?))).collect()
}

/// Serves every instance on its socket (and the shared HTTP port) until SIGTERM/SIGINT.
async fn serve_plugins<B: envelope_plugin::KeyBackend>(
    plugins: Vec<Plugin<B>>,
    metrics: Arc<Metrics>,
    s: &PluginSettings,
) -> Result<()> {
    // Installed first, so a SIGTERM from now on always ends in a clean shutdown.
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("signal handler")?;
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("signal handler")?;
    // SIGHUP (sent by log rotation and by habit) must not stop the plugin kube-apiserver relies
    // on. Logs go to stderr and key changes are picked up by the health loop: nothing to reopen.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("signal handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: nothing to reload (key changes are picked up every health interval; flags need a restart)"
            );
        }
    });
    // First probes of all instances at once (a slow KMS delays the start once, not per key).
    let probes: Vec<_> = plugins
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move { p.probe_now().await })
        })
        .collect();
    let first = async {
        let mut key_ids = Vec::new();
        for (probe, i) in probes.into_iter().zip(&s.instances) {
            let h = probe.await.context("first health probe")?;
            if let Some(e) = &h.error {
                tracing::warn!(key = %i.key, error = %e, "the key is not usable yet; serving anyway and reporting unhealthy");
            }
            key_ids.push(h.key_id.clone());
        }
        Ok::<_, anyhow::Error>(key_ids)
    };
    let key_ids = tokio::select! {
        r = first => r?,
        _ = term.recv() => {
            tracing::info!("received SIGTERM before serving; stopped");
            return Ok(());
        }
        _ = int.recv() => {
            tracing::info!("received SIGINT before serving; stopped");
            return Ok(());
        }
    };

    // Sockets are unlinked when `bound` goes out of scope: on every error path and at exit.
    let mut bound = BoundSockets(Vec::new());
    let mut listeners = Vec::new();
    let mut specs = Vec::new();
    if s.socket_mode & 0o007 != 0 {
        tracing::warn!(
            socket_mode = format!("{:04o}", s.socket_mode),
            "the socket mode is wider than 0660: every local user can ask the plugin to decrypt; use --socket-group with 0660"
        );
    }
    for i in &s.instances {
        if i.socket.starts_with('@') {
            tracing::warn!(
                socket = %i.socket,
                "an abstract socket has no file permissions: any process in this network namespace can connect to it"
            );
        }
        let spec = SocketSpec { path: i.socket.clone(), mode: s.socket_mode, group: s.socket_group.clone() };
        // Most socket errors name the socket already ("socket X is in use ..."): say it once.
        let b = envelope_plugin::socket::bind(&spec).map_err(|e| naming(&i.socket, e))?;
        let listener = b.listener.try_clone().and_then(tokio::net::UnixListener::from_std);
        bound.0.push(b);
        listeners.push(listener.with_context(|| format!("socket {}", i.socket))?);
        specs.push(spec);
    }
    let http = match s.http_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for HTTP"))?,
        ),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut health_tasks = Vec::new();
    for p in &plugins {
        health_tasks.push(p.spawn_health_loop(stop_rx.clone()));
    }
    if let Some(l) = http {
        let router = envelope_plugin::server::http_router(plugins.iter().map(Plugin::readiness).collect(), metrics);
        let addr = l.local_addr().ok();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = envelope_plugin::server::serve_router(l, router, stop).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let addr = addr.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "health and metrics on http://{addr}/livez, /readyz, /metrics");
    }
    print_banner(s, &specs, &key_ids);

    let mut servers = tokio::task::JoinSet::new();
    for ((p, listener), i) in plugins.iter().zip(listeners).zip(&s.instances) {
        tracing::info!(socket = %i.socket, key = %i.key, "serving KMS v2 and v1beta1");
        let mut rx = stop_rx.clone();
        let p = p.clone();
        let socket = i.socket.clone();
        let fut = async move {
            p.serve(listener, async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .with_context(|| format!("gRPC server on {socket} failed"))
        };
        servers.spawn(fut);
    }
    // Run until a signal; a server that fails stops the others too. Then wait for all of them
    // (at most --shutdown-grace); a second signal stops at once.
    let mut failure: Option<anyhow::Error> = None;
    loop {
        let signal = tokio::select! {
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
            done = servers.join_next() => {
                match done {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        tracing::error!(error = %format!("{e:#}"), "stopping every instance");
                        failure.get_or_insert(e);
                        let _ = stop_tx.send(true);
                    }
                    Some(Err(e)) => {
                        failure.get_or_insert(anyhow::anyhow!("server task failed: {e}"));
                        let _ = stop_tx.send(true);
                    }
                }
                None
            }
        };
        if let Some(name) = signal {
            if *stop_tx.borrow() {
                tracing::warn!("received {name} again: stopping now without waiting for in-flight requests");
                servers.abort_all();
                break;
            }
            tracing::info!("received {name}");
            let _ = stop_tx.send(true);
        }
    }
    health_tasks.iter().for_each(|t| t.abort());
    drop(bound);
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!("stopped");
    Ok(())
}

/// `e`, prefixed with `subject` unless its message names it already.
fn naming(subject: &str, e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    if e.to_string().contains(subject) {
        anyhow::Error::new(e)
    } else {
        anyhow::Error::new(e).context(format!("socket {subject}"))
    }
}

/// The instances' sockets; each is unlinked on drop if it is still ours.
struct BoundSockets(Vec<envelope_plugin::BoundSocket>);

impl Drop for BoundSockets {
    fn drop(&mut self) {
        for b in &self.0 {
            b.cleanup();
        }
    }
}

fn print_banner(s: &PluginSettings, specs: &[SocketSpec], key_ids: &[Option<String>]) {
    let store = match &s.backend {
        crate::config::Backend::Embedded => format!("embedded key store {}", s.data_dir.display()),
        crate::config::Backend::Aws { endpoint, .. } => {
            format!("aws KMS {}", crate::config::describe_aws_endpoint(endpoint.as_deref(), |v| std::env::var(v).ok()))
        }
    };
    for (i, key_id) in s.instances.iter().zip(key_ids) {
        println!("envelope plugin listening on {}", i.socket);
        println!(
            "  backend: {store}   key: {}   key_id: {}",
            i.key,
            key_id.as_deref().unwrap_or("(not available yet)")
        );
    }
    println!();
    println!("Give kube-apiserver this EncryptionConfiguration (--encryption-provider-config):");
    if specs.len() > 1 {
        println!("(the first provider encrypts; the others decrypt what they wrote: reorder to switch keys)");
    }
    println!();
    println!("apiVersion: apiserver.config.k8s.io/v1");
    println!("kind: EncryptionConfiguration");
    println!("resources:");
    println!("  - resources:");
    println!("      - secrets");
    println!("    providers:");
    for (i, spec) in s.instances.iter().zip(specs) {
        println!("      - kms:");
        println!("          apiVersion: {}", s.kms_api_version);
        println!("          name: {}", i.provider_name);
        println!("          endpoint: {}", spec.endpoint());
        if s.kms_api_version == "v1" {
            // KMS v1 caches unwrapped DEKs per provider; without it every read is a KMS call.
            println!("          cachesize: 1000");
        }
        println!("          timeout: 3s");
    }
    println!("      - identity: {{}}");
    println!();
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
