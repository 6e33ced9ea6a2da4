//! Loaded PKCS#11 modules: one per path and process, shared by every instance and admin
//! command that names it (`C_Initialize` is process-wide).
//!
//! Every PKCS#11 call runs while holding a read guard of the module ([`Module::enter`]); a
//! re-initialisation (`C_Finalize` + `C_Initialize`, [`Module::reinitialize`]) takes the write
//! guard, so it never runs beside a call, and bumps the module's epoch: sessions and object
//! handles of an older epoch are stale and are forgotten, never closed (their handle numbers
//! may belong to new sessions).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use envelope_plugin::PluginError;

/// Least time between two re-initialisations of one module.
const REINIT_SPACING: Duration = Duration::from_millis(200);

/// A loaded, initialised PKCS#11 module.
#[derive(Clone)]
pub struct Module {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    ctx: Pkcs11,
    epoch: RwLock<u64>,
    last_reinit: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// A read guard: PKCS#11 calls may run while it is held; [`Entered::epoch`] says which
/// sessions are current.
pub struct Entered<'a> {
    guard: RwLockReadGuard<'a, u64>,
    ctx: &'a Pkcs11,
}

impl Entered<'_> {
    /// The module's current epoch.
    pub fn epoch(&self) -> u64 {
        *self.guard
    }

    /// The cryptoki context.
    pub fn ctx(&self) -> &Pkcs11 {
        self.ctx
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Module>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn init(ctx: &Pkcs11) -> Result<(), Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Module {
    /// The module at `path`, loaded and initialised on first use in this process.
    pub fn load(path: &Path) -> Result<Module, PluginError> {
        let mut reg = registry().lock().map_err(|_| PluginError::Internal("module registry poisoned".into()))?;
        if let Some(m) = reg.get(path) {
            return Ok(m.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| {
            PluginError::InvalidRequest(format!("cannot load the PKCS#11 module {}: {e}", path.display()))
        })?;
        init(&ctx).map_err(|e| {
            PluginError::Unavailable(format!("C_Initialize of the PKCS#11 module {} failed: {e}", path.display()))
        })?;
        let m = Module {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                ctx,
                epoch: RwLock::new(0),
                last_reinit: Mutex::new(None),
            }),
        };
        reg.insert(path.to_path_buf(), m.clone());
        Ok(m)
    }

    /// The module's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Enters the module for PKCS#11 calls.
    pub fn enter(&self) -> Result<Entered<'_>, PluginError> {
        let guard = self.inner.epoch.read().map_err(|_| PluginError::Internal("module lock poisoned".into()))?;
        Ok(Entered { guard, ctx: &self.inner.ctx })
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.read().map(|g| *g).unwrap_or(u64::MAX)
    }

    /// Re-initialises the module (`C_Finalize`, `C_Initialize`) so that a token that went away
    /// and came back is seen again, unless it was already re-initialised since `seen_epoch` or
    /// less than half a second ago. Every session of the process is lost; pools notice by the
    /// epoch and open new ones.
    pub fn reinitialize(&self, seen_epoch: u64) -> Result<(), PluginError> {
        let mut epoch = self.inner.epoch.write().map_err(|_| PluginError::Internal("module lock poisoned".into()))?;
        if *epoch != seen_epoch {
            return Ok(());
        }
        {
            let mut last =
                self.inner.last_reinit.lock().map_err(|_| PluginError::Internal("module lock poisoned".into()))?;
            if last.is_some_and(|t| t.elapsed() < REINIT_SPACING) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        // C_Finalize consumes a handle of the context; the library stays loaded through ours.
        if let Err(e) = self.inner.ctx.clone().finalize() {
            tracing::debug!(error = %e, "C_Finalize before re-initialising");
        }
        *epoch += 1;
        init(&self.inner.ctx).map_err(|e| PluginError::Unavailable(format!("C_Initialize failed: {e}")))?;
        tracing::info!(module = %self.inner.path.display(), epoch = *epoch, "PKCS#11 module re-initialised");
        Ok(())
    }
}
