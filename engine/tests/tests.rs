//! Integration tests: the real `tintype` binary in fresh directories.

mod corruption;
mod create_verify;
mod golden;
mod restore;
mod util;
