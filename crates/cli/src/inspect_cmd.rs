//! `envelope inspect` and `envelope decrypt`: read etcd directly, prove what is encrypted and
//! with which key, and recover objects in a disaster.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use envelope_inspect::classify::{Classified, DekSourceType};
use envelope_inspect::config::EncryptionConfig;
use envelope_inspect::report::Summary;
use envelope_inspect::{decode_object, decrypt, input};
use envelope_proto::{v1beta1, v2};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::etcd::{Etcd, EtcdOptions};

/// Exit code when `--fail-on-plaintext` finds unencrypted objects.
pub const EXIT_PLAINTEXT: u8 = 2;
/// Exit code when `--fail-on-stale` finds stale objects.
pub const EXIT_STALE: u8 = 3;
/// Exit code when no object was found at all (without `--allow-empty`).
pub const EXIT_EMPTY: u8 = 4;

/// How to reach etcd (flag names as etcdctl's).
#[derive(Debug, Args, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (`https://10.0.0.1:2379`, or `host:port`).
    #[arg(long = "etcd", env = "ENVELOPE_ETCD", value_delimiter = ',', value_name = "ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// CA certificate that signed etcd's server certificate (PEM).
    #[arg(long, env = "ENVELOPE_ETCD_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd (PEM), e.g. /etc/kubernetes/pki/apiserver-etcd-client.crt.
    #[arg(long, env = "ENVELOPE_ETCD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key for etcd (PEM).
    #[arg(long, env = "ENVELOPE_ETCD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Timeout of each etcd request.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub etcd_timeout: String,
}

impl EtcdArgs {
    /// The connection options these flags describe (fails on a bad `--etcd-timeout`).
    pub fn options(&self) -> Result<EtcdOptions> {
        Ok(EtcdOptions {
            endpoints: self.endpoints.clone(),
            ca: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            connect_timeout: Some(Duration::from_secs(10)),
            request_timeout: Some(crate::config::parse_duration("etcd-timeout", &self.etcd_timeout)?),
        })
    }
}

/// Options of `envelope inspect`.
#[derive(Debug, Args)]
#[command(after_help = "Exit codes: 0 done; 2 unencrypted objects found with --fail-on-plaintext; \
3 stale objects found with --fail-on-stale; 4 no object found (without --allow-empty); 1 on errors \
(etcd unreachable, ...); 64 bad usage (no --etcd, ...).\n\
Values that are corrupt or unrecognised are reported per object and the run continues.")]
pub struct InspectArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// kube-apiserver's --etcd-prefix.
    #[arg(long, default_value = "/registry")]
    pub prefix: String,
    /// Which resources to inspect.
    #[arg(long, default_value = "secrets", value_parser = ["secrets", "configmaps", "all"])]
    pub resource: String,
    /// Output: a table with a summary, JSON, or the summary only.
    #[arg(long, short = 'o', default_value = "table", value_parser = ["table", "json", "summary"])]
    pub output: String,
    /// The current KMS v2 key_id: objects under another key_id are stale.
    #[arg(long, value_name = "ID", conflicts_with = "plugin_socket")]
    pub current_key_id: Option<String>,
    /// Ask a running KMS v2 plugin (any plugin, not only envelope) for the current key_id.
    #[arg(long, value_name = "PATH")]
    pub plugin_socket: Option<String>,
    /// Exit with code 2 if any object is stored unencrypted.
    #[arg(long)]
    pub fail_on_plaintext: bool,
    /// Exit with code 3 if any KMS v2 object is stale (needs --current-key-id or --plugin-socket).
    #[arg(long)]
    pub fail_on_stale: bool,
    /// Accept finding no object at all (otherwise an error: a wrong --prefix or etcd address
    /// would make --fail-on-plaintext and --fail-on-stale pass on nothing).
    #[arg(long)]
    pub allow_empty: bool,
    /// EncryptionConfiguration to read provider and key names from (needed only when names contain ':').
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// Keys fetched per etcd request (memory stays bounded by one page).
    #[arg(long, default_value_t = 1000)]
    pub page_size: i64,
    /// Progress bar on stderr: auto (when stderr is a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub progress: String,
}

/// Options of `envelope decrypt`.
#[derive(Debug, Args)]
#[command(after_help = "Unwraps through a KMS plugin socket (KMS v2 or v1, any implementation) or directly from an \
envelope key store (--data-dir), decrypts with AAD = the etcd key, and prints the object as kubectl would.")]
pub struct DecryptArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The object's etcd key, e.g. /registry/secrets/default/db (it is the AAD, so it is needed
    /// with --value-file too).
    #[arg(long, value_name = "KEY")]
    pub etcd_key: String,
    /// Read the raw stored value from this file instead of etcd, saved with `etcdctl get
    /// --print-value-only KEY > FILE` (the one newline etcdctl appends is ignored).
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,
    /// KMS plugin socket to unwrap KMS v2/v1 data keys with.
    #[arg(long, value_name = "PATH", conflicts_with = "data_dir")]
    pub plugin_socket: Option<String>,
    /// Unwrap with an envelope key store directly (no running plugin needed).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: the key store's root key, as the plugin's --root-key: `file` (root.key
    /// in DIR, the default), `passphrase-file:PATH`, or a `pkcs11:` URI (RFC 7512, with
    /// `module-path` and `pin-source=file:…`) naming the token key that wraps it.
    #[arg(long, env = "ENVELOPE_ROOT_KEY", value_name = "ROOT")]
    pub root_key: Option<String>,
    /// EncryptionConfiguration with aescbc/aesgcm/secretbox keys for static-key values.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', default_value = "yaml", value_parser = ["yaml", "json"])]
    pub output: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    crate::runtime::build(crate::runtime::Flavor::Workers(2)).context("runtime")
}

pub fn run_inspect(args: InspectArgs) -> ExitCode {
    if let Err(e) = check_usage(&args) {
        eprintln!("envelope inspect: {e:#}");
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    match runtime().and_then(|rt| rt.block_on(inspect(args))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("envelope inspect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run_decrypt(args: DecryptArgs) -> ExitCode {
    let usage = match &args.value_file {
        Some(_) => Ok(()),
        None if args.etcd.endpoints.is_empty() => Err(anyhow!(
            "give --etcd (etcd's client URL, e.g. https://127.0.0.1:2379) or a saved value with --value-file"
        )),
        None => crate::etcd::check_endpoints(&args.etcd.endpoints).and_then(|()| args.etcd.options().map(drop)),
    };
    if let Err(e) = usage {
        eprintln!("envelope decrypt: {e:#}");
        return ExitCode::from(crate::EXIT_CONFIG);
    }
    match runtime().and_then(|rt| rt.block_on(decrypt_one(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelope decrypt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to a plugin socket (path or @abstract).
pub async fn plugin_channel(socket: &str) -> Result<Channel> {
    envelope_plugin::socket::connect(socket).await.with_context(|| format!("cannot connect to plugin socket {socket}"))
}

/// The current key_id reported by a KMS v2 plugin's Status.
pub async fn current_key_id(socket: &str) -> Result<String> {
    let mut c = v2::key_management_service_client::KeyManagementServiceClient::new(plugin_channel(socket).await?);
    let mut req = tonic::Request::new(v2::StatusRequest {});
    req.set_timeout(Duration::from_secs(5));
    let st = c.status(req).await.map_err(|s| anyhow!("plugin Status failed: {}", s.message()))?.into_inner();
    if st.key_id.is_empty() {
        bail!("plugin reported an empty key_id (healthz: {})", st.healthz);
    }
    Ok(st.key_id)
}

/// The etcd key prefix of `resource` (`all`: every resource) under kube-apiserver's `--etcd-prefix`.
pub fn scan_prefix(prefix: &str, resource: &str) -> Vec<u8> {
    let p = format!("/{}", prefix.trim_matches('/'));
    let p = if p == "/" { String::new() } else { p };
    match resource {
        "all" => format!("{p}/").into_bytes(),
        r => format!("{p}/{r}/").into_bytes(),
    }
}

/// Usage errors, reported with exit code 64 before anything is contacted.
fn check_usage(args: &InspectArgs) -> Result<()> {
    if args.fail_on_stale && args.current_key_id.is_none() && args.plugin_socket.is_none() {
        bail!("--fail-on-stale needs --current-key-id or --plugin-socket");
    }
    if args.page_size < 1 {
        bail!("--page-size must be at least 1");
    }
    crate::etcd::check_endpoints(&args.etcd.endpoints)?;
    args.etcd.options()?;
    Ok(())
}

async fn inspect(args: InspectArgs) -> Result<u8> {
    let config = match &args.encryption_config {
        Some(p) => Some(EncryptionConfig::load(p)?),
        None => None,
    };
    let current = match (&args.current_key_id, &args.plugin_socket) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(s)) => Some(current_key_id(s).await?),
        _ => None,
    };
    let mut etcd = Etcd::connect(&args.etcd.options()?).await?;
    let base = format!("/{}", args.prefix.trim_matches('/'));
    let prefix = scan_prefix(&args.prefix, &args.resource);
    let bar = if show_progress(&args.progress) {
        let total = etcd.count(&prefix).await.unwrap_or(0);
        Some(progress_bar(total, "objects"))
    } else {
        None
    };

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut summary = Summary::new(current.clone());
    if summary.stale.is_none() {
        summary.stale_unknown = Some("no current KMS v2 key_id: give --current-key-id or --plugin-socket".into());
    }
    let mut first = true;
    let mut write_err: Option<std::io::Error> = None;
    let table = args.output == "table";
    let json = args.output == "json";
    if json {
        let _ = write!(out, "{{\"objects\":[");
    } else if table {
        let _ = writeln!(out, "{:<10} {:<24} {:<44} {:<6} OBJECT", "PROVIDER", "NAME", "KEY_ID", "STALE");
    }
    etcd.scan(&prefix, args.page_size, |kv| {
        let classified = classify_value(config.as_ref(), &kv.key, &kv.value);
        let row = summary.add(base.as_bytes(), &kv.key, &kv.value, &classified);
        let r = if json {
            let sep = if first { "" } else { "," };
            serde_json::to_string(&row).map_err(std::io::Error::other).and_then(|s| write!(out, "{sep}\n{s}"))
        } else if table {
            let stale = match row.stale {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let obj =
                if row.namespace.is_empty() { row.name.clone() } else { format!("{}/{}", row.namespace, row.name) };
            let mut line = format!(
                "{:<10} {:<24} {:<44} {:<6} {}/{}",
                row.provider,
                row.provider_name.as_deref().unwrap_or("-"),
                row.key_id.as_deref().unwrap_or("-"),
                stale,
                row.resource,
                obj
            );
            if let Some(p) = &row.problem {
                line.push_str("  ! ");
                line.push_str(p);
            }
            writeln!(out, "{line}")
        } else {
            Ok(())
        };
        first = false;
        if let (Err(e), None) = (r, &write_err) {
            write_err = Some(e);
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    })
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        let s = serde_json::to_string(&summary)?;
        let _ = writeln!(out, "\n],\"summary\":{s}}}");
    } else {
        print_summary(&mut out, &summary);
    }
    out.flush().ok();
    if let Some(e) = write_err
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing output");
    }
    if summary.total == 0 && !args.allow_empty {
        eprintln!(
            "envelope inspect: no objects under {} in etcd {}: check --prefix (kube-apiserver's --etcd-prefix), \
             --resource and --etcd; --allow-empty accepts an empty result",
            String::from_utf8_lossy(&prefix),
            args.etcd.endpoints.join(",")
        );
        return Ok(EXIT_EMPTY);
    }
    if args.fail_on_plaintext && summary.unencrypted > 0 {
        eprintln!("envelope inspect: {} object(s) stored unencrypted", summary.unencrypted);
        return Ok(EXIT_PLAINTEXT);
    }
    if let (true, Some(stale @ 1..)) = (args.fail_on_stale, summary.stale) {
        eprintln!("envelope inspect: {stale} object(s) stale (not under key_id {})", current.unwrap_or_default());
        return Ok(EXIT_STALE);
    }
    Ok(0)
}

/// Classifies one stored value, with the names of `config` when given (names containing ':').
pub fn classify_value(config: Option<&EncryptionConfig>, key: &[u8], value: &[u8]) -> Classified {
    match config {
        Some(c) => envelope_inspect::classify::classify_with_config(key, value, c),
        None => envelope_inspect::classify(key, value),
    }
}

/// Whether `--progress MODE` (auto, always, never) asks for a progress bar; auto: when stderr
/// is a terminal.
pub fn show_progress(mode: &str) -> bool {
    match mode {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    }
}

/// A progress bar on stderr over `total` items counted in `unit` (e.g. "objects").
pub fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total);
    let template = format!("{{spinner}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}] {{wide_bar}} {{per_sec}}");
    b.set_style(
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

fn print_summary(out: &mut impl Write, s: &Summary) {
    let _ = writeln!(out, "\nSummary: {} object(s)", s.total);
    for (k, n) in &s.by_provider {
        let _ = writeln!(out, "  {k:<12} {n}");
    }
    let _ = writeln!(out, "By provider, name and key_id:");
    for (k, n) in &s.by_key {
        let _ = writeln!(out, "  {k:<70} {n}");
    }
    let _ = writeln!(out, "Unencrypted: {}", s.unencrypted);
    match (&s.current_key_id, s.stale) {
        (Some(k), Some(n)) => {
            let _ = writeln!(out, "Stale (KMS v2 not under key_id {k}): {n}");
        }
        _ => {
            let _ = writeln!(out, "Stale: unknown (give --current-key-id or --plugin-socket)");
        }
    }
    let _ = writeln!(out, "Corrupt or unrecognised: {}", s.problems);
}

enum Unwrapper {
    Socket(Channel),
    Store(envelope_plugin::Plugin<envelope_plugin::EmbeddedBackend>),
}

impl Unwrapper {
    async fn v2(
        &self,
        dek_source: &[u8],
        key_id: &str,
        annotations: HashMap<String, Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            Unwrapper::Socket(ch) => {
                let mut c = v2::key_management_service_client::KeyManagementServiceClient::new(ch.clone());
                let req = v2::DecryptRequest {
                    ciphertext: dek_source.to_vec(),
                    uid: uuid::Uuid::new_v4().to_string(),
                    key_id: key_id.to_string(),
                    annotations,
                };
                let r = c
                    .decrypt(req)
                    .await
                    .map_err(|s| anyhow!("plugin Decrypt (KMS v2) failed: {:?}: {}", s.code(), s.message()))?;
                Ok(Zeroizing::new(r.into_inner().plaintext))
            }
            Unwrapper::Store(p) => Ok(p.decrypt_v2(dek_source, key_id, &annotations).await?),
        }
    }

    async fn v1(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            Unwrapper::Socket(ch) => {
                let mut c = v1beta1::key_management_service_client::KeyManagementServiceClient::new(ch.clone());
                let req = v1beta1::DecryptRequest { version: "v1beta1".into(), cipher: wrapped.to_vec() };
                let r = c
                    .decrypt(req)
                    .await
                    .map_err(|s| anyhow!("plugin Decrypt (KMS v1) failed: {:?}: {}", s.code(), s.message()))?;
                Ok(Zeroizing::new(r.into_inner().plain))
            }
            Unwrapper::Store(p) => Ok(p.decrypt_v1(wrapped).await?),
        }
    }
}

async fn unwrapper(args: &DecryptArgs) -> Result<Unwrapper> {
    if let Some(s) = &args.plugin_socket {
        return Ok(Unwrapper::Socket(plugin_channel(s).await?));
    }
    if let Some(dir) = &args.data_dir {
        let dir = dir.clone();
        let root = crate::reseal::parse_root(args.root_key.as_deref().unwrap_or("file")).context("--root-key")?;
        let store = tokio::task::spawn_blocking(move || envelope_keystore::KeyStore::open_existing_with(&dir, &root))
            .await?
            .context("cannot open the key store")?;
        let backend = envelope_plugin::EmbeddedBackend::new(
            Arc::new(store),
            envelope_keystore::KeyRef::Alias("alias/kubernetes".into()),
        );
        let plugin = envelope_plugin::Plugin::new(
            backend,
            envelope_plugin::PluginConfig::default(),
            Arc::new(envelope_plugin::Metrics::new()),
        );
        return Ok(Unwrapper::Store(plugin));
    }
    bail!("this value is KMS-encrypted: give --plugin-socket PATH or --data-dir DIR to unwrap its data key")
}

async fn decrypt_one(args: DecryptArgs) -> Result<()> {
    let key = args.etcd_key.as_bytes().to_vec();
    let (value, source): (Zeroizing<Vec<u8>>, String) = match &args.value_file {
        Some(f) => (
            Zeroizing::new(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?),
            f.display().to_string(),
        ),
        None => {
            let mut etcd = Etcd::connect(&args.etcd.options()?).await?;
            let kv = etcd.get(&key).await?.ok_or_else(|| anyhow!("etcd has no key {}", args.etcd_key))?;
            (Zeroizing::new(kv.value), format!("etcd key {}", args.etcd_key))
        }
    };
    let config = match &args.encryption_config {
        Some(p) => Some(EncryptionConfig::load(p)?),
        None => None,
    };
    // A saved value may end with the one newline `etcdctl get --print-value-only` appends: try
    // the exact bytes, then without that newline, and keep the first complete value.
    let candidates = if args.value_file.is_some() { input::candidates(&value) } else { vec![value.as_slice()] };
    let mut unwrap = None;
    let (mut not_a_value, mut failed) = (None, None);
    for candidate in candidates {
        let classified = classify_value(config.as_ref(), &key, candidate);
        if let Some(why) = input::explain(candidate, &classified) {
            not_a_value.get_or_insert(anyhow!(why));
            continue;
        }
        match open_value(&args, &mut unwrap, config.as_ref(), &key, candidate, &classified).await {
            Ok(object) => return print_object(&object, &args.output),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    // The error of a well-formed value (wrong key, ...) says more than "not a value".
    Err(failed.or(not_a_value).unwrap_or_else(|| anyhow!("no value")).context(source))
}

/// Unwraps the data key if needed (through `unwrap`, set up on first use), decrypts `value` and
/// decodes the object inside.
async fn open_value(
    args: &DecryptArgs,
    unwrap: &mut Option<Unwrapper>,
    config: Option<&EncryptionConfig>,
    key: &[u8],
    value: &[u8],
    classified: &Classified,
) -> Result<envelope_inspect::DecodedObject> {
    if matches!(classified, Classified::KmsV1(_) | Classified::KmsV2(_)) && unwrap.is_none() {
        *unwrap = Some(unwrapper(args).await?);
    }
    let plaintext: Zeroizing<Vec<u8>> = match (classified, unwrap.as_ref()) {
        (Classified::IdentityProtobuf | Classified::IdentityJson, _) => Zeroizing::new(value.to_vec()),
        (Classified::KmsV2(v), Some(u)) => {
            let annotations: HashMap<String, Vec<u8>> =
                v.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let dek_source = u.v2(&v.encrypted_dek_source, &v.key_id, annotations).await?;
            if v.dek_source_type == DekSourceType::AesGcmKey {
                eprintln!("note: legacy AES_GCM_KEY value (written by Kubernetes 1.27/1.28)");
            }
            decrypt::kms_v2(key, value, &dek_source)?
        }
        (Classified::KmsV1(v), Some(u)) => {
            let dek = u.v1(&v.wrapped_dek).await?;
            decrypt::kms_v1(key, value, &v.provider_name, &dek)?.plaintext
        }
        (Classified::StaticKey(_), _) => {
            let c = config
                .ok_or_else(|| anyhow!("this value is encrypted with a static key: give --encryption-config FILE"))?;
            decrypt::with_config(key, value, c)?.plaintext
        }
        (other, _) => bail!("cannot decrypt: {other}"),
    };
    Ok(decode_object(&plaintext)?)
}

fn print_object(object: &envelope_inspect::DecodedObject, output: &str) -> Result<()> {
    let text: Zeroizing<String> = if output == "json" {
        object.to_json_pretty()
    } else {
        Zeroizing::new(serde_norway::to_string(object.json()).context("rendering YAML")?)
    };
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| match text.ends_with('\n') {
        true => Ok(()),
        false => out.write_all(b"\n"),
    });
    if let Err(e) = written.and_then(|()| out.flush()) {
        crate::output::on_error(&e);
    }
    Ok(())
}
