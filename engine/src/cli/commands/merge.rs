//! `tintype merge` and `tintype prune`.

use std::path::PathBuf;

use tintype::merge::{merge, prune, MergeOptions, MergeSpan, PruneOptions, Retention};
use tintype::set::select::SetSpec;
use tintype::Error;

use crate::cli::args::{MergeArgs, PruneArgs};
use crate::cli::exit;
use crate::cli::output::{self, Console, Format};

pub fn run_merge(a: MergeArgs) -> anyhow::Result<u8> {
    let spec = match a.id {
        Some(id) => SetSpec { dir: PathBuf::from(a.image), image: Some(id) },
        None => SetSpec::parse(&a.image),
    };
    let Some(sel) = spec.image.filter(|s| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Err(Error::InvalidSetting(
            "merge needs the image to consolidate: SET@IMAGE_ID or SET IMAGE_ID (a unique hex prefix)".into(),
        )
        .into());
    };
    let span = if a.full { MergeSpan::WholeChain } else { MergeSpan::Parent };
    let o = MergeOptions { set: spec.dir, image: sel.to_ascii_lowercase(), span, io: Default::default() };
    let format = Format::from_json_flag(a.json);
    let obs = Console::new("merging", format);
    let report = merge(&o, &obs)?;
    obs.finish();
    output::merge::print_merge(&report, format);
    Ok(exit::OK)
}

pub fn run_prune(a: PruneArgs) -> anyhow::Result<u8> {
    let o = PruneOptions {
        set: a.set,
        retention: Retention { keep_last: a.keep_last, keep_daily: a.keep_daily, keep_weekly: a.keep_weekly },
        dry_run: a.dry_run,
        discard_unfinished: a.discard_unfinished,
        io: Default::default(),
    };
    let format = Format::from_json_flag(a.json);
    let obs = Console::new("consolidating", format);
    let report = prune(&o, &obs)?;
    obs.finish();
    output::merge::print_prune(&report, format);
    Ok(exit::OK)
}
