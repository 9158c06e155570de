//! Retention policies: which points in time `--keep-last`, `--keep-daily`
//! and `--keep-weekly` keep, and why. Pure: dates in, reasons out.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::format::manifest::rfc3339_utc;
use crate::format::ImageId;

/// A retention policy. Policies add up: an image any of them keeps is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the N newest images.
    pub keep_last: Option<u32>,
    /// Keep the newest image of each of the N most recent days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest image of each of the N most recent weeks (Monday to Sunday, UTC) that have one.
    pub keep_weekly: Option<u32>,
}

impl Retention {
    /// No policy at all.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| n.is_none())
    }

    /// A rule that would keep nothing is refused.
    pub fn check(&self) -> Result<()> {
        match self.rules().iter().find(|(_, n)| *n == Some(0)) {
            Some((flag, _)) => {
                Err(Error::InvalidSetting(format!("{flag} 0 would keep nothing; keep at least one image")))
            }
            None => Ok(()),
        }
    }

    fn rules(&self) -> [(&'static str, Option<u32>); 3] {
        [("--keep-last", self.keep_last), ("--keep-daily", self.keep_daily), ("--keep-weekly", self.keep_weekly)]
    }

    /// Which of `points` (Image ID, creation time; oldest first) the policy
    /// keeps, and why.
    pub fn keeps(&self, points: &[(ImageId, u64)]) -> BTreeMap<ImageId, Vec<String>> {
        let mut reasons: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
        if let Some(n) = self.keep_last {
            for (id, _) in points.iter().rev().take(n as usize) {
                reasons.entry(*id).or_default().push(format!("one of the last {n}"));
            }
        }
        if let Some(n) = self.keep_daily {
            newest_per_period(points, n, Period::Day, &mut reasons);
        }
        if let Some(n) = self.keep_weekly {
            newest_per_period(points, n, Period::Week, &mut reasons);
        }
        reasons
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Day,
    /// Monday to Sunday.
    Week,
}

impl Period {
    /// The period a time falls in, counted from the epoch.
    fn of(self, unix: u64) -> u64 {
        match self {
            Period::Day => unix / 86_400,
            // Weeks start on Monday: 1970-01-01 was a Thursday.
            Period::Week => (unix / 86_400 + 3) / 7,
        }
    }

    /// How a reason names the period `p`.
    fn reason(self, p: u64, created: u64) -> String {
        match self {
            Period::Day => format!("daily: newest of {}", rfc3339_utc(created).get(..10).unwrap_or_default()),
            Period::Week => {
                let monday = rfc3339_utc((p * 7).saturating_sub(3) * 86_400);
                format!("weekly: newest of the week of {}", monday.get(..10).unwrap_or_default())
            }
        }
    }
}

/// The newest point of each of the `n` most recent periods that have one.
pub(crate) fn newest_per_period(
    points: &[(ImageId, u64)],
    n: u32,
    period: Period,
    reasons: &mut BTreeMap<ImageId, Vec<String>>,
) {
    let mut seen = Vec::new();
    for &(id, created) in points.iter().rev() {
        let p = period.of(created);
        if seen.contains(&p) {
            continue;
        }
        if seen.len() == n as usize {
            break;
        }
        seen.push(p);
        reasons.entry(id).or_default().push(period.reason(p, created));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_keep_the_newest_per_day_and_week_and_add_up() {
        let day = 86_400;
        // 2026-11-16 was a Monday. Two images a day for ten days.
        let monday = 1_794_787_200;
        assert_eq!(crate::format::manifest::rfc3339_utc(monday), "2026-11-16T00:00:00Z");
        let points: Vec<(ImageId, u64)> =
            (0..20).map(|i| (ImageId(100 + i), monday + (i / 2) * day + (i % 2) * 3600)).collect();
        let kept = |r: Retention| r.keeps(&points).keys().map(|k| k.0 - 100).collect::<Vec<_>>();
        assert_eq!(kept(Retention { keep_last: Some(3), ..Default::default() }), vec![17, 18, 19]);
        // The newest of each of the last 3 days: days 9, 8, 7.
        assert_eq!(kept(Retention { keep_daily: Some(3), ..Default::default() }), vec![15, 17, 19]);
        // Weeks from Monday: days 7..9 are the second week, 0..6 the first.
        assert_eq!(kept(Retention { keep_weekly: Some(2), ..Default::default() }), vec![13, 19]);
        assert_eq!(kept(Retention { keep_last: Some(1), keep_daily: Some(2), keep_weekly: Some(2) }), vec![13, 17, 19]);
        let why = Retention { keep_weekly: Some(1), keep_last: Some(1), ..Default::default() }.keeps(&points);
        assert_eq!(
            why[&ImageId(119)],
            vec!["one of the last 1".to_string(), "weekly: newest of the week of 2026-11-23".into()]
        );
    }
}
