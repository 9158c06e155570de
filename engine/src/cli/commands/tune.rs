//! `tintype tune`.

use tintype::pipeline::tune::{tune, write_profile, TuneOptions};
use tintype::Error;

use crate::cli::args::TuneArgs;
use crate::cli::exit;
use crate::cli::output::{self, Console, Format};

pub fn run(a: TuneArgs) -> anyhow::Result<u8> {
    if let Some(p) = a.write_profile.as_deref().filter(|p| p.exists()) {
        return Err(Error::InvalidSetting(format!(
            "--write-profile {}: the file exists; tune never replaces a file",
            p.display()
        ))
        .into());
    }
    let mut o = TuneOptions::new(a.device);
    o.io = a.io.into();
    o.step_time = std::time::Duration::from_millis(a.step_ms.clamp(1, 10_000));
    let format = Format::from_json_flag(a.json);
    let obs = Console::new("measuring", format);
    let report = tune(&o, &obs)?;
    obs.finish();
    if let Some(path) = &a.write_profile {
        write_profile(&report.profile, path)?;
    }
    output::tune::print(&report, a.write_profile.as_deref(), format);
    Ok(exit::OK)
}
