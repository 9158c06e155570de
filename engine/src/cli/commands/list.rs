//! `tintype list`.

use tintype::set::listing::list;
use tintype::set::ImageSet;

use crate::cli::args::ListArgs;
use crate::cli::exit;
use crate::cli::output::{self, Format};

pub fn run(a: ListArgs) -> anyhow::Result<u8> {
    let set = ImageSet::open(&a.set)?;
    output::list::print(&list(&set)?, Format::from_json_flag(a.json));
    Ok(exit::OK)
}
