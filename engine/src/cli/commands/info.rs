//! `tintype info`: an image's metadata, or a device's partitions and
//! filesystems.

use std::path::Path;

use tintype::io::device::{OpenMode, Source};
use tintype::set::select::SetSpec;
use tintype::set::ImageSet;
use tintype::Error;

use crate::cli::args::InfoArgs;
use crate::cli::exit;
use crate::cli::output::{self, Format};

pub fn run(a: InfoArgs) -> anyhow::Result<u8> {
    let format = Format::from_json_flag(a.json);
    let path = Path::new(&a.image);
    if path.exists() && !path.is_dir() {
        // A device or disk image file: its partitions and filesystems.
        let src = Source::open(path, OpenMode::Buffered)?;
        let meta = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let layout = tintype::fs::analyze(&meta, &meta, src.size_bytes, src.logical_sector_bytes);
        output::info::print_layout(&a.image, src.size_bytes, &layout, format);
        return Ok(exit::OK);
    }
    let spec = SetSpec::parse(&a.image);
    let set = ImageSet::open(&spec.dir)?;
    let img = set.resolve(spec.image.as_deref())?;
    let all = set.images()?;
    output::info::print(&img, &all, format);
    Ok(exit::OK)
}
