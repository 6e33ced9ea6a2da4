//! `envelope kms serve`: the self-hosted key server speaking the AWS KMS JSON API. Parses and
//! checks the flags, opens the key store, loads (or generates) credentials, then hands a bound
//! listener and a SIGTERM/SIGINT shutdown future to `envelope_kms_server::serve`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use envelope_keystore::KeyStore;
use envelope_kms_server::{Config, Credential, CredentialStore, Server};
use zeroize::Zeroizing;

use crate::EXIT_CONFIG;

/// Options of `envelope kms`.
#[derive(Debug, Args)]
pub struct KmsArgs {
    #[command(subcommand)]
    pub command: KmsCommand,
}

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Serve the AWS KMS JSON API (SigV4-authenticated) over HTTPS, or HTTP on loopback.
    Serve(Box<ServeArgs>),
    /// Write a consistent backup of the key database (sealed material only), with the root
    /// key's descriptor when it holds no secret (<OUT>.passphrase, <OUT>.pkcs11; back up a
    /// root.key file separately). Safe while the server runs. Works for the plugin's key store too.
    Backup(BackupArgs),
    /// Restore a backup into a data directory, after checking every key version unseals with
    /// the root key. Stop the server first.
    Restore(RestoreArgs),
    /// Move the key store's root key to another form (`file`, `passphrase-file:PATH`, or a
    /// `pkcs11:` URI: wrapped by an AES key in a PKCS#11 token) without rewriting the database;
    /// crash-safe (run it again to finish an interrupted one). Stop the server first.
    Reseal(KmsResealArgs),
    /// Search the audit log (and its rotated copies): filter by operation, user, access key,
    /// key, time or errors; `--follow` prints new records as they are written.
    Audit(crate::kms_audit::AuditArgs),
    /// Manage the access keys in the credentials file (add, list, rotate, remove); a running
    /// server picks up each change within a second, without a restart.
    Credentials(crate::kms_credentials::CredentialsArgs),
    /// Copy the key store to another engine (`--from sqlite --to postgres://…`, and back) in
    /// one transaction there, then verify it: the same rows read back, every version unsealed
    /// with the root key. The target must hold no key. Stop the servers first.
    Migrate(crate::kms_migrate::MigrateArgs),
}

/// Options of `envelope kms reseal`.
#[derive(Debug, Args)]
pub struct KmsResealArgs {
    /// Data directory of the key store.
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub reseal: crate::reseal::ResealArgs,
}

/// Options of `envelope kms backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Data directory of the key store to back up.
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Backup file to write (must not exist; written with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Options of `envelope kms restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Data directory to restore into.
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Backup file written by `envelope kms backup`.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The backed-up store's root key: a root key file to install with it, `file` (the
    /// root.key already in the data directory, the default), `passphrase-file:PATH`, or a
    /// `pkcs11:` URI naming the token key that wrapped it (as for `kms serve` and the plugin).
    #[arg(long, value_name = "ROOT", conflicts_with = "root_passphrase_file")]
    pub root_key: Option<String>,
    /// For a store whose root key comes from a passphrase: file holding the passphrase.
    #[arg(long, env = "ENVELOPE_ROOT_PASSPHRASE_FILE", value_name = "FILE")]
    pub root_passphrase_file: Option<PathBuf>,
    /// The root's descriptor saved by the backup, for a passphrase or pkcs11 root (default:
    /// <FROM>.passphrase or <FROM>.pkcs11; for pkcs11 the store's root.pkcs11 serves too).
    #[arg(long, value_name = "FILE", alias = "passphrase-params")]
    pub root_params: Option<PathBuf>,
    /// Replace an existing database in the data directory.
    #[arg(long)]
    pub force: bool,
}

/// Options of `envelope kms serve`.
#[derive(Debug, Args)]
#[command(after_help = "Point any AWS client at it, e.g.\n  aws --endpoint-url http://127.0.0.1:4599 kms create-key\n\
Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 64 for invalid configuration, 69 when a port to listen on is taken, 1 for runtime failures.")]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs --tls-cert/--tls-key (or
    /// --insecure-plain-http).
    #[arg(long, env = "ENVELOPE_KMS_LISTEN", default_value = "127.0.0.1:4599", value_name = "HOST:PORT")]
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, env = "ENVELOPE_KMS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, env = "ENVELOPE_KMS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (credentials' signatures still protect
    /// integrity, but plaintext and data keys would cross the network unencrypted).
    #[arg(long)]
    pub insecure_plain_http: bool,
    /// Data directory of the key store (created on first start, mode 0700).
    /// Default: /var/lib/envelope/kms as root, else ~/.local/share/envelope/kms.
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the keys are: `sqlite` (keystore.db in the data directory) or a PostgreSQL URL
    /// shared by several servers (replicas), e.g.
    /// `postgres://envelope@db:5432/envelope?sslmode=require&sslrootcert=/etc/envelope/db-ca.pem`.
    /// The root key stays in each replica's data directory (or its token). Prefer the
    /// environment variable to the flag when the URL holds a password.
    #[arg(long, env = "ENVELOPE_KMS_STORE", default_value = "sqlite", value_name = "STORE")]
    pub store: String,
    /// With a PostgreSQL store: the longest time a change made through another replica takes to
    /// be seen here if its notification is lost (notifications usually take milliseconds).
    #[arg(long, env = "ENVELOPE_KMS_STORE_REFRESH", default_value = "5s", value_name = "DURATION")]
    pub store_refresh: String,
    /// Derive the root key from the passphrase in this file (PBKDF2-HMAC-SHA256) instead of
    /// keeping a root.key file; only a salt and a verifier are stored. Fixed when the store is
    /// created.
    #[arg(long, env = "ENVELOPE_ROOT_PASSPHRASE_FILE", value_name = "FILE", conflicts_with = "root_key")]
    pub root_passphrase_file: Option<PathBuf>,
    /// Keep the root key wrapped by an AES key inside a PKCS#11 token (root.pkcs11; no usable
    /// root key on disk): an RFC 7512 URI,
    /// `pkcs11:token=LABEL;object=KEY?module-path=MODULE&pin-source=file:PINFILE` (`id=%01…`
    /// to name the key by CKA_ID, `serial=` instead of `token=`). The PIN file must be 0600.
    #[arg(long, env = "ENVELOPE_KMS_ROOT_KEY", value_name = "PKCS11-URI")]
    pub root_key: Option<String>,
    /// Seed file (YAML): keys with aliases, policies, tags and rotation to create at start if
    /// their alias does not exist yet; existing keys are never changed.
    #[arg(long, env = "ENVELOPE_KMS_SEED", value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// Credentials file (mode 0600): a YAML list of {access_key_id, secret_access_key,
    /// principal, policy?}; `policy` is the principal's identity policy (none: unrestricted).
    /// Default: <data-dir>/credentials.yaml, generated on first start with one administrator
    /// and printed once.
    #[arg(long, env = "ENVELOPE_KMS_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Region the server answers for (SigV4 scope and ARNs). Repeat it (or separate with
    /// commas) to serve several regions, each with its own keys, aliases and ARNs, picked by
    /// the request's SigV4 credential scope: the first is the data directory's own store; each
    /// other one is kept in <data-dir>/regions/<REGION>/ (SQLite) or in the schema
    /// envelope_<REGION> of the --store database (PostgreSQL), under the same root key.
    #[arg(long, env = "ENVELOPE_KMS_REGION", default_value = "us-east-1", value_name = "REGION", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub region: Vec<String>,
    /// 12-digit account id used in ARNs.
    #[arg(long, env = "ENVELOPE_KMS_ACCOUNT_ID", default_value = "111122223333", value_name = "ID")]
    pub account_id: String,
    /// Audit log: one CloudTrail-shaped JSON record per request, appended and flushed before the
    /// response. Default: <data-dir>/audit.log. "off" disables it.
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<String>,
    /// Refuse requests (KMSInternalException) whose audit record cannot be written.
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_FAIL_CLOSED")]
    pub audit_fail_closed: bool,
    /// Rotate the audit log when it reaches this size (e.g. 100MiB; at least 4KiB): it moves to
    /// <audit-log>.<UTC time>, compressed to .gz. Default: no rotation by size.
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_ROTATE_SIZE", value_name = "SIZE")]
    pub audit_rotate_size: Option<String>,
    /// Rotate the audit log when it has been written to for this long (e.g. 24h; at least 1s).
    /// Default: no rotation by age.
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_ROTATE_AGE", value_name = "DURATION")]
    pub audit_rotate_age: Option<String>,
    /// Rotated audit log copies to keep; older ones are deleted (0: keep all).
    #[arg(long, env = "ENVELOPE_KMS_AUDIT_RETAIN", default_value_t = 0, value_name = "N")]
    pub audit_retain: usize,
    /// Address for /livez, /readyz and /metrics ("off" to disable).
    #[arg(long, env = "ENVELOPE_KMS_HTTP_ADDR", default_value = "127.0.0.1:4598", value_name = "HOST:PORT")]
    pub http_addr: String,
    /// Most KMS keys the account may hold (pending deletion included); CreateKey beyond it
    /// answers LimitExceededException.
    #[arg(long, env = "ENVELOPE_KMS_MAX_KEYS", default_value_t = envelope_kms_server::DEFAULT_MAX_KEYS, value_name = "N")]
    pub max_keys: usize,
    /// Most on-demand rotations (RotateKeyOnDemand) per key; beyond it the call answers
    /// LimitExceededException, as AWS's quota does.
    #[arg(long, env = "ENVELOPE_KMS_MAX_ON_DEMAND_ROTATIONS", default_value_t = envelope_kms_server::DEFAULT_MAX_ON_DEMAND_ROTATIONS, value_name = "N")]
    pub max_on_demand_rotations: usize,
    /// Most client connections served at once; further ones wait in the listen backlog.
    #[arg(long, env = "ENVELOPE_KMS_MAX_CONNECTIONS", default_value_t = envelope_kms_server::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and then its body; also how long an idle
    /// keep-alive connection stays open (100ms to 1h).
    #[arg(long, env = "ENVELOPE_KMS_CLIENT_TIMEOUT", default_value = "30s", value_name = "DURATION")]
    pub client_timeout: String,
    /// Log format: text or json.
    #[arg(long, env = "ENVELOPE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log level or filter (error, warn, info, debug, or a RUST_LOG-style filter).
    #[arg(long, env = "ENVELOPE_LOG_LEVEL", default_value = "info", value_name = "FILTER")]
    pub log_level: String,
}

/// Name of the generated credentials file inside the data directory.
pub(crate) const CREDENTIALS_FILE: &str = "credentials.yaml";

/// How often a running server checks its credentials file for changes.
const CREDENTIALS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(args: KmsArgs) -> ExitCode {
    match args.command {
        KmsCommand::Serve(a) => serve(*a),
        KmsCommand::Backup(a) => report(backup(a)),
        KmsCommand::Restore(a) => report(restore(a)),
        KmsCommand::Audit(a) => report(crate::kms_audit::run(a)),
        KmsCommand::Credentials(a) => report(crate::kms_credentials::run(a)),
        KmsCommand::Reseal(a) => report(crate::reseal::run(&a.data_dir.unwrap_or_else(default_kms_dir), &a.reseal)),
        KmsCommand::Migrate(a) => report(crate::kms_migrate::run(a)),
    }
}

fn report(r: Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envelope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn default_kms_dir() -> PathBuf {
    crate::config::default_data_dir().join("kms")
}

fn backup(a: BackupArgs) -> Result<()> {
    let dir = a.data_dir.unwrap_or_else(default_kms_dir);
    // The copy is taken without unsealing anything: no root key or passphrase is needed.
    let keys = envelope_keystore::backup::backup_dir(&dir, &a.out)
        .with_context(|| format!("cannot back up {} to {}", dir.display(), a.out.display()))?;
    println!("backed up {keys} key(s) from {} to {}", dir.display(), a.out.display());
    for note in crate::reseal::backup_root_notes(&dir, &a.out) {
        println!("{note}");
    }
    let creds = dir.join(CREDENTIALS_FILE);
    if creds.exists() {
        println!(
            "NOTE: {} (the key server's access keys) is NOT in the backup: copy it (mode 0600) with the root key, \
             or after a restore the server generates a new access key and every client, the plugin too, stops authenticating",
            creds.display()
        );
    }
    Ok(())
}

fn restore(a: RestoreArgs) -> Result<()> {
    let dir = a.data_dir.unwrap_or_else(default_kms_dir);
    let root = crate::reseal::RestoreRootArgs {
        root_key: a.root_key.as_deref(),
        passphrase_file: a.root_passphrase_file.as_deref(),
        params: a.root_params.as_deref(),
    };
    let store = crate::reseal::restore(&dir, &a.from, root, a.force)
        .with_context(|| format!("cannot restore {} into {}", a.from.display(), dir.display()))?;
    println!(
        "restored {} key(s) into {}; every key version unsealed with the root key",
        store.list()?.len(),
        dir.display()
    );
    if !dir.join(CREDENTIALS_FILE).exists() {
        println!(
            "NOTE: no {CREDENTIALS_FILE} in {}: copy the backed-up one there before `kms serve` (unless it is given --credentials), \
             or it generates a new access key and existing clients stop authenticating",
            dir.display()
        );
    }
    Ok(())
}

/// A size: a number of bytes, optionally with a unit (`KiB`, `MiB`, `GiB`, or `K`/`KB`, `M`/`MB`,
/// `G`/`GB` for powers of 1000).
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().with_context(|| format!("{s:?} is not a size like 100MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1000,
        "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => bail!("unknown size unit {other:?} (use KiB, MiB, GiB, KB, MB or GB)"),
    };
    n.checked_mul(mult).with_context(|| format!("{s:?} is too large"))
}

struct Settings {
    listen: SocketAddr,
    data_dir: PathBuf,
    store: envelope_keystore::StoreOptions,
    /// The regions after the first, with where each keeps its keys.
    other_regions: Vec<(String, envelope_keystore::StoreOptions)>,
    credentials: Option<PathBuf>,
    config: Config,
    audit_log: Option<PathBuf>,
    audit_fail_closed: bool,
    audit_rotation: envelope_kms_server::audit_rotate::Rotation,
    http_addr: Option<SocketAddr>,
    tls: Option<Arc<envelope_kms_server::tls::ServerConfig>>,
}

/// "invalid configuration: …", once (the key server's `Config` errors say it themselves).
fn config_error(e: &envelope_kms_server::KmsError) -> String {
    match e {
        envelope_kms_server::KmsError::Config(m) => format!("invalid configuration: {m}"),
        other => format!("invalid configuration: {other}"),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    crate::output::keep_serving();
    let settings = match resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("envelope: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::runtime::init_logging(args.log_format == "json", &args.log_level);
    crate::runtime::harden_process();
    let root = match (&args.root_passphrase_file, &args.root_key) {
        (None, Some(uri)) => match crate::reseal::pkcs11_root(uri) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("envelope: invalid configuration: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => envelope_keystore::RootSource::File,
        (Some(f), _) => match std::fs::read_to_string(f) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                envelope_keystore::RootSource::Passphrase(Zeroizing::new(
                    text.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
            Err(e) => {
                eprintln!("envelope: invalid configuration: cannot read --root-passphrase-file {}: {e}", f.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    // Every port first: a busy one stops the start before anything is created or announced
    // (no credentials file written, no "listening on" for a server that is not).
    let listeners = match bind_listeners(&settings) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("envelope: {e:#}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };

    let store = match KeyStore::open_with_options(&settings.data_dir, &root, &settings.store) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!(
                "envelope: cannot open the key store ({}, root key in {}): {e}",
                settings.store.location,
                settings.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(storage = %store.storage(), "key store open");
    let credentials = match load_credentials(&settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("envelope: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut server = match Server::new(store, credentials, settings.config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("envelope: {}", config_error(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for (region, options) in &settings.other_regions {
        if let envelope_keystore::Location::Sqlite(dir) = &options.location
            && let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
        {
            eprintln!("envelope: cannot create {} (region {region}): {e}", dir.display());
            return ExitCode::FAILURE;
        }
        let store = match KeyStore::open_with_options(&settings.data_dir, &root, options) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("envelope: cannot open the key store of region {region} ({}): {e}", options.location);
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(region = %region, storage = %store.storage(), "key store open");
        if let Err(e) = server.add_region(region, store) {
            eprintln!("envelope: {}", config_error(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let server = match &settings.audit_log {
        Some(path) => {
            match envelope_kms_server::audit::AuditLog::open_with(
                path,
                settings.audit_fail_closed,
                settings.audit_rotation,
            ) {
                Ok(log) => Arc::new(server.with_audit(log)),
                Err(e) => {
                    eprintln!("envelope: cannot open the audit log {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        None => Arc::new(server),
    };
    if let Some(seed) = &args.seed {
        match envelope_kms_server::seed::apply_file(&server, seed) {
            Ok(r) => {
                for a in &r.created {
                    println!("seed: created {a}");
                }
                for a in &r.existing {
                    println!("seed: {a} exists, left unchanged");
                }
            }
            Err(e) => {
                eprintln!("envelope: {}", config_error(&e));
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let rt = match crate::runtime::build(crate::runtime::Flavor::MultiThread) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("envelope: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_server(server, &settings, listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "key server stopped with an error");
            eprintln!("envelope: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(args: &ServeArgs) -> Result<Settings> {
    let addrs: Vec<SocketAddr> = args
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {:?} is not HOST:PORT", args.listen))?
        .collect();
    let Some(listen) = addrs.first().copied() else { bail!("--listen {:?} resolves to no address", args.listen) };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(envelope_kms_server::tls::load(c, k).map_err(|e| anyhow::anyhow!("{e}"))?),
        _ => None,
    };
    if tls.is_none() && !args.insecure_plain_http && !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!(
            "--listen {} is not a loopback address: serve HTTPS (--tls-cert, --tls-key) or force plain HTTP with --insecure-plain-http",
            args.listen
        );
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| crate::config::default_data_dir().join("kms"));
    if data_dir.as_os_str().is_empty() {
        bail!("--data-dir must not be empty");
    }
    let data_dir = if data_dir.is_absolute() { data_dir } else { std::env::current_dir()?.join(data_dir) };
    let store = envelope_keystore::StoreOptions {
        location: envelope_keystore::Location::parse(&args.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?,
        create: true,
        refresh_interval: crate::config::parse_duration("--store-refresh", &args.store_refresh)?,
    };
    let Some((home, others)) = args.region.split_first() else { bail!("--region must name a region") };
    let mut config = Config::new(home, &args.account_id);
    config.max_connections = args.max_connections;
    config.max_keys = args.max_keys;
    config.max_on_demand_rotations = args.max_on_demand_rotations;
    config.client_timeout = crate::config::parse_duration("--client-timeout", &args.client_timeout)?;
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut other_regions = Vec::new();
    for r in others {
        let mut c = config.clone();
        c.region = r.clone();
        c.validate().map_err(|e| anyhow::anyhow!("--region: {e}"))?;
        if r == home || other_regions.iter().any(|(o, _)| o == r) {
            bail!("--region {r} is given twice");
        }
        let location = store.location.partition(&data_dir, r).map_err(|e| anyhow::anyhow!("--region {r}: {e}"))?;
        other_regions.push((r.clone(), envelope_keystore::StoreOptions { location, ..store.clone() }));
    }
    if let Some(c) = args.credentials.as_ref().filter(|c| !c.is_file()) {
        bail!("--credentials {} is not a readable file", c.display());
    }
    let audit_log = match args.audit_log.as_deref() {
        Some("off") => None,
        Some("") => bail!("--audit-log must not be empty"),
        Some(p) => Some(PathBuf::from(p)),
        None => Some(data_dir.join("audit.log")),
    };
    if audit_log.is_none() && args.audit_fail_closed {
        bail!("--audit-fail-closed needs an audit log");
    }
    let audit_rotation = envelope_kms_server::audit_rotate::Rotation {
        max_bytes: args.audit_rotate_size.as_deref().map(parse_size).transpose().context("--audit-rotate-size")?,
        max_age: args
            .audit_rotate_age
            .as_deref()
            .map(|s| humantime::parse_duration(s.trim()).map_err(anyhow::Error::from))
            .transpose()
            .context("--audit-rotate-age")?,
        retain: args.audit_retain,
        compress: true,
    };
    if audit_rotation.max_bytes.is_some_and(|b| b < 4096) {
        bail!("--audit-rotate-size must be at least 4KiB");
    }
    if audit_rotation.max_age.is_some_and(|a| a < std::time::Duration::from_secs(1)) {
        bail!("--audit-rotate-age must be at least 1s");
    }
    if audit_log.is_none() && (audit_rotation.enabled() || args.audit_retain > 0) {
        bail!("--audit-rotate-size, --audit-rotate-age and --audit-retain need an audit log");
    }
    if args.audit_retain > 0 && !audit_rotation.enabled() {
        bail!("--audit-retain needs --audit-rotate-size or --audit-rotate-age");
    }
    let http_addr = if args.http_addr == "off" {
        None
    } else {
        Some(
            args.http_addr
                .parse::<SocketAddr>()
                .with_context(|| format!("--http-addr {:?} is not HOST:PORT (or \"off\")", args.http_addr))?,
        )
    };
    Ok(Settings {
        listen,
        data_dir,
        store,
        other_regions,
        credentials: args.credentials.clone(),
        config,
        audit_log,
        audit_fail_closed: args.audit_fail_closed,
        audit_rotation,
        http_addr,
        tls,
    })
}

/// The credentials file given, else `<data-dir>/credentials.yaml`, generated on first start.
fn load_credentials(s: &Settings) -> Result<CredentialStore> {
    if let Some(path) = &s.credentials {
        return CredentialStore::load(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let path = s.data_dir.join(CREDENTIALS_FILE);
    if path.exists() {
        tracing::info!(path = %path.display(), "using the credentials file from the data directory");
        return CredentialStore::load(&path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let principal = format!("arn:aws:iam::{}:user/admin", s.config.account_id);
    let (akid, secret) = envelope_kms_server::credentials::generate_access_key().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_credentials(&path, &akid, &secret, &principal)?;
    println!("envelope kms: generated an access key (shown once; saved to {}, mode 0600):", path.display());
    println!("  export AWS_ACCESS_KEY_ID={akid}");
    println!("  export AWS_SECRET_ACCESS_KEY={}", secret.as_str());
    println!("  export AWS_DEFAULT_REGION={}", s.config.region);
    println!("  # principal: {principal}");
    let admin = envelope_kms_server::policy::parse_identity(envelope_kms_server::policy::ADMIN_IDENTITY_POLICY)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    CredentialStore::new(vec![Credential::new(akid, secret, None, principal).with_policy(admin)])
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn write_credentials(path: &Path, akid: &str, secret: &str, principal: &str) -> Result<()> {
    let text = Zeroizing::new(format!(
        "# Credentials of `envelope kms serve`. Keep this file secret (mode 0600).\n\
         # `policy` is the principal's identity policy (this one: an administrator).\n\
         - access_key_id: {akid}\n  secret_access_key: '{secret}'\n  principal: {principal}\n  \
         policy: '{}'\n",
        envelope_kms_server::policy::ADMIN_IDENTITY_POLICY
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// What SIGHUP does: the audit log is reopened at its path, then the credentials file is read
/// again (a broken file keeps the current credentials). In that order, a request accepted with
/// a new access key is never recorded in the file log rotation moved away.
fn reload(server: &Server, credentials: &Path) {
    if let Some(log) = server.audit() {
        match log.reopen() {
            Ok(()) => tracing::info!(path = %log.path().display(), "SIGHUP: audit log reopened"),
            Err(e) => {
                tracing::error!(path = %log.path().display(), error = %e, "SIGHUP: cannot reopen the audit log; still writing the old file")
            }
        }
    }
    envelope_kms_server::credentials::reload(server, credentials, "SIGHUP");
}

/// Exit status when a port to listen on is taken (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// The API listener and, unless disabled, the health/metrics listener, bound (non-blocking).
struct Listeners {
    api: std::net::TcpListener,
    http: Option<std::net::TcpListener>,
}

fn bind_listeners(s: &Settings) -> Result<Listeners> {
    let bind = |addr: SocketAddr, what: &str| -> Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} ({what})"))?;
        l.set_nonblocking(true).with_context(|| format!("{addr}: set_nonblocking"))?;
        Ok(l)
    };
    let api = bind(s.listen, "--listen")?;
    let http = s.http_addr.map(|h| bind(h, "--http-addr")).transpose()?;
    Ok(Listeners { api, http })
}

async fn run_server(server: Arc<Server>, s: &Settings, listeners: Listeners) -> Result<()> {
    // Signal handlers first: a SIGTERM right after the banner must mean a clean shutdown.
    let mut signals = crate::runtime::shutdown_signals().context("cannot handle SIGTERM and SIGINT")?;
    // SIGHUP: re-read the credentials file and reopen the audit log (after log rotation),
    // without dropping connections.
    let credentials_path = s.credentials.clone().unwrap_or_else(|| s.data_dir.join(CREDENTIALS_FILE));
    let reloading = server.clone();
    let watched = credentials_path.clone();
    crate::runtime::on_hangup(move || reload(&reloading, &credentials_path)).context("cannot handle SIGHUP")?;
    // Edits by `envelope kms credentials` (or by hand) are picked up without a signal.
    let _watcher = envelope_kms_server::credentials::Watcher::start(server.clone(), watched, CREDENTIALS_POLL);
    let listener = tokio::net::TcpListener::from_std(listeners.api).context("listener")?;
    let addr = listener.local_addr().context("listener address")?;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    println!(
        "envelope kms serve listening on {scheme}://{addr} (region {}, account {}, data {})",
        std::iter::once(s.config.region.as_str())
            .chain(s.other_regions.iter().map(|(r, _)| r.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        s.config.account_id,
        s.data_dir.display()
    );
    println!("  try: aws --endpoint-url {scheme}://{addr} kms create-key");
    if let Some(a) = &s.audit_log {
        let rotation = match (s.audit_rotation.max_bytes, s.audit_rotation.max_age) {
            (None, None) => String::new(),
            (size, age) => format!(
                " (rotated at {}{}{}, keeping {})",
                size.map(|b| format!("{b} bytes")).unwrap_or_default(),
                if size.is_some() && age.is_some() { " or " } else { "" },
                age.map(|a| humantime::format_duration(a).to_string()).unwrap_or_default(),
                if s.audit_rotation.retain == 0 {
                    "all copies".to_string()
                } else {
                    format!("{} copies", s.audit_rotation.retain)
                }
            ),
        };
        println!("  audit log: {}{}{rotation}", a.display(), if s.audit_fail_closed { " (fail-closed)" } else { "" });
    }
    let (obs_stop, obs_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = listeners.http {
        let l = tokio::net::TcpListener::from_std(l).context("health listener")?;
        let h = l.local_addr().context("health listener address")?;
        let (srv, mut rx) = (server.clone(), obs_rx.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = envelope_kms_server::metrics::serve_observability(l, srv, stop).await {
                tracing::error!(error = %e, "health/metrics server failed");
            }
        });
        println!("  health and metrics: http://{h}/livez /readyz /metrics");
    }
    tracing::info!(addr = %addr, region = %s.config.region, "serving the AWS KMS API");
    let shutdown = async move {
        if let Some(name) = signals.recv().await {
            tracing::info!("received {name}");
        }
    };
    match &s.tls {
        Some(tls) => envelope_kms_server::tls::serve_tls(listener, server, tls.clone(), shutdown)
            .await
            .context("HTTPS server failed")?,
        None => envelope_kms_server::serve(listener, server, shutdown).await.context("HTTP server failed")?,
    }
    let _ = obs_stop.send(true);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str) -> ServeArgs {
        ServeArgs {
            listen: listen.into(),
            data_dir: Some("/tmp/envelope-kms-test".into()),
            store: "sqlite".into(),
            store_refresh: "5s".into(),
            credentials: None,
            root_key: None,
            region: vec!["us-east-1".into()],
            account_id: "111122223333".into(),
            log_format: "text".into(),
            log_level: "info".into(),
            audit_log: None,
            audit_fail_closed: false,
            audit_rotate_size: None,
            audit_rotate_age: None,
            audit_retain: 0,
            http_addr: "127.0.0.1:4598".into(),
            tls_cert: None,
            tls_key: None,
            insecure_plain_http: false,
            root_passphrase_file: None,
            seed: None,
            max_connections: 1024,
            max_keys: 100,
            max_on_demand_rotations: 10,
            client_timeout: "30s".into(),
        }
    }

    #[test]
    fn audit_rotation_settings() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("2 GB").unwrap(), 2_000_000_000);
        assert!(parse_size("ten").is_err() && parse_size("5PB").is_err() && parse_size("").is_err());
        let mut a = args("127.0.0.1:4599");
        a.audit_rotate_size = Some("64MiB".into());
        a.audit_rotate_age = Some("1d".into());
        a.audit_retain = 7;
        let r = resolve(&a).unwrap().audit_rotation;
        assert_eq!(
            (r.max_bytes, r.max_age, r.retain),
            (Some(64 << 20), Some(std::time::Duration::from_secs(86400)), 7)
        );
        a.audit_rotate_size = Some("1KiB".into());
        assert!(resolve(&a).is_err(), "too small");
        let mut a = args("127.0.0.1:4599");
        a.audit_retain = 3;
        assert!(resolve(&a).is_err(), "retention without rotation");
        a.audit_rotate_size = Some("1MiB".into());
        a.audit_log = Some("off".into());
        assert!(resolve(&a).is_err(), "rotation without a log");
    }

    #[test]
    fn each_region_after_the_first_gets_a_store_of_its_own() {
        let mut a = args("127.0.0.1:4599");
        a.region = vec!["us-east-1".into(), "eu-west-1".into(), "us-west-2".into()];
        let s = resolve(&a).unwrap();
        assert_eq!(s.config.region, "us-east-1");
        let places: Vec<String> = s.other_regions.iter().map(|(r, o)| format!("{r} {}", o.location)).collect();
        assert_eq!(
            places,
            [
                "eu-west-1 sqlite:/tmp/envelope-kms-test/regions/eu-west-1",
                "us-west-2 sqlite:/tmp/envelope-kms-test/regions/us-west-2"
            ]
        );
        a.store = "postgres://kms@db/kms".into();
        let s = resolve(&a).unwrap();
        assert_eq!(s.other_regions[0].1.location.to_string(), "postgres://kms@db/kms (schema envelope_eu_west_1)");
        for bad in [vec!["us-east-1", "us-east-1"], vec!["us-east-1", "EU"], vec![]] {
            a.region = bad.iter().map(|r| r.to_string()).collect();
            assert!(resolve(&a).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_loopback_listen_addresses() {
        assert!(resolve(&args("127.0.0.1:4599")).is_ok());
        assert!(resolve(&args("[::1]:4599")).is_ok());
        assert!(resolve(&args("0.0.0.0:4599")).is_err());
        assert!(resolve(&args("10.1.2.3:4599")).is_err());
        assert!(resolve(&args("no-port")).is_err());
        let mut a = args("127.0.0.1:1");
        a.account_id = "123".into();
        assert!(resolve(&a).is_err());
    }

    #[test]
    fn connection_limits_are_validated() {
        let mut a = args("127.0.0.1:4599");
        a.max_connections = 0;
        assert!(resolve(&a).is_err());
        let mut a = args("127.0.0.1:4599");
        a.client_timeout = "2h".into();
        assert!(resolve(&a).is_err());
        let mut a = args("127.0.0.1:4599");
        a.client_timeout = "soon".into();
        assert!(resolve(&a).is_err());
        let mut a = args("127.0.0.1:4599");
        a.client_timeout = "5s".into();
        a.max_connections = 64;
        let s = resolve(&a).unwrap();
        assert_eq!((s.config.max_connections, s.config.client_timeout), (64, std::time::Duration::from_secs(5)));
    }

    #[test]
    fn store_settings() {
        let s = resolve(&args("127.0.0.1:4599")).unwrap();
        assert!(matches!(s.store.location, envelope_keystore::Location::DataDir));
        assert_eq!(s.store.refresh_interval, std::time::Duration::from_secs(5));
        let mut a = args("127.0.0.1:4599");
        a.store = "postgres://kms:secret@db/kms?sslmode=require".into();
        a.store_refresh = "2s".into();
        let s = resolve(&a).unwrap();
        assert!(s.store.location.is_shared());
        assert_eq!(s.store.location.to_string(), "postgres://kms:***@db/kms?sslmode=require");
        assert_eq!(s.store.refresh_interval, std::time::Duration::from_secs(2));
        a.store = "redis://db".into();
        let e = format!("{:#}", resolve(&a).err().unwrap());
        assert!(e.contains("--store") && e.contains("postgres://"), "{e}");
        a.store = "sqlite".into();
        a.store_refresh = "0s".into();
        assert!(resolve(&a).is_err());
    }

    #[test]
    fn generated_credentials_load_back() {
        let (akid, secret) = envelope_kms_server::credentials::generate_access_key().unwrap();
        assert!(akid.starts_with("AKIA") && akid.len() == 20);
        assert_eq!(secret.len(), 40);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CREDENTIALS_FILE);
        write_credentials(&p, &akid, &secret, "arn:aws:iam::111122223333:user/admin").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = CredentialStore::load(&p).unwrap();
        let admin = loaded.get(&akid).expect("the generated access key");
        assert!(admin.policy.is_some(), "the generated credential carries an administrator identity policy");
        assert!(write_credentials(&p, &akid, &secret, "arn:x").is_err(), "never overwrites");
    }
}
