//! `envelope plugin`: wires configuration, logging, signals, the key store, the socket and the
//! HTTP server together, then hands over to the plugin library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use envelope_keystore::{KeyRef, KeyStore};
use envelope_plugin::{EmbeddedBackend, Metrics, Plugin, PluginConfig, SocketSpec};
use tokio::sync::watch;

use crate::EXIT_CONFIG;
use crate::cli::PluginArgs;
use crate::config::{PluginSettings, resolve};

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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envelope: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "plugin stopped with an error");
            eprintln!("envelope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, as text or one JSON object per line.
pub fn init_logging(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
            let backend = embedded_backend(&s).await?;
            serve_plugin(Plugin::new(backend, config, metrics), &s).await
        }
        #[cfg(feature = "aws")]
        crate::config::Backend::Aws { region, endpoint, context, max_in_flight } => {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(r) = region {
                loader = loader.region(aws_config::Region::new(r.clone()));
            }
            if let Some(e) = endpoint {
                loader = loader.endpoint_url(e.clone());
            }
            let client = aws_sdk_kms::Client::new(&loader.load().await);
            let backend = envelope_plugin_aws::AwsBackend::new(client, s.key.clone(), context.clone(), *max_in_flight)
                .map_err(|e| anyhow::anyhow!("aws backend: {e}"))?
                .with_metrics(metrics.clone());
            tracing::info!(key = %s.key, endpoint = ?endpoint, region = ?region, "using the aws backend");
            serve_plugin(Plugin::new(backend, config, metrics), &s).await
        }
        #[cfg(not(feature = "aws"))]
        crate::config::Backend::Aws { .. } => anyhow::bail!("this build has no aws backend"),
    }
}

/// Opens the embedded key store and makes sure the key exists (created on first start).
async fn embedded_backend(s: &PluginSettings) -> Result<EmbeddedBackend> {
    let data_dir = s.data_dir.clone();
    let key_text = s.key.clone();
    let create = s.create_key;
    let (store, created) = tokio::task::spawn_blocking(move || -> Result<(Arc<KeyStore>, bool)> {
        let store = KeyStore::open(&data_dir).with_context(|| format!("cannot open the key store in {}", data_dir.display()))?;
        let key = KeyRef::parse(&key_text)?;
        let created = match store.describe(&key) {
            Ok(_) => false,
            Err(envelope_keystore::Error::NotFound(_)) if create => {
                let alias = match &key {
                    KeyRef::Alias(a) => a.clone(),
                    KeyRef::Id(_) => anyhow::bail!("key id {key} does not exist (only aliases are created automatically)"),
                };
                store.create_key(Some(&alias), "created by envelope plugin on first start")?;
                true
            }
            Err(e) => return Err(e).context(format!("key {key}")),
        };
        Ok((Arc::new(store), created))
    })
    .await??;
    let key = KeyRef::parse(&s.key)?;
    if created {
        tracing::info!(key = %key, data_dir = %s.data_dir.display(), "created a new key on first start");
    }
    Ok(EmbeddedBackend::new(store, key))
}

/// Serves `plugin` on the configured socket (and HTTP port) until SIGTERM/SIGINT.
async fn serve_plugin<B: envelope_plugin::KeyBackend>(plugin: Plugin<B>, s: &PluginSettings) -> Result<()> {
    let key = s.key.clone();
    let h = plugin.probe_now().await;
    if let Some(e) = &h.error {
        tracing::warn!(error = %e, "the key is not usable yet; serving anyway and reporting unhealthy");
    }

    let spec = SocketSpec { path: s.socket.clone(), mode: s.socket_mode, group: s.socket_group.clone() };
    let bound = envelope_plugin::socket::bind(&spec)?;
    let listener = tokio::net::UnixListener::from_std(bound.listener.try_clone().context("socket")?).context("socket")?;
    let http = match s.http_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for HTTP"))?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let health_task = plugin.spawn_health_loop(stop_rx.clone());
    if let Some(l) = http {
        let p = plugin.clone();
        let addr = l.local_addr().ok();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = p.serve_http(l, async move { let _ = rx.wait_for(|v| *v).await; }).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        tracing::info!(addr = ?addr, "health and metrics on http://{}/livez, /readyz, /metrics", addr.map(|a| a.to_string()).unwrap_or_default());
    }
    print_banner(s, &spec, h.key_id.as_deref());
    tracing::info!(socket = %s.socket, key = %key, key_id = ?h.key_id, "serving KMS v2 and v1beta1");

    let mut rx = stop_rx.clone();
    let serve = plugin.serve(listener, async move {
        let _ = rx.wait_for(|v| *v).await;
    });
    let signals = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
        let _ = stop_tx.send(true);
        Ok::<_, std::io::Error>(stop_tx)
    };
    let (served, _tx) = tokio::join!(serve, signals);
    health_task.abort();
    bound.cleanup();
    served.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn print_banner(s: &PluginSettings, spec: &SocketSpec, key_id: Option<&str>) {
    println!("envelope plugin listening on {}", s.socket);
    let store = match &s.backend {
        crate::config::Backend::Embedded => format!("embedded key store {}", s.data_dir.display()),
        crate::config::Backend::Aws { endpoint, .. } => format!("aws KMS {}", endpoint.as_deref().unwrap_or("(default endpoint)")),
    };
    println!("  backend: {store}   key: {}   key_id: {}", s.key, key_id.unwrap_or("(not available yet)"));
    println!();
    println!("Give kube-apiserver this EncryptionConfiguration (--encryption-provider-config):");
    println!();
    println!("apiVersion: apiserver.config.k8s.io/v1");
    println!("kind: EncryptionConfiguration");
    println!("resources:");
    println!("  - resources:");
    println!("      - secrets");
    println!("    providers:");
    println!("      - kms:");
    println!("          apiVersion: v2");
    println!("          name: {}", s.provider_name);
    println!("          endpoint: {}", spec.endpoint());
    println!("          timeout: 3s");
    println!("      - identity: {{}}");
    println!();
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
