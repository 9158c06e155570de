//! Image sets: incremental and differential images, merge, prune, resume,
//! and the set lock — each checked by restoring and comparing bytes.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

/// Flip `n` random 64 KiB chunks of `data` to fresh random bytes; returns
/// the distinct chunks changed.
pub(crate) fn change_chunks(data: &mut [u8], n: usize, seed: u64) -> Vec<usize> {
    let chunks = data.len() / (64 << 10);
    let mut next = tintype::sample::xorshift(seed);
    let mut changed = Vec::new();
    while changed.len() < n {
        let c = (next() % chunks as u64) as usize;
        if changed.contains(&c) {
            continue;
        }
        changed.push(c);
        // A random stretch inside the chunk, at a random offset.
        let off = c * (64 << 10) + (next() % (32 << 10)) as usize;
        for b in &mut data[off..off + (16 << 10)] {
            *b = next() as u8;
        }
    }
    changed
}

/// Text of random words: compressible, but slow at zstd's high levels, so a
/// run at `--level 19` can be interrupted mid-way.
fn slow_text(size: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "sector ", "image ", "the ", "chunk ", "lane ", "of ", "ring ", "frame\n", "resume ", "merge ", "prune ",
        "index ", "kernel ", "device ", "zstd ", "hash ",
    ];
    let mut next = tintype::sample::xorshift(seed);
    let mut v = Vec::with_capacity(size + 16);
    while v.len() < size {
        let rng = next();
        v.extend_from_slice(WORDS[(rng % 16) as usize].as_bytes());
        if rng % 7 == 0 {
            v.extend_from_slice(format!("{} ", rng % 100_000).as_bytes());
        }
    }
    v.truncate(size);
    v
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

fn new_image(sb: &Sandbox, extra: &[&str]) -> String {
    let mut args = vec!["create", "src.img", "set", "--chunk-size", "64K", "--json"];
    args.extend_from_slice(extra);
    let v = json(&sb.expect(&args, 0));
    v["manifest"]["image_id"].as_str().unwrap().to_string()
}

fn restore_bytes(sb: &Sandbox, id: &str) -> Vec<u8> {
    let t = sb.path("restored.img");
    let _ = std::fs::remove_file(&t);
    sb.expect(&["restore", &format!("set@{id}"), "restored.img"], 0);
    let b = std::fs::read(&t).unwrap();
    std::fs::remove_file(&t).unwrap();
    b
}

/// Change 1.5% of the chunks at random offsets: the incremental stores
/// about the changed bytes, restores to the changed source, and the full
/// image still restores to the original.
#[test]
fn an_incremental_stores_only_what_changed() {
    let sb = Sandbox::new();
    let mut data = tintype::sample::random_bytes(32 << 20, 7);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let original = data.clone();
    let full = new_image(&sb, &[]);
    let changed = change_chunks(&mut data, 8, 99); // 8 of 512 chunks = 1.6%
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let v = json(&sb.expect(&["create", "src.img", "set", "--incremental", "--json"], 0));
    let m = &v["manifest"];
    assert_eq!(m["kind"], "incremental");
    assert_eq!(m["parent"], full.as_str());
    let stats = &m["stats"];
    assert_eq!(stats["chunks_stored"].as_u64().unwrap(), changed.len() as u64);
    assert_eq!(stats["chunks_inherited"].as_u64().unwrap(), 512 - changed.len() as u64);
    let changed_bytes = (changed.len() << 16) as u64;
    let stored = stats["bytes_segments"].as_u64().unwrap();
    assert!(
        stored >= changed_bytes && stored <= changed_bytes + changed.len() as u64 * 8192 + 4096,
        "stored {stored} bytes for {changed_bytes} changed bytes"
    );
    let inc = m["image_id"].as_str().unwrap().to_string();
    assert!(restore_bytes(&sb, &inc) == data, "the incremental restores to the changed source");
    assert!(restore_bytes(&sb, &full) == original, "the full image still restores to the original");
    sb.expect(&["verify", &format!("set@{inc}")], 0);
}

/// full → inc → inc → diff → inc: every image restores to its own point in
/// time, and `list` shows the chain as a tree.
#[test]
fn every_image_of_a_chain_restores_to_its_own_point_in_time() {
    let sb = Sandbox::new();
    let mut data = mixed_bytes(16 << 20, 3);
    let mut points = Vec::new();
    for (day, kind) in ["", "--incremental", "--incremental", "--differential", "--incremental"].iter().enumerate() {
        if day > 0 {
            change_chunks(&mut data, 4, day as u64 * 31);
        }
        std::fs::write(sb.path("src.img"), &data).unwrap();
        let extra: Vec<&str> = if kind.is_empty() { vec![] } else { vec![kind] };
        points.push((new_image(&sb, &extra), data.clone()));
    }
    for (id, want) in &points {
        assert!(restore_bytes(&sb, id) == *want, "image {id} restores to its point in time");
        assert_image_holds(&sb.path("set"), Some(id), want);
    }
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    let rows = v["images"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["image_id"] == id).unwrap().clone();
    assert_eq!(row(&points[0].0)["depth"], 0);
    assert_eq!(row(&points[2].0)["depth"], 2);
    assert_eq!(row(&points[3].0)["parent"], points[0].0.as_str(), "a differential hangs off the full image");
    assert_eq!(row(&points[3].0)["kind"], "differential");
    assert_eq!(row(&points[4].0)["parent"], points[3].0.as_str());
    assert!(rows.iter().all(|r| r["state"] == "ok"));
    let text = stdout(&sb.expect(&["list", "set"], 0));
    // F has two children (I1, D): the first drawn with a branch that goes
    // on, the second as the last; I1's child under a continuing bar.
    let line = |id: &str| text.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} listed: {text}"));
    assert!(line(&points[1].0).starts_with(&format!("├─ {}", points[1].0)), "{text}");
    assert!(line(&points[2].0).starts_with(&format!("│  └─ {}", points[2].0)), "{text}");
    assert!(line(&points[3].0).starts_with(&format!("└─ {}", points[3].0)), "{text}");
    assert!(line(&points[4].0).starts_with(&format!("   └─ {}", points[4].0)), "{text}");
}

fn chain_of_five(sb: &Sandbox, size: usize) -> Vec<(String, Vec<u8>)> {
    let mut data = mixed_bytes(size, 11);
    let mut points = Vec::new();
    for (i, kind) in ["", "--incremental", "--incremental", "--differential", "--incremental"].iter().enumerate() {
        if i > 0 {
            change_chunks(&mut data, 6, i as u64 * 17);
        }
        std::fs::write(sb.path("src.img"), &data).unwrap();
        let extra: Vec<&str> = if kind.is_empty() { vec![] } else { vec![kind] };
        points.push((new_image(sb, &extra), data.clone()));
    }
    points
}

fn committed(sb: &Sandbox) -> Vec<String> {
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    v["images"].as_array().unwrap().iter().map(|r| r["image_id"].as_str().unwrap().to_string()).collect()
}

/// Every committed image restores to the bytes of the point in time it (or
/// the image it replaces) was taken at.
fn assert_all_restorable(sb: &Sandbox, points: &[(String, Vec<u8>)]) {
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    for r in v["images"].as_array().unwrap() {
        let id = r["image_id"].as_str().unwrap();
        let mut names = vec![id.to_string()];
        names.extend(r["replaces"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()));
        let (_, want) = points
            .iter()
            .find(|(p, _)| names.contains(p))
            .unwrap_or_else(|| panic!("image {id} is none of the points in time"));
        assert!(restore_bytes(sb, id) == *want, "image {id} (standing for {names:?}) restores to its point in time");
    }
}

/// merge: an incremental folded into its parent, then a chain into a
/// synthetic full; every kept image restores to the same bytes before and
/// after, and images nothing needs are removed.
#[test]
fn merge_keeps_every_image_restorable() {
    let sb = Sandbox::new();
    let points = chain_of_five(&sb, 8 << 20);
    let ids: Vec<&str> = points.iter().map(|(i, _)| i.as_str()).collect();
    // Fold inc #2 into inc #1: #1 goes, #2 is replaced by a new image whose
    // parent is the full; #3 (diff) still hangs off the full.
    let v = json(&sb.expect(&["merge", &format!("set@{}", ids[2]), "--json"], 0));
    assert_eq!(v["merged"]["replaces"], ids[2]);
    assert_eq!(v["merged"]["kind"], "differential");
    let removed: Vec<&str> = v["removed"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(removed.contains(&ids[1]) && removed.contains(&ids[2]), "{removed:?}");
    assert_all_restorable(&sb, &points);
    // The newest incremental into a synthetic full: the full stays (the
    // merged image above depends on it), the diff goes.
    let v = json(&sb.expect(&["merge", "set", &ids[4][..8], "--full", "--json"], 0));
    assert_eq!(v["merged"]["kind"], "full");
    let now = committed(&sb);
    assert!(now.contains(&ids[0].to_string()), "the full image is still needed: {now:?}");
    assert!(!now.contains(&ids[3].to_string()) && !now.contains(&ids[4].to_string()), "{now:?}");
    assert_all_restorable(&sb, &points);
    for id in now {
        sb.expect(&["verify", &format!("set@{id}")], 0);
    }
    // A full image has nothing to merge into.
    let out = sb.expect(&["merge", &format!("set@{}", ids[0])], 2);
    assert!(stderr(&out).contains("no parent"), "{}", stderr(&out));
}

/// kill -9 at several moments of a merge: the set stays restorable, and the
/// next merge finishes the job.
#[test]
fn a_killed_merge_leaves_a_restorable_set() {
    for delay_ms in [5u64, 40, 120, 400] {
        let sb = Sandbox::new();
        let mut data = tintype::sample::random_bytes(96 << 20, delay_ms);
        std::fs::write(sb.path("src.img"), &data).unwrap();
        let full = new_image(&sb, &["--level", "0"]);
        let mut points = vec![(full, data.clone())];
        change_chunks(&mut data, 40, delay_ms + 1);
        std::fs::write(sb.path("src.img"), &data).unwrap();
        let inc = new_image(&sb, &["--incremental"]);
        points.push((inc.clone(), data.clone()));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(["merge", &format!("set@{inc}")])
            .current_dir(sb.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        assert_all_restorable(&sb, &points);
        // Whatever state it stopped in, a merge of the newest image finishes.
        let newest = committed(&sb).last().unwrap().clone();
        let v = json(&sb.expect(&["list", "set", "--json"], 0));
        let is_full = v["images"].as_array().unwrap().iter().any(|r| r["image_id"] == newest && r["kind"] == "full");
        if !is_full {
            sb.expect(&["merge", &format!("set@{newest}")], 0);
        } else {
            sb.expect(&["prune", "set", "--keep-last", "1"], 0);
        }
        assert_eq!(committed(&sb).len(), 1, "delay {delay_ms} ms: one full image left");
        assert_all_restorable(&sb, &points);
        let names: Vec<String> = std::fs::read_dir(sb.path("set"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("tintype"))
            .collect();
        let id = committed(&sb)[0].clone();
        assert!(names.iter().all(|n| n.starts_with(&id)), "delay {delay_ms} ms: leftovers {names:?}");
    }
}

/// prune --keep-last: the kept images restore to the same bytes, the rest
/// is removed; --dry-run changes nothing.
#[test]
fn prune_keeps_the_policy_and_every_kept_image_restorable() {
    let sb = Sandbox::new();
    let points = chain_of_five(&sb, 8 << 20);
    let files = |sb: &Sandbox| {
        let mut v: Vec<String> = std::fs::read_dir(sb.path("set"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files(&sb);
    let v = json(&sb.expect(&["prune", "set", "--keep-last", "2", "--dry-run", "--json"], 0));
    assert_eq!(v["removed"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(files(&sb), before, "--dry-run changed nothing");
    let v = json(&sb.expect(&["prune", "set", "--keep-last", "2", "--json"], 0));
    let kept: Vec<&str> = v["kept"].as_array().unwrap().iter().map(|k| k["image_id"].as_str().unwrap()).collect();
    assert_eq!(kept, vec![points[3].0.as_str(), points[4].0.as_str()]);
    assert_eq!(committed(&sb).len(), 2);
    assert_all_restorable(&sb, &points);
    // The kept images stand for the last two points in time.
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    for (r, (id, _)) in v["images"].as_array().unwrap().iter().zip(&points[3..]) {
        let names: Vec<&str> = std::iter::once(r["image_id"].as_str().unwrap())
            .chain(r["replaces"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()))
            .collect();
        assert!(names.contains(&id.as_str()), "{names:?} stands for {id}");
    }
    sb.expect(&["prune", "set"], 2);
    sb.expect(&["prune", "set", "--keep-last", "0"], 2);
}

/// kill -9 at several moments of a create, then `--resume` (itself killed
/// once): the image restores to the source's bytes.
#[test]
fn killed_creates_resume_to_the_same_bytes() {
    let text = slow_text(40 << 20, 5);
    for delay_ms in [300u64, 1200] {
        let sb = Sandbox::new();
        std::fs::write(sb.path("src.img"), &text).unwrap();
        for (attempt, args) in [
            vec!["create", "src.img", "set", "--level", "19", "--lanes", "1", "--chunk-size", "256K"],
            vec!["create", "src.img", "set", "--level", "19", "--lanes", "1", "--resume"],
        ]
        .iter()
        .enumerate()
        {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
                .args(args)
                .current_dir(sb.dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms * (attempt as u64 + 1)));
            let _ = child.kill();
            child.wait().unwrap();
        }
        let v = json(&sb.expect(&["create", "src.img", "set", "--resume", "--json"], 0));
        let stats = &v["manifest"]["stats"];
        assert_eq!(v["manifest"]["chunk_size_bytes"], 256 << 10, "the run's chunk size was kept");
        if delay_ms >= 1200 {
            assert!(stats["chunks_resumed"].as_u64().unwrap() > 0, "delay {delay_ms}: nothing was kept: {stats}");
        }
        sb.expect(&["verify", "set"], 0);
        assert_round_trip(&sb.path("set"), &text);
        assert_eq!(committed(&sb).len(), 1);
    }
}

/// A torn frame at the end of a segment (power loss mid-write) is dropped
/// and its chunk read again.
#[test]
fn resume_drops_a_torn_frame_and_reads_its_chunk_again() {
    let sb = Sandbox::new();
    let data = mixed_bytes(8 << 20, 5);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let id = new_image(&sb, &["--lanes", "1"]);
    // Turn the committed image back into an unfinished run: no manifest, a
    // run record, a torn last frame.
    let set = sb.path("set");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(set.join(format!("{id}.manifest.json"))).unwrap()).unwrap();
    std::fs::remove_file(set.join(format!("{id}.manifest.json"))).unwrap();
    let run = serde_json::json!({
        "format": "tintype-run", "format_version": 1, "image_id": id, "operation": "create",
        "kind": "full", "parent": null, "source": m["source"], "chunk_size_bytes": m["chunk_size_bytes"],
        "level": 1, "started_unix_seconds": 1,
    });
    std::fs::write(set.join(format!("{id}.run.json")), serde_json::to_vec(&run).unwrap()).unwrap();
    let seg = set.join(format!("{id}.000000.seg"));
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xee; 100], len - 200).unwrap();
    // Another file of the same size (another inode) is not this run's source:
    // its --resume starts an image of its own and leaves the run alone.
    std::fs::write(sb.path("other.img"), &data).unwrap();
    let v = json(&sb.expect(&["create", "other.img", "set", "--resume", "--json"], 0));
    assert_ne!(v["manifest"]["image_id"], id.as_str());
    assert!(set.join(format!("{id}.run.json")).exists());
    let v = json(&sb.expect(&["create", "src.img", "set", "--resume", "--json"], 0));
    assert_eq!(v["manifest"]["image_id"], id.as_str());
    let (frames, zero) = (m["stats"]["chunks_stored"].as_u64().unwrap(), m["stats"]["chunks_zero"].as_u64().unwrap());
    let s = &v["manifest"]["stats"];
    assert_eq!(s["chunks_resumed"].as_u64().unwrap(), frames - 1 + zero, "every frame but the torn one kept: {s}");
    assert_eq!(s["bytes_read"].as_u64().unwrap(), 64 << 10, "only the torn frame's chunk was read again");
    sb.expect(&["verify", &format!("set@{id}")], 0);
    assert_image_holds(&set, Some(&id), &data);
}

/// An incremental stopped after its index was written but before its
/// manifest (its finished version-2 index in place): `--resume` keeps its
/// frames, its zero runs and its inherited runs, reads nothing again, and
/// commits an image that restores to the changed source.
#[test]
fn resume_of_an_incremental_keeps_the_runs_of_its_finished_index() {
    let sb = Sandbox::new();
    let mut data = mixed_bytes(8 << 20, 15);
    data[1 << 20..2 << 20].fill(0);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let parent = new_image(&sb, &["--lanes", "1"]);
    data[(5 << 20) + 100] ^= 0xff;
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let id = new_image(&sb, &["--lanes", "1", "--incremental"]);
    let set = sb.path("set");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(set.join(format!("{id}.manifest.json"))).unwrap()).unwrap();
    let (stored, inherited) =
        (m["stats"]["chunks_stored"].as_u64().unwrap(), m["stats"]["chunks_inherited"].as_u64().unwrap());
    assert_eq!(stored, 1, "{}", m["stats"]);
    std::fs::remove_file(set.join(format!("{id}.manifest.json"))).unwrap();
    let run = serde_json::json!({
        "format": "tintype-run", "format_version": 1, "image_id": id, "operation": "create",
        "kind": "incremental", "parent": parent, "source": m["source"], "chunk_size_bytes": m["chunk_size_bytes"],
        "level": 1, "started_unix_seconds": 1,
    });
    std::fs::write(set.join(format!("{id}.run.json")), serde_json::to_vec(&run).unwrap()).unwrap();
    let v = json(&sb.expect(&["create", "src.img", "set", "--incremental", "--resume", "--json"], 0));
    assert_eq!(v["manifest"]["image_id"], id.as_str());
    let s = &v["manifest"]["stats"];
    assert_eq!(s["bytes_read"].as_u64().unwrap_or(0), 0, "nothing read again: {s}");
    assert_eq!(s["chunks_resumed"].as_u64().unwrap(), stored + inherited, "{s}");
    assert_eq!(s["chunks_inherited"].as_u64().unwrap(), inherited, "{s}");
    sb.expect(&["verify", &format!("set@{id}")], 0);
    assert_image_holds(&set, Some(&id), &data);
}

/// A source of another size, another file of the same size, a missing
/// parent, a damaged parent frame, a concurrent run: each a clear error,
/// nothing damaged.
#[test]
fn wrong_sources_broken_chains_and_concurrent_runs_are_refused() {
    let sb = Sandbox::new();
    let data = mixed_bytes(4 << 20, 21);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let full = new_image(&sb, &[]);
    // Another size: refused, even with --force.
    std::fs::write(sb.path("small.img"), &data[..2 << 20]).unwrap();
    for force in [false, true] {
        let mut args = vec!["create", "small.img", "set", "--incremental"];
        if force {
            args.push("--force");
        }
        let out = sb.expect(&args, 1);
        assert!(stderr(&out).contains("same device"), "{}", stderr(&out));
    }
    // Another file of the same size: refused unless --force.
    std::fs::write(sb.path("other.img"), &data).unwrap();
    let out = sb.expect(&["create", "other.img", "set", "--incremental", "--json"], 1);
    assert_eq!(error_reason(&out), "not_the_parents_source");
    assert!(stderr(&out).contains("inode"), "the message names what differs: {}", stderr(&out));
    sb.expect(&["create", "other.img", "set", "--incremental", "--force"], 0);
    assert_eq!(committed(&sb).len(), 2);
    // A differential with no full image in the set is refused.
    let empty = Sandbox::new();
    std::fs::write(empty.path("src.img"), &data).unwrap();
    let out = empty.expect(&["create", "src.img", "set", "--differential"], 4);
    assert!(stderr(&out).contains("take a full image first"), "{}", stderr(&out));

    // A damaged frame in the parent: verify of the child names the parent.
    let inc = committed(&sb)[1].clone();
    let (seg, e) = frame_of_image(&sb.path("set"), &full);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0x55; 8], e + 100).unwrap();
    let out = sb.expect(&["verify", &format!("set@{inc}"), "--json"], 3);
    let v = json(&out);
    assert!(v["bad_chunks"].as_array().unwrap().iter().any(|b| b["image"] == full.as_str()), "{v}");
    let out = sb.expect(&["restore", &format!("set@{inc}"), "t.img"], 3);
    assert!(stderr(&out).contains(&full), "the damaged ancestor is named: {}", stderr(&out));

    // A missing parent: a clear error naming it, exit 3, for restore, verify and a new incremental.
    std::fs::remove_file(sb.path(&format!("set/{full}.manifest.json"))).unwrap();
    for args in [
        vec!["restore".to_string(), format!("set@{inc}"), "t2.img".into(), "--json".into()],
        vec!["verify".into(), format!("set@{inc}"), "--json".into()],
    ] {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = sb.expect(&a, 3);
        assert_eq!(error_reason(&out), "parent_missing");
        assert!(stderr(&out).contains(&full), "the message names the missing parent: {}", stderr(&out));
    }
    assert!(!sb.path("t2.img").exists());
    let out = sb.expect(&["create", "src.img", "set", "--incremental", "--force"], 3);
    assert!(stderr(&out).contains(&full), "{}", stderr(&out));
}

/// The offset of some stored frame of image `id`, and its segment.
fn frame_of_image(set: &Path, id: &str) -> (std::path::PathBuf, u64) {
    let s = tintype::set::ImageSet::open(set).unwrap();
    let img = s.resolve(Some(id)).unwrap();
    let idx = img.read_index().unwrap();
    let e = idx.entries.iter().flatten().find(|e| e.state == tintype::format::index::ChunkState::Stored).unwrap();
    (img.segment_path(e.segment as usize), e.offset)
}

/// Two runs against one set at once: the second is refused with exit 5,
/// naming the first's pid; the first finishes untouched.
#[test]
fn a_concurrent_run_is_refused() {
    let sb = Sandbox::new();
    let text = slow_text(16 << 20, 6);
    std::fs::write(sb.path("src.img"), &text).unwrap();
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_tintype"))
        .args(["create", "src.img", "set", "--level", "19", "--lanes", "1"])
        .current_dir(sb.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(sb.path("set/tintype.lock")).unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first run never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    for args in [vec!["create", "src.img", "set"], vec!["prune", "set", "--keep-last", "1"]] {
        let out = sb.expect(&args, 5);
        assert!(stderr(&out).contains(&format!("pid {}", first.id())), "{args:?}: {}", stderr(&out));
    }
    // list takes no lock, but says who is writing the set (from the kernel's
    // lock table), so an unfinished run is not mistaken for an abandoned one.
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    let who = v["in_use_by"].as_str().unwrap_or_default().to_string();
    assert!(who.contains(&format!("pid {}", first.id())) && who.contains("create"), "{v}");
    assert!(first.wait().unwrap().success());
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    assert!(v["in_use_by"].is_null(), "nobody writes it now: {v}");
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&sb.path("set"), &text);
}

/// A full image and two incrementals, with their bytes.
fn chain_of_three(sb: &Sandbox) -> Vec<(String, Vec<u8>)> {
    let mut data = mixed_bytes(4 << 20, 5);
    let mut points = Vec::new();
    for (i, extra) in [&[][..], &["--incremental"], &["--incremental"]].iter().enumerate() {
        if i > 0 {
            change_chunks(&mut data, 4, i as u64 * 31);
        }
        std::fs::write(sb.path("src.img"), &data).unwrap();
        points.push((new_image(sb, extra), data.clone()));
    }
    points
}

/// Rewrite one field of an image's manifest, as a hand (or a bug) might.
fn edit_manifest(sb: &Sandbox, id: &str, key: &str, value: serde_json::Value) {
    let path = sb.path(&format!("set/{id}.manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m[key] = value;
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn list_states(sb: &Sandbox) -> Vec<(String, String)> {
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["image_id"].as_str().unwrap().to_string(), r["state"].as_str().unwrap().to_string()))
        .collect()
}

/// A manifest that claims to replace an image it cannot stand for (edited
/// by hand: another point in time, or the image's own child) replaces
/// nothing: prune and merge keep that image, and it still restores.
#[test]
fn a_false_replaces_claim_gets_nothing_removed() {
    let sb = Sandbox::new();
    let points = chain_of_three(&sb);
    let [(full, full_bytes), (inc1, inc1_bytes), (inc2, inc2_bytes)] = &points[..] else { unreachable!() };
    edit_manifest(&sb, inc1, "replaces", serde_json::json!([full]));
    sb.expect(&["prune", "set", "--keep-last", "3"], 0);
    assert_eq!(committed(&sb), vec![full.clone(), inc1.clone(), inc2.clone()]);
    assert!(restore_bytes(&sb, full) == *full_bytes);
    assert!(restore_bytes(&sb, inc1) == *inc1_bytes);
    assert!(restore_bytes(&sb, inc2) == *inc2_bytes);
    // A merge of the newest folds it into its parent; the full image, which
    // the new image depends on, stays whatever the edited manifest says.
    let v = json(&sb.expect(&["merge", &format!("set@{inc2}"), "--json"], 0));
    let merged = v["merged"]["image_id"].as_str().unwrap().to_string();
    assert_eq!(committed(&sb), vec![full.clone(), merged.clone()]);
    assert!(restore_bytes(&sb, full) == *full_bytes);
    assert!(restore_bytes(&sb, &merged) == *inc2_bytes);
}

/// The crash window of a merge (its image committed, the image it replaced
/// not yet removed) with the new image then damaged: cut short, the
/// replaced image keeps standing for its point in time (its child restores
/// through it) and `list` shows the damage; with a flipped byte (sizes
/// right), the next prune hashes the replacement and keeps the replaced
/// image. Either way prune says why it keeps it.
#[test]
fn a_damaged_replacement_never_gets_the_image_it_replaced_removed() {
    for cut in [true, false] {
        let sb = Sandbox::new();
        let points = chain_of_three(&sb);
        let [(full, _), (inc1, inc1_bytes), (inc2, inc2_bytes)] = &points[..] else { unreachable!() };
        let saved = sb.path("saved");
        std::fs::create_dir(&saved).unwrap();
        let names: Vec<String> = std::fs::read_dir(sb.path("set"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(inc1.as_str()) || n.starts_with(full.as_str()))
            .collect();
        for n in &names {
            std::fs::copy(sb.path(&format!("set/{n}")), saved.join(n)).unwrap();
        }
        // inc1 folded into the full image: both go, the new image stands for inc1.
        let v = json(&sb.expect(&["merge", &format!("set@{inc1}"), "--json"], 0));
        let merged = v["merged"]["image_id"].as_str().unwrap().to_string();
        assert_eq!(v["removed"].as_array().unwrap().len(), 2, "{v}");
        for n in &names {
            std::fs::copy(saved.join(n), sb.path(&format!("set/{n}"))).unwrap();
        }
        let seg = sb.path(&format!("set/{merged}.000000.seg"));
        if cut {
            std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(10_000).unwrap();
            let states = list_states(&sb);
            let state_of = |id: &str| states.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone()).unwrap();
            assert!(
                state_of(&merged).starts_with("DAMAGED") && state_of(&merged).contains("10000 bytes"),
                "{states:?}"
            );
            assert_eq!(state_of(inc1), "ok", "{states:?}");
            assert_eq!(state_of(inc2), "ok", "{states:?}");
            assert!(restore_bytes(&sb, inc2) == *inc2_bytes, "the child restores through the intact parent");
        } else {
            let (_, at) = frame_of_image(&sb.path("set"), &merged);
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, at + 100).unwrap();
            f.write_all_at(&[b[0] ^ 1], at + 100).unwrap();
        }
        let out = sb.expect(&["prune", "set", "--keep-last", "5"], 0);
        assert!(stderr(&out).contains(&format!("image {inc1} is kept")), "{}", stderr(&out));
        assert!(committed(&sb).contains(inc1), "cut {cut}: the replaced image is kept: {:?}", committed(&sb));
        sb.expect(&["verify", &format!("set@{inc1}")], 0);
        assert!(restore_bytes(&sb, inc1) == *inc1_bytes, "cut {cut}: and restores to its point in time");
        sb.expect(&["verify", &format!("set@{merged}")], 3);
    }
}

/// Images whose parents loop (a manifest edited by hand) are listed as
/// broken, never left out.
#[test]
fn list_shows_a_loop_of_parents_as_broken() {
    let sb = Sandbox::new();
    let points = chain_of_three(&sb);
    let [(full, _), (inc1, _), (inc2, _)] = &points[..] else { unreachable!() };
    edit_manifest(&sb, inc1, "parent", serde_json::json!(inc2));
    let states = list_states(&sb);
    assert_eq!(states.len(), 3, "{states:?}");
    for (id, state) in &states {
        if id == full {
            assert_eq!(state, "ok");
        } else {
            assert!(state.starts_with("BROKEN") && state.contains("loops"), "{id}: {state}");
        }
    }
    let out = sb.expect(&["list", "set"], 0);
    assert!(stdout(&out).contains(inc1) && stdout(&out).contains(inc2), "{}", stdout(&out));
}

/// Requests that could only surprise: merging an image a merge already
/// replaced (refused before anything is removed, naming the replacement),
/// prune with only --discard-unfinished (every image kept), a set named
/// like SET@ID, an unbounded retry count.
#[test]
fn odd_requests_get_clear_answers() {
    let sb = Sandbox::new();
    let points = chain_of_three(&sb);
    let [(full, _), (inc1, _), (inc2, inc2_bytes)] = &points[..] else { unreachable!() };
    let saved: Vec<(String, Vec<u8>)> = std::fs::read_dir(sb.path("set"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(inc2.as_str()))
        .map(|n| (n.clone(), std::fs::read(sb.path(&format!("set/{n}"))).unwrap()))
        .collect();
    let v = json(&sb.expect(&["merge", &format!("set@{inc2}"), "--json"], 0));
    let merged = v["merged"]["image_id"].as_str().unwrap().to_string();
    for (n, b) in &saved {
        std::fs::write(sb.path(&format!("set/{n}")), b).unwrap();
    }
    let out = sb.expect(&["merge", &format!("set@{inc2}")], 2);
    assert!(stderr(&out).contains(&format!("replaced by image {merged}")), "{}", stderr(&out));
    assert!(committed(&sb).contains(inc2), "nothing was removed by the refused merge");

    // --discard-unfinished alone keeps every image (and finishes the
    // pending removal of the replaced one).
    sb.expect(&["prune", "set", "--discard-unfinished"], 0);
    let now = committed(&sb);
    assert!(now.contains(full) && now.contains(&merged) && !now.contains(inc2), "{now:?}");
    assert!(!now.contains(inc1), "inc1 was folded by the merge: {now:?}");
    assert!(restore_bytes(&sb, &merged) == *inc2_bytes);
    // Its old ID says where its point in time went.
    let out = sb.expect(&["verify", &format!("set@{inc2}")], 4);
    assert!(stderr(&out).contains(&format!("into image {merged}")), "{}", stderr(&out));

    let out = sb.expect(&["create", "src.img", "other@2c98"], 2);
    assert!(stderr(&out).contains("@2c98") && !sb.path("other@2c98").exists(), "{}", stderr(&out));
    sb.expect(&["create", "src.img", "other", "--read-retries", "101"], 2);
}

/// The clock was wrong (years ahead) for one image: the images taken after
/// it still chain onto it, are the newest (the default for restore), and
/// are what --keep-last keeps; the create says the clock looks wrong.
#[test]
fn a_wrong_clock_once_does_not_reorder_the_set() {
    let sb = Sandbox::new();
    let mut data = mixed_bytes(4 << 20, 3);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    new_image(&sb, &[]);
    change_chunks(&mut data, 3, 1);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let ahead = new_image(&sb, &["--incremental"]);
    // As if the clock said 2030 when `ahead` was taken.
    let secs = 1_906_934_400u64;
    edit_manifest(&sb, &ahead, "created_unix_seconds", serde_json::json!(secs));
    edit_manifest(&sb, &ahead, "created_unix_nanos", serde_json::json!(secs * 1_000_000_000));
    edit_manifest(&sb, &ahead, "created", serde_json::json!("2030-06-06T00:00:00Z"));
    change_chunks(&mut data, 3, 2);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    let out = sb.expect(&["create", "src.img", "set", "--incremental", "--json"], 0);
    assert!(stderr(&out).contains("the clock"), "{}", stderr(&out));
    let last = json(&out)["manifest"]["image_id"].as_str().unwrap().to_string();
    assert_eq!(json(&out)["manifest"]["parent"], ahead.as_str(), "it chains onto the image dated ahead");
    assert_eq!(committed(&sb).last(), Some(&last), "the last image taken is the newest");
    let t = sb.path("restored.img");
    sb.expect(&["restore", "set", "restored.img"], 0);
    assert!(std::fs::read(&t).unwrap() == data, "restore's default is the last image taken");
    sb.expect(&["prune", "set", "--keep-last", "1"], 0);
    let left = committed(&sb);
    assert_eq!(left.len(), 1);
    assert!(restore_bytes(&sb, &left[0]) == data, "--keep-last 1 kept the last point in time");
}

/// Files in the set that tintype did not write — a user's notes named
/// after an image, a backup copy of a segment, a file that merely starts
/// with 16 hex digits — are not an unfinished run, and neither merge,
/// prune nor `--discard-unfinished` removes them with the image whose ID
/// they start with.
#[test]
fn files_tintype_did_not_write_are_never_removed() {
    let sb = Sandbox::new();
    let points = chain_of_five(&sb, 2 << 20);
    let set = sb.path("set");
    let full = &points[0].0;
    let seg = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".000000.seg") && p.to_string_lossy().contains(full.as_str()))
        .unwrap();
    let foreign = [
        "cafebabecafebabe.jpg".to_string(),
        format!("{full}.notes.txt"),
        format!("{}.000000.seg.bak", points[1].0),
        format!("{}.README", points[2].0),
    ];
    for f in &foreign {
        std::fs::write(set.join(f), b"mine").unwrap();
    }
    std::fs::copy(&seg, set.join(format!("{full}.000000.seg.bak"))).unwrap();
    let v = json(&sb.expect(&["list", "set", "--json"], 0));
    assert_eq!(v["unfinished"].as_array().unwrap().len(), 0, "{v}");
    sb.expect(&["prune", "set", "--discard-unfinished"], 0);
    sb.expect(&["merge", &format!("set@{}", points[4].0), "--full"], 0);
    sb.expect(&["prune", "set", "--keep-last", "1", "--discard-unfinished"], 0);
    for f in &foreign {
        assert_eq!(std::fs::read(set.join(f)).unwrap(), b"mine", "{f} is still there");
    }
    assert!(set.join(format!("{full}.000000.seg.bak")).exists());
    assert_image_holds(&set, None, &points[4].1);
}

/// A run killed while it wrote its run record leaves only a record that does
/// not parse: the next merge or prune removes it, rather than leave forever
/// an "interrupted run" that can be neither resumed nor cleaned (a kill -9
/// loop meets one about 1 time in 3 at 5 ms).
#[test]
fn a_run_record_cut_short_is_cleaned_by_the_next_merge_or_prune() {
    let sb = Sandbox::new();
    let points = chain_of_five(&sb, 1 << 20);
    let set = sb.path("set");
    std::fs::write(set.join("0123456789abcdef.run.json"), b"{\n  \"format\": \"tint").unwrap();
    std::fs::write(set.join("0123456789abcde0.run.json"), b"").unwrap();
    sb.expect(&["prune", "set", "--keep-last", "9"], 0);
    assert!(!set.join("0123456789abcdef.run.json").exists());
    assert!(!set.join("0123456789abcde0.run.json").exists());
    assert_image_holds(&set, None, &points[4].1);
}
