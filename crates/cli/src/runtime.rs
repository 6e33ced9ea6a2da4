//! Process set-up, in one place for every command: logging, hardening, the tokio runtime and
//! the signal handlers. Commands pick a runtime flavour here and hand signals to the libraries
//! as plain values (a channel of signal names, a callback for SIGHUP).

use tokio::runtime::Runtime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Logs go to stderr, as text or one JSON object per line.
pub fn init_logging(json: bool, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// No core dumps and no ptrace by other processes of the same user: key material lives in memory.
pub fn harden_process() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// The runtime a command runs on.
#[derive(Debug, Clone, Copy)]
pub enum Flavor {
    /// One thread for everything (the plugin: see docs/benchmarks.md); blocking work still goes
    /// to the blocking pool.
    CurrentThread,
    /// A worker per core (the key server, the load drivers).
    MultiThread,
    /// A multi-thread runtime with this many workers (the etcd clients).
    Workers(usize),
}

/// A runtime of `flavor` with I/O and timers enabled.
pub fn build(flavor: Flavor) -> std::io::Result<Runtime> {
    let mut builder = match flavor {
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        Flavor::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

/// Installs the SIGTERM and SIGINT handlers (inside a runtime) and returns the name of every
/// such signal received from now on (`"SIGTERM"`, `"SIGINT"`), in order. The handlers are in
/// place when this returns, so a signal from then on is never lost.
pub fn shutdown_signals() -> std::io::Result<mpsc::UnboundedReceiver<&'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if tx.send(name).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Installs the SIGHUP handler (inside a runtime): `f` runs on every SIGHUP instead of the
/// process ending.
pub fn on_hangup(mut f: impl FnMut() + Send + 'static) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            f();
        }
    });
    Ok(())
}
