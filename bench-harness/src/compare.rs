//! The regression gate: compare the same-run ratios of two reports. A ratio
//! has regressed when it moved the wrong way by more than the allowed
//! percentage, widened to the noise the runs themselves showed (capped at
//! twice the allowed percentage, so noise cannot hide everything). Given
//! several current reports (re-measurements of the same build), a ratio has
//! regressed only when every one of them shows it: a real slowdown repeats,
//! a noisy draw on a shared machine seldom does twice.

use crate::report::Report;

/// One gated ratio's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub key: String,
    pub baseline: f64,
    pub current: f64,
    /// How much worse, as a fraction (negative: better).
    pub worse_by: f64,
    pub tolerance: f64,
    pub regressed: bool,
}

/// Check a baseline before comparing against it: every gated ratio must be
/// a finite, positive number.
pub fn check_baseline(baseline: &Report) -> Result<(), String> {
    let gated: Vec<_> = baseline.ratios.iter().filter(|(_, r)| r.gate).collect();
    if gated.is_empty() {
        return Err("the baseline has no gated ratio".into());
    }
    for (k, r) in gated {
        if !(r.value.is_finite() && r.value > 0.0) {
            return Err(format!("the baseline's {k} is {}, not a positive number", r.value));
        }
    }
    Ok(())
}

/// Compare every gated ratio of `baseline` with `current`; a gated ratio
/// missing from `current` counts as regressed.
pub fn compare(baseline: &Report, current: &Report, max_regression_pct: f64) -> Vec<Verdict> {
    assert!(max_regression_pct.is_finite() && max_regression_pct > 0.0, "checked by the caller");
    let allowed = max_regression_pct / 100.0;
    let mut out = Vec::new();
    for (key, b) in baseline.ratios.iter().filter(|(_, r)| r.gate) {
        let Some(c) = current.ratios.get(key).filter(|c| c.value.is_finite() && c.value > 0.0) else {
            // A gated ratio the current run did not measure (or measured as
            // nonsense) fails the gate: a missing peer must not pass silently.
            out.push(Verdict {
                key: key.clone(),
                baseline: b.value,
                current: f64::NAN,
                worse_by: f64::INFINITY,
                tolerance: allowed,
                regressed: true,
            });
            continue;
        };
        let worse_by = if b.higher_is_better { (b.value - c.value) / b.value } else { (c.value - b.value) / b.value };
        let tolerance = allowed.max(b.noise().max(c.noise()).min(2.0 * allowed));
        out.push(Verdict {
            key: key.clone(),
            baseline: b.value,
            current: c.value,
            worse_by,
            tolerance,
            regressed: worse_by > tolerance,
        });
    }
    out
}

/// Compare `baseline` with each of several reports of the same build and
/// keep, per gated ratio, the most favourable verdict: a ratio regressed
/// only when it regressed in every report.
pub fn compare_all(baseline: &Report, currents: &[Report], max_regression_pct: f64) -> Vec<Verdict> {
    let mut best: Vec<Verdict> = Vec::new();
    for current in currents {
        for v in compare(baseline, current, max_regression_pct) {
            match best.iter_mut().find(|b| b.key == v.key) {
                None => best.push(v),
                Some(b) => {
                    // Not regressed beats regressed; then the smaller excess
                    // over the tolerance.
                    let rank = |v: &Verdict| (v.regressed, v.worse_by - v.tolerance);
                    if rank(&v) < rank(b) {
                        *b = v;
                    }
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{Ratio, RawRead};

    fn report(ratios: &[(&str, f64, &[f64], bool)]) -> Report {
        Report {
            benchmark: "t".into(),
            git_revision: "x".into(),
            machine: serde_json::Value::Null,
            settings: serde_json::Value::Null,
            raw_read: RawRead {
                mb_per_s: 1.0,
                how: String::new(),
                latency_us: BTreeMap::new(),
                tried: BTreeMap::new(),
            },
            fio_read_mb_per_s: None,
            zstd_ceiling: None,
            tools: vec![],
            tintype_read_latency_us: BTreeMap::new(),
            ratios: ratios
                .iter()
                .map(|(k, v, runs, hib)| {
                    (
                        k.to_string(),
                        Ratio {
                            value: *v,
                            per_run: runs.to_vec(),
                            higher_is_better: *hib,
                            gate: true,
                            meaning: String::new(),
                        },
                    )
                })
                .collect(),
            restored_identical: None,
            notes: vec![],
        }
    }

    #[test]
    fn a_drop_beyond_the_allowance_regresses_and_noise_widens_it_up_to_a_cap() {
        let base = report(&[("speed", 2.0, &[1.9, 2.0, 2.1], true), ("size", 1.0, &[1.0], false)]);
        // 10% slower, within 25%.
        let cur = report(&[("speed", 1.8, &[1.8, 1.8, 1.8], true), ("size", 1.0, &[1.0], false)]);
        assert!(compare(&base, &cur, 25.0).iter().all(|v| !v.regressed));
        // Half the speed: regressed.
        let cur = report(&[("speed", 1.0, &[1.0, 1.0, 1.0], true), ("size", 1.0, &[1.0], false)]);
        let v = compare(&base, &cur, 25.0);
        assert!(v.iter().any(|v| v.key == "speed" && v.regressed));
        // Output 40% larger: regressed (lower is better).
        let cur = report(&[("speed", 2.0, &[2.0], true), ("size", 1.4, &[1.4], false)]);
        assert!(compare(&base, &cur, 25.0).iter().any(|v| v.key == "size" && v.regressed));
        // Very noisy runs widen the tolerance, but never past twice the allowance.
        let noisy = report(&[("speed", 2.0, &[0.5, 2.0, 4.0], true)]);
        let cur = report(&[("speed", 1.3, &[1.3], true)]);
        let v = &compare(&noisy, &cur, 25.0)[0];
        assert_eq!(v.tolerance, 0.5);
        assert!(!v.regressed, "35% worse is within the widened 50%");
        let cur = report(&[("speed", 0.9, &[0.9], true)]);
        assert!(compare(&noisy, &cur, 25.0)[0].regressed, "55% worse is past the cap");
        // A gated ratio the current run lacks fails the gate.
        let cur = report(&[("size", 1.0, &[1.0], false)]);
        assert!(compare(&base, &cur, 25.0).iter().any(|v| v.key == "speed" && v.regressed));
        assert!(check_baseline(&report(&[("speed", 0.0, &[], true)])).is_err());
        assert!(check_baseline(&base).is_ok());
    }

    #[test]
    fn a_regression_counts_only_when_every_remeasurement_shows_it() {
        let base = report(&[("speed", 2.0, &[2.0], true), ("size", 1.0, &[1.0], false)]);
        let slow = report(&[("speed", 1.0, &[1.0], true), ("size", 1.0, &[1.0], false)]);
        let fine = report(&[("speed", 1.9, &[1.9], true), ("size", 1.0, &[1.0], false)]);
        let missing = report(&[("size", 1.0, &[1.0], false)]);
        let speed = |v: Vec<Verdict>| v.into_iter().find(|v| v.key == "speed").unwrap();
        // One noisy draw, then a good one: not a regression, and the verdict
        // shown is the good one.
        let v = speed(compare_all(&base, &[slow.clone(), fine.clone()], 25.0));
        assert!(!v.regressed);
        assert_eq!(v.current, 1.9);
        let v = speed(compare_all(&base, &[fine.clone(), slow.clone()], 25.0));
        assert!(!v.regressed);
        // Slow every time: a regression.
        assert!(speed(compare_all(&base, &[slow.clone(), slow.clone()], 25.0)).regressed);
        // Missing once, measured fine once: fine; missing every time: regressed.
        assert!(!speed(compare_all(&base, &[missing.clone(), fine.clone()], 25.0)).regressed);
        assert!(speed(compare_all(&base, &[missing.clone(), missing], 25.0)).regressed);
        // One report behaves as `compare`.
        assert_eq!(compare_all(&base, std::slice::from_ref(&slow), 25.0), compare(&base, &slow, 25.0));
        // The other ratio's verdict is kept alongside.
        assert_eq!(compare_all(&base, &[slow, fine], 25.0).len(), 2);
    }
}
