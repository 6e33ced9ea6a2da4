//! Root key sources named on the command line, and `envelope key reseal` / `envelope kms
//! reseal`: the root key of a store moved between a file, a passphrase and a PKCS#11 token key
//! (envelope_keystore::reseal; crash-safe, the database untouched). Also the root of `envelope
//! kms restore` (the same spellings, plus the descriptor saved next to the backup).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use envelope_keystore::backup::{RestoreRoot, passphrase_params_of, pkcs11_params_of, saved_root_forms};
use envelope_keystore::reseal::Resealed;
use envelope_keystore::root::RootForm;
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
    Ok(RootSource::Passphrase(read_passphrase(path)?))
}

/// The passphrase in `path` (less trailing newlines), as a zeroized string.
fn read_passphrase(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read the passphrase file {}", path.display()))?,
    );
    Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()))
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

/// Where `envelope kms restore` takes the restored store's root key from.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRootArgs<'a> {
    /// `--root-key`: a root key file, `file` (the data directory's root.key),
    /// `passphrase-file:PATH` or a `pkcs11:` URI.
    pub root_key: Option<&'a str>,
    /// `--root-passphrase-file`.
    pub passphrase_file: Option<&'a Path>,
    /// `--root-params`: the descriptor saved with the backup, when not next to it.
    pub params: Option<&'a Path>,
}

/// Restores `backup` into `dir` under the root `a` names (the descriptor of a passphrase or
/// token root read from next to the backup unless `a.params`). A root that does not open the
/// backup is refused, naming the root the backup's store used when the backup says so.
pub fn restore(dir: &Path, backup: &Path, a: RestoreRootArgs<'_>, force: bool) -> Result<KeyStore> {
    let root = restore_root(backup, a)?;
    let given = match &root {
        RestoreRoot::Passphrase { .. } => RootForm::Passphrase,
        RestoreRoot::Pkcs11 { .. } => RootForm::Pkcs11,
        _ => RootForm::File,
    };
    envelope_keystore::backup::restore_with(dir, backup, root, force).map_err(|e| {
        let saved = saved_root_forms(backup);
        let about_the_root = matches!(e, envelope_keystore::Error::RootKey(_));
        let e = anyhow::Error::new(e);
        match saved.first() {
            Some(form) if about_the_root && !saved.contains(&given) => e.context(format!(
                "the backup comes from a store with {} ({} next to it): give {}",
                form.file_name(),
                saved_descriptor(backup, *form).display(),
                match form {
                    RootForm::Pkcs11 => "--root-key pkcs11:… naming the token key",
                    _ => "--root-key passphrase-file:PATH (or --root-passphrase-file)",
                }
            )),
            _ => e,
        }
    })
}

fn saved_descriptor(backup: &Path, form: RootForm) -> PathBuf {
    match form {
        RootForm::Pkcs11 => pkcs11_params_of(backup),
        _ => passphrase_params_of(backup),
    }
}

fn restore_root(backup: &Path, a: RestoreRootArgs<'_>) -> Result<RestoreRoot> {
    let params = |form| a.params.map_or_else(|| saved_descriptor(backup, form), Path::to_path_buf);
    let root = match (a.passphrase_file, a.root_key) {
        (Some(_), Some(_)) => bail!("give --root-key or --root-passphrase-file, not both"),
        (Some(f), None) => {
            RestoreRoot::Passphrase { passphrase: read_passphrase(f)?, params: params(RootForm::Passphrase) }
        }
        (None, Some(spec)) if spec.starts_with("pkcs11:") => {
            let w = Pkcs11RootWrapper::from_uri(spec).map_err(|e| anyhow::anyhow!("--root-key: {e}"))?;
            RestoreRoot::Pkcs11 { wrapper: Arc::new(w), params: params(RootForm::Pkcs11) }
        }
        (None, Some(spec)) if spec.starts_with("passphrase-file:") => RestoreRoot::Passphrase {
            passphrase: read_passphrase(Path::new(&spec["passphrase-file:".len()..]))?,
            params: params(RootForm::Passphrase),
        },
        (None, Some("file") | None) => RestoreRoot::File(None),
        (None, Some(path)) => RestoreRoot::File(Some(PathBuf::from(path))),
    };
    if a.params.is_some() && matches!(root, RestoreRoot::File(_)) {
        bail!("--root-params is for a passphrase or pkcs11 root (a root key file is given with --root-key FILE)");
    }
    Ok(root)
}

/// What `envelope kms backup` says about the root key of the store in `dir` backed up to `out`.
pub fn backup_root_notes(dir: &Path, out: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    for form in saved_root_forms(out) {
        if !dir.join(form.file_name()).exists() {
            continue;
        }
        notes.push(match form {
            RootForm::Pkcs11 => format!(
                "the root key is wrapped by a PKCS#11 token key: the wrapped key is in {} (keep it with the backup; \
                 restore with --root-key pkcs11:…; the backup is useless without the token key)",
                pkcs11_params_of(out).display()
            ),
            _ => format!(
                "the root key comes from a passphrase: its salt and verifier are in {} (keep it with the backup; \
                 restore with --root-key passphrase-file:PATH or --root-passphrase-file; the backup is useless \
                 without the passphrase)",
                passphrase_params_of(out).display()
            ),
        });
    }
    let file = dir.join(envelope_keystore::store::ROOT_KEY_FILE);
    if file.exists() || notes.is_empty() {
        notes.push(format!("the backup holds sealed material only: keep a copy of {} separately", file.display()));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(root_key: Option<&'a str>, params: Option<&'a Path>) -> RestoreRootArgs<'a> {
        RestoreRootArgs { root_key, passphrase_file: None, params }
    }

    #[test]
    fn restore_roots_are_spelled_as_the_plugins() {
        let d = tempfile::tempdir().unwrap();
        let backup = d.path().join("kms.backup");
        let phrase = d.path().join("phrase");
        std::fs::write(&phrase, "a long operator passphrase\n").unwrap();
        assert!(matches!(restore_root(&backup, args(None, None)).unwrap(), RestoreRoot::File(None)));
        assert!(matches!(restore_root(&backup, args(Some("file"), None)).unwrap(), RestoreRoot::File(None)));
        match restore_root(&backup, args(Some("/secure/root.key"), None)).unwrap() {
            RestoreRoot::File(Some(p)) => assert_eq!(p, Path::new("/secure/root.key")),
            other => panic!("{other:?}"),
        }
        let spec = format!("passphrase-file:{}", phrase.display());
        match restore_root(&backup, args(Some(&spec), None)).unwrap() {
            RestoreRoot::Passphrase { passphrase, params } => {
                assert_eq!(passphrase.as_str(), "a long operator passphrase");
                assert_eq!(params, passphrase_params_of(&backup));
            }
            other => panic!("{other:?}"),
        }
        let elsewhere = d.path().join("saved.passphrase");
        match restore_root(&backup, args(Some(&spec), Some(&elsewhere))).unwrap() {
            RestoreRoot::Passphrase { params, .. } => assert_eq!(params, elsewhere),
            other => panic!("{other:?}"),
        }
        // The same URI rules as `kms serve` (module-path and pin-source required).
        let e = restore_root(&backup, args(Some("pkcs11:token=kms;object=root"), None)).unwrap_err();
        assert!(format!("{e:#}").contains("--root-key"), "{e:#}");
        // Descriptors only go with a passphrase or pkcs11 root; one root at a time.
        assert!(restore_root(&backup, args(Some("file"), Some(&elsewhere))).is_err());
        let both = RestoreRootArgs { root_key: Some("file"), passphrase_file: Some(&phrase), params: None };
        assert!(restore_root(&backup, both).is_err());
        let missing = format!("passphrase-file:{}", d.path().join("nope").display());
        assert!(restore_root(&backup, args(Some(&missing), None)).is_err());
    }
}
