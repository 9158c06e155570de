//! The names of the files in an image set (FORMAT §1): every file tintype
//! writes for an image is named by its Image ID and what the file is, and
//! nothing else is ever treated as part of an image or removed with one.

use super::ImageId;

/// `ID.manifest.json`: the committed manifest.
pub fn manifest_file_name(id: ImageId) -> String {
    format!("{id}.manifest.json")
}

/// `ID.index`: the chunk table.
pub fn index_file_name(id: ImageId) -> String {
    format!("{id}.index")
}

/// `ID.NNNNNN.seg`: segment `seq` of the image.
pub fn segment_file_name(id: ImageId, seq: u32) -> String {
    format!("{id}.{seq:06}.seg")
}

/// `ID.run.json`: what an unfinished run (create or merge) is doing.
pub fn run_file_name(id: ImageId) -> String {
    format!("{id}.run.json")
}

/// `ID.removed.json`: the marker a removal leaves while it deletes an
/// image's data files.
pub fn removed_file_name(id: ImageId) -> String {
    format!("{id}.removed.json")
}

/// `ID.badmap`: a ddrescue map of the source ranges that could not be read.
pub fn badmap_file_name(id: ImageId) -> String {
    format!("{id}.badmap")
}

/// `ID.unreadable`: an unfinished run's journal of unreadable ranges.
pub fn journal_file_name(id: ImageId) -> String {
    format!("{id}.unreadable")
}

/// What one of an image's files is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Manifest,
    Index,
    Segment(u32),
    RunRecord,
    RemovalMarker,
    Badmap,
    Journal,
}

/// A file name tintype writes for an image, taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    pub id: ImageId,
    pub kind: FileKind,
    /// `.tmp`: still being written, not yet in place.
    pub temporary: bool,
}

/// Take a file name apart, when it is one of the above (or one of them with
/// `.tmp` while being written). Nothing else is ever listed as part of a run
/// or removed with an image: a user's `cafebabecafebabe.jpg` beside the
/// images is neither.
pub fn parse_file_name(name: &str) -> Option<FileName> {
    let id = name.get(..16).and_then(ImageId::parse)?;
    let rest = name.get(16..)?.strip_prefix('.')?;
    let (rest, temporary) = match rest.strip_suffix(".tmp") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let kind = match rest {
        "manifest.json" => FileKind::Manifest,
        "index" => FileKind::Index,
        "run.json" => FileKind::RunRecord,
        "removed.json" => FileKind::RemovalMarker,
        "badmap" => FileKind::Badmap,
        "unreadable" => FileKind::Journal,
        _ => {
            let n = rest.strip_suffix(".seg").filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))?;
            FileKind::Segment(n.parse().ok()?)
        }
    };
    Some(FileName { id, kind, temporary })
}

/// The image a file belongs to, when its name is one tintype writes.
pub fn image_file_id(name: &str) -> Option<ImageId> {
    parse_file_name(name).map(|f| f.id)
}

/// Is this a committed manifest's name?
pub fn is_manifest_name(name: &str) -> bool {
    parse_file_name(name).is_some_and(|f| f.kind == FileKind::Manifest && !f.temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_and_taken_apart_alike() {
        let id = ImageId(0xab);
        let parse = |n: String| parse_file_name(&n).map(|f| (f.id, f.kind, f.temporary));
        assert_eq!(parse(manifest_file_name(id)), Some((id, FileKind::Manifest, false)));
        assert_eq!(parse(segment_file_name(id, 12)), Some((id, FileKind::Segment(12), false)));
        assert_eq!(parse(format!("{}.tmp", run_file_name(id))), Some((id, FileKind::RunRecord, true)));
        assert_eq!(parse(badmap_file_name(id)), Some((id, FileKind::Badmap, false)));
        assert_eq!(parse(journal_file_name(id)), Some((id, FileKind::Journal, false)));
        assert_eq!(parse(removed_file_name(id)), Some((id, FileKind::RemovalMarker, false)));
        assert_eq!(parse(index_file_name(id)), Some((id, FileKind::Index, false)));
        for foreign in ["cafebabecafebabe.jpg", "00000000000000ab.12.seg", "00000000000000ab.seg.bak", "x.index"] {
            assert_eq!(parse_file_name(foreign), None, "{foreign}");
        }
        assert!(!is_manifest_name(&format!("{}.tmp", manifest_file_name(id))));
    }
}
