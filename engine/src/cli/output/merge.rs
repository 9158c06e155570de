//! What `tintype merge` and `tintype prune` print.

use super::{human, print_json, Format};

pub fn print_merge(r: &tintype::merge::MergeReport, format: Format) {
    if format == Format::Json {
        print_json(r);
        return;
    }
    let c = &r.merged;
    println!(
        "image {} ({}) now stands in for {}: folded {}, copied {} chunk(s), {} in {:.2} s",
        c.image_id,
        c.kind,
        c.replaces,
        c.folded.join(" + "),
        c.chunks_copied,
        human(c.bytes_copied),
        c.wall_seconds
    );
    if !r.removed.is_empty() {
        println!("  removed  {}", r.removed.join(", "));
    }
    if !r.kept.is_empty() {
        println!("  kept     {} (other images depend on them)", r.kept.join(", "));
    }
}

pub fn print_prune(r: &tintype::merge::PruneReport, format: Format) {
    if format == Format::Json {
        print_json(r);
        return;
    }
    let will = if r.dry_run { "would " } else { "" };
    for k in &r.kept {
        let rewrite = if k.folds.is_empty() {
            String::new()
        } else {
            match &k.rewritten_as {
                Some(n) => format!("; rewritten as {n}, folding {}", k.folds.join(" + ")),
                None => format!("; {will}be rewritten, folding {}", k.folds.join(" + ")),
            }
        };
        println!("keep    {} {} {} ({}){rewrite}", k.image_id, k.kind, k.created, k.reasons.join(", "));
    }
    for id in &r.removed {
        println!("{}  {id}", if r.dry_run { "would remove" } else { "removed" });
    }
    for id in &r.unfinished_removed {
        println!("{}  unfinished run {id}", if r.dry_run { "would discard" } else { "discarded" });
    }
    if r.dry_run {
        println!("(dry run: nothing was changed)");
    }
}
