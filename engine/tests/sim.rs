//! The fault simulation loop: create (full, incremental, differential),
//! resume, verify, restore, merge (the incremental into the full image) and
//! prune (to the newest image, rewritten onto a synthetic full) run
//! in-process on the simulation backend (`tintype::io::sim`) under seeded
//! random faults — unreadable sectors, short reads, a full destination, EIO
//! on a write, a failed fsync, a crash that tears a write followed by a
//! power cut — and again without; after every step the invariants are
//! checked:
//!
//! - a failed run names a file and commits nothing; every image committed
//!   before it still verifies and restores to exactly its point in time;
//! - once the cause is gone, `--resume` (or a second merge or prune) completes;
//! - a successful run restores to the source, except the unreadable ranges
//!   it reported, which are exactly the sectors that never read and come
//!   back as zeros;
//! - verify never calls an image clean while a frame cannot be read, and
//!   restore never reports success with bytes that differ.
//!
//! One lane, so a seed always takes the same path. A failure prints its
//! seed and what was injected; `TINTYPE_SIM_SEED=N` replays it, and
//! `TINTYPE_SIM_ROUNDS=N` runs N seeds (`.ci/run --long` runs many).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tintype::format::manifest::ImageKind;
use tintype::io::sim::{BadRange, Faults, Sim};
use tintype::io::IoChoice;
use tintype::merge::{merge, prune, MergeOptions, MergeSpan, PruneOptions, Retention};
use tintype::pipeline::capture::OnReadError;
use tintype::set::ImageSet;
use tintype::{create, restore, verify, CreateOptions, Quiet, RestoreOptions, VerifyOptions};

use crate::util::mixed_bytes;

const CHUNK: u64 = 64 << 10;
const SECTOR: u64 = 512;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One seed's world: a source file, a set, and what each committed image
/// must restore to.
struct World {
    seed: u64,
    rng: Rng,
    dir: tempfile::TempDir,
    source: PathBuf,
    set: PathBuf,
    data: Vec<u8>,
    /// Permanently unreadable sectors of the source (start, len).
    bad: Vec<(u64, u64)>,
    /// Sectors made flaky (failing a few times) during the current create:
    /// they may or may not be reported, depending on the retries.
    flaky: Vec<(u64, u64)>,
    /// Image ID → the bytes it must restore to.
    expected: BTreeMap<String, Vec<u8>>,
    /// What happened, for the failure message.
    log: Vec<String>,
}

/// Run `f`, again while it finds the set busy. The set's locks are flock()s
/// of this process; another test of this binary that forks a child at the
/// moment one is held lends the child a copy of the descriptor until it
/// execs (close-on-exec), so the lock can outlive our release by a moment.
/// Separate tintype processes never see this.
fn unbusy<T>(mut f: impl FnMut() -> tintype::Result<T>) -> tintype::Result<T> {
    for _ in 0..100 {
        match f() {
            Err(tintype::Error::Busy { .. }) => std::thread::sleep(std::time::Duration::from_millis(20)),
            r => return r,
        }
    }
    f()
}

fn scratch() -> tempfile::TempDir {
    // tmpfs where there is one: the loop writes and fsyncs a lot.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("tintype-sim").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        // 1.5 to 4 MiB, not always a whole number of chunks or sectors' worth of chunks.
        let size = (24 + rng.below(40)) * CHUNK + if rng.chance(30) { rng.below(CHUNK / SECTOR) * SECTOR } else { 0 };
        let data = mixed_bytes(size as usize, seed);
        let (dir, source, set) = source_and_set(&data);
        World {
            seed,
            rng,
            source,
            set,
            data,
            bad: Vec::new(),
            flaky: Vec::new(),
            expected: BTreeMap::new(),
            log: Vec::new(),
            dir,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {} (replay: TINTYPE_SIM_SEED={}): {what}\nwhat happened:\n  {}",
            self.seed,
            self.seed,
            self.log.join("\n  ")
        )
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(&what());
        }
    }

    /// Random faults for a run that writes to the set.
    fn faults(&mut self, reads_source: bool) -> Faults {
        let mut f = Faults::default();
        if reads_source {
            f.bad_reads = self
                .bad
                .iter()
                .map(|&(start, len)| BadRange { path: self.source.clone(), start, len, times: u32::MAX })
                .collect();
            // A flaky sector: fails once or twice, then reads.
            if self.rng.chance(30) {
                let at = self.rng.below(self.data.len() as u64 / SECTOR) * SECTOR;
                let times = 1 + self.rng.below(2) as u32;
                f.bad_reads.push(BadRange { path: self.source.clone(), start: at, len: SECTOR, times });
                self.flaky.push((at, SECTOR));
            }
            f.short_reads = self.rng.chance(25);
        }
        match self.rng.below(6) {
            0 => {}
            1 => {
                let space = self.rng.below(self.data.len() as u64 / 2);
                f.space_bytes = Some(space);
                // Half the time a write that does not fit fails whole (ext4
                // O_DIRECT) rather than short (no extra draw: seeds replay).
                f.space_all_or_nothing = space % 2 == 1;
            }
            2 => f.write_eio_at = Some(self.rng.below(24)),
            3 => f.sync_eio_at = Some(self.rng.below(6)),
            _ => f.crash_at_write = Some(self.rng.below(24)),
        }
        f
    }

    /// After a run that finished: only committed images' files and the
    /// locks are in the set (no run record, journal, temporary file, or
    /// data of an image that is not committed).
    fn check_no_leftovers(&self, step: &str) {
        let ids = self.committed();
        for e in std::fs::read_dir(&self.set).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ok = name.starts_with("tintype.")
                || (ids.iter().any(|id| name.starts_with(id.as_str()))
                    && [".manifest.json", ".index", ".seg", ".badmap"].iter().any(|x| name.ends_with(x)));
            self.check(ok, || format!("after {step}: leftover file {name} (committed: {ids:?})"));
        }
    }

    fn create_options(&mut self, kind: ImageKind, io: IoChoice, resume: bool) -> CreateOptions {
        let mut o = CreateOptions::new(&self.source, &self.set);
        o.kind = kind;
        o.lanes = Some(1);
        o.queue_depth = 1 + self.rng.below(4) as u32;
        o.chunk_size_bytes = CHUNK as u32;
        o.chunk_size_given = kind == ImageKind::Full && !resume;
        o.staging_bytes = Some(0); // the smallest: two frames a write
        o.segment_size_bytes = 512 << 10;
        o.level = 1;
        o.io = io;
        o.resume = resume;
        o.used_only = tintype::pipeline::capture::UsedOnly::Off;
        // With bad sectors, a first attempt may use the default (fail).
        let skip = if self.bad.is_empty() { self.rng.chance(50) } else { resume || self.rng.chance(70) };
        o.on_read_error = if skip { OnReadError::Skip } else { OnReadError::Fail };
        o.read_retries = self.rng.below(3) as u32;
        o
    }

    fn committed(&self) -> Vec<String> {
        match ImageSet::open(&self.set) {
            Ok(s) => s.images().unwrap().iter().map(|i| i.manifest.image_id.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The source's bytes with the given ranges zeroed.
    fn with_zeros(&self, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut v = self.data.clone();
        for &(s, l) in ranges {
            v[s as usize..(s + l) as usize].fill(0);
        }
        v
    }

    /// The reported unreadable sectors are every permanently bad sector,
    /// and otherwise only flaky ones (whether a flaky sector reads within
    /// the retries depends on how bisection met it).
    fn check_reported(&self, reported: &[(u64, u64)]) {
        let size = self.data.len() as u64;
        let sectors = |ranges: &[(u64, u64)]| -> std::collections::BTreeSet<u64> {
            ranges
                .iter()
                .flat_map(|&(s, l)| (s / SECTOR..(s + l).min(size).div_ceil(SECTOR)).collect::<Vec<_>>())
                .collect()
        };
        let (got, bad, flaky) = (sectors(reported), sectors(&self.bad), sectors(&self.flaky));
        let missing: Vec<u64> = bad.difference(&got).take(8).copied().collect();
        self.check(missing.is_empty(), || format!("bad sectors not reported: {missing:?} (reported {reported:?})"));
        let extra: Vec<u64> = got.iter().filter(|s| !bad.contains(s) && !flaky.contains(s)).take(8).copied().collect();
        self.check(extra.is_empty(), || {
            format!("sectors reported that always read: {extra:?} (reported {reported:?}, bad {:?})", self.bad)
        });
    }

    /// Every committed image verifies clean and restores to its point in time.
    fn check_all(&mut self, step: &str) {
        let ids = self.committed();
        for id in &ids {
            let mut v = VerifyOptions::new(&self.set);
            v.image = Some(id.clone());
            v.io = IoChoice::Portable;
            match unbusy(|| verify(&v, &Quiet)) {
                Ok(r) if r.is_clean() => {}
                Ok(r) => self.fail(&format!("after {step}: image {id} does not verify: {:?}", r.bad_chunks)),
                Err(e) => self.fail(&format!("after {step}: verify of {id} failed: {e}")),
            }
            let Some(want) = self.expected.get(id) else {
                self.fail(&format!("after {step}: image {id} committed, but no run reported it"))
            };
            let target = self.dir.path().join("restored.img");
            let _ = std::fs::remove_file(&target);
            let mut r = RestoreOptions::new(&self.set, &target);
            r.image = Some(id.clone());
            r.io = IoChoice::Portable;
            r.lanes = Some(1);
            if let Err(e) = unbusy(|| restore(&r, &Quiet)) {
                self.fail(&format!("after {step}: restore of {id} failed: {e}"));
            }
            let got = std::fs::read(&target).unwrap();
            if got != *want {
                let at = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                self.fail(&format!(
                    "after {step}: image {id} restores different bytes (first at {at:?}, sizes {} / {})",
                    got.len(),
                    want.len()
                ));
            }
            std::fs::remove_file(&target).unwrap();
            self.check_badmap(step, id);
        }
        self.log.push(format!("{step}: {} committed images verify and restore", ids.len()));
    }

    /// An image with unreadable ranges (a merged one too) has a ddrescue
    /// map beside it whose `-` lines are exactly those ranges.
    fn check_badmap(&mut self, step: &str, id: &str) {
        let manifest = std::fs::read(self.set.join(format!("{id}.manifest.json"))).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let want: Vec<(u64, u64)> = manifest["unreadable"]
            .as_array()
            .map(|a| a.iter().map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap())).collect())
            .unwrap_or_default();
        let map = std::fs::read_to_string(self.set.join(format!("{id}.badmap")));
        let got: Vec<(u64, u64)> = match &map {
            Ok(text) => text
                .lines()
                .filter(|l| l.ends_with('-'))
                .map(|l| {
                    let f: Vec<u64> = l
                        .split_whitespace()
                        .take(2)
                        .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap())
                        .collect();
                    (f[0], f[1])
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        if want.is_empty() != map.is_err() || got != want {
            self.fail(&format!(
                "after {step}: image {id}: badmap {got:?} (present: {}), manifest {want:?}",
                map.is_ok()
            ));
        }
    }

    fn injected(&mut self, what: &str, sim: &Sim) {
        for i in sim.injected() {
            self.log.push(format!("  [{what}] {i}"));
        }
    }

    /// A create (then resumes until it is done); returns the new image.
    fn create_until_done(&mut self, kind: ImageKind) -> String {
        let before = self.committed();
        let mut resume = false;
        self.flaky.clear();
        for attempt in 0.. {
            // The last attempts run with no fault but the bad sectors.
            let mut faults = self.faults(true);
            if attempt >= 2 {
                faults = Faults { bad_reads: faults.bad_reads, ..Faults::default() };
            }
            let sim = Sim::new(self.rng.next(), faults);
            let opts = self.create_options(kind, sim.choice(), resume);
            let skip = opts.on_read_error == OnReadError::Skip;
            let r = unbusy(|| create(&opts, &Quiet));
            self.injected(&format!("create {} attempt {attempt}", kind.name()), &sim);
            match r {
                Ok(rep) => {
                    self.check(!sim.crashed(), || "a run reported success after the machine crashed".into());
                    let m = &rep.manifest;
                    let reported: Vec<(u64, u64)> = m.unreadable.iter().map(|r| (r.offset, r.length)).collect();
                    self.check(skip || reported.is_empty(), || "unreadable ranges without --on-read-error skip".into());
                    self.check_reported(&reported);
                    self.log.push(format!(
                        "create {} attempt {attempt}: ok, image {}, {} unreadable ranges",
                        kind.name(),
                        m.image_id,
                        reported.len()
                    ));
                    let want = self.with_zeros(&reported);
                    self.expected.insert(m.image_id.clone(), want);
                    let now = self.committed();
                    self.check(now.len() == before.len() + 1, || {
                        format!("{} images before, {now:?} after", before.len())
                    });
                    self.check(skip || self.bad.is_empty(), || "bad sectors, no skip, and yet it committed".into());
                    self.check_no_leftovers("a create");
                    return m.image_id.clone();
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.log.push(format!("create {} attempt {attempt}: failed: {msg}", kind.name()));
                    // A failed fsync poisons the segment: it is cut to its
                    // header, so nothing in it is trusted by the resume.
                    if let Some(rest) = msg.strip_prefix("fsync segment ") {
                        let path = rest.split(": ").next().unwrap_or_default();
                        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                        self.check(len == 4096, || {
                            format!("{path} is {len} bytes after its fsync failed, not a header")
                        });
                        self.log.push(format!("  {path} cut to its header"));
                    }
                    if !skip && msg.contains("unreadable") {
                        self.check(msg.contains("--on-read-error skip"), || format!("no way forward named: {msg}"));
                    }
                    self.check(msg.contains(&*self.dir.path().to_string_lossy()), || {
                        format!("the error names no file: {msg}")
                    });
                    if sim.crashed() {
                        sim.power_cut();
                        self.injected("power cut", &sim);
                    }
                    let now = self.committed();
                    self.check(now == before, || format!("a failed run changed the committed images: {now:?}"));
                    self.check_all("a failed create");
                    resume = true;
                    if attempt >= 2 {
                        self.fail("create --resume failed with no fault injected but the bad sectors");
                    }
                }
            }
        }
        unreachable!()
    }

    fn change_source(&mut self) {
        let n = 1 + self.rng.below(6);
        for _ in 0..n {
            let at = self.rng.below(self.data.len() as u64 - 4096) as usize;
            let len = (1 + self.rng.below(4096)) as usize;
            let v = self.rng.next() as u8;
            self.data[at..at + len].iter_mut().for_each(|b| *b = b.wrapping_add(v | 1));
        }
        std::fs::write(&self.source, &self.data).unwrap();
        self.log.push(format!("changed {n} stretches of the source"));
    }

    /// Merge the newest image into its parent under faults, then without.
    fn merge_until_done(&mut self, newest: &str) {
        for attempt in 0..3 {
            let mut faults = if attempt == 0 { self.faults(false) } else { Faults::default() };
            // Sometimes a frame of the image being merged cannot be read.
            if attempt == 0 && self.rng.chance(25) {
                let img = ImageSet::open(&self.set).unwrap().resolve(Some(newest)).unwrap();
                if let Some(seg) = img.manifest.segments.first() {
                    let path = self.set.canonicalize().unwrap().join(&seg.file);
                    faults.bad_reads.push(BadRange { path, start: 4096, len: 4096, times: u32::MAX });
                }
            }
            let sim = Sim::new(self.rng.next(), faults);
            let before = self.committed();
            let opts = MergeOptions {
                set: self.set.clone(),
                image: newest.to_string(),
                span: MergeSpan::Parent,
                io: sim.choice(),
            };
            let r = unbusy(|| merge(&opts, &Quiet));
            self.injected(&format!("merge attempt {attempt}"), &sim);
            match r {
                Ok(rep) => {
                    let want =
                        self.expected.get(&rep.merged.replaces).cloned().expect("expected bytes of the merged image");
                    self.expected.insert(rep.merged.image_id.clone(), want);
                    self.log.push(format!(
                        "merge attempt {attempt}: ok, {} replaces {}",
                        rep.merged.image_id, rep.merged.replaces
                    ));
                    self.check_all("a merge");
                    self.check_no_leftovers("a merge");
                    return;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.log.push(format!("merge attempt {attempt}: failed: {msg}"));
                    self.check(msg.contains(&*self.dir.path().to_string_lossy()), || {
                        format!("the merge error names no file: {msg}")
                    });
                    if sim.crashed() {
                        sim.power_cut();
                        self.injected("power cut", &sim);
                    }
                    let now = self.committed();
                    self.check(now == before, || format!("a failed merge changed the committed images: {now:?}"));
                    self.check_all("a failed merge");
                    if attempt >= 1 {
                        self.fail("merge failed with no fault injected");
                    }
                }
            }
        }
        self.fail("merge did not complete without faults");
    }

    /// Prune to the newest image under faults (it is rewritten onto a
    /// synthetic full image), then without.
    fn prune_until_done(&mut self) {
        for attempt in 0..3 {
            let faults = if attempt == 0 { self.faults(false) } else { Faults::default() };
            let sim = Sim::new(self.rng.next(), faults);
            let before = self.committed();
            let opts = PruneOptions {
                set: self.set.clone(),
                retention: Retention { keep_last: Some(1), ..Default::default() },
                io: sim.choice(),
                ..Default::default()
            };
            let r = unbusy(|| prune(&opts, &Quiet));
            self.injected(&format!("prune attempt {attempt}"), &sim);
            match r {
                Ok(rep) => {
                    for c in &rep.consolidated {
                        let want =
                            self.expected.get(&c.replaces).cloned().expect("expected bytes of the rewritten image");
                        self.expected.insert(c.image_id.clone(), want);
                    }
                    let now = self.committed();
                    self.check(now.len() == 1, || format!("prune --keep-last 1 left {now:?}"));
                    self.log.push(format!("prune attempt {attempt}: ok, {now:?} left"));
                    self.check_all("a prune");
                    self.check_no_leftovers("a prune");
                    return;
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.log.push(format!("prune attempt {attempt}: failed: {msg}"));
                    self.check(msg.contains(&*self.dir.path().to_string_lossy()), || {
                        format!("the prune error names no file: {msg}")
                    });
                    if sim.crashed() {
                        sim.power_cut();
                        self.injected("power cut", &sim);
                    }
                    let now = self.committed();
                    self.check(now == before, || format!("a failed prune changed the committed images: {now:?}"));
                    self.check_all("a failed prune");
                    if attempt >= 1 {
                        self.fail("prune failed with no fault injected");
                    }
                }
            }
        }
        self.fail("prune did not complete without faults");
    }

    /// Verify with one frame unreadable: never clean.
    fn verify_with_a_bad_frame(&mut self) {
        let set = ImageSet::open(&self.set).unwrap();
        let img = set.resolve(None).unwrap();
        let idx = img.read_index().unwrap();
        let stored: Vec<(u64, tintype::format::index::IndexEntry)> = idx
            .entries
            .iter()
            .enumerate()
            .filter_map(|(c, e)| e.as_ref().ok().map(|e| (c as u64, *e)))
            .filter(|(_, e)| e.state == tintype::format::index::ChunkState::Stored)
            .collect();
        if stored.is_empty() {
            return;
        }
        let (chunk, e) = stored[self.rng.below(stored.len() as u64) as usize];
        let path = img.segment_path(e.segment as usize).canonicalize().unwrap();
        let faults = Faults {
            bad_reads: vec![BadRange { path, start: e.offset, len: 4096, times: u32::MAX }],
            ..Faults::default()
        };
        let sim = Sim::new(self.rng.next(), faults);
        let mut v = VerifyOptions::new(&self.set);
        v.io = sim.choice();
        v.lanes = Some(1);
        match unbusy(|| verify(&v, &Quiet)) {
            Ok(r) => self.check(r.bad_chunks.iter().any(|b| b.chunk == chunk), || {
                format!("verify with chunk {chunk}'s frame unreadable reported {:?}", r.bad_chunks)
            }),
            Err(e) => {
                let msg = e.to_string();
                self.check(msg.contains(&*self.dir.path().to_string_lossy()), || {
                    format!("verify error names no file: {msg}")
                })
            }
        }
        self.log.push(format!("verify with chunk {chunk} unreadable: reported"));
    }

    /// Restore under faults: fails naming the target, or is exact.
    fn restore_under_faults(&mut self) {
        let id = self.committed().pop().unwrap();
        let mut faults = self.faults(false);
        faults.crash_at_write = None;
        let sim = Sim::new(self.rng.next(), faults);
        let target = self.dir.path().join("restore-faults.img");
        let _ = std::fs::remove_file(&target);
        let mut r = RestoreOptions::new(&self.set, &target);
        r.image = Some(id.clone());
        r.io = sim.choice();
        r.lanes = Some(1);
        r.verify_after = self.rng.chance(50);
        let res = unbusy(|| restore(&r, &Quiet));
        self.injected("restore", &sim);
        match res {
            Ok(_) => {
                let got = std::fs::read(&target).unwrap();
                self.check(got == self.expected[&id], || "restore reported success with different bytes".into());
                self.log.push("restore under faults: ok, identical".into());
            }
            Err(e) => {
                let msg = e.to_string();
                self.check(msg.contains("restore-faults.img"), || format!("restore error names no target: {msg}"));
                self.log.push(format!("restore under faults: failed: {msg}"));
            }
        }
        let _ = std::fs::remove_file(&target);
    }
}

fn one_seed(seed: u64) {
    let mut w = World::new(seed);
    // A third of the sources have a few bad sectors.
    if w.rng.chance(33) {
        for _ in 0..1 + w.rng.below(3) {
            let at = w.rng.below(w.data.len() as u64 / SECTOR) * SECTOR;
            let most = if w.rng.chance(20) { 200 } else { 4 };
            let len = SECTOR * (1 + w.rng.below(most));
            let len = len.min(w.data.len() as u64 - at);
            w.bad.push((at, len));
        }
        w.log.push(format!("source {} bytes, bad sectors {:?}", w.data.len(), w.bad));
    } else {
        w.log.push(format!("source {} bytes", w.data.len()));
    }
    w.create_until_done(ImageKind::Full);
    w.check_all("the full image");
    w.change_source();
    let inc = w.create_until_done(ImageKind::Incremental);
    w.check_all("the incremental");
    w.change_source();
    w.create_until_done(ImageKind::Differential);
    w.check_all("the differential");
    w.verify_with_a_bad_frame();
    w.restore_under_faults();
    w.merge_until_done(&inc);
    w.prune_until_done();
    w.check_all("the end");
    if std::env::var_os("TINTYPE_SIM_VERBOSE").is_some() {
        println!("seed {seed}:\n  {}", w.log.join("\n  "));
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("TINTYPE_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("TINTYPE_SIM_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100u64);
    (1..=n).collect()
}

#[test]
fn seeded_faults_never_lose_a_committed_image() {
    for seed in seeds() {
        one_seed(seed);
    }
}

/// The unreadable-ranges journal of an interrupted run: resumed without
/// `--on-read-error skip`, the kept chunks that hold zeros are read again
/// (and the run fails on them, as asked); a journal that cannot be parsed
/// is refused rather than trusted or ignored; with skip it completes and
/// reports exactly the bad sectors.
#[test]
fn an_interrupted_runs_unreadable_journal_is_honoured() {
    let data = mixed_bytes(3 << 20, 99);
    let (dir, source, set) = source_and_set(&data);
    let bad = BadRange { path: source.clone(), start: 2 * CHUNK + 4096, len: 1024, times: u32::MAX };
    let opts = |sim: &std::sync::Arc<Sim>, skip: bool, resume: bool| {
        let mut o = CreateOptions::new(&source, &set);
        o.lanes = Some(1);
        o.chunk_size_bytes = CHUNK as u32;
        o.chunk_size_given = !resume;
        o.staging_bytes = Some(0);
        o.segment_size_bytes = 512 << 10;
        o.used_only = tintype::pipeline::capture::UsedOnly::Off;
        o.io = sim.choice();
        o.on_read_error = if skip { OnReadError::Skip } else { OnReadError::Fail };
        o.resume = resume;
        o
    };
    // Crash after the bad chunk's frame is written (chunks 0-3 fill the first two writes).
    let sim = Sim::new(1, Faults { bad_reads: vec![bad.clone()], crash_at_write: Some(4), ..Faults::default() });
    assert!(create(&opts(&sim, true, false), &Quiet).is_err() && sim.crashed());
    let journal = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "unreadable"))
        .expect("the run journals its unreadable ranges");
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), format!("{} 1024\n", bad.start));

    // Garbage in the journal: refused, naming it and the way out.
    let kept = std::fs::read(&journal).unwrap();
    std::fs::write(&journal, b"12 x\n").unwrap();
    let sim = Sim::new(2, Faults { bad_reads: vec![bad.clone()], ..Faults::default() });
    let e = create(&opts(&sim, true, true), &Quiet).unwrap_err().to_string();
    assert!(e.contains(".unreadable") && e.contains("--discard-unfinished"), "{e}");
    std::fs::write(&journal, &kept).unwrap();

    // Without skip, the kept chunk with zeros is read again, and fails.
    let sim = Sim::new(3, Faults { bad_reads: vec![bad.clone()], ..Faults::default() });
    let e = create(&opts(&sim, false, true), &Quiet).unwrap_err().to_string();
    assert!(e.contains("unreadable") && e.contains(&(bad.start).to_string()), "{e}");

    // With skip it completes, reporting the bad sectors, and restores.
    let sim = Sim::new(4, Faults { bad_reads: vec![bad.clone()], ..Faults::default() });
    let r = create(&opts(&sim, true, true), &Quiet).unwrap();
    let got: Vec<(u64, u64)> = r.manifest.unreadable.iter().map(|b| (b.offset, b.length)).collect();
    assert_eq!(got, vec![(bad.start, 1024)]);
    let target = dir.path().join("restored.img");
    let mut ro = RestoreOptions::new(&set, &target);
    ro.io = IoChoice::Portable;
    restore(&ro, &Quiet).unwrap();
    let mut want = data.clone();
    want[bad.start as usize..bad.start as usize + 1024].fill(0);
    assert!(std::fs::read(&target).unwrap() == want);
    assert!(!journal.exists(), "the journal goes at commit");
}

/// A run is interrupted, then the source is written before `--resume`: the
/// kept frames hold bytes the source no longer has, so the resume says so,
/// drops them and images the source afresh (same kind, same chunk size).
/// Left unwritten, the source's kept frames are used.
#[test]
fn a_resume_after_the_source_was_written_starts_afresh() {
    for written in [false, true] {
        let mut data = mixed_bytes(2 << 20, 7);
        let (dir, source, set) = source_and_set(&data);
        let opts = |sim: Option<&std::sync::Arc<Sim>>, resume: bool| one_lane(&source, &set, sim, resume);
        let sim = Sim::new(1, Faults { crash_at_write: Some(6), ..Faults::default() });
        assert!(create(&opts(Some(&sim), false), &Quiet).is_err() && sim.crashed());
        if written {
            // Bytes of a chunk the interrupted run already stored.
            data[100..4196].fill(0xA5);
            std::fs::write(&source, &data).unwrap();
        }
        let notes = std::sync::Mutex::new(Vec::new());
        let r = create(&opts(None, true), &Notes(&notes)).unwrap();
        let notes = notes.into_inner().unwrap().join("\n");
        let resumed = r.manifest.stats.chunks_resumed;
        if written {
            assert_eq!(resumed, 0, "nothing of the old run is kept");
            assert!(notes.contains("the source was written since"), "{notes}");
            assert_eq!(r.manifest.chunk_size_bytes, CHUNK as u32, "the run's chunk size is kept");
        } else {
            assert!(resumed > 0, "the run's frames are used: {notes}");
        }
        let target = dir.path().join("restored.img");
        let mut ro = RestoreOptions::new(&set, &target);
        ro.io = IoChoice::Portable;
        restore(&ro, &Quiet).unwrap();
        assert!(std::fs::read(&target).unwrap() == data, "written {written}: the image holds the source as it is");
        let names: Vec<String> = std::fs::read_dir(&set)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("tintype") && !n.starts_with(&r.manifest.image_id))
            .collect();
        assert!(names.is_empty(), "the stale run's files are gone: {names:?}");
    }
}

/// An observer that keeps the notes.
struct Notes<'a>(&'a std::sync::Mutex<Vec<String>>);

impl tintype::Observer for Notes<'_> {
    fn note(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn progress(&self, _done: u64, _total: u64) {}
}

/// A manifest that (edited by hand) names an unfinished create run among
/// the images it replaces: prune leaves the run alone, and it resumes.
#[test]
fn a_false_claim_on_an_unfinished_run_leaves_it_resumable() {
    let data = mixed_bytes(2 << 20, 8);
    let (_dir, source, set) = source_and_set(&data);
    let opts = |sim: Option<&std::sync::Arc<Sim>>, resume: bool| one_lane(&source, &set, sim, resume);
    let full = create(&opts(None, false), &Quiet).unwrap();
    let sim = Sim::new(1, Faults { crash_at_write: Some(6), ..Faults::default() });
    assert!(create(&opts(Some(&sim), false), &Quiet).is_err());
    let run = std::fs::read_dir(&set)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find_map(|n| n.strip_suffix(".run.json").map(str::to_string))
        .expect("the crashed run's record");
    let path = full.manifest_path.clone();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["replaces"] = serde_json::json!([run]);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let p = PruneOptions {
        set: set.clone(),
        retention: Retention { keep_last: Some(10), ..Default::default() },
        io: IoChoice::Portable,
        ..Default::default()
    };
    prune(&p, &Quiet).unwrap();
    assert!(set.join(format!("{run}.run.json")).exists(), "the unfinished run is kept");
    let r = create(&opts(None, true), &Quiet).unwrap();
    assert_eq!(r.manifest.image_id, run);
    assert!(r.manifest.stats.chunks_resumed > 0, "and resumes");
}

/// The destination fills in the middle of a large write: whether the write
/// comes back short or fails whole (as O_DIRECT on ext4 does), every frame
/// that fits is written first, so `--resume` keeps them all.
#[test]
fn a_full_disk_keeps_every_frame_that_fits() {
    for all_or_nothing in [false, true] {
        let data = tintype::sample::random_bytes(4 << 20, 12);
        let (dir, source, set) = source_and_set(&data);
        // The default staging: one large write holds many frames.
        let opts = |sim: Option<&std::sync::Arc<Sim>>, resume: bool| CreateOptions {
            staging_bytes: None,
            ..one_lane(&source, &set, sim, resume)
        };
        let space = 1u64 << 20;
        let faults = Faults { space_bytes: Some(space), space_all_or_nothing: all_or_nothing, ..Faults::default() };
        let sim = Sim::new(1, faults);
        let e = create(&opts(Some(&sim), false), &Quiet).unwrap_err().to_string();
        assert!(e.contains("ENOSPC") || e.contains("no space"), "{e}");
        let r = create(&opts(None, true), &Quiet).unwrap();
        // Incompressible 64 KiB chunks: a frame is 17 pages.
        let fits = (space - 4096) / (17 * 4096);
        assert!(
            r.manifest.stats.chunks_resumed >= fits - 1,
            "all or nothing {all_or_nothing}: kept {} of the {fits} frames that fit",
            r.manifest.stats.chunks_resumed
        );
        let target = dir.path().join("restored.img");
        let mut ro = RestoreOptions::new(&set, &target);
        ro.io = IoChoice::Portable;
        restore(&ro, &Quiet).unwrap();
        assert!(std::fs::read(&target).unwrap() == data);
    }
}

/// A create of `source` into `set` on one lane with 64 KiB chunks, every
/// frame written at once (no staging), the whole source read (no used-space
/// map), through `sim` or the portable backend; `resume` carries a run on.
fn one_lane(
    source: &std::path::Path,
    set: &std::path::Path,
    sim: Option<&std::sync::Arc<Sim>>,
    resume: bool,
) -> CreateOptions {
    let mut o = CreateOptions::new(source, set);
    o.lanes = Some(1);
    o.chunk_size_bytes = CHUNK as u32;
    o.chunk_size_given = !resume;
    o.staging_bytes = Some(0);
    o.used_only = tintype::pipeline::capture::UsedOnly::Off;
    o.io = sim.map_or(IoChoice::Portable, |s| s.choice());
    o.resume = resume;
    o
}

/// A scratch directory holding `data` as `source.img` (its canonical path)
/// and the path of a set beside it.
fn source_and_set(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch();
    let source = dir.path().join("source.img");
    std::fs::write(&source, data).unwrap();
    let source = source.canonicalize().unwrap();
    let set = dir.path().join("set");
    (dir, source, set)
}
