//! Wall-clock helpers: milliseconds since the epoch and their ISO 8601 UTC form.

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Year, month (1-12) and day (1-31) in UTC of a time in milliseconds since the Unix epoch.
pub(crate) fn civil(ms: u64) -> (i64, u32, u32) {
    let days = (ms / 86_400_000) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date (year, month 1-12, day 1-31), the inverse of `civil`.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-21T03:40:12Z` for a time in milliseconds since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    let (y, m, d) = civil(ms);
    let rem = ms / 1000 % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn days_round_trip_through_civil() {
        for days in [0i64, 59, 60, 10_957, 11_016, 20_000, 2_000_000] {
            let ms = (days * 86_400_000) as u64;
            let (y, m, d) = super::civil(ms);
            assert_eq!(super::days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(super::days_from_civil(1980, 1, 1), 3652);
        assert_eq!(super::days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn known_dates() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_ms(1_795_232_412_000), "2026-11-21T03:40:12Z");
    }
}
