//! `create`, `verify` and `info` on files: hashes, states, round trips,
//! bad flags, interrupted runs.

use std::time::Duration;

use tintype::format::index::ChunkState;
use xxhash_rust::xxh3::xxh3_128;

use crate::util::*;

/// An odd-sized mixed source imaged on every backend, with several lanes and
/// segment roll-over: every raw hash in the index equals one computed here
/// from the source, zero chunks are recorded (not stored), verify passes and
/// every chunk reads back identical.
#[test]
fn create_records_true_hashes_and_round_trips_on_every_backend() {
    for backend in backends() {
        let sb = Sandbox::new();
        let size = 21 * (1 << 20) + 12_345; // not a multiple of the chunk size
        let data = mixed_bytes(size, 7);
        std::fs::write(sb.path("src.img"), &data).unwrap();
        sb.expect(
            &[
                "create",
                "src.img",
                "set",
                "--chunk-size",
                "64K",
                "--lanes",
                "2",
                "--queue-depth",
                "3",
                "--segment-size",
                "9M",
                "--io",
                backend,
            ],
            0,
        );
        let (img, entries) = load(&sb.path("set"));
        assert_eq!(img.manifest.settings.io_backend, if backend == "uring" { "io_uring" } else { "portable" });
        assert_eq!(entries.len() as u64, (size as u64).div_ceil(64 << 10));
        let (mut zero, mut stored) = (0, 0);
        for (chunk, e) in entries.iter().enumerate() {
            let start = chunk * (64 << 10);
            let raw = &data[start..(start + (64 << 10)).min(size)];
            assert_eq!(e.raw_len as usize, raw.len(), "chunk {chunk} length");
            assert_eq!(e.raw_hash, xxh3_128(raw), "chunk {chunk} hash ({backend})");
            if raw.iter().all(|&b| b == 0) {
                assert_eq!(e.state, ChunkState::Zero, "all-zero chunk {chunk} is recorded, not stored");
                zero += 1;
            } else {
                assert_eq!(e.state, ChunkState::Stored);
                stored += 1;
            }
        }
        assert!(zero > 10 && stored > 100, "the source mixes zero and data chunks ({zero}, {stored})");
        let lanes: std::collections::BTreeSet<u32> = img.manifest.segments.iter().map(|s| s.lane).collect();
        assert_eq!(lanes.len(), 2, "both lanes wrote segments");
        assert_round_trip(&sb.path("set"), &data);
        let out = sb.expect(&["verify", "set", "--io", backend], 0);
        assert!(stdout(&out).contains(&format!("{} OK", img.manifest.image_id)), "{}", stdout(&out));

        // Stored raw, the same source fills several 9 MiB segments per lane.
        sb.expect(
            &[
                "create",
                "src.img",
                "raw",
                "--chunk-size",
                "64K",
                "--lanes",
                "2",
                "--level",
                "0",
                "--segment-size",
                "9M",
                "--io",
                backend,
            ],
            0,
        );
        let (img, _) = load(&sb.path("raw"));
        assert!(img.manifest.segments.len() >= 3, "segments rolled over: {}", img.manifest.segments.len());
        assert!(img.manifest.segments.iter().all(|s| s.size_bytes <= 9 << 20));
        assert_round_trip(&sb.path("raw"), &data);
        sb.expect(&["verify", "raw", "--io", backend], 0);
    }
}

/// Level 0 stores every non-zero chunk raw; an all-zero source stores nothing.
#[test]
fn level_zero_stores_raw_and_all_zero_sources_store_nothing() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = mixed_bytes(3 << 20, 11);
        std::fs::write(sb.path("a.img"), &data).unwrap();
        sb.expect(&["create", "a.img", "a", "--level", "0", "--io", backend], 0);
        let (img, _) = load(&sb.path("a"));
        assert_eq!(img.manifest.stats.chunks_stored, img.manifest.stats.chunks_stored_raw);
        assert_round_trip(&sb.path("a"), &data);
        sb.expect(&["verify", "a", "--io", backend], 0);

        std::fs::write(sb.path("z.img"), vec![0u8; 5 << 20]).unwrap();
        sb.expect(&["create", "z.img", "z", "--io", backend], 0);
        let (img, entries) = load(&sb.path("z"));
        assert!(img.manifest.segments.is_empty());
        assert!(entries.iter().all(|e| e.state == ChunkState::Zero));
        sb.expect(&["verify", "z", "--io", backend], 0);
    }
}

#[test]
fn negative_fast_levels_and_json_summary() {
    let sb = Sandbox::new();
    let data = mixed_bytes(2 << 20, 3);
    std::fs::write(sb.path("s.img"), &data).unwrap();
    let out = sb.expect(&["create", "s.img", "set", "--level", "-5", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("create --json prints JSON");
    assert_eq!(v["source_bytes"], 2 << 20);
    assert_eq!(v["manifest"]["level"], -5);
    let id = v["image_id"].as_str().unwrap().to_string();
    assert_round_trip(&sb.path("set"), &data);

    let out = sb.expect(&["info", &format!("set@{}", &id[..6]), "--json"], 0);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["manifest"]["image_id"], id.as_str());
    assert_eq!(info["manifest"]["source"]["size_bytes"], 2 << 20);
    let out = sb.expect(&["info", "set"], 0);
    assert!(stdout(&out).contains(&id));

    let out = sb.expect(&["verify", "set", "--json"], 0);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["clean"], true);
    assert_eq!(r["bad_chunks"].as_array().unwrap().len(), 0);
}

/// Bad flags exit 2 with a message that names the flag; a missing source
/// exits 1 naming the path.
#[test]
fn bad_flags_and_missing_sources_are_clear_errors() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("s.img"), vec![1u8; 1 << 20]).unwrap();
    for (args, needle) in [
        (vec!["--chunk-size", "1000"], "--chunk-size"),
        (vec!["--chunk-size", "128M"], "--chunk-size"),
        (vec!["--level", "99"], "--level"),
        (vec!["--queue-depth", "0"], "--queue-depth"),
        (vec!["--lanes", "0"], "--lanes"),
        (vec!["--segment-size", "1M"], "--segment-size"),
        (vec!["--chunk-size", "lots"], "size"),
    ] {
        let mut a = vec!["create", "s.img", "set"];
        a.extend(args.iter());
        let out = sb.expect(&a, 2);
        assert!(stderr(&out).contains(needle), "{a:?}: {}", stderr(&out));
    }
    assert!(!sb.path("set").exists(), "a refused run creates nothing");
    let out = sb.expect(&["create", "missing.img", "set"], 1);
    assert!(stderr(&out).contains("missing.img"), "{}", stderr(&out));
    let out = sb.expect(&["verify", "nowhere"], 1);
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}

/// A committed image is never overwritten: asking for an existing Image ID fails
/// and the first image still verifies.
#[test]
fn an_existing_image_is_never_overwritten() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("a.img"), mixed_bytes(1 << 20, 1)).unwrap();
    std::fs::write(sb.path("b.img"), mixed_bytes(1 << 20, 2)).unwrap();
    sb.expect(&["create", "a.img", "set", "--image-id", "00000000000000aa"], 0);
    let before = std::fs::read(sb.path("set/00000000000000aa.manifest.json")).unwrap();
    let out = sb.expect(&["create", "b.img", "set", "--image-id", "00000000000000aa"], 2);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(sb.path("set/00000000000000aa.manifest.json")).unwrap(), before);
    sb.expect(&["verify", "set@000000000"], 0);
}

/// Start `create` on a source slow enough to be interrupted, and return once
/// it has written its first files.
fn start_slow_create(sb: &Sandbox) -> std::process::Child {
    // Text at a high level is slow enough to be stopped mid-run.
    let text: Vec<u8> = b"the lane reads the chunk and the ring writes the frame "
        .iter()
        .copied()
        .cycle()
        .take(48 << 20)
        .enumerate()
        .map(|(i, b)| b ^ ((i / 4093) as u8 & 1))
        .collect();
    std::fs::write(sb.path("big.img"), &text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(["create", "big.img", "set", "--level", "19", "--lanes", "1"])
        .current_dir(sb.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let has_files = std::fs::read_dir(sb.path("set"))
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".index")))
            .unwrap_or(false);
        if has_files || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Ctrl-C (SIGINT) during create: exit 130, a message saying nothing was
/// committed and how to carry on; the frames written so far are kept, and
/// `--resume` finishes an image that restores to the source's bytes.
#[test]
fn sigint_stops_create_cleanly_and_resume_finishes_it() {
    let sb = Sandbox::new();
    let mut child = start_slow_create(&sb);
    assert!(child.try_wait().unwrap().is_none(), "create finished before it could be interrupted");
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted") && err.contains("no image was committed"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let names = files_in(&sb.path("set"));
    assert!(!names.iter().any(|n| n.ends_with(".manifest.json")), "nothing committed: {names:?}");
    assert!(names.iter().any(|n| n.ends_with(".seg")), "the frames written so far are kept: {names:?}");
    let out = sb.expect(&["list", "set"], 0);
    assert!(stdout(&out).contains("--resume"), "{}", stdout(&out));

    let out = sb.expect(&["create", "big.img", "set", "--resume", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["manifest"]["stats"]["chunks_resumed"].as_u64().unwrap() > 0, "kept chunks were not read again");
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&sb.path("set"), &std::fs::read(sb.path("big.img")).unwrap());
    assert!(!files_in(&sb.path("set")).iter().any(|n| n.ends_with(".run.json")), "the run record is gone");
}

/// kill -9 in the middle of create: no committed image appears, and the next
/// create into the same set succeeds and verifies.
#[test]
fn killed_create_commits_nothing_and_the_next_create_works() {
    let sb = Sandbox::new();
    let mut child = start_slow_create(&sb);
    assert!(child.try_wait().unwrap().is_none(), "create finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let names = files_in(&sb.path("set"));
    assert!(!names.iter().any(|n| n.ends_with(".manifest.json")), "no committed image: {names:?}");
    let out = sb.expect(&["verify", "set", "--json"], 4);
    assert_eq!(error_reason(&out), "empty_set");

    std::fs::write(sb.path("small.img"), mixed_bytes(2 << 20, 5)).unwrap();
    sb.expect(&["create", "small.img", "set"], 0);
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&sb.path("set"), &std::fs::read(sb.path("small.img")).unwrap());
}

/// Incompressible data to a disk-backed directory with one lane: reads
/// complete while both staging buffers are being written, which once made a
/// lane submit a buffer that was still in flight.
#[test]
fn reads_completing_while_both_staging_buffers_are_in_flight() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = tintype::sample::random_bytes(48 << 20, 0x1234_5678_9abc_def1);
        std::fs::write(sb.path("rand.img"), &data).unwrap();
        for qd in ["8", "32"] {
            let set = format!("set{qd}");
            sb.expect(
                &["create", "rand.img", &set, "--lanes", "1", "--level", "0", "--queue-depth", qd, "--io", backend],
                0,
            );
            sb.expect(&["verify", &set, "--io", backend], 0);
            assert_round_trip(&sb.path(&set), &data);
        }
    }
}

/// `list` shows every committed image, oldest first, and an interrupted
/// run's leftovers as unfinished.
#[test]
fn list_shows_images_and_unfinished_runs() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("a.img"), mixed_bytes(1 << 20, 1)).unwrap();
    sb.expect(&["create", "a.img", "set", "--image-id", "00000000000000a1"], 0);
    sb.expect(&["create", "a.img", "set", "--image-id", "00000000000000a2"], 0);
    // An interrupted run's file: data without a manifest.
    std::fs::write(sb.path("set/00000000000000a3.index"), b"partial").unwrap();
    let out = sb.expect(&["list", "set", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["image_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"00000000000000a1") && ids.contains(&"00000000000000a2"));
    assert_eq!(v["images"][0]["source_bytes"], 1 << 20);
    assert_eq!(v["unfinished"][0]["image_id"], "00000000000000a3");
    assert_eq!(v["unfinished"][0]["resumable"], false);
    let out = sb.expect(&["list", "set"], 0);
    assert!(stdout(&out).contains("data files without a manifest"), "{}", stdout(&out));
    sb.expect(&["list", "nowhere"], 1);
}

/// stdout closed before anything is written (`tintype list --json | head`
/// after head has gone): the commands finish, exit with their own code, and
/// never panic about the broken pipe.
#[test]
fn a_closed_stdout_pipe_is_not_a_failure() {
    let sb = Sandbox::new();
    std::fs::write(sb.path("src.img"), mixed_bytes(1 << 20, 3)).unwrap();
    for args in
        [&["create", "src.img", "set", "--json"][..], &["list", "set", "--json"], &["info", "set"], &["verify", "set"]]
    {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(args)
            .current_dir(sb.dir.path())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    sb.expect(&["verify", "set"], 0);
}

/// A small stack limit (`ulimit -s 64`) does not abort a run: the command
/// works on a thread whose stack size it sets itself (the main thread's
/// overflowed, exit 134).
#[test]
fn a_small_stack_limit_does_not_abort() {
    let sb = Sandbox::new();
    let data = mixed_bytes(4 << 20, 77);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    for args in [&["create", "src.img", "set", "--json"][..], &["verify", "set", "--json"], &["list", "set", "--json"]]
    {
        let out = sb.command_with(args, &[(libc::RLIMIT_STACK, 64 << 10)], false).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert_round_trip(&sb.path("set"), &data);
}

/// Buffers that would take more than half of the address space RLIMIT_AS
/// allows are refused before anything is written (exit 2, naming the
/// limit and the flags to lower); under a limit they fit, the run works.
#[test]
fn buffers_beyond_the_address_space_limit_are_refused_up_front() {
    let sb = Sandbox::new();
    let data = mixed_bytes(4 << 20, 78);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let run = |args: &[&str]| sb.command_with(args, &[(libc::RLIMIT_AS, 2 << 30)], false).output().unwrap();
    // 2 lanes x 1024 reads x 1 MiB: 2 GiB of buffers under a 2 GiB limit.
    let out = run(&["create", "src.img", "set", "--lanes", "2", "--queue-depth", "1024"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("RLIMIT_AS") && stderr(&out).contains("--queue-depth"), "{}", stderr(&out));
    assert!(!sb.path("set").exists() || std::fs::read_dir(sb.path("set")).unwrap().next().is_none());
    let out = run(&["restore", "set", "out.img", "--lanes", "2", "--queue-depth", "1024"]);
    assert_ne!(out.status.code(), Some(0));
    let out = run(&["create", "src.img", "set", "--lanes", "2", "--queue-depth", "8"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&["restore", "set", "out.img", "--lanes", "2", "--queue-depth", "1024"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("RLIMIT_AS"), "{}", stderr(&out));
    assert!(!sb.path("out.img").exists(), "refused before the target was created");
    assert_round_trip(&sb.path("set"), &data);
}

/// `demo --dir` uses only a directory without its own file names in it: an
/// existing sample-set (a user's image set) or sample.img is refused and
/// left as it was: the demo never images into a user's set, then deletes it.
#[test]
fn demo_never_takes_over_existing_files() {
    let sb = Sandbox::new();
    let data = mixed_bytes(2 << 20, 79);
    std::fs::write(sb.path("s.img"), &data).unwrap();
    std::fs::create_dir(sb.path("d")).unwrap();
    sb.expect(&["create", "s.img", "d/sample-set"], 0);
    std::fs::write(sb.path("d/sample.img"), b"my precious data").unwrap();
    let out = sb.expect(&["demo", "--size", "1M", "--dir", "d"], 2);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(sb.path("d/sample.img")).unwrap(), b"my precious data");
    assert_round_trip(&sb.path("d/sample-set"), &data);
    std::fs::remove_file(sb.path("d/sample.img")).unwrap();
    sb.expect(&["demo", "--size", "1M", "--dir", "d"], 2);
    assert_round_trip(&sb.path("d/sample-set"), &data);

    // A directory of its own: the demo runs and cleans up after itself.
    sb.expect(&["demo", "--size", "1M", "--dir", "e"], 0);
    assert_eq!(std::fs::read_dir(sb.path("e")).unwrap().count(), 0);
}

/// A source written while it is imaged (by a program writing the file
/// directly; a mounted read-write filesystem is refused) is committed with
/// a note saying so, never silently.
#[test]
fn a_source_written_during_the_run_is_noted() {
    let sb = Sandbox::new();
    let data = mixed_bytes(2 << 20, 80);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let mark = sb.path("paused");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(["create", "src.img", "set"])
        .current_dir(sb.dir.path())
        .env("TINTYPE_TEST_PAUSE", "create-read-all")
        .env("TINTYPE_TEST_PAUSE_MARK", &mark)
        .env("TINTYPE_TEST_PAUSE_MS", "1500")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !mark.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(mark.exists(), "create never reached its pause");
    let f = std::fs::OpenOptions::new().write(true).open(sb.path("src.img")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 4096).unwrap();
    drop(f);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("the source was written while it was being imaged"), "{}", stderr(&out));
    // Unchanged during the run: no such note.
    let out = sb.expect(&["create", "src.img", "set", "--incremental"], 0);
    assert!(!stderr(&out).contains("was written while"), "{}", stderr(&out));
}
