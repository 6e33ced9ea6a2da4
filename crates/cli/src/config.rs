//! Resolves the plugin's settings from flags, environment and the optional YAML file, and
//! validates them before anything is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::cli::PluginArgs;

/// A scalar from YAML, accepted as text whatever its YAML type.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    B(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

/// The YAML file: the same names as the long flags.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    socket: Option<Scalar>,
    socket_mode: Option<Scalar>,
    socket_group: Option<Scalar>,
    data_dir: Option<Scalar>,
    root_key: Option<Scalar>,
    store: Option<Scalar>,
    key: Option<Scalar>,
    no_create_key: Option<bool>,
    local_kek: Option<bool>,
    local_kek_max_uses: Option<u64>,
    local_kek_max_age: Option<Scalar>,
    local_kek_cache_ttl: Option<Scalar>,
    local_kek_cache_size: Option<usize>,
    backend: Option<Scalar>,
    region: Option<Scalar>,
    endpoint: Option<Scalar>,
    encryption_context: Option<std::collections::BTreeMap<String, String>>,
    max_in_flight: Option<usize>,
    health_probe: Option<Scalar>,
    key_label: Option<Scalar>,
    module: Option<Scalar>,
    token_label: Option<Scalar>,
    token_serial: Option<Scalar>,
    pin_file: Option<Scalar>,
    pkcs11_sessions: Option<usize>,
    ca_bundle: Option<Scalar>,
    fips: Option<bool>,
    http_addr: Option<Scalar>,
    status_version: Option<Scalar>,
    health_interval: Option<Scalar>,
    request_timeout: Option<Scalar>,
    shutdown_grace: Option<Scalar>,
    provider_name: Option<Scalar>,
    kms_api_version: Option<Scalar>,
    log_format: Option<Scalar>,
    log_level: Option<Scalar>,
    instances: Option<Vec<FileInstance>>,
}

/// One entry of `instances:` in the YAML file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileInstance {
    socket: Scalar,
    key: Scalar,
    provider_name: Option<Scalar>,
    encryption_context: Option<std::collections::BTreeMap<String, String>>,
    health_probe: Option<Scalar>,
    local_kek: Option<bool>,
}

/// An instance as given (flags or file), before defaults and checks.
struct RawInstance {
    socket: String,
    key: Option<String>,
    provider_name: Option<String>,
    encryption_context: std::collections::BTreeMap<String, String>,
    health_probe: Option<String>,
    local_kek: Option<bool>,
}

impl RawInstance {
    fn new(socket: String, key: Option<String>) -> Self {
        Self {
            socket,
            key,
            provider_name: None,
            encryption_context: Default::default(),
            health_probe: None,
            local_kek: None,
        }
    }
}

/// One plugin instance: a key served on a socket, with its own health, Status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    pub socket: String,
    pub key: String,
    /// Name of its provider in the printed EncryptionConfiguration.
    pub provider_name: String,
    /// aws backend: encryption context of this instance (the global pairs plus its own).
    pub encryption_context: std::collections::BTreeMap<String, String>,
    /// aws backend: probe with an Encrypt/Decrypt round trip (else DescribeKey only).
    pub round_trip_probe: bool,
    /// aws and pkcs11 backends: new ciphertexts go through a local KEK.
    pub local_kek: bool,
}

/// Validated plugin settings.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// At least one; sockets are distinct.
    pub instances: Vec<InstanceSettings>,
    pub socket_mode: u32,
    pub socket_group: Option<String>,
    pub data_dir: PathBuf,
    /// The embedded store's root key (`file`, `passphrase-file:PATH`, `pkcs11:…`).
    pub root_key: String,
    /// Where the embedded store's keys are (the data directory's SQLite file, or PostgreSQL).
    pub store: envelope_keystore::Location,
    pub create_key: bool,
    pub backend: Backend,
    /// aws and pkcs11 backends: the local KEK layer's limits (`enabled` is per instance).
    pub local_kek: envelope_plugin::KekConfig,
    pub http_addr: Option<SocketAddr>,
    pub status_version: String,
    /// KMS API version of the printed EncryptionConfiguration (`v1` or `v2`).
    pub kms_api_version: String,
    pub health_interval: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_json: bool,
    pub log_level: String,
}

/// Largest `--max-in-flight`: far above what one KMS endpoint serves from one client.
pub const MAX_IN_FLIGHT: usize = 10_000;
/// Largest `--request-timeout` and `--shutdown-grace`.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Which key backend the plugin uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// envelope's own key store in the data directory.
    Embedded,
    /// An AWS-KMS-API endpoint.
    Aws {
        region: Option<String>,
        endpoint: Option<String>,
        max_in_flight: usize,
        /// PEM CA certificates to trust instead of the system's.
        ca_bundle: Option<CaBundle>,
        /// Use the region's FIPS endpoint.
        fips: bool,
    },
    /// An AES-256 key inside a PKCS#11 token; each instance's key is a key label.
    Pkcs11 { module: PathBuf, token: envelope_plugin_pkcs11::TokenSelector, pin_file: PathBuf, sessions: usize },
}

/// Default data directory: /var/lib/envelope for root, else ~/.local/share/envelope.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/envelope");
    }
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("envelope"),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/share/envelope"))
            .unwrap_or_else(|| PathBuf::from("envelope-data")),
    }
}

fn pick(flag: Option<String>, file: Option<Scalar>) -> Option<String> {
    flag.or_else(|| file.map(Scalar::text))
}

/// Parses a duration such as `10s`, `500ms` or `1m`; must be positive.
pub fn parse_duration(name: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("{name}: {s:?} is not a duration like 10s or 500ms ({e})"))?;
    if d.is_zero() {
        bail!("{name} must be greater than zero");
    }
    Ok(d)
}

/// The local KEK layer's limits from flags and file (defaults: [`envelope_plugin::KekConfig`]);
/// refused for the embedded backend, which has no remote key.
fn local_kek_limits(
    max_uses: Option<u64>,
    max_age: Option<String>,
    cache_ttl: Option<String>,
    cache_size: Option<usize>,
    remote: bool,
) -> Result<envelope_plugin::KekConfig> {
    let mut c = envelope_plugin::KekConfig::default();
    let given = max_uses.is_some() || max_age.is_some() || cache_ttl.is_some() || cache_size.is_some();
    if given && !remote {
        bail!(
            "local-kek-max-uses, local-kek-max-age, local-kek-cache-ttl and local-kek-cache-size apply to the aws and pkcs11 backends"
        );
    }
    if let Some(n) = max_uses {
        c.max_uses = n;
    }
    if let Some(d) = max_age {
        c.max_age = parse_duration("local-kek-max-age", &d)?;
    }
    if let Some(d) = cache_ttl {
        c.cache_ttl = parse_duration("local-kek-cache-ttl", &d)?;
    }
    if let Some(n) = cache_size {
        c.cache_size = n;
    }
    c.validate().map_err(|e| match e {
        envelope_plugin::PluginError::InvalidRequest(m) => anyhow!("{m}"),
        other => anyhow!("{other}"),
    })?;
    Ok(c)
}

/// Merges flags/environment with the YAML file and validates everything.
pub fn resolve(mut args: PluginArgs) -> Result<PluginSettings> {
    let mut file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    // --key-label is the pkcs11 spelling of --key.
    if !args.key_label.is_empty() {
        if !args.key.is_empty() {
            bail!("give --key or --key-label, not both");
        }
        args.key = std::mem::take(&mut args.key_label);
    }
    if let Some(l) = file.key_label.take() {
        if file.key.is_some() {
            bail!("the config file has both key and key-label; use one");
        }
        file.key = Some(l);
    }
    let data_dir = pick(args.data_dir.map(|p| p.to_string_lossy().into_owned()), file.data_dir)
        .map(PathBuf::from)
        .unwrap_or_else(default_data_dir);
    if data_dir.as_os_str().is_empty() {
        bail!("data-dir must not be empty");
    }
    let data_dir = if data_dir.is_absolute() {
        data_dir
    } else {
        std::env::current_dir().context("cannot read the current directory")?.join(data_dir)
    };
    let default_socket = || {
        if nix::unistd::geteuid().is_root() {
            "/run/envelope/kms.sock".to_string()
        } else {
            data_dir.join("kms.sock").to_string_lossy().into_owned()
        }
    };
    let mode_text = pick(args.socket_mode, file.socket_mode).unwrap_or_else(|| "0600".into());
    let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| anyhow!("socket-mode {mode_text:?} is not an octal permission like 0600 or 0660"))?;
    if socket_mode & 0o600 != 0o600 {
        bail!("socket-mode {mode_text} must let the owner read and write (0600 at least)");
    }
    let socket_group = pick(args.socket_group, file.socket_group).filter(|g| !g.is_empty());
    if let Some(g) = &socket_group
        && nix::unistd::Group::from_name(g).ok().flatten().is_none()
    {
        bail!("socket-group {g:?} does not exist");
    }
    let backend_name = pick(args.backend, file.backend).unwrap_or_else(|| "embedded".into());
    let aws = match backend_name.as_str() {
        "embedded" | "pkcs11" => false,
        "aws" if !cfg!(feature = "aws") => bail!("this build has no aws backend (built without the `aws` feature)"),
        "aws" => true,
        other => bail!("backend must be embedded, aws or pkcs11, not {other:?}"),
    };
    let pkcs11 = backend_name == "pkcs11";
    let mut context = file.encryption_context.unwrap_or_default();
    for pair in &args.encryption_context {
        let (k, v) = pair.split_once('=').ok_or_else(|| anyhow!("--encryption-context {pair:?} is not K=V"))?;
        if k.is_empty() {
            bail!("--encryption-context {pair:?} has an empty key");
        }
        context.insert(k.to_string(), v.to_string());
    }
    if !aws && !context.is_empty() {
        bail!("encryption-context applies to the aws backend only (the embedded backend binds its own context)");
    }
    let probe = pick(args.health_probe, file.health_probe);
    let n_names = args.provider_name.len();
    let file_name = file.provider_name.map(Scalar::text);

    // Instances: --key/--socket pairs, the file's `instances:` list, or one key and socket.
    let (n_keys, n_sockets) = (args.key.len(), args.socket.len());
    let raw: Vec<RawInstance> = if n_keys > 1 || n_sockets > 1 {
        if n_keys != n_sockets {
            bail!(
                "give one --socket per --key ({n_keys} key(s), {n_sockets} socket(s)): the n-th --socket serves the n-th --key"
            );
        }
        if file.instances.is_some() {
            bail!("--key/--socket pairs and the config file's instances list cannot be combined");
        }
        if n_names != 0 && n_names != n_keys {
            bail!("give one --provider-name per --key ({n_keys} key(s), {n_names} name(s)), or none");
        }
        let mut names = args.provider_name.into_iter();
        args.socket
            .into_iter()
            .zip(args.key)
            .map(|(socket, key)| RawInstance { provider_name: names.next(), ..RawInstance::new(socket, Some(key)) })
            .collect()
    } else if n_keys == 0 && n_sockets == 0 && file.instances.is_some() {
        let list = file.instances.unwrap_or_default();
        if file.socket.is_some() || file.key.is_some() {
            bail!("the config file has both socket/key and instances; use one or the other");
        }
        if list.is_empty() {
            bail!("instances must list at least one socket and key");
        }
        if n_names != 0 {
            bail!(
                "--provider-name and the config file's instances list cannot be combined; name each instance in the file"
            );
        }
        list.into_iter()
            .map(|i| RawInstance {
                socket: i.socket.text(),
                key: Some(i.key.text()),
                provider_name: i.provider_name.map(Scalar::text),
                encryption_context: i.encryption_context.unwrap_or_default(),
                health_probe: i.health_probe.map(Scalar::text),
                local_kek: i.local_kek,
            })
            .collect()
    } else {
        if file.instances.is_some() {
            bail!("--key/--socket flags and the config file's instances list cannot be combined");
        }
        let socket =
            args.socket.into_iter().next().or_else(|| file.socket.map(Scalar::text)).unwrap_or_else(default_socket);
        let key = args.key.into_iter().next().or_else(|| file.key.map(Scalar::text));
        if n_names > 1 {
            bail!("{n_names} --provider-name flags for one instance");
        }
        let name = args.provider_name.into_iter().next().or(file_name.clone());
        vec![RawInstance { provider_name: name, ..RawInstance::new(socket, key) }]
    };
    let several = raw.len() > 1;
    let mut instances: Vec<InstanceSettings> = Vec::with_capacity(raw.len());
    let round_trip = |probe: Option<&str>| -> Result<bool> {
        match probe {
            None | Some("round-trip") => Ok(true),
            Some("describe-key") if aws => Ok(false),
            Some("describe-key") => {
                bail!(
                    "health-probe describe-key applies to the aws backend (the embedded backend always probes with a local round trip)"
                )
            }
            Some(other) => bail!("health-probe must be round-trip or describe-key, not {other:?}"),
        }
    };
    let default_round_trip = round_trip(probe.as_deref())?;
    if several && file_name.is_some() {
        bail!(
            "provider-name at the top of the config file names a single instance; name each entry of instances instead"
        );
    }
    let remote = aws || pkcs11;
    let default_local_kek = !args.no_local_kek && file.local_kek.unwrap_or(true);
    if args.no_local_kek && file.local_kek == Some(true) {
        bail!("--no-local-kek and local-kek: true in the config file contradict each other");
    }
    for RawInstance {
        socket,
        key,
        provider_name: name,
        encryption_context: own_context,
        health_probe: own_probe,
        local_kek: own_local_kek,
    } in raw
    {
        if !remote && own_local_kek.is_some() {
            bail!(
                "instance {socket}: local-kek applies to the aws and pkcs11 backends (the embedded key store is local)"
            );
        }
        let local_kek = remote && own_local_kek.unwrap_or(default_local_kek);
        check_socket(&socket)?;
        let key = match (aws, key) {
            (false, Some(key)) if pkcs11 && !key.trim().is_empty() => key,
            (false, _) if pkcs11 => bail!("--backend pkcs11 needs --key-label (the key's CKA_LABEL in the token)"),
            (false, key) => {
                let key = key.unwrap_or_else(|| "kubernetes".into());
                envelope_keystore::KeyRef::parse(&key).map_err(|e| anyhow!("key {key:?}: {e}"))?;
                key
            }
            (true, Some(key)) if !key.trim().is_empty() => key,
            (true, _) => bail!("--backend aws needs --key (key ARN, key id or alias)"),
        };
        if !aws && !own_context.is_empty() {
            bail!("instance {socket}: encryption-context applies to the aws backend only");
        }
        let mut encryption_context = context.clone();
        encryption_context.extend(own_context);
        // kube-apiserver finds a Secret's provider by the name stored with it, so names must not
        // follow positions (which change when keys are reordered in a migration).
        let provider_name = match name {
            Some(n) => n,
            None if several => bail!(
                "instance {socket} ({key}) has no provider name: with several keys give each a --provider-name \
                 (or provider-name in instances); keep \"envelope\" for the key that was served alone before, \
                 so the Secrets it wrote stay readable"
            ),
            None => "envelope".into(),
        };
        if provider_name.is_empty() || provider_name.contains(':') {
            bail!("provider-name {provider_name:?} must be non-empty and contain no ':'");
        }
        if instances.iter().any(|o| o.socket == socket) {
            bail!("socket {socket} is given twice; every instance needs its own socket");
        }
        if instances.iter().any(|o| o.provider_name == provider_name) {
            bail!("provider-name {provider_name} is given twice; kube-apiserver needs distinct names");
        }
        let round_trip_probe = match own_probe {
            Some(p) => round_trip(Some(&p))?,
            None => default_round_trip,
        };
        instances.push(InstanceSettings {
            socket,
            key,
            provider_name,
            encryption_context,
            round_trip_probe,
            local_kek,
        });
    }
    let module = pick(args.module.map(|p| p.to_string_lossy().into_owned()), file.module);
    let token_label = pick(args.token_label, file.token_label);
    let token_serial = pick(args.token_serial, file.token_serial);
    let pin_file = pick(args.pin_file.map(|p| p.to_string_lossy().into_owned()), file.pin_file);
    let sessions = args.pkcs11_sessions.or(file.pkcs11_sessions);
    if !pkcs11
        && (module.is_some()
            || token_label.is_some()
            || token_serial.is_some()
            || pin_file.is_some()
            || sessions.is_some())
    {
        bail!(
            "module, token-label, token-serial, pin-file and pkcs11-sessions apply to the pkcs11 backend (add --backend pkcs11)"
        );
    }
    let backend = if pkcs11 {
        let module =
            PathBuf::from(module.ok_or_else(|| anyhow!("--backend pkcs11 needs --module (the PKCS#11 library)"))?);
        if !module.is_file() {
            bail!("--module {}: no such file", module.display());
        }
        let token = match (token_label, token_serial) {
            (Some(l), None) => envelope_plugin_pkcs11::TokenSelector::Label(l),
            (None, Some(s)) => envelope_plugin_pkcs11::TokenSelector::Serial(s),
            (None, None) => bail!("--backend pkcs11 needs --token-label or --token-serial"),
            (Some(_), Some(_)) => bail!("give --token-label or --token-serial, not both"),
        };
        let pin_file =
            PathBuf::from(pin_file.ok_or_else(|| {
                anyhow!("--backend pkcs11 needs --pin-file (a file holding the user PIN, mode 0600)")
            })?);
        // Checked now (mode, size), so a bad file is a configuration error; read again at login.
        envelope_plugin_pkcs11::pin::read_pin_file(&pin_file).map_err(|e| anyhow!("{e}"))?;
        let sessions = sessions.unwrap_or(envelope_plugin_pkcs11::pool::DEFAULT_SESSIONS);
        if !(1..=envelope_plugin_pkcs11::pool::MAX_SESSIONS).contains(&sessions) {
            bail!("--pkcs11-sessions must be between 1 and {}", envelope_plugin_pkcs11::pool::MAX_SESSIONS);
        }
        for i in &instances {
            envelope_plugin_pkcs11::Pkcs11Config {
                module: module.clone(),
                token: token.clone(),
                pin_file: pin_file.clone(),
                key_label: i.key.clone(),
                sessions,
            }
            .validate()
            .map_err(|e| anyhow!("instance {}: {e}", i.socket))?;
        }
        if args.fips || file.fips == Some(true) || args.ca_bundle.is_some() || file.ca_bundle.is_some() {
            bail!("fips and ca-bundle apply to the aws backend");
        }
        Backend::Pkcs11 { module, token, pin_file, sessions }
    } else if aws {
        let endpoint = pick(args.endpoint, file.endpoint);
        if let Some(e) = &endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            bail!("--endpoint {e:?} must be an http:// or https:// URL");
        }
        let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(64);
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            bail!("--max-in-flight must be between 1 and {MAX_IN_FLIGHT}");
        }
        let ca_bundle = args
            .ca_bundle
            .or_else(|| file.ca_bundle.map(|c| PathBuf::from(c.text())))
            .or_else(|| std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()).map(PathBuf::from))
            .map(|f| CaBundle::load(&f).map(|pem| CaBundle { path: f, pem }))
            .transpose()?;
        let fips = args.fips || file.fips.unwrap_or(false);
        if fips && endpoint.is_some() {
            bail!("--fips picks the region's FIPS endpoint; with --endpoint give that endpoint's URL instead");
        }
        Backend::Aws { region: pick(args.region, file.region), endpoint, max_in_flight, ca_bundle, fips }
    } else {
        if args.fips || file.fips == Some(true) || args.ca_bundle.is_some() || file.ca_bundle.is_some() {
            bail!("fips and ca-bundle apply to the aws backend (add --backend aws)");
        }
        Backend::Embedded
    };
    let local_kek = local_kek_limits(
        args.local_kek_max_uses.or(file.local_kek_max_uses),
        pick(args.local_kek_max_age, file.local_kek_max_age),
        pick(args.local_kek_cache_ttl, file.local_kek_cache_ttl),
        args.local_kek_cache_size.or(file.local_kek_cache_size),
        remote,
    )?;
    let root_key = pick(args.root_key, file.root_key).unwrap_or_else(|| "file".into());
    if root_key != "file" {
        if !matches!(backend, Backend::Embedded) {
            bail!("root-key applies to the embedded backend's key store");
        }
        if !(root_key.starts_with("passphrase-file:") || root_key.starts_with("pkcs11:")) {
            bail!("root-key must be `file`, `passphrase-file:PATH` or a pkcs11: URI, not {root_key:?}");
        }
    }
    let store = match pick(args.store, file.store) {
        None => envelope_keystore::Location::DataDir,
        Some(text) => {
            let store = envelope_keystore::Location::parse(&text).map_err(|e| anyhow!("store: {e}"))?;
            if !matches!(backend, Backend::Embedded) {
                bail!("store applies to the embedded backend's key store");
            }
            store
        }
    };
    let http_text = pick(args.http_addr, file.http_addr).unwrap_or_else(|| "127.0.0.1:8423".into());
    let http_addr =
        if http_text == "off" {
            None
        } else {
            Some(http_text.parse::<SocketAddr>().map_err(|_| {
                anyhow!("http-addr {http_text:?} is not HOST:PORT (an IP address and port, or \"off\")")
            })?)
        };
    let kms_api_version = pick(args.kms_api_version, file.kms_api_version).unwrap_or_else(|| "v2".into());
    if kms_api_version != "v2" && kms_api_version != "v1" {
        bail!("kms-api-version must be v2 or v1, not {kms_api_version:?}");
    }
    let status_version = pick(args.status_version, file.status_version).unwrap_or_else(|| "v2beta1".into());
    if status_version != "v2" && status_version != "v2beta1" {
        bail!("status-version must be v2 or v2beta1, not {status_version:?}");
    }
    let health_interval = parse_duration(
        "health-interval",
        &pick(args.health_interval, file.health_interval).unwrap_or_else(|| "10s".into()),
    )?;
    if health_interval > Duration::from_secs(30) {
        bail!("health-interval must be at most 30s so rotations and disables are noticed promptly");
    }
    let request_timeout = parse_duration(
        "request-timeout",
        &pick(args.request_timeout, file.request_timeout).unwrap_or_else(|| "10s".into()),
    )?;
    let shutdown_grace = parse_duration(
        "shutdown-grace",
        &pick(args.shutdown_grace, file.shutdown_grace).unwrap_or_else(|| "10s".into()),
    )?;
    for (name, d) in [("request-timeout", request_timeout), ("shutdown-grace", shutdown_grace)] {
        if d > MAX_WAIT {
            bail!("{name} must be at most 1h");
        }
    }
    let log_format = pick(args.log_format, file.log_format).unwrap_or_else(|| "text".into());
    let log_json = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("log-format must be text or json, not {other:?}"),
    };
    let log_level = pick(args.log_level, file.log_level).unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| anyhow!("log-level {log_level:?}: {e}"))?;
    Ok(PluginSettings {
        instances,
        socket_mode,
        socket_group,
        data_dir,
        root_key,
        store,
        create_key: !(args.no_create_key || file.no_create_key.unwrap_or(false)),
        backend,
        local_kek,
        http_addr,
        status_version,
        kms_api_version,
        health_interval,
        request_timeout,
        shutdown_grace,
        log_json,
        log_level,
    })
}

/// A CA bundle for the aws backend, read and checked once when the configuration is resolved.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    /// The PEM text; every certificate in it is a usable trust anchor.
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Reads `f`; it must be readable and every PEM certificate in it a usable trust anchor
    /// (the AWS SDK would panic on a bad one at the first request).
    fn load(f: &Path) -> Result<Vec<u8>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(f).with_context(|| format!("ca-bundle {}", f.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| anyhow!("ca-bundle {}: not valid PEM ({e})", f.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow!("ca-bundle {}: a certificate cannot be used as a CA ({e})", f.display()))?;
        }
        if roots.is_empty() {
            bail!("ca-bundle {} holds no PEM certificate", f.display());
        }
        Ok(pem)
    }
}

fn check_socket(socket: &str) -> Result<()> {
    if !(socket.starts_with('/') || (socket.starts_with('@') && socket.len() > 1)) {
        bail!("socket {socket:?} must be an absolute path or @name (abstract socket)");
    }
    if socket.len() > 107 {
        bail!("socket path {socket:?} is longer than the 107 bytes a Unix socket address can hold");
    }
    Ok(())
}

fn load_file(p: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(&text).with_context(|| format!("config file {} is invalid", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PluginArgs {
        PluginArgs { socket: vec!["/tmp/x.sock".into()], data_dir: Some("/tmp/d".into()), ..Default::default() }
    }

    /// `envelope plugin --help` states each default as `[default: …]` (the flags are optional so
    /// that the config file can fill them); the stated defaults are the ones `resolve` applies.
    #[test]
    fn help_states_the_defaults_resolve_applies() {
        use clap::CommandFactory;
        let s = resolve(args()).unwrap();
        let cmd = crate::cli::Cli::command();
        let plugin = cmd.find_subcommand("plugin").unwrap();
        let help = |id: &str| {
            let a = plugin.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("no {id}"));
            a.get_help().map(|h| h.to_string()).unwrap_or_default()
        };
        let secs = |d: Duration| format!("{}s", d.as_secs());
        for (id, value) in [
            ("socket_mode", format!("{:04o}", s.socket_mode)),
            ("backend", "embedded".to_owned()),
            ("http_addr", s.http_addr.unwrap().to_string()),
            ("status_version", s.status_version.clone()),
            ("health_interval", secs(s.health_interval)),
            ("request_timeout", secs(s.request_timeout)),
            ("shutdown_grace", secs(s.shutdown_grace)),
            ("provider_name", s.instances[0].provider_name.clone()),
            ("kms_api_version", s.kms_api_version.clone()),
            ("log_format", if s.log_json { "json" } else { "text" }.to_owned()),
            ("log_level", s.log_level.clone()),
            ("max_in_flight", "64".to_owned()),
            ("health_probe", "round-trip".to_owned()),
            ("local_kek_max_uses", envelope_plugin::KekConfig::default().max_uses.to_string()),
            ("local_kek_cache_size", envelope_plugin::KekConfig::default().cache_size.to_string()),
            ("local_kek_max_age", "24h".to_owned()),
            ("local_kek_cache_ttl", "1h".to_owned()),
        ] {
            let h = help(id);
            assert!(h.contains(&format!("[default: {value}]")), "--{id}: {h}");
        }
        assert!(help("key").contains(&format!("[default: {} (embedded)]", s.instances[0].key)));
        let kek = envelope_plugin::KekConfig::default();
        assert_eq!((kek.max_age, kek.cache_ttl), (Duration::from_secs(24 * 3600), Duration::from_secs(3600)));
        let aws = resolve(PluginArgs { backend: Some("aws".into()), key: vec!["k".into()], ..args() }).unwrap();
        match aws.backend {
            Backend::Aws { max_in_flight, .. } => assert_eq!(max_in_flight, 64),
            other => panic!("aws expected: {other:?}"),
        }
        assert!(
            help("pkcs11_sessions").contains(&format!("[default: {}]", envelope_plugin_pkcs11::pool::DEFAULT_SESSIONS))
        );
    }

    #[test]
    fn pkcs11_settings_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pin = d.path().join("pin");
        std::fs::write(&pin, "5678\n").unwrap();
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        let module = d.path().join("module.so");
        std::fs::write(&module, "").unwrap();
        let ok = || PluginArgs {
            backend: Some("pkcs11".into()),
            module: Some(module.clone()),
            token_label: Some("kms".into()),
            pin_file: Some(pin.clone()),
            key_label: vec!["k8s".into()],
            ..args()
        };
        let s = resolve(ok()).unwrap();
        assert_eq!(s.instances[0].key, "k8s");
        match s.backend {
            Backend::Pkcs11 { sessions, ref token, .. } => {
                assert_eq!(sessions, envelope_plugin_pkcs11::pool::DEFAULT_SESSIONS);
                assert_eq!(*token, envelope_plugin_pkcs11::TokenSelector::Label("kms".into()));
            }
            ref other => panic!("pkcs11 expected: {other:?}"),
        }
        let file = d.path().join("c.yaml");
        std::fs::write(
            &file,
            format!(
                "backend: pkcs11\nmodule: {}\ntoken-serial: abc\npin-file: {}\npkcs11-sessions: 3\ninstances:\n  - socket: /tmp/a.sock\n    key: one\n    provider-name: a\n  - socket: /tmp/b.sock\n    key: two\n    provider-name: b\n",
                module.display(),
                pin.display()
            ),
        )
        .unwrap();
        let s = resolve(PluginArgs { config: Some(file), socket: vec![], ..args() }).unwrap();
        assert_eq!(s.instances.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert!(matches!(s.backend, Backend::Pkcs11 { sessions: 3, .. }));

        let mut loose = ok();
        let open_pin = d.path().join("open-pin");
        std::fs::write(&open_pin, "5678\n").unwrap();
        std::fs::set_permissions(&open_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
        loose.pin_file = Some(open_pin);
        for (a, want) in [
            (PluginArgs { key_label: vec![], ..ok() }, "needs --key-label"),
            (PluginArgs { module: None, ..ok() }, "needs --module"),
            (PluginArgs { token_label: None, ..ok() }, "--token-label or --token-serial"),
            (PluginArgs { token_serial: Some("x".into()), ..ok() }, "not both"),
            (PluginArgs { pin_file: None, ..ok() }, "needs --pin-file"),
            (loose, "chmod 600"),
            (PluginArgs { pkcs11_sessions: Some(0), ..ok() }, "between 1 and"),
            (PluginArgs { key: vec!["a".into()], ..ok() }, "not both"),
            (PluginArgs { backend: None, ..ok() }, "apply to the pkcs11 backend"),
        ] {
            let e = format!("{:#}", resolve(a).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("5678"), "the PIN never appears: {e}");
        }
    }

    #[test]
    fn defaults_are_safe() {
        let s = resolve(args()).unwrap();
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.http_addr.unwrap().to_string(), "127.0.0.1:8423");
        assert_eq!(s.status_version, "v2beta1");
        assert!(s.health_interval <= Duration::from_secs(30));
        assert!(s.create_key);
    }

    #[test]
    fn file_then_flags_precedence() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "socket-mode: 0660\nkey: fromfile\nhealth-interval: 2s\n").unwrap();
        let s = resolve(PluginArgs { config: Some(f.clone()), ..args() }).unwrap();
        assert_eq!(s.socket_mode, 0o660);
        assert_eq!(s.instances[0].key, "fromfile");
        assert_eq!(s.health_interval, Duration::from_secs(2));
        let s = resolve(PluginArgs { config: Some(f), key: vec!["flag".into()], ..args() }).unwrap();
        assert_eq!(s.instances[0].key, "flag");
    }

    #[test]
    fn store_from_file_or_flag() {
        assert!(matches!(resolve(args()).unwrap().store, envelope_keystore::Location::DataDir));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "store: postgres://envelope@db/envelope?sslmode=require\n").unwrap();
        let s = resolve(PluginArgs { config: Some(f.clone()), ..args() }).unwrap();
        assert!(s.store.is_shared(), "{:?}", s.store);
        let s = resolve(PluginArgs { config: Some(f), store: Some("sqlite".into()), ..args() }).unwrap();
        assert!(matches!(s.store, envelope_keystore::Location::DataDir));
    }

    #[test]
    fn bad_values_are_rejected_with_clear_messages() {
        let cases: Vec<(PluginArgs, &str)> = vec![
            (PluginArgs { socket: vec!["rel.sock".into()], ..args() }, "absolute"),
            (PluginArgs { socket_mode: Some("999".into()), ..args() }, "octal"),
            (PluginArgs { socket_mode: Some("0400".into()), ..args() }, "owner"),
            (PluginArgs { http_addr: Some("nohost".into()), ..args() }, "HOST:PORT"),
            (PluginArgs { status_version: Some("v3".into()), ..args() }, "v2 or v2beta1"),
            (PluginArgs { kms_api_version: Some("v3".into()), ..args() }, "v2 or v1"),
            (PluginArgs { health_interval: Some("5 parsecs".into()), ..args() }, "duration"),
            (PluginArgs { store: Some("mysql://db".into()), ..args() }, "postgres://"),
            (
                PluginArgs {
                    store: Some("postgres://db/k".into()),
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    ..args()
                },
                "store applies to the embedded backend",
            ),
            (PluginArgs { health_interval: Some("1h".into()), ..args() }, "at most 30s"),
            (PluginArgs { log_format: Some("xml".into()), ..args() }, "text or json"),
            (PluginArgs { key: vec!["bad key!".into()], ..args() }, "key"),
            (PluginArgs { key: vec!["a".into(), "b".into()], ..args() }, "one --socket per --key"),
            (
                PluginArgs {
                    key: vec!["a".into(), "b".into()],
                    socket: vec!["/tmp/a.sock".into(), "/tmp/a.sock".into()],
                    provider_name: vec!["x".into(), "y".into()],
                    ..args()
                },
                "socket /tmp/a.sock is given twice",
            ),
            (
                PluginArgs {
                    key: vec!["a".into(), "b".into()],
                    socket: vec!["/tmp/a.sock".into(), "/tmp/b.sock".into()],
                    provider_name: vec!["x".into(), "x".into()],
                    ..args()
                },
                "provider-name x is given twice",
            ),
            (PluginArgs { provider_name: vec!["a:b".into()], ..args() }, "no ':'"),
            (PluginArgs { encryption_context: vec!["a=b".into()], ..args() }, "aws backend only"),
            (PluginArgs { health_probe: Some("describe-key".into()), ..args() }, "applies to the aws backend"),
            (
                PluginArgs {
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    fips: true,
                    endpoint: Some("https://kms.internal".into()),
                    ..args()
                },
                "--fips",
            ),
            (
                PluginArgs {
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    ca_bundle: Some("/nonexistent/ca.pem".into()),
                    ..args()
                },
                "ca-bundle",
            ),
            (
                PluginArgs {
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    ca_bundle: Some("/etc/hostname".into()),
                    ..args()
                },
                "no PEM certificate",
            ),
            (PluginArgs { fips: true, ..args() }, "apply to the aws backend"),
            (PluginArgs { ca_bundle: Some("/etc/hostname".into()), ..args() }, "apply to the aws backend"),
            (PluginArgs { request_timeout: Some("500000000000y".into()), ..args() }, "at most 1h"),
            (PluginArgs { shutdown_grace: Some("2h".into()), ..args() }, "at most 1h"),
            (
                PluginArgs {
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    max_in_flight: Some(usize::MAX),
                    ..args()
                },
                "between 1 and",
            ),
            (
                PluginArgs {
                    backend: Some("aws".into()),
                    key: vec!["k".into()],
                    health_probe: Some("ping".into()),
                    ..args()
                },
                "round-trip or describe-key",
            ),
            (PluginArgs { socket_group: Some("no-such-group-xyz".into()), ..args() }, "does not exist"),
        ];
        for (a, want) in cases {
            let e = format!("{:#}", resolve(a).unwrap_err());
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn unknown_file_keys_and_garbage_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        for (i, text) in ["sockett: /x\n", "[unclosed", "socket: [1, 2]\n", "\u{0}\u{1}binary"].iter().enumerate() {
            let f = d.path().join(format!("c{i}.yaml"));
            std::fs::write(&f, text).unwrap();
            assert!(resolve(PluginArgs { config: Some(f), ..args() }).is_err(), "{text:?}");
        }
    }

    #[test]
    fn single_instance_defaults() {
        let s = resolve(args()).unwrap();
        assert_eq!(s.instances.len(), 1);
        assert_eq!(s.instances[0].socket, "/tmp/x.sock");
        assert_eq!(s.instances[0].key, "kubernetes");
        assert_eq!(s.instances[0].provider_name, "envelope");
    }

    #[test]
    fn key_socket_pairs_make_instances_in_order() {
        let a = PluginArgs {
            key: vec!["alias/a".into(), "alias/b".into()],
            socket: vec!["/tmp/a.sock".into(), "@b".into()],
            provider_name: vec!["envelope".into(), "envelope-b".into()],
            ..args()
        };
        let s = resolve(a).unwrap();
        let got: Vec<_> =
            s.instances.iter().map(|i| (i.socket.as_str(), i.key.as_str(), i.provider_name.as_str())).collect();
        assert_eq!(got, vec![("/tmp/a.sock", "alias/a", "envelope"), ("@b", "alias/b", "envelope-b")]);
        // Names follow their keys when the order changes (the step of a key migration).
        let swapped = PluginArgs {
            key: vec!["alias/b".into(), "alias/a".into()],
            socket: vec!["@b".into(), "/tmp/a.sock".into()],
            provider_name: vec!["envelope-b".into(), "envelope".into()],
            ..args()
        };
        let s = resolve(swapped).unwrap();
        let got: Vec<_> = s.instances.iter().map(|i| (i.key.as_str(), i.provider_name.as_str())).collect();
        assert_eq!(got, vec![("alias/b", "envelope-b"), ("alias/a", "envelope")]);
        // Without names, or with a count that does not match, several instances are refused.
        for names in [vec![], vec!["only-one".to_string()]] {
            let a = PluginArgs {
                key: vec!["alias/a".into(), "alias/b".into()],
                socket: vec!["/tmp/a.sock".into(), "@b".into()],
                provider_name: names,
                ..args()
            };
            let e = format!("{:#}", resolve(a).unwrap_err());
            assert!(e.contains("provider"), "{e}");
        }
    }

    #[test]
    fn file_instances_with_their_own_context() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(
            &f,
            "backend: aws\nencryption-context: {cluster: prod}\ninstances:\n  - socket: /tmp/a.sock\n    key: alias/a\n    provider-name: primary\n    encryption-context: {tenant: a}\n  - socket: /tmp/b.sock\n    key: arn:aws:kms:us-east-1:111122223333:key/b\n    provider-name: previous\n    health-probe: describe-key\n",
        )
        .unwrap();
        let s = resolve(PluginArgs { config: Some(f.clone()), socket: vec![], ..args() }).unwrap();
        assert_eq!(s.instances.len(), 2);
        assert_eq!(s.instances[0].provider_name, "primary");
        assert_eq!(s.instances[1].provider_name, "previous");
        assert_eq!(s.instances[0].encryption_context.get("tenant").map(String::as_str), Some("a"));
        assert_eq!(s.instances[0].encryption_context.get("cluster").map(String::as_str), Some("prod"));
        assert_eq!(s.instances[1].encryption_context.get("tenant"), None);
        assert_eq!(s.instances[1].encryption_context.get("cluster").map(String::as_str), Some("prod"));
        assert!(s.instances[0].round_trip_probe, "round trip by default");
        assert!(!s.instances[1].round_trip_probe, "describe-key for a decrypt-only key");
        // Flags and the list do not mix.
        let e = resolve(PluginArgs { config: Some(f), ..args() }).unwrap_err();
        assert!(format!("{e:#}").contains("cannot be combined"), "{e:#}");
    }

    #[test]
    fn local_kek_is_on_for_remote_backends_off_by_flag_or_per_instance() {
        let aws = |a: PluginArgs| resolve(PluginArgs { backend: Some("aws".into()), key: vec!["k".into()], ..a });
        let s = aws(args()).unwrap();
        assert!(s.instances[0].local_kek, "on by default");
        assert_eq!(s.local_kek, envelope_plugin::KekConfig::default());
        assert!(!aws(PluginArgs { no_local_kek: true, ..args() }).unwrap().instances[0].local_kek);
        let s = aws(PluginArgs {
            local_kek_max_uses: Some(5),
            local_kek_max_age: Some("1h".into()),
            local_kek_cache_ttl: Some("10m".into()),
            local_kek_cache_size: Some(7),
            ..args()
        })
        .unwrap();
        assert_eq!(
            (s.local_kek.max_uses, s.local_kek.max_age, s.local_kek.cache_ttl, s.local_kek.cache_size),
            (5, Duration::from_secs(3600), Duration::from_secs(600), 7)
        );
        let e = aws(PluginArgs { local_kek_max_uses: Some(0), ..args() }).unwrap_err();
        assert!(format!("{e:#}").contains("max uses"), "{e:#}");
        // The embedded key store is local: no layer, and its limits are refused.
        let s = resolve(args()).unwrap();
        assert!(!s.instances[0].local_kek);
        let e = resolve(PluginArgs { local_kek_cache_size: Some(3), ..args() }).unwrap_err();
        assert!(format!("{e:#}").contains("apply to the aws and pkcs11 backends"), "{e:#}");

        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(
            &f,
            "backend: aws\nlocal-kek-cache-ttl: 5m\ninstances:\n  - socket: /tmp/a.sock\n    key: alias/a\n    provider-name: a\n  - socket: /tmp/b.sock\n    key: alias/b\n    provider-name: b\n    local-kek: false\n",
        )
        .unwrap();
        let s = resolve(PluginArgs { config: Some(f.clone()), socket: vec![], ..args() }).unwrap();
        assert_eq!((s.instances[0].local_kek, s.instances[1].local_kek), (true, false));
        assert_eq!(s.local_kek.cache_ttl, Duration::from_secs(300));
        std::fs::write(&f, "local-kek: false\ninstances:\n  - socket: /tmp/a.sock\n    key: a\n    local-kek: true\n")
            .unwrap();
        let e = resolve(PluginArgs { config: Some(f), socket: vec![], ..args() }).unwrap_err();
        assert!(format!("{e:#}").contains("local-kek applies to the aws and pkcs11"), "{e:#}");
    }

    #[test]
    fn file_instances_need_socket_and_key() {
        let d = tempfile::tempdir().unwrap();
        for (i, text) in [
            "instances: []\n",
            "instances:\n  - key: a\n",
            "instances:\n  - socket: /tmp/a.sock\n",
            "key: k\ninstances:\n  - {socket: /tmp/a.sock, key: a}\n",
        ]
        .iter()
        .enumerate()
        {
            let f = d.path().join(format!("c{i}.yaml"));
            std::fs::write(&f, text).unwrap();
            assert!(resolve(PluginArgs { config: Some(f), socket: vec![], ..args() }).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_damaged_ca_bundle_is_a_configuration_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ca.pem");
        std::fs::write(&f, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n").unwrap();
        let e = CaBundle::load(&f).unwrap_err();
        assert!(format!("{e:#}").contains("ca-bundle"), "{e:#}");
        std::fs::write(&f, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        assert!(CaBundle::load(&f).is_err(), "DER that is no certificate");
    }
}
