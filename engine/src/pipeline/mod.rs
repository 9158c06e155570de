//! The pipelines: capture (`create`), `restore`, `verify`, and `tune`'s
//! measurements, each built on lanes — one thread per core with its own
//! ring, buffers and codec context — claiming work from a shared [`plan`].

pub mod capture;
pub mod lanes;
pub mod memory;
pub mod plan;
pub mod restore;
pub mod tune;
pub mod verify;
