//! SIGTERM in the middle of verify, restore and merge (create's SIGINT is in
//! create_verify.rs): each stops with exit 130 and a message that says what
//! state things were left in, releases the set's locks (a command needing
//! them exclusively runs at once), and changes no committed image.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let out = terminate_during(&sb, &["verify", "set", "--lanes", "1"], || true);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("signal") && err.contains("no verdict"), "{err}");
    assert_eq!(files(&sb), before, "verify changed nothing");
    locks_released(&sb);

    // restore: the target is named as incomplete, with how to finish.
    let target = sb.path("out.img");
    let out = terminate_during(&sb, &["restore", "set", "out.img", "--lanes", "1"], || {
        std::fs::metadata(&target).is_ok_and(|m| m.len() > 0)
    });
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
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
    let out = terminate_during(&sb, &["merge", &spec], || files(&sb).len() > before.len());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
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
