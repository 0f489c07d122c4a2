//! Which kind of image a job's scheme makes due, from the images its source already has. Pure:
//! the clock and the time zone are arguments, so a month of runs can be simulated.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::calendar::Calendar;
use crate::manifest::{ImageInfo, Kind};

/// When each kind is due (`[scheme]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scheme {
    pub full: Option<Calendar>,
    pub differential: Option<Calendar>,
    pub incremental: Option<Calendar>,
}

/// The kind a run makes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub kind: Kind,
    pub reason: String,
}

/// A time in milliseconds since the epoch (image and run times) as a `Timestamp`.
pub(super) fn at(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Whether `cal` has an occurrence after `since` (an image's time) and not after `now`.
fn passed(cal: &Calendar, since_ms: u64, now: Timestamp, tz: &TimeZone) -> bool {
    cal.next_after(at(since_ms), tz).is_some_and(|t| t <= now)
}

/// The kind due now for a source whose images (catalog order, oldest first) are `images`:
/// - a full when the source has no set yet, or when an occurrence of `full` has passed since the
///   newest set's full;
/// - else a differential when an occurrence of `differential` has passed since the newest full
///   or differential of that set;
/// - else the scheme's most frequent kind: an incremental when it names `incremental` or names
///   nothing at all (AOMEI's "first a full, then incrementals"), a differential when it names
///   `differential` but no `incremental` (full + differentials), a full when it names only `full`.
pub fn due(scheme: &Scheme, images: &[ImageInfo], now: Timestamp, tz: &TimeZone) -> Due {
    let Some(full) = images.iter().rev().find(|i| i.kind == Kind::Full) else {
        return Due { kind: Kind::Full, reason: "the source has no backup set yet".into() };
    };
    if let Some(cal) = &scheme.full {
        if passed(cal, full.created_ms, now, tz) {
            return Due { kind: Kind::Full, reason: format!("`full = {cal}` occurred since the set's full") };
        }
    }
    if let Some(cal) = &scheme.differential {
        let last = images
            .iter()
            .rev()
            .find(|i| i.set == full.set && matches!(i.kind, Kind::Full | Kind::Differential))
            .unwrap_or(full);
        if passed(cal, last.created_ms, now, tz) {
            let since = if last.kind == Kind::Full { "the full" } else { "the last differential" };
            return Due { kind: Kind::Differential, reason: format!("`differential = {cal}` occurred since {since}") };
        }
    }
    let kind = match (&scheme.full, &scheme.differential, &scheme.incremental) {
        (_, _, Some(_)) | (None, None, None) => Kind::Incremental,
        (_, Some(_), None) => Kind::Differential,
        (Some(_), None, None) => Kind::Full,
    };
    Due { kind, reason: "nothing else is due".into() }
}

impl Scheme {
    /// The expressions of the scheme, full first (what `OnCalendar=` lines list).
    pub fn calendars(&self) -> Vec<&Calendar> {
        [&self.full, &self.differential, &self.incremental].into_iter().flatten().collect()
    }

    /// The next time after `now` that any expression occurs: when a timer would run the job.
    pub fn next_run(&self, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.calendars().iter().filter_map(|c| c.next_after(now, tz)).min()
    }
}
