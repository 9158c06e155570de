//! Golden fixtures pin the format: small images committed under
//! `tests/fixtures/v1/set` (format version 1, written by earlier builds) and
//! `tests/fixtures/v2/set` (version 2, what this build writes), made from
//! deterministic sources. A change that alters a single byte of a version-2
//! index or of a segment fails here, so a format change is always
//! deliberate (bump the version, add new fixtures, keep the old ones
//! readable or refused with a clear message).
//!
//! Regenerate the version-2 fixture (only together with a format change):
//! `TINTYPE_REGENERATE_FIXTURES=1 cargo test -p tintype --test tests golden`

use std::path::{Path, PathBuf};

use tintype::format::index::{ChunkState, Run, INDEX_HEADER_BYTES, RUN_RECORD_BYTES};

use crate::util::*;

const ID: &str = "0123456789abcdef";
const CHILD: &str = "fedcba9876543210";
const SOURCE_BYTES: usize = 300 * 1024 + 100;
const SEED: u64 = 42;
/// The version-2 fixture's source: 24 chunks of 64 KiB, the last short.
const V2_SOURCE_BYTES: usize = (23 << 16) + 1000;
const V2_SEED: u64 = 7;

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}/set"))
}

fn create(sb: &Sandbox, src: &str, set: &str, id: &str, extra: &[&str]) {
    let mut args = vec!["create", src, set, "--chunk-size", "64K", "--lanes", "1", "--level", "3", "--io", "portable"];
    args.extend_from_slice(&["--image-id", id]);
    args.extend_from_slice(extra);
    sb.expect(&args, 0);
}

/// The version-2 fixture's sources: a full image's, and the incremental's
/// (two chunks changed). Zeros in runs, so the index holds runs of zero
/// chunks, and inherited runs in the incremental.
fn v2_sources() -> (Vec<u8>, Vec<u8>) {
    let mut full = mixed_bytes(V2_SOURCE_BYTES, V2_SEED);
    // Chunks 5..12 zero, and no other chunk all zeros.
    for c in (0..24).filter(|c| !(5..12).contains(c)) {
        full[c << 16] = 0xa5;
    }
    full[5 << 16..12 << 16].fill(0);
    let mut child = full.clone();
    child[(2 << 16) + 10] ^= 0xff;
    child[(14 << 16) + 10..(15 << 16) - 1].fill(0x42);
    (full, child)
}

fn make_v2(sb: &Sandbox, set: &str) {
    let (full, child) = v2_sources();
    std::fs::write(sb.path("golden-v2.img"), &full).unwrap();
    create(sb, "golden-v2.img", set, ID, &[]);
    std::fs::write(sb.path("golden-v2.img"), &child).unwrap();
    create(sb, "golden-v2.img", set, CHILD, &["--incremental"]);
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn copy_of(sb: &Sandbox, fixture: &Path, name: &str) -> PathBuf {
    let copy = sb.path(name);
    std::fs::create_dir_all(&copy).unwrap();
    for f in files(fixture) {
        std::fs::copy(fixture.join(&f), copy.join(&f)).unwrap();
    }
    copy
}

/// The runs of a version-2 index file, decoded by hand from FORMAT §5.
fn runs_of(index: &[u8]) -> Vec<Run> {
    let records = u64::from_le_bytes(index[48..56].try_into().unwrap()) as usize;
    assert_eq!(index.len(), INDEX_HEADER_BYTES + records * RUN_RECORD_BYTES, "64-byte header, 64-byte records");
    let (id, parent) =
        (u64::from_le_bytes(index[16..24].try_into().unwrap()), u64::from_le_bytes(index[40..48].try_into().unwrap()));
    let parent = (parent != 0).then_some(tintype::format::ImageId(parent));
    index[INDEX_HEADER_BYTES..]
        .chunks_exact(RUN_RECORD_BYTES)
        .map(|b| Run::decode(b, tintype::format::ImageId(id), parent).unwrap())
        .collect()
}

#[test]
fn golden_v1_fixture_is_read_verified_restored_and_extended_by_a_v2_incremental() {
    let sb = Sandbox::new();
    let fixture = fixture_dir(1);
    assert_eq!(
        files(&fixture),
        vec![format!("{ID}.000000.seg"), format!("{ID}.index"), format!("{ID}.manifest.json"),],
        "the v1 fixture holds one image: segment, index, manifest"
    );
    // Read from a copy: verify must not need to write, but the repo stays untouched regardless.
    let copy = copy_of(&sb, &fixture, "fixture");
    let source = mixed_bytes(SOURCE_BYTES, SEED);
    sb.expect(&["verify", "fixture"], 0);
    assert_round_trip(&copy, &source);
    sb.expect(&["restore", "fixture", "out.img"], 0);
    assert!(std::fs::read(sb.path("out.img")).unwrap() == source, "v1 image restored byte for byte");

    let idx = std::fs::read(copy.join(format!("{ID}.index"))).unwrap();
    assert_eq!(&idx[..8], b"TTindex\0");
    assert_eq!(u16::from_le_bytes([idx[8], idx[9]]), 1);
    assert_eq!(idx.len(), 64 + 48 * SOURCE_BYTES.div_ceil(65536));

    // Segments and frames have the same layout in version 2: the same
    // source with the same settings today gives the same segment bytes.
    std::fs::write(sb.path("golden-src.img"), &source).unwrap();
    create(&sb, "golden-src.img", "fresh", ID, &[]);
    let seg = format!("{ID}.000000.seg");
    let (a, b) = (std::fs::read(copy.join(&seg)).unwrap(), std::fs::read(sb.path("fresh").join(&seg)).unwrap());
    assert!(a == b, "{seg} differs from the golden fixture: the segment layout changed");
    let (old, _) = load(&copy);
    assert_eq!(old.manifest.format_version, 1);
    assert_eq!(old.manifest.segments, load(&sb.path("fresh")).0.manifest.segments);

    // A version-2 incremental on a version-1 parent: verified, restored,
    // and merged into one version-2 image.
    let mut changed = source.clone();
    changed[70_000..71_000].fill(7);
    std::fs::write(sb.path("golden-src.img"), &changed).unwrap();
    let v = json(&sb.expect(&["create", "golden-src.img", "fixture", "--incremental", "--force", "--json"], 0));
    let child = v["manifest"]["image_id"].as_str().unwrap().to_string();
    assert_eq!(v["manifest"]["format_version"], 2);
    assert_eq!(v["manifest"]["stats"]["chunks_inherited"], 4, "4 of 5 chunks unchanged");
    sb.expect(&["verify", "fixture"], 0);
    assert_image_holds(&copy, Some(&child), &changed);
    assert_image_holds(&copy, Some(ID), &source);
    sb.expect(&["merge", &format!("fixture@{child}")], 0);
    sb.expect(&["verify", "fixture"], 0);
    assert_round_trip(&copy, &changed);
}

#[test]
fn golden_v2_fixture_is_read_verified_and_reproduced_byte_for_byte() {
    let sb = Sandbox::new();
    if std::env::var_os("TINTYPE_REGENERATE_FIXTURES").is_some() {
        make_v2(&sb, "regen");
        let dir = fixture_dir(2);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files(&sb.path("regen")).into_iter().filter(|f| !f.starts_with("tintype.")) {
            std::fs::copy(sb.path("regen").join(&f), dir.join(&f)).unwrap();
        }
        eprintln!("regenerated {}", dir.display());
    }
    let fixture = fixture_dir(2);
    let names: Vec<String> = [ID, CHILD]
        .iter()
        .flat_map(|id| [format!("{id}.000000.seg"), format!("{id}.index"), format!("{id}.manifest.json")])
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(files(&fixture), sorted, "the v2 fixture holds a full image and an incremental");
    let copy = copy_of(&sb, &fixture, "fixture");
    let (full, child) = v2_sources();
    sb.expect(&["verify", &format!("fixture@{ID}")], 0);
    sb.expect(&["verify", &format!("fixture@{CHILD}")], 0);
    assert_image_holds(&copy, Some(ID), &full);
    assert_image_holds(&copy, Some(CHILD), &child);

    // The full image's index, as FORMAT §5 describes it: chunks 0..5
    // stored one record each, chunks 5..12 one zero run, and so on.
    let full_runs = runs_of(&std::fs::read(copy.join(format!("{ID}.index"))).unwrap());
    let zero = full_runs.iter().find(|r| r.entry.state == ChunkState::Zero).expect("a zero run");
    assert_eq!((zero.first, zero.count), (5, 7), "seven zero chunks, one record");
    assert!(full_runs.iter().all(|r| r.entry.state != ChunkState::Stored || r.count == 1));
    assert_eq!(full_runs.last().unwrap().entry.raw_len, 1000, "the short last chunk");
    // The incremental: two chunks stored, the rest inherited in runs.
    let child_runs = runs_of(&std::fs::read(copy.join(format!("{CHILD}.index"))).unwrap());
    let shape: Vec<(u64, u64, ChunkState)> = child_runs.iter().map(|r| (r.first, r.count, r.entry.state)).collect();
    use ChunkState::{Inherited as I, Stored as S, Zero as Z};
    assert_eq!(
        shape,
        vec![(0, 2, I), (2, 1, S), (3, 11, I), (14, 1, S), (15, 8, I), (23, 1, I)],
        "stored chunks one record each; unchanged chunks (zero ones too) one inherited record a run (the short last \
         chunk its own)"
    );
    assert!(child_runs.iter().all(|r| r.entry.state != Z));
    assert!(
        child_runs.iter().filter(|r| r.entry.state == I).all(|r| r.entry.raw_hash == 0),
        "no hash in inherited runs"
    );

    // Writing the same sources with the same settings today gives the same bytes.
    make_v2(&sb, "fresh");
    for f in names.iter().filter(|f| !f.ends_with(".json")) {
        let a = std::fs::read(copy.join(f)).unwrap();
        let b = std::fs::read(sb.path("fresh").join(f)).unwrap();
        assert!(a == b, "{f} differs from the golden fixture: the on-disk format changed");
    }
    for id in [ID, CHILD] {
        let set = ImageSetRef(&copy);
        let (old, new) = (set.image(id), ImageSetRef(&sb.path("fresh")).image(id));
        assert_eq!(old.manifest.segments, new.manifest.segments);
        assert_eq!(old.manifest.index, new.manifest.index);
        assert_eq!(old.manifest.format_version, 2);
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An image of a set by its ID.
struct ImageSetRef<'a>(&'a Path);

impl ImageSetRef<'_> {
    fn image(&self, id: &str) -> tintype::set::image::Image {
        tintype::set::ImageSet::open(self.0).unwrap().resolve(Some(id)).unwrap()
    }
}
