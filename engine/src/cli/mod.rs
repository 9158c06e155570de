//! The command line: flags ([`args`]), one file per command
//! ([`commands`]), what they print ([`output`]), and exit codes ([`exit`]).
//! `anyhow` lives only here.

mod args;
mod commands;
mod demo;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;
use tintype::Error;

use self::args::{Cli, Command};

/// Parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    install_signal_handlers();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let json = cli.command.wants_json();
    match commands::run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tintype: error: {e:#}");
            let code = exit::code_for(&e);
            if json {
                println!("{}", exit::error_json(code, &format!("{e:#}"), e.downcast_ref::<Error>()));
            }
            ExitCode::from(code)
        }
    }
}

/// Ctrl-C or SIGTERM asks the run to stop cleanly (in-flight I/O drains; an
/// unfinished image's frames are kept for `create --resume`); a second one
/// ends the process at once — except under `--freeze`, where a frozen
/// filesystem must always be thawed first. A file-size limit (`ulimit -f`)
/// would kill the process with SIGXFSZ, silently; ignored, the write fails
/// with EFBIG and the error names the file.
fn install_signal_handlers() {
    let freezing = std::env::args_os().any(|a| a == "--freeze");
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = &tintype::observe::INTERRUPTED;
        if !freezing {
            let _ = signal_hook::flag::register_conditional_default(sig, flag);
        }
        let _ = signal_hook::flag::register(sig, flag);
    }
}

/// A command line clap refused (or `--help`/`--version`): printed, and a
/// script that asked for JSON gets its answer on stdout too.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
    if code != exit::OK && std::env::args_os().any(|a| a == "--json") {
        let text = e.to_string();
        let msg = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
        println!("{}", exit::error_json(code, msg, None));
    }
    ExitCode::from(code)
}

impl Command {
    /// Whether the user asked for machine-readable output.
    fn wants_json(&self) -> bool {
        match self {
            Command::Create(a) => a.json,
            Command::Merge(a) => a.json,
            Command::Prune(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Restore(a) => a.json,
            Command::List(a) => a.json,
            Command::Tune(a) => a.json,
            Command::Info(a) => a.json,
            Command::Serve(_) | Command::Demo(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
