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

/// `2026-11-21T03:40:12Z` for a time in milliseconds since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    let (y, m, d) = civil(ms);
    let rem = ms / 1000 % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::format_ms(1_795_232_412_000), "2026-11-21T03:40:12Z");
    }
}
