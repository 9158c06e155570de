//! `tintype verify`.

use tintype::pipeline::verify::VerifyOptions;
use tintype::set::select::SetSpec;

use crate::cli::args::VerifyArgs;
use crate::cli::exit;
use crate::cli::output::{self, Console, Format};

pub fn run(a: VerifyArgs) -> anyhow::Result<u8> {
    let spec = SetSpec::parse(&a.image);
    let mut o = VerifyOptions::new(spec.dir);
    o.image = spec.image;
    o.lanes = a.lanes;
    o.queue_depth = a.queue_depth;
    o.io = a.io.into();
    let format = Format::from_json_flag(a.json);
    let obs = Console::new("verifying", format);
    let report = tintype::verify(&o, &obs)?;
    obs.finish();
    output::verify::print(&report, format);
    Ok(if report.is_clean() { exit::OK } else { exit::DAMAGED })
}
