//! How much memory a run's buffers may take: refused up front, naming the
//! limit, rather than killed by the kernel or a cgroup halfway through.

/// Refuse settings whose buffers (pinned when registered with the ring)
/// would take more than half of the memory this process may use: the
/// machine's, its cgroup's memory limit (a container's, a systemd unit's
/// MemoryMax; exceeding it gets the process killed, not an error), or its
/// address-space limit (RLIMIT_AS, `ulimit -v`), whichever is smallest.
pub(crate) fn check_buffer_memory(bytes: u64) -> crate::Result<()> {
    let (limit, whose) = memory_limits(std::path::Path::new("/"))
        .into_iter()
        .min_by_key(|(l, _)| *l)
        .unwrap_or((u64::MAX, String::new()));
    if bytes > limit / 2 {
        return Err(crate::Error::InvalidSetting(format!(
            "these settings need {} MiB of I/O buffers (lanes x queue depth x chunk size), more than half of the \
             {} MiB {whose}; lower --queue-depth, --lanes or --chunk-size",
            bytes >> 20,
            limit >> 20
        )));
    }
    Ok(())
}

/// The limits on this process's memory that are set, each with whose it
/// is; paths under `root` (the real one is `/`; tests give a fake tree).
pub(crate) fn memory_limits(root: &std::path::Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let read = |p: &str| std::fs::read_to_string(root.join(p.trim_start_matches('/')));
    if let Some(kib) = read("/proc/meminfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    }) {
        out.push((kib * 1024, "of this machine's memory".to_string()));
    }
    if let Some((limit, dir)) = cgroup_memory_limit(root) {
        out.push((limit, format!("this process's cgroup may use (memory limit of {dir})")));
    }
    if root == std::path::Path::new("/") {
        if let Some(soft) = rustix::process::getrlimit(rustix::process::Resource::As).current {
            out.push((soft, "of address space RLIMIT_AS allows (`ulimit -v`)".to_string()));
        }
    }
    out
}

/// The smallest memory limit of this process's cgroup and its ancestors
/// (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), with the cgroup
/// directory that sets it; `None` when none is set or none can be read.
pub(crate) fn cgroup_memory_limit(root: &std::path::Path) -> Option<(u64, String)> {
    use std::path::{Path, PathBuf};
    let read = |p: &Path| std::fs::read_to_string(root.join(p.strip_prefix("/").unwrap_or(p))).ok();
    let cgroups = read(Path::new("/proc/self/cgroup"))?;
    let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
    let mut best: Option<(u64, String)> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        let (Some(&mount_root), Some(&mount_point), Some(&fstype)) = (f.get(3), f.get(4), r.first()) else {
            continue;
        };
        let (file, path) = match fstype {
            "cgroup2" => ("memory.max", cgroups.lines().find_map(|l| l.strip_prefix("0::"))),
            "cgroup" if r.get(2).is_some_and(|o| o.split(',').any(|o| o == "memory")) => (
                "memory.limit_in_bytes",
                cgroups.lines().find_map(|l| {
                    let mut p = l.splitn(3, ':');
                    let (_, ctrl, path) = (p.next()?, p.next()?, p.next()?);
                    ctrl.split(',').any(|c| c == "memory").then_some(path)
                }),
            ),
            _ => continue,
        };
        let Some(path) = path else { continue };
        // The cgroup's path is relative to the hierarchy's root; the mount
        // shows the hierarchy from `mount_root` down.
        let rel = Path::new(path).strip_prefix(mount_root).unwrap_or(Path::new(""));
        let top = PathBuf::from(mount_point);
        let mut dir = top.join(rel);
        loop {
            if let Some(v) = read(&dir.join(file)).map(|s| s.trim().to_string()) {
                // "max", or v1's "unlimited" (a number near 2^63).
                if let Ok(n) = v.parse::<u64>() {
                    if n < (1u64 << 60) && best.as_ref().is_none_or(|(b, _)| n < *b) {
                        best = Some((n, dir.display().to_string()));
                    }
                }
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn cgroup_memory_limits_are_found_in_v1_and_v2_hierarchies() {
        // cgroup v2, mounted from the hierarchy's root: the parent's limit
        // is the smaller one; "max" is no limit.
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "/proc/meminfo", "MemTotal:       24000000 kB\nMemFree: 1 kB\n");
        put(r, "/proc/self/cgroup", "0::/system.slice/backup.service\n");
        put(r, "/proc/self/mountinfo", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
        put(r, "/sys/fs/cgroup/system.slice/backup.service/memory.max", "max\n");
        put(r, "/sys/fs/cgroup/system.slice/memory.max", "4294967296\n");
        let (limit, dir) = cgroup_memory_limit(r).unwrap();
        assert_eq!(limit, 4 << 30);
        assert!(dir.ends_with("/sys/fs/cgroup/system.slice"), "{dir}");
        let all = memory_limits(r);
        assert!(all.contains(&(24_000_000 * 1024, "of this machine's memory".into())), "{all:?}");
        assert_eq!(all.iter().map(|(l, _)| *l).min(), Some(4 << 30));

        // cgroup v1 memory controller, a container's view: the mount shows
        // the hierarchy from /docker/abc down; the unlimited root is skipped.
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "/proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n");
        put(
            r,
            "/proc/self/mountinfo",
            "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
             35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        put(r, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n");
        put(r, "/sys/fs/cgroup/cpu,cpuacct/memory.limit_in_bytes", "1\n");
        assert_eq!(cgroup_memory_limit(r).map(|(l, _)| l), Some(512 << 20));
        put(r, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(cgroup_memory_limit(r), None, "v1's unlimited is no limit");

        // Nothing readable: no limit, no panic; garbage lines are skipped.
        let t = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_memory_limit(t.path()), None);
        put(t.path(), "/proc/self/cgroup", "garbage\n0::\n");
        put(t.path(), "/proc/self/mountinfo", "no separator here\n1 2 3\n - \n");
        assert_eq!(cgroup_memory_limit(t.path()), None);
        assert!(memory_limits(t.path()).is_empty());
    }
}
