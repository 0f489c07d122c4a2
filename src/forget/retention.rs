//! Retention policies: which images of one source a `--keep-*` policy keeps. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::id::ImageId;
use crate::manifest::{ImageInfo, Kind};
use crate::timefmt::civil;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The N most recent backup sets (Macrium's "keep N full sets").
    pub keep_sets: Option<usize>,
    pub keep_last: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// Images taken within this many milliseconds of the newest image.
    pub keep_within_ms: Option<u64>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// A policy whose every rule is "keep 0" keeps no image at all (restic refuses it too).
    pub(crate) fn keeps_nothing(&self) -> bool {
        let counts =
            [self.keep_sets, self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly];
        !self.is_empty() && self.keep_within_ms.is_none() && counts.iter().all(|c| c.is_none_or(|n| n == 0))
    }
}

const DAY_MS: u64 = 86_400_000;

/// Which bucket (day, week from Monday, month, year) an image falls in.
fn bucket(ms: u64, unit: &str) -> i64 {
    let days = (ms / DAY_MS) as i64;
    match unit {
        "day" => days,
        // 1970-01-01 was a Thursday: shift so that weeks start on Monday.
        "week" => (days + 3).div_euclid(7),
        "month" => {
            let (y, m, _) = civil(ms);
            y * 12 + m as i64
        }
        _ => civil(ms).0,
    }
}

/// The images a policy keeps among `images` (one source), each with the rules that keep it.
pub fn apply(images: &[ImageInfo], p: &Policy) -> BTreeMap<ImageId, Vec<&'static str>> {
    let mut newest: Vec<&ImageInfo> = images.iter().collect();
    newest.sort_by(|a, b| (b.created_ms, b.id).cmp(&(a.created_ms, a.id)));
    let mut keep: BTreeMap<ImageId, Vec<&'static str>> = BTreeMap::new();
    let mut mark = |id: ImageId, why: &'static str| keep.entry(id).or_default().push(why);

    if let Some(n) = p.keep_last {
        newest.iter().take(n).for_each(|i| mark(i.id, "last"));
    }
    if let (Some(d), Some(top)) = (p.keep_within_ms, newest.first()) {
        let from = top.created_ms.saturating_sub(d);
        newest.iter().filter(|i| i.created_ms >= from).for_each(|i| mark(i.id, "within"));
    }
    for (n, unit, why) in [
        (p.keep_daily, "day", "daily"),
        (p.keep_weekly, "week", "weekly"),
        (p.keep_monthly, "month", "monthly"),
        (p.keep_yearly, "year", "yearly"),
    ] {
        let Some(n) = n else { continue };
        let mut seen = BTreeSet::new();
        for i in &newest {
            if seen.len() >= n {
                break;
            }
            if seen.insert(bucket(i.created_ms, unit)) {
                mark(i.id, why);
            }
        }
    }
    if let Some(n) = p.keep_sets {
        let mut fulls: Vec<&&ImageInfo> = newest.iter().filter(|i| i.kind == Kind::Full).collect();
        fulls.truncate(n);
        let sets: BTreeSet<ImageId> = fulls.iter().map(|f| f.set).collect();
        newest.iter().filter(|i| sets.contains(&i.set)).for_each(|i| mark(i.id, "sets"));
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(n: u8, kind: Kind, set: u8, created_ms: u64) -> ImageInfo {
        ImageInfo::fixture(n, kind, None, set, created_ms)
    }

    #[test]
    fn buckets() {
        // 2026-11-22 is a Sunday, 2026-11-23 a Monday.
        let sun = 1_795_305_600_000;
        assert_eq!(bucket(sun + DAY_MS, "week"), bucket(sun + 7 * DAY_MS, "week"));
        assert_ne!(bucket(sun, "week"), bucket(sun + DAY_MS, "week"));
        assert_eq!(civil(sun), (2026, 11, 22));
    }

    #[test]
    fn policies_keep_what_they_say() {
        let d = DAY_MS;
        // Two images a day for four days; a full each second day.
        let images: Vec<ImageInfo> = (0..8u8)
            .map(|n| {
                let full = n % 4 == 0;
                img(
                    n + 1,
                    if full { Kind::Full } else { Kind::Incremental },
                    (n / 4) * 4 + 1,
                    (n as u64 / 2) * d + (n as u64 % 2) * 1000,
                )
            })
            .collect();
        let ids = |p: Policy| apply(&images, &p).keys().map(|i| i.0[0]).collect::<Vec<_>>();
        assert_eq!(ids(Policy { keep_last: Some(3), ..Default::default() }), vec![6, 7, 8]);
        assert_eq!(ids(Policy { keep_daily: Some(2), ..Default::default() }), vec![6, 8]);
        assert_eq!(ids(Policy { keep_sets: Some(1), ..Default::default() }), vec![5, 6, 7, 8]);
        assert_eq!(ids(Policy { keep_within_ms: Some(d), ..Default::default() }), vec![6, 7, 8]);
        assert_eq!(ids(Policy { keep_yearly: Some(5), ..Default::default() }), vec![8]);
        assert!(ids(Policy::default()).is_empty());
    }
}
