//! Standard output of every command. `println!` and `print!` in this crate are the macros of
//! `main.rs`, which write through [`print`]: when the reader has gone away (`envelope key list |
//! head -1`), the write fails with EPIPE and the process ends quietly with exit code 0 — the
//! reader has what it wanted, and `set -o pipefail` pipelines do not fail on it. Rust ignores
//! SIGPIPE, so without this `println!` would panic (exit 101). Other write errors (a full disk)
//! end the process with a one-line error and exit code 1.
//!
//! Servers (`envelope plugin`, `envelope kms serve`) call [`keep_serving`] first: what they
//! print is for the operator, so a reader that went away (`envelope plugin | head`) must not
//! stop kube-apiserver's KMS plugin; the failure is logged once and output is dropped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static KEEP_SERVING: AtomicBool = AtomicBool::new(false);
static REPORTED: AtomicBool = AtomicBool::new(false);

/// From now on a failed write to stdout is logged once and ignored instead of ending the
/// process (for long-running servers).
pub fn keep_serving() {
    KEEP_SERVING.store(true, Ordering::Relaxed);
}

/// Writes `args` to stdout; see the module docs for what happens when that fails.
pub fn print(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        on_error(&e);
    }
}

/// Ends the process after a failed write to stdout: quietly (exit 0) on EPIPE, else with an
/// error (exit 1).
pub fn on_error(e: &std::io::Error) {
    if KEEP_SERVING.load(Ordering::Relaxed) {
        if !REPORTED.swap(true, Ordering::Relaxed) {
            eprintln!("envelope: cannot write to standard output ({e}); serving on without it");
        }
        return;
    }
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("envelope: cannot write to standard output: {e}");
    std::process::exit(1);
}
