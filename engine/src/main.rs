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
    // The main thread's stack is whatever `ulimit -s` allows (a small limit
    // overflowed it while parsing a manifest); the command runs on a thread
    // whose stack is fixed here instead. If even that thread cannot start,
    // run on the main thread as it is.
    let work = std::thread::Builder::new().name("tintype".into()).stack_size(16 << 20).spawn(cli::main);
    match work {
        // A panic has printed its message; 101 is Rust's code for it.
        Ok(h) => h.join().unwrap_or(std::process::ExitCode::from(101)),
        Err(_) => cli::main(),
    }
}
