//! envelope's key server: the AWS KMS JSON 1.1 API over HTTP, so `aws kms ...`, boto3 and the
//! AWS SDKs work against a self-hosted key store.
//!
//! * [`op`]: the operations, one module per family (crypto, keys, aliases, policies, rotation,
//!   import, tags), each owning its requests, their validation and execution on top of
//!   `envelope_keystore::KeyStore`, and its typed responses; the [`Operation`] table (policy
//!   action, read-only or management, data plane or not) and how to add one.
//! * [`protocol`]: the request members as sent (also the audit view of a request), validation
//!   rules and messages, response encoding (pure).
//! * [`auth`]: the access-key table and SigV4 verification (pure, given the clock).
//! * [`credentials`]: the credentials file, its atomic edits and the watcher that reloads it.
//! * [`dates`]: `X-Amz-Date` and RFC 3339 times (the calendar is the `time` crate's).
//! * [`ids`]: key identifiers — key id, key ARN, alias name, alias ARN.
//! * [`import`]: importing key material — wrapping key pairs, sealed import tokens, unwrapping.
//! * [`server`]: HTTP (axum): routing on `X-Amz-Target`, body limit, request ids, errors.
//! * [`error`]: [`KmsError`] and its one mapping to AWS error codes and HTTP statuses.
//! * [`audit`]: the CloudTrail-shaped audit log (one JSON line per request, optional fail-closed).
//! * [`policy`]: key policies — parser and evaluation (pure).
//! * [`maintenance`]: the clock, deletion of keys past their window, automatic rotation; the
//!   [`Maintenance`](maintenance::Maintenance) task `serve` owns.
//! * [`metrics`]: Prometheus metrics and the loopback `/livez` `/readyz` `/metrics` router.
//! * [`tls`]: HTTPS with rustls (certificate and key from PEM files).
//! * [`seed`]: configuration as code — keys, aliases, policies from a YAML file, idempotently.
//!
//! The library binds nothing: [`serve`] takes a bound listener and a shutdown future.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod audit_rotate;
pub mod auth;
pub mod credentials;
pub mod dates;
pub mod error;
pub mod ids;
pub mod import;
pub mod lookup;
pub mod maintenance;
pub mod metrics;
pub mod op;
pub mod policy;
pub mod protocol;
pub mod seed;
pub mod server;
pub mod tls;

use std::sync::Arc;

use envelope_keystore::KeyStore;

pub use auth::{Credential, CredentialStore};
pub use error::{KmsError, Result};
pub use op::{Caller, Operation, Outcome, Reply, Request, parse_request};
pub use server::serve;

/// Default request body limit (1 MiB; the largest legitimate KMS request is far smaller).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// Settings of a key server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The region the server answers for (SigV4 scope and ARNs), e.g. `us-east-1`.
    pub region: String,
    /// The 12-digit account id used in ARNs.
    pub account_id: String,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Most client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also how long an idle keep-alive HTTP/1
    /// connection stays open) and, separately, its body.
    pub client_timeout: std::time::Duration,
    /// Most keys the account may hold (pending deletion included); CreateKey beyond it is
    /// `LimitExceededException`.
    pub max_keys: usize,
    /// Most on-demand rotations (RotateKeyOnDemand) per key; beyond it the call answers
    /// `LimitExceededException`, as AWS's quota does.
    pub max_on_demand_rotations: usize,
}

/// Default [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default [`Config::max_keys`] (AWS's default quota of customer managed keys per region).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default [`Config::max_on_demand_rotations`] (the quota AWS answered with in 2025).
pub const DEFAULT_MAX_ON_DEMAND_ROTATIONS: usize = 10;
/// Default [`Config::client_timeout`].
pub const DEFAULT_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Config {
    /// A configuration with the default body limit.
    pub fn new(region: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account_id: account_id.into(),
            max_body: DEFAULT_MAX_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            max_keys: DEFAULT_MAX_KEYS,
            max_on_demand_rotations: DEFAULT_MAX_ON_DEMAND_ROTATIONS,
        }
    }

    /// Checks the region (`^([a-z]+-){2,3}\d+$`), the account id (12 digits) and the limits.
    pub fn validate(&self) -> Result<()> {
        let parts: Vec<&str> = self.region.split('-').collect();
        let region_ok = (3..=4).contains(&parts.len())
            && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
            && parts.last().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !region_ok {
            return Err(KmsError::Config(format!("region {:?} is not a region name like us-east-1", self.region)));
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KmsError::Config(format!("account id {:?} must be 12 digits", self.account_id)));
        }
        if self.max_body < 64 * 1024 {
            return Err(KmsError::Config("the body limit must be at least 64 KiB".into()));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(KmsError::Config("the connection limit must be between 1 and 1000000".into()));
        }
        if !(1..=10_000_000).contains(&self.max_keys) {
            return Err(KmsError::Config("the key limit must be between 1 and 10000000".into()));
        }
        if self.client_timeout < std::time::Duration::from_millis(100)
            || self.client_timeout > std::time::Duration::from_secs(3600)
        {
            return Err(KmsError::Config("the client timeout must be between 100ms and 1h".into()));
        }
        Ok(())
    }
}

/// The key server's state: the key store, the accepted credentials and the settings.
pub struct Server {
    store: Arc<KeyStore>,
    /// Replaced whole by [`Server::reload_credentials`] (SIGHUP); requests take a snapshot.
    /// Shared by every region of the server.
    credentials: Arc<std::sync::RwLock<Arc<CredentialStore>>>,
    config: Config,
    names: ids::Names,
    audit: Option<Arc<audit::AuditLog>>,
    metrics: Arc<metrics::Metrics>,
    clock: Arc<maintenance::Clock>,
    policies: op::PolicyCache,
    /// The server's other regions: each its own key store and ARNs, sharing the credentials,
    /// the audit log, the metrics and the clock ([`Server::add_region`]).
    others: Vec<Arc<Server>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `store`, accepting requests signed with `credentials`. Starts and runs
    /// nothing: [`serve`] and [`tls::serve_tls`] run the key maintenance when they start and
    /// then every [`maintenance::INTERVAL`], audited in the server's log
    /// ([`Server::run_maintenance`] runs it now).
    pub fn new(store: Arc<KeyStore>, credentials: CredentialStore, config: Config) -> Result<Self> {
        config.validate()?;
        let names = ids::Names::new(&config.region, &config.account_id);
        let clock = Arc::new(maintenance::Clock::default());
        let policies = op::PolicyCache::new(&config.account_id)?;
        // The quotas are checked inside the store's write transactions, so requests however
        // interleaved, and replicas sharing one database, never go past them together.
        Self::set_store_limits(&store, &config);
        Ok(Self {
            store,
            credentials: Arc::new(std::sync::RwLock::new(Arc::new(credentials))),
            config,
            names,
            audit: None,
            metrics: Arc::new(metrics::Metrics::new()),
            clock,
            policies,
            others: Vec::new(),
        })
    }

    fn set_store_limits(store: &KeyStore, config: &Config) {
        store.set_limits(envelope_keystore::Limits {
            max_keys: Some(config.max_keys),
            max_tags: Some(protocol::MAX_TAGS),
            max_on_demand_rotations: Some(config.max_on_demand_rotations),
        });
    }

    /// Adds `region`, whose keys are in `store`: requests whose SigV4 credential scope names
    /// it are served from that store, with that region's ARNs, as AWS keeps each region's keys
    /// apart (a key of one region is NotFound in another). The account, the credentials, the
    /// audit log, the metrics and the settings are shared; the quotas apply per region, as
    /// AWS's do. Call it before the server is shared.
    pub fn add_region(&mut self, region: &str, store: Arc<KeyStore>) -> Result<()> {
        let mut config = self.config.clone();
        config.region = region.to_string();
        config.validate()?;
        if self.regions().any(|r| r == region) {
            return Err(KmsError::Config(format!("region {region} is given twice")));
        }
        Self::set_store_limits(&store, &config);
        let other = Server {
            store,
            credentials: self.credentials.clone(),
            names: ids::Names::new(region, &config.account_id),
            policies: op::PolicyCache::new(&config.account_id)?,
            config,
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            others: Vec::new(),
        };
        self.others.push(Arc::new(other));
        Ok(())
    }

    /// The regions served: this server's own first, then those added with
    /// [`Server::add_region`].
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.config.region.as_str()).chain(self.others.iter().map(|o| o.config.region.as_str()))
    }

    /// The server of another region added with [`Server::add_region`] (this server's own
    /// region is not among them).
    pub fn other_region(&self, region: &str) -> Option<&Arc<Server>> {
        self.others.iter().find(|o| o.config.region == region)
    }

    /// The servers of the regions added with [`Server::add_region`].
    pub fn other_regions(&self) -> &[Arc<Server>] {
        &self.others
    }

    /// Writes one audit record per request to `log` (in every region added so far and later).
    pub fn with_audit(mut self, log: audit::AuditLog) -> Self {
        let log = Arc::new(log);
        for o in &mut self.others {
            if let Some(o) = Arc::get_mut(o) {
                o.audit = Some(log.clone());
            }
        }
        self.audit = Some(log);
        self
    }

    /// What records the key maintenance's changes: the audit log, if configured.
    pub fn recorder(&self) -> Option<maintenance::Recorder> {
        let log = self.audit.clone()?;
        Some(maintenance::Recorder::new(log, &self.config.region, &self.config.account_id))
    }

    /// The accepted credentials now.
    pub fn credentials(&self) -> Arc<CredentialStore> {
        match self.credentials.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the accepted credentials (e.g. the credentials file re-read on SIGHUP). Requests
    /// in progress finish with the credentials they started with; open connections stay open.
    pub fn reload_credentials(&self, credentials: CredentialStore) {
        let new = Arc::new(credentials);
        match self.credentials.write() {
            Ok(mut c) => *c = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// The audit log, if configured.
    pub fn audit(&self) -> Option<&audit::AuditLog> {
        self.audit.as_deref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The clock used for deletion dates and rotation schedules (tests move it forward).
    pub fn clock(&self) -> &Arc<maintenance::Clock> {
        &self.clock
    }

    /// Deletes keys past their deletion date, rotates keys that are due and deletes expired
    /// imported material, now, audited. Blocking; serving runs it at start and every
    /// [`maintenance::INTERVAL`].
    pub fn run_maintenance(&self) -> Result<maintenance::Report> {
        maintenance::run_recorded(&self.store, self.clock.now(), self.recorder().as_ref())
            .map_err(|e| KmsError::from_store(e, error::Subject::Internal))
    }

    /// The key store.
    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Naming (ARNs) for this server's region and account.
    pub fn names(&self) -> &ids::Names {
        &self.names
    }
}
