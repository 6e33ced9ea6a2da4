//! The retry policy of `envelope reencrypt` (pure; the caller sleeps and supplies the jitter).
//!
//! Each object is fetched and replaced as one attempt. What happens after a failed attempt
//! depends only on the kind of [`Failure`] and the attempt number:
//!
//! | failure                                    | step                                            |
//! |--------------------------------------------|-------------------------------------------------|
//! | 409 Conflict (changed since our GET)       | GET again at once and retry                     |
//! | 429, 5xx, connection errors and timeouts   | exponential backoff with full jitter            |
//! | 404 Not Found (deleted meanwhile)          | skip the object: nothing left to re-encrypt     |
//! | 401, auth plugin errors, untrusted server  | give up, and the whole run stops                |
//! | any other 4xx, undecodable responses       | give up on the object                           |
//!
//! Every retry counts against [`RetryPolicy::max_attempts`]. Full jitter: the n-th backoff is
//! uniform in `[0, min(cap, base · 2^(n-1)))`, so clients retrying together spread out.

use std::time::Duration;

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 409: the object changed between our GET and PUT.
    Conflict,
    /// 401, credentials that cannot be obtained, or an API server certificate that is not
    /// trusted: every other object would fail alike.
    Fatal,
    /// 404: the object is gone.
    NotFound,
    /// Any other client error (400, 403, 422, …) or a response that cannot be decoded.
    Permanent,
    /// 429, 5xx, a connection error or a timeout.
    Transient,
}

/// The failure an HTTP status code means.
pub fn failure_of_status(code: u16) -> Failure {
    match code {
        401 => Failure::Fatal,
        404 => Failure::NotFound,
        409 => Failure::Conflict,
        429 | 500..=599 => Failure::Transient,
        _ => Failure::Permanent,
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Wait this long, then GET and PUT again.
    Retry(Duration),
    /// Count the object as skipped (it was deleted).
    Skip,
    /// Count the object as failed.
    GiveUp,
}

/// Bounded retries with exponential backoff and full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per object, the first included (at least 1).
    pub max_attempts: u32,
    /// The first backoff's upper bound.
    pub base: Duration,
    /// The largest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, base: Duration::from_millis(200), cap: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The step after attempt number `attempt` (1 for the first) failed with `failure`;
    /// `jitter` is a uniform random number in `[0, 1)`.
    pub fn next(&self, failure: Failure, attempt: u32, jitter: f64) -> Step {
        match failure {
            Failure::NotFound => Step::Skip,
            Failure::Permanent | Failure::Fatal => Step::GiveUp,
            _ if attempt >= self.max_attempts => Step::GiveUp,
            Failure::Conflict => Step::Retry(Duration::ZERO),
            Failure::Transient => Step::Retry(self.backoff(attempt, jitter)),
        }
    }

    /// The backoff after the `retry`-th failure (1 for the first): uniform in
    /// `[0, min(cap, base · 2^(retry-1)))`, given `jitter` uniform in `[0, 1)`.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        ceiling.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A uniform random number in `[0, 1)` for [`RetryPolicy::next`] (std's randomly keyed hasher;
/// jitter needs spread, not cryptographic strength).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, base: Duration::from_millis(100), cap: Duration::from_secs(1) }
    }

    #[test]
    fn status_codes_map_to_failures() {
        assert_eq!(failure_of_status(409), Failure::Conflict);
        assert_eq!(failure_of_status(404), Failure::NotFound);
        assert_eq!(failure_of_status(429), Failure::Transient);
        assert_eq!(failure_of_status(500), Failure::Transient);
        assert_eq!(failure_of_status(503), Failure::Transient);
        assert_eq!(failure_of_status(504), Failure::Transient);
        assert_eq!(failure_of_status(401), Failure::Fatal);
        assert_eq!(failure_of_status(403), Failure::Permanent);
        assert_eq!(failure_of_status(422), Failure::Permanent);
        assert_eq!(failure_of_status(400), Failure::Permanent);
    }

    #[test]
    fn conflicts_retry_at_once_until_the_attempts_run_out() {
        let p = policy();
        for attempt in 1..5 {
            assert_eq!(p.next(Failure::Conflict, attempt, 0.5), Step::Retry(Duration::ZERO));
        }
        assert_eq!(p.next(Failure::Conflict, 5, 0.5), Step::GiveUp);
    }

    /// Milliseconds, rounded (float arithmetic may be off by a nanosecond).
    fn ms(d: Duration) -> u128 {
        (d.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn transient_failures_back_off_exponentially_up_to_the_cap() {
        let p = policy();
        // jitter → 1 gives the ceiling: 100, 200, 400, 800 ms, then the 1 s cap.
        let almost_one = 1.0 - f64::EPSILON;
        let ceilings: Vec<u128> = (1..=6).map(|n| ms(p.backoff(n, almost_one))).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(ms(p.backoff(3, 0.5)), 200);
        assert_eq!(ms(p.backoff(u32::MAX, 0.5)), 500);
        assert!(matches!(p.next(Failure::Transient, 2, 0.5), Step::Retry(d) if ms(d) == 100));
        assert_eq!(p.next(Failure::Transient, 5, 0.5), Step::GiveUp);
        // Out-of-range jitter is clamped, never more than the ceiling.
        assert_eq!(ms(p.backoff(1, 7.0)), 100);
        assert_eq!(p.backoff(1, -1.0), Duration::ZERO);
    }

    #[test]
    fn not_found_skips_and_client_errors_give_up_at_once() {
        let p = policy();
        assert_eq!(p.next(Failure::NotFound, 1, 0.5), Step::Skip);
        assert_eq!(p.next(Failure::NotFound, 5, 0.5), Step::Skip);
        assert_eq!(p.next(Failure::Permanent, 1, 0.5), Step::GiveUp);
        assert_eq!(p.next(Failure::Fatal, 1, 0.5), Step::GiveUp);
    }

    #[test]
    fn a_single_attempt_never_retries() {
        let p = RetryPolicy { max_attempts: 1, ..policy() };
        assert_eq!(p.next(Failure::Transient, 1, 0.5), Step::GiveUp);
        assert_eq!(p.next(Failure::Conflict, 1, 0.5), Step::GiveUp);
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.windows(2).any(|w| w[0] != w[1]));
    }
}
