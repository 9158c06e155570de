//! The manifest: an image's metadata, as JSON. Writing it — to a temporary
//! name, fsynced, renamed without replacing, and the directory fsynced — is
//! what commits an image. See `docs/FORMAT.md` for every field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ImageId, FORMAT_VERSION};

/// The value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "tintype-image";

/// What kind of capture an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Full,
    Differential,
    Incremental,
}

impl ImageKind {
    /// The name the manifest uses.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Full => "full",
            ImageKind::Differential => "differential",
            ImageKind::Incremental => "incremental",
        }
    }

    /// The name with its article, for messages: "a full", "an incremental".
    pub fn a(self) -> &'static str {
        match self {
            ImageKind::Full => "a full",
            ImageKind::Differential => "a differential",
            ImageKind::Incremental => "an incremental",
        }
    }
}

/// The source an image was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    /// "block-device" or "file".
    pub kind: String,
    pub size_bytes: u64,
    pub logical_sector_bytes: u32,
    pub physical_sector_bytes: u32,
    /// What the kernel tells about the device's identity (serial, wwid, model,
    /// loop backing file, device number); absent keys were not exposed.
    pub identity: BTreeMap<String, String>,
}

/// The settings a run used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub lanes: u32,
    pub queue_depth: u32,
    pub segment_size_bytes: u64,
    pub batch_chunks: u32,
    /// "io_uring", "portable", or "io_uring+portable" (some lanes fell back).
    pub io_backend: String,
    /// Whether the source was read with O_DIRECT.
    pub source_direct_io: bool,
    /// The profile the settings came from (flags override it), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Statistics of the run that made the image.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub bytes_read: u64,
    pub chunks_stored: u64,
    pub chunks_zero: u64,
    pub chunks_stored_raw: u64,
    pub bytes_stored_raw: u64,
    pub bytes_stored_payload: u64,
    pub bytes_segments: u64,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub stage_seconds: BTreeMap<String, f64>,
    /// Latency of the source reads in µs, from submission until the lane
    /// reaped the completion (so it includes time a finished read waited
    /// while the lane compressed):
    /// p50, p90, p99, p999, max, and the number of reads (count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub read_latency_us: BTreeMap<String, u64>,
    /// Chunks found unchanged since the parent image and recorded as
    /// inherited (differential and incremental images).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_inherited: u64,
    /// Chunks kept from the frames an interrupted run had already written
    /// (`create --resume`), so not read again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_resumed: u64,
    /// Frames copied from other images (an image written by `merge`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_copied: u64,
    /// Chunks no filesystem on the source uses: not read, not stored (state 3).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_unused: u64,
    /// Chunks of which no byte could be read (state 4, `--on-read-error skip`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One segment file of the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub file: String,
    pub lane: u32,
    pub seq: u32,
    pub size_bytes: u64,
    pub frames: u64,
    /// xxh3-64 of the whole file.
    pub xxh3_64: super::Xxh64,
}

/// The image's index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub file: String,
    pub size_bytes: u64,
    /// xxh3-128 of the whole file.
    pub xxh3_128: super::Xxh128,
}

/// An image's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub image_id: String,
    pub kind: ImageKind,
    pub parent: Option<String>,
    pub created_unix_seconds: u64,
    /// The same instant in nanoseconds, so images taken within one second
    /// (and images a merge wrote for them) keep their order. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_unix_nanos: Option<u64>,
    pub created: String,
    pub tool_version: String,
    pub source: SourceInfo,
    pub chunk_size_bytes: u32,
    pub chunk_count: u64,
    pub codec: String,
    pub level: i32,
    pub frame_align_bytes: u32,
    pub settings: Settings,
    pub stats: Stats,
    pub segments: Vec<SegmentInfo>,
    pub index: IndexInfo,
    /// Images this one stands in for: an image written by `merge` holds the
    /// same point in time as the image it consolidated, and takes its place
    /// as the parent of that image's children. Transitive: it also lists
    /// what the consolidated image replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    /// The source's partitions and filesystems, and how much of it was
    /// recorded as unused (used-space imaging). Absent when not looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutInfo>,
    /// Source byte ranges that could not be read (`--on-read-error skip`):
    /// stored as zeros (or, for a chunk with no readable byte, state 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<ByteRange>,
}

/// A range of source bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

/// What `create` found on the source (see `engine/src/fs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutInfo {
    pub table: PartitionTable,
    /// The `--used-only` mode: a map was used where one could be made.
    pub used_only: UsedOnlyMode,
    pub partitions: Vec<PartitionInfo>,
    /// Source bytes in chunks recorded as unused (not read, not stored).
    pub bytes_unused: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The partition table the source had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt,
    Mbr,
    /// None: a filesystem (or nothing known) on the whole device.
    None,
    /// One that could not be read: the whole device was imaged.
    Damaged,
}

/// The `--used-only` mode an image was taken with (`off` records no layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsedOnlyMode {
    Auto,
    On,
}

/// A filesystem as the manifest names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext2,
    Ext3,
    Ext4,
    /// An ext superblock whose map could not be read.
    Ext,
    Xfs,
    Unknown,
}

/// One partition of the source (or the whole source, number 0) and what
/// was found on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// 1-based number in the table; 0 for a filesystem on the whole device.
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The partition type: a GPT type name or GUID, or the MBR type byte.
    pub kind: String,
    /// GPT partition name, or the filesystem label.
    pub name: String,
    pub filesystem: Filesystem,
    /// Bytes the filesystem uses, when its map could be read.
    pub used_bytes: Option<u64>,
    /// The filesystem's own size, when its map could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_bytes: Option<u64>,
    /// Why the partition was imaged whole, when it was.
    pub note: Option<String>,
}

macro_rules! lowercase_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                f.write_str(v.as_str().unwrap_or_default())
            }
        }
    )*};
}
lowercase_display!(PartitionTable, UsedOnlyMode, Filesystem);

/// Why a manifest could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON, or not a Tintype manifest.
    Foreign(String),
    /// A newer format version.
    Version(u32),
    /// Parsed, but the fields contradict each other.
    Invalid(String),
}

impl Manifest {
    /// The manifest's image id, checked.
    pub fn id(&self) -> ImageId {
        ImageId::parse(&self.image_id).expect("validated on load")
    }

    /// When the image's point in time was taken, for ordering: nanoseconds
    /// where recorded, else the second.
    pub fn point_in_time(&self) -> u128 {
        self.created_unix_nanos
            .map(u128::from)
            .filter(|n| n / 1_000_000_000 == u128::from(self.created_unix_seconds))
            .unwrap_or(u128::from(self.created_unix_seconds) * 1_000_000_000)
    }

    /// The parent's Image ID, checked.
    pub fn parent_id(&self) -> Option<ImageId> {
        self.parent.as_deref().map(|p| ImageId::parse(p).expect("validated on load"))
    }

    /// Does this image stand in for `id` (see `replaces`)?
    pub fn replaces_id(&self, id: ImageId) -> bool {
        self.replaces.iter().any(|r| ImageId::parse(r) == Some(id))
    }

    /// Parse and validate a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        // Look at format and version before the full parse, so a newer
        // version with different fields says "newer", not "malformed".
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Foreign(format!("not JSON: {e}")))?;
        if probe.get("format").and_then(|v| v.as_str()) != Some(MANIFEST_FORMAT) {
            return Err(ManifestError::Foreign(format!(
                "not a tintype manifest (no \"format\": \"{MANIFEST_FORMAT}\")"
            )));
        }
        let Some(version) = probe.get("format_version").and_then(|v| v.as_u64()) else {
            return Err(ManifestError::Invalid(format!(
                "format_version is {}, not a whole number",
                probe.get("format_version").map_or("missing".to_string(), |v| v.to_string())
            )));
        };
        if !(u64::from(super::FORMAT_VERSION_OLDEST)..=u64::from(FORMAT_VERSION)).contains(&version) {
            return Err(ManifestError::Version(version.min(u64::from(u32::MAX)) as u32));
        }
        let m: Manifest = serde_json::from_value(probe).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if ImageId::parse(&self.image_id).is_none() {
            return bad(format!("image_id {:?} is not 16 hex digits", self.image_id));
        }
        let id = ImageId::parse(&self.image_id).expect("checked above");
        let cs = u64::from(self.chunk_size_bytes);
        if !self.chunk_size_bytes.is_power_of_two()
            || cs < 64 << 10
            || self.chunk_size_bytes > super::frame::CHUNK_BYTES_MAX
        {
            return bad(format!("chunk_size_bytes {cs} out of range"));
        }
        if self.chunk_count != self.source.size_bytes.div_ceil(cs) {
            return bad(format!(
                "chunk_count {} does not match source size {} / chunk size {cs}",
                self.chunk_count, self.source.size_bytes
            ));
        }
        let created = rfc3339_utc(self.created_unix_seconds);
        if self.created != created {
            return bad(format!(
                "created {:?} is not created_unix_seconds {} as RFC 3339 UTC ({created})",
                self.created, self.created_unix_seconds
            ));
        }
        if u64::from(self.frame_align_bytes) != super::FRAME_ALIGN_BYTES {
            return bad(format!("frame_align_bytes {} unsupported", self.frame_align_bytes));
        }
        match (&self.parent, self.kind) {
            (None, ImageKind::Full) => {}
            (Some(p), ImageKind::Differential | ImageKind::Incremental) => match ImageId::parse(p) {
                Some(pid) if pid != id => {}
                _ => return bad(format!("parent {p:?} is not another image's 16-hex-digit ID")),
            },
            (None, k) => return bad(format!("{} image needs a parent", k.a())),
            (Some(_), ImageKind::Full) => return bad("a full image has no parent".into()),
        }
        if let Some(r) = self.replaces.iter().find(|r| ImageId::parse(r).is_none_or(|r| r == id)) {
            return bad(format!("replaces {r:?}: not another image's 16-hex-digit ID"));
        }
        if self.codec != "zstd" {
            return bad(format!("codec {:?} unsupported", self.codec));
        }
        // File names are derived, never free: a manifest cannot point at
        // another image's files or outside the set directory.
        for (i, s) in self.segments.iter().enumerate() {
            if s.seq as usize != i || s.file != super::names::segment_file_name(id, s.seq) {
                return bad(format!("segment {i} is listed as {:?} (number {})", s.file, s.seq));
            }
        }
        if self.index.file != super::names::index_file_name(id) {
            return bad(format!("index file name {:?} is not {id}.index", self.index.file));
        }
        // Unreadable ranges: non-empty, inside the source, in order, apart.
        let mut end = 0u64;
        for r in &self.unreadable {
            match r.offset.checked_add(r.length) {
                Some(e) if r.length > 0 && r.offset >= end && e <= self.source.size_bytes => end = e,
                _ => {
                    return bad(format!(
                        "unreadable range {}+{} is empty, overlaps the one before, or lies outside the {}-byte \
                         source",
                        r.offset, r.length, self.source.size_bytes
                    ))
                }
            }
        }
        Ok(())
    }

    /// Serialize as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }
}

/// Format seconds since the epoch as an RFC 3339 UTC time.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            format_version: 1,
            image_id: "00000000000000aa".into(),
            kind: ImageKind::Full,
            parent: None,
            created_unix_seconds: 0,
            created_unix_nanos: None,
            created: rfc3339_utc(0),
            tool_version: "test".into(),
            source: SourceInfo {
                path: "/dev/x".into(),
                kind: "file".into(),
                size_bytes: 3 << 20,
                logical_sector_bytes: 512,
                physical_sector_bytes: 4096,
                identity: BTreeMap::new(),
            },
            chunk_size_bytes: 1 << 20,
            chunk_count: 3,
            codec: "zstd".into(),
            level: 1,
            frame_align_bytes: 4096,
            settings: Settings {
                lanes: 1,
                queue_depth: 4,
                segment_size_bytes: 1 << 30,
                batch_chunks: 64,
                io_backend: "portable".into(),
                source_direct_io: false,
                profile: None,
            },
            stats: Stats::default(),
            segments: vec![],
            index: IndexInfo {
                file: "00000000000000aa.index".into(),
                size_bytes: 64 + 3 * 48,
                xxh3_128: crate::format::Xxh128(0),
            },
            replaces: vec![],
            layout: None,
            unreadable: vec![],
        }
    }

    #[test]
    fn unreadable_ranges_must_lie_in_the_source_in_order() {
        let with = |ranges: &[(u64, u64)]| {
            let mut m = sample();
            m.unreadable = ranges.iter().map(|&(offset, length)| ByteRange { offset, length }).collect();
            Manifest::from_json(&m.to_json())
        };
        assert!(with(&[(0, 512), (4096, 512), ((3 << 20) - 512, 512)]).is_ok());
        for bad in
            [&[(0, 0)][..], &[(3 << 20, 1)], &[(u64::MAX, 2)], &[(4096, 512), (0, 512)], &[(0, 1024), (512, 512)]]
        {
            assert!(matches!(with(bad), Err(ManifestError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()), Ok(m));
    }

    #[test]
    fn foreign_newer_and_inconsistent_manifests_are_refused() {
        assert!(matches!(Manifest::from_json(b"\x00\x01garbage"), Err(ManifestError::Foreign(_))));
        assert!(matches!(Manifest::from_json(b"{\"a\": 1}"), Err(ManifestError::Foreign(_))));
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["format_version"] = 3.into();
        assert_eq!(Manifest::from_json(&serde_json::to_vec(&v).unwrap()), Err(ManifestError::Version(3)));
        let mut m = sample();
        m.chunk_count = 4;
        assert!(matches!(Manifest::from_json(&m.to_json()), Err(ManifestError::Invalid(_))));
        let mut m = sample();
        m.index.file = "../../etc/passwd".into();
        assert!(matches!(Manifest::from_json(&m.to_json()), Err(ManifestError::Invalid(_))));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_314_600), "2026-11-22T02:30:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
