//! Integration tests: the real `tintype` binary in fresh directories.

mod agreement;
mod architecture;
mod chains;
mod corruption;
mod create_verify;
// dumpe2fs's view of an ext filesystem; shared with the loop-device tests.
#[path = "../../loopdev-tests/src/dumpe2fs.rs"]
mod dumpe2fs;
mod golden;
mod hostile;
mod kill9;
// What a test needs from the machine; shared with the loop-device tests
// (which use the variants these tests do not).
#[path = "../../loopdev-tests/src/needs.rs"]
#[allow(dead_code)]
mod needs;
mod profiles;
mod restore;
mod serve;
mod signals;
mod sim;
mod usedspace;
mod util;
