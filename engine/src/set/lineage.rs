//! An image's lineage: which image stands for which. A merge writes a new
//! image for the same point in time that *replaces* an older one; from then
//! on the replacement *holds* that point in time, children resolve their
//! parent to it, and the replaced image is on its way out. Every question
//! about parents and replacements is answered here, from one rule
//! ([`Lineage::may_replace`]).

use std::collections::HashMap;

use super::image::{Image, IndexHash};
use crate::format::ImageId;

/// The committed images of a set, seen as a lineage.
#[derive(Debug, Clone, Copy)]
pub struct Lineage<'a> {
    pub images: &'a [Image],
}

impl<'a> Lineage<'a> {
    pub fn new(images: &'a [Image]) -> Lineage<'a> {
        Lineage { images }
    }

    /// The image that holds image `id`'s point in time: the newest image a
    /// merge wrote in its place, else `id` itself; None when neither is in
    /// the set.
    pub fn holder(&self, id: ImageId) -> Option<&'a Image> {
        self.replacement(id).or_else(|| self.images.iter().find(|i| i.id() == id))
    }

    /// The newest image a merge wrote in place of image `id`, if any: `id`
    /// is then obsolete, on its way out, and never a parent again.
    pub fn replacement(&self, id: ImageId) -> Option<&'a Image> {
        self.images.iter().filter(|r| self.may_replace(r, id)).max_by_key(|i| i.committed_nanos)
    }

    /// The image `img` depends on: the holder of its parent. None when it
    /// has no parent or the parent is not in the set.
    pub fn parent(&self, img: &Image) -> Option<&'a Image> {
        self.holder(img.manifest.parent_id()?)
    }

    /// May `r` stand in for image `id`? It must name `id` among the images
    /// it replaces, not be `id` nor its child, and — while `id` is still in
    /// the set — hold the same point in time of the same source with all of
    /// its files there, as every image a merge writes does. A claim that
    /// fails this (a manifest edited by hand, or damaged) replaces nothing,
    /// so nothing is removed on its word.
    pub fn may_replace(&self, r: &Image, id: ImageId) -> bool {
        if r.id() == id || !r.manifest.replaces_id(id) || r.manifest.parent_id() == Some(id) {
            return false;
        }
        self.images.iter().find(|i| i.id() == id).is_none_or(|x| {
            let (a, b) = (&r.manifest, &x.manifest);
            a.point_in_time() == b.point_in_time()
                && a.source.size_bytes == b.source.size_bytes
                && a.chunk_size_bytes == b.chunk_size_bytes
                && r.check_files(IndexHash::Skip).is_ok()
        })
    }

    /// Each image's point in time for ordering: its own, raised to just
    /// after its parent's when the clock put it earlier (one wrong clock
    /// must not make a child older than its parent). A loop of parents
    /// stops.
    pub fn effective_times(&self) -> HashMap<ImageId, u128> {
        let mut when = HashMap::new();
        for i in self.images {
            self.effective_time(i, &mut when, 0);
        }
        when
    }

    fn effective_time(&self, img: &Image, when: &mut HashMap<ImageId, u128>, depth: usize) -> u128 {
        if let Some(&t) = when.get(&img.id()) {
            return t;
        }
        let own = img.manifest.point_in_time();
        let t = match self.parent(img).filter(|p| p.id() != img.id() && depth < self.images.len()) {
            Some(p) => own.max(self.effective_time(p, when, depth + 1) + 1),
            None => own,
        };
        when.insert(img.id(), t);
        t
    }
}
