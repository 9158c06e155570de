//! Running a command and measuring it: wall time, CPU (user + system, its
//! children included, as wait4 reports them) and peak RSS; medians and spread.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
    pub output_bytes: u64,
}

/// Run `cmd` to completion and measure it. Fails if it exits non-zero.
pub fn run_measured(cmd: &mut Command) -> Result<(f64, f64, u64)> {
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid bit pattern.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped (we never wait on `child`);
    // status and ru are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = started.elapsed().as_secs_f64();
    std::mem::forget(child);
    if r != pid {
        bail!("wait4 {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed (status {status:#x})");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((wall, secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as u64 * 1024))
}

/// Measure `argv` through a fresh `tintype-bench measure` process, so the
/// peak RSS the kernel reports is the tool's own and not inherited from the
/// harness's memory at fork time. `env` is added to the tool's environment.
pub fn measure(argv: &[&str], env: &[(String, String)]) -> Result<(f64, f64, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .arg("measure")
        .arg("--")
        .args(argv)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run the measuring helper")?;
    if !out.status.success() {
        bail!("{argv:?} failed");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("helper output")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((f("wall_seconds"), f("cpu_seconds"), v["peak_rss_bytes"].as_u64().unwrap_or(0)))
}

/// Total bytes of the regular files under `path`.
pub fn bytes_under(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| bytes_under(&e.path())).sum()).unwrap_or(0)
}

/// Median and spread of a set of values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// (max - min) / median: how much the runs disagreed.
    pub fn relative_spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }
}

pub fn summarize(v: &[f64]) -> Summary {
    assert!(!v.is_empty(), "summarize needs at least one value");
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    Summary { median, min: s[0], max: s[s.len() - 1] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!(s, Summary { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(s.relative_spread(), 1.0);
        assert_eq!(summarize(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
    }
}
