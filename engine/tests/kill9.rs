//! kill -9 at random moments of create (full, incremental, resumed),
//! merge and prune, on the real binary: after every kill, every committed
//! image verifies and restores to exactly its point in time, and the next
//! command carries on. Seeded (`TINTYPE_KILL9_SEED=N` replays one,
//! `TINTYPE_KILL9_ROUNDS=N` changes the number of kills).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use tintype::set::ImageSet;

use crate::util::*;

fn rounds() -> u64 {
    std::env::var("TINTYPE_KILL9_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(14)
}

fn seed() -> u64 {
    std::env::var("TINTYPE_KILL9_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x6b69_6c6c)
}

/// Image ID → (manifest's `replaces`, created from the source as of step).
fn committed(sb: &Sandbox) -> BTreeMap<String, Vec<String>> {
    match ImageSet::open(&sb.path("set")) {
        Ok(set) => set.images().unwrap().into_iter().map(|i| (i.manifest.image_id, i.manifest.replaces)).collect(),
        Err(_) => BTreeMap::new(),
    }
}

#[test]
fn kill_9_at_random_moments_never_loses_a_committed_image() {
    let seed = seed();
    let mut rng = tintype::sample::xorshift(seed);
    let sb = Sandbox::new();
    let mut data = mixed_bytes(16 << 20, seed);
    std::fs::write(sb.path("src.img"), &data).unwrap();
    // Image ID → the bytes it must restore to.
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut log: Vec<String> = Vec::new();
    let fail = |log: &[String], what: String| -> ! {
        panic!("seed {seed} (TINTYPE_KILL9_SEED={seed} replays): {what}\n  {}", log.join("\n  "))
    };
    for round in 0..rounds() {
        let before = committed(&sb);
        let have = !before.is_empty();
        let level = ["1", "9", "19"][(rng() % 3) as usize];
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let args: Vec<String> = match (have, rng() % 5) {
            (false, _) | (true, 0) => {
                strs(&["create", "src.img", "set", "--chunk-size", "64K", "--level", level, "--lanes", "1"])
            }
            (true, 1) => strs(&["create", "src.img", "set", "--incremental", "--level", level]),
            (true, 2) => strs(&["create", "src.img", "set", "--resume", "--level", level]),
            (true, 3) => {
                let newest = ImageSet::open(&sb.path("set")).unwrap().resolve(None).unwrap();
                match newest.manifest.parent {
                    Some(_) => strs(&["merge", &format!("set@{}", newest.manifest.image_id)]),
                    None => strs(&["create", "src.img", "set", "--incremental"]),
                }
            }
            _ => strs(&["prune", "set", "--keep-last", "2"]),
        };
        // Full images take a while; the rest (unchanged chunks, copies)
        // are quick, so they get shorter fuses.
        let full = args.iter().all(|a| a != "--incremental" && a != "--resume") && args[0] == "create";
        let delay = rng() % if full { 600 } else { 60 };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tintype"))
            .args(&args)
            .current_dir(sb.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        log.push(format!("round {round}: {args:?} killed after {delay} ms ({status})"));
        // What appeared: a create's image holds the source as it is now; a
        // merge's or prune's rewrite holds what the image it replaces held.
        let after = committed(&sb);
        for (id, replaces) in &after {
            if expected.contains_key(id) {
                continue;
            }
            let want = match replaces.first() {
                Some(r) => expected.get(r).cloned().unwrap_or_else(|| fail(&log, format!("{id} replaces unknown {r}"))),
                None if args[0] == "create" => data.clone(),
                None => fail(&log, format!("{} committed an image {id} that replaces nothing", args[0])),
            };
            log.push(format!("  committed {id}"));
            expected.insert(id.clone(), want);
        }
        // Every committed image verifies and restores to its bytes.
        for id in after.keys() {
            let spec = format!("set@{id}");
            let out = sb.run(&["verify", &spec]);
            if out.status.code() != Some(0) {
                fail(&log, format!("{id} does not verify: {}{}", stdout(&out), stderr(&out)));
            }
            let out = sb.run(&["restore", &spec, "out.img", "--force"]);
            if out.status.code() != Some(0) {
                fail(&log, format!("{id} does not restore: {}", stderr(&out)));
            }
            if std::fs::read(sb.path("out.img")).unwrap() != expected[id] {
                fail(&log, format!("{id} restores different bytes"));
            }
            std::fs::remove_file(sb.path("out.img")).unwrap();
        }
        // The source moves on now and then.
        if rng() % 2 == 0 {
            let at = (rng() % (data.len() as u64 - 65536)) as usize;
            let fresh = tintype::sample::random_bytes(1 + (rng() % 65536) as usize, rng());
            data[at..at + fresh.len()].copy_from_slice(&fresh);
            std::fs::write(sb.path("src.img"), &data).unwrap();
            log.push("  source changed".into());
        }
    }
    if std::env::var_os("TINTYPE_KILL9_VERBOSE").is_some() {
        println!("{}", log.join("\n"));
    }
    // And the set is usable: a last create and a prune finish.
    sb.expect(&["create", "src.img", "set", "--incremental"], 0);
    sb.expect(&["prune", "set", "--keep-last", "1"], 0);
    sb.expect(&["verify", "set"], 0);
    assert_round_trip(&sb.path("set"), &data);
}
