//! `envelope reencrypt`: store objects again through the Kubernetes API, so kube-apiserver
//! writes them under its current (first) encryption provider and key_id — after a KMS key
//! rotation, a migration to another provider, or turning encryption on.
//!
//! 1. Select: read etcd as `envelope inspect` does and pick every object of the selected
//!    resources that is not stored as kube-apiserver would write it now ([`select`]); or, with
//!    `--all`, list every object through the API.
//! 2. Rewrite: GET and PUT each object unchanged, `--concurrency` at a time, retrying as
//!    [`retry`] decides. kube-apiserver stores an unchanged object again only when the value
//!    it read was stale, so the PUT is a no-op for objects that are already current.
//! 3. Verify (not with `--all`): read the object's etcd value back. If kube-apiserver still
//!    wrote the old provider or key_id (it learns a KMS v2 plugin's new key_id from Status about
//!    once a minute), retry the object until `--wait` runs out.
//!
//! Each object is rewritten on its own, so an interrupted run leaves nothing half done and a
//! rerun selects only what is still stale.

mod api;
mod retry;
mod select;

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use envelope_inspect::EncryptionConfig;
use kube::api::{Api, ApiResource, DynamicObject};
use tokio::sync::{mpsc, watch};

use crate::etcd::Etcd;
use crate::inspect_cmd::{EtcdArgs, classify_value, current_key_id, progress_bar, scan_prefix, show_progress};
use retry::{Failure, RetryPolicy, Step};
use select::{Configured, FirstProvider, Resource, Selected, Stale, Target};

/// Exit code when some objects could not be rewritten (they are listed).
pub const EXIT_FAILED: u8 = 1;
/// Exit code when SIGINT/SIGTERM stopped the run before every selected object was done.
pub const EXIT_INTERRUPTED: u8 = 2;
/// Exit code on a second SIGINT/SIGTERM (exit at once, in-flight requests abandoned).
pub const EXIT_ABORTED: u8 = 130;

/// The provider name assumed without `--provider-name` or `--encryption-config`: the default
/// name in the EncryptionConfiguration `envelope plugin` prints.
pub const DEFAULT_PROVIDER_NAME: &str = "envelope";

/// Options of `envelope reencrypt`.
#[derive(Debug, Args)]
#[command(after_help = "Selection: without --all, etcd is read (as `envelope inspect` does) and every object of the \
selected resources that kube-apiserver would write differently now is rewritten: unencrypted, other providers, \
static keys, other KMS v2 key_ids, legacy KMS v2 data keys, unreadable values. The target is KMS v2 provider \
--provider-name (default: envelope) under the current key_id (--current-key-id, or the Status of --plugin-socket); \
with --encryption-config, each resource's target is the first provider of its rule (KMS v2 key_ids from the \
provider's own socket unless given).\n\
Each object is fetched and replaced unchanged through the API: 409 Conflict → fetched again; 429, 5xx and \
connection errors → exponential backoff with jitter (--max-attempts); 404 → skipped (deleted meanwhile). Its etcd \
value is then read back: an object kube-apiserver still writes the old way (it learns a plugin's new key_id \
about once a minute) is retried until --wait runs out, and then the run stops.\n\
SIGINT/SIGTERM: no new objects are started, in-flight ones finish; a second signal exits at once. Every object \
is rewritten on its own: a rerun picks up what is still stale.\n\
Exit codes: 0 every selected object rewritten or skipped; 1 some objects failed (listed on stderr) or an error \
(etcd, plugin or API unreachable); 2 interrupted before every object was done (run again); 64 bad usage or \
configuration (flags, EncryptionConfiguration, kubeconfig); 130 a second signal.")]
pub struct ReencryptArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// kube-apiserver's --etcd-prefix.
    #[arg(long, default_value = "/registry")]
    pub prefix: String,
    /// Resources to rewrite, comma-separated namespaced core resources (secrets, configmaps, …).
    /// Default: secrets; with --encryption-config, every resource it lists.
    #[arg(long, value_delimiter = ',', value_name = "RESOURCES")]
    pub resource: Vec<String>,
    /// kube-apiserver's EncryptionConfiguration: the resources it lists, each one's target (the
    /// first provider of its rule), and provider names containing ':'.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// The current KMS v2 key_id (objects under another key_id are rewritten).
    #[arg(long, value_name = "ID", conflicts_with = "plugin_socket")]
    pub current_key_id: Option<String>,
    /// Ask a running KMS v2 plugin (any plugin, not only envelope) for the current key_id.
    #[arg(long, value_name = "PATH")]
    pub plugin_socket: Option<String>,
    /// The KMS v2 provider name kube-apiserver writes with (the `name` of the first provider of
    /// its EncryptionConfiguration). Default: envelope, or from --encryption-config.
    #[arg(long, value_name = "NAME")]
    pub provider_name: Option<String>,
    /// Rewrite every object of the selected resources, listed through the API; etcd is not read
    /// (etcd flags, --current-key-id and --plugin-socket are not used) and nothing is verified.
    #[arg(long)]
    pub all: bool,
    /// List the objects that would be rewritten, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Objects rewritten at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,
    /// Attempts per object (the first included) on conflicts, 429, 5xx and connection errors.
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub max_attempts: u32,
    /// How long an object kube-apiserver still writes the old way is retried (0s: not at all).
    #[arg(long, default_value = "3m", value_name = "DURATION")]
    pub wait: String,
    /// kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the pod's service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Limit on each API request.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub request_timeout: String,
    /// Keys fetched per etcd request, objects per API list page.
    #[arg(long, default_value_t = 1000)]
    pub page_size: i64,
    /// Progress bar on stderr: auto (when stderr is a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    pub progress: String,
}

/// Everything checked before anything is contacted.
struct Settings {
    args: ReencryptArgs,
    config: Option<EncryptionConfig>,
    resources: Vec<Configured>,
    policy: RetryPolicy,
    wait: Duration,
    kube: api::KubeOptions,
}

pub fn run(args: ReencryptArgs) -> ExitCode {
    let settings = match settings(args) {
        Ok(s) => s,
        Err(e) => {
            warn(&format!("envelope reencrypt: {e:#}"));
            return ExitCode::from(crate::EXIT_CONFIG);
        }
    };
    let rt = match crate::runtime::build(crate::runtime::Flavor::Workers(2)) {
        Ok(rt) => rt,
        Err(e) => {
            warn(&format!("envelope reencrypt: runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(reencrypt(settings)) {
        Ok(code) => ExitCode::from(code),
        Err(Fatal::Config(e)) => {
            warn(&format!("envelope reencrypt: {e:#}"));
            ExitCode::from(crate::EXIT_CONFIG)
        }
        Err(Fatal::Runtime(e)) => {
            warn(&format!("envelope reencrypt: {e:#}"));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// An error that ends the run before any object is rewritten.
enum Fatal {
    /// Bad configuration found late (kubeconfig): exit 64.
    Config(anyhow::Error),
    /// Anything else (etcd, plugin or API unreachable): exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Fatal {
    fn from(e: anyhow::Error) -> Self {
        Fatal::Runtime(e)
    }
}

/// Usage and configuration checks (exit 64), before anything is contacted.
fn settings(args: ReencryptArgs) -> Result<Settings> {
    if args.concurrency == 0 || args.concurrency > 256 {
        bail!("--concurrency must be between 1 and 256");
    }
    if args.max_attempts == 0 {
        bail!("--max-attempts must be at least 1");
    }
    if args.page_size < 1 || args.page_size > i64::from(u32::MAX) {
        bail!("--page-size must be at least 1");
    }
    let wait = humantime::parse_duration(args.wait.trim())
        .map_err(|e| anyhow!("--wait: {:?} is not a duration like 3m or 90s ({e})", args.wait))?;
    let request_timeout = crate::config::parse_duration("--request-timeout", &args.request_timeout)?;
    let config = match &args.encryption_config {
        Some(p) => Some(EncryptionConfig::load(p).with_context(|| format!("--encryption-config {}", p.display()))?),
        None => None,
    };
    let resources = plan(&args, config.as_ref())?;
    if !args.all {
        args.etcd.options()?;
        if args.etcd.endpoints.is_empty() {
            bail!("give etcd's endpoints with --etcd (or rewrite every object, without reading etcd, with --all)");
        }
        let kms_v2_targets = resources.iter().filter(|c| matches!(c.first, FirstProvider::KmsV2 { .. })).count();
        if config.is_none() && args.current_key_id.is_none() && args.plugin_socket.is_none() {
            bail!("give the current key_id with --current-key-id or --plugin-socket (or use --all)");
        }
        let providers: std::collections::BTreeSet<&str> = resources
            .iter()
            .filter_map(|c| match &c.first {
                FirstProvider::KmsV2 { provider_name, .. } => Some(provider_name.as_str()),
                FirstProvider::Known(_) => None,
            })
            .collect();
        if kms_v2_targets > 0 && providers.len() > 1 && (args.current_key_id.is_some() || args.plugin_socket.is_some())
        {
            bail!(
                "the resources are written by several KMS v2 providers ({}): leave out --current-key-id and --plugin-socket so that each provider's socket is asked",
                providers.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let kube = api::KubeOptions { kubeconfig: args.kubeconfig.clone(), context: args.context.clone(), request_timeout };
    let policy = RetryPolicy { max_attempts: args.max_attempts, ..RetryPolicy::default() };
    Ok(Settings { args, config, resources, policy, wait, kube })
}

/// The resources to rewrite and the first provider kube-apiserver writes each with.
fn plan(args: &ReencryptArgs, config: Option<&EncryptionConfig>) -> Result<Vec<Configured>> {
    let Some(config) = config else {
        let names = if args.resource.is_empty() { vec!["secrets".to_string()] } else { args.resource.clone() };
        let provider_name = args.provider_name.clone().unwrap_or_else(|| DEFAULT_PROVIDER_NAME.to_string());
        if provider_name.is_empty() {
            bail!("--provider-name must not be empty");
        }
        let socket = args.plugin_socket.clone().unwrap_or_default();
        return Ok(select::resources_from_names(&names)?
            .into_iter()
            .map(|resource| Configured {
                resource,
                first: FirstProvider::KmsV2 { provider_name: provider_name.clone(), socket: socket.clone() },
            })
            .collect());
    };
    let (mut listed, unsupported) = select::resources_from_config(config);
    if !args.resource.is_empty() {
        let wanted = select::resources_from_names(&args.resource)?;
        if let Some(missing) = wanted.iter().find(|r| !listed.iter().any(|c| c.resource == **r)) {
            bail!("--resource {}: the EncryptionConfiguration does not list it", missing.plural);
        }
        listed.retain(|c| wanted.contains(&c.resource));
    } else if !unsupported.is_empty() {
        warn(&format!(
            "envelope reencrypt: note: not rewriting {} from the EncryptionConfiguration: only namespaced core resources are supported ({})",
            unsupported.join(", "),
            select::supported_names()
        ));
    }
    if listed.is_empty() {
        bail!("the EncryptionConfiguration lists no resource this command can rewrite ({})", select::supported_names());
    }
    if let Some(name) = &args.provider_name {
        for c in &listed {
            match &c.first {
                FirstProvider::KmsV2 { provider_name, .. } if provider_name == name => {}
                FirstProvider::KmsV2 { provider_name, .. } => {
                    bail!(
                        "--provider-name {name:?}, but the EncryptionConfiguration writes {} with KMS v2 provider {provider_name:?}",
                        c.resource.plural
                    )
                }
                FirstProvider::Known(t) => bail!(
                    "--provider-name {name:?}, but the EncryptionConfiguration writes {} with {t}",
                    c.resource.plural
                ),
            }
        }
    }
    Ok(listed)
}

/// One object to rewrite.
#[derive(Debug, Clone)]
struct Item {
    /// Index into the resource list.
    resource: usize,
    namespace: String,
    name: String,
    /// Its etcd key (for the read-back), when etcd was read.
    etcd_key: Option<Vec<u8>>,
    /// Why it was selected.
    why: String,
}

/// A selected resource with what it needs at run time.
struct Planned {
    resource: &'static Resource,
    api: ApiResource,
    /// What kube-apiserver should store; `None` with `--all` (nothing is verified).
    target: Option<Target>,
}

impl Planned {
    fn display(&self, item: &Item) -> String {
        format!("{}/{}/{}", self.resource.plural, item.namespace, item.name)
    }
}

/// How one object ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Stored again (verified, unless `--all`).
    Rewritten,
    /// kube-apiserver had nothing to change: already current.
    AlreadyCurrent,
    /// 404: deleted since it was selected.
    Deleted,
    /// Not rewritten.
    Failed { message: String, kind: FailKind },
    /// Given up between retries because the run was stopped.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// The whole run should stop (401; kube-apiserver never writes the target).
    Fatal,
    /// Attempts exhausted on 429/5xx/connection errors.
    Transient,
    /// This object only (403, 422, …).
    Other,
}

/// Why the run stopped taking new objects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Signal,
    /// Further objects would fail the same way.
    Breaker(String),
}

/// Counts over a run.
#[derive(Debug, Default)]
struct Tally {
    selected: u64,
    rewritten: u64,
    already_current: u64,
    deleted: u64,
    interrupted: u64,
    failed: Vec<(String, String)>,
}

impl Tally {
    fn add(&mut self, object: String, outcome: &Outcome) {
        match outcome {
            Outcome::Rewritten => self.rewritten += 1,
            Outcome::AlreadyCurrent => self.already_current += 1,
            Outcome::Deleted => self.deleted += 1,
            Outcome::Interrupted => self.interrupted += 1,
            Outcome::Failed { message, .. } => self.failed.push((object, message.clone())),
        }
    }

    fn skipped(&self) -> u64 {
        self.already_current + self.deleted
    }

    /// Selected objects not done: never started, or given up between retries when stopped.
    fn not_done(&self) -> u64 {
        let finished = self.rewritten + self.skipped() + self.failed.len() as u64;
        self.selected.saturating_sub(finished)
    }

    /// The exit code: interrupted by a signal with work left → 2; any failure, or work left
    /// after the run was stopped because objects kept failing → 1; else 0.
    fn exit_code(&self, stop: Option<&StopReason>) -> u8 {
        match stop {
            Some(StopReason::Signal) if self.not_done() > 0 => EXIT_INTERRUPTED,
            _ if !self.failed.is_empty() || self.not_done() > 0 => EXIT_FAILED,
            _ => 0,
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "Summary: {} selected, {} rewritten, {} skipped ({} deleted meanwhile, {} already current), {} failed",
            self.selected,
            self.rewritten,
            self.skipped(),
            self.deleted,
            self.already_current,
            self.failed.len()
        );
        if self.not_done() > 0 {
            s.push_str(&format!(", {} not done", self.not_done()));
        }
        s
    }
}

/// Output through the progress bar (if any), so lines and the bar do not garble each other.
struct Out {
    bar: Option<indicatif::ProgressBar>,
}

impl Out {
    fn stdout(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| say(line)),
            None => say(line),
        }
    }

    fn stderr(&self, line: &str) {
        let print = || warn(line);
        match &self.bar {
            Some(b) => b.suspend(print),
            None => print(),
        }
    }
}

/// A line on stdout; a closed pipe is not an error worth a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr, errors ignored.
fn warn(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

async fn reencrypt(s: Settings) -> Result<u8, Fatal> {
    // kube's rustls client uses the process-wide provider: the workspace's aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Settings { args, config, resources, policy, wait, kube } = s;
    let out = Out { bar: None };

    // The API client first: a bad kubeconfig is a configuration error, found before etcd is
    // scanned. A dry run that reads etcd never contacts the API.
    let client = if args.dry_run && !args.all { None } else { Some(api::client(&kube).await.map_err(Fatal::Config)?) };
    if let Some(client) = &client {
        preflight(client, policy).await?;
    }

    let planned = resolve_targets(&args, resources).await?;
    let mut tally = Tally::default();
    let (items, etcd) = if args.all {
        let Some(client) = &client else {
            return Err(anyhow!("no API client").into());
        };
        (list_all(client, &planned, &args, policy).await?, None)
    } else {
        let mut etcd = Etcd::connect(&args.etcd.options()?).await?;
        let items = select_stale(&mut etcd, &planned, &args, config.as_ref(), &mut tally, &out).await?;
        (items, Some(etcd))
    };
    tally.selected += items.len() as u64;

    if args.dry_run {
        for item in &items {
            out.stdout(&format!("would rewrite {}: {}", planned[item.resource].display(item), item.why));
        }
        for (object, why) in &tally.failed {
            out.stderr(&format!("cannot rewrite {object}: {why}"));
        }
        out.stdout(&format!("Dry run: {} object(s) would be rewritten; nothing was changed.", items.len()));
        return Ok(if tally.failed.is_empty() { 0 } else { EXIT_FAILED });
    }
    let Some(client) = client else {
        return Err(anyhow!("no API client").into());
    };
    for (object, why) in &tally.failed {
        warn(&format!("envelope reencrypt: cannot rewrite {object}: {why}"));
    }

    let (stop_tx, stop_rx) = watch::channel(None::<StopReason>);
    let stop_tx = Arc::new(stop_tx);
    watch_signals(stop_tx.clone()).map_err(|e| anyhow!("signal handlers: {e}"))?;

    let out = Out { bar: show_progress(&args.progress).then(|| progress_bar(items.len() as u64, "objects")) };
    let ctx = Arc::new(Ctx { client, planned, etcd, config, policy, wait });
    let workers = args.concurrency.min(items.len()).max(1);
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(ctx.clone(), queue.clone(), tx.clone(), stop_rx.clone()));
    }
    drop(tx);

    let mut waiting_noted = false;
    let mut transient_in_a_row = 0usize;
    let breaker_after = (2 * args.concurrency).max(8);
    while let Some(event) = rx.recv().await {
        match event {
            Event::Waiting(note) => {
                if !waiting_noted {
                    waiting_noted = true;
                    out.stderr(&format!("envelope reencrypt: {note}"));
                }
            }
            Event::Done(item, outcome) => {
                let object = ctx.planned[item.resource].display(&item);
                match &outcome {
                    Outcome::Rewritten => out.stdout(&format!("rewritten {object}")),
                    Outcome::AlreadyCurrent => out.stdout(&format!("unchanged {object} (already current)")),
                    Outcome::Deleted => out.stdout(&format!("skipped {object} (deleted meanwhile)")),
                    Outcome::Interrupted => {}
                    Outcome::Failed { message, .. } => out.stderr(&format!("failed {object}: {message}")),
                }
                match &outcome {
                    Outcome::Failed { message, kind: FailKind::Fatal } => {
                        stop(&stop_tx, StopReason::Breaker(format!("{object}: {message}")));
                    }
                    Outcome::Failed { kind: FailKind::Transient, message } => {
                        transient_in_a_row += 1;
                        if transient_in_a_row >= breaker_after {
                            stop(
                                &stop_tx,
                                StopReason::Breaker(format!(
                                    "{transient_in_a_row} objects in a row failed; last: {message}"
                                )),
                            );
                        }
                    }
                    Outcome::Rewritten | Outcome::AlreadyCurrent | Outcome::Deleted => transient_in_a_row = 0,
                    _ => {}
                }
                tally.add(object, &outcome);
                if let Some(b) = &out.bar {
                    b.inc(1);
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(b) = &out.bar {
        b.finish_and_clear();
    }

    let stopped = stop_rx.borrow().clone();
    if let Some(StopReason::Breaker(why)) = &stopped {
        warn(&format!("envelope reencrypt: stopped early: {why}"));
    }
    if !tally.failed.is_empty() {
        warn(&format!("Failed ({}):", tally.failed.len()));
        for (object, why) in &tally.failed {
            warn(&format!("  {object}: {why}"));
        }
    }
    say(&tally.summary());
    if tally.not_done() > 0 {
        warn(&format!(
            "envelope reencrypt: {} object(s) not done; run again to finish (current objects are not selected again)",
            tally.not_done()
        ));
    }
    Ok(tally.exit_code(stopped.as_ref()))
}

/// Checks that the API server answers (retrying transient errors) before anything else.
async fn preflight(client: &kube::Client, policy: RetryPolicy) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api::preflight(client).await {
            Ok(_) => return Ok(()),
            Err(f) => match policy.next(f.failure, attempt, retry::jitter()) {
                Step::Retry(d) => tokio::time::sleep(d).await,
                Step::Skip | Step::GiveUp => bail!("cannot use the Kubernetes API: {}", f.message),
            },
        }
    }
}

/// Resolves KMS v2 key_ids (from the flags, else each provider's plugin socket).
async fn resolve_targets(args: &ReencryptArgs, resources: Vec<Configured>) -> Result<Vec<Planned>> {
    let mut asked: Vec<(String, String)> = Vec::new();
    let mut planned = Vec::with_capacity(resources.len());
    for c in resources {
        let target = if args.all {
            None
        } else {
            Some(match c.first {
                FirstProvider::Known(t) => t,
                FirstProvider::KmsV2 { provider_name, socket } => {
                    let key_id = match (&args.current_key_id, &args.plugin_socket) {
                        (Some(k), _) => k.clone(),
                        (None, explicit) => {
                            let socket = explicit.clone().unwrap_or(socket);
                            match asked.iter().find(|(s, _)| *s == socket) {
                                Some((_, k)) => k.clone(),
                                None => {
                                    let k = current_key_id(&socket).await.with_context(|| {
                                        format!("current key_id of KMS v2 provider {provider_name:?}")
                                    })?;
                                    asked.push((socket, k.clone()));
                                    k
                                }
                            }
                        }
                    };
                    Target::KmsV2 { provider_name, key_id }
                }
            })
        };
        planned.push(Planned { resource: c.resource, api: api::api_resource(c.resource), target });
    }
    Ok(planned)
}

/// Reads etcd and returns the stale objects; stale keys that name no object are counted as
/// failed in `tally`.
async fn select_stale(
    etcd: &mut Etcd,
    planned: &[Planned],
    args: &ReencryptArgs,
    config: Option<&EncryptionConfig>,
    tally: &mut Tally,
    out: &Out,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (index, p) in planned.iter().enumerate() {
        let Some(target) = &p.target else { continue };
        let prefix = scan_prefix(&args.prefix, p.resource.etcd_dir);
        let before = items.len();
        let mut current = 0u64;
        let scanned = etcd
            .scan(&prefix, args.page_size, |kv| {
                let classified = classify_value(config, &kv.key, &kv.value);
                match select::select(&args.prefix, p.resource, target, &kv.key, &classified) {
                    Selected::Current => current += 1,
                    Selected::Stale { namespace, name, why } => items.push(Item {
                        resource: index,
                        namespace,
                        name,
                        etcd_key: Some(kv.key),
                        why: why.to_string(),
                    }),
                    Selected::Unmapped(why) => {
                        tally.selected += 1;
                        tally.failed.push((
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            format!(
                                "{why}, but the etcd key does not name a {} object ({}<namespace>/<name>)",
                                p.resource.kind,
                                String::from_utf8_lossy(&prefix)
                            ),
                        ));
                    }
                }
            })
            .await?;
        out.stdout(&format!(
            "{}: {scanned} object(s) in etcd, {} to rewrite, {current} current (target: {target})",
            p.resource.plural,
            items.len() - before
        ));
    }
    Ok(items)
}

/// Lists every object of the planned resources through the API (`--all`).
async fn list_all(
    client: &kube::Client,
    planned: &[Planned],
    args: &ReencryptArgs,
    policy: RetryPolicy,
) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let limit = u32::try_from(args.page_size).unwrap_or(u32::MAX);
    for (index, p) in planned.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &p.api);
        let mut token = None;
        let before = items.len();
        loop {
            let mut attempt = 0;
            let (names, next) = loop {
                attempt += 1;
                match api::list_page(&api, limit, token.clone()).await {
                    Ok(page) => break page,
                    Err(f) => match policy.next(f.failure, attempt, retry::jitter()) {
                        Step::Retry(d) => tokio::time::sleep(d).await,
                        Step::Skip | Step::GiveUp => {
                            bail!("listing {}: {}", p.resource.plural, f.message)
                        }
                    },
                }
            };
            items.extend(names.into_iter().map(|(namespace, name)| Item {
                resource: index,
                namespace,
                name,
                etcd_key: None,
                why: "--all".into(),
            }));
            token = next;
            if token.is_none() {
                break;
            }
        }
        say(&format!("{}: {} object(s) to rewrite (--all)", p.resource.plural, items.len() - before));
    }
    Ok(items)
}

/// What the workers share.
struct Ctx {
    client: kube::Client,
    planned: Vec<Planned>,
    etcd: Option<Etcd>,
    config: Option<EncryptionConfig>,
    policy: RetryPolicy,
    wait: Duration,
}

enum Event {
    /// kube-apiserver does not write the target yet (reported once).
    Waiting(String),
    Done(Item, Outcome),
}

fn stop(tx: &watch::Sender<Option<StopReason>>, reason: StopReason) {
    tx.send_if_modified(|s| {
        if s.is_none() {
            *s = Some(reason);
            true
        } else {
            false
        }
    });
}

/// First SIGINT/SIGTERM: stop taking new objects. Second: exit at once.
fn watch_signals(tx: Arc<watch::Sender<Option<StopReason>>>) -> std::io::Result<()> {
    let mut received = crate::runtime::shutdown_signals()?;
    tokio::spawn(async move {
        let mut signals = 0;
        while received.recv().await.is_some() {
            signals += 1;
            if signals == 1 {
                warn(
                    "envelope reencrypt: stopping: no new objects; waiting for those in flight (signal again to exit at once)",
                );
                stop(&tx, StopReason::Signal);
            } else {
                warn("envelope reencrypt: exiting at once");
                std::process::exit(i32::from(EXIT_ABORTED));
            }
        }
    });
    Ok(())
}

async fn worker(
    ctx: Arc<Ctx>,
    queue: Arc<Mutex<VecDeque<Item>>>,
    tx: mpsc::Sender<Event>,
    stop_rx: watch::Receiver<Option<StopReason>>,
) {
    loop {
        if stop_rx.borrow().is_some() {
            return;
        }
        // A std mutex: held only to pop, never across an await.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let Some(item) = next else { return };
        let outcome = rewrite_one(&ctx, &item, &tx, stop_rx.clone()).await;
        if tx.send(Event::Done(item, outcome)).await.is_err() {
            return;
        }
    }
}

/// Sleeps for `d` unless the run is stopped first (then returns true).
async fn sleep_or_stop(d: Duration, stop_rx: &mut watch::Receiver<Option<StopReason>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop_rx.wait_for(|s| s.is_some()) => true,
    }
}

/// What the etcd read-back found.
enum ReadBack {
    Current,
    Gone,
    Stale(Stale),
}

async fn read_back(etcd: &Etcd, key: &[u8], target: &Target, config: Option<&EncryptionConfig>) -> Result<ReadBack> {
    let mut etcd = etcd.clone();
    Ok(match etcd.get(key).await? {
        None => ReadBack::Gone,
        Some(kv) => match target.stale(&classify_value(config, &kv.key, &kv.value)) {
            None => ReadBack::Current,
            Some(why) => ReadBack::Stale(why),
        },
    })
}

/// GET + PUT one object, retried per the policy, then (when etcd was read) checked in etcd.
async fn rewrite_one(
    ctx: &Ctx,
    item: &Item,
    tx: &mpsc::Sender<Event>,
    mut stop_rx: watch::Receiver<Option<StopReason>>,
) -> Outcome {
    let p = &ctx.planned[item.resource];
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &item.namespace, &p.api);
    let mut attempt = 0u32;
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        attempt += 1;
        let failure = match api::get_and_replace(&api, &item.name).await {
            Err(f) => f,
            Ok(put) => {
                let done = if put == api::Put::Unchanged { Outcome::AlreadyCurrent } else { Outcome::Rewritten };
                let (Some(etcd), Some(key), Some(target)) = (&ctx.etcd, &item.etcd_key, &p.target) else {
                    return done;
                };
                match read_back(etcd, key, target, ctx.config.as_ref()).await {
                    Ok(ReadBack::Current) => return done,
                    Ok(ReadBack::Gone) => return Outcome::Deleted,
                    Ok(ReadBack::Stale(why)) => {
                        // kube-apiserver wrote (or kept) it the old way: it does not use the
                        // target yet. Retry until --wait runs out; this does not use up attempts.
                        let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
                        let waited = since.elapsed();
                        if waited >= ctx.wait {
                            let message = format!(
                                "kube-apiserver still stores it as {why}, not {target}, after {}: check that its EncryptionConfiguration's first provider for {} is that provider (--provider-name) and that it has picked up the plugin's current key_id; then run again",
                                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                                p.resource.plural
                            );
                            return Outcome::Failed { message, kind: FailKind::Fatal };
                        }
                        let _ = tx.try_send(Event::Waiting(format!(
                            "kube-apiserver still writes {} as {why}, not {target}; retrying for up to {} while it picks up the current key_id (kube-apiserver asks a KMS v2 plugin's Status about once a minute)",
                            p.resource.plural,
                            humantime::format_duration(ctx.wait)
                        )));
                        attempt = 0;
                        let pause = Duration::from_secs(5)
                            .mul_f64(0.5 + retry::jitter() / 2.0)
                            .min(ctx.wait.saturating_sub(waited));
                        if sleep_or_stop(pause, &mut stop_rx).await {
                            return Outcome::Interrupted;
                        }
                        continue;
                    }
                    // The PUT went through; only the check failed: treat like a transient error.
                    Err(e) => api::ApiFailure {
                        failure: Failure::Transient,
                        message: format!("rewritten, but reading it back from etcd failed: {e:#}"),
                    },
                }
            }
        };
        match ctx.policy.next(failure.failure, attempt, retry::jitter()) {
            Step::Skip => return Outcome::Deleted,
            Step::GiveUp => {
                let kind = match failure.failure {
                    Failure::Fatal => FailKind::Fatal,
                    Failure::Transient | Failure::Conflict => FailKind::Transient,
                    Failure::NotFound | Failure::Permanent => FailKind::Other,
                };
                let tries = if attempt > 1 { format!(" (after {attempt} attempts)") } else { String::new() };
                return Outcome::Failed { message: format!("{}{tries}", failure.message), kind };
            }
            Step::Retry(d) => {
                if sleep_or_stop(d, &mut stop_rx).await {
                    return Outcome::Interrupted;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReencryptArgs,
    }

    fn args(v: &[&str]) -> ReencryptArgs {
        Cli::try_parse_from(std::iter::once("reencrypt").chain(v.iter().copied())).unwrap().args
    }

    fn config_file(yaml: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(yaml.as_bytes()).unwrap();
        f
    }

    const CONFIG: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms: {apiVersion: v2, name: envelope-new, endpoint: "unix:///run/new.sock"}
      - kms: {apiVersion: v2, name: envelope, endpoint: "unix:///run/old.sock"}
      - identity: {}
"#;

    #[test]
    fn defaults_are_secrets_under_provider_envelope() {
        let s = settings(args(&["--etcd", "http://127.0.0.1:2379", "--current-key-id", "k"])).unwrap();
        assert_eq!(s.resources.len(), 1);
        assert_eq!(s.resources[0].resource.plural, "secrets");
        assert_eq!(
            s.resources[0].first,
            FirstProvider::KmsV2 { provider_name: "envelope".into(), socket: String::new() }
        );
        assert_eq!(s.args.concurrency, 4);
        assert_eq!(s.wait, Duration::from_secs(180));
        let s = settings(args(&[
            "--etcd",
            "e:2379",
            "--plugin-socket",
            "/s",
            "--provider-name",
            "p",
            "--resource",
            "configmaps,secrets",
        ]))
        .unwrap();
        let got: Vec<_> = s.resources.iter().map(|c| (c.resource.plural, c.first.clone())).collect();
        let first = FirstProvider::KmsV2 { provider_name: "p".into(), socket: "/s".into() };
        assert_eq!(got, [("configmaps", first.clone()), ("secrets", first)]);
    }

    #[test]
    fn usage_errors_are_reported_before_anything_is_contacted() {
        let err = |v: &[&str]| settings(args(v)).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err(&["--current-key-id", "k"]).contains("--etcd"));
        assert!(err(&["--etcd", "e:1"]).contains("--current-key-id or --plugin-socket"));
        assert!(err(&["--etcd", "e:1", "--current-key-id", "k", "--concurrency", "0"]).contains("--concurrency"));
        assert!(err(&["--etcd", "e:1", "--current-key-id", "k", "--max-attempts", "0"]).contains("--max-attempts"));
        assert!(err(&["--etcd", "e:1", "--current-key-id", "k", "--wait", "soon"]).contains("--wait"));
        assert!(
            err(&["--etcd", "e:1", "--current-key-id", "k", "--request-timeout", "0s"]).contains("request-timeout")
        );
        assert!(err(&["--etcd", "e:1", "--current-key-id", "k", "--resource", "nodes"]).contains("not supported"));
        assert!(
            err(&["--etcd", "e:1", "--current-key-id", "k", "--encryption-config", "/nonexistent/x.yaml"])
                .contains("encryption-config")
        );
        assert!(Cli::try_parse_from(["reencrypt", "--current-key-id", "k", "--plugin-socket", "/s"]).is_err());
        // --all needs neither etcd nor a key_id.
        assert!(settings(args(&["--all"])).is_ok());
        assert!(settings(args(&["--all", "--dry-run", "--resource", "configmaps"])).is_ok());
    }

    #[test]
    fn encryption_config_gives_resources_and_targets() {
        let f = config_file(CONFIG);
        let path = f.path().to_str().unwrap();
        let s = settings(args(&["--etcd", "e:1", "--encryption-config", path])).unwrap();
        let first = FirstProvider::KmsV2 { provider_name: "envelope-new".into(), socket: "/run/new.sock".into() };
        let got: Vec<_> = s.resources.iter().map(|c| (c.resource.plural, c.first.clone())).collect();
        assert_eq!(got, [("secrets", first.clone()), ("configmaps", first)]);
        // --resource narrows; --provider-name must agree.
        let s = settings(args(&[
            "--etcd",
            "e:1",
            "--encryption-config",
            path,
            "--resource",
            "configmaps",
            "--provider-name",
            "envelope-new",
        ]))
        .unwrap();
        assert_eq!(s.resources.len(), 1);
        assert_eq!(s.resources[0].resource.plural, "configmaps");
        let e = settings(args(&["--etcd", "e:1", "--encryption-config", path, "--provider-name", "envelope"]))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("envelope-new"));
        let e = settings(args(&["--etcd", "e:1", "--encryption-config", path, "--resource", "pods"])).err().unwrap();
        assert!(format!("{e:#}").contains("does not list"));
    }

    #[test]
    fn one_key_id_cannot_serve_several_kms_v2_providers() {
        let f = config_file(
            r#"
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers: [{kms: {apiVersion: v2, name: a, endpoint: "unix:///run/a.sock"}}]
  - resources: [configmaps]
    providers: [{kms: {apiVersion: v2, name: b, endpoint: "unix:///run/b.sock"}}]
"#,
        );
        let path = f.path().to_str().unwrap();
        assert!(settings(args(&["--etcd", "e:1", "--encryption-config", path, "--current-key-id", "k"])).is_err());
        assert!(settings(args(&["--etcd", "e:1", "--encryption-config", path])).is_ok());
    }

    fn tally(selected: u64, rewritten: u64, deleted: u64, failed: usize) -> Tally {
        let mut t = Tally { selected, rewritten, deleted, ..Default::default() };
        t.failed = (0..failed).map(|i| (format!("secrets/ns/{i}"), "403".to_string())).collect();
        t
    }

    #[test]
    fn exit_codes_for_scripts() {
        assert_eq!(tally(3, 2, 1, 0).exit_code(None), 0);
        assert_eq!(tally(0, 0, 0, 0).exit_code(None), 0);
        assert_eq!(tally(3, 2, 0, 1).exit_code(None), EXIT_FAILED);
        // Interrupted with work left → 2, even with failures; a signal after the last object → as usual.
        assert_eq!(tally(5, 2, 0, 1).exit_code(Some(&StopReason::Signal)), EXIT_INTERRUPTED);
        assert_eq!(tally(3, 3, 0, 0).exit_code(Some(&StopReason::Signal)), 0);
        assert_eq!(tally(3, 2, 0, 1).exit_code(Some(&StopReason::Signal)), EXIT_FAILED);
        // Stopped because objects kept failing → 1.
        assert_eq!(tally(9, 0, 0, 8).exit_code(Some(&StopReason::Breaker("x".into()))), EXIT_FAILED);
    }

    #[test]
    fn tally_counts_and_summarises() {
        let mut t = Tally { selected: 6, ..Default::default() };
        t.add("a".into(), &Outcome::Rewritten);
        t.add("b".into(), &Outcome::AlreadyCurrent);
        t.add("c".into(), &Outcome::Deleted);
        t.add("d".into(), &Outcome::Failed { message: "403 Forbidden: no".into(), kind: FailKind::Other });
        t.add("e".into(), &Outcome::Interrupted);
        assert_eq!((t.rewritten, t.skipped(), t.failed.len(), t.not_done()), (1, 2, 1, 2));
        assert_eq!(
            t.summary(),
            "Summary: 6 selected, 1 rewritten, 2 skipped (1 deleted meanwhile, 1 already current), 1 failed, 2 not done"
        );
    }
}
