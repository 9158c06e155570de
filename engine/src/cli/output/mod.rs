//! What the commands print: a progress bar on a terminal, notes on stderr,
//! and a human summary or JSON on stdout — one file per command.

pub mod create;
pub mod info;
pub mod list;
pub mod merge;
pub mod restore;
pub mod tune;
pub mod verify;

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tintype::Observer;

/// How a command prints its outcome on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Sentences and tables for a person; a progress bar on a terminal.
    Human,
    /// One JSON document for a program; no progress bar.
    Json,
}

impl Format {
    pub fn from_json_flag(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Human
        }
    }
}

/// Print `v` as pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

/// Notes go to stderr; progress is a bar when stderr is a terminal.
pub struct Console {
    bar: Option<ProgressBar>,
}

impl Console {
    pub fn new(what: &str, format: Format) -> Console {
        let bar = (std::io::stderr().is_terminal() && format == Format::Human).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
                ))
                .expect("progress template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Console { bar }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Console {
    fn note(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("tintype: note: {msg}")),
            None => eprintln!("tintype: note: {msg}"),
        }
    }

    fn progress(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }
}

pub use tintype::units::human_bytes as human;

pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// A report as JSON on stdout, with a top-level `clean` verdict added.
pub fn print_json_verdict(report: &impl serde::Serialize, clean: bool) {
    let mut v = serde_json::to_value(report).expect("json");
    v["clean"] = json!(clean);
    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
}

/// Source byte ranges (unreadable ones), one a line, the first 20; how
/// many more there are, and where they are all listed.
pub fn print_ranges(ranges: &[tintype::format::manifest::ByteRange], indent: &str) {
    for r in ranges.iter().take(20) {
        println!("{indent}bytes {}..{} ({} bytes)", r.offset, r.offset + r.length, r.length);
    }
    if ranges.len() > 20 {
        println!("{indent}… {} more in the image's .badmap and `info --json`", ranges.len() - 20);
    }
}
