//! Golden fixtures pin format version 1: a small image committed under
//! `tests/fixtures/v1/set`, made from a deterministic source. A change that
//! alters a single byte of the index or segments fails here, so a format
//! change is always deliberate (bump the version, add new fixtures, keep the
//! old ones readable or refused with a clear message).
//!
//! Regenerate (only together with a format change):
//! `TINTYPE_REGENERATE_FIXTURES=1 cargo test -p tintype --test tests golden`

use std::path::{Path, PathBuf};

use crate::util::*;

const ID: &str = "0123456789abcdef";
const SOURCE_BYTES: usize = 300 * 1024 + 100;
const SEED: u64 = 42;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/set")
}

fn make(sb: &Sandbox, set: &str) {
    std::fs::write(sb.path("golden-src.img"), mixed_bytes(SOURCE_BYTES, SEED)).unwrap();
    sb.expect(
        &[
            "create",
            "golden-src.img",
            set,
            "--chunk-size",
            "64K",
            "--lanes",
            "1",
            "--level",
            "3",
            "--io",
            "portable",
            "--image-id",
            ID,
        ],
        0,
    );
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn golden_v1_fixture_is_read_verified_and_reproduced_byte_for_byte() {
    let sb = Sandbox::new();
    if std::env::var_os("TINTYPE_REGENERATE_FIXTURES").is_some() {
        make(&sb, "regen");
        let dir = fixture_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files(&sb.path("regen")) {
            std::fs::copy(sb.path("regen").join(&f), dir.join(&f)).unwrap();
        }
        eprintln!("regenerated {}", dir.display());
    }
    let fixture = fixture_dir();
    assert_eq!(
        files(&fixture),
        vec![format!("{ID}.000000.seg"), format!("{ID}.index"), format!("{ID}.manifest.json"),],
        "the v1 fixture holds one image: segment, index, manifest"
    );
    // Read from a copy: verify must not need to write, but the repo stays untouched regardless.
    let copy = sb.path("fixture");
    std::fs::create_dir_all(&copy).unwrap();
    for f in files(&fixture) {
        std::fs::copy(fixture.join(&f), copy.join(&f)).unwrap();
    }
    let source = mixed_bytes(SOURCE_BYTES, SEED);
    sb.expect(&["verify", "fixture"], 0);
    assert_round_trip(&copy, &source);

    let seg = std::fs::read(copy.join(format!("{ID}.000000.seg"))).unwrap();
    let idx = std::fs::read(copy.join(format!("{ID}.index"))).unwrap();
    assert_eq!(&seg[..8], b"TTsegmnt");
    assert_eq!(&seg[4096..4100], b"TTfr", "the first frame follows the 4096-byte segment header");
    assert_eq!(&idx[..8], b"TTindex\0");
    assert_eq!(idx.len(), 64 + 48 * SOURCE_BYTES.div_ceil(65536));

    // Writing the same source with the same settings today gives the same bytes.
    make(&sb, "fresh");
    for f in [format!("{ID}.000000.seg"), format!("{ID}.index")] {
        let a = std::fs::read(copy.join(&f)).unwrap();
        let b = std::fs::read(sb.path("fresh").join(&f)).unwrap();
        assert!(a == b, "{f} differs from the golden fixture: the on-disk format changed");
    }
    let (old, _) = load(&copy);
    let (new, _) = load(&sb.path("fresh"));
    assert_eq!(old.manifest.segments, new.manifest.segments);
    assert_eq!(old.manifest.index, new.manifest.index);
    assert_eq!(old.manifest.format_version, 1);
}
