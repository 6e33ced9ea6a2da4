//! The SQLite schema: numbered migrations, applied in order, the version kept in `meta`.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 7;

const MIGRATIONS: &[&str] = &[
    // version 1
    "CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        current_material TEXT NOT NULL
     );
     CREATE TABLE key_versions (
        material_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        seq INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        sealed BLOB NOT NULL,
        UNIQUE (key_id, seq)
     );
     CREATE TABLE aliases (
        name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        created_at INTEGER NOT NULL
     );",
    // version 2: when an alias was last re-pointed (NULL = never, i.e. its creation time)
    "ALTER TABLE aliases ADD COLUMN updated_at INTEGER",
    // version 3: deletion schedule, automatic rotation, rotation types, tags, key policies
    // (new tables only, created if missing, so the step is idempotent)
    "CREATE TABLE IF NOT EXISTS key_attrs (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        deletion_date INTEGER,
        pending_window_days INTEGER,
        rotation_period_days INTEGER,
        next_rotation INTEGER
     );
     CREATE TABLE IF NOT EXISTS version_types (
        material_id TEXT PRIMARY KEY REFERENCES key_versions(material_id),
        rotation_type TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS key_tags (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        tag_key TEXT NOT NULL,
        tag_value TEXT NOT NULL,
        PRIMARY KEY (key_id, tag_key)
     );
     CREATE TABLE IF NOT EXISTS key_policies (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        name TEXT NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (key_id, name)
     )",
    // version 4: keys with imported material (origin EXTERNAL): a row per such key, with the
    // material id fixed by its first import and the current material's expiry
    "CREATE TABLE IF NOT EXISTS key_import (
        key_id TEXT PRIMARY KEY REFERENCES keys(key_id),
        material_id TEXT,
        valid_to INTEGER
     )",
    // version 5: several materials per external key (on-demand rotation of imported material):
    // a record per material (CURRENT / NON_CURRENT / PENDING_ROTATION, imported or not, its
    // description and expiry); an existing import becomes the key's CURRENT material record
    "CREATE TABLE IF NOT EXISTS key_materials (
        material_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        imported INTEGER NOT NULL,
        description TEXT,
        valid_to INTEGER,
        created_at INTEGER NOT NULL,
        rotated_at INTEGER,
        UNIQUE (key_id, seq)
     );
     INSERT OR IGNORE INTO key_materials (material_id, key_id, seq, state, imported, valid_to, created_at)
        SELECT i.material_id, i.key_id, 1, 'CURRENT', k.current_material != '',
               CASE WHEN k.current_material != '' THEN i.valid_to END, COALESCE(v.created_at, k.created_at)
        FROM key_import i JOIN keys k ON k.key_id = i.key_id
        LEFT JOIN key_versions v ON v.material_id = i.material_id
        WHERE i.material_id IS NOT NULL",
    // version 6: grants (CreateGrant): who may use a key for which operations, under which
    // encryption-context constraints (JSON); deleted with their key
    "CREATE TABLE IF NOT EXISTS key_grants (
        grant_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        name TEXT,
        grantee TEXT NOT NULL,
        retiring TEXT,
        issuing_account TEXT NOT NULL,
        operations TEXT NOT NULL,
        constraints TEXT,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS key_grants_by_key ON key_grants (key_id, name)",
    // version 7: key specs beyond SYMMETRIC_DEFAULT (HMAC and asymmetric keys): each key's KeySpec and
    // KeyUsage; every existing key is a symmetric encryption key
    "ALTER TABLE keys ADD COLUMN key_spec TEXT NOT NULL DEFAULT 'SYMMETRIC_DEFAULT';
     ALTER TABLE keys ADD COLUMN key_usage TEXT NOT NULL DEFAULT 'ENCRYPT_DECRYPT'",
];

/// Runs `f` again while it fails with SQLITE_BUSY/SQLITE_LOCKED, for at most 10 seconds.
pub(super) fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.is_busy() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub(super) fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")?;
    let supported = MIGRATIONS.len() as i64;
    // Each step re-reads the version inside its own write transaction, so two processes opening
    // a fresh store at once never run the same migration twice.
    loop {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let step = (|| -> Result<bool> {
            let version: i64 = conn
                .query_row("SELECT v FROM meta WHERE k = 'schema_version'", [], |r| r.get::<_, String>(0))
                .optional()?
                .map(|v| v.parse().unwrap_or(i64::MAX))
                .unwrap_or(0);
            if version > supported {
                return Err(Error::SchemaVersion { found: version, supported });
            }
            let Some(sql) = MIGRATIONS.get(version as usize) else { return Ok(false) };
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT INTO meta (k, v) VALUES ('schema_version', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                [(version + 1).to_string()],
            )?;
            Ok(true)
        })();
        match step {
            Ok(true) => conn.execute_batch("COMMIT")?,
            Ok(false) => {
                conn.execute_batch("COMMIT")?;
                return Ok(());
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_number_of_migrations() {
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
    }
}
