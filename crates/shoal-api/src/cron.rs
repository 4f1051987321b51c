//! Schedules for periodic jobs (the `shoal.cron` service label): standard five-field cron
//! (`*/5 * * * *`, minute hour day-of-month month day-of-week, in UTC), the `@hourly`-style
//! shorthands, and `@every 30s` for intervals shorter than a minute.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// The service label that makes a job periodic.
pub const LABEL: &str = "shoal.cron";

/// A spec's schedule label, if it has one.
pub fn of(spec: &crate::models::ServiceSpec) -> Option<&str> {
    spec.labels
        .as_ref()
        .and_then(|l| l.get(LABEL))
        .map(String::as_str)
}

/// A parsed schedule: when a periodic job is due next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Five cron fields, each a bit set of the values it allows.
    Fields {
        /// Minutes 0–59.
        minute: u64,
        /// Hours 0–23.
        hour: u64,
        /// Days of the month 1–31.
        dom: u64,
        /// Months 1–12.
        month: u64,
        /// Days of the week 0–6, Sunday 0.
        dow: u64,
        /// Both day fields restricted: a day matching either runs (cron's rule).
        either_day: bool,
    },
    /// A fixed interval, counted from the last run.
    Every(Duration),
}

/// Why a schedule does not parse; the message names the part at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CronError(String);

fn err(msg: impl Into<String>) -> CronError {
    CronError(msg.into())
}

impl Schedule {
    /// Parses a schedule as a user writes it in the label.
    pub fn parse(s: &str) -> Result<Schedule, CronError> {
        let s = s.trim();
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ => s,
        };
        if let Some(d) = expanded.strip_prefix("@every") {
            let d = parse_duration(d.trim())?;
            if d < Duration::seconds(1) {
                return Err(err("@every: the interval must be at least 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        if expanded.starts_with('@') {
            return Err(err(format!("unknown shorthand {expanded:?}")));
        }
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "want 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        }
        let dow_field = fields[4];
        Ok(Schedule::Fields {
            minute: field(fields[0], "minute", 0, 59, &[])?,
            hour: field(fields[1], "hour", 0, 23, &[])?,
            dom: field(fields[2], "day-of-month", 1, 31, &[])?,
            month: field(fields[3], "month", 1, 12, &MONTHS)?,
            // 7 is Sunday too.
            dow: {
                let b = field(dow_field, "day-of-week", 0, 7, &DAYS)?;
                (b | (b >> 7)) & 0x7f
            },
            either_day: !fields[2].starts_with('*') && !dow_field.starts_with('*'),
        })
    }

    /// The first time strictly after `after` the schedule fires (None if it never does, as
    /// `0 0 30 2 *`, or not before the end of time chrono can count: all arithmetic is
    /// checked, so no schedule can panic the control pass).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (minute, hour, dom, month, dow, either_day) = match self {
            Schedule::Every(d) => return after.checked_add_signed(*d),
            Schedule::Fields {
                minute,
                hour,
                dom,
                month,
                dow,
                either_day,
            } => (*minute, *hour, *dom, *month, *dow, *either_day),
        };
        let has = |set: u64, v: u32| set & (1 << v) != 0;
        let day_ok = |t: DateTime<Utc>| {
            let d = has(dom, t.day());
            let w = has(dow, t.weekday().num_days_from_sunday());
            if either_day {
                d || w
            } else {
                d && w
            }
        };
        // The next whole minute, then skip by the coarsest field that does not match.
        let plus = |t: DateTime<Utc>, d: Duration| t.checked_add_signed(d);
        let mut t = plus(
            after.with_second(0)?.with_nanosecond(0)?,
            Duration::minutes(1),
        )?;
        // Past chrono's last year the search simply ends where it can.
        let limit = plus(after, Duration::days(366 * 5)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        while t <= limit {
            if !has(month, t.month()) {
                let (y, m) = if t.month() == 12 {
                    (t.year().checked_add(1)?, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = t
                    .with_day(1)?
                    .with_hour(0)?
                    .with_minute(0)?
                    .with_month(m)?
                    .with_year(y)?;
                continue;
            }
            if !day_ok(t) {
                t = plus(t.with_hour(0)?.with_minute(0)?, Duration::days(1))?;
                continue;
            }
            if !has(hour, t.hour()) {
                t = plus(t.with_minute(0)?, Duration::hours(1))?;
                continue;
            }
            if !has(minute, t.minute()) {
                t = plus(t, Duration::minutes(1))?;
                continue;
            }
            return Some(t);
        }
        None
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field: `*`, `N`, `A-B`, any of them with `/STEP`, comma-separated; names for months and
/// days. Returns the bit set of allowed values.
fn field(s: &str, name: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64, CronError> {
    let value = |v: &str| -> Result<u32, CronError> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names start at 1, day names at 0.
            return Ok(i as u32 + lo);
        }
        let n: u32 = v
            .parse()
            .map_err(|_| err(format!("{name}: {v:?} is not a number")))?;
        if n < lo || n > hi {
            return Err(err(format!("{name}: {n} is outside {lo}-{hi}")));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 =
                    st.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        err(format!("{name}: step {st:?} is not a positive number"))
                    })?;
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `N/STEP` runs from N to the end, as Vixie cron reads it.
            (a, if step > 1 { hi } else { a })
        };
        if a > b {
            return Err(err(format!("{name}: range {range:?} runs backwards")));
        }
        // Checked: a step near u32::MAX must end the walk, not wrap it around.
        let mut v = Some(a);
        while let Some(x) = v.filter(|x| *x <= b) {
            bits |= 1 << x;
            v = x.checked_add(step);
        }
    }
    Ok(bits)
}

/// The longest `@every` interval: ten years. Longer is a typo, and a bound keeps every
/// `next_after` far inside the dates chrono can count.
pub const MAX_EVERY: Duration = Duration::days(3660);

/// `90s`, `5m`, `1h30m`, `2h`; at most [`MAX_EVERY`], every step checked.
fn parse_duration(s: &str) -> Result<Duration, CronError> {
    if s.is_empty() {
        return Err(err("@every: an interval is required, as in \"@every 30s\""));
    }
    let mut total = Duration::zero();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num
            .parse()
            .map_err(|_| err(format!("@every: {s:?} is not an interval like 30s or 5m")))?;
        num.clear();
        let part = match c {
            's' => Duration::try_seconds(n),
            'm' => Duration::try_minutes(n),
            'h' => Duration::try_hours(n),
            'd' => Duration::try_days(n),
            _ => return Err(err(format!("@every: unknown unit {c:?} in {s:?}"))),
        };
        total = part
            .and_then(|p| total.checked_add(&p))
            .filter(|t| *t <= MAX_EVERY)
            .ok_or_else(|| too_long(s))?;
    }
    if !num.is_empty() {
        return Err(err(format!("@every: {s:?} needs a unit (s, m, h or d)")));
    }
    Ok(total)
}

fn too_long(s: &str) -> CronError {
    err(format!(
        "@every: {s:?} is longer than the maximum of {}d",
        MAX_EVERY.num_days()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        crate::id::parse_time(s).unwrap()
    }

    fn next(expr: &str, after: &str) -> Option<String> {
        Schedule::parse(expr)
            .unwrap()
            .next_after(at(after))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(
            next("*/5 * * * *", "2026-01-01T10:02:30Z").as_deref(),
            Some("2026-01-01T10:05:00Z")
        );
        // Strictly after: a tick at the instant itself is the next one's predecessor.
        assert_eq!(
            next("*/5 * * * *", "2026-01-01T10:05:00Z").as_deref(),
            Some("2026-01-01T10:10:00Z")
        );
        assert_eq!(
            next("30 2 * * *", "2026-01-01T03:00:00Z").as_deref(),
            Some("2026-01-02T02:30:00Z")
        );
        assert_eq!(
            next("0 9-17/4 * * mon-fri", "2026-01-03T00:00:00Z").as_deref(),
            // 2026-01-03 is a Saturday: Monday the 5th at 09:00.
            Some("2026-01-05T09:00:00Z")
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-02-01T00:00:00Z").as_deref(),
            Some("2026-07-01T00:00:00Z")
        );
        assert_eq!(
            next("@hourly", "2026-12-31T23:59:00Z").as_deref(),
            Some("2027-01-01T00:00:00Z")
        );
        // Sunday as 7.
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-04T00:00:00Z")
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 13th, or any Friday: Friday 2026-01-02 comes first.
        assert_eq!(
            next("0 0 13 * fri", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-02T00:00:00Z")
        );
        // Only the day of the month restricted: the 13th alone.
        assert_eq!(
            next("0 0 13 * *", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-13T00:00:00Z")
        );
    }

    #[test]
    fn impossible_dates_never_fire_and_intervals_count_from_the_last_run() {
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), None);
        assert_eq!(
            next("@every 1m30s", "2026-01-01T00:00:10Z").as_deref(),
            Some("2026-01-01T00:01:40Z")
        );
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let e = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert!(e("61 * * * *").contains("minute: 61 is outside 0-59"));
        assert!(e("* 24 * * *").contains("hour"));
        assert!(e("* * * * *  *").contains("want 5 fields"));
        assert!(e("* * * foo *").contains("month: \"foo\""));
        assert!(e("*/0 * * * *").contains("step"));
        assert!(e("5-1 * * * *").contains("backwards"));
        assert!(e("@every").contains("interval is required"));
        assert!(e("@every 10").contains("needs a unit"));
        assert!(e("@every 0s").contains("at least 1s"));
        assert!(e("@sometimes").contains("unknown shorthand"));
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        // Issue 17: this label panicked the control loop for good.
        let e = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert!(e("@every 9000000000000s").contains("longer than the maximum of 3660d"));
        assert!(e("@every 99999999999999999d").contains("longer than the maximum"));
        assert!(e("@every 3000d3000d").contains("longer than the maximum"));
        assert!(e("@every 99999999999999999999s").contains("not an interval"));
        // The longest allowed interval still has a next run.
        let far = Schedule::parse("@every 3660d").unwrap();
        assert!(far.next_after(at("2026-01-01T00:00:00Z")).is_some());
        // Near the end of chrono's calendar there is no next run, and no panic either.
        assert_eq!(far.next_after(DateTime::<Utc>::MAX_UTC), None);
        let cron = Schedule::parse("0 0 1 1 *").unwrap();
        assert_eq!(cron.next_after(DateTime::<Utc>::MAX_UTC), None);
        // A step so large it would wrap a u32 ends the field's walk.
        assert_eq!(
            next("59/4294967295 * * * *", "2026-01-01T00:00:00Z").as_deref(),
            Some("2026-01-01T00:59:00Z")
        );
    }
}
