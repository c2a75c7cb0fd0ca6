//! Retention policies: which versions of a VM to keep. Pure logic over
//! (id, time) pairs — keep the last N, and grandfather-father-son: the
//! newest version of each of the N most recent hours, days, weeks (Monday
//! to Sunday, UTC), months and years that have one. Pinned versions are
//! always kept. Times are UTC.

use std::collections::{BTreeMap, HashSet};

/// How many versions to keep, per rule. A version kept by any rule stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// The newest N versions.
    pub keep_last: u32,
    /// The newest version of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// … days.
    pub keep_daily: u32,
    /// … weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
    /// … years.
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    /// Keeps the newest `n` versions.
    ///
    /// ```
    /// let p = alike_core::retention::RetentionPolicy::default().last(3).daily(7).monthly(12);
    /// assert_eq!((p.keep_last, p.keep_daily, p.keep_monthly, p.keep_weekly), (3, 7, 12, 0));
    /// ```
    #[must_use]
    pub fn last(mut self, n: u32) -> Self {
        self.keep_last = n;
        self
    }
    /// Keeps the newest version of each of the last `n` hours that have one.
    #[must_use]
    pub fn hourly(mut self, n: u32) -> Self {
        self.keep_hourly = n;
        self
    }
    /// … of the last `n` days.
    #[must_use]
    pub fn daily(mut self, n: u32) -> Self {
        self.keep_daily = n;
        self
    }
    /// … of the last `n` weeks.
    #[must_use]
    pub fn weekly(mut self, n: u32) -> Self {
        self.keep_weekly = n;
        self
    }
    /// … of the last `n` months.
    #[must_use]
    pub fn monthly(mut self, n: u32) -> Self {
        self.keep_monthly = n;
        self
    }
    /// … of the last `n` years.
    #[must_use]
    pub fn yearly(mut self, n: u32) -> Self {
        self.keep_yearly = n;
        self
    }
    /// Whether any rule keeps anything (an empty policy would remove everything).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// The decision for one version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Version id.
    pub id: String,
    /// Creation time, ms since the epoch.
    pub time_ms: i64,
    /// Whether it stays.
    pub keep: bool,
    /// Which rules keep it ("last", "daily", …, "pinned"); empty when removed.
    pub reasons: Vec<&'static str>,
}

/// (year, month, day) of a day number since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Applies `policy` to one VM's versions. Returns a decision per version,
/// newest first.
pub fn apply(versions: &[(String, i64)], policy: &RetentionPolicy, pinned: &HashSet<String>) -> Vec<Decision> {
    let mut v: Vec<(String, i64)> = versions.to_vec();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut out: Vec<Decision> =
        v.iter().map(|(id, t)| Decision { id: id.clone(), time_ms: *t, keep: false, reasons: Vec::new() }).collect();
    for (i, d) in out.iter_mut().enumerate() {
        if (i as u32) < policy.keep_last {
            d.reasons.push("last");
        }
        if pinned.contains(&d.id) {
            d.reasons.push("pinned");
        }
    }
    type Bucket = fn(i64) -> i64;
    let rules: [(u32, &'static str, Bucket); 5] = [
        (policy.keep_hourly, "hourly", |ms| ms.div_euclid(3_600_000)),
        (policy.keep_daily, "daily", |ms| ms.div_euclid(86_400_000)),
        // 1970-01-01 was a Thursday: shifting by 3 days starts weeks on Monday.
        (policy.keep_weekly, "weekly", |ms| (ms.div_euclid(86_400_000) + 3).div_euclid(7)),
        (policy.keep_monthly, "monthly", |ms| {
            let (y, m, _) = civil(ms.div_euclid(86_400_000));
            y * 12 + i64::from(m)
        }),
        (policy.keep_yearly, "yearly", |ms| civil(ms.div_euclid(86_400_000)).0),
    ];
    for (n, name, bucket) in rules {
        if n == 0 {
            continue;
        }
        // Newest first: the first version seen in a bucket is that bucket's newest.
        let mut seen: BTreeMap<i64, ()> = BTreeMap::new();
        for d in out.iter_mut() {
            let b = bucket(d.time_ms);
            if seen.contains_key(&b) {
                continue;
            }
            if seen.len() as u32 >= n {
                break;
            }
            seen.insert(b, ());
            d.reasons.push(name);
        }
    }
    for d in &mut out {
        d.keep = !d.reasons.is_empty();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn ids(v: &[Decision], keep: bool) -> Vec<String> {
        v.iter().filter(|d| d.keep == keep).map(|d| d.id.clone()).collect()
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn keep_last_and_pinned() {
        let v: Vec<(String, i64)> = (0..6).map(|i| (format!("v{i}"), i * 1000)).collect();
        let pinned = HashSet::from(["v0".to_string()]);
        let d = apply(&v, &RetentionPolicy { keep_last: 2, ..Default::default() }, &pinned);
        assert_eq!(ids(&d, true), vec!["v5", "v4", "v0"]);
        assert_eq!(d.iter().find(|x| x.id == "v0").unwrap().reasons, vec!["pinned"]);
    }

    #[test]
    fn grandfather_father_son() {
        // Four versions a day for 60 days, starting on Monday 2024-01-01 (day 19723).
        let start = 19_723 * DAY;
        let v: Vec<(String, i64)> =
            (0..240).map(|i| (format!("{i:03}"), start + (i / 4) * DAY + (i % 4) * 6 * 3_600_000)).collect();
        let p = RetentionPolicy { keep_daily: 7, keep_weekly: 4, keep_monthly: 3, ..Default::default() };
        let d = apply(&v, &p, &HashSet::new());
        let kept = ids(&d, true);
        // Daily: the last version of each of the last 7 days (days 53..=59).
        for day in 53..60 {
            assert!(kept.contains(&format!("{:03}", day * 4 + 3)), "day {day}");
        }
        // Weekly: the newest of the 4 latest weeks (weeks start Monday: days 56, 49, 42, 35).
        for last_day_of_week in [59, 55, 48, 41] {
            assert!(kept.contains(&format!("{:03}", last_day_of_week * 4 + 3)), "week ending day {last_day_of_week}");
        }
        // Monthly: the newest of February (day 59 = Feb 29) and January (day 30).
        assert!(kept.contains(&format!("{:03}", 30 * 4 + 3)));
        // 7 daily; weekly adds days 48 and 41 (days 59 and 55 are daily already);
        // monthly adds January (February's newest is daily already); there is no third month.
        assert_eq!(kept.len(), 7 + 2 + 1, "{kept:?}");
        assert!(d.iter().all(|x| x.keep != x.reasons.is_empty()));
    }
}
