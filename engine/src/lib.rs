//! Tintype: images block devices into compressed, checksummed, seekable
//! image sets at the speed of the hardware.
//!
//! Layers, each using only those below it (docs/ARCHITECTURE.md; a test
//! keeps them): the commands — [`pipeline`] (create, restore, verify, tune,
//! built on lanes), [`merge`] (merge, prune) and [`serve`] (the NBD export);
//! [`set`] (an image set: images, lineage, chains, commit, locks, listing);
//! [`format`](mod@format) (pure encode and decode of frames, segments, index, manifest,
//! file names); the leaves — [`io`] (io_uring, portable and simulated
//! backends, devices, targets, quiesce), [`codec`], [`fs`] (partition tables
//! and used-space maps), [`profile`], [`sample`]; and at the bottom
//! [`error`], [`observe`] (notes, progress, the stop request) and [`units`].

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
pub mod units;

pub use error::{Error, Result};
pub use observe::{Observer, Quiet};
pub use pipeline::capture::{create, CreateOptions, CreateReport};
pub use pipeline::restore::{restore, RestoreOptions, RestoreReport};
pub use pipeline::verify::{verify, VerifyOptions, VerifyReport};
