//! The logged-in session pool of one token.
//!
//! PKCS#11 calls block (and a network HSM may take milliseconds), so every call runs on tokio's
//! blocking pool, holding one of `sessions` permits: at most that many calls reach the token at
//! once, each on its own session (a cryptoki `Session` is `Send` but not `Sync`). Sessions are
//! opened lazily and kept; the token is found by label or serial (slot ids are not stable:
//! SoftHSM2 gives tokens random slots) each time the module is (re-)initialised.
//!
//! Faults, classified by [`crate::classify`]: a lost session is replaced at once; a lost login
//! (`CKR_USER_NOT_LOGGED_IN`, objects vanishing) is logged in again at once; a token that went
//! away re-initialises the module and is retried with backoff inside the caller's deadline
//! ([`envelope_plugin::deadline`]; a 2 s budget without one); a refused PIN is final and is never
//! presented again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptoki::context::{Function, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use envelope_plugin::{InstanceMetrics, PluginError, deadline};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::classify::{Action, Failure, classify, is_transient, pkcs11};
use crate::module::{Entered, Module};
use crate::pin::PinSource;

/// A step run on one logged-in session (blocking), possibly several times (retries).
pub type TokenOp<T> = Arc<dyn Fn(&mut Pooled) -> Result<T, Failure> + Send + Sync>;

/// Default number of sessions (and of concurrent token calls) per backend.
pub const DEFAULT_SESSIONS: usize = 8;
/// Most sessions a pool may have.
pub const MAX_SESSIONS: usize = 1024;
/// Immediate attempts inside one blocking call (a lost session or login is repaired between them).
const REPAIRS: usize = 3;

/// How the token is found among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By token label (`CKA_LABEL` of the token, 32 characters at most).
    Label(String),
    /// By serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token labelled {l:?}"),
            TokenSelector::Serial(s) => write!(f, "token with serial {s:?}"),
        }
    }
}

/// Everything needed to reach a key in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// File holding the user PIN (mode 0600 or stricter).
    pub pin_file: PathBuf,
    /// `CKA_LABEL` of the key (all its generations share it).
    pub key_label: String,
    /// Sessions in the pool: the most token calls at once.
    pub sessions: usize,
}

impl Pkcs11Config {
    /// Checks the values that need no token.
    pub fn validate(&self) -> Result<(), PluginError> {
        let bad = |m: String| Err(PluginError::InvalidRequest(m));
        match &self.token {
            TokenSelector::Label(l) if l.is_empty() || l.len() > 32 => {
                return bad(format!("token label {l:?} must be 1 to 32 bytes"));
            }
            TokenSelector::Serial(s) if s.is_empty() || s.len() > 16 => {
                return bad(format!("token serial {s:?} must be 1 to 16 bytes"));
            }
            _ => {}
        }
        if self.key_label.is_empty() || self.key_label.len() > 256 {
            return bad("the key label must be 1 to 256 bytes".into());
        }
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return bad(format!("sessions must be between 1 and {MAX_SESSIONS}"));
        }
        Ok(())
    }
}

pub use envelope_plugin::retry::RetryPolicy;

/// How transient failures (the token unreachable) are retried by default: as the aws backend, with
/// a lower ceiling and one attempt fewer (a token answers fast or not at all).
pub const PKCS11_RETRY: RetryPolicy = RetryPolicy {
    budget: Duration::from_secs(2),
    reserve: Duration::from_millis(100),
    base: Duration::from_millis(50),
    cap: Duration::from_millis(500),
    max_attempts: 5,
};

/// One session of the pool, with the object handles found through it.
pub struct Pooled {
    session: Option<Session>,
    ctx: Pkcs11,
    slot: Slot,
    epoch: u64,
    check_login: bool,
    /// Key handles by CKA_ID, found through this session.
    pub handles: HashMap<Vec<u8>, ObjectHandle>,
}

impl Pooled {
    /// The session.
    pub fn session(&self) -> Result<&Session, Failure> {
        self.session.as_ref().ok_or_else(|| Failure::Plugin(PluginError::Internal("session already closed".into())))
    }

    /// Whether the session is logged in as the user.
    pub fn logged_in(&self) -> Result<bool, Failure> {
        let info = self.session()?.get_session_info().map_err(pkcs11("the token session"))?;
        Ok(matches!(info.session_state(), SessionState::RoUser | SessionState::RwUser))
    }

    /// Checks that the session's token is still there (an object that vanished may mean the
    /// token did).
    pub fn check_token(&self) -> Result<(), Failure> {
        self.ctx.get_token_info(self.slot).map(|_| ()).map_err(pkcs11("the token"))
    }

    /// Closes the session if it belongs to the module's current epoch; forgets it otherwise
    /// (`C_Finalize` closed it, and its handle number may now name another session).
    fn close(mut self, g: &Entered<'_>) {
        if let Some(s) = self.session.take() {
            if g.epoch() == self.epoch {
                drop(s);
            } else {
                std::mem::forget(s);
            }
        }
    }

    /// Forgets a session whose handle is no longer valid, without `C_CloseSession`.
    fn forget(mut self) {
        if let Some(s) = self.session.take() {
            std::mem::forget(s);
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Sessions leave through `close` or `forget`; one still here (a pool being dropped) is
        // forgotten rather than closed without the module's guard.
        if let Some(s) = self.session.take() {
            std::mem::forget(s);
        }
    }
}

/// The session pool of one token.
pub struct Pool {
    module: Module,
    token: TokenSelector,
    pin: PinSource,
    rw: bool,
    idle: Mutex<Vec<Pooled>>,
    slot: Mutex<Option<(u64, Slot)>>,
    permits: Arc<Semaphore>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("module", &self.module).field("token", &self.token).finish_non_exhaustive()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let sessions = match self.idle.get_mut() {
            Ok(v) => std::mem::take(v),
            Err(p) => std::mem::take(p.into_inner()),
        };
        match self.module.enter() {
            Ok(g) => sessions.into_iter().for_each(|s| s.close(&g)),
            Err(_) => sessions.into_iter().for_each(Pooled::forget),
        }
    }
}

impl Pool {
    /// A pool of up to `sessions` sessions (read-write ones if `rw`) on `token` of `module`.
    pub fn new(module: Module, token: TokenSelector, pin: PinSource, sessions: usize, rw: bool) -> Self {
        Self {
            module,
            token,
            pin,
            rw,
            idle: Mutex::new(Vec::new()),
            slot: Mutex::new(None),
            permits: Arc::new(Semaphore::new(sessions.clamp(1, MAX_SESSIONS))),
            retry: PKCS11_RETRY,
        }
    }

    /// Replaces the retry policy.
    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// The token selector.
    pub fn token(&self) -> &TokenSelector {
        &self.token
    }

    /// The module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    fn find_slot(&self, g: &Entered<'_>) -> Result<Slot, Failure> {
        if let Ok(cached) = self.slot.lock()
            && let Some((epoch, slot)) = *cached
            && epoch == g.epoch()
        {
            return Ok(slot);
        }
        let slots = g.ctx().get_slots_with_token().map_err(pkcs11("listing the module's slots"))?;
        let mut found = Vec::new();
        let mut seen = Vec::new();
        for slot in slots {
            // A token that went away answers with an error: skip it.
            let Ok(info) = g.ctx().get_token_info(slot) else { continue };
            let (label, serial) = (info.label().trim_end().to_string(), info.serial_number().trim_end().to_string());
            let hit = match &self.token {
                TokenSelector::Label(l) => label == *l,
                TokenSelector::Serial(s) => serial == *s,
            };
            if hit {
                if !info.token_initialized() || !info.user_pin_initialized() {
                    return Err(Failure::Plugin(PluginError::KeyUnusable(format!(
                        "the {} is not initialised (or has no user PIN)",
                        self.token
                    ))));
                }
                if info.user_pin_locked() {
                    return Err(Failure::Plugin(PluginError::PermissionDenied(format!(
                        "the user PIN of the {} is locked (too many wrong PINs); the security officer must reset it",
                        self.token
                    ))));
                }
                found.push((slot, serial.clone()));
            }
            seen.push(format!("{label:?} (serial {serial})"));
        }
        match found.as_slice() {
            [(slot, _)] => {
                if let Ok(mut c) = self.slot.lock() {
                    *c = Some((g.epoch(), *slot));
                }
                Ok(*slot)
            }
            [] => Err(Failure::Pkcs11 {
                error: Error::Pkcs11(RvError::TokenNotPresent, Function::GetTokenInfo),
                what: format!(
                    "no {} in {} (tokens present: {})",
                    self.token,
                    self.module.path().display(),
                    if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
                ),
            }),
            several => Err(Failure::Plugin(PluginError::KeyUnusable(format!(
                "{} tokens match the {} (serials {}): select one by serial",
                several.len(),
                self.token,
                several.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join(", ")
            )))),
        }
    }

    fn login(&self, s: &Pooled) -> Result<(), Failure> {
        if s.logged_in()? {
            return Ok(());
        }
        let (pin, digest) = self.pin.read()?;
        match s.session()?.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(
                e @ Error::Pkcs11(
                    RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinExpired
                    | RvError::PinLocked,
                    _,
                ),
            ) => {
                self.pin.reject(digest);
                tracing::error!(token = %self.token, pin_file = %self.pin.path().display(), "the token refused the PIN; it will not be presented again");
                Err(Failure::Pkcs11 { error: e, what: format!("logging in to the {}", self.token) })
            }
            Err(e) => Err(Failure::Pkcs11 { error: e, what: format!("logging in to the {}", self.token) }),
        }
    }

    fn checkout(&self, g: &Entered<'_>) -> Result<Pooled, Failure> {
        loop {
            let next = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut s) = next else { break };
            if s.epoch != g.epoch() {
                s.close(g);
                continue;
            }
            if s.check_login {
                if let Err(f) = self.login(&s) {
                    self.checkin(s);
                    return Err(f);
                }
                s.check_login = false;
            }
            return Ok(s);
        }
        let slot = self.find_slot(g)?;
        let what = format!("opening a session on the {}", self.token);
        let session = if self.rw { g.ctx().open_rw_session(slot) } else { g.ctx().open_ro_session(slot) }
            .map_err(pkcs11(what))?;
        let s = Pooled {
            session: Some(session),
            ctx: g.ctx().clone(),
            slot,
            epoch: g.epoch(),
            check_login: false,
            handles: HashMap::new(),
        };
        if let Err(f) = self.login(&s) {
            s.close(g);
            return Err(f);
        }
        Ok(s)
    }

    fn checkin(&self, s: Pooled) {
        match self.idle.lock() {
            Ok(mut v) => v.push(s),
            Err(_) => s.forget(),
        }
    }

    /// Runs `op` on a logged-in session, here and now (blocking), repairing a lost session or
    /// login between attempts. A token that went away re-initialises the module and returns
    /// [`PluginError::Unavailable`] (for the caller to retry later).
    pub fn run<T>(&self, op: &(dyn Fn(&mut Pooled) -> Result<T, Failure> + Sync)) -> Result<T, PluginError> {
        let mut last = PluginError::Unavailable(format!("the {} did not answer", self.token));
        for _ in 0..REPAIRS {
            let g = self.module.enter()?;
            let epoch = g.epoch();
            let (action, session) = match self.checkout(&g) {
                Ok(mut s) => match op(&mut s) {
                    Ok(v) => {
                        self.checkin(s);
                        return Ok(v);
                    }
                    Err(f) => (classify(f), Some(s)),
                },
                Err(f) => (classify(f), None),
            };
            match action {
                Action::Fail(e) | Action::PinRefused(e) => {
                    if let Some(s) = session {
                        self.checkin(s);
                    }
                    return Err(e);
                }
                Action::Reopen(e) => {
                    tracing::debug!(error = %e, "token session lost; opening another");
                    if let Some(s) = session {
                        s.forget();
                    }
                    last = e;
                }
                Action::Relogin(e) => {
                    tracing::debug!(error = %e, "token login lost; logging in again");
                    if let Some(mut s) = session {
                        s.handles.clear();
                        s.check_login = true;
                        self.checkin(s);
                    }
                    last = e;
                }
                Action::Reinitialize(e) => {
                    if let Some(s) = session {
                        s.forget();
                    }
                    drop(g);
                    tracing::warn!(error = %e, "token unreachable; re-initialising the PKCS#11 module");
                    self.module.reinitialize(epoch)?;
                    return Err(e);
                }
            }
        }
        Err(last)
    }

    /// Runs `op` on the blocking pool, holding one of the pool's permits, retrying transient
    /// failures with backoff inside the caller's deadline. Each attempt is recorded in
    /// `metrics` as a remote call named `name`.
    pub async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        name: &'static str,
        metrics: Option<&InstanceMetrics>,
        op: TokenOp<T>,
    ) -> Result<T, PluginError> {
        let started = Instant::now();
        let end = self.retry.deadline(started, deadline::current());
        let mut tries = 0u32;
        loop {
            tries += 1;
            let attempt = std::time::Instant::now();
            let res = self.attempt(end, started, tries, op.clone()).await;
            if let Some(m) = metrics {
                let outcome = match &res {
                    Ok(_) => "ok",
                    Err(e) => envelope_plugin::metrics::code_name(e.code()),
                };
                m.remote(name, outcome, attempt.elapsed());
            }
            match res {
                Err(e) if is_transient(&e) && tries < self.retry.max_attempts => {
                    let pause = self.retry.backoff(tries);
                    if Instant::now() + pause >= end {
                        return Err(e);
                    }
                    tracing::debug!(op = name, tries, error = %e, "retrying token call");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn attempt<T: Send + 'static>(
        self: &Arc<Self>,
        end: Instant,
        started: Instant,
        tries: u32,
        op: TokenOp<T>,
    ) -> Result<T, PluginError> {
        let ms = || end.saturating_duration_since(started).as_millis();
        let permit = match tokio::time::timeout_at(end, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(PluginError::Unavailable("the token session pool is closed".into())),
            Err(_) => {
                return Err(PluginError::Unavailable(format!(
                    "all token sessions (--pkcs11-sessions) busy for {} ms ({tries} attempt(s))",
                    ms()
                )));
            }
        };
        let pool = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.run(&*op)
        });
        match tokio::time::timeout_at(end, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(PluginError::Internal(format!("token call failed: {e}"))),
            Err(_) => Err(PluginError::Unavailable(format!(
                "no answer from the {} within {} ms ({tries} attempt(s))",
                self.token,
                ms()
            ))),
        }
    }
}
