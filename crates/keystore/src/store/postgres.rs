//! The PostgreSQL engine: one database shared by several key servers (replicas) or plugin
//! nodes.
//!
//! * Client: tokio-postgres with a deadpool connection pool, on a small runtime of its own (the
//!   key store's API is blocking; calls from any thread, async or not, wait on a channel).
//! * TLS: rustls (aws-lc-rs). `sslmode=require` (or `verify-ca`/`verify-full`, the same here:
//!   the chain and the host name are always verified) with the CA from `sslrootcert=FILE`, else
//!   the system's roots.
//! * Writes: one transaction each, READ COMMITTED, that first locks the single `envelope_meta`
//!   row (`SELECT … FOR UPDATE`): writers take turns, as SQLite's IMMEDIATE transactions do, and
//!   every check inside a write sees everything committed before it (no lost update between
//!   replicas). A write that changed something bumps `envelope_meta.change` and sends
//!   `NOTIFY envelope_store`, both delivered with its commit.
//! * Reads: the whole store in one REPEATABLE READ, READ ONLY transaction, with the change
//!   counter it was read at; a refresh that finds the counter unchanged reads nothing else.
//! * Coherence: a connection of its own LISTENs on `envelope_store` and pokes the key store's
//!   watcher, which also checks the counter every refresh interval (a missed notification costs
//!   at most one interval).
//! * Background work: one process at a time, the holder of a session-level advisory lock on a
//!   connection of its own; when it dies or loses the database the lock is released and the next
//!   process that asks takes over.
//! * Schema: numbered migrations in `envelope_meta.schema_version`, applied under a
//!   transaction-level advisory lock so replicas starting together migrate once.
//!
//! The database only ever holds material sealed under the root key, which stays with each
//! process (its data directory or its PKCS#11 token).

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, IsolationLevel};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::AliasInfo;
use super::engine::{
    AliasRow, Engine, GrantRow, ImportRequest, ImportRow, KeyRow, MaterialRow, NewKey, NewVersion, ON_DEMAND_MATERIALS,
    ON_DEMAND_VERSIONS, PolicyRow, Rows, TagRow, VersionRow, check_count, check_tags,
};
use super::import;
use crate::error::{Error, Limit, Result};
use crate::model::{KeyState, RotationType};

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Schema version this build writes in PostgreSQL.
pub const PG_SCHEMA_VERSION: i64 = PG_MIGRATIONS.len() as i64;
/// The notification channel of changes.
pub const CHANNEL: &str = "envelope_store";
/// Advisory lock id of schema migrations ("envelope" + 1).
const MIGRATE_LOCK: i64 = 0x656e_7665_6c6f_7001;
/// Advisory lock id of the background work's leadership ("envelope" + 2).
const LEADER_LOCK: i64 = 0x656e_7665_6c6f_7002;

/// How a PostgreSQL store is reached.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user[:password]@host[:port]/database?sslmode=require&sslrootcert=FILE`
    /// (libpq's URL form; a `host=/run/postgresql` parameter reaches a Unix socket).
    pub url: String,
    /// Most connections in the pool.
    pub pool_size: usize,
    /// How long a call waits for a connection before failing with [`Error::Unavailable`].
    pub connect_timeout: Duration,
    /// A schema of its own for the store's tables (created if missing), so several stores
    /// (e.g. a key server's regions) share one database; `None`: the connection's default
    /// search path (`public`).
    pub schema: Option<String>,
}

impl PostgresOptions {
    /// Defaults for `url`: a pool of 8, a 5-second connection timeout.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_string(), pool_size: 8, connect_timeout: Duration::from_secs(5), schema: None }
    }
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL database holding a key store.
pub struct Postgres {
    rt: Option<Runtime>,
    handle: Handle,
    pool: Pool,
    config: Config,
    tls: MakeRustlsConnect,
    target: String,
    leader: Arc<tokio::sync::Mutex<Option<Client>>>,
    /// The advisory lock whose holder is the leader: one per schema.
    leader_lock: i64,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Never blocks (the store may be dropped on an async thread): pooled connections and the
        // listener close with the runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Postgres {
    /// Connects, checks the server answers, and brings the schema up to date.
    pub fn open(opts: &PostgresOptions) -> Result<Self> {
        let (mut config, tls) = parse_url(&opts.url)?;
        // A database that stops answering must fail calls, not hang them: every connection
        // (pool, listener, leader) gives up connecting after the timeout, and a peer that
        // vanished without a FIN is found by keepalives and the TCP user timeout.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.connect_timeout);
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(CALL_TIMEOUT);
        let mut target = target_of(&config);
        let leader_lock = match &opts.schema {
            None => LEADER_LOCK,
            Some(schema) => {
                check_schema_name(schema)?;
                // Every connection's tables are the schema's; PostgreSQL reads `-c` settings from
                // the startup packet's options.
                let options = match config.get_options() {
                    Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
                    _ => format!("-c search_path={schema}"),
                };
                config.options(&options);
                target = format!("{target} (schema {schema})");
                schema_lock(schema)
            }
        };
        if config.get_ssl_mode() != SslMode::Require && !is_local(&config) {
            tracing::warn!(
                database = %target,
                "the connection to PostgreSQL is not required to use TLS (add sslmode=require to the URL): key \
                 material stays sealed, but key metadata and policies travel in the clear"
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("envelope-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Storage(format!("cannot start the PostgreSQL client's runtime: {e}")))?;
        let handle = rt.handle().clone();
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = {
            let _enter = rt.enter();
            Pool::builder(manager)
                .max_size(opts.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(opts.connect_timeout))
                .create_timeout(Some(opts.connect_timeout))
                .recycle_timeout(Some(opts.connect_timeout))
                .build()
                .map_err(|e| Error::Storage(format!("PostgreSQL pool: {e}")))?
        };
        let pg = Self {
            rt: Some(rt),
            handle,
            pool,
            config,
            tls,
            target,
            leader: Arc::new(tokio::sync::Mutex::new(None)),
            leader_lock,
        };
        let pool = pg.pool.clone();
        let schema = opts.schema.clone();
        pg.run(async move {
            if let Some(schema) = schema {
                // Under the migration lock: replicas starting together create it once.
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]).await?;
                tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
                tx.commit().await?;
            }
            migrate(&pool).await
        })?;
        Ok(pg)
    }

    /// Runs `f` on the engine's runtime and waits for it (from any thread), for at most
    /// [`CALL_TIMEOUT`]: a database that hangs fails the call with [`Error::Unavailable`] (a
    /// transaction cut short is rolled back when it is dropped).
    fn run<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let done = match tokio::time::timeout(CALL_TIMEOUT, f).await {
                Ok(r) => r,
                Err(_) => {
                    Err(Error::Unavailable(format!("PostgreSQL did not answer within {} s", CALL_TIMEOUT.as_secs())))
                }
            };
            let _ = tx.send(done);
        });
        rx.recv().map_err(|_| Error::Unavailable("the PostgreSQL client stopped".into()))?
    }
}

/// The longest a store call waits for PostgreSQL (connection, queries and commit together).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Engine for Postgres {
    fn describe(&self) -> String {
        format!("PostgreSQL database {}", self.target)
    }

    fn load(&self) -> Result<Rows> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx =
                c.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
            let rows = load(&tx).await?;
            tx.commit().await?;
            Ok(rows)
        })
    }

    fn change(&self) -> Result<Option<i64>> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = client(&pool).await?;
            let row = c.query_one("SELECT change FROM envelope_meta WHERE id = 1", &[]).await?;
            Ok(Some(row.try_get(0)?))
        })
    }

    fn has_material(&self, mid: &str) -> Result<bool> {
        let (pool, mid) = (self.pool.clone(), mid.to_string());
        self.run(async move {
            let c = client(&pool).await?;
            Ok(c.query_opt("SELECT 1 FROM key_versions WHERE material_id = $1", &[&mid]).await?.is_some())
        })
    }

    fn create_key(&self, k: &NewKey<'_>) -> Result<()> {
        let pool = self.pool.clone();
        let (id, description, created_at) = (k.key_id.to_string(), k.description.to_string(), k.created_at);
        let (alias, version) = (k.alias.map(str::to_string), k.version.clone());
        let (tags, policy, max_keys, key_spec, key_usage) =
            (k.tags.to_vec(), k.policy.map(str::to_string), k.max_keys, k.key_spec, k.key_usage);
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            if max_keys.is_some() {
                let count: i64 = tx.query_one("SELECT COUNT(*) FROM keys", &[]).await?.try_get(0)?;
                check_count(count, max_keys, Limit::Keys)?;
            }
            if let Some(a) = &alias
                && alias_target(&tx, a).await?.is_some()
            {
                return Err(Error::AlreadyExists(a.clone()));
            }
            match &version {
                None => {
                    tx.execute(
                        "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                         VALUES ($1, $2, 'PendingImport', $3, '', $4, $5)",
                        &[&id, &description, &created_at, &key_spec.as_str(), &key_usage.as_str()],
                    )
                    .await?;
                    tx.execute("INSERT INTO key_import (key_id) VALUES ($1)", &[&id]).await?;
                }
                Some(v) => {
                    tx.execute(
                        "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                         VALUES ($1, $2, 'Enabled', $3, $4, $5, $6)",
                        &[&id, &description, &created_at, &v.material_id, &key_spec.as_str(), &key_usage.as_str()],
                    )
                    .await?;
                    tx.execute(
                        "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES ($1, $2, 1, $3, $4)",
                        &[&v.material_id, &id, &created_at, &v.sealed],
                    )
                    .await?;
                }
            }
            if let Some(a) = &alias {
                tx.execute("INSERT INTO aliases (name, key_id, created_at) VALUES ($1, $2, $3)", &[a, &id, &created_at])
                    .await?;
            }
            put_tags(&tx, &id, &tags).await?;
            if let Some(p) = &policy {
                tx.execute("INSERT INTO key_policies (key_id, name, policy) VALUES ($1, 'default', $2)", &[&id, p])
                    .await?;
            }
            commit_change(tx).await
        })
    }

    fn rotate(
        &self,
        id: &str,
        v: &NewVersion,
        kind: RotationType,
        at: i64,
        max_on_demand: Option<usize>,
    ) -> Result<()> {
        let (pool, id, v) = (self.pool.clone(), id.to_string(), v.clone());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id, state });
            }
            if is_external(&tx, &id).await? {
                return Err(Error::Unsupported(format!("key {id} has imported key material and cannot be rotated")));
            }
            if max_on_demand.is_some() {
                let count: i64 = tx.query_one(ON_DEMAND_VERSIONS, &[&id]).await?.try_get(0)?;
                check_count(count, max_on_demand, Limit::OnDemandRotations)?;
            }
            add_version(&tx, &id, &v, kind, at).await?;
            commit_change(tx).await
        })
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            if matches!(state, KeyState::PendingDeletion | KeyState::PendingImport) {
                return Err(Error::InvalidState { key: id, state });
            }
            let new = if enabled { KeyState::Enabled } else { KeyState::Disabled };
            tx.execute("UPDATE keys SET state = $1 WHERE key_id = $2", &[&new.as_str(), &id]).await?;
            commit_change(tx).await
        })
    }

    fn schedule_deletion(&self, id: &str, deletion_date: i64, window_days: u32) -> Result<()> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id, state });
            }
            tx.execute("UPDATE keys SET state = 'PendingDeletion' WHERE key_id = $1", &[&id]).await?;
            let window = i64::from(window_days);
            upsert_attrs(&tx, &id, "deletion_date = $2, pending_window_days = $3", &[&deletion_date, &window]).await?;
            commit_change(tx).await
        })
    }

    fn cancel_deletion(&self, id: &str) -> Result<()> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            if state != KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id, state });
            }
            tx.execute(
                "UPDATE keys SET state = CASE WHEN current_material = '' OR EXISTS (SELECT 1 FROM key_materials m \
                 WHERE m.key_id = keys.key_id AND NOT m.imported AND m.state <> 'PENDING_ROTATION') \
                 THEN 'PendingImport' ELSE 'Disabled' END WHERE key_id = $1",
                &[&id],
            )
            .await?;
            upsert_attrs(&tx, &id, "deletion_date = NULL, pending_window_days = NULL", &[]).await?;
            commit_change(tx).await
        })
    }

    fn purge_deleted(&self, now: i64) -> Result<Vec<String>> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let ids: Vec<String> = tx
                .query(
                    "SELECT k.key_id FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
                     WHERE k.state = 'PendingDeletion' AND a.deletion_date IS NOT NULL AND a.deletion_date <= $1 \
                     ORDER BY k.key_id",
                    &[&now],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(ids);
            }
            for id in &ids {
                tx.execute(
                    "DELETE FROM version_types WHERE material_id IN (SELECT material_id FROM key_versions WHERE key_id = $1)",
                    &[id],
                )
                .await?;
                for table in super::sqlite::KEY_TABLES {
                    tx.execute(&format!("DELETE FROM {table} WHERE key_id = $1"), &[id]).await?;
                }
            }
            commit_change(tx).await?;
            Ok(ids)
        })
    }

    fn set_description(&self, id: &str, description: &str) -> Result<()> {
        let (pool, id, description) = (self.pool.clone(), id.to_string(), description.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            tx.execute("UPDATE keys SET description = $1 WHERE key_id = $2", &[&description, &id]).await?;
            commit_change(tx).await
        })
    }

    fn set_rotation(&self, id: &str, schedule: Option<(u32, i64)>) -> Result<()> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            let (period, next) = schedule.map(|(p, n)| (i64::from(p), n)).unzip();
            upsert_attrs(&tx, &id, "rotation_period_days = $2, next_rotation = $3", &[&period, &next]).await?;
            commit_change(tx).await
        })
    }

    fn due_rotations(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = client(&pool).await?;
            let rows = c.query(&format!("{DUE_ROTATIONS} ORDER BY k.key_id"), &[&now]).await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    fn rotate_automatic(&self, id: &str, v: &NewVersion, now: i64, next: i64) -> Result<bool> {
        let (pool, id, v) = (self.pool.clone(), id.to_string(), v.clone());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            if tx.query_opt(&format!("{DUE_ROTATIONS} AND k.key_id = $2"), &[&now, &id]).await?.is_none() {
                return Ok(false);
            }
            add_version(&tx, &id, &v, RotationType::Automatic, now).await?;
            upsert_attrs(&tx, &id, "next_rotation = $2", &[&next]).await?;
            commit_change(tx).await?;
            Ok(true)
        })
    }

    fn tag(&self, id: &str, tags: &[(String, String)], max_tags: Option<usize>) -> Result<()> {
        let (pool, id, tags) = (self.pool.clone(), id.to_string(), tags.to_vec());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            if max_tags.is_some() {
                let rows = tx.query("SELECT tag_key FROM key_tags WHERE key_id = $1", &[&id]).await?;
                let existing = rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<Vec<String>, _>>()?;
                check_tags(&existing, &tags, max_tags)?;
            }
            put_tags(&tx, &id, &tags).await?;
            commit_change(tx).await
        })
    }

    fn untag(&self, id: &str, tag_keys: &[String]) -> Result<()> {
        let (pool, id, tag_keys) = (self.pool.clone(), id.to_string(), tag_keys.to_vec());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            for k in &tag_keys {
                tx.execute("DELETE FROM key_tags WHERE key_id = $1 AND tag_key = $2", &[&id, k]).await?;
            }
            commit_change(tx).await
        })
    }

    fn put_policy(&self, id: &str, policy: &str) -> Result<()> {
        let (pool, id, policy) = (self.pool.clone(), id.to_string(), policy.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            key_state(&tx, &id).await?;
            tx.execute(
                "INSERT INTO key_policies (key_id, name, policy) VALUES ($1, 'default', $2) \
                 ON CONFLICT (key_id, name) DO UPDATE SET policy = excluded.policy",
                &[&id, &policy],
            )
            .await?;
            commit_change(tx).await
        })
    }

    fn create_grant(&self, g: &GrantRow, limit: usize) -> Result<String> {
        let (pool, g) = (self.pool.clone(), g.clone());
        self.run(async move {
            let wanted = g.grant()?;
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&g.key_id, key_state(&tx, &g.key_id).await?)?;
            if g.name.is_some() {
                for r in tx.query(&format!("{GRANTS} WHERE key_id = $1 AND name = $2"), &[&g.key_id, &g.name]).await? {
                    let r = grant_row(&r)?;
                    if r.grant()?.same_request(&wanted) {
                        tx.rollback().await?;
                        return Ok(r.grant_id);
                    }
                }
            }
            let n: i64 =
                tx.query_one("SELECT COUNT(*) FROM key_grants WHERE key_id = $1", &[&g.key_id]).await?.try_get(0)?;
            check_count(n, Some(limit), Limit::Grants)?;
            insert_grant(&tx, &g).await?;
            commit_change(tx).await?;
            Ok(g.grant_id)
        })
    }

    fn delete_grant(&self, id: &str, grant_id: &str) -> Result<()> {
        let (pool, id, grant_id) = (self.pool.clone(), id.to_string(), grant_id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let n = tx.execute("DELETE FROM key_grants WHERE key_id = $1 AND grant_id = $2", &[&id, &grant_id]).await?;
            if n == 0 {
                return Err(Error::NotFound(format!("grant {grant_id}")));
            }
            commit_change(tx).await
        })
    }

    fn import_material(&self, id: &str, req: &ImportRequest) -> Result<()> {
        let (pool, id, req) = (self.pool.clone(), id.to_string(), req.clone());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            let rows = external_materials(&tx, &id).await?;
            apply(&tx, &id, &import::plan_import(&id, state, rows, &req)?, req.at).await?;
            commit_change(tx).await
        })
    }

    fn delete_imported(&self, id: &str, which: Option<&str>) -> Result<String> {
        let (pool, id, which) = (self.pool.clone(), id.to_string(), which.map(str::to_string));
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            let rows = external_materials(&tx, &id).await?;
            let change = import::plan_delete(&id, state, rows, which.as_deref())?;
            apply(&tx, &id, &change, 0).await?;
            commit_change(tx).await?;
            Ok(change.material_id)
        })
    }

    fn rotate_imported(&self, id: &str, at: i64, max_on_demand: Option<usize>) -> Result<String> {
        let (pool, id) = (self.pool.clone(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let state = key_state(&tx, &id).await?;
            let rows = external_materials(&tx, &id).await?;
            let change = import::plan_rotate(&id, state, rows, at)?;
            if max_on_demand.is_some() {
                let count: i64 = tx.query_one(ON_DEMAND_MATERIALS, &[&id]).await?.try_get(0)?;
                check_count(count, max_on_demand, Limit::OnDemandRotations)?;
            }
            apply(&tx, &id, &change, at).await?;
            commit_change(tx).await?;
            Ok(change.material_id)
        })
    }

    fn expire_imported(&self, now: i64) -> Result<Vec<String>> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let due = tx
                .query(
                    "SELECT DISTINCT k.key_id, k.state FROM keys k JOIN key_materials m ON m.key_id = k.key_id \
                     WHERE m.imported AND m.valid_to IS NOT NULL AND m.valid_to <= $1 ORDER BY k.key_id",
                    &[&now],
                )
                .await?;
            let mut ids = Vec::with_capacity(due.len());
            for r in &due {
                let (id, state): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let rows = materials(&tx, &id).await?;
                if let Some(change) = import::plan_expire(KeyState::parse(&state)?, rows, now) {
                    apply(&tx, &id, &change, now).await?;
                    ids.push(id);
                }
            }
            if ids.is_empty() {
                return Ok(ids);
            }
            commit_change(tx).await?;
            Ok(ids)
        })
    }

    fn create_alias(&self, alias: &str, id: &str, now: i64) -> Result<()> {
        let (pool, alias, id) = (self.pool.clone(), alias.to_string(), id.to_string());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            if alias_target(&tx, &alias).await?.is_some() {
                return Err(Error::AlreadyExists(alias));
            }
            tx.execute(
                "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES ($1, $2, $3, $3)",
                &[&alias, &id, &now],
            )
            .await?;
            commit_change(tx).await
        })
    }

    fn update_alias(&self, alias: &str, id: &str, expected: Option<&str>, now: i64) -> Result<()> {
        let (pool, alias, id) = (self.pool.clone(), alias.to_string(), id.to_string());
        let expected = expected.map(str::to_string);
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            refuse_pending_deletion(&id, key_state(&tx, &id).await?)?;
            require_alias_target(&tx, &alias, expected.as_deref()).await?;
            let changed = tx
                .execute("UPDATE aliases SET key_id = $1, updated_at = $2 WHERE name = $3", &[&id, &now, &alias])
                .await?;
            if changed == 0 {
                return Err(Error::NotFound(alias));
            }
            commit_change(tx).await
        })
    }

    fn delete_alias(&self, alias: &str, expected: Option<&str>) -> Result<()> {
        let (pool, alias) = (self.pool.clone(), alias.to_string());
        let expected = expected.map(str::to_string);
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            require_alias_target(&tx, &alias, expected.as_deref()).await?;
            if tx.execute("DELETE FROM aliases WHERE name = $1", &[&alias]).await? == 0 {
                return Err(Error::NotFound(alias));
            }
            commit_change(tx).await
        })
    }

    fn list_aliases(&self) -> Result<Vec<AliasInfo>> {
        let pool = self.pool.clone();
        self.run(async move {
            let c = client(&pool).await?;
            let rows = c
                .query(
                    "SELECT name, key_id, created_at, COALESCE(updated_at, created_at) FROM aliases ORDER BY name COLLATE \"C\"",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AliasInfo {
                        name: r.try_get(0)?,
                        key_id: r.try_get(1)?,
                        created_at: r.try_get(2)?,
                        updated_at: r.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    fn restore(&self, rows: &Rows) -> Result<()> {
        let (pool, rows, target) = (self.pool.clone(), rows.clone(), self.describe());
        self.run(async move {
            let mut c = client(&pool).await?;
            let tx = begin_write(&mut c).await?;
            let n: i64 = tx.query_one("SELECT COUNT(*) FROM keys", &[]).await?.try_get(0)?;
            if n != 0 {
                return Err(Error::Conflict(format!("{target} already holds {n} key(s): restore needs an empty store")));
            }
            for k in &rows.keys {
                tx.execute(
                    "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&k.key_id, &k.description, &k.state, &k.created_at, &k.current_material, &k.key_spec, &k.key_usage],
                )
                .await?;
                if k.deletion_date.is_some()
                    || k.pending_window_days.is_some()
                    || k.rotation_period_days.is_some()
                    || k.next_rotation.is_some()
                {
                    tx.execute(
                        "INSERT INTO key_attrs (key_id, deletion_date, pending_window_days, rotation_period_days, next_rotation) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &k.key_id,
                            &k.deletion_date,
                            &k.pending_window_days.map(i64::from),
                            &k.rotation_period_days.map(i64::from),
                            &k.next_rotation,
                        ],
                    )
                    .await?;
                }
            }
            for v in &rows.versions {
                tx.execute(
                    "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES ($1, $2, $3, $4, $5)",
                    &[&v.material_id, &v.key_id, &i64::from(v.seq), &v.created_at, &v.sealed],
                )
                .await?;
                if let Some(t) = &v.rotation_type {
                    tx.execute(
                        "INSERT INTO version_types (material_id, rotation_type) VALUES ($1, $2)",
                        &[&v.material_id, t],
                    )
                    .await?;
                }
            }
            for a in &rows.aliases {
                tx.execute(
                    "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES ($1, $2, $3, $4)",
                    &[&a.name, &a.key_id, &a.created_at, &a.updated_at],
                )
                .await?;
            }
            for t in &rows.tags {
                tx.execute(
                    "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3)",
                    &[&t.key_id, &t.key, &t.value],
                )
                .await?;
            }
            for i in &rows.imports {
                tx.execute(
                    "INSERT INTO key_import (key_id, material_id, valid_to) VALUES ($1, $2, $3)",
                    &[&i.key_id, &i.material_id, &i.valid_to],
                )
                .await?;
            }
            for p in &rows.policies {
                tx.execute(
                    "INSERT INTO key_policies (key_id, name, policy) VALUES ($1, 'default', $2)",
                    &[&p.key_id, &p.policy],
                )
                .await?;
            }
            for m in &rows.materials {
                insert_material(&tx, m).await?;
            }
            for g in &rows.grants {
                insert_grant(&tx, g).await?;
            }
            commit_change(tx).await
        })
    }

    fn is_leader(&self) -> Result<bool> {
        let (leader, config, tls, lock) =
            (self.leader.clone(), self.config.clone(), self.tls.clone(), self.leader_lock);
        self.run(async move {
            let mut held = leader.lock().await;
            if let Some(c) = held.as_ref() {
                // Still the leader while the session that holds the lock is alive.
                if !c.is_closed() && c.simple_query("SELECT 1").await.is_ok() {
                    return Ok(true);
                }
                *held = None;
            }
            let (c, conn) = config.connect(tls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let won: bool = c.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await?.try_get(0)?;
            if won {
                *held = Some(c);
            }
            Ok(won)
        })
    }

    fn watch(&self, poke: Sender<()>) -> Result<()> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        self.handle.spawn(listen(config, tls, poke));
        Ok(())
    }
}

/// Enabled, non-external keys whose automatic rotation is due at $1, with their periods.
const DUE_ROTATIONS: &str = "SELECT k.key_id, a.rotation_period_days FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
     WHERE k.state = 'Enabled' AND a.rotation_period_days IS NOT NULL AND a.next_rotation IS NOT NULL \
     AND a.next_rotation <= $1 AND k.key_id NOT IN (SELECT key_id FROM key_import)";

const PG_MIGRATIONS: &[&str] = &[
    // version 1: the SQLite schema 4, with 64-bit integers and BYTEA
    "CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        current_material TEXT NOT NULL
     );
     CREATE TABLE key_versions (
        material_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        seq BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        sealed BYTEA NOT NULL,
        UNIQUE (key_id, seq)
     );
     CREATE TABLE aliases (
        name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        created_at BIGINT NOT NULL,
        updated_at BIGINT
     );
     CREATE TABLE key_attrs (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        deletion_date BIGINT,
        pending_window_days BIGINT,
        rotation_period_days BIGINT,
        next_rotation BIGINT
     );
     CREATE TABLE version_types (
        material_id TEXT PRIMARY KEY REFERENCES key_versions(material_id),
        rotation_type TEXT NOT NULL
     );
     CREATE TABLE key_tags (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        tag_key TEXT NOT NULL,
        tag_value TEXT NOT NULL,
        PRIMARY KEY (key_id, tag_key)
     );
     CREATE TABLE key_policies (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        name TEXT NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (key_id, name)
     );
     CREATE TABLE key_import (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        material_id TEXT,
        valid_to BIGINT
     );",
    // version 2 (SQLite schema 5): several materials per external key; an existing import
    // becomes the key's CURRENT material record
    "CREATE TABLE key_materials (
        material_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        seq BIGINT NOT NULL,
        state TEXT NOT NULL,
        imported BOOLEAN NOT NULL,
        description TEXT,
        valid_to BIGINT,
        created_at BIGINT NOT NULL,
        rotated_at BIGINT,
        UNIQUE (key_id, seq)
     );
     INSERT INTO key_materials (material_id, key_id, seq, state, imported, valid_to, created_at)
        SELECT i.material_id, i.key_id, 1, 'CURRENT', k.current_material <> '',
               CASE WHEN k.current_material <> '' THEN i.valid_to END, COALESCE(v.created_at, k.created_at)
        FROM key_import i JOIN keys k ON k.key_id = i.key_id
        LEFT JOIN key_versions v ON v.material_id = i.material_id
        WHERE i.material_id IS NOT NULL;",
    // version 3 (SQLite schema 6): grants
    "CREATE TABLE IF NOT EXISTS key_grants (
        grant_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        name TEXT,
        grantee TEXT NOT NULL,
        retiring TEXT,
        issuing_account TEXT NOT NULL,
        operations TEXT NOT NULL,
        constraints TEXT,
        created_at BIGINT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS key_grants_by_key ON key_grants (key_id, name);",
    // version 4 (SQLite schema 7): key specs beyond SYMMETRIC_DEFAULT (HMAC and asymmetric keys):
    // each key's KeySpec and KeyUsage; every existing key is a symmetric encryption key
    "ALTER TABLE keys ADD COLUMN IF NOT EXISTS key_spec TEXT NOT NULL DEFAULT 'SYMMETRIC_DEFAULT';
     ALTER TABLE keys ADD COLUMN IF NOT EXISTS key_usage TEXT NOT NULL DEFAULT 'ENCRYPT_DECRYPT';",
];

/// Creates `envelope_meta` and applies the missing migrations, under an advisory lock.
async fn migrate(pool: &Pool) -> Result<()> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS envelope_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            schema_version BIGINT NOT NULL,
            change BIGINT NOT NULL
         );
         INSERT INTO envelope_meta (id, schema_version, change) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;",
    )
    .await?;
    let found: i64 = tx.query_one("SELECT schema_version FROM envelope_meta WHERE id = 1", &[]).await?.try_get(0)?;
    if found > PG_SCHEMA_VERSION {
        return Err(Error::SchemaVersion { found, supported: PG_SCHEMA_VERSION });
    }
    for (i, sql) in PG_MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(sql).await?;
        let version = i as i64 + 1;
        tx.execute("UPDATE envelope_meta SET schema_version = $1 WHERE id = 1", &[&version]).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => Error::from(e),
        other => Error::Unavailable(other.to_string()),
    })
}

/// Starts a write transaction: READ COMMITTED, after taking the store's write lock (the
/// `envelope_meta` row), so every statement after it sees all earlier writes.
async fn begin_write(c: &mut deadpool_postgres::Object) -> Result<Tx<'_>> {
    let tx = c.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    tx.execute("SELECT change FROM envelope_meta WHERE id = 1 FOR UPDATE", &[]).await?;
    Ok(tx)
}

/// Bumps the change counter, notifies the other processes (both on commit) and commits.
async fn commit_change(tx: Tx<'_>) -> Result<()> {
    let change: i64 = tx
        .query_one("UPDATE envelope_meta SET change = change + 1 WHERE id = 1 RETURNING change", &[])
        .await?
        .try_get(0)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &change.to_string()]).await?;
    tx.commit().await?;
    Ok(())
}

async fn load(tx: &Tx<'_>) -> Result<Rows> {
    let mut rows = Rows {
        version: Some(tx.query_one("SELECT change FROM envelope_meta WHERE id = 1", &[]).await?.try_get(0)?),
        ..Rows::default()
    };
    for r in tx
        .query(
            "SELECT k.key_id, k.description, k.state, k.created_at, k.current_material, a.deletion_date, \
             a.pending_window_days, a.rotation_period_days, a.next_rotation, k.key_spec, k.key_usage \
             FROM keys k LEFT JOIN key_attrs a ON a.key_id = k.key_id",
            &[],
        )
        .await?
    {
        rows.keys.push(KeyRow {
            key_id: r.try_get(0)?,
            description: r.try_get(1)?,
            state: r.try_get(2)?,
            created_at: r.try_get(3)?,
            current_material: r.try_get(4)?,
            deletion_date: r.try_get(5)?,
            pending_window_days: small(r.try_get(6)?)?,
            rotation_period_days: small(r.try_get(7)?)?,
            next_rotation: r.try_get(8)?,
            key_spec: r.try_get(9)?,
            key_usage: r.try_get(10)?,
        });
    }
    for r in
        tx.query("SELECT name, key_id, created_at, updated_at FROM aliases ORDER BY name COLLATE \"C\"", &[]).await?
    {
        rows.aliases.push(AliasRow {
            name: r.try_get(0)?,
            key_id: r.try_get(1)?,
            created_at: r.try_get(2)?,
            updated_at: r.try_get(3)?,
        });
    }
    for r in tx
        .query(
            "SELECT v.material_id, v.key_id, v.seq, v.created_at, v.sealed, t.rotation_type FROM key_versions v \
             LEFT JOIN version_types t ON t.material_id = v.material_id ORDER BY v.key_id, v.seq",
            &[],
        )
        .await?
    {
        let seq: i64 = r.try_get(2)?;
        rows.versions.push(VersionRow {
            material_id: r.try_get(0)?,
            key_id: r.try_get(1)?,
            seq: u32::try_from(seq).map_err(|_| Error::Storage(format!("version number {seq} out of range")))?,
            created_at: r.try_get(3)?,
            sealed: r.try_get(4)?,
            rotation_type: r.try_get(5)?,
        });
    }
    for r in
        tx.query("SELECT key_id, tag_key, tag_value FROM key_tags ORDER BY key_id, tag_key COLLATE \"C\"", &[]).await?
    {
        rows.tags.push(TagRow { key_id: r.try_get(0)?, key: r.try_get(1)?, value: r.try_get(2)? });
    }
    for r in tx.query("SELECT key_id, material_id, valid_to FROM key_import", &[]).await? {
        rows.imports.push(ImportRow { key_id: r.try_get(0)?, material_id: r.try_get(1)?, valid_to: r.try_get(2)? });
    }
    for r in tx.query("SELECT key_id, policy FROM key_policies WHERE name = 'default'", &[]).await? {
        rows.policies.push(PolicyRow { key_id: r.try_get(0)?, policy: r.try_get(1)? });
    }
    for r in tx.query(&format!("{MATERIALS} ORDER BY key_id, seq"), &[]).await? {
        rows.materials.push(material_row(&r)?);
    }
    for r in tx.query(&format!("{GRANTS} ORDER BY key_id, created_at, grant_id COLLATE \"C\""), &[]).await? {
        rows.grants.push(grant_row(&r)?);
    }
    Ok(rows)
}

/// The columns of a grant, in [`grant_row`]'s order.
const GRANTS: &str = "SELECT grant_id, key_id, name, grantee, retiring, issuing_account, operations, constraints, created_at \
     FROM key_grants";

fn grant_row(r: &tokio_postgres::Row) -> Result<GrantRow> {
    Ok(GrantRow {
        grant_id: r.try_get(0)?,
        key_id: r.try_get(1)?,
        name: r.try_get(2)?,
        grantee: r.try_get(3)?,
        retiring: r.try_get(4)?,
        issuing_account: r.try_get(5)?,
        operations: r.try_get(6)?,
        constraints: r.try_get(7)?,
        created_at: r.try_get(8)?,
    })
}

async fn insert_grant(tx: &Tx<'_>, g: &GrantRow) -> Result<()> {
    tx.execute(
        "INSERT INTO key_grants (grant_id, key_id, name, grantee, retiring, issuing_account, operations, constraints, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[&g.grant_id, &g.key_id, &g.name, &g.grantee, &g.retiring, &g.issuing_account, &g.operations, &g.constraints, &g.created_at],
    )
    .await?;
    Ok(())
}

/// The columns of a material record, in [`material_row`]'s order.
const MATERIALS: &str = "SELECT material_id, key_id, seq, state, imported, description, valid_to, created_at, rotated_at \
     FROM key_materials";

fn material_row(r: &tokio_postgres::Row) -> Result<MaterialRow> {
    let seq: i64 = r.try_get(2)?;
    Ok(MaterialRow {
        material_id: r.try_get(0)?,
        key_id: r.try_get(1)?,
        seq: u32::try_from(seq).map_err(|_| Error::Storage(format!("material number {seq} out of range")))?,
        state: r.try_get(3)?,
        imported: r.try_get(4)?,
        description: r.try_get(5)?,
        valid_to: r.try_get(6)?,
        created_at: r.try_get(7)?,
        rotated_at: r.try_get(8)?,
    })
}

async fn insert_material(tx: &Tx<'_>, m: &MaterialRow) -> Result<()> {
    tx.execute(
        "INSERT INTO key_materials (material_id, key_id, seq, state, imported, description, valid_to, created_at, rotated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &m.material_id,
            &m.key_id,
            &i64::from(m.seq),
            &m.state,
            &m.imported,
            &m.description,
            &m.valid_to,
            &m.created_at,
            &m.rotated_at,
        ],
    )
    .await?;
    Ok(())
}

/// The material records of key `id`, by sequence.
async fn materials(tx: &Tx<'_>, id: &str) -> Result<Vec<MaterialRow>> {
    tx.query(&format!("{MATERIALS} WHERE key_id = $1 ORDER BY seq"), &[&id]).await?.iter().map(material_row).collect()
}

/// The material records of external key `id` ([`Error::Unsupported`] for any other key).
async fn external_materials(tx: &Tx<'_>, id: &str) -> Result<Vec<MaterialRow>> {
    if !is_external(tx, id).await? {
        return Err(Error::Unsupported(format!("key {id} does not have origin EXTERNAL")));
    }
    materials(tx, id).await
}

/// Writes what an import decision changes for key `id` (a new version dated `at`).
async fn apply(tx: &Tx<'_>, id: &str, c: &import::Change, at: i64) -> Result<()> {
    for mid in &c.drop_versions {
        tx.execute("DELETE FROM version_types WHERE material_id = $1", &[mid]).await?;
        tx.execute("DELETE FROM key_versions WHERE material_id = $1", &[mid]).await?;
    }
    if let Some(v) = &c.add_version
        && tx.query_opt("SELECT 1 FROM key_versions WHERE material_id = $1", &[&v.material_id]).await?.is_none()
    {
        let seq = next_seq(tx, id).await?;
        tx.execute(
            "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES ($1, $2, $3, $4, $5)",
            &[&v.material_id, &id, &seq, &at, &v.sealed],
        )
        .await?;
    }
    tx.execute("DELETE FROM key_materials WHERE key_id = $1", &[&id]).await?;
    for m in &c.rows {
        insert_material(tx, m).await?;
    }
    tx.execute(
        "UPDATE keys SET current_material = $2, state = $3 WHERE key_id = $1",
        &[&id, &c.current, &c.state.as_str()],
    )
    .await?;
    Ok(())
}

fn small(v: Option<i64>) -> Result<Option<u32>> {
    v.map(|n| u32::try_from(n).map_err(|_| Error::Storage(format!("day count {n} out of range")))).transpose()
}

async fn key_state(tx: &Tx<'_>, id: &str) -> Result<KeyState> {
    let row = tx
        .query_opt("SELECT state FROM keys WHERE key_id = $1", &[&id])
        .await?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    KeyState::parse(&row.try_get::<_, String>(0)?)
}

fn refuse_pending_deletion(id: &str, state: KeyState) -> Result<()> {
    if state == KeyState::PendingDeletion {
        return Err(Error::InvalidState { key: id.to_string(), state });
    }
    Ok(())
}

async fn next_seq(tx: &Tx<'_>, id: &str) -> Result<i64> {
    Ok(tx
        .query_one("SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE key_id = $1", &[&id])
        .await?
        .try_get(0)?)
}

async fn add_version(tx: &Tx<'_>, id: &str, v: &NewVersion, kind: RotationType, at: i64) -> Result<()> {
    let seq = next_seq(tx, id).await?;
    tx.execute(
        "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES ($1, $2, $3, $4, $5)",
        &[&v.material_id, &id, &seq, &at, &v.sealed],
    )
    .await?;
    if let Some(t) = kind.as_str() {
        tx.execute("INSERT INTO version_types (material_id, rotation_type) VALUES ($1, $2)", &[&v.material_id, &t])
            .await?;
    }
    tx.execute("UPDATE keys SET current_material = $1 WHERE key_id = $2", &[&v.material_id, &id]).await?;
    Ok(())
}

async fn put_tags(tx: &Tx<'_>, id: &str, tags: &[(String, String)]) -> Result<()> {
    for (k, v) in tags {
        tx.execute(
            "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
            &[&id, k, v],
        )
        .await?;
    }
    Ok(())
}

/// Updates `set` (whose parameters start at $2; $1 is the key id) in the key's `key_attrs` row,
/// creating the row first if needed.
async fn upsert_attrs(tx: &Tx<'_>, id: &str, set: &str, p: &[&(dyn ToSql + Sync)]) -> Result<()> {
    tx.execute("INSERT INTO key_attrs (key_id) VALUES ($1) ON CONFLICT (key_id) DO NOTHING", &[&id]).await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(1 + p.len());
    params.push(&id);
    params.extend_from_slice(p);
    tx.execute(&format!("UPDATE key_attrs SET {set} WHERE key_id = $1"), &params).await?;
    Ok(())
}

async fn alias_target(tx: &Tx<'_>, alias: &str) -> Result<Option<String>> {
    Ok(match tx.query_opt("SELECT key_id FROM aliases WHERE name = $1", &[&alias]).await? {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

/// With `expected`, the alias must exist and point at that key.
async fn require_alias_target(tx: &Tx<'_>, alias: &str, expected: Option<&str>) -> Result<()> {
    let Some(want) = expected else { return Ok(()) };
    match alias_target(tx, alias).await? {
        None => Err(Error::NotFound(alias.to_string())),
        Some(c) if c == want => Ok(()),
        Some(_) => Err(Error::Changed(alias.to_string())),
    }
}

async fn is_external(tx: &Tx<'_>, id: &str) -> Result<bool> {
    Ok(tx.query_opt("SELECT 1 FROM key_import WHERE key_id = $1", &[&id]).await?.is_some())
}

/// LISTENs for changes on a connection of its own and pokes the watcher for each (and after
/// every reconnection, since notifications sent meanwhile are lost). Ends when the watcher is
/// gone.
async fn listen(config: Config, tls: MakeRustlsConnect, poke: Sender<()>) {
    let mut failures = 0u32;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                        match msg {
                            Ok(AsyncMessage::Notification(_)) => {
                                if ntx.send(()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        failures = 0;
                        // Changes made before LISTEN took effect (since the store was read, or
                        // while reconnecting) sent notifications nobody heard: refresh once now.
                        if poke.send(()).is_err() {
                            return;
                        }
                        while nrx.recv().await.is_some() {
                            if poke.send(()).is_err() {
                                return;
                            }
                        }
                        tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for key store changes"),
                }
                drop(client);
                driver.abort();
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot connect to PostgreSQL for change notifications; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The client configuration and TLS connector of a `postgres://` URL. `sslrootcert=FILE` (a PEM
/// CA bundle) and `sslmode=verify-ca`/`verify-full` are handled here; the rest by tokio-postgres.
/// A schema name used unquoted in SQL: lower-case ASCII letters, digits and `_`, not starting
/// with a digit, at most 63 bytes (PostgreSQL's identifier length), not `pg_*`.
fn check_schema_name(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with("pg_")
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if ok { Ok(()) } else { Err(Error::Invalid(format!("{schema:?} is not a usable PostgreSQL schema name"))) }
}

/// The leader lock of a store in `schema`: the default lock's upper half and a hash of the name
/// (FNV-1a), so stores in different schemas elect their leaders independently.
fn schema_lock(schema: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (LEADER_LOCK & !0xffff_ffff) | i64::from(h)
}

fn parse_url(url: &str) -> Result<(Config, MakeRustlsConnect)> {
    let bad = |why: String| Error::Invalid(format!("PostgreSQL URL {}: {why}", redact(url)));
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut kept = Vec::new();
    let mut root_cert = None;
    let mut mode_given = false;
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        mode_given |= k == "sslmode";
        match k {
            "sslrootcert" => root_cert = Some(percent_decode(v).map_err(&bad)?),
            "sslmode" if v == "verify-ca" || v == "verify-full" => kept.push("sslmode=require".to_string()),
            _ => kept.push(pair.to_string()),
        }
    }
    // A CA to verify the server with means TLS is wanted: never fall back to plain text
    // (tokio-postgres' default, `prefer`, would).
    if root_cert.is_some() && !mode_given {
        kept.push("sslmode=require".to_string());
    }
    let cleaned = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    let config: Config = cleaned.parse().map_err(|e: tokio_postgres::Error| bad(crate::error::with_causes(&e)))?;
    let mut roots = rustls::RootCertStore::empty();
    match &root_cert {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
            if certs.is_empty() {
                return Err(bad(format!("sslrootcert {path} holds no certificate")));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Storage(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, MakeRustlsConnect::new(tls)))
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
}

/// `host:port/database` for messages (never the user's password).
fn target_of(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().or(config.get_user()).unwrap_or("postgres"))
}

fn is_local(config: &Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        Host::Unix(_) => true,
        Host::Tcp(h) => h == "localhost" || h.starts_with("127.") || h == "::1",
    })
}

/// The URL (or key=value connection string) with every secret replaced by `***`: the password
/// of the user part (which may itself hold an unescaped `@`) and the values of the `password`
/// and `sslpassword` parameters, wherever they are.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return redact_params(url, ' ') };
    // The authority ends at the path or the query; its user part at the last '@' in it.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_params(query, '&')),
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `key=value` pairs separated by `sep`, with the values of secret keys replaced by `***`.
fn redact_params(params: &str, sep: char) -> String {
    params
        .split(sep)
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if ["password", "sslpassword"].contains(&k.trim().to_ascii_lowercase().as_str()) => {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made for this test (P-256, "envelope test CA").
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBijCCATGgAwIBAgIUSi6nHcwqTkedKLk4pGz6l8MHrOowCgYIKoZIzj0EAwIw\n\
GzEZMBcGA1UEAwwQZW52ZWxvcGUgdGVzdCBDQTAeFw0yNjEyMDIwMzA0MDBaFw0z\n\
NjExMjkwMzA0MDBaMBsxGTAXBgNVBAMMEGVudmVsb3BlIHRlc3QgQ0EwWTATBgcq\n\
hkjOPQIBBggqhkjOPQMBBwNCAAR/GswS9nTXvnfkYuK8oMVWWCHUkCPUeGsxvq5H\n\
Ty4Qm98CAt3/TL8Gq6HeTaYTsS19YseYq8mKPp3KinxmqnuHo1MwUTAdBgNVHQ4E\n\
FgQUV/+suMhHP3CxE5gdJhMmAd6deCAwHwYDVR0jBBgwFoAUV/+suMhHP3CxE5gd\n\
JhMmAd6deCAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiB/Oqpg\n\
U9r8OYzBHqbzhbbeF34fY8A3l1nfDtV4U0O5yQIgBL2iPfNVNk9ITCy8opVwa7Kl\n\
OX870gk+TfGPAgzpOSs=\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://u:secret@db:5432/k"), "postgres://u:***@db:5432/k");
        assert_eq!(redact("postgres://u@db/k"), "postgres://u@db/k");
        assert_eq!(redact("postgres://db/k?x=a@b"), "postgres://db/k?x=a@b");
        // An unescaped '@' in the password; secrets in the query; a key=value string.
        assert_eq!(redact("postgres://u:p@ss@db/k"), "postgres://u:***@db/k");
        assert_eq!(
            redact("postgres://u@db/k?sslmode=require&password=hunter2&PassWord=x&sslpassword=y"),
            "postgres://u@db/k?sslmode=require&password=***&PassWord=***&sslpassword=***"
        );
        assert_eq!(redact("postgresql://db?password=s3cret"), "postgresql://db?password=***");
        assert_eq!(redact("host=db user=u password=s3cret"), "host=db user=u password=***");
        for url in [
            "postgres://u:p@ss@db/k?password=hunter2&sslmode=bogus",
            "postgres://u@db/k?password=hunter2&sslmode=bogus",
        ] {
            let e = parse_url(url).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!e.is_empty() && !e.contains("hunter2") && !e.contains("ss@"), "{e}");
        }
        let e = parse_url("postgres://u:secret@db/k?sslmode=bogus").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("postgres://u:***@db/k"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn url_parameters_of_our_own() {
        let (c, _) = parse_url("postgres://u@db:6000/keys?sslmode=verify-full").unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(target_of(&c), "db:6000/keys");
        let e = parse_url("postgres://u@db/k?sslrootcert=/nonexistent%2Fca.pem")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert_eq!(percent_decode("a%2Fb").unwrap(), "a/b");
        // A CA file without sslmode: TLS required, not merely preferred.
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let (c, _) = parse_url(&format!("postgres://u@db/k?sslrootcert={}", ca.display())).unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        let (c, _) = parse_url(&format!("postgres://u@db/k?sslrootcert={}&sslmode=disable", ca.display())).unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Disable, "an explicit mode is kept");
        assert!(percent_decode("a%2").is_err());
        assert!(percent_decode("a%zz").is_err());
    }
}
