//! The pipelines: capture (`create`), `restore`, `verify`, and `tune`'s
//! measurements. Capture, restore and verify run lanes ([`lanes`]) — one
//! thread per core with its own ring, buffers and codec context; capture
//! and restore claim chunks in batches from a shared [`plan`], verify claims
//! whole segments.

pub mod capture;
pub mod lanes;
pub mod memory;
pub mod plan;
pub mod restore;
pub mod tune;
pub mod verify;
