//! `tintype serve`: until Ctrl-C.

use tintype::serve::{Listen, ServeOptions};
use tintype::set::select::SetSpec;

use crate::cli::args::ServeArgs;
use crate::cli::exit;
use crate::cli::output::{Console, Format};

pub fn run(a: ServeArgs) -> anyhow::Result<u8> {
    let spec = SetSpec::parse(&a.image);
    let o = ServeOptions {
        set: spec.dir,
        image: spec.image,
        listen: Listen::parse(&a.listen)?,
        public: a.public,
        cache_bytes: a.cache_size,
        max_connections: a.max_connections,
        overlay: a.writable_overlay,
    };
    // Notes only: a server has no progress to draw.
    let obs = Console::new("serving", Format::Json);
    tintype::serve::serve(&o, &obs)?;
    Ok(exit::OK)
}
