//! The last step of `create`: the index header, the statistics, the
//! manifest, and the commit.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lane::shared::{latency_histogram, LaneStats};
use super::options::CreateReport;
use super::run::{Imaged, Prepared, Run};
use super::start::ParentHashes;
use crate::error::Left;
use crate::error::{Error, Result};
use crate::format::index::{ChunkState, IndexHeader};
use crate::format::manifest::{
    rfc3339_utc, ByteRange, IndexInfo, LayoutInfo, Manifest, SegmentInfo, Settings, Stats, MANIFEST_FORMAT,
};
use crate::format::names::manifest_file_name;
use crate::format::names::{badmap_file_name, index_file_name, run_file_name};
use crate::format::Xxh128;
use crate::format::FORMAT_VERSION;
use crate::observe::{interrupted, test_pause, Observer};
use crate::set::commit::sync_dir;
use crate::set::index_writer::{Part, Tally, Written};
use crate::set::remove::Leftovers;
use crate::set::unreadable::write_badmap;

/// Write the badmap and the index header, build the manifest and commit
/// it. Every chunk is in the segments by now: whatever fails before the
/// commit (a full disk under the index, map or manifest) keeps them for
/// `--resume`.
pub(super) fn commit(
    run: &Run<'_>,
    prepared: Prepared,
    imaged: Imaged,
    unfinished: &mut Leftovers<'_>,
    obs: &dyn Observer,
) -> Result<CreateReport> {
    unfinished.armed = false;
    let (id, dir) = (run.id, &run.set.dir);
    let keep = |e: Error| {
        obs.note(&format!(
            "every chunk was imaged but the image could not be committed; the unfinished image {id}'s files are \
             kept in {}: once the cause is fixed, run the same command with --resume to commit it",
            dir.display()
        ));
        e
    };
    if !imaged.unreadable.is_empty() {
        write_badmap(&dir.join(badmap_file_name(id)), &imaged.unreadable, run.source.size_bytes).map_err(keep)?;
    }
    note_fallbacks(run, &imaged, obs);
    let committed = dir.join(format!("{}.tmp", index_file_name(id)));
    let parts = inherit_unused(prepared.preset.parts(run.chunk_count), run.parent());
    let index = prepared.index.commit_as_runs(index_header(run), &committed, &parts).map_err(keep)?;
    let known = prepared.preset.stats();
    let manifest =
        build_manifest(run, Kept { segments: prepared.kept_segments, stats: known }, prepared.layout, imaged, index);
    sync_dir(dir).map_err(keep)?;
    // A signal that came while the index and segments were made durable
    // is still honoured: no commit, the frames kept for --resume.
    test_pause("create-commit");
    if interrupted() {
        return Err(Error::interrupted(
            Left::Resumable,
            format!(
            "no image was committed (the signal came while it was being made durable); the unfinished image {id}'s \
             files are kept in {}: run the same command with --resume to commit it",
            dir.display()
        ),
        ));
    }
    // (Only the directory's fsync failing leaves the manifest named: then
    // the image exists, and the error alone says what failed.)
    let manifest_path =
        unfinished
            .commit(&manifest)
            .map_err(|e| if dir.join(manifest_file_name(id)).exists() { e } else { keep(e) })?;
    // The run record has done its job; a leftover one is harmless.
    let _ = std::fs::remove_file(dir.join(run_file_name(id)));
    let _ = std::fs::remove_file(&run.journal);
    Ok(CreateReport { manifest, manifest_path })
}

/// Segments written through the page cache, lanes that fell back to the
/// portable backend: said once, at the end.
pub(crate) fn note_fallbacks(run: &Run<'_>, imaged: &Imaged, obs: &dyn Observer) {
    if !imaged.reports.iter().all(|r| r.segments_direct) {
        obs.note("the destination filesystem refuses O_DIRECT; segments were written through the page cache");
    }
    if let Some(n) = run.backend.fallback_note() {
        obs.note(&n);
    }
}

/// The parts of the index, with the unused runs a parent has unused too
/// recorded as inherited (an unchanged image's index is then one record).
fn inherit_unused(parts: Vec<Part>, parent: Option<&ParentHashes>) -> Vec<Part> {
    let Some(parent) = parent else { return parts };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Part::Known(run) if run.entry.state == ChunkState::Unused => parent.inherit_unused(run, &mut out),
            other => out.push(other),
        }
    }
    out
}

/// The index header: written once every run is.
fn index_header(run: &Run<'_>) -> IndexHeader {
    IndexHeader {
        version: FORMAT_VERSION,
        records: 0,
        chunk_bytes: run.st.chunk_bytes,
        image_id: run.id,
        chunk_count: run.chunk_count,
        source_bytes: run.source.size_bytes,
        parent: run.st.parent.as_ref().map(|p| p.id()),
    }
}

/// What the run had before its lanes read anything: a resumed run's
/// segments, and the counters of the chunks known without reading.
pub(crate) struct Kept {
    pub segments: Vec<SegmentInfo>,
    pub stats: LaneStats,
}

/// The manifest of the finished run: every segment (kept and new), the
/// statistics (counts by state taken from the index, so a resumed run's
/// kept frames count too) and the settings used.
pub(crate) fn build_manifest(
    run: &Run<'_>,
    kept: Kept,
    layout: Option<LayoutInfo>,
    imaged: Imaged,
    (index, tally): (Written, Tally),
) -> Manifest {
    let (id, opts) = (run.id, run.opts);
    let mut segments = kept.segments;
    segments.extend(imaged.reports.iter().flat_map(|r| r.segments.iter().cloned()));
    segments.sort_by_key(|s| s.seq);
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.seq as usize, i, "segment numbers are dense");
    }
    let stats = sum_stats(imaged.reports.iter().map(|r| &r.stats).chain([&kept.stats]));
    assert_eq!(stats.chunks, run.chunk_count, "every chunk was processed exactly once");
    let mut latency = latency_histogram();
    for r in &imaged.reports {
        let _ = latency.add(&r.read_latency_us);
    }
    let mut mstats = manifest_stats(&stats, imaged.wall, &latency);
    mstats.bytes_segments = segments.iter().map(|s| s.size_bytes).sum();
    // Stored chunks as the index counts them: a resumed run's segments may
    // also hold a frame no entry names (a chunk read again).
    mstats.chunks_stored = tally.chunks_stored;
    tally.set_counts(&mut mstats);
    let now_nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let now = (now_nanos / 1_000_000_000) as u64;
    Manifest {
        format: MANIFEST_FORMAT.into(),
        format_version: u32::from(FORMAT_VERSION),
        image_id: id.to_string(),
        kind: run.st.kind,
        parent: run.st.parent.as_ref().map(|p| p.id().to_string()),
        created_unix_seconds: now,
        created_unix_nanos: Some(now_nanos as u64),
        created: rfc3339_utc(now),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: run.src.clone(),
        chunk_size_bytes: run.st.chunk_bytes,
        chunk_count: run.chunk_count,
        codec: "zstd".into(),
        level: run.st.level,
        frame_align_bytes: crate::format::FRAME_ALIGN_BYTES as u32,
        settings: Settings {
            lanes: run.lanes,
            queue_depth: opts.queue_depth,
            segment_size_bytes: opts.segment_size_bytes,
            batch_chunks: imaged.batch_chunks as u32,
            io_backend: run.backend.name().into(),
            source_direct_io: run.source.direct,
            profile: opts.profile.clone(),
        },
        stats: mstats,
        segments,
        index: IndexInfo { file: index_file_name(id), size_bytes: index.size_bytes, xxh3_128: Xxh128(index.xxh3_128) },
        replaces: Vec::new(),
        layout,
        unreadable: imaged.unreadable.iter().map(|&(offset, length)| ByteRange { offset, length }).collect(),
    }
}

pub(crate) fn sum_stats<'a>(all: impl Iterator<Item = &'a LaneStats>) -> LaneStats {
    let mut t = LaneStats::default();
    for s in all {
        t.chunks += s.chunks;
        t.bytes_read += s.bytes_read;
        t.chunks_stored += s.chunks_stored;
        t.chunks_zero += s.chunks_zero;
        t.chunks_stored_raw += s.chunks_stored_raw;
        t.bytes_stored_payload += s.bytes_stored_payload;
        t.bytes_stored_raw += s.bytes_stored_raw;
        t.bytes_segments += s.bytes_segments;
        t.nanos_io_wait += s.nanos_io_wait;
        t.nanos_zero_check += s.nanos_zero_check;
        t.nanos_hash += s.nanos_hash;
        t.nanos_compress += s.nanos_compress;
        t.nanos_cpu += s.nanos_cpu;
        t.chunks_inherited += s.chunks_inherited;
        t.chunks_resumed += s.chunks_resumed;
        t.chunks_unused += s.chunks_unused;
    }
    t
}

pub(crate) fn manifest_stats(s: &LaneStats, wall: Duration, latency: &hdrhistogram::Histogram<u64>) -> Stats {
    let mut read_latency_us = BTreeMap::new();
    if !latency.is_empty() {
        for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            read_latency_us.insert(name.to_string(), latency.value_at_quantile(q));
        }
        read_latency_us.insert("max".to_string(), latency.max());
        read_latency_us.insert("count".to_string(), latency.len());
    }
    let secs = |n: u64| n as f64 / 1e9;
    let mut stage = BTreeMap::new();
    stage.insert("io_wait".to_string(), secs(s.nanos_io_wait));
    stage.insert("zero_check".to_string(), secs(s.nanos_zero_check));
    stage.insert("hash".to_string(), secs(s.nanos_hash));
    stage.insert("compress".to_string(), secs(s.nanos_compress));
    Stats {
        bytes_read: s.bytes_read,
        chunks_stored: s.chunks_stored,
        chunks_zero: s.chunks_zero,
        chunks_stored_raw: s.chunks_stored_raw,
        bytes_stored_raw: s.bytes_stored_raw,
        bytes_stored_payload: s.bytes_stored_payload,
        bytes_segments: s.bytes_segments,
        wall_seconds: wall.as_secs_f64(),
        cpu_seconds: secs(s.nanos_cpu),
        stage_seconds: stage,
        read_latency_us,
        chunks_inherited: s.chunks_inherited,
        chunks_resumed: s.chunks_resumed,
        chunks_copied: 0,
        chunks_unused: s.chunks_unused,
        chunks_unreadable: 0,
    }
}
