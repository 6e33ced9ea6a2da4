//! `envelope kms migrate`: copies a key store from one engine to another (SQLite to PostgreSQL
//! and back) with `KeyStore::migrate_to`, which verifies the copy by reading it back and
//! unsealing every version with the root key.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use envelope_keystore::{KeyStore, Location, RootSource, StoreOptions};

/// Options of `envelope kms migrate`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  envelope kms migrate --from sqlite --to 'postgres://envelope@db/envelope?sslmode=require'\n  \
envelope kms migrate --from \"$ENVELOPE_KMS_STORE\" --to sqlite:/var/lib/envelope/kms-copy"
)]
pub struct MigrateArgs {
    /// Data directory holding the root key (and, for `sqlite`, the database).
    /// Default: /var/lib/envelope/kms as root, else ~/.local/share/envelope/kms.
    #[arg(long, env = "ENVELOPE_KMS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The store to copy: `sqlite` (the data directory's database), `sqlite:DIR` (the database
    /// in DIR), or a `postgres://` URL.
    #[arg(long, value_name = "STORE")]
    pub from: String,
    /// The store to copy into (same forms); it must hold no key. A `sqlite:DIR` directory is
    /// created (mode 0700) if missing.
    #[arg(long, value_name = "STORE")]
    pub to: String,
    /// For a store whose root key comes from a passphrase: the file holding it.
    #[arg(long, env = "ENVELOPE_ROOT_PASSPHRASE_FILE", value_name = "FILE", conflicts_with = "root_key")]
    pub root_passphrase_file: Option<PathBuf>,
    /// For a store whose root key is wrapped by a PKCS#11 token key: its `pkcs11:` URI.
    #[arg(long, env = "ENVELOPE_KMS_ROOT_KEY", value_name = "PKCS11-URI")]
    pub root_key: Option<String>,
    /// Copy the keys of this region of a server with several `--region`s (one after the first):
    /// --from and --to then name that region's store (`regions/<REGION>/` of a SQLite
    /// directory, the schema `envelope_<REGION>` of a PostgreSQL database). Run once per region.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

pub fn run(a: MigrateArgs) -> Result<()> {
    let dir = a.data_dir.clone().unwrap_or_else(crate::kms_cmd::default_kms_dir);
    let mut from = Location::parse(&a.from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let mut to = Location::parse(&a.to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if let Some(r) = &a.region {
        from = from.partition(&dir, r).map_err(|e| anyhow::anyhow!("--region: {e}"))?;
        to = to.partition(&dir, r).map_err(|e| anyhow::anyhow!("--region: {e}"))?;
    }
    if same(&from, &to, &dir) {
        bail!("--from and --to name the same store");
    }
    let root = match (&a.root_passphrase_file, &a.root_key) {
        (Some(f), _) => crate::reseal::passphrase_root(f)?,
        (None, Some(uri)) => crate::reseal::pkcs11_root(uri)?,
        (None, None) => RootSource::File,
    };
    if let Location::Sqlite(target) = &to
        && !target.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(target)
            .with_context(|| format!("cannot create {}", target.display()))?;
    }
    // Background refreshes are of no use to a one-shot copy.
    let open = |location: Location| {
        let options = StoreOptions { location, create: false, refresh_interval: Duration::from_secs(3600) };
        KeyStore::open_with_options(&dir, &root, &options)
    };
    let source =
        open(from).with_context(|| format!("cannot open --from {} (root key in {})", shown(&a.from), dir.display()))?;
    let target = open(to).with_context(|| format!("cannot open --to {}", shown(&a.to)))?;
    let report = source.migrate_to(&target).context("migration failed; the target is unchanged")?;
    println!(
        "copied {} key(s), {} version(s) and {} alias(es) from {} to {}; every version unsealed with the root key there",
        report.keys, report.versions, report.aliases, report.from, report.to
    );
    Ok(())
}

/// Whether two locations are the same store.
fn same(a: &Location, b: &Location, dir: &std::path::Path) -> bool {
    let sqlite_dir = |l: &Location| match l {
        Location::DataDir => Some(dir.to_path_buf()),
        Location::Sqlite(d) => Some(d.clone()),
        _ => None,
    };
    match (a, b) {
        (Location::Postgres(x), Location::Postgres(y)) => x.url == y.url && x.schema == y.schema,
        _ => match (sqlite_dir(a), sqlite_dir(b)) {
            (Some(x), Some(y)) => {
                x == y || x.canonicalize().ok().is_some_and(|x| y.canonicalize().ok().is_some_and(|y| x == y))
            }
            _ => false,
        },
    }
}

/// A store as given, without its password.
fn shown(s: &str) -> String {
    envelope_keystore::store::postgres::redact(s)
}
