//! Deliberate damage to finished images: verify names what is wrong and
//! where; nothing panics.

use std::os::unix::fs::FileExt;
use std::path::Path;

use tintype::format::index::ChunkState;

use crate::util::*;

/// A set with one image of a mixed source, on the given backend.
fn image(sb: &Sandbox, backend: &str) -> Vec<u8> {
    let data = mixed_bytes(6 << 20, 21);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K", "--io", backend], 0);
    data
}

fn stored_chunks(set: &Path) -> Vec<u64> {
    let (_, entries) = load(set);
    entries.iter().enumerate().filter(|(_, e)| e.state == ChunkState::Stored).map(|(i, _)| i as u64).collect()
}

fn flip(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

fn only_file(set: &Path, suffix: &str) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v.remove(0)
}

/// One flipped byte in a frame's payload, and one in another frame's header:
/// verify exits 3 and names both chunks with their segment file and offset.
#[test]
fn flipped_bytes_are_named_by_chunk_segment_and_offset() {
    for backend in backends() {
        let sb = Sandbox::new();
        image(&sb, backend);
        let set = sb.path("set");
        let stored = stored_chunks(&set);
        let (a, b) = (stored[3], stored[stored.len() - 2]);
        let (seg_a, ea) = frame_of(&set, a);
        let (seg_b, eb) = frame_of(&set, b);
        flip(&seg_a, ea.offset + 64 + u64::from(ea.stored_len) / 2);
        flip(&seg_b, eb.offset + 20);
        let out = sb.expect(&["verify", "set", "--io", backend], 3);
        let text = stdout(&out);
        for (chunk, seg, e) in [(a, &seg_a, ea), (b, &seg_b, eb)] {
            let name = seg.file_name().unwrap().to_string_lossy().into_owned();
            let line = format!("BAD chunk {chunk} (source offset {}): {name} at offset {}", chunk * 65536, e.offset);
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        let out = sb.expect(&["verify", "set", "--io", backend, "--json"], 3);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut bad: Vec<u64> =
            r["bad_chunks"].as_array().unwrap().iter().map(|b| b["chunk"].as_u64().unwrap()).collect();
        bad.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(bad, want, "exactly the damaged chunks are reported");
        assert_eq!(r["clean"], false);
    }
}

/// A segment cut in half: every chunk whose frame was lost is named, and the
/// segment is reported truncated.
#[test]
fn truncated_segment_names_the_lost_chunks() {
    for backend in backends() {
        let sb = Sandbox::new();
        image(&sb, backend);
        let set = sb.path("set");
        let seg = only_file(&set, ".seg");
        let len = std::fs::metadata(&seg).unwrap().len();
        let cut = (len / 2) / 4096 * 4096 + 100;
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let (img, entries) = load(&set);
        let seg_no = img.manifest.segments.iter().position(|s| seg.ends_with(&s.file)).unwrap() as u32;
        let lost: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.state == ChunkState::Stored && e.segment == seg_no && e.offset + 64 + u64::from(e.stored_len) > cut
            })
            .map(|(i, _)| i)
            .collect();
        assert!(!lost.is_empty());
        let out = sb.expect(&["verify", "set", "--io", backend, "--json"], 3);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let bad: Vec<usize> =
            r["bad_chunks"].as_array().unwrap().iter().map(|b| b["chunk"].as_u64().unwrap() as usize).collect();
        for c in &lost {
            assert!(bad.contains(c), "lost chunk {c} is reported: {bad:?}");
        }
        let problems = r["problems"].to_string();
        assert!(problems.contains("truncated"), "{problems}");
    }
}

#[test]
fn missing_manifest_is_not_a_committed_image() {
    let sb = Sandbox::new();
    image(&sb, "portable");
    let m = only_file(&sb.path("set"), ".manifest.json");
    std::fs::remove_file(&m).unwrap();
    for cmd in ["verify", "info"] {
        let out = sb.expect(&[cmd, "set"], 4);
        assert!(stderr(&out).contains("not a committed image"), "{}", stderr(&out));
        assert!(stderr(&out).contains("unfinished"), "{}", stderr(&out));
    }
}

/// Random bytes in place of each file: a clear error naming the file, never a panic.
#[test]
fn random_bytes_as_manifest_index_or_segment_are_reported() {
    let junk = mixed_bytes(256 << 10, 99);
    for (suffix, code, needle) in [(".manifest.json", 3, "manifest.json"), (".index", 3, ".index"), (".seg", 3, ".seg")]
    {
        let sb = Sandbox::new();
        image(&sb, "portable");
        let f = only_file(&sb.path("set"), suffix);
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        std::fs::write(&f, &junk[..len.min(junk.len())]).unwrap();
        let out = sb.run(&["verify", "set"]);
        assert_eq!(out.status.code(), Some(code), "{suffix}: {}{}", stdout(&out), stderr(&out));
        let all = stdout(&out) + &stderr(&out);
        assert!(all.contains(needle), "{suffix}: the message names the file:\n{all}");
        assert!(!all.contains("panicked"), "{all}");
    }
}

/// Files from a newer format version are refused with exit 4 and a message
/// that says so.
#[test]
fn newer_format_versions_are_refused() {
    let sb = Sandbox::new();
    image(&sb, "portable");
    let m = only_file(&sb.path("set"), ".manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["format_version"] = 3.into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = sb.expect(&["verify", "set"], 4);
    assert!(stderr(&out).contains("format version 3"), "{}", stderr(&out));
    let out = sb.expect(&["info", "set"], 4);
    assert!(stderr(&out).contains("newer tintype"), "{}", stderr(&out));

    // An index header claiming version 3 (with a valid header checksum).
    let sb = Sandbox::new();
    image(&sb, "portable");
    let idx = only_file(&sb.path("set"), ".index");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&idx).unwrap();
    let mut head = [0u8; 64];
    f.read_exact_at(&mut head, 0).unwrap();
    head[8] = 3;
    let h = xxhash_rust::xxh3::xxh3_64(&head[..56]);
    head[56..64].copy_from_slice(&h.to_le_bytes());
    f.write_all_at(&head, 0).unwrap();
    let out = sb.expect(&["verify", "set"], 4);
    assert!(stderr(&out).contains("index format version 3"), "{}", stderr(&out));
}

/// A changed index entry (pointing a chunk at another chunk's frame) is caught
/// by the index hash and by the frame check.
#[test]
fn a_tampered_index_entry_is_caught() {
    let sb = Sandbox::new();
    image(&sb, "portable");
    let set = sb.path("set");
    let stored = stored_chunks(&set);
    let (img, _) = load(&set);
    let (a, b) = (stored[1], stored[2]);
    let ((at, mut run), (_, other)) = (record_of(&img, a), record_of(&img, b));
    run.entry.offset = other.entry.offset;
    run.entry.stored_len = other.entry.stored_len;
    let mut bytes = [0u8; 64];
    run.encode(&mut bytes);
    let f = std::fs::OpenOptions::new().write(true).open(img.index_path()).unwrap();
    f.write_all_at(&bytes, at).unwrap();
    let out = sb.expect(&["verify", "set"], 3);
    let text = stdout(&out);
    assert!(text.contains(&format!("BAD chunk {a} ")), "{text}");
    assert!(text.contains("index checksum"), "{text}");
}

/// Files removed or cut by hand, a manifest field of the wrong type, and
/// malformed selectors and flags: each gets its documented exit code and a
/// message naming what is wrong.
#[test]
fn hand_damage_and_bad_arguments_get_their_exit_codes() {
    // A missing index is damage (3), for every command that reads it.
    let sb = Sandbox::new();
    image(&sb, "portable");
    let inc = new_incremental(&sb);
    let idx = only_file(&sb.path("set"), ".index");
    std::fs::remove_file(&idx).unwrap();
    let newest = format!("set@{inc}");
    for args in [&["verify", "set"][..], &["restore", "set", "out.img"], &["merge", &newest, "--full"]] {
        let out = sb.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let name = idx.file_name().unwrap().to_string_lossy().into_owned();
        assert!(stderr(&out).contains(&name) && stderr(&out).contains("missing"), "{}", stderr(&out));
    }

    // A cut segment stops a merge before it writes anything (3), naming it.
    let sb = Sandbox::new();
    image(&sb, "portable");
    let inc = new_incremental(&sb);
    let seg = only_file(&sb.path("set"), ".seg");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5000).unwrap();
    let before: Vec<_> = std::fs::read_dir(sb.path("set")).unwrap().flatten().map(|e| e.file_name()).collect();
    let out = sb.expect(&["merge", &format!("set@{inc}"), "--full"], 3);
    let err = stderr(&out);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name) && err.contains("changed nothing"), "{err}");
    let after: Vec<_> = std::fs::read_dir(sb.path("set")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(before.len(), after.len(), "nothing written or removed");

    // format_version as a string is an invalid manifest (3), not a version.
    let sb = Sandbox::new();
    image(&sb, "portable");
    let m = only_file(&sb.path("set"), ".manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v["format_version"] = "1".into();
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = sb.expect(&["verify", "set"], 3);
    assert!(stderr(&out).contains("format_version is \"1\""), "{}", stderr(&out));

    // A foreign file named like a manifest beside a good image: the newest
    // cannot be told (3, saying how to pick one); the good image still works.
    let sb = Sandbox::new();
    image(&sb, "portable");
    let good = only_file(&sb.path("set"), ".manifest.json");
    let good_id = good.file_name().unwrap().to_string_lossy()[..16].to_string();
    std::fs::write(sb.path("set/0123456789abcdef.manifest.json"), b"garbage").unwrap();
    let out = sb.expect(&["verify", "set"], 3);
    assert!(stderr(&out).contains("0123456789abcdef") && stderr(&out).contains("SET@ID"), "{}", stderr(&out));
    sb.expect(&["verify", &format!("set@{good_id}")], 0);

    // A selector that is not hex, and out-of-range flags: usage (2).
    let sb = Sandbox::new();
    image(&sb, "portable");
    for sel in ["set@zz", "set@"] {
        let out = sb.expect(&["verify", sel], 2);
        assert!(stderr(&out).contains("is not an Image ID"), "{sel}: {}", stderr(&out));
    }
    sb.expect(&["verify", "set", "--lanes", "0"], 2);
    sb.expect(&["restore", "set", "out.img", "--queue-depth", "0"], 2);
    assert!(!sb.path("out.img").exists());
    // An empty unix socket path, a file where a set should be, and an
    // ambiguous prefix (its matches listed).
    let out = sb.expect(&["serve", "set", "--listen", "unix:"], 2);
    assert!(stderr(&out).contains("needs a socket path"), "{}", stderr(&out));
    std::fs::write(sb.path("afile"), b"x").unwrap();
    let out = sb.expect(&["create", "src.img", "afile", "--json"], 1);
    assert_eq!(error_reason(&out), "not_a_directory");
    let sb = Sandbox::new();
    std::fs::write(sb.path("src.img"), mixed_bytes(1 << 20, 5)).unwrap();
    sb.expect(&["create", "src.img", "set", "--image-id", "aaaa000000000001"], 0);
    sb.expect(&["create", "src.img", "set", "--image-id", "aaaa000000000002", "--incremental"], 0);
    let out = sb.expect(&["verify", "set@aaaa"], 2);
    let err = stderr(&out);
    assert!(err.contains("ambiguous") && err.contains("aaaa000000000001") && err.contains("aaaa000000000002"), "{err}");
    sb.expect(&["verify", "set@aaaa000000000002"], 0);
}

/// A command asked for `--json` answers a failure on stdout too: one JSON
/// object naming the exit code, its kind, the message and where (file,
/// offset, errno) — what a script needs without parsing stderr.
#[test]
fn json_commands_answer_failures_on_stdout() {
    let sb = Sandbox::new();
    image(&sb, "portable");
    let set = sb.path("set");
    let chunk = stored_chunks(&set)[2];
    let (seg, e) = frame_of(&set, chunk);
    flip(&seg, e.offset + 64 + u64::from(e.stored_len) / 2);
    let error = |out: &std::process::Output| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("stdout is JSON ({err}): {:?}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["error"]["exit_code"].as_i64(), out.status.code().map(i64::from), "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
        v["error"].clone()
    };

    // A damaged chunk met by restore (no --skip-bad): damaged, the segment
    // file and the frame's offset.
    let out = sb.expect(&["restore", "set", "out.img", "--json"], 3);
    let v = error(&out);
    assert_eq!(v["kind"], "damaged", "{v}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(v["path"].as_str().unwrap().ends_with(&name), "{v}");
    assert!(v["message"].as_str().unwrap().contains(&format!("chunk {chunk} ")), "{v}");
    assert!(v["offset"].as_u64().is_some(), "{v}");
    assert!(stderr(&out).contains("tintype: error:"), "stderr still has the message: {}", stderr(&out));

    // A set that does not exist: failure, with the path and errno.
    let out = sb.expect(&["verify", "nothing-here", "--json"], 1);
    let v = error(&out);
    assert_eq!(v["kind"], "failure", "{v}");
    assert_eq!(v["errno"], 2, "ENOENT: {v}");
    assert!(v["path"].as_str().unwrap().ends_with("nothing-here"), "{v}");

    // A bad flag value and an unknown flag: usage, naming the flag.
    let v = error(&sb.expect(&["verify", "set", "--lanes", "0", "--json"], 2));
    assert_eq!(v["kind"], "usage", "{v}");
    assert!(v["message"].as_str().unwrap().contains("--lanes"), "{v}");
    let v = error(&sb.expect(&["list", "set", "--json", "--bogus"], 2));
    assert!(v["message"].as_str().unwrap().contains("--bogus"), "{v}");

    // Without --json, stdout stays empty on failure.
    let out = sb.expect(&["restore", "set", "out2.img"], 3);
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

fn new_incremental(sb: &Sandbox) -> String {
    let out = sb.expect(&["create", "src.img", "set", "--incremental", "--json"], 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["image_id"].as_str().unwrap().to_string()
}

/// A version-2 record that does not decode (an unknown state, the index's
/// hash fixed up) is named as a damaged index record by verify and restore
/// — never as a read error of the file after it.
#[test]
fn an_undecodable_run_record_is_named_as_such() {
    let sb = Sandbox::new();
    image(&sb, "portable");
    let stored = stored_chunks(&sb.path("set"));
    forge_record(&sb.path("set"), stored[3], |r| r[0] = 9);
    for args in [&["verify", "set"][..], &["restore", "set", "t.img"][..]] {
        let out = sb.expect(args, 3);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(text.contains("index record: unknown chunk state 9"), "{args:?}: {text}");
        assert!(!text.contains("failed to fill"), "{args:?}: {text}");
    }
    assert!(!sb.path("t.img").exists());
}
