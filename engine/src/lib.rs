//! Tintype: images block devices into compressed, checksummed, seekable
//! image sets at the speed of the hardware.
//!
//! Layers, each using only those below it: [`pipeline`] (capture, verify)
//! built on lanes; [`set`] (image sets, commit); [`format`] (pure encode and
//! decode of frames, segments, index, manifest); and the leaves — [`io`]
//! (io_uring and portable backends, device probing) and [`codec`].

pub mod codec;
pub mod error;
pub mod format;
pub mod fs;
#[doc(hidden)]
pub mod fuzz;
pub mod io;
pub mod merge;
pub mod observe;
pub mod pipeline;
pub mod profile;
pub mod sample;
pub mod serve;
pub mod set;

pub use error::{Error, Result};
pub use observe::{Observer, Quiet};
pub use pipeline::capture::{create, CreateOptions, CreateReport};
pub use pipeline::restore::{restore, RestoreOptions, RestoreReport};
pub use pipeline::verify::{verify, VerifyOptions, VerifyReport};
