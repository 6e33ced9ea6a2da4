//! Command-line definitions (clap derive). Every flag of `plugin` can also come from an
//! environment variable or the YAML file given with `--config`; flags win over the
//! environment, which wins over the file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// envelope: envelope encryption of Kubernetes Secrets with a master key you control.
#[derive(Debug, Parser)]
#[command(name = "envelope", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Kubernetes KMS plugin (KMS v2 and v1beta1 on one Unix socket).
    Plugin(Box<PluginArgs>),
    /// Manage keys of the embedded key store.
    Key(KeyArgs),
    /// Load-test a running component and report throughput, latency and memory.
    Bench(crate::bench::BenchArgs),
    /// Read etcd and report, for every object, whether and how it is encrypted and with which key.
    Inspect(crate::inspect_cmd::InspectArgs),
    /// Decrypt one stored object (disaster recovery) and print it as kubectl would.
    Decrypt(crate::inspect_cmd::DecryptArgs),
    /// Run the self-hosted key server that speaks the AWS KMS API (`envelope kms serve`).
    Kms(crate::kms_cmd::KmsArgs),
    /// Rewrite stored objects through the Kubernetes API so they are stored under the current
    /// provider and key_id (after a key rotation or a provider migration).
    Reencrypt(crate::reencrypt::ReencryptArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(crate::manual::CompletionsArgs),
    /// Print the manual page, or write one per command into a directory (--out-dir).
    Man(crate::manual::ManArgs),
}

/// Options of `envelope plugin`.
#[derive(Debug, Args, Default)]
#[command(
    after_help = "Configuration precedence: flags > ENVELOPE_* environment variables > --config file > defaults.\n\
Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 64 for invalid configuration, 1 for runtime failures."
)]
pub struct PluginArgs {
    /// YAML configuration file; its keys are the long flag names (e.g. `socket`, `data-dir`,
    /// `health-interval`), plus `instances:` (a list of `socket`, `key`, `provider-name`,
    /// `encryption-context`, `health-probe`, `local-kek`) to serve several keys.
    #[arg(long, env = "ENVELOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve on (absolute path, or @name for a Linux abstract socket). Repeat
    /// together with --key to serve several keys from one process: the n-th --socket serves
    /// the n-th --key. [default: /run/envelope/kms.sock as root, else <data-dir>/kms.sock]
    #[arg(long, env = "ENVELOPE_SOCKET", value_name = "PATH")]
    pub socket: Vec<String>,
    /// Permission bits of the socket file, octal. [default: 0600]
    #[arg(long, env = "ENVELOPE_SOCKET_MODE", value_name = "OCTAL")]
    pub socket_mode: Option<String>,
    /// Group that should own the socket file (e.g. the group kube-apiserver runs as).
    #[arg(long, env = "ENVELOPE_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Data directory of the embedded key store (created on first start, mode 0700).
    /// [default: /var/lib/envelope as root, else ~/.local/share/envelope]
    #[arg(long, env = "ENVELOPE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Embedded backend: where the key store's root key comes from: `file` (root.key in
    /// --data-dir, the default), `passphrase-file:PATH` (derived from a passphrase; nothing
    /// usable on disk) or a `pkcs11:` URI (RFC 7512, with `module-path` and
    /// `pin-source=file:…`: wrapped by a key inside an HSM, "auto-unseal"). Fixed when the
    /// store is created; change it with `envelope key reseal`.
    #[arg(long, env = "ENVELOPE_ROOT_KEY", value_name = "ROOT")]
    pub root_key: Option<String>,
    /// Embedded backend: where the keys are: `sqlite` (keystore.db in --data-dir) or a
    /// PostgreSQL URL shared by every control-plane node's plugin, e.g.
    /// `postgres://envelope@db/envelope?sslmode=require&sslrootcert=/etc/envelope/db-ca.pem`;
    /// the root key stays in each node's --data-dir (or its token). Prefer the environment
    /// variable when the URL holds a password. [default: sqlite]
    #[arg(long, env = "ENVELOPE_STORE", value_name = "STORE")]
    pub store: Option<String>,
    /// Key backend: `embedded` (envelope's own key store in --data-dir), `aws` (any
    /// AWS-KMS-API endpoint: AWS KMS, a FIPS endpoint, `envelope kms serve`) or `pkcs11` (an
    /// AES-256 key inside a PKCS#11 token: an HSM or SoftHSM2). [default: embedded]
    #[arg(long, env = "ENVELOPE_BACKEND", value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Key to use. Embedded: an alias (`kubernetes` or `alias/kubernetes`) or a key id, created
    /// on first start if missing (unless --no-create-key). aws: a key ARN, key id or alias
    /// (required). Repeatable, paired with --socket: each pair is an instance with its own
    /// health, Status and metrics labels. [default: kubernetes (embedded)]
    #[arg(long, env = "ENVELOPE_KEY", value_name = "KEY")]
    pub key: Vec<String>,
    /// pkcs11 backend: CKA_LABEL of the AES-256 key in the token (the pkcs11 spelling of --key;
    /// repeatable, paired with --socket like --key). Make it with `envelope key create LABEL
    /// --backend pkcs11 …`.
    #[arg(long, value_name = "LABEL")]
    pub key_label: Vec<String>,
    /// pkcs11 backend: path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so, or the
    /// HSM vendor's library).
    #[arg(long, env = "ENVELOPE_PKCS11_MODULE", value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// pkcs11 backend: label of the token that holds the key (or --token-serial). Tokens are
    /// found by label or serial, never by slot number (slots move).
    #[arg(long, env = "ENVELOPE_PKCS11_TOKEN_LABEL", value_name = "LABEL")]
    pub token_label: Option<String>,
    /// pkcs11 backend: serial number of the token that holds the key (instead of --token-label).
    #[arg(long, env = "ENVELOPE_PKCS11_TOKEN_SERIAL", value_name = "SERIAL")]
    pub token_serial: Option<String>,
    /// pkcs11 backend: file holding the token's user PIN, mode 0600 or stricter (refused
    /// otherwise); read at each login, never logged. The PIN itself is never a flag or an
    /// environment variable.
    #[arg(long, env = "ENVELOPE_PKCS11_PIN_FILE", value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// pkcs11 backend: logged-in sessions per key: the most token calls at once (more wait, up
    /// to the caller's deadline). [default: 8]
    #[arg(long, env = "ENVELOPE_PKCS11_SESSIONS", value_name = "N")]
    pub pkcs11_sessions: Option<usize>,
    /// aws backend: region (else the standard AWS configuration chain).
    #[arg(long, env = "ENVELOPE_AWS_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// aws backend: endpoint URL (e.g. a FIPS endpoint or `envelope kms serve`). [default:
    /// $AWS_ENDPOINT_URL_KMS or $AWS_ENDPOINT_URL if set, else AWS KMS of the region]
    #[arg(long, env = "ENVELOPE_AWS_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// aws backend: use the region's FIPS 140 endpoint of AWS KMS (kms-fips.<region>.amazonaws.com).
    #[arg(long, env = "ENVELOPE_AWS_FIPS")]
    pub fips: bool,
    /// aws backend: PEM file of CA certificates to trust for an https:// endpoint, besides the
    /// system's (e.g. the CA of `envelope kms serve`). [default: $AWS_CA_BUNDLE if set]
    #[arg(long, env = "ENVELOPE_AWS_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// aws backend: encryption context pair sent with every Encrypt and Decrypt (repeatable).
    #[arg(long = "encryption-context", env = "ENVELOPE_ENCRYPTION_CONTEXT", value_delimiter = ',', value_name = "K=V")]
    pub encryption_context: Vec<String>,
    /// aws backend: most KMS calls in flight at once (more wait; no retry storms). [default: 64]
    #[arg(long, env = "ENVELOPE_AWS_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// aws backend: what the background health probe does: `round-trip` (DescribeKey, then an
    /// Encrypt and a Decrypt: proves the key may be used) or `describe-key` (one cheap call).
    /// [default: round-trip]
    #[arg(long, env = "ENVELOPE_HEALTH_PROBE", value_name = "MODE")]
    pub health_probe: Option<String>,
    /// Do not create the key if it does not exist; fail instead.
    #[arg(long, env = "ENVELOPE_NO_CREATE_KEY")]
    pub no_create_key: bool,
    /// aws and pkcs11 backends: wrap data keys with the remote key directly, one remote call per
    /// Encrypt and Decrypt, instead of through a local KEK (the default: a key of the plugin's
    /// own, wrapped once by the remote key; one remote call per local KEK). Ciphertexts made
    /// through a local KEK stay readable. In the config file: `local-kek: false`, at the top or
    /// per entry of `instances:`.
    #[arg(long, env = "ENVELOPE_NO_LOCAL_KEK")]
    pub no_local_kek: bool,
    /// Local KEK: wraps under one local KEK before a new one is made. [default: 1000000]
    #[arg(long, env = "ENVELOPE_LOCAL_KEK_MAX_USES", value_name = "N")]
    pub local_kek_max_uses: Option<u64>,
    /// Local KEK: age after which writes use a new local KEK (a new remote key_id also makes
    /// one at once). [default: 24h]
    #[arg(long, env = "ENVELOPE_LOCAL_KEK_MAX_AGE", value_name = "DURATION")]
    pub local_kek_max_age: Option<String>,
    /// Local KEK: how long an unwrapped local KEK stays cached; during a remote outage, reads
    /// of what it wrapped go on this long after it was unwrapped. [default: 1h]
    #[arg(long, env = "ENVELOPE_LOCAL_KEK_CACHE_TTL", value_name = "DURATION")]
    pub local_kek_cache_ttl: Option<String>,
    /// Local KEK: most unwrapped local KEKs held in memory. [default: 1000]
    #[arg(long, env = "ENVELOPE_LOCAL_KEK_CACHE_SIZE", value_name = "N")]
    pub local_kek_cache_size: Option<usize>,
    /// Address of the HTTP server for /livez, /readyz and /metrics ("off" to disable).
    /// [default: 127.0.0.1:8423]
    #[arg(long, env = "ENVELOPE_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// `version` reported by KMS v2 Status: v2beta1 (accepted by every Kubernetes since 1.27) or v2 (1.29+). Never change it on a running cluster. [default: v2beta1]
    #[arg(long, env = "ENVELOPE_STATUS_VERSION", value_name = "VERSION")]
    pub status_version: Option<String>,
    /// How often the key is probed in the background; a rotation or disable is noticed within this interval. [default: 10s]
    #[arg(long, env = "ENVELOPE_HEALTH_INTERVAL", value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Server-side cap on an RPC (the client's own deadline applies too, whichever is shorter). [default: 10s]
    #[arg(long, env = "ENVELOPE_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// How long in-flight RPCs may finish after SIGTERM/SIGINT. [default: 10s]
    #[arg(long, env = "ENVELOPE_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Provider name in the printed EncryptionConfiguration. kube-apiserver stores it with every
    /// Secret and finds the provider by it, so a key keeps its name for good. Several instances
    /// need one each, paired by position like --key. [default: envelope]
    #[arg(long, env = "ENVELOPE_PROVIDER_NAME", value_name = "NAME")]
    pub provider_name: Vec<String>,
    /// KMS API of the printed EncryptionConfiguration: v2 or v1 (the deprecated API, behind
    /// kube-apiserver's KMSv1 feature gate). The socket serves both either way. [default: v2]
    #[arg(long, env = "ENVELOPE_KMS_API_VERSION", value_name = "VERSION")]
    pub kms_api_version: Option<String>,
    /// Log format: text or json. [default: text]
    #[arg(long, env = "ENVELOPE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log level or filter (error, warn, info, debug, or a RUST_LOG-style filter). [default: info]
    #[arg(long, env = "ENVELOPE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Print the EncryptionConfiguration for kube-apiserver that these flags (and --config)
    /// give, then exit: nothing is started, no key store opened, no socket bound.
    #[arg(long)]
    pub print_config: bool,
}

/// Options of `envelope key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Where the keys live: `embedded` (the key store in --data-dir) or `pkcs11` (AES-256 keys
    /// generated inside a PKCS#11 token; give --module, --token-label or --token-serial, and
    /// --pin-file; NAME/KEY is the key's CKA_LABEL).
    #[arg(long, env = "ENVELOPE_BACKEND", global = true, default_value = "embedded", value_parser = ["embedded", "pkcs11"])]
    pub backend: String,
    /// pkcs11: path of the PKCS#11 module.
    #[arg(long, env = "ENVELOPE_PKCS11_MODULE", global = true, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// pkcs11: label of the token.
    #[arg(long, env = "ENVELOPE_PKCS11_TOKEN_LABEL", global = true, value_name = "LABEL")]
    pub token_label: Option<String>,
    /// pkcs11: serial number of the token (instead of --token-label).
    #[arg(long, env = "ENVELOPE_PKCS11_TOKEN_SERIAL", global = true, value_name = "SERIAL")]
    pub token_serial: Option<String>,
    /// pkcs11: file holding the user PIN (mode 0600 or stricter).
    #[arg(long, env = "ENVELOPE_PKCS11_PIN_FILE", global = true, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Data directory of the embedded key store.
    #[arg(long, env = "ENVELOPE_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Embedded: the store's root key, as the plugin's --root-key: `file` (default),
    /// `passphrase-file:PATH` or a `pkcs11:` URI.
    #[arg(long, env = "ENVELOPE_ROOT_KEY", global = true, value_name = "ROOT")]
    pub root_key: Option<String>,
    /// Embedded: where the keys are, as the plugin's --store: `sqlite` (default) or the
    /// `postgres://` URL of a store shared by several plugins (their root key in --data-dir).
    #[arg(long, env = "ENVELOPE_STORE", global = true, value_name = "STORE")]
    pub store: Option<String>,
    /// Output format: text or json.
    #[arg(long, short = 'o', default_value = "text", global = true, value_parser = ["text", "json"])]
    pub output: String,
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key with fresh random material and the given alias.
    Create {
        /// Alias for the key (`NAME` or `alias/NAME`).
        name: String,
        /// Free-form description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys.
    List,
    /// Show a key's metadata, versions and the KMS v2 key_id it reports.
    Describe {
        /// Alias or key id.
        key: String,
    },
    /// Add a new key version and make it current; older versions still decrypt. A running
    /// plugin reports the new key_id within one health interval. pkcs11: generates a new key
    /// object of the next generation in the token (older objects keep decrypting until
    /// destroyed).
    Rotate {
        /// Alias or key id.
        key: String,
    },
    /// Disable a key: the plugin turns unhealthy and Encrypt/Decrypt fail with FAILED_PRECONDITION.
    Disable {
        /// Alias or key id.
        key: String,
    },
    /// Enable a disabled key.
    Enable {
        /// Alias or key id.
        key: String,
    },
    /// Write every key, its versions (still sealed by root.key: nothing is unsealed into the
    /// file), states and aliases to one file for `envelope key import` on the other control-plane
    /// nodes. Consistent while the plugin runs (unlike a copy of keystore.db, which misses what is
    /// still only in keystore.db-wal). Run it after every `key create` and `key rotate`.
    #[command(after_help = "Example (on the node that rotated):
  envelope key export --data-dir /var/lib/envelope --out /root/envelope-keys.export
then copy the file to every other control-plane node and run `envelope key import` there.")]
    Export {
        /// File to write (mode 0600; refused if it exists, unless --force).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Merge a file written by `envelope key export` into this store: adds the keys, versions and
    /// aliases it lacks and makes each key's newest version current. Safe while this node's
    /// plugin runs (it reports the new key_id within one health interval); importing the same
    /// file again changes nothing. Needs the same root.key as the exporting node; refuses, and
    /// changes nothing, on a different root key, a damaged file or a key rotated on two nodes.
    #[command(after_help = "Example (on every other control-plane node, root.key copied there once):
  envelope key import --data-dir /var/lib/envelope --from /root/envelope-keys.export")]
    Import {
        /// Export file written by `envelope key export`.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Report what would be added without changing the store.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move the store's root key to another form — `file` (root.key), `passphrase-file:PATH`, or a
    /// `pkcs11:` URI (wrapped by an AES key in a PKCS#11 token) — without rewriting the database:
    /// the new form is written and synced before the old one is removed, so a crash leaves a
    /// store that opens under the old root or the new one (run the command again to finish).
    /// Stop the plugin first and restart it with the new --root-key.
    #[command(after_help = "Example (root.key into a SoftHSM2 token key):
  envelope key reseal --data-dir /var/lib/envelope --from file \\
    --to 'pkcs11:token=kms;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/envelope/pkcs11.pin'")]
    Reseal(crate::reseal::ResealArgs),
}
