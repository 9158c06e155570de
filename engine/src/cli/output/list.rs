//! What `tintype list` prints.

use tintype::set::listing::{Listing, UnfinishedRow};
use tintype::set::run_record::RunOperation;

use super::{human, print_json, Format};

/// The set as a tree: each image under the image it depends on.
pub fn print(l: &Listing, format: Format) {
    if format == Format::Json {
        return print_json(l);
    }
    // The tree's indent widens the first column: size it to the deepest row.
    let prefixes = tree_prefixes(&l.images.iter().map(|r| r.depth).collect::<Vec<_>>());
    let names: Vec<String> = l.images.iter().zip(&prefixes).map(|(r, p)| format!("{p}{}", r.image_id)).collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(24);
    println!("{:<w$}  {:<12}  {:<20}  {:>10}  {:>10}  state", "image", "kind", "created", "size", "stored");
    for (r, name) in l.images.iter().zip(&names) {
        let unreadable = match r.unreadable_bytes {
            0 => String::new(),
            n => format!(" ({} of the source unreadable, restores as zeros)", human(n)),
        };
        println!(
            "{:<w$}  {:<12}  {:<20}  {:>10}  {:>10}  {}{unreadable}",
            name,
            r.kind.name(),
            r.created,
            human(r.source_bytes),
            human(r.stored_bytes),
            r.state
        );
    }
    for d in &l.damaged {
        println!("{:<w$}  DAMAGED: {}", d.image_id, d.error);
    }
    if let Some(who) = &l.in_use_by {
        match l.unfinished.is_empty() {
            true => println!("(the set is being written now by {who})"),
            false => println!(
                "(the set is being written now by {who}: an unfinished run below may be that run, in progress)"
            ),
        }
    }
    for u in &l.unfinished {
        println!("{:<w$}  {}", u.image_id, unfinished(u, l));
    }
    if l.images.is_empty() && l.unfinished.is_empty() && l.damaged.is_empty() {
        println!("(the set holds no images)");
    }
}

/// What an unfinished run's row says, and how to carry it on or get rid of it.
fn unfinished(u: &UnfinishedRow, l: &Listing) -> String {
    let bytes = human(u.bytes_on_disk);
    match (u.operation, &u.source) {
        (Some(RunOperation::Create), Some(src)) => format!(
            "unfinished {} create of {src} ({bytes} written): `tintype create {} {} --resume` carries it on",
            u.kind.map_or("full", |k| k.name()),
            shell_quote(src),
            shell_quote(&l.set.to_string_lossy())
        ),
        (Some(RunOperation::Merge), _) => format!("unfinished merge ({bytes}): the next merge or prune removes it"),
        _ if u.being_removed => {
            format!("an image being removed ({bytes} left): the next merge or prune finishes the removal")
        }
        _ => format!("data files without a manifest ({bytes}; an interrupted run; not an image)"),
    }
}

/// The tree drawing before each row of a depth-first listing given each
/// row's depth: `├─ ` for a child with siblings after it, `└─ ` for the
/// last one, and `│  ` under an ancestor whose siblings continue below.
fn tree_prefixes(depths: &[usize]) -> Vec<String> {
    // Whether the row at `i` (depth d) has a sibling later: a later row of
    // depth d comes before any row shallower than d.
    let has_next_sibling = |i: usize| {
        let d = depths[i];
        depths[i + 1..].iter().find(|&&e| e <= d).is_some_and(|&e| e == d)
    };
    let mut out = Vec::with_capacity(depths.len());
    // For each level above the current row: does that ancestor continue?
    let mut open: Vec<bool> = Vec::new();
    for (i, &d) in depths.iter().enumerate() {
        open.truncate(d);
        let mut p = String::new();
        let next = has_next_sibling(i);
        if d > 0 {
            for &cont in open.iter().skip(1) {
                p.push_str(if cont { "│  " } else { "   " });
            }
            p.push_str(if next { "├─ " } else { "└─ " });
        }
        open.resize(d, false);
        open.push(next);
        out.push(p);
    }
    out
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./-:@+=,%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tree_drawing() {
        // F ─ I1 ─ I2, F ─ D ─ I3, and a second root R ─ X.
        let got = super::tree_prefixes(&[0, 1, 2, 1, 2, 0, 1]);
        assert_eq!(got, ["", "├─ ", "│  └─ ", "└─ ", "   └─ ", "", "└─ "]);
        // Three levels with siblings at each.
        let got = super::tree_prefixes(&[0, 1, 2, 3, 2, 1]);
        assert_eq!(got, ["", "├─ ", "│  ├─ ", "│  │  └─ ", "│  └─ ", "└─ "]);
        assert!(super::tree_prefixes(&[]).is_empty());
    }

    #[test]
    fn shell_words() {
        assert_eq!(super::shell_quote("/dev/sda"), "/dev/sda");
        assert_eq!(super::shell_quote("my set"), "'my set'");
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}
