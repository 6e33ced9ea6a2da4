//! `envelope plugin`: wires configuration, logging, signals, the key store, the socket and the
//! HTTP server together, then hands over to the plugin library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use envelope_keystore::{KeyRef, KeyStore};
use envelope_plugin::{
    EmbeddedBackend, Instance, InstanceMetrics, KekConfig, KekLayer, KeyBackend, Metrics, Plugin, PluginConfig,
    SocketSpec, supervisor,
};

use crate::EXIT_CONFIG;
use crate::cli::PluginArgs;
use crate::config::{InstanceSettings, PluginSettings, resolve};
use crate::runtime;

pub fn run(args: PluginArgs) -> ExitCode {
    let print_config = args.print_config;
    let settings = match resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("envelope: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if print_config {
        print!("{}", encryption_config(&settings, &socket_specs(&settings)));
        return ExitCode::SUCCESS;
    }
    crate::output::keep_serving();
    runtime::init_logging(settings.log_json, &settings.log_level);
    runtime::harden_process();
    // One thread serves every socket: an RPC's work is microseconds of CPU, and on one thread
    // the tasks of a connection never wake each other across cores, its responses leave in one
    // write, and nothing contends (docs/benchmarks.md). Blocking work (SQLite) still goes to
    // the blocking pool.
    let rt = match runtime::build(runtime::Flavor::CurrentThread) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envelope: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_startup_config_error(&e) => {
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
fn is_startup_config_error(e: &anyhow::Error) -> bool {
    if e.downcast_ref::<BackendConfigError>().is_some() {
        return true;
    }
    #[cfg(feature = "aws")]
    if let Some(e) = e.downcast_ref::<envelope_plugin_aws::ClientError>() {
        return e.is_config();
    }
    let _ = e;
    false
}

/// A backend that cannot be set up from its configuration (e.g. a PKCS#11 module that does not
/// load): exit 64.
#[derive(Debug)]
struct BackendConfigError(String);

impl std::fmt::Display for BackendConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendConfigError {}

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
            let options = envelope_plugin_aws::ClientOptions {
                region: region.clone(),
                endpoint: endpoint.clone(),
                fips: *fips,
                ca_bundle: ca_bundle
                    .as_ref()
                    .map(|b| envelope_plugin_aws::client::CaBundle { path: b.path.clone(), pem: b.pem.clone() }),
            };
            let client = envelope_plugin_aws::build_client(&options).await?;
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
                let endpoint =
                    envelope_plugin_aws::client::describe_endpoint(endpoint.as_deref(), |v| std::env::var(v).ok());
                let region = region.as_deref().unwrap_or("(from the AWS configuration)");
                tracing::info!(key = %i.key, socket = %i.socket, %endpoint, %region, local_kek = i.local_kek, "using the aws backend");
                plugins.push(Plugin::new(local_kek(backend, &s, i, &m)?, config.clone(), m));
            }
            serve_plugins(plugins, metrics, &s).await
        }
        #[cfg(not(feature = "aws"))]
        crate::config::Backend::Aws { .. } => anyhow::bail!("this build has no aws backend"),
        crate::config::Backend::Pkcs11 { module, token, pin_file, sessions } => {
            let mut plugins = Vec::new();
            for i in &s.instances {
                let m = instance_metrics(&metrics, &s, i);
                let c = envelope_plugin_pkcs11::Pkcs11Config {
                    module: module.clone(),
                    token: token.clone(),
                    pin_file: pin_file.clone(),
                    key_label: i.key.clone(),
                    sessions: *sessions,
                };
                let backend = envelope_plugin_pkcs11::Pkcs11Backend::new(&c)
                    .map_err(|e| match e {
                        envelope_plugin::PluginError::InvalidRequest(m) => {
                            anyhow::Error::new(BackendConfigError(format!("pkcs11 backend, key {}: {m}", i.key)))
                        }
                        other => anyhow::anyhow!("pkcs11 backend, key {}: {other}", i.key),
                    })?
                    .with_metrics(m.clone());
                tracing::info!(key = %i.key, socket = %i.socket, module = %module.display(), %token, sessions, local_kek = i.local_kek, "using the pkcs11 backend");
                plugins.push(Plugin::new(local_kek(backend, &s, i, &m)?, config.clone(), m));
            }
            serve_plugins(plugins, metrics, &s).await
        }
    }
}

/// A remote backend behind the local KEK layer. With the layer off for this instance, writes go
/// to the backend directly and what was written through a local KEK stays readable.
fn local_kek<B: KeyBackend>(
    backend: B,
    s: &PluginSettings,
    i: &InstanceSettings,
    m: &InstanceMetrics,
) -> Result<KekLayer<B>> {
    let config = KekConfig { enabled: i.local_kek, ..s.local_kek.clone() };
    Ok(KekLayer::new(backend, config)
        .map_err(|e| anyhow::anyhow!("local KEK, key {}: {e}", i.key))?
        .with_metrics(m.clone()))
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
    let root_key = s.root_key.clone();
    // On a shared store a missed change notification costs at most one health interval (the
    // health loop refreshes too).
    let options = envelope_keystore::StoreOptions {
        location: s.store.clone(),
        create: true,
        refresh_interval: s.health_interval,
    };
    let (store, created) = tokio::task::spawn_blocking(move || -> Result<(Arc<KeyStore>, Vec<String>)> {
        let root = crate::reseal::parse_root(&root_key)?;
        let store = KeyStore::open_with_options(&data_dir, &root, &options).with_context(|| {
            format!("cannot open the key store ({}, root key in {})", options.location, data_dir.display())
        })?;
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
                        match store.create_key(Some(&alias), "created by envelope plugin on first start") {
                            Ok(_) => created.push(key_text.clone()),
                            // Another node sharing the store created it at the same moment.
                            Err(envelope_keystore::Error::AlreadyExists(_)) => store.refresh()?,
                            Err(e) => return Err(e.into()),
                        }
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

/// The EncryptionConfiguration for kube-apiserver (`--encryption-provider-config`) that serves
/// Secrets through these instances: the first provider encrypts, the others decrypt what they
/// wrote, `identity` reads what was stored before encryption was turned on.
fn encryption_config(s: &PluginSettings, specs: &[SocketSpec]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    out.push_str("apiVersion: apiserver.config.k8s.io/v1\n");
    out.push_str("kind: EncryptionConfiguration\n");
    out.push_str("resources:\n");
    out.push_str("  - resources:\n");
    out.push_str("      - secrets\n");
    out.push_str("    providers:\n");
    for (i, spec) in s.instances.iter().zip(specs) {
        out.push_str("      - kms:\n");
        let _ = writeln!(out, "          apiVersion: {}", s.kms_api_version);
        let _ = writeln!(out, "          name: {}", i.provider_name);
        let _ = writeln!(out, "          endpoint: {}", spec.endpoint());
        if s.kms_api_version == "v1" {
            // KMS v1 caches unwrapped DEKs per provider; without it every read is a KMS call.
            out.push_str("          cachesize: 1000\n");
        }
        out.push_str("          timeout: 3s\n");
    }
    out.push_str("      - identity: {}\n");
    out
}

/// The sockets the instances will serve on.
fn socket_specs(s: &PluginSettings) -> Vec<SocketSpec> {
    s.instances
        .iter()
        .map(|i| SocketSpec { path: i.socket.clone(), mode: s.socket_mode, group: s.socket_group.clone() })
        .collect()
}

/// Serves every instance on its socket (and the shared HTTP port) until SIGTERM/SIGINT.
async fn serve_plugins<B: envelope_plugin::KeyBackend>(
    plugins: Vec<Plugin<B>>,
    metrics: Arc<Metrics>,
    s: &PluginSettings,
) -> Result<()> {
    // Installed first, so a SIGTERM from now on always ends in a clean shutdown.
    let mut signals = runtime::shutdown_signals().context("signal handler")?;
    // SIGHUP (sent by log rotation and by habit) must not stop the plugin kube-apiserver relies
    // on. Logs go to stderr and key changes are picked up by the health loop: nothing to reopen.
    runtime::on_hangup(|| {
        tracing::info!(
            "SIGHUP: nothing to reload (key changes are picked up every health interval; flags need a restart)"
        )
    })
    .context("signal handler")?;
    let instances = plugins
        .into_iter()
        .zip(&s.instances)
        .zip(socket_specs(s))
        .map(|((plugin, i), socket)| supervisor::Instance { plugin, socket, key: i.key.clone() })
        .collect::<Vec<_>>();
    let specs: Vec<SocketSpec> = instances.iter().map(|i| i.socket.clone()).collect();
    let Some(running) = supervisor::start(instances, s.http_addr, metrics, &mut signals).await? else {
        return Ok(());
    };
    print_banner(s, &specs, running.key_ids());
    Ok(running.serve(&mut signals).await?)
}

fn print_banner(s: &PluginSettings, specs: &[SocketSpec], key_ids: &[Option<String>]) {
    let store = match &s.backend {
        crate::config::Backend::Embedded => match &s.store {
            envelope_keystore::Location::DataDir => format!("embedded key store {}", s.data_dir.display()),
            other => format!("embedded key store {other} (root key in {})", s.data_dir.display()),
        },
        #[cfg(feature = "aws")]
        crate::config::Backend::Aws { endpoint, .. } => format!(
            "aws KMS {}",
            envelope_plugin_aws::client::describe_endpoint(endpoint.as_deref(), |v| std::env::var(v).ok())
        ),
        #[cfg(not(feature = "aws"))]
        crate::config::Backend::Aws { .. } => "aws KMS".to_owned(),
        crate::config::Backend::Pkcs11 { module, token, .. } => format!("pkcs11 {token} ({})", module.display()),
    };
    for (i, key_id) in s.instances.iter().zip(key_ids) {
        println!("envelope plugin listening on {}", i.socket);
        println!(
            "  backend: {store}   key: {}   key_id: {}",
            i.key,
            key_id.as_deref().unwrap_or("(not available yet)")
        );
        if !matches!(s.backend, crate::config::Backend::Embedded) {
            match i.local_kek {
                true => println!("  local KEK: on (data keys wrapped locally; one remote call per local KEK)"),
                false => println!("  local KEK: off (one remote call per Encrypt and Decrypt)"),
            }
        }
    }
    println!();
    println!("Give kube-apiserver this EncryptionConfiguration (--encryption-provider-config):");
    if specs.len() > 1 {
        println!("(the first provider encrypts; the others decrypt what they wrote: reorder to switch keys)");
    }
    println!();
    print!("{}", encryption_config(s, specs));
    println!();
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
