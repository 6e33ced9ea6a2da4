//! The key server's civil dates, all in UTC with whole seconds: SigV4's `X-Amz-Date`
//! (`YYYYMMDD'T'HHMMSS'Z'`) and the audit records' RFC 3339 `eventTime`. The calendar is the
//! `time` crate's; only the two layouts are written here.

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

    proptest! {
        #[test]
        fn date_round_trip(secs in 0u64..8_000_000_000) {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            prop_assert_eq!(parse_amz_date(&format_amz_date(t)), Some(t));
        }

        #[test]
        fn parse_never_panics(s in ".{0,20}") {
            let _ = parse_amz_date(&s);
        }
    }
}
