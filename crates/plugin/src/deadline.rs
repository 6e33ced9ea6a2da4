//! The caller's deadline, carried to the backend.
//!
//! kube-apiserver sends every KMS call with a gRPC deadline (the `timeout` of its
//! EncryptionConfiguration, 3 s by default) in the `grpc-timeout` header. The services read it,
//! cap it with the server's own request timeout, and run the call inside [`scope`]; a backend
//! that retries (the AWS backend) reads [`current`] and never retries past it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with `deadline` as the current caller's deadline.
pub async fn scope<F: Future>(deadline: Instant, f: F) -> F::Output {
    DEADLINE.scope(deadline, f).await
}

/// The deadline of the call being served by this task, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Parses a `grpc-timeout` header value: 1–8 ASCII digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). `None` for anything else.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a request that arrived at `start` with `metadata`: its `grpc-timeout`, capped
/// by `limit` (the server's request timeout, which also applies when the header is missing).
pub fn of_request(start: Instant, metadata: &tonic::metadata::MetadataMap, limit: Duration) -> Instant {
    let asked = metadata.get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.as_bytes())).unwrap_or(limit);
    later(start, asked.min(limit))
}

/// `start + d`, saturating at a far-future instant instead of overflowing.
pub fn later(start: Instant, d: Duration) -> Instant {
    start.checked_add(d).unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"2999m"), Some(Duration::from_millis(2999)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout(b"10n"), Some(Duration::from_nanos(10)));
        for bad in [&b""[..], b"S", b"3", b"3s", b"123456789S", b"-1S", b"1.5S", b"3 S", b"\xff\xfeS"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    use tonic::metadata::MetadataMap;

    #[test]
    fn request_deadline_is_capped_by_the_server_limit() {
        let start = Instant::now();
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(of_request(start, &md, Duration::from_secs(10)), start + Duration::from_secs(10));
        md.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(of_request(start, &md, Duration::from_secs(10)), start + Duration::from_secs(3));
        assert_eq!(of_request(start, &md, Duration::from_secs(1)), start + Duration::from_secs(1));
        md.insert("grpc-timeout", "junk".parse().unwrap());
        assert_eq!(of_request(start, &md, Duration::from_secs(10)), start + Duration::from_secs(10));
        // An absurd limit does not overflow.
        assert!(of_request(start, &MetadataMap::new(), Duration::MAX) > start + Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn scope_sets_and_clears_the_deadline() {
        assert_eq!(current(), None);
        let d = Instant::now() + Duration::from_secs(1);
        assert_eq!(scope(d, async { current() }).await, Some(d));
        assert_eq!(current(), None);
    }
}
