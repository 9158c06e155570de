//! SIGTERM in the middle of verify, restore and merge (create's SIGINT is in
//! create_verify.rs): each stops with exit 130 and a message that says what
//! state things were left in, releases the set's locks (a command needing
//! them exclusively runs at once), and changes no committed image.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::chains::change_chunks;
use crate::util::*;

/// Start `tintype args` in the sandbox; once `started` says the work is
/// under way, send SIGTERM and return the output. Fails if the command
/// finished before it could be interrupted.
fn terminate_during(sb: &Sandbox, args: &[&str], started: impl Fn() -> bool) -> std::process::Output {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(args)
        .current_dir(sb.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    assert!(child.try_wait().unwrap().is_none(), "tintype {args:?} finished before it could be interrupted");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    child.wait_with_output().unwrap()
}

fn files(sb: &Sandbox) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(sb.path("set")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

/// The readers' lock is free: prune (which takes it exclusively) runs now.
fn locks_released(sb: &Sandbox) {
    let out = sb.expect(&["prune", "set", "--keep-last", "9", "--dry-run"], 0);
    assert!(!stderr(&out).contains("in use"), "{}", stderr(&out));
}

#[test]
fn sigterm_stops_verify_restore_and_merge_cleanly() {
    let sb = Sandbox::new();
    // Incompressible, so every chunk costs time to check and copy.
    let mut data = tintype::sample::random_bytes(160 << 20, 41);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--level", "1", "--chunk-size", "256K"], 0);
    let before = files(&sb);

    // verify: only reads; no verdict, nothing changed.
    let out = terminate_during(&sb, &["verify", "set", "--lanes", "1", "--json"], || true);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(error_field(&out, "left"), "nothing_changed");
    assert!(err.contains("signal") && err.contains("no verdict"), "{err}");
    assert_eq!(files(&sb), before, "verify changed nothing");
    locks_released(&sb);

    // restore: the target is named as incomplete, with how to finish.
    let target = sb.path("out.img");
    let out = terminate_during(&sb, &["restore", "set", "out.img", "--lanes", "1", "--json"], || {
        std::fs::metadata(&target).is_ok_and(|m| m.len() > 0)
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(error_field(&out, "left"), "target_incomplete");
    assert!(err.contains("out.img") && err.contains("incomplete") && err.contains("--force"), "{err}");
    locks_released(&sb);
    sb.expect(&["restore", "set", "out.img", "--force"], 0);
    assert!(std::fs::read(&target).unwrap() == data, "restoring again finishes the target");
    std::fs::remove_file(&target).unwrap();

    // merge: nothing committed, the new image's files gone, both images kept.
    for b in data.iter_mut().step_by(4096) {
        *b ^= 0x55;
    }
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--incremental"], 0);
    let before = files(&sb);
    let newest = tintype::set::ImageSet::open(&sb.path("set")).unwrap().resolve(None).unwrap().manifest.image_id;
    let spec = format!("set@{newest}");
    let out = terminate_during(&sb, &["merge", &spec, "--json"], || files(&sb).len() > before.len());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(error_field(&out, "left"), "nothing_changed");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(files(&sb), before, "the interrupted merge left no files and removed none");
    locks_released(&sb);
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&sb.path("set"), &data);
}

/// SIGTERM during `tune`: the current measurement drains, exit 130, no
/// profile written.
#[test]
fn sigterm_stops_tune_without_a_profile() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("dev.img"), tintype::sample::random_bytes(8 << 20, 5)).unwrap();
    let out = terminate_during(&sb, &["tune", "dev.img", "--write-profile", "tuned.toml", "--step-ms", "400"], || true);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("no profile was written"), "{err}");
    assert!(!sb.path("tuned.toml").exists(), "no profile file");
}

/// A signal in the last moments before a commit, or between a commit and
/// the removals it allows, is honoured: the command stops there (it does not
/// commit, remove the images it folded and exit 0). Each point is
/// reached through the debug build's test pause; after every stop each
/// image restores to its own point in time, and running again finishes.
#[test]
fn a_signal_at_the_commit_is_honoured() {
    let sb = Sandbox::new();
    let mark = sb.path("paused");
    let paused_at = |args: &[&str], point: &str| {
        let _ = std::fs::remove_file(&mark);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(args)
            .current_dir(sb.dir.path())
            .env("TINTYPE_TEST_PAUSE", point)
            .env("TINTYPE_TEST_PAUSE_MARK", &mark)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !mark.exists() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(mark.exists(), "tintype {args:?} never reached {point}");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{point}: {}", stderr(&out));
        stderr(&out)
    };
    let ids = || -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&sb.expect(&["list", "set", "--json"], 0).stdout).unwrap();
        v["images"].as_array().unwrap().iter().map(|i| i["image_id"].as_str().unwrap().to_string()).collect()
    };
    let mut data = mixed_bytes(4 << 20, 91);
    let mut points: Vec<(String, Vec<u8>)> = Vec::new();
    let image = |data: &[u8], extra: &[&str]| {
        std::fs::write(sb.path("src.img"), data).unwrap();
        let out = sb.expect(&[&["create", "src.img", "set", "--chunk-size", "64K", "--json"][..], extra].concat(), 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["manifest"]["image_id"].as_str().unwrap().to_string()
    };
    let check = |points: &[(String, Vec<u8>)]| {
        for (id, want) in points {
            assert_image_holds(&sb.path("set"), Some(id), want);
        }
    };

    // create: no image committed, the frames kept; --resume commits it.
    points.push((image(&data, &[]), data.clone()));
    change_chunks(&mut data, 5, 1);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let err = paused_at(&["create", "src.img", "set", "--incremental", "--chunk-size", "64K"], "create-commit");
    assert!(err.contains("no image was committed") && err.contains("--resume"), "{err}");
    assert_eq!(ids().len(), 1, "nothing committed");
    let out = sb.expect(&["create", "src.img", "set", "--incremental", "--chunk-size", "64K", "--resume"], 0);
    assert!(stderr(&out).contains("resum") || stdout(&out).contains("resum"), "{}", stderr(&out));
    points.push((ids().last().unwrap().clone(), data.clone()));
    for seed in [2, 3] {
        change_chunks(&mut data, 5, seed);
        points.push((image(&data, &["--incremental"]), data.clone()));
    }
    check(&points);
    let before = ids();

    // merge, just before its commit: nothing changed.
    let newest = format!("set@{}", points[3].0);
    let err = paused_at(&["merge", &newest], "merge-commit");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(ids(), before);
    check(&points);

    // merge, after its commit, before its removals: the merged image
    // stands in for the newest; nothing removed; the next prune finishes.
    let err = paused_at(&["merge", &newest], "merge-removals");
    assert!(err.contains("after committing image") && err.contains("not removed"), "{err}");
    assert_eq!(ids().len(), before.len() + 1, "the merged image is committed, nothing removed");
    let merged: String = ids().into_iter().find(|i| !before.contains(i)).unwrap();
    sb.expect(&["restore", "set", "m.img"], 0);
    assert!(std::fs::read(sb.path("m.img")).unwrap() == points[3].1, "the newest point restores");
    std::fs::remove_file(sb.path("m.img")).unwrap();
    points.truncate(2);
    points.push((merged, data.clone()));
    check(&points);

    // prune, between two removals: some removed, the rest stays intact;
    // running it again finishes.
    let err = paused_at(&["prune", "set", "--keep-last", "1"], "between-removals");
    assert!(err.contains("run the same prune again"), "{err}");
    let left = ids();
    assert!(left.len() > 1, "stopped part way: {left:?}");
    assert_image_holds(&sb.path("set"), None, &data);
    sb.expect(&["prune", "set", "--keep-last", "1"], 0);
    assert_eq!(ids().len(), 1);
    assert_image_holds(&sb.path("set"), None, &data);
    sb.expect(&["verify", "set"], 0);
}
