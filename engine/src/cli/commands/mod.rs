//! One file per command: each turns its parsed flags into the library's
//! options, runs it, prints the outcome, and returns the exit code.

mod create;
mod info;
mod list;
mod merge;
mod restore;
mod serve;
mod tune;
mod verify;

use super::args::Command;

/// Run a parsed command.
pub fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Create(a) => create::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Info(a) => info::run(a),
        Command::List(a) => list::run(a),
        Command::Merge(a) => merge::run_merge(a),
        Command::Prune(a) => merge::run_prune(a),
        Command::Serve(a) => serve::run(a),
        Command::Tune(a) => tune::run(a),
        Command::Demo(a) => super::demo::run(a),
    }
}
