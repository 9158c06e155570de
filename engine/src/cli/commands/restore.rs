//! `tintype restore`.

use tintype::pipeline::restore::RestoreOptions;
use tintype::set::select::SetSpec;

use crate::cli::args::RestoreArgs;
use crate::cli::exit;
use crate::cli::output::{self, Console, Format};

pub fn run(a: RestoreArgs) -> anyhow::Result<u8> {
    let spec = SetSpec::parse(&a.image);
    let mut o = RestoreOptions::new(spec.dir, a.target);
    o.image = spec.image;
    o.force = a.force;
    o.allow_shrink = a.allow_shrink;
    o.discard = a.discard;
    o.verify_first = a.verify_first;
    o.skip_bad = a.skip_bad;
    o.verify_after = a.verify_after;
    o.lanes = a.lanes;
    o.queue_depth = a.queue_depth;
    o.io = a.io.into();
    let format = Format::from_json_flag(a.json);
    let obs = Console::new("restoring", format);
    let report = tintype::restore(&o, &obs)?;
    obs.finish();
    output::restore::print(&report, format);
    Ok(if report.is_clean() { exit::OK } else { exit::DAMAGED })
}
