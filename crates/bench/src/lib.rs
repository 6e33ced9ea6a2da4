//! The load drivers behind `envelope bench`. Each takes its options as values (durations
//! parsed, the `envelope` executable to start servers from) and returns a report that renders
//! as a Markdown table or as JSON; printing is the caller's.
//!
//! * [`plugin`]: KMS v2 Encrypt and Decrypt RPCs against a plugin over its Unix socket.
//! * [`inspect`]: `envelope inspect -o summary` over many KMS v2 Secrets in etcd.
//! * [`kms`]: SigV4-signed Encrypt and Decrypt against `envelope kms serve`, and moto_server
//!   side by side.
//! * [`local_kek`]: remote KMS calls, Decrypt latency and CPU of KMS v1 reads after a plugin
//!   restart, with the plugin's local KEK layer and without, against `envelope kms serve`.
//! * [`error`]: [`BenchError`], the crate's one error type.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod inspect;
pub mod kms;
pub mod local_kek;
pub mod plugin;

pub use error::{BenchError, BoxError, Result};

/// The `p` quantile (nearest rank) of latencies in microseconds, sorted ascending, in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1000.0
}

/// Resident set size of a process, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A server this crate started: sent SIGTERM and waited for on drop, then its temporary
/// directory (if any) is removed.
pub(crate) struct Spawned {
    pub(crate) child: std::process::Child,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A loopback TCP port free right now.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 50.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&us, 0.0), 1.0);
    }
}
