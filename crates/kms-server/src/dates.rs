//! The key server's civil dates, all in UTC with whole seconds: SigV4's `X-Amz-Date`
//! (`YYYYMMDD'T'HHMMSS'Z'`) and RFC 3339 (the audit records' `eventTime`, the audit search's
//! times, credentials' `expires`). The calendar is the `time` crate's; only the layouts are
//! written here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Parses `YYYYMMDD'T'HHMMSS'Z'` (UTC). `None` for anything else, including impossible dates and
/// times and dates before 1970.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    fn field<T: std::str::FromStr>(s: &str, r: std::ops::Range<usize>) -> Option<T> {
        s.get(r)?.parse().ok()
    }
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let month = time::Month::try_from(field::<u8>(s, 4..6)?).ok()?;
    let t = time::Date::from_calendar_date(field(s, 0..4)?, month, field(s, 6..8)?)
        .ok()?
        .with_hms(field(s, 9..11)?, field(s, 11..13)?, field(s, 13..15)?)
        .ok()?
        .assume_utc();
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t.unix_timestamp()).ok()?))
}

/// Formats a time as `YYYYMMDD'T'HHMMSS'Z'`.
pub fn format_amz_date(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Formats a time as RFC 3339 (`2025-05-20T20:45:00Z`).
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SSZ` (as the audit log writes it; fractions and offsets accepted) to Unix
/// seconds. `None` for anything else, including impossible dates and times.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
    };
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(num(0..4)?, month, u8::try_from(num(8..10)?).ok()?).ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest.get(1..)?.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            sign * (i64::from(h.parse::<u8>().ok()?) * 3600 + i64::from(m.parse::<u8>().ok()?) * 60)
        }
    };
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc().unix_timestamp() - offset)
}

/// `t` in UTC, cut to whole seconds, as (year, month, day, hour, minute, second); the epoch for
/// times outside 1970–9999.
fn utc(t: SystemTime) -> (i32, u8, u8, u8, u8, u8) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    (t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amz_dates() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_440_938_160);
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        for bad in [
            "",
            "20150830T123600",
            "2015-08-30T12:36:00Z",
            "20150230T000000Z",
            "20151301T000000Z",
            "2015083OT123600Z",
            "+0150830T123600Z",
            "2015 830T123600Z",
            "20150830T123660Z",
            "20150830T243600Z",
            "20150830T126000Z",
            "20150800T000000Z",
            "20150830T123600Zx",
            "20230229T000000Z",
            "21000229T000000Z",
            "00000101T000000Z",
            "19691231T235959Z",
            "２0150830T123600Z",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
        assert!(parse_amz_date("20240229T235959Z").is_some());
        assert!(parse_amz_date("20000229T000000Z").is_some());
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(UNIX_EPOCH));
        let last = parse_amz_date("99991231T235959Z").unwrap();
        assert_eq!(last.duration_since(UNIX_EPOCH).unwrap().as_secs(), 253_402_300_799);
        assert_eq!(format_amz_date(last), "99991231T235959Z");
        assert_eq!(format_amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(format_amz_date(UNIX_EPOCH - Duration::from_secs(1)), "19700101T000000Z");
        assert_eq!(format_amz_date(UNIX_EPOCH + Duration::from_millis(1_999)), "19700101T000001Z");
    }

    #[test]
    fn event_time_format() {
        let at = |secs: u64| rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(19_782 * 86_400), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_747_773_900), "2025-05-20T20:45:00Z");
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(1_999)), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339_seconds(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-12-01T21:19:20Z"), Some(1_796_159_960));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.123+01:00"), Some(0));
        for bad in ["", "2026-13-01T00:00:00Z", "2026-12-01 00:00:00Z", "2026-12-01T00:00:00", "2026-12-01T00:00:00Zx"]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn date_round_trip(secs in 0u64..8_000_000_000) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            prop_assert_eq!(parse_amz_date(&format_amz_date(t)), Some(t));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = parse_amz_date(&s);
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn rfc3339_round_trip(secs in 0u64..253_402_300_799) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            prop_assert_eq!(parse_rfc3339(&rfc3339_seconds(t)), Some(i64::try_from(secs).unwrap()));
        }
    }
}
