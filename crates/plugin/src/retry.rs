//! How remote backends (aws, pkcs11) retry transient failures: exponential backoff with full
//! jitter, inside the caller's deadline (kube-apiserver's gRPC deadline, see [`crate::deadline`])
//! less a small reserve for answering, and a cap on attempts. Without a caller's deadline
//! (library use) a fixed budget applies. Each backend runs its own loop with this policy.

use std::time::Duration;

use tokio::time::Instant;

use crate::deadline;

/// How transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total time one logical call may take, attempts and sleeps included, when the caller set
    /// no deadline.
    pub budget: Duration,
    /// Time kept back before the caller's deadline so the answer (an error naming the cause)
    /// reaches the caller before it gives up.
    pub reserve: Duration,
    /// Backoff ceiling before the first retry; doubles with each retry.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub cap: Duration,
    /// Most attempts per logical call (1 = no retries).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(2),
            reserve: Duration::from_millis(100),
            base: Duration::from_millis(50),
            cap: Duration::from_millis(800),
            max_attempts: 6,
        }
    }
}

impl RetryPolicy {
    /// When a logical call started at `now` must end: the caller's deadline less
    /// [`reserve`](Self::reserve) (the whole remaining time if that is less than the reserve), or
    /// `now + budget` without a caller's deadline.
    pub fn deadline(&self, now: Instant, caller: Option<Instant>) -> Instant {
        match caller {
            Some(d) => match d.checked_sub(self.reserve) {
                Some(early) if early > now => early,
                _ => d,
            },
            None => deadline::later(now, self.budget),
        }
    }

    /// The ceiling of the backoff before retry number `retry` (1-based): `min(cap, base·2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Full jitter: a uniformly random duration in `[0, ceiling(retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_micros()).unwrap_or(u64::MAX);
        let mut r = [0u8; 8];
        // If the system RNG fails, fall back to the full ceiling (still bounded).
        let x = match aws_lc_rs::rand::fill(&mut r) {
            Ok(()) => u64::from_le_bytes(r),
            Err(_) => u64::MAX,
        };
        Duration::from_micros(if ceiling == u64::MAX { x } else { x % (ceiling + 1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_backoff_stays_under_them() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(50));
        assert_eq!(p.ceiling(2), Duration::from_millis(100));
        assert_eq!(p.ceiling(5), Duration::from_millis(800));
        assert_eq!(p.ceiling(40), Duration::from_millis(800));
        for retry in 1..10 {
            assert!(p.backoff(retry) <= p.ceiling(retry));
        }
    }

    #[test]
    fn deadline_keeps_the_reserve_when_there_is_room() {
        let p = RetryPolicy::default();
        let now = Instant::now();
        assert_eq!(p.deadline(now, None), now + p.budget);
        let caller = now + Duration::from_secs(1);
        assert_eq!(p.deadline(now, Some(caller)), caller - p.reserve);
        let tight = now + Duration::from_millis(50);
        assert_eq!(p.deadline(now, Some(tight)), tight);
    }
}
