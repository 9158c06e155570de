//! `verify`: check an image without restoring it. The manifest, the index
//! hash and every index entry first; then lanes claim segments and read each
//! one front to back through their ring, checking every frame's header,
//! stored hash, decompression and raw hash against its index entry, and the
//! segment's own hash. It reports every problem it finds, never only the first.

mod index;
pub mod options;
mod segment;

use self::index::{check_index, IndexCheck};
pub use self::options::{BadChunk, ImageCheck, Problem, VerifyOptions, VerifyReport};
use self::segment::check_segments;
use crate::error::{Error, Result};
use crate::io;
use crate::io::Backend;
use crate::observe::Observer;
use crate::set::image::Image;

use crate::set::lock::lock_set;
use crate::set::lock::Access;
use crate::set::ImageSet;
use std::time::Instant;

/// Verify an image.
pub fn verify(opts: &VerifyOptions, obs: &dyn Observer) -> Result<VerifyReport> {
    let started = Instant::now();
    let backend = io::select(&opts.io, obs)?;
    if !(1..=1024).contains(&opts.queue_depth) {
        return Err(Error::InvalidSetting(format!("--queue-depth {}: must be 1 to 1024", opts.queue_depth)));
    }
    let set = ImageSet::open(&opts.set)?;
    let _lock = lock_set(&set.dir, Access::Read, "verify")?;
    let img = set.resolve(opts.image.as_deref())?;
    let chain = set.chain(&img)?;
    let mut checks = Vec::new();
    let mut bad_chunks = Vec::new();
    let mut problems = Vec::new();
    for (i, one) in chain.iter().enumerate() {
        if chain.len() > 1 {
            obs.note(&format!(
                "checking image {} ({}{})",
                one.id(),
                one.manifest.kind.name(),
                if i == 0 { "" } else { ", an ancestor" }
            ));
        }
        let (c, mut b, mut p) = verify_image(one, chain.get(i + 1), opts, backend.clone(), obs)?;
        checks.push(c);
        bad_chunks.append(&mut b);
        problems.append(&mut p);
    }
    let me = &checks[0];
    if let Some(n) = backend.fallback_note() {
        obs.note(&n);
    }
    Ok(VerifyReport {
        image_id: img.manifest.image_id.clone(),
        chunk_count: img.manifest.chunk_count,
        chunks_stored_ok: me.chunks_stored_ok,
        chunks_zero: me.chunks_zero,
        chunks_unused: me.chunks_unused,
        chunks_unreadable: me.chunks_unreadable,
        chunks_inherited: me.chunks_inherited,
        bytes_segments_read: checks.iter().map(|c| c.bytes_segments_read).sum(),
        wall_seconds: started.elapsed().as_secs_f64(),
        io_backend: backend.name().into(),
        chain: checks,
        bad_chunks,
        problems,
    })
}

/// Verify one image's index and segments; inherited chunks are checked
/// against `parent`'s index.
fn verify_image(
    img: &Image,
    parent: Option<&Image>,
    opts: &VerifyOptions,
    backend: Backend,
    obs: &dyn Observer,
) -> Result<(ImageCheck, Vec<BadChunk>, Vec<Problem>)> {
    let IndexCheck { findings, counts, per_segment } = check_index(img, parent)?;
    let (f, bytes_read) = check_segments(img, &per_segment, findings, opts, backend, obs)?;
    let m = &img.manifest;
    let check = ImageCheck {
        image_id: m.image_id.clone(),
        kind: m.kind.name().into(),
        chunks_stored_ok: f.ok,
        chunks_zero: counts.zero,
        chunks_unused: counts.unused,
        chunks_unreadable: counts.unreadable,
        chunks_inherited: counts.inherited,
        bytes_segments_read: bytes_read,
        bad_chunks: f.bad.len() as u64,
        problems: f.problems.len() as u64,
    };
    Ok((check, f.bad, f.problems))
}
