//! The SQLite engine: the embedded default, one file (`keystore.db`) in the data directory.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a write is fsynced before it returns.
//! Several processes may open the same file (the plugin serving, `envelope key rotate` from a
//! shell); every write is an IMMEDIATE transaction (one writer at a time) that re-reads the state
//! it depends on, and a process sees another's changes on its next refresh.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::AliasInfo;
use super::engine::{
    AliasRow, Engine, GrantRow, ImportRequest, ImportRow, KeyRow, MaterialRow, NewKey, NewVersion, ON_DEMAND_MATERIALS,
    ON_DEMAND_VERSIONS, PolicyRow, Rows, TagRow, VersionRow, check_count, check_tags,
};
use super::{import, schema};
use crate::error::{Error, Limit, Result};
use crate::model::{KeyState, RotationType};

/// The SQLite database of a store.
pub struct Sqlite {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

impl Sqlite {
    /// Opens (creating if needed, mode 0600) and migrates the database at `db`.
    pub fn open(db: &Path) -> Result<Self> {
        let conn = Connection::open(db)?;
        let _ = fs::set_permissions(db, fs::Permissions::from_mode(0o600));
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Switching a fresh database to WAL and migrating it can meet SQLITE_BUSY without the
        // busy handler being consulted when several processes open it at the same moment.
        schema::retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL").map_err(Error::from))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::retry_busy(|| schema::migrate(&conn))?;
        Ok(Self { conn: Mutex::new(conn), path: db.to_path_buf() })
    }

    /// The connection, for the SQLite-only features (key export files).
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| super::poisoned())
    }

    /// Runs `f` in an IMMEDIATE transaction and commits if it succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a transaction on an existing key (given its state), and commits.
    fn write_key<T>(&self, id: &str, f: impl FnOnce(&Transaction<'_>, KeyState) -> Result<T>) -> Result<T> {
        self.write(|tx| {
            let state = key_state(tx, id)?;
            f(tx, state)
        })
    }
}

impl Engine for Sqlite {
    fn describe(&self) -> String {
        format!("SQLite database {}", self.path.display())
    }

    fn change(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    fn as_sqlite(&self) -> Option<&Sqlite> {
        Some(self)
    }

    /// Everything, read in one transaction.
    fn load(&self) -> Result<Rows> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let mut rows = Rows::default();
        {
            let mut st = tx.prepare_cached(
                "SELECT k.key_id, k.description, k.state, k.created_at, k.current_material, a.deletion_date, \
                 a.pending_window_days, a.rotation_period_days, a.next_rotation, k.key_spec, k.key_usage \
                 FROM keys k LEFT JOIN key_attrs a ON a.key_id = k.key_id",
            )?;
            let it = st.query_map([], |r| {
                Ok(KeyRow {
                    key_id: r.get(0)?,
                    description: r.get(1)?,
                    state: r.get(2)?,
                    created_at: r.get(3)?,
                    current_material: r.get(4)?,
                    deletion_date: r.get(5)?,
                    pending_window_days: r.get(6)?,
                    rotation_period_days: r.get(7)?,
                    next_rotation: r.get(8)?,
                    key_spec: r.get(9)?,
                    key_usage: r.get(10)?,
                })
            })?;
            rows.keys = it.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached("SELECT name, key_id, created_at, updated_at FROM aliases ORDER BY name")?;
            let it = st.query_map([], |r| {
                Ok(AliasRow { name: r.get(0)?, key_id: r.get(1)?, created_at: r.get(2)?, updated_at: r.get(3)? })
            })?;
            rows.aliases = it.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached(
                "SELECT v.material_id, v.key_id, v.seq, v.created_at, v.sealed, t.rotation_type FROM key_versions v \
                 LEFT JOIN version_types t ON t.material_id = v.material_id ORDER BY v.key_id, v.seq",
            )?;
            let it = st.query_map([], |r| {
                Ok(VersionRow {
                    material_id: r.get(0)?,
                    key_id: r.get(1)?,
                    seq: r.get(2)?,
                    created_at: r.get(3)?,
                    sealed: r.get(4)?,
                    rotation_type: r.get(5)?,
                })
            })?;
            rows.versions = it.collect::<rusqlite::Result<_>>()?;
            let mut st =
                tx.prepare_cached("SELECT key_id, tag_key, tag_value FROM key_tags ORDER BY key_id, tag_key")?;
            let it = st.query_map([], |r| Ok(TagRow { key_id: r.get(0)?, key: r.get(1)?, value: r.get(2)? }))?;
            rows.tags = it.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached("SELECT key_id, material_id, valid_to FROM key_import")?;
            let it =
                st.query_map([], |r| Ok(ImportRow { key_id: r.get(0)?, material_id: r.get(1)?, valid_to: r.get(2)? }))?;
            rows.imports = it.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached("SELECT key_id, policy FROM key_policies WHERE name = 'default'")?;
            let it = st.query_map([], |r| Ok(PolicyRow { key_id: r.get(0)?, policy: r.get(1)? }))?;
            rows.policies = it.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached(&format!("{MATERIALS} ORDER BY key_id, seq"))?;
            rows.materials = st.query_map([], material_row)?.collect::<rusqlite::Result<_>>()?;
            let mut st = tx.prepare_cached(&format!("{GRANTS} ORDER BY key_id, created_at, grant_id"))?;
            rows.grants = st.query_map([], grant_row)?.collect::<rusqlite::Result<_>>()?;
        }
        tx.commit()?;
        Ok(rows)
    }

    /// Whether a version with this material id exists.
    fn has_material(&self, mid: &str) -> Result<bool> {
        let conn = self.lock()?;
        let found: Option<i64> =
            conn.query_row("SELECT 1 FROM key_versions WHERE material_id = ?1", [mid], |r| r.get(0)).optional()?;
        Ok(found.is_some())
    }

    /// Creates a key (with its first version, alias, tags and policy) in one transaction.
    fn create_key(&self, k: &NewKey<'_>) -> Result<()> {
        self.write(|tx| {
            if k.max_keys.is_some() {
                let count: i64 = tx.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
                check_count(count, k.max_keys, Limit::Keys)?;
            }
            if let Some(a) = k.alias
                && alias_target(tx, a)?.is_some()
            {
                return Err(Error::AlreadyExists(a.to_string()));
            }
            match &k.version {
                None => {
                    tx.execute(
                        "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                         VALUES (?1, ?2, 'PendingImport', ?3, '', ?4, ?5)",
                        params![k.key_id, k.description, k.created_at, k.key_spec.as_str(), k.key_usage.as_str()],
                    )?;
                    tx.execute("INSERT INTO key_import (key_id) VALUES (?1)", [k.key_id])?;
                }
                Some(v) => {
                    tx.execute(
                        "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                         VALUES (?1, ?2, 'Enabled', ?3, ?4, ?5, ?6)",
                        params![
                            k.key_id,
                            k.description,
                            k.created_at,
                            v.material_id,
                            k.key_spec.as_str(),
                            k.key_usage.as_str()
                        ],
                    )?;
                    tx.execute(
                        "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, 1, ?3, ?4)",
                        params![v.material_id, k.key_id, k.created_at, v.sealed],
                    )?;
                }
            }
            if let Some(a) = k.alias {
                tx.execute(
                    "INSERT INTO aliases (name, key_id, created_at) VALUES (?1, ?2, ?3)",
                    params![a, k.key_id, k.created_at],
                )?;
            }
            put_tags(tx, k.key_id, k.tags)?;
            if let Some(p) = k.policy {
                tx.execute(
                    "INSERT INTO key_policies (key_id, name, policy) VALUES (?1, 'default', ?2)",
                    params![k.key_id, p],
                )?;
            }
            Ok(())
        })
    }

    /// Adds `v` as the key's new current version (an on-demand or automatic rotation).
    fn rotate(
        &self,
        id: &str,
        v: &NewVersion,
        kind: RotationType,
        at: i64,
        max_on_demand: Option<usize>,
    ) -> Result<()> {
        self.write_key(id, |tx, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            if is_external(tx, id)? {
                return Err(Error::Unsupported(format!("key {id} has imported key material and cannot be rotated")));
            }
            if max_on_demand.is_some() {
                let count: i64 = tx.query_row(ON_DEMAND_VERSIONS, [id], |r| r.get(0))?;
                check_count(count, max_on_demand, Limit::OnDemandRotations)?;
            }
            add_version(tx, id, v, kind, at)
        })
    }

    /// Enables or disables a key (not one pending deletion or import).
    fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        self.write_key(id, |tx, state| {
            if matches!(state, KeyState::PendingDeletion | KeyState::PendingImport) {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            let new = if enabled { KeyState::Enabled } else { KeyState::Disabled };
            tx.execute("UPDATE keys SET state = ?1 WHERE key_id = ?2", params![new.as_str(), id])?;
            Ok(())
        })
    }

    /// Makes a key PendingDeletion until `deletion_date`.
    fn schedule_deletion(&self, id: &str, deletion_date: i64, window_days: u32) -> Result<()> {
        self.write_key(id, |tx, state| {
            if state == KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            tx.execute("UPDATE keys SET state = 'PendingDeletion' WHERE key_id = ?1", [id])?;
            upsert_attrs(
                tx,
                id,
                "deletion_date = ?2, pending_window_days = ?3",
                params![id, deletion_date, window_days],
            )
        })
    }

    /// Cancels a scheduled deletion: Disabled, or PendingImport for a key without material.
    fn cancel_deletion(&self, id: &str) -> Result<()> {
        self.write_key(id, |tx, state| {
            if state != KeyState::PendingDeletion {
                return Err(Error::InvalidState { key: id.to_string(), state });
            }
            tx.execute(
                "UPDATE keys SET state = CASE WHEN current_material = '' OR EXISTS (SELECT 1 FROM key_materials m \
                 WHERE m.key_id = keys.key_id AND m.imported = 0 AND m.state != 'PENDING_ROTATION') \
                 THEN 'PendingImport' ELSE 'Disabled' END WHERE key_id = ?1",
                [id],
            )?;
            upsert_attrs(tx, id, "deletion_date = NULL, pending_window_days = NULL", params![id])
        })
    }

    /// Deletes every key pending deletion whose date is at or before `now`; returns their ids.
    fn purge_deleted(&self, now: i64) -> Result<Vec<String>> {
        self.write(|tx| {
            let ids: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT k.key_id FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
                     WHERE k.state = 'PendingDeletion' AND a.deletion_date IS NOT NULL AND a.deletion_date <= ?1",
                )?;
                let rows = st.query_map([now], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for id in &ids {
                tx.execute(
                    "DELETE FROM version_types WHERE material_id IN (SELECT material_id FROM key_versions WHERE key_id = ?1)",
                    [id],
                )?;
                for table in KEY_TABLES {
                    tx.execute(&format!("DELETE FROM {table} WHERE key_id = ?1"), [id])?;
                }
            }
            Ok(ids)
        })
    }

    /// Replaces a key's description.
    fn set_description(&self, id: &str, description: &str) -> Result<()> {
        self.write_key(id, |tx, state| {
            refuse_pending_deletion(id, state)?;
            tx.execute("UPDATE keys SET description = ?1 WHERE key_id = ?2", params![description, id])?;
            Ok(())
        })
    }

    /// Turns automatic rotation on (`Some((period_days, next_rotation))`) or off.
    fn set_rotation(&self, id: &str, schedule: Option<(u32, i64)>) -> Result<()> {
        self.write_key(id, |tx, state| {
            refuse_pending_deletion(id, state)?;
            let (period, next) = schedule.unzip();
            upsert_attrs(tx, id, "rotation_period_days = ?2, next_rotation = ?3", params![id, period, next])
        })
    }

    /// Enabled keys whose automatic rotation is due at `now`, with their periods (days).
    fn due_rotations(&self, now: i64) -> Result<Vec<(String, i64)>> {
        let conn = self.lock()?;
        let mut st = conn.prepare(DUE_ROTATIONS)?;
        let rows = st.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds `v` as an automatic rotation at `now` and schedules the next one at `next`, if it
    /// is still due.
    fn rotate_automatic(&self, id: &str, v: &NewVersion, now: i64, next: i64) -> Result<bool> {
        self.write(|tx| {
            let due: Option<String> = tx
                .query_row(&format!("{DUE_ROTATIONS} AND k.key_id = ?2"), params![now, id], |r| r.get(0))
                .optional()?;
            if due.is_none() {
                return Ok(false);
            }
            add_version(tx, id, v, RotationType::Automatic, now)?;
            upsert_attrs(tx, id, "next_rotation = ?2", params![id, next])?;
            Ok(true)
        })
    }

    /// Adds or replaces tags.
    fn tag(&self, id: &str, tags: &[(String, String)], max_tags: Option<usize>) -> Result<()> {
        self.write_key(id, |tx, state| {
            refuse_pending_deletion(id, state)?;
            if max_tags.is_some() {
                let mut q = tx.prepare("SELECT tag_key FROM key_tags WHERE key_id = ?1")?;
                let existing = q.query_map([id], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
                check_tags(&existing, tags, max_tags)?;
            }
            put_tags(tx, id, tags)
        })
    }

    /// Removes tags by tag key.
    fn untag(&self, id: &str, tag_keys: &[String]) -> Result<()> {
        self.write_key(id, |tx, state| {
            refuse_pending_deletion(id, state)?;
            for k in tag_keys {
                tx.execute("DELETE FROM key_tags WHERE key_id = ?1 AND tag_key = ?2", params![id, k])?;
            }
            Ok(())
        })
    }

    /// Replaces the key policy.
    fn put_policy(&self, id: &str, policy: &str) -> Result<()> {
        self.write_key(id, |tx, _| {
            tx.execute(
                "INSERT INTO key_policies (key_id, name, policy) VALUES (?1, 'default', ?2) \
                 ON CONFLICT(key_id, name) DO UPDATE SET policy = excluded.policy",
                params![id, policy],
            )?;
            Ok(())
        })
    }

    /// Adds a grant, or finds the one it retries.
    fn create_grant(&self, g: &GrantRow, limit: usize) -> Result<String> {
        let wanted = g.grant()?;
        self.write_key(&g.key_id, |tx, state| {
            refuse_pending_deletion(&g.key_id, state)?;
            if g.name.is_some() {
                let mut st = tx.prepare(&format!("{GRANTS} WHERE key_id = ?1 AND name = ?2"))?;
                let same: Vec<GrantRow> =
                    st.query_map(params![g.key_id, g.name], grant_row)?.collect::<rusqlite::Result<_>>()?;
                for r in same {
                    if r.grant()?.same_request(&wanted) {
                        return Ok(r.grant_id);
                    }
                }
            }
            let n: i64 =
                tx.query_row("SELECT COUNT(*) FROM key_grants WHERE key_id = ?1", [&g.key_id], |r| r.get(0))?;
            check_count(n, Some(limit), Limit::Grants)?;
            insert_grant(tx, g)?;
            Ok(g.grant_id.clone())
        })
    }

    /// Deletes a grant of a key.
    fn delete_grant(&self, id: &str, grant_id: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM key_grants WHERE key_id = ?1 AND grant_id = ?2", params![id, grant_id])?;
            if n == 0 {
                return Err(Error::NotFound(format!("grant {grant_id}")));
            }
            Ok(())
        })
    }

    /// Imports material into an external key ([`import::plan_import`]).
    fn import_material(&self, id: &str, req: &ImportRequest) -> Result<()> {
        self.write_key(id, |tx, state| {
            let rows = external_materials(tx, id)?;
            apply(tx, id, &import::plan_import(id, state, rows, req)?, req.at)
        })
    }

    /// Deletes one imported material ([`import::plan_delete`]); returns its id.
    fn delete_imported(&self, id: &str, which: Option<&str>) -> Result<String> {
        self.write_key(id, |tx, state| {
            let rows = external_materials(tx, id)?;
            let change = import::plan_delete(id, state, rows, which)?;
            apply(tx, id, &change, 0)?;
            Ok(change.material_id)
        })
    }

    /// Makes the material pending rotation current ([`import::plan_rotate`]); returns its id.
    fn rotate_imported(&self, id: &str, at: i64, max_on_demand: Option<usize>) -> Result<String> {
        self.write_key(id, |tx, state| {
            let rows = external_materials(tx, id)?;
            let change = import::plan_rotate(id, state, rows, at)?;
            if max_on_demand.is_some() {
                let count: i64 = tx.query_row(ON_DEMAND_MATERIALS, [id], |r| r.get(0))?;
                check_count(count, max_on_demand, Limit::OnDemandRotations)?;
            }
            apply(tx, id, &change, at)?;
            Ok(change.material_id)
        })
    }

    /// Deletes imported material expired at `now`; returns the affected key ids.
    fn expire_imported(&self, now: i64) -> Result<Vec<String>> {
        self.write(|tx| {
            let due: Vec<(String, String)> = {
                let mut st = tx.prepare(
                    "SELECT DISTINCT k.key_id, k.state FROM keys k JOIN key_materials m ON m.key_id = k.key_id \
                     WHERE m.imported = 1 AND m.valid_to IS NOT NULL AND m.valid_to <= ?1 ORDER BY k.key_id",
                )?;
                let rows = st.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut ids = Vec::with_capacity(due.len());
            for (id, state) in due {
                let rows = materials(tx, &id)?;
                if let Some(change) = import::plan_expire(KeyState::parse(&state)?, rows, now) {
                    apply(tx, &id, &change, now)?;
                    ids.push(id);
                }
            }
            Ok(ids)
        })
    }

    /// Creates an alias of key `id` (which must not be pending deletion).
    fn create_alias(&self, alias: &str, id: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            refuse_pending_deletion(id, key_state(tx, id)?)?;
            if alias_target(tx, alias)?.is_some() {
                return Err(Error::AlreadyExists(alias.to_string()));
            }
            tx.execute(
                "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![alias, id, now],
            )?;
            Ok(())
        })
    }

    /// Points `alias` at key `id`; with `expected`, only if it still points at that key.
    fn update_alias(&self, alias: &str, id: &str, expected: Option<&str>, now: i64) -> Result<()> {
        self.write(|tx| {
            refuse_pending_deletion(id, key_state(tx, id)?)?;
            require_alias_target(tx, alias, expected)?;
            let changed =
                tx.execute("UPDATE aliases SET key_id = ?1, updated_at = ?2 WHERE name = ?3", params![id, now, alias])?;
            if changed == 0 {
                return Err(Error::NotFound(alias.to_string()));
            }
            Ok(())
        })
    }

    /// Deletes `alias`; with `expected`, only if it still points at that key.
    fn delete_alias(&self, alias: &str, expected: Option<&str>) -> Result<()> {
        self.write(|tx| {
            require_alias_target(tx, alias, expected)?;
            if tx.execute("DELETE FROM aliases WHERE name = ?1", [alias])? == 0 {
                return Err(Error::NotFound(alias.to_string()));
            }
            Ok(())
        })
    }

    /// All aliases, ordered by name.
    fn list_aliases(&self) -> Result<Vec<AliasInfo>> {
        let conn = self.lock()?;
        let mut st = conn.prepare_cached(
            "SELECT name, key_id, created_at, COALESCE(updated_at, created_at) FROM aliases ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(AliasInfo { name: r.get(0)?, key_id: r.get(1)?, created_at: r.get(2)?, updated_at: r.get(3)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn restore(&self, rows: &Rows) -> Result<()> {
        self.write(|tx| {
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM keys", [], |r| r.get(0))?;
            if n != 0 {
                return Err(Error::Conflict(format!("{} already holds {n} key(s): restore needs an empty store", self.describe())));
            }
            for k in &rows.keys {
                tx.execute(
                    "INSERT INTO keys (key_id, description, state, created_at, current_material, key_spec, key_usage) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![k.key_id, k.description, k.state, k.created_at, k.current_material, k.key_spec, k.key_usage],
                )?;
                if k.deletion_date.is_some()
                    || k.pending_window_days.is_some()
                    || k.rotation_period_days.is_some()
                    || k.next_rotation.is_some()
                {
                    tx.execute(
                        "INSERT INTO key_attrs (key_id, deletion_date, pending_window_days, rotation_period_days, next_rotation) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![k.key_id, k.deletion_date, k.pending_window_days, k.rotation_period_days, k.next_rotation],
                    )?;
                }
            }
            for v in &rows.versions {
                tx.execute(
                    "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![v.material_id, v.key_id, v.seq, v.created_at, v.sealed],
                )?;
                if let Some(t) = &v.rotation_type {
                    tx.execute(
                        "INSERT INTO version_types (material_id, rotation_type) VALUES (?1, ?2)",
                        params![v.material_id, t],
                    )?;
                }
            }
            for a in &rows.aliases {
                tx.execute(
                    "INSERT INTO aliases (name, key_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)",
                    params![a.name, a.key_id, a.created_at, a.updated_at],
                )?;
            }
            for t in &rows.tags {
                tx.execute(
                    "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3)",
                    params![t.key_id, t.key, t.value],
                )?;
            }
            for i in &rows.imports {
                tx.execute(
                    "INSERT INTO key_import (key_id, material_id, valid_to) VALUES (?1, ?2, ?3)",
                    params![i.key_id, i.material_id, i.valid_to],
                )?;
            }
            for p in &rows.policies {
                tx.execute(
                    "INSERT INTO key_policies (key_id, name, policy) VALUES (?1, 'default', ?2)",
                    params![p.key_id, p.policy],
                )?;
            }
            for m in &rows.materials {
                insert_material(tx, m)?;
            }
            for g in &rows.grants {
                insert_grant(tx, g)?;
            }
            Ok(())
        })
    }
}

/// Tables holding a key's rows, children first (a purge deletes in this order).
pub(super) const KEY_TABLES: [&str; 9] = [
    "key_grants",
    "aliases",
    "key_tags",
    "key_policies",
    "key_attrs",
    "key_materials",
    "key_import",
    "key_versions",
    "keys",
];

/// The columns of a material record, in [`material_row`]'s order.
const MATERIALS: &str = "SELECT material_id, key_id, seq, state, imported, description, valid_to, created_at, rotated_at \
     FROM key_materials";

/// The columns of a grant, in [`grant_row`]'s order.
const GRANTS: &str = "SELECT grant_id, key_id, name, grantee, retiring, issuing_account, operations, constraints, created_at \
     FROM key_grants";

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRow> {
    Ok(GrantRow {
        grant_id: r.get(0)?,
        key_id: r.get(1)?,
        name: r.get(2)?,
        grantee: r.get(3)?,
        retiring: r.get(4)?,
        issuing_account: r.get(5)?,
        operations: r.get(6)?,
        constraints: r.get(7)?,
        created_at: r.get(8)?,
    })
}

fn insert_grant(tx: &Transaction<'_>, g: &GrantRow) -> Result<()> {
    tx.execute(
        "INSERT INTO key_grants (grant_id, key_id, name, grantee, retiring, issuing_account, operations, constraints, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![g.grant_id, g.key_id, g.name, g.grantee, g.retiring, g.issuing_account, g.operations, g.constraints, g.created_at],
    )?;
    Ok(())
}

fn material_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MaterialRow> {
    Ok(MaterialRow {
        material_id: r.get(0)?,
        key_id: r.get(1)?,
        seq: r.get(2)?,
        state: r.get(3)?,
        imported: r.get(4)?,
        description: r.get(5)?,
        valid_to: r.get(6)?,
        created_at: r.get(7)?,
        rotated_at: r.get(8)?,
    })
}

fn insert_material(tx: &Transaction<'_>, m: &MaterialRow) -> Result<()> {
    tx.execute(
        "INSERT INTO key_materials (material_id, key_id, seq, state, imported, description, valid_to, created_at, rotated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![m.material_id, m.key_id, m.seq, m.state, m.imported, m.description, m.valid_to, m.created_at, m.rotated_at],
    )?;
    Ok(())
}

/// The material records of key `id`, by sequence.
fn materials(tx: &Transaction<'_>, id: &str) -> Result<Vec<MaterialRow>> {
    let mut st = tx.prepare_cached(&format!("{MATERIALS} WHERE key_id = ?1 ORDER BY seq"))?;
    Ok(st.query_map([id], material_row)?.collect::<rusqlite::Result<_>>()?)
}

/// The material records of external key `id` ([`Error::Unsupported`] for any other key).
fn external_materials(tx: &Transaction<'_>, id: &str) -> Result<Vec<MaterialRow>> {
    if !is_external(tx, id)? {
        return Err(Error::Unsupported(format!("key {id} does not have origin EXTERNAL")));
    }
    materials(tx, id)
}

/// Writes what an import decision changes for key `id` (a new version dated `at`).
fn apply(tx: &Transaction<'_>, id: &str, c: &import::Change, at: i64) -> Result<()> {
    for mid in &c.drop_versions {
        tx.execute("DELETE FROM version_types WHERE material_id = ?1", [mid])?;
        tx.execute("DELETE FROM key_versions WHERE material_id = ?1", [mid])?;
    }
    if let Some(v) = &c.add_version {
        let present: Option<i64> = tx
            .query_row("SELECT 1 FROM key_versions WHERE material_id = ?1", [&v.material_id], |r| r.get(0))
            .optional()?;
        if present.is_none() {
            let seq = next_seq(tx, id)?;
            tx.execute(
                "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![v.material_id, id, seq, at, v.sealed],
            )?;
        }
    }
    tx.execute("DELETE FROM key_materials WHERE key_id = ?1", [id])?;
    for m in &c.rows {
        insert_material(tx, m)?;
    }
    tx.execute(
        "UPDATE keys SET current_material = ?2, state = ?3 WHERE key_id = ?1",
        params![id, c.current, c.state.as_str()],
    )?;
    Ok(())
}

/// Enabled, non-external keys whose automatic rotation is due at ?1/$1, with their periods.
const DUE_ROTATIONS: &str = "SELECT k.key_id, a.rotation_period_days FROM keys k JOIN key_attrs a ON a.key_id = k.key_id \
     WHERE k.state = 'Enabled' AND a.rotation_period_days IS NOT NULL AND a.next_rotation IS NOT NULL \
     AND a.next_rotation <= ?1 AND k.key_id NOT IN (SELECT key_id FROM key_import)";

fn key_state(tx: &Transaction<'_>, id: &str) -> Result<KeyState> {
    let state: String = tx
        .query_row("SELECT state FROM keys WHERE key_id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    KeyState::parse(&state)
}

fn refuse_pending_deletion(id: &str, state: KeyState) -> Result<()> {
    if state == KeyState::PendingDeletion {
        return Err(Error::InvalidState { key: id.to_string(), state });
    }
    Ok(())
}

fn next_seq(tx: &Transaction<'_>, id: &str) -> Result<u32> {
    Ok(tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM key_versions WHERE key_id = ?1", [id], |r| r.get(0))?)
}

fn add_version(tx: &Transaction<'_>, id: &str, v: &NewVersion, kind: RotationType, at: i64) -> Result<()> {
    let seq = next_seq(tx, id)?;
    tx.execute(
        "INSERT INTO key_versions (material_id, key_id, seq, created_at, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![v.material_id, id, seq, at, v.sealed],
    )?;
    if let Some(t) = kind.as_str() {
        tx.execute(
            "INSERT INTO version_types (material_id, rotation_type) VALUES (?1, ?2)",
            params![v.material_id, t],
        )?;
    }
    tx.execute("UPDATE keys SET current_material = ?1 WHERE key_id = ?2", params![v.material_id, id])?;
    Ok(())
}

fn put_tags(tx: &Transaction<'_>, id: &str, tags: &[(String, String)]) -> Result<()> {
    for (k, v) in tags {
        tx.execute(
            "INSERT INTO key_tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3) \
             ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
            params![id, k, v],
        )?;
    }
    Ok(())
}

/// Updates `set` (whose parameters start at ?2; ?1 is the key id) in the key's `key_attrs` row,
/// creating the row first if needed.
fn upsert_attrs(tx: &Transaction<'_>, id: &str, set: &str, p: &[&dyn rusqlite::ToSql]) -> Result<()> {
    tx.execute("INSERT INTO key_attrs (key_id) VALUES (?1) ON CONFLICT(key_id) DO NOTHING", [id])?;
    tx.execute(&format!("UPDATE key_attrs SET {set} WHERE key_id = ?1"), p)?;
    Ok(())
}

fn alias_target(tx: &Transaction<'_>, alias: &str) -> Result<Option<String>> {
    Ok(tx.query_row("SELECT key_id FROM aliases WHERE name = ?1", [alias], |r| r.get(0)).optional()?)
}

/// With `expected`, the alias must exist and point at that key.
fn require_alias_target(tx: &Transaction<'_>, alias: &str, expected: Option<&str>) -> Result<()> {
    let Some(want) = expected else { return Ok(()) };
    match alias_target(tx, alias)? {
        None => Err(Error::NotFound(alias.to_string())),
        Some(c) if c == want => Ok(()),
        Some(_) => Err(Error::Changed(alias.to_string())),
    }
}

fn is_external(tx: &Transaction<'_>, id: &str) -> Result<bool> {
    let found: Option<i64> =
        tx.query_row("SELECT 1 FROM key_import WHERE key_id = ?1", [id], |r| r.get(0)).optional()?;
    Ok(found.is_some())
}
