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

/// The image a file belongs to, when its name is one of the above (or one
/// of them with `.tmp` while being written). Nothing else is ever listed as
/// part of a run or removed with an image: a user's `cafebabecafebabe.jpg`
/// beside the images is neither.
pub fn image_file_id(name: &str) -> Option<ImageId> {
    let id = name.get(..16).and_then(ImageId::parse)?;
    let rest = name.get(16..)?.strip_prefix('.')?;
    let rest = rest.strip_suffix(".tmp").unwrap_or(rest);
    let known = matches!(rest, "manifest.json" | "index" | "run.json" | "removed.json" | "badmap" | "unreadable")
        || rest.strip_suffix(".seg").is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
    known.then_some(id)
}

/// Is this a manifest's name (a committed image's)?
pub fn is_manifest_name(name: &str) -> bool {
    name.get(16..) == Some(".manifest.json") && image_file_id(name).is_some()
}
