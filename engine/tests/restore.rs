//! `restore` to files on every backend: identical bytes, holes for zero
//! chunks, refusals that leave the target untouched, damaged frames.

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use tintype::format::index::ChunkState;

use crate::util::*;

fn image(sb: &Sandbox, size: usize, seed: u64, backend: &str) -> Vec<u8> {
    let data = mixed_bytes(size, seed);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(&["create", "src.img", "set", "--chunk-size", "64K", "--io", backend], 0);
    data
}

/// Flip a bit in the payload of `chunk`'s frame.
fn damage_frame(set: &Path, chunk: u64) {
    let (seg, e) = frame_of(set, chunk);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    let at = e.offset + 64 + u64::from(e.stored_len) / 3;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x08], at).unwrap();
}

/// Is `offset` inside a hole of the file?
fn is_hole(path: &Path, offset: u64) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on a valid descriptor has no memory-safety preconditions.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, libc::SEEK_HOLE) };
    r == offset as libc::off_t
}

/// The bytes come back identical (odd size, short last chunk, zero regions),
/// zero chunks are holes in the new file, and --verify-after agrees.
#[test]
fn restores_identical_bytes_to_a_new_sparse_file_on_every_backend() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = image(&sb, 9 * (1 << 20) + 4321, 31, backend);
        let out = sb.expect(&["restore", "set", "out.img", "--io", backend, "--verify-after", "--lanes", "2"], 0);
        assert!(stdout(&out).contains("read back: all"), "{}", stdout(&out));
        assert!(std::fs::read(sb.path("out.img")).unwrap() == data, "restored bytes differ ({backend})");
        let (img, entries) = load(&sb.path("set"));
        let zero: Vec<usize> =
            entries.iter().enumerate().filter(|(_, e)| e.state == ChunkState::Zero).map(|(i, _)| i).collect();
        assert!(!zero.is_empty());
        for c in zero {
            let (start, _) = img.chunk_extent(c as u64);
            assert!(is_hole(&sb.path("out.img"), start), "zero chunk {c} is a hole in the restored file");
        }
        let out = sb.expect(&["restore", "set", "again.img", "--io", backend, "--json"], 0);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["clean"], true);
        assert_eq!(v["target_kind"], "new-file");
        assert_eq!(v["bytes_written"].as_u64().unwrap() + v["bytes_zeroed"].as_u64().unwrap(), data.len() as u64);
    }
}

/// An existing file with data is refused (named, untouched) unless --force;
/// with --force, zero chunks are punched, and bytes past the image's end stay.
/// A program using the library matches refusals by kind, with the target
/// named: what the CLI's `--json` reports as `reason`.
#[test]
fn the_library_says_why_a_target_is_refused_as_a_kind() {
    use tintype::error::{ChainBreak, Refusal, Uncommitted};
    use tintype::{Error, Quiet, RestoreOptions};
    let sb = Sandbox::new();
    image(&sb, 2 << 20, 43, "portable");
    std::fs::write(sb.path("t.img"), vec![7u8; 4 << 20]).unwrap();
    let o = RestoreOptions::new(sb.path("set"), sb.path("t.img"));
    match tintype::restore(&o, &Quiet) {
        Err(Error::Unusable { path, reason: Refusal::HoldsData, .. }) => assert_eq!(path, sb.path("t.img")),
        other => panic!("expected a HoldsData refusal, got {other:?}"),
    }
    let mut o = RestoreOptions::new(sb.path("set"), sb.path("new.img"));
    o.image = Some("0123".into());
    assert!(matches!(tintype::restore(&o, &Quiet), Err(Error::NotCommitted { reason: Uncommitted::NoSuchImage, .. })));
    // An incremental whose parent is gone: a broken chain, named.
    std::fs::write(sb.path("src.img"), mixed_bytes(2 << 20, 44)).unwrap();
    sb.expect(&["create", "src.img", "set", "--incremental", "--force"], 0);
    let full = tintype::set::ImageSet::open(&sb.path("set")).unwrap().images().unwrap()[0].id();
    std::fs::remove_file(sb.path(&format!("set/{full}.manifest.json"))).unwrap();
    match tintype::restore(&RestoreOptions::new(sb.path("set"), sb.path("new.img")), &Quiet) {
        Err(Error::BrokenChain { reason: ChainBreak::ParentMissing, .. }) => {}
        other => panic!("expected a missing parent, got {other:?}"),
    }
    assert!(!sb.path("new.img").exists(), "a refused restore creates nothing");
}

#[test]
fn existing_files_are_refused_then_overwritten_with_force() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = image(&sb, 3 << 20, 41, backend);
        let old: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(sb.path("t.img"), &old).unwrap();
        let out = sb.expect(&["restore", "set", "t.img", "--io", backend, "--json"], 1);
        assert_eq!(error_reason(&out), "holds_data");
        assert!(stderr(&out).contains("--force"), "the message says how to go on: {}", stderr(&out));
        assert_eq!(std::fs::read(sb.path("t.img")).unwrap(), old, "a refused restore leaves the target untouched");

        sb.expect(&["restore", "set", "t.img", "--io", backend, "--force", "--verify-after"], 0);
        let got = std::fs::read(sb.path("t.img")).unwrap();
        assert_eq!(got.len(), old.len());
        assert!(got[..data.len()] == data, "the image's bytes");
        assert!(got[data.len()..] == old[data.len()..], "the rest of a larger target is untouched");
    }
}

/// An existing file counts as holding data wherever its data is, not only
/// in its first and last MiB (data in the middle was overwritten without
/// --force); a sparse file with nothing written is free to use; a file
/// another program holds a lock on (another restore writing it) is refused,
/// so two restores never interleave their chunks in one file.
#[test]
fn file_targets_are_checked_whole_and_locked() {
    use std::os::unix::io::AsRawFd;
    let sb = Sandbox::new();
    let data = image(&sb, 4 << 20, 43, "portable");
    // 20 MiB, all holes but 14 bytes at 10 MiB.
    let f = std::fs::File::create(sb.path("mid.img")).unwrap();
    f.set_len(20 << 20).unwrap();
    f.write_all_at(b"IMPORTANT DATA", 10 << 20).unwrap();
    drop(f);
    let out = sb.expect(&["restore", "set", "mid.img"], 1);
    let err = stderr(&out);
    assert!(err.contains(&format!("non-zero data (at byte {})", 10 << 20)) && err.contains("--force"), "{err}");
    let mut want = vec![0u8; 20 << 20];
    want[(10 << 20)..(10 << 20) + 14].copy_from_slice(b"IMPORTANT DATA");
    assert!(std::fs::read(sb.path("mid.img")).unwrap() == want, "refused: untouched");

    // Sparse and empty: restored without --force.
    std::fs::File::create(sb.path("sparse.img")).unwrap().set_len(8 << 20).unwrap();
    sb.expect(&["restore", "set", "sparse.img"], 0);
    assert!(std::fs::read(sb.path("sparse.img")).unwrap()[..data.len()] == data[..]);

    // Locked by another program: refused, untouched.
    std::fs::File::create(sb.path("busy.img")).unwrap().set_len(8 << 20).unwrap();
    let holder = std::fs::File::open(sb.path("busy.img")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = sb.expect(&["restore", "set", "busy.img", "--json"], 1);
    assert_eq!(error_reason(&out), "locked");
    assert!(std::fs::read(sb.path("busy.img")).unwrap().iter().all(|&b| b == 0), "untouched");
    drop(holder);
    sb.expect(&["restore", "set", "busy.img"], 0);
}

/// A flipped byte in one frame: the default stops naming the chunk;
/// --skip-bad restores everything else, writes zeros there, lists it and
/// exits 3; --verify-first refuses before touching the target.
#[test]
fn damaged_frames_are_never_written_as_good() {
    for backend in backends() {
        let sb = Sandbox::new();
        let data = image(&sb, 4 << 20, 51, backend);
        let (_, entries) = load(&sb.path("set"));
        let bad = entries.iter().position(|e| e.state == ChunkState::Stored).unwrap() as u64 + 2;
        let bad = (bad..entries.len() as u64).find(|&c| entries[c as usize].state == ChunkState::Stored).unwrap();
        damage_frame(&sb.path("set"), bad);

        let out = sb.expect(&["restore", "set", "a.img", "--io", backend], 3);
        assert!(stderr(&out).contains(&format!("chunk {bad} (source offset {})", bad * 65536)), "{}", stderr(&out));
        // Incomplete (kept), unless the lanes stopped before any chunk was
        // restored (removed; its own test below).
        let err = stderr(&out);
        assert!(
            (err.contains("a.img is incomplete") && sb.path("a.img").exists())
                || (err.contains("nothing was restored") && !sb.path("a.img").exists()),
            "{err}"
        );

        let out = sb.expect(&["restore", "set", "b.img", "--io", backend, "--skip-bad", "--json"], 3);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed: Vec<u64> =
            v["bad_chunks"].as_array().unwrap().iter().map(|b| b["chunk"].as_u64().unwrap()).collect();
        assert_eq!(listed, vec![bad]);
        let got = std::fs::read(sb.path("b.img")).unwrap();
        let (s, end) = ((bad * 65536) as usize, ((bad + 1) * 65536) as usize);
        assert!(got[s..end].iter().all(|&x| x == 0), "the bad chunk is zeros");
        assert!(got[..s] == data[..s] && got[end..] == data[end..], "everything else is restored");

        let old = vec![7u8; 1 << 20];
        std::fs::write(sb.path("c.img"), &old).unwrap();
        let out = sb.expect(&["restore", "set", "c.img", "--io", backend, "--verify-first", "--force"], 3);
        assert!(stderr(&out).contains("target was not touched"), "{}", stderr(&out));
        assert_eq!(std::fs::read(sb.path("c.img")).unwrap(), old);
        let out = sb.expect(&["restore", "set", "d.img", "--io", backend, "--verify-first"], 3);
        assert!(!sb.path("d.img").exists(), "{}", stderr(&out));
    }
}

/// A restore into a new file that fails before any chunk is restored (the
/// first chunk damaged, one lane, one read at a time) removes the file it created, so a new
/// attempt needs no --force; one that fails later keeps it and says it is
/// incomplete.
#[test]
fn a_restore_that_restored_nothing_removes_the_file_it_created() {
    let sb = Sandbox::new();
    image(&sb, 1 << 20, 52, "portable");
    let (_, entries) = load(&sb.path("set"));
    assert_eq!(entries[0].state, ChunkState::Stored, "the test needs chunk 0 stored");
    let last = (0..entries.len()).rev().find(|&c| entries[c].state == ChunkState::Stored).unwrap() as u64;
    let flip = |chunk: u64| damage_frame(&sb.path("set"), chunk);
    flip(last);
    let out = sb.expect(&["restore", "set", "late.img", "--lanes", "1"], 3);
    assert!(stderr(&out).contains("late.img is incomplete"), "{}", stderr(&out));
    assert!(sb.path("late.img").exists());
    flip(0);
    let out = sb.expect(&["restore", "set", "early.img", "--lanes", "1", "--queue-depth", "1"], 3);
    assert!(stderr(&out).contains("nothing was restored; the new file early.img was removed"), "{}", stderr(&out));
    assert!(!sb.path("early.img").exists());
}

/// SET@ID restores an older image; a missing image or bad flags are clear errors.
#[test]
fn picks_images_by_id_and_refuses_bad_input() {
    let sb = Sandbox::new();
    let a = mixed_bytes(2 << 20, 61);
    let b = mixed_bytes(2 << 20, 62);
    std::fs::write(sb.path("a.img"), &a).unwrap();
    std::fs::write(sb.path("b.img"), &b).unwrap();
    sb.expect(&["create", "a.img", "set", "--image-id", "00000000000000a1"], 0);
    sb.expect(&["create", "b.img", "set", "--image-id", "00000000000000b2"], 0);
    sb.expect(&["restore", "set@00000000000000a1", "ra.img"], 0);
    assert_eq!(std::fs::read(sb.path("ra.img")).unwrap(), a);
    sb.expect(&["restore", "set@00000000000000b", "rb.img"], 0);
    assert_eq!(std::fs::read(sb.path("rb.img")).unwrap(), b);
    let out = sb.expect(&["restore", "set@00000000000000c", "x.img"], 4);
    assert!(stderr(&out).contains("no image whose ID starts with"), "{}", stderr(&out));
    sb.expect(&["restore", "set", "x.img", "--queue-depth", "0"], 2);
    assert!(!sb.path("x.img").exists());
    let out = sb.expect(&["restore", "set", "/dev/null"], 1);
    assert!(stderr(&out).contains("block device or a regular file"), "{}", stderr(&out));
}

/// Rewrite one version-1 index entry (the image rewritten as version 1
/// first) and fix up the manifest's index hash, as a buggy writer or a hand
/// edit would leave it.
fn forge_entry(set: &Path, chunk: u64, change: impl Fn(&mut tintype::format::index::IndexEntry)) {
    rewrite_as_v1(set, None, &[]);
    let (img, entries) = load(set);
    let mut e = entries[chunk as usize];
    change(&mut e);
    let mut bytes = [0u8; 48];
    e.encode(&mut bytes);
    let idx = img.index_path();
    std::fs::OpenOptions::new().write(true).open(&idx).unwrap().write_all_at(&bytes, 64 + 48 * chunk).unwrap();
    set_index_hash(&img);
}

/// A field of a version-2 record: `(offset, bytes)`.
fn put(rec: &mut [u8], at: usize, v: &[u8]) {
    rec[at..at + v.len()].copy_from_slice(v);
}

/// Index entries that point outside the image are refused before anything
/// is written (exit 3), never a panic: in a version-2 record and in a
/// version-1 entry alike.
#[test]
fn forged_index_entries_are_refused_before_writing() {
    type Forge = (&'static str, Box<dyn Fn(&mut tintype::format::index::IndexEntry)>, Box<dyn Fn(&mut [u8])>);
    let cases: [Forge; 3] = [
        ("segment", Box::new(|e| e.segment = 99), Box::new(|r| put(r, 24, &99u32.to_le_bytes()))),
        ("stored_len", Box::new(|e| e.stored_len = 16 << 20), Box::new(|r| put(r, 28, &(16u32 << 20).to_le_bytes()))),
        ("offset", Box::new(|e| e.offset = 1 << 40), Box::new(|r| put(r, 32, &(1u64 << 40).to_le_bytes()))),
    ];
    for (name, v1, v2) in &cases {
        for version in [1, 2] {
            let sb = Sandbox::new();
            image(&sb, 2 << 20, 71, "portable");
            let (_, entries) = load(&sb.path("set"));
            let c = entries.iter().position(|e| e.state == ChunkState::Stored).unwrap() as u64;
            match version {
                1 => forge_entry(&sb.path("set"), c, v1),
                _ => forge_record(&sb.path("set"), c, v2),
            }
            let out = sb.expect(&["restore", "set", "t.img", "--skip-bad"], 3);
            assert!(stderr(&out).contains("points outside"), "{name} v{version}: {}", stderr(&out));
            assert!(!stderr(&out).contains("panicked"), "{name} v{version}");
            assert!(!sb.path("t.img").exists(), "{name} v{version}: nothing was written");
        }
    }
}

/// Entries that break FORMAT §5's per-state rules — a stored frame naming
/// another image (version 1: version 2 does not repeat the image), a zero
/// or unused entry that still names a frame, an unused entry carrying a
/// hash — are named by verify and refused by restore before it writes:
/// both read the index through the same per-entry check.
#[test]
fn entries_breaking_the_per_state_rules_fail_verify_and_restore_alike() {
    type Forge = Box<dyn Fn(&Path, u64)>;
    let cases: [(&str, Forge, &str); 5] = [
        (
            "foreign image (v1)",
            Box::new(|set, c| forge_entry(set, c, |e| e.image_id = tintype::format::ImageId(0x1234))),
            "names image",
        ),
        (
            "zero with a frame (v1)",
            Box::new(|set, c| forge_entry(set, c, |e| e.state = ChunkState::Zero)),
            "names a frame",
        ),
        ("zero with a frame (v2)", Box::new(|set, c| forge_record(set, c, |r| r[0] = 2)), "names a frame"),
        (
            "unused with a hash (v1)",
            Box::new(|set, c| {
                forge_entry(set, c, |e| {
                    e.state = ChunkState::Unused;
                    (e.segment, e.offset, e.stored_len) = (0, 0, 0);
                })
            }),
            "carries a hash",
        ),
        (
            "unused with a hash (v2)",
            Box::new(|set, c| {
                forge_record(set, c, |r| {
                    r[0] = 3;
                    r[24..40].fill(0);
                })
            }),
            "carries a hash",
        ),
    ];
    for (name, forge, why) in cases {
        let sb = Sandbox::new();
        image(&sb, 2 << 20, 72, "portable");
        let (_, entries) = load(&sb.path("set"));
        let c = entries.iter().position(|e| e.state == ChunkState::Stored).unwrap() as u64;
        forge(&sb.path("set"), c);
        let out = sb.expect(&["verify", "set"], 3);
        let text = stdout(&out);
        assert!(text.contains(&format!("BAD chunk {c} ")) && text.contains(why), "{name}: {text}");
        let out = sb.expect(&["restore", "set", "t.img"], 3);
        assert!(stderr(&out).contains(why), "{name}: {}", stderr(&out));
        assert!(!sb.path("t.img").exists(), "{name}: nothing was written");
    }
}

/// Overwrite bytes of segment `seg` and fix up the manifest's segment hash,
/// as a buggy tool would leave it: only the format's own rules can tell.
fn forge_segment(set: &Path, seg: usize, at: u64, bytes: &[u8]) {
    let (img, _) = load(set);
    let path = img.segment_path(seg);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(bytes, at).unwrap();
    let hash = xxhash_rust::xxh3::xxh3_64(&std::fs::read(&path).unwrap());
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&img.manifest_path).unwrap()).unwrap();
    m["segments"][seg]["xxh3_64"] = format!("{hash:016x}").into();
    std::fs::write(&img.manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Bytes the format says are zero — frame padding, segment header bytes
/// 64..4096 — are checked, not only hashed: with the segment hash fixed up,
/// verify names the damage and restore refuses it before writing (and
/// under --skip-bad lists the chunks it could not restore).
#[test]
fn non_zero_padding_fails_verify_and_restore_alike() {
    let sb = Sandbox::new();
    image(&sb, 2 << 20, 73, "portable");
    let (_, entries) = load(&sb.path("set"));
    let c = entries.iter().position(|e| e.state == ChunkState::Stored && e.segment == 0).unwrap() as u64;
    let e = entries[c as usize];
    let pad = e.offset + 64 + u64::from(e.stored_len);
    assert!(pad % 4096 != 0, "the frame has padding");
    forge_segment(&sb.path("set"), 0, pad, &[0x5a]);
    let out = sb.expect(&["verify", "set"], 3);
    assert!(stdout(&out).contains(&format!("BAD chunk {c} ")) && stdout(&out).contains("padding"), "{}", stdout(&out));
    let out = sb.expect(&["restore", "set", "t.img", "--skip-bad", "--json"], 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<u64> = v["bad_chunks"].as_array().unwrap().iter().map(|b| b["chunk"].as_u64().unwrap()).collect();
    assert_eq!(listed, vec![c]);
    forge_segment(&sb.path("set"), 0, pad, &[0]);
    sb.expect(&["verify", "set"], 0);

    forge_segment(&sb.path("set"), 0, 100, &[1]);
    let out = sb.expect(&["verify", "set"], 3);
    assert!(stdout(&out).contains("byte 100 is not zero"), "{}", stdout(&out));
    let out = sb.expect(&["restore", "set", "u.img"], 3);
    assert!(stderr(&out).contains("byte 100 is not zero"), "{}", stderr(&out));
    assert!(!sb.path("u.img").exists(), "nothing was written");
    let out = sb.expect(&["restore", "set", "u.img", "--skip-bad", "--json"], 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let in_seg0 = entries.iter().filter(|e| e.state == ChunkState::Stored && e.segment == 0).count();
    assert_eq!(v["bad_chunks"].as_array().unwrap().len(), in_seg0, "{v}");
    // merge applies the same check before it copies anything.
    let out = sb.expect(&["create", "src.img", "set", "--incremental", "--json"], 0);
    let inc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = std::fs::read_dir(sb.path("set")).unwrap().count();
    let out = sb.expect(&["merge", &format!("set@{}", inc["image_id"].as_str().unwrap()), "--full"], 3);
    assert!(stderr(&out).contains("byte 100 is not zero"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(sb.path("set")).unwrap().count(), before, "the merge changed nothing");
}

/// A missing segment: refused before writing; with --skip-bad, its chunks
/// are listed and zeroed and everything else is restored.
#[test]
fn a_missing_segment_is_refused_or_skipped() {
    let sb = Sandbox::new();
    let data = mixed_bytes(6 << 20, 81);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    sb.expect(
        &["create", "src.img", "set", "--chunk-size", "64K", "--lanes", "2", "--level", "0", "--segment-size", "9M"],
        0,
    );
    let (img, entries) = load(&sb.path("set"));
    assert!(img.manifest.segments.len() >= 2);
    std::fs::remove_file(img.segment_path(0)).unwrap();
    let out = sb.expect(&["restore", "set", "t.img"], 3);
    assert!(stderr(&out).contains("cannot be opened"), "{}", stderr(&out));
    assert!(!sb.path("t.img").exists());
    let out = sb.expect(&["restore", "set", "t.img", "--skip-bad", "--json"], 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad: Vec<u64> = v["bad_chunks"].as_array().unwrap().iter().map(|b| b["chunk"].as_u64().unwrap()).collect();
    let lost: Vec<u64> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.state == ChunkState::Stored && e.segment == 0)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(bad, lost);
    let got = std::fs::read(sb.path("t.img")).unwrap();
    for c in 0..entries.len() as u64 {
        let (s, e) = ((c * 65536) as usize, (((c + 1) * 65536) as usize).min(data.len()));
        if lost.contains(&c) {
            assert!(got[s..e].iter().all(|&b| b == 0), "lost chunk {c} is zeros");
        } else {
            assert!(got[s..e] == data[s..e], "chunk {c} restored");
        }
    }
}

/// Data only in the last MiB of an existing target still counts as data.
#[test]
fn data_at_the_end_of_a_target_is_noticed() {
    let sb = Sandbox::new();
    image(&sb, 1 << 20, 91, "portable");
    let mut old = vec![0u8; 4 << 20];
    old[(4 << 20) - 10] = 1;
    std::fs::write(sb.path("t.img"), &old).unwrap();
    let out = sb.expect(&["restore", "set", "t.img"], 1);
    assert!(stderr(&out).contains("last MiB"), "{}", stderr(&out));
    assert_eq!(std::fs::read(sb.path("t.img")).unwrap(), old);
}

#[test]
fn buffer_memory_beyond_half_the_machine_is_refused() {
    let sb = Sandbox::new();
    image(&sb, 1 << 20, 92, "portable");
    let out = sb.expect(&["create", "src.img", "set2", "--queue-depth", "1024", "--chunk-size", "64M"], 2);
    assert!(stderr(&out).contains("I/O buffers"), "{}", stderr(&out));
    let out = sb.expect(&["restore", "set", "t.img", "--queue-depth", "1024", "--lanes", "256"], 2);
    assert!(stderr(&out).contains("I/O buffers"), "{}", stderr(&out));
}

/// A target that is one of the set's own files (by any name: a hard link
/// outside the set too) is refused, even with --force, and nothing changes.
#[test]
fn a_file_of_the_set_itself_is_never_a_target() {
    let sb = Sandbox::new();
    let data = image(&sb, 2 << 20, 5, "portable");
    let set = sb.path("set");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg" || x == "index"))
        .collect();
    let before: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    std::fs::hard_link(&files[0], sb.path("elsewhere.img")).unwrap();
    let mut targets: Vec<String> = files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    targets.push("elsewhere.img".into());
    for t in &targets {
        let out = sb.expect(&["restore", "set", t, "--force"], 1);
        assert!(stderr(&out).contains("a file of the image set"), "{t}: {}", stderr(&out));
    }
    let after: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "the set's files are untouched");
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&set, &data);
}

/// Under a small RLIMIT_MEMLOCK (an unprivileged user on an older
/// distribution: 64 KiB), the start-up probe's small ring fits but the
/// lanes' rings do not. `--io auto` goes on lane by lane with pread/pwrite
/// and says so; `--io uring` fails naming the limit. As root the test runs
/// the commands as `nobody` (root's CAP_IPC_LOCK ignores the limit).
#[test]
fn a_low_memlock_limit_makes_lanes_fall_back_under_io_auto() {
    use std::os::unix::fs::PermissionsExt;
    if !require("a_low_memlock_limit_makes_lanes_fall_back_under_io_auto", &[Need::IoUring]) {
        return;
    }
    let sb = Sandbox::new();
    let src = image(&sb, 8 << 20, 41, "portable");
    let root = rustix::process::geteuid().is_root();
    if root {
        // `nobody` must reach the sandbox: open it up (it is removed after).
        for e in std::fs::read_dir(sb.dir.path().join("set")).unwrap().flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        for d in [sb.dir.path().to_path_buf(), sb.path("set")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
    let run =
        |args: &[&str]| sb.command_with(args, &[(libc::RLIMIT_MEMLOCK, 64 << 10)], root).output().expect("run tintype");
    let heavy = ["--lanes", "8", "--queue-depth", "32"];
    let forced = run(&[&["restore", "set", "forced.img", "--io", "uring"][..], &heavy].concat());
    if forced.status.success() {
        crate::needs::part_not_exercised(
            "a_low_memlock_limit_makes_lanes_fall_back_under_io_auto",
            "this kernel does not count io_uring rings against RLIMIT_MEMLOCK; the fallback is not exercised",
        );
    } else {
        assert_eq!(forced.status.code(), Some(1), "{}", stderr(&forced));
        assert!(stderr(&forced).contains("RLIMIT_MEMLOCK"), "{}", stderr(&forced));
        // The lanes whose rings fit may have restored chunks before another
        // lane's ring failed: then the file is incomplete and kept, and
        // says so; if nothing was restored the file it created is gone.
        let err = stderr(&forced);
        if err.contains("nothing was restored") {
            assert!(!sb.path("forced.img").exists(), "{err}");
        } else {
            assert!(err.contains("forced.img is incomplete") && sb.path("forced.img").exists(), "{err}");
        }
        // Under --io auto the same restore works, says what it did, and the
        // bytes are the source's.
        let out = run(&[&["restore", "set", "auto.img", "--json"][..], &heavy].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // Lane by lane, or (while the kernel still holds the last run's
        // rings, even the probe's does not fit) the whole run: said either way.
        let err = stderr(&out);
        assert!(err.contains("io_uring ring(s) could not be set up") || err.contains("io_uring unavailable"), "{err}");
        assert!(err.contains("RLIMIT_MEMLOCK"), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let used = v["io_backend"].as_str().unwrap().to_string();
        assert!(used == "portable" || used == "io_uring+portable", "{used}");
        assert!(std::fs::read(sb.path("auto.img")).unwrap() == src, "restored bytes equal the source");
        // create and verify work under the same limit too. (Their rings are
        // smaller, and the user's locked memory is counted over all its
        // processes, so whether they fall back depends on what the kernel
        // still holds for the runs before: only success is asserted.)
        let out = run(&[&["create", "src.img", "set2", "--json"][..], &heavy].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let out = run(&[&["verify", "set2"][..], &heavy].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_image_holds(&sb.path("set2"), None, &src);
    }
}
