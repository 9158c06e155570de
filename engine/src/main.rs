//! The `tintype` command.

// Output that cannot be written — a closed pipe (`tintype list --json |
// head -1`), a full or gone terminal — is dropped instead of panicking, as
// the standard macros do: the work is done (or not) either way, and the
// exit code says which. These shadow the standard macros in every module
// below.
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! eprintln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
