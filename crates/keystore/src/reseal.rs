//! Moving a store's root key from one form to another (`root.key`, `root.passphrase`,
//! `root.pkcs11`; see [`crate::root`]) without touching the database.
//!
//! The root key itself stays the same, so nothing sealed under it changes. The steps:
//!
//! 1. the root key is read through the old form;
//! 2. the new form is written to a temporary file (0600), fsynced, and linked into place (or,
//!    for the same form — a new passphrase, another token key —, renamed over the old file);
//!    the directory is fsynced;
//! 3. the new form is read back and must give the same root key;
//! 4. the old form is removed and the directory fsynced.
//!
//! A crash (kill -9) before step 2's link leaves the old form alone; between steps 2 and 4 both
//! forms exist and both give the same root key, so the store opens under either; after step 4
//! only the new one remains. Within one form the rename replaces the old file at once: before it
//! the old root opens the store, after it the new one. Running the same reseal again finishes an
//! interrupted one (or reports that it was done).

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::root::{RootForm, sync_dir, write_new};
use crate::store::RootSource;

/// The points of a reseal after which a crash is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResealStep {
    /// The new form is in place (and, for another form, the old one too).
    NewWritten,
    /// The old form is removed.
    OldRemoved,
}

/// What a reseal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resealed {
    /// The root key moved from the first form to the second.
    Moved(RootForm, RootForm),
    /// An interrupted reseal to this form was finished (its file was already there).
    Finished(RootForm),
    /// Nothing to do: the store already uses only the new form.
    AlreadyDone(RootForm),
}

/// Moves the root key of the store in `dir` from `from` to `to`. See the module documentation.
pub fn reseal(dir: &Path, from: &RootSource, to: &RootSource) -> Result<Resealed> {
    reseal_with_hook(dir, from, to, &mut |_| {})
}

/// [`reseal`], calling `hook` after each step (tests stop there to simulate a crash).
pub fn reseal_with_hook(
    dir: &Path,
    from: &RootSource,
    to: &RootSource,
    hook: &mut dyn FnMut(ResealStep),
) -> Result<Resealed> {
    let (old_form, new_form) = (from.form(), to.form());
    let old_path = dir.join(old_form.file_name());
    let new_path = dir.join(new_form.file_name());
    if old_form != new_form && !old_path.exists() && new_path.exists() {
        to.load(dir, false)?;
        remove_temporaries(dir);
        return Ok(Resealed::AlreadyDone(new_form));
    }
    let root = match from.load(dir, false) {
        Ok(root) => root,
        // Within one form (another passphrase, another token key) the new file replaces the old
        // one: after a crash past that rename only the new root opens, and it is done.
        Err(e) if old_form == new_form => {
            if to.load(dir, false).is_ok() {
                remove_temporaries(dir);
                return Ok(Resealed::AlreadyDone(new_form));
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    remove_temporaries(dir);
    let passphrase = match to {
        RootSource::Passphrase(p) => Some(p.as_bytes()),
        _ => None,
    };
    let wrapper = match to {
        RootSource::Pkcs11(w) => Some(w.as_ref()),
        _ => None,
    };
    let fs_err = |e: std::io::Error| Error::RootKey(format!("writing {}: {e}", new_path.display()));
    if old_form == new_form {
        let contents = root.encode_form(new_form, passphrase, wrapper)?;
        write_new(&new_path, &contents, true).map_err(fs_err)?;
        hook(ResealStep::NewWritten);
        check_same(dir, to, &root)?;
        return Ok(Resealed::Moved(old_form, new_form));
    }
    let finished = new_path.exists();
    if finished {
        // An interrupted reseal: the new form must hold this very root key.
        check_same(dir, to, &root)?;
    } else {
        let contents = root.encode_form(new_form, passphrase, wrapper)?;
        write_new(&new_path, &contents, false).map_err(fs_err)?;
        hook(ResealStep::NewWritten);
        check_same(dir, to, &root)?;
    }
    fs::remove_file(&old_path).map_err(|e| Error::RootKey(format!("removing {}: {e}", old_path.display())))?;
    sync_dir(&old_path).map_err(|e| Error::RootKey(format!("syncing {}: {e}", dir.display())))?;
    hook(ResealStep::OldRemoved);
    Ok(if finished { Resealed::Finished(new_form) } else { Resealed::Moved(old_form, new_form) })
}

fn check_same(dir: &Path, to: &RootSource, root: &crate::root::RootKey) -> Result<()> {
    if !to.load(dir, false)?.same_as(root) {
        return Err(Error::RootKey(format!(
            "{} holds another root key than the store's; nothing removed (move it away if it is left from another store)",
            dir.join(to.form().file_name()).display()
        )));
    }
    Ok(())
}

/// Removes temporary root key files left by a crash (`root.tmp.<hex>`).
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("root.tmp.")) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests;
