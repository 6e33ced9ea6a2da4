//! Bounded retries for transient KMS errors, by [`RetryPolicy`] (envelope_plugin's, shared with
//! the pkcs11 backend): full-jitter backoff inside the caller's deadline, a cap on attempts.
//! The SDK's own retries are disabled by [`AwsBackend`](crate::AwsBackend), so this is the only
//! retry layer (no multiplied retry storms).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use envelope_plugin::{PluginError, deadline};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::classify::is_transient;

pub use envelope_plugin::retry::RetryPolicy;

/// Runs `attempt` until it succeeds, fails with a non-transient error, or the time (see
/// [`RetryPolicy::deadline`]) or the attempt cap is spent. Each attempt holds one permit of
/// `permits` (bounding in-flight remote calls); waiting for a permit counts against the time.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    permits: &Semaphore,
    op: &str,
    mut attempt: F,
) -> Result<T, PluginError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PluginError>>,
{
    let started = Instant::now();
    let deadline = policy.deadline(started, deadline::current());
    let mut tries = 0u32;
    loop {
        tries += 1;
        let got_permit = AtomicBool::new(false);
        let one = async {
            let _permit = permits
                .acquire()
                .await
                .map_err(|_| PluginError::Unavailable(format!("{op}: backend is shutting down")))?;
            got_permit.store(true, Ordering::Relaxed);
            attempt().await
        };
        let res = match tokio::time::timeout_at(deadline, one).await {
            Ok(r) => r,
            Err(_) => {
                let ms = deadline.saturating_duration_since(started).as_millis();
                Err(PluginError::Unavailable(if got_permit.load(Ordering::Relaxed) {
                    format!("{op}: no answer from the KMS within {ms} ms ({tries} attempt(s))")
                } else {
                    format!("{op}: all in-flight KMS calls busy (--max-in-flight) for {ms} ms ({tries} attempt(s))")
                }))
            }
        };
        match res {
            Err(e) if is_transient(&e) && tries < policy.max_attempts => {
                let pause = policy.backoff(tries);
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tracing::debug!(op, tries, pause_ms = pause.as_millis() as u64, error = %e, "retrying KMS call");
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            budget: Duration::from_millis(200),
            reserve: Duration::from_millis(20),
            base: Duration::from_millis(5),
            cap: Duration::from_millis(40),
            max_attempts: 6,
        }
    }

    #[tokio::test]
    async fn retries_only_transient_errors_within_the_budget() {
        let p = fast();
        let sem = Semaphore::new(1);
        let n = AtomicU32::new(0);
        let r: Result<(), _> = run(&p, &sem, "Op", || async {
            n.fetch_add(1, Ordering::SeqCst);
            Err(PluginError::InvalidCiphertext("x".into()))
        })
        .await;
        assert!(matches!(r, Err(PluginError::InvalidCiphertext(_))));
        assert_eq!(n.load(Ordering::SeqCst), 1);

        n.store(0, Ordering::SeqCst);
        let start = Instant::now();
        let r: Result<(), _> = run(&p, &sem, "Op", || async {
            n.fetch_add(1, Ordering::SeqCst);
            Err(PluginError::Unavailable("throttled".into()))
        })
        .await;
        assert!(matches!(r, Err(PluginError::Unavailable(_))));
        let tries = n.load(Ordering::SeqCst);
        assert!((1..=p.max_attempts).contains(&tries), "{tries}");
        assert!(start.elapsed() <= p.budget + Duration::from_millis(50));

        n.store(0, Ordering::SeqCst);
        let r = run(&p, &sem, "Op", || async {
            if n.fetch_add(1, Ordering::SeqCst) < 2 { Err(PluginError::Unavailable("blip".into())) } else { Ok(7) }
        })
        .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test]
    async fn a_hanging_call_ends_at_the_budget() {
        let p = fast();
        let sem = Semaphore::new(1);
        let start = Instant::now();
        let r: Result<(), _> = run(&p, &sem, "Op", std::future::pending).await;
        assert!(matches!(r, Err(PluginError::Unavailable(ref m)) if m.contains("within 200 ms")), "{r:?}");
        assert!(start.elapsed() >= p.budget && start.elapsed() < p.budget + Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn waiting_for_a_permit_counts_against_the_budget() {
        let p = fast();
        let sem = Semaphore::new(1);
        let _held = sem.acquire().await.unwrap();
        let r: Result<(), _> = run(&p, &sem, "Op", || async { Ok(()) }).await;
        assert!(matches!(r, Err(PluginError::Unavailable(ref m)) if m.contains("busy (--max-in-flight)")), "{r:?}");
    }

    #[test]
    fn the_callers_deadline_replaces_the_budget() {
        let p = fast();
        let now = Instant::now();
        assert_eq!(p.deadline(now, None), now + p.budget);
        let long = now + Duration::from_secs(3);
        assert_eq!(p.deadline(now, Some(long)), long - p.reserve);
        let short = now + Duration::from_millis(10);
        assert_eq!(p.deadline(now, Some(short)), short, "less than the reserve left: use all of it");
    }

    #[tokio::test]
    async fn a_hanging_call_ends_before_the_callers_deadline() {
        // Default policy: 2 s budget without a deadline; the caller allows 300 ms.
        let p = RetryPolicy::default();
        let sem = Semaphore::new(1);
        let start = Instant::now();
        let caller = start + Duration::from_millis(300);
        let r: Result<(), _> = deadline::scope(caller, run(&p, &sem, "Op", std::future::pending)).await;
        let took = start.elapsed();
        let Err(PluginError::Unavailable(m)) = &r else { panic!("{r:?}") };
        let ms: u64 = m
            .split("within ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!((50..=200).contains(&ms), "window {ms} ms: at most the 300 ms deadline less the 100 ms reserve ({m})");
        // Ended by the caller's deadline, not by the 2 s budget.
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_a_long_callers_deadline() {
        // A caller deadline longer than the budget allows more attempts than the budget would.
        let p = RetryPolicy {
            budget: Duration::from_millis(30),
            reserve: Duration::from_millis(10),
            base: Duration::from_millis(20),
            cap: Duration::from_millis(20),
            max_attempts: 50,
        };
        let sem = Semaphore::new(1);
        let n = AtomicU32::new(0);
        let caller = Instant::now() + Duration::from_millis(600);
        let r: Result<(), _> = deadline::scope(
            caller,
            run(&p, &sem, "Op", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(PluginError::Unavailable("throttled".into()))
            }),
        )
        .await;
        assert!(r.is_err());
        assert!(Instant::now() <= caller, "answered after the caller's deadline");
        // Backoff ≤ 20 ms each: well over 3 attempts fit in ~590 ms; the 30 ms budget would allow ~2.
        assert!(n.load(Ordering::SeqCst) > 5, "{}", n.load(Ordering::SeqCst));
    }
}
