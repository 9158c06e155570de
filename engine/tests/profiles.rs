//! Profiles and `tune`: settings come from flags, then a profile, then the
//! defaults; the manifest records the effective ones; `tune` writes a
//! profile that `create` accepts.

use crate::util::*;

fn settings(set: &str, sb: &Sandbox) -> serde_json::Value {
    let out = sb.expect(&["info", set, "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["manifest"]["settings"].clone()
}

#[test]
fn profiles_set_defaults_flags_override_and_the_manifest_records_both() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("s.img"), mixed_bytes(3 << 20, 5)).unwrap();
    // The built-in hdd profile: queue depth 2, 4 MiB chunks, level 3, 2 lanes.
    sb.expect(&["create", "s.img", "a", "--profile", "hdd"], 0);
    let s = settings("a", &sb);
    assert_eq!(s["queue_depth"], 2);
    assert_eq!(s["lanes"], 2);
    assert_eq!(s["profile"], "built-in profile hdd");
    let (img, _) = load(&sb.path("a"));
    assert_eq!(img.manifest.chunk_size_bytes, 4 << 20);
    assert_eq!(img.manifest.level, 3);
    // A flag wins over the profile.
    sb.expect(&["create", "s.img", "b", "--profile", "hdd", "--queue-depth", "5", "--level", "-2"], 0);
    let s = settings("b", &sb);
    assert_eq!(s["queue_depth"], 5);
    let (img, _) = load(&sb.path("b"));
    assert_eq!(img.manifest.level, -2);
    assert_eq!(img.manifest.chunk_size_bytes, 4 << 20, "the rest still comes from the profile");
    // No profile: the defaults, and no profile recorded.
    sb.expect(&["create", "s.img", "c"], 0);
    let s = settings("c", &sb);
    assert_eq!(s["queue_depth"], 8);
    assert!(s.get("profile").is_none());
}

#[test]
fn bad_profiles_are_usage_errors_that_name_the_problem() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("s.img"), mixed_bytes(1 << 20, 5)).unwrap();
    let out = sb.expect(&["create", "s.img", "a", "--profile", "nvme-gen9"], 2);
    assert!(
        stderr(&out).contains("no such built-in profile") && stderr(&out).contains("nvme-gen4"),
        "{}",
        stderr(&out)
    );
    std::fs::write(sb.path("p.toml"), "queue_depth = 4\nturbo = true\n").unwrap();
    let out = sb.expect(&["create", "s.img", "a", "--profile", "./p.toml"], 2);
    assert!(stderr(&out).contains("turbo"), "{}", stderr(&out));
    std::fs::write(sb.path("q.toml"), "queue_depth = 0\n").unwrap();
    let out = sb.expect(&["create", "s.img", "a", "--profile", "./q.toml"], 2);
    assert!(stderr(&out).contains("queue") && stderr(&out).contains("./q.toml"), "{}", stderr(&out));
    let out = sb.expect(&["create", "s.img", "a", "--profile", "missing.toml"], 2);
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    assert!(!sb.path("a").exists());
}

/// `tune` on a file: a bounded sweep, a table, and a profile `create` accepts.
#[test]
fn tune_writes_a_profile_that_create_accepts() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = mixed_bytes(24 << 20, 7);
        std::fs::write(sb.path("dev.img"), &data).unwrap();
        let out = sb.expect(
            &["tune", "dev.img", "--write-profile", "tuned.toml", "--io", backend, "--step-ms", "20", "--json"],
            0,
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["reads"].as_array().unwrap().len(), 18, "3 read sizes x 6 queue depths");
        assert!(r["peak_mb_per_s"].as_f64().unwrap() > 0.0);
        let levels = r["levels"].as_array().unwrap();
        assert!(levels.len() >= 5);
        assert!(
            levels.iter().any(|l| l["ratio"].as_f64().unwrap() > 1.5),
            "the sample is the device's own, compressible data"
        );
        let text = std::fs::read_to_string(sb.path("tuned.toml")).unwrap();
        assert!(text.contains("queue_depth") && text.contains("level"), "{text}");
        sb.expect(&["create", "dev.img", "set", "--profile", "./tuned.toml"], 0);
        assert_round_trip(&sb.path("set"), &data);
        // Never overwrites.
        let out = sb.expect(&["tune", "dev.img", "--write-profile", "tuned.toml", "--step-ms", "5"], 2);
        assert!(stderr(&out).contains("tuned.toml"), "{}", stderr(&out));
    }
}
