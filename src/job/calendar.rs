//! systemd calendar expressions (`systemd.time(7)`, "Calendar Events"), the language of a job's
//! scheme: parsed, normalised, and the next occurrence after a time found in a time zone.
//!
//! Written here because no maintained crate evaluates them (the cron crates speak cron). What is
//! understood: the shorthands (`minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`,
//! `semiannually`, `yearly`/`annually`); an optional weekday list (`Mon,Wed`, `Mon..Fri`, full
//! names too); a date `[YEAR-]MONTH-DAY` and a time `HOUR:MINUTE[:SECOND]`, each part `*`, a
//! value, a range `A..B`, a repetition `A/N`, `A..B/N` or `*/N`, or a comma list of these; a
//! trailing `UTC`. Left out, with a clear error: the last-days-of-month `~`, fractions of a
//! second, and time zones other than UTC (a job is evaluated in the machine's zone, `TZ`, as
//! systemd does). Tests compare every expression with `systemd-analyze calendar`.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

/// The last year an occurrence is looked for in (systemd's own limit).
const LAST_YEAR: i16 = 2199;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// Bit 0 is Monday, bit 6 Sunday.
    weekdays: u8,
    years: Field,
    months: Field,
    days: Field,
    hours: Field,
    minutes: Field,
    seconds: Field,
    utc: bool,
}

/// One part of a date or time: any of several ranges, each with a step.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Field(Vec<Step>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    from: u32,
    to: u32,
    every: u32,
}

impl Field {
    fn any(min: u32, max: u32) -> Field {
        Field(vec![Step { from: min, to: max, every: 1 }])
    }

    fn matches(&self, v: u32) -> bool {
        self.0.iter().any(|s| v >= s.from && v <= s.to && (v - s.from) % s.every == 0)
    }

    /// `*`, `5`, `1..7`, `1/7`, `1..28/7`, `*/2`, and comma lists of these, within `min..=max`.
    fn parse(text: &str, min: u32, max: u32, what: &str) -> Result<Field, String> {
        let mut steps = Vec::new();
        for item in text.split(',') {
            let (base, every) = match item.split_once('/') {
                Some((b, n)) => {
                    let n: u32 = number(n, what)?;
                    if n == 0 {
                        return Err(format!("the repetition in the {what} {item:?} must be at least 1"));
                    }
                    (b, Some(n))
                }
                None => (item, None),
            };
            let (from, to) = if base == "*" {
                (min, max)
            } else if let Some((a, b)) = base.split_once("..") {
                (number(a, what)?, number(b, what)?)
            } else {
                let v = number(base, what)?;
                // `5/10` repeats from 5 to the end; a plain `5` is 5 alone.
                (v, if every.is_some() { max } else { v })
            };
            if from < min || to > max || from > to {
                return Err(format!("the {what} {item:?} is outside {min}..{max}"));
            }
            steps.push(Step { from, to, every: every.unwrap_or(1) });
        }
        steps.sort_by_key(|s| (s.from, s.to, s.every));
        steps.dedup();
        Ok(Field(steps))
    }
}

fn number(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 4 {
        let hint = if text.contains('.') && !text.contains("..") {
            " (fractions of a second are not supported)"
        } else if text.contains('~') {
            " (the last-days-of-month `~` is not supported)"
        } else {
            ""
        };
        return Err(format!("{text:?} is not a number for the {what}{hint}"));
    }
    text.parse().map_err(|_| format!("{text:?} is not a number for the {what}"))
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_WEEKDAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

fn weekday(text: &str) -> Result<u32, String> {
    let t = text.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|w| *w == t)
        .or_else(|| FULL_WEEKDAYS.iter().position(|w| *w == t))
        .map(|i| i as u32)
        .ok_or_else(|| format!("{text:?} is not a weekday (Mon, Tue, ... or Monday, ...)"))
}

fn weekdays(text: &str) -> Result<u8, String> {
    let mut bits = 0u8;
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let (a, b) = match item.split_once("..") {
            Some((a, b)) => (weekday(a)?, weekday(b)?),
            None => (weekday(item)?, weekday(item)?),
        };
        if a > b {
            return Err(format!("{item:?} runs backwards (a week runs Mon..Sun)"));
        }
        (a..=b).for_each(|d| bits |= 1 << d);
    }
    Ok(bits)
}

impl Calendar {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Calendar, String> {
        let trimmed = text.trim();
        let last = trimmed.rsplit(char::is_whitespace).next().unwrap_or_default();
        if trimmed.contains(char::is_whitespace)
            && last.contains('/')
            && last.contains(|c: char| c.is_ascii_alphabetic())
        {
            return Err(format!(
                "bad calendar expression {text:?}: {last:?}: time zones other than UTC are not supported (jobs use TZ)"
            ));
        }
        let (body, utc) = match trimmed.len().checked_sub(4).filter(|&i| trimmed.is_char_boundary(i)) {
            Some(i) if trimmed[i..].eq_ignore_ascii_case(" utc") => (trimmed[..i].trim_end(), " UTC"),
            _ => (trimmed, ""),
        };
        let expanded = match body.to_ascii_lowercase().as_str() {
            "minutely" => "*-*-* *:*:00",
            "hourly" => "*-*-* *:00:00",
            "daily" => "*-*-* 00:00:00",
            "weekly" => "Mon *-*-* 00:00:00",
            "monthly" => "*-*-01 00:00:00",
            "quarterly" => "*-01,04,07,10-01 00:00:00",
            "semiannually" => "*-01,07-01 00:00:00",
            "yearly" | "annually" => "*-01-01 00:00:00",
            _ => body,
        };
        Calendar::parse_normal(&format!("{expanded}{utc}"))
            .map_err(|e| format!("bad calendar expression {text:?}: {e}"))
    }

    fn parse_normal(text: &str) -> Result<Calendar, String> {
        let mut tokens: Vec<&str> = text.split_whitespace().collect();
        if tokens.is_empty() {
            return Err("it is empty".into());
        }
        let utc = tokens.last().is_some_and(|t| t.eq_ignore_ascii_case("utc"));
        if utc {
            tokens.pop();
        }
        let mut cal = Calendar {
            weekdays: 0x7f,
            years: Field::any(1970, LAST_YEAR as u32),
            months: Field::any(1, 12),
            days: Field::any(1, 31),
            hours: Field::any(0, 0),
            minutes: Field::any(0, 0),
            seconds: Field::any(0, 0),
            utc,
        };
        let mut rest = &tokens[..];
        if let Some(first) = rest.first().filter(|t| t.starts_with(|c: char| c.is_ascii_alphabetic())) {
            cal.weekdays = weekdays(first)?;
            rest = &rest[1..];
        }
        let (date, time) = match rest {
            [] => (None, None),
            [one] if one.contains(':') => (None, Some(*one)),
            [one] => (Some(*one), None),
            [d, t] => (Some(*d), Some(*t)),
            [_, _, zone, ..] => {
                return Err(format!("{zone:?}: time zones other than UTC are not supported (jobs use TZ)"))
            }
        };
        if let Some(date) = date {
            let parts: Vec<&str> = date.split('-').collect();
            let (y, m, d) = match parts[..] {
                [y, m, d] => (Some(y), m, d),
                [m, d] => (None, m, d),
                _ => return Err(format!("{date:?} is not a date (YEAR-MONTH-DAY or MONTH-DAY)")),
            };
            if let Some(y) = y {
                cal.years = Field::parse(y, 1970, LAST_YEAR as u32, "year")?;
            }
            cal.months = Field::parse(m, 1, 12, "month")?;
            cal.days = Field::parse(d, 1, 31, "day")?;
        }
        if let Some(time) = time {
            let parts: Vec<&str> = time.split(':').collect();
            let (h, m, s) = match parts[..] {
                [h, m] => (h, m, "00"),
                [h, m, s] => (h, m, s),
                _ => return Err(format!("{time:?} is not a time (HOUR:MINUTE[:SECOND])")),
            };
            cal.hours = Field::parse(h, 0, 23, "hour")?;
            cal.minutes = Field::parse(m, 0, 59, "minute")?;
            cal.seconds = Field::parse(s, 0, 59, "second")?;
        }
        Ok(cal)
    }

    fn date_matches(&self, d: Date) -> bool {
        self.weekdays & (1 << d.weekday().to_monday_zero_offset()) != 0
            && self.years.matches(d.year() as u32)
            && self.months.matches(d.month() as u32)
            && self.days.matches(d.day() as u32)
    }

    /// The first occurrence strictly after `after`, in `tz` (or UTC when the expression says
    /// so); `None` when there is none before the year 2200.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let tz = if self.utc { TimeZone::UTC } else { tz.clone() };
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        while date.year() <= LAST_YEAR {
            if self.date_matches(date) {
                let first_day = date == start.date();
                if let Some(found) = self.time_on(date, first_day.then_some(start), after, &tz) {
                    return Some(found);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The first matching time on `date` (not before `from`'s time) whose instant is after
    /// `after`.
    fn time_on(&self, date: Date, from: Option<DateTime>, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let (fh, fm) = from.map_or((0, 0), |f| (f.hour() as u32, f.minute() as u32));
        for h in (0..24).filter(|&h| self.hours.matches(h) && (from.is_none() || h >= fh)) {
            let same_hour = from.is_some() && h == fh;
            for m in (0..60).filter(|&m| self.minutes.matches(m) && (!same_hour || m >= fm)) {
                for s in (0..60).filter(|&s| self.seconds.matches(s)) {
                    let dt = date.to_datetime(Time::new(h as i8, m as i8, s as i8, 0).ok()?);
                    let offset = match tz.to_ambiguous_timestamp(dt).offset() {
                        AmbiguousOffset::Unambiguous { offset } => offset,
                        // A time the clocks skip does not occur, and one they repeat occurs
                        // once, at its first instant (as systemd has them).
                        AmbiguousOffset::Gap { .. } => continue,
                        AmbiguousOffset::Fold { before, .. } => before,
                    };
                    let t = offset.to_timestamp(dt).ok()?;
                    if t > after {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

impl Field {
    fn is_any(&self, min: u32, max: u32) -> bool {
        self.0 == [Step { from: min, to: max, every: 1 }]
    }

    /// The field as cron writes it (`*`, `5`, `1-7`, `*/15`, `1-31/7`, lists).
    fn cron(&self, min: u32, max: u32) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|s| match (s.from, s.to, s.every) {
                (a, b, 1) if a == min && b == max => "*".into(),
                (a, b, 1) if a == b => a.to_string(),
                (a, b, 1) => format!("{a}-{b}"),
                (a, b, n) if a == min && b == max => format!("*/{n}"),
                (a, b, n) => format!("{a}-{b}/{n}"),
            })
            .collect();
        items.join(",")
    }
}

impl Calendar {
    /// The five cron fields (minute, hour, day of month, month, day of week) that fire when this
    /// expression occurs, and, when it restricts both the day of the month and the weekday
    /// (which cron ORs and systemd ANDs), the weekdays as `date +%u` numbers (`1|7`) for the
    /// command to test. An error when cron cannot say it (seconds, years, UTC).
    pub fn to_cron(&self) -> Result<(String, Option<String>), String> {
        if self.seconds.0 != [Step { from: 0, to: 0, every: 1 }] {
            return Err(format!("`{self}` fires on seconds, which cron cannot; use --systemd"));
        }
        if !self.years.is_any(1970, LAST_YEAR as u32) || self.utc {
            return Err(format!("`{self}` names years or UTC, which cron cannot; use --systemd"));
        }
        let days: Vec<u32> = (0..7).filter(|d| self.weekdays & (1 << d) != 0).collect();
        let (dow, guard) = if self.weekdays == 0x7f {
            ("*".to_string(), None)
        } else if self.days.is_any(1, 31) {
            // cron counts from Sunday = 0.
            let cron: Vec<String> = days.iter().map(|d| ((d + 1) % 7).to_string()).collect();
            (cron.join(","), None)
        } else {
            let iso: Vec<String> = days.iter().map(|d| (d + 1).to_string()).collect();
            ("*".to_string(), Some(iso.join("|")))
        };
        let fields = format!(
            "{} {} {} {} {dow}",
            self.minutes.cron(0, 59),
            self.hours.cron(0, 23),
            self.days.cron(1, 31),
            self.months.cron(1, 12)
        );
        Ok((fields, guard))
    }
}

impl fmt::Display for Calendar {
    /// The normalised form, as `systemd-analyze calendar` prints it (what goes into
    /// `OnCalendar=`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weekdays != 0x7f {
            // Runs of three days or more as `A..B`, as systemd writes them.
            const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            let on = |d: usize| d < 7 && self.weekdays & (1 << d) != 0;
            let mut parts = Vec::new();
            let mut d = 0;
            while d < 7 {
                if !on(d) {
                    d += 1;
                    continue;
                }
                let mut end = d;
                while on(end + 1) {
                    end += 1;
                }
                match end - d {
                    0 => parts.push(NAMES[d].to_string()),
                    1 => parts.extend([NAMES[d].to_string(), NAMES[end].to_string()]),
                    _ => parts.push(format!("{}..{}", NAMES[d], NAMES[end])),
                }
                d = end + 1;
            }
            write!(f, "{} ", parts.join(","))?;
        }
        let part = |field: &Field, min: u32, max: u32, width: usize| -> String {
            let items: Vec<String> = field
                .0
                .iter()
                .map(|s| match (s.from, s.to, s.every) {
                    (a, b, 1) if a == min && b == max => "*".into(),
                    (a, b, 1) if a == b => format!("{a:0width$}"),
                    (a, b, 1) => format!("{a:0width$}..{b:0width$}"),
                    (a, b, n) if b == max => format!("{a:0width$}/{n}"),
                    (a, b, n) => format!("{a:0width$}..{b:0width$}/{n}"),
                })
                .collect();
            items.join(",")
        };
        write!(
            f,
            "{}-{}-{} {}:{}:{}",
            part(&self.years, 1970, LAST_YEAR as u32, 4),
            part(&self.months, 1, 12, 2),
            part(&self.days, 1, 31, 2),
            part(&self.hours, 0, 23, 2),
            part(&self.minutes, 0, 59, 2),
            part(&self.seconds, 0, 59, 2),
        )?;
        if self.utc {
            write!(f, " UTC")?;
        }
        Ok(())
    }
}
