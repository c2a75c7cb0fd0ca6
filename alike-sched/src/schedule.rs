//! Calendar schedules: cron expressions (Vixie cron's five fields, plus
//! `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`; `L`, `#` and `W`
//! as the Open Cron Pattern Specification has them) in a named time zone of
//! the tz database, evaluated by the `croner` crate.
//!
//! **DST rule** (croner's, which is Vixie cron's): a run at a fixed wall
//! time that falls in the hour skipped in spring (02:30 in Europe/Berlin on
//! the last Sunday of March) runs at the first minute after the gap (03:00)
//! that day; a fixed time in the hour repeated in autumn runs once, at its
//! first occurrence. Interval patterns (`*/15 * * * *`) skip the missing
//! hour and run in both passes of the repeated one.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::{Error, Result};

/// A parsed schedule: when a job is due.
///
/// ```
/// use alike_sched::Schedule;
/// let s = Schedule::parse("nightly", "30 2 * * *", "Europe/Berlin").unwrap();
/// // The last Sunday of March 2026: 02:30 does not exist in Berlin, so the
/// // run is at 03:00 CEST = 01:00 UTC.
/// let next = s.next_after("2026-03-28T12:00:00Z".parse().unwrap()).unwrap();
/// assert_eq!(next.to_rfc3339(), "2026-03-29T01:00:00+00:00");
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    zone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses `expr` (cron) in the time zone `zone` (`UTC`, `Europe/Berlin`…).
    /// `job` only names the job in errors.
    ///
    /// # Errors
    /// [`Error::Schedule`] for an expression croner refuses (or one with a
    /// seconds field: schedules have minute resolution),
    /// [`Error::TimeZone`] for a zone the tz database lacks.
    pub fn parse(job: &str, expr: &str, zone: &str) -> Result<Schedule> {
        let tz = Tz::from_str(zone).map_err(|_| Error::TimeZone { job: job.to_owned(), zone: zone.to_owned() })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| Error::Schedule { job: job.to_owned(), expr: expr.to_owned(), reason: e.to_string() })?;
        Ok(Schedule { expr: expr.to_owned(), zone: tz, cron })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone's name.
    pub fn zone(&self) -> &str {
        self.zone.name()
    }

    /// The first time the schedule is due strictly after `t`; `None` when
    /// it never is again (a pattern of a date that passed, or past year 5000).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&local, false).ok().map(|d| d.with_timezone(&Utc))
    }

    /// The due times in `(after, until]`, oldest first, at most `limit` of
    /// them (a schedule every minute over a month of downtime is 43 200).
    pub fn due_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= until => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The newest due time at or before `t` and after `after`, if any: the
    /// slot a late scheduler acts on.
    pub fn latest_due(&self, after: DateTime<Utc>, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_after(after)?;
        if first > t {
            return None;
        }
        // Look backwards from `t` rather than walking every slot of a long downtime.
        let local = t.with_timezone(&self.zone);
        let prev = self.cron.find_previous_occurrence(&local, true).ok().map(|d| d.with_timezone(&Utc));
        Some(match prev {
            Some(p) if p > after && p <= t => p,
            _ => first,
        })
    }

    /// What the schedule says in English (croner's description).
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}
