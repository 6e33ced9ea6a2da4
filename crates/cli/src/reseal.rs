//! Root key sources named on the command line, and `envelope key reseal` / `envelope kms
//! reseal`: the root key of a store moved between a file, a passphrase and a PKCS#11 token key
//! (envelope_keystore::reseal; crash-safe, the database untouched).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use envelope_keystore::reseal::Resealed;
use envelope_keystore::{KeyStore, RootSource};
use envelope_plugin_pkcs11::Pkcs11RootWrapper;
use zeroize::Zeroizing;

/// Options of `envelope key reseal` and `envelope kms reseal`.
#[derive(Debug, Args)]
pub struct ResealArgs {
    /// The root key's current form: `file` (root.key), `passphrase-file:PATH` (the passphrase in
    /// PATH) or a `pkcs11:` URI (token=…;object=…;id=…?module-path=…&pin-source=file:…).
    #[arg(long, value_name = "ROOT", default_value = "file")]
    pub from: String,
    /// The new form, written as `--from`.
    #[arg(long, value_name = "ROOT")]
    pub to: String,
}

/// The root key source a `--root-key` value names: a `pkcs11:` URI (RFC 7512).
pub fn pkcs11_root(uri: &str) -> Result<RootSource> {
    let w = Pkcs11RootWrapper::from_uri(uri).map_err(|e| anyhow::anyhow!("--root-key: {e}"))?;
    Ok(RootSource::Pkcs11(Arc::new(w)))
}

/// The passphrase in `path` (less trailing newlines).
pub fn passphrase_root(path: &Path) -> Result<RootSource> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    Ok(RootSource::Passphrase(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string())))
}

/// `file`, `passphrase-file:PATH` or `pkcs11:…`.
pub fn parse_root(spec: &str) -> Result<RootSource> {
    if spec == "file" {
        Ok(RootSource::File)
    } else if let Some(p) = spec.strip_prefix("passphrase-file:") {
        passphrase_root(&PathBuf::from(p))
    } else if spec.starts_with("pkcs11:") {
        pkcs11_root(spec)
    } else {
        bail!("a root key is `file`, `passphrase-file:PATH` or a pkcs11: URI")
    }
}

/// Moves the root key of the store in `dir`, then opens the store under the new form (every
/// key version unseals) before reporting success.
pub fn run(dir: &Path, a: &ResealArgs) -> Result<()> {
    let from = parse_root(&a.from).context("--from")?;
    let to = parse_root(&a.to).context("--to")?;
    let done = envelope_keystore::reseal::reseal(dir, &from, &to)
        .with_context(|| format!("cannot reseal the root key of {}", dir.display()))?;
    let store = KeyStore::open_existing_with(dir, &to)
        .with_context(|| format!("the store in {} does not open under the new root", dir.display()))?;
    let keys = store.list()?.len();
    let name = |f: envelope_keystore::root::RootForm| f.file_name();
    match done {
        Resealed::Moved(old, new) if old == new => {
            println!(
                "resealed the root key of {} in {} ({keys} key(s) open under the new root)",
                dir.display(),
                name(new)
            )
        }
        Resealed::Moved(old, new) => println!(
            "moved the root key of {} from {} to {} ({keys} key(s) open under the new root; {} removed)",
            dir.display(),
            name(old),
            name(new),
            name(old)
        ),
        Resealed::Finished(new) => {
            println!("finished an interrupted reseal of {}: only {} is left ({keys} key(s))", dir.display(), name(new))
        }
        Resealed::AlreadyDone(new) => {
            println!("nothing to do: {} already uses {} ({keys} key(s))", dir.display(), name(new))
        }
    }
    Ok(())
}
