//! The clock the scheduler reads, injected so that tests can drive days of
//! schedules (DST changes, downtime) in microseconds.

use std::sync::Mutex;

use alike_core::Recover;
use chrono::{DateTime, Utc};

/// Where the scheduler reads the time. The scheduler never sleeps on the
/// clock itself: its loop asks [`Clock::now`] and waits at most
/// [`crate::Scheduler`]'s tick interval, so a [`ManualClock`] moved by a test
/// is seen at the next tick (or at once through [`crate::Scheduler::tick`]).
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told: for tests and simulations.
///
/// ```
/// use alike_sched::{Clock, ManualClock};
/// let c = ManualClock::new("2026-03-29T00:00:00Z".parse().unwrap());
/// c.advance(chrono::Duration::hours(3));
/// assert_eq!(c.now().to_rfc3339(), "2026-03-29T03:00:00+00:00");
/// ```
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(t))
    }
    /// Sets the time (backwards too: a clock step).
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.locked() = t;
    }
    /// Moves the time forward by `d`.
    pub fn advance(&self, d: chrono::Duration) {
        let mut g = self.0.locked();
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.locked()
    }
}
