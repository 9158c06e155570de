//! The command line: flags, human and JSON output, exit codes. `anyhow`
//! lives only here.

mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tintype::io::IoChoice;
use tintype::pipeline::capture::{DEFAULT_CHUNK_BYTES, DEFAULT_LEVEL, DEFAULT_QUEUE_DEPTH, DEFAULT_SEGMENT_BYTES};
use tintype::set::{parse_spec, ImageSet};
use tintype::{CreateOptions, Error, VerifyOptions};

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// A runtime failure: I/O error, unusable source, full disk.
    pub const FAILURE: u8 = 1;
    /// A bad command line or setting.
    pub const USAGE: u8 = 2;
    /// The image is damaged: verify found bad chunks, or a file of the image is corrupt.
    pub const DAMAGED: u8 = 3;
    /// Not an image this build can use: no committed manifest, or a newer format version.
    pub const NOT_AN_IMAGE: u8 = 4;
    /// The image set is in use by another run (create, merge, prune; or a reader during merge/prune).
    pub const BUSY: u8 = 5;
    /// An image was committed, but parts of the source could not be read (`--on-read-error skip`).
    pub const UNREADABLE: u8 = 6;
    /// Stopped by a signal.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "tintype",
    version,
    about = "Image block devices into compressed, checksummed, seekable image sets at the speed of the hardware",
    after_help = "Exit codes: 0 success, 1 failure, 2 bad usage, 3 image damaged, 4 not a committed or supported image, 5 image set in use by another run, 6 image committed but the source had unreadable sectors, 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IoArg {
    /// io_uring when available, else portable
    Auto,
    /// io_uring; fail if it cannot be used
    Uring,
    /// pread/pwrite
    Portable,
}

impl From<IoArg> for IoChoice {
    fn from(a: IoArg) -> IoChoice {
        match a {
            IoArg::Auto => IoChoice::Auto,
            IoArg::Uring => IoChoice::Uring,
            IoArg::Portable => IoChoice::Portable,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnReadError {
    Fail,
    Skip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum UsedOnlyArg {
    Auto,
    Off,
    On,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Image SOURCE (a block device or file) into the image set directory SET.
    Create {
        /// Block device or regular file to image; opened read-only.
        source: PathBuf,
        /// Image set directory (created if absent).
        set: PathBuf,
        /// Settings for a kind of hardware: a built-in profile name (nvme-gen4, nvme-gen5,
        /// nvme-array, sata-ssd, hdd, cloud-volume, ci-loop) or a path to a TOML file.
        /// Flags given here override it.
        #[arg(long)]
        profile: Option<String>,
        /// zstd level: 1..22, negative for fast levels, 0 stores uncompressed [default: 1].
        #[arg(long, allow_negative_numbers = true)]
        level: Option<i32>,
        /// Parallel lanes (threads, one per core) [default: one per available core].
        #[arg(long)]
        lanes: Option<u32>,
        /// Reads in flight per lane [default: 8].
        #[arg(long)]
        queue_depth: Option<u32>,
        /// Chunk size: a power of two from 64KiB to 64MiB (suffixes K, M, G are binary) [default: 1M].
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Roll segment files over at this size [default: 1G].
        #[arg(long, value_parser = parse_size)]
        segment_size: Option<u64>,
        /// I/O backend [default: auto].
        #[arg(long, value_enum)]
        io: Option<IoArg>,
        /// Print a machine-readable summary on stdout.
        #[arg(long)]
        json: bool,
        /// Store only the chunks that changed since the newest image of the set.
        #[arg(long, conflicts_with = "differential")]
        incremental: bool,
        /// Store only the chunks that changed since the newest full image of the set.
        #[arg(long)]
        differential: bool,
        /// Carry on an interrupted run of SOURCE in SET (kill -9, power loss, full disk, Ctrl-C),
        /// keeping every complete frame it wrote; starts a new image if there is none.
        #[arg(long)]
        resume: bool,
        /// Take an incremental or differential although SOURCE's identity (serial, WWN, backing
        /// file, inode) differs from the parent's. A different size or sector size is always refused.
        #[arg(long)]
        force: bool,
        /// Store only chunks a filesystem uses (ext2/3/4 read from its bitmaps; anything else
        /// imaged whole): auto (where a map can be made), off (a full sector copy, for
        /// forensics), on (fail if no filesystem can be mapped).
        #[arg(long, value_enum, default_value_t = UsedOnlyArg::Auto)]
        used_only: UsedOnlyArg,
        /// On unreadable sectors: fail (stop, naming the byte ranges and the error) or skip
        /// (find the exact bad sectors, image the rest, record them; exit 6).
        #[arg(long, value_enum, default_value_t = OnReadError::Fail)]
        on_read_error: OnReadError,
        /// Retries of a failing sector before it counts as unreadable (0 to 100).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
        read_retries: u32,
        /// Freeze (FIFREEZE) filesystems of SOURCE that are mounted read-write for the duration of
        /// the run instead of refusing; they are thawed at the end, on error and on Ctrl-C.
        #[arg(long)]
        freeze: bool,
        /// Use this Image ID (16 hex digits) instead of a fresh one; for fixtures.
        #[arg(long, hide = true)]
        image_id: Option<String>,
    },
    /// Consolidate an image into its parent (or with --full its whole chain into a synthetic full
    /// image) without reading the source. Writes a new image for the same point in time, commits it
    /// atomically, then removes the images nothing needs any more.
    Merge {
        /// Image set directory @ the image to consolidate (a unique Image ID prefix), or SET IMAGE_ID.
        image: String,
        /// The Image ID prefix, when not given as SET@ID.
        id: Option<String>,
        /// Fold the whole chain into a full image, not only the parent.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove the images outside a retention policy, consolidating where needed so every kept
    /// image stays restorable. Policies add up: an image any of them keeps is kept.
    Prune {
        /// Image set directory.
        set: PathBuf,
        /// Keep the N newest images.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep the newest image of each of the N most recent days (UTC) that have one.
        #[arg(long)]
        keep_daily: Option<u32>,
        /// Keep the newest image of each of the N most recent weeks (Monday to Sunday, UTC) that have one.
        #[arg(long)]
        keep_weekly: Option<u32>,
        /// Say what would be kept, rewritten and removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove the files of unfinished runs (which `create --resume` could carry on).
        #[arg(long)]
        discard_unfinished: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check every frame of an image without restoring it. SET@ID picks an image (a unique ID prefix); default the newest.
    Verify {
        /// Image set directory, optionally @IMAGE_ID.
        image: String,
        /// Parallel lanes, 1 to 256 [default: one per available core].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        lanes: Option<u32>,
        /// Reads in flight per lane, 1 to 1024.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
        queue_depth: u32,
        #[arg(long, value_enum, default_value_t = IoArg::Auto)]
        io: IoArg,
        #[arg(long)]
        json: bool,
    },
    /// Restore an image to TARGET: a block device, or a file (created sparse if absent).
    /// Every check that can refuse runs before the first byte is written.
    Restore {
        /// Image set directory, optionally @IMAGE_ID (default: the newest image).
        image: String,
        /// Block device or file to write.
        target: PathBuf,
        /// Overwrite a target that holds data, or has another logical sector size than the source.
        #[arg(long)]
        force: bool,
        /// Restore to a smaller block device when everything past its end is zero or unused.
        #[arg(long)]
        allow_shrink: bool,
        /// On block devices, discard zero ranges where the device guarantees zeroed reads (else zero-out).
        #[arg(long)]
        discard: bool,
        /// Verify the whole image before writing anything; a damaged image leaves the target untouched.
        #[arg(long)]
        verify_first: bool,
        /// Write zeros for damaged chunks, restore the rest, list them, exit 3.
        #[arg(long)]
        skip_bad: bool,
        /// Read the target back (O_DIRECT) and compare every chunk with the index's hashes.
        #[arg(long)]
        verify_after: bool,
        /// Parallel lanes, 1 to 256 [default: one per available core].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
        lanes: Option<u32>,
        /// Reads in flight per lane, 1 to 1024.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        queue_depth: u32,
        #[arg(long, value_enum, default_value_t = IoArg::Auto)]
        io: IoArg,
        #[arg(long)]
        json: bool,
    },
    /// List the images of a set, oldest first, and any unfinished runs' leftovers.
    List {
        /// Image set directory.
        set: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Measure a device (read-only, bounded: a few seconds) and choose queue depth, read size and
    /// compression level for it; optionally write them as a profile for `create --profile`.
    Tune {
        /// Block device or file to measure.
        device: PathBuf,
        /// Write the chosen settings to this new TOML file.
        #[arg(long)]
        write_profile: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = IoArg::Auto)]
        io: IoArg,
        #[arg(long)]
        json: bool,
        /// Longest time one read measurement may take, in milliseconds.
        #[arg(long, default_value_t = 400, hide = true)]
        step_ms: u64,
    },
    /// Export an image as a read-only NBD device (browse it with nbdfuse, qemu-nbd or nbd-client
    /// + mount -o ro; copy it out with nbdcopy). Runs until Ctrl-C.
    Serve {
        /// Image set directory, optionally @IMAGE_ID (default: the newest image).
        image: String,
        /// unix:PATH or tcp:HOST:PORT.
        #[arg(long, default_value = "tcp:127.0.0.1:10809")]
        listen: String,
        /// Allow a TCP address other than loopback (NBD has no authentication here).
        #[arg(long)]
        public: bool,
        /// Memory for decompressed chunks.
        #[arg(long, value_parser = parse_size, default_value = "256M")]
        cache_size: u64,
        /// Stop after this many connections have ended (for tests).
        #[arg(long, hide = true)]
        max_connections: Option<u64>,
        /// Accept writes into this new copy-on-write file (so fsck or a journal replay can run on
        /// the export); the image is never written. The overlay lives for this run of serve.
        #[arg(long)]
        writable_overlay: Option<PathBuf>,
    },
    /// Show an image's metadata and statistics (partitions included), or, given a block device or
    /// disk image file, its partition table and filesystems.
    Info {
        /// Image set directory, optionally @IMAGE_ID; or a block device or disk image file.
        image: String,
        #[arg(long)]
        json: bool,
    },
    /// Generate a sample source with mixed content, image it, verify it, restore it and compare.
    Demo {
        /// Size of the sample source, plus 12,345 bytes so its size is odd (a last chunk that is partial, a tail that is not sector-aligned).
        #[arg(long, value_parser = parse_size, default_value = "256M")]
        size: u64,
        /// Where to put the sample and its image set (a new temporary directory by default). The demo
        /// writes sample.img, sample-set and sample-restored.img there and removes them afterwards, so a
        /// directory already holding any of them is refused.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the sample and the image set afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value_t = DEFAULT_LEVEL, allow_negative_numbers = true)]
        level: i32,
        #[arg(long, value_enum, default_value_t = IoArg::Auto)]
        io: IoArg,
    },
}

pub use tintype::profile::parse_size;

/// Parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    // Ctrl-C or SIGTERM: ask the pipelines to stop cleanly (in-flight I/O
    // drains; an unfinished image's frames are kept for `create --resume`);
    // a second one ends the process at once.
    // With --freeze a frozen filesystem must always be thawed, so a second
    // signal does not end the process there (the run stops at its next check).
    let freezing = std::env::args_os().any(|a| a == "--freeze");
    // A file-size limit (`ulimit -f`) would kill the process with SIGXFSZ,
    // silently; ignored, the write fails with EFBIG and the error names the
    // file, like any other write error.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = &tintype::pipeline::INTERRUPTED;
        if !freezing {
            let _ = signal_hook::flag::register_conditional_default(sig, flag);
        }
        let _ = signal_hook::flag::register(sig, flag);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            // A script that asked for JSON gets its answer on stdout even
            // when the command line itself was wrong.
            if code != exit::OK && std::env::args_os().any(|a| a == "--json") {
                let text = e.to_string();
                let msg = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
                println!("{}", error_json(code, "usage", msg, None));
            }
            return ExitCode::from(code);
        }
    };
    let json = cli.command.wants_json();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tintype: error: {e:#}");
            let code = code_for(&e);
            if json {
                println!("{}", error_json(code, kind_of(code), &format!("{e:#}"), e.downcast_ref::<Error>()));
            }
            ExitCode::from(code)
        }
    }
}

impl Command {
    /// Whether the user asked for machine-readable output.
    fn wants_json(&self) -> bool {
        match self {
            Command::Create { json, .. }
            | Command::Merge { json, .. }
            | Command::Prune { json, .. }
            | Command::Verify { json, .. }
            | Command::Restore { json, .. }
            | Command::List { json, .. }
            | Command::Tune { json, .. }
            | Command::Info { json, .. } => *json,
            Command::Serve { .. } | Command::Demo { .. } => false,
        }
    }
}

/// The exit code's meaning as one word, for `--json` errors.
fn kind_of(code: u8) -> &'static str {
    match code {
        exit::USAGE => "usage",
        exit::DAMAGED => "damaged",
        exit::NOT_AN_IMAGE => "not_an_image",
        exit::BUSY => "busy",
        exit::INTERRUPTED => "interrupted",
        _ => "failure",
    }
}

/// A failed `--json` command's stdout: `{"error": {...}}` with the exit
/// code, its kind, the whole message, and what the library error says of
/// where (file, byte offset, errno, image) when it knows.
fn error_json(code: u8, kind: &str, message: &str, e: Option<&Error>) -> String {
    let mut v = serde_json::json!({ "exit_code": code, "kind": kind, "message": message });
    let mut put = |k: &str, x: serde_json::Value| {
        v[k] = x;
    };
    match e {
        Some(Error::Io { op, path, offset, cause }) => {
            put("path", path.to_string_lossy().into());
            put("operation", (*op).into());
            if let Some(o) = offset {
                put("offset", (*o).into());
            }
            if let Some(n) = cause.raw_os_error() {
                put("errno", n.into());
            }
            put("cause", cause.to_string().into());
        }
        Some(Error::Corrupt { path, offset, what }) => {
            put("path", path.to_string_lossy().into());
            put("offset", (*offset).into());
            put("cause", what.as_str().into());
        }
        Some(Error::UnsupportedVersion { path, found, supported, .. }) => {
            put("path", path.to_string_lossy().into());
            put("format_version", (*found).into());
            put("supported_version", (*supported).into());
        }
        Some(Error::NotCommitted { path, why })
        | Some(Error::Unusable { path, why })
        | Some(Error::Busy { path, why }) => {
            put("path", path.to_string_lossy().into());
            put("cause", why.as_str().into());
        }
        Some(Error::BrokenChain { path, image, why }) => {
            put("path", path.to_string_lossy().into());
            put("image_id", image.as_str().into());
            put("cause", why.as_str().into());
        }
        Some(Error::InvalidSetting(_)) | Some(Error::Interrupted(_)) | None => {}
    }
    serde_json::json!({ "error": v }).to_string()
}

fn code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::InvalidSetting(_)) => exit::USAGE,
        Some(Error::Corrupt { .. }) | Some(Error::BrokenChain { .. }) => exit::DAMAGED,
        Some(Error::Busy { .. }) => exit::BUSY,
        Some(Error::NotCommitted { .. }) | Some(Error::UnsupportedVersion { .. }) => exit::NOT_AN_IMAGE,
        Some(Error::Interrupted(_)) => exit::INTERRUPTED,
        _ => exit::FAILURE,
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Create {
            source,
            set,
            profile,
            level,
            lanes,
            queue_depth,
            chunk_size,
            segment_size,
            io,
            json,
            image_id,
            incremental,
            differential,
            resume,
            force,
            used_only,
            freeze,
            on_read_error,
            read_retries,
        } => {
            // Every other command reads SET@HEX as "image HEX of SET".
            if let (_, Some(sel)) = tintype::set::parse_spec(&set.to_string_lossy()) {
                if !set.is_dir() {
                    return Err(Error::InvalidSetting(format!(
                        "SET {}: the other commands would read `@{sel}` as an image ID; name the set directory \
                         without `@` and hex digits at its end",
                        set.display()
                    ))
                    .into());
                }
            }
            let mut o = CreateOptions::new(source, set);
            o.used_only = match used_only {
                UsedOnlyArg::Auto => tintype::pipeline::capture::UsedOnly::Auto,
                UsedOnlyArg::Off => tintype::pipeline::capture::UsedOnly::Off,
                UsedOnlyArg::On => tintype::pipeline::capture::UsedOnly::On,
            };
            o.freeze = freeze;
            o.skip_unreadable = on_read_error == OnReadError::Skip;
            o.read_retries = read_retries;
            o.kind = if incremental {
                tintype::format::manifest::ImageKind::Incremental
            } else if differential {
                tintype::format::manifest::ImageKind::Differential
            } else {
                tintype::format::manifest::ImageKind::Full
            };
            o.resume = resume;
            o.force = force;
            // Flags, then the profile, then the built-in defaults.
            let p = match &profile {
                Some(name) => {
                    let (p, origin) = tintype::profile::Profile::load(name)?;
                    o.profile = Some(origin);
                    p
                }
                None => tintype::profile::Profile::default(),
            };
            o.level = level.or(p.level).unwrap_or(DEFAULT_LEVEL);
            o.lanes = lanes.or(p.lanes);
            o.queue_depth = queue_depth.or(p.queue_depth).unwrap_or(DEFAULT_QUEUE_DEPTH);
            // Where the chunk size comes from, to name it when it is wrong.
            let chunk_from = match (chunk_size, &p.chunk_size, &o.profile) {
                (Some(_), _, _) => "--chunk-size".to_string(),
                (None, Some(_), Some(origin)) => format!("chunk_size of the profile {origin}"),
                (None, None, Some(origin)) => format!("read_size of the profile {origin}"),
                (None, _, None) => "--chunk-size".to_string(),
            };
            let chunk_size = chunk_size.or(p.chunk_size_bytes());
            o.chunk_size_given = chunk_size.is_some();
            let chunk_size = chunk_size.unwrap_or(u64::from(DEFAULT_CHUNK_BYTES));
            o.chunk_size_bytes = u32::try_from(chunk_size)
                .map_err(|_| Error::InvalidSetting(format!("{chunk_from} {chunk_size}: at most 64 MiB")))?;
            o.segment_size_bytes = segment_size.or(p.segment_size_bytes()).unwrap_or(DEFAULT_SEGMENT_BYTES);
            o.io = match (io, p.io.as_deref()) {
                (Some(a), _) => a.into(),
                (None, Some("uring")) => IoChoice::Uring,
                (None, Some("portable")) => IoChoice::Portable,
                (None, _) => IoChoice::Auto,
            };
            o.image_id = match image_id {
                None => None,
                Some(s) => Some(tintype::format::ImageId::parse(&s).ok_or_else(|| {
                    Error::InvalidSetting(format!("--image-id {s:?}: need 16 hex digits, not all zero"))
                })?),
            };
            let obs = output::Console::new("imaging", json);
            let report = tintype::create(&o, &obs).map_err(|e| match (e, &o.profile) {
                // Name where a bad value came from when it was not a flag.
                (Error::InvalidSetting(m), Some(origin)) => {
                    Error::InvalidSetting(format!("{m} (settings not given as flags come from {origin})"))
                }
                (e, _) => e,
            })?;
            obs.finish();
            output::print_create(&report, json);
            Ok(if report.manifest.unreadable.is_empty() { exit::OK } else { exit::UNREADABLE })
        }
        Command::Verify { image, lanes, queue_depth, io, json } => {
            let (set, sel) = parse_spec(&image);
            let mut o = VerifyOptions::new(set);
            o.image = sel;
            o.lanes = lanes;
            o.queue_depth = queue_depth;
            o.io = io.into();
            let obs = output::Console::new("verifying", json);
            let report = tintype::verify(&o, &obs)?;
            obs.finish();
            output::print_verify(&report, json);
            Ok(if report.is_clean() { exit::OK } else { exit::DAMAGED })
        }
        Command::Restore {
            image,
            target,
            force,
            allow_shrink,
            discard,
            verify_first,
            skip_bad,
            verify_after,
            lanes,
            queue_depth,
            io,
            json,
        } => {
            let (set, sel) = parse_spec(&image);
            let mut o = tintype::RestoreOptions::new(set, target);
            o.image = sel;
            o.force = force;
            o.allow_shrink = allow_shrink;
            o.discard = discard;
            o.verify_first = verify_first;
            o.skip_bad = skip_bad;
            o.verify_after = verify_after;
            o.lanes = lanes;
            o.queue_depth = queue_depth;
            o.io = io.into();
            let obs = output::Console::new("restoring", json);
            let report = tintype::restore(&o, &obs)?;
            obs.finish();
            output::print_restore(&report, json);
            Ok(if report.is_clean() { exit::OK } else { exit::DAMAGED })
        }
        Command::Tune { device, write_profile, io, json, step_ms } => {
            if let Some(p) = write_profile.as_deref().filter(|p| p.exists()) {
                return Err(Error::InvalidSetting(format!(
                    "--write-profile {}: the file exists; tune never replaces a file",
                    p.display()
                ))
                .into());
            }
            let mut o = tintype::tune::TuneOptions::new(device);
            o.io = io.into();
            o.step_time = std::time::Duration::from_millis(step_ms.clamp(1, 10_000));
            let obs = output::Console::new("measuring", json);
            let report = tintype::tune::tune(&o, &obs)?;
            obs.finish();
            if let Some(path) = &write_profile {
                tintype::tune::write_profile(&report.profile, path)?;
            }
            output::print_tune(&report, write_profile.as_deref(), json);
            Ok(exit::OK)
        }
        Command::List { set, json } => {
            let set = ImageSet::open(&set)?;
            output::print_list(&set, json)?;
            Ok(exit::OK)
        }
        Command::Merge { image, id, full, json } => {
            let (set, sel) = match id {
                Some(id) => (PathBuf::from(image), Some(id)),
                None => parse_spec(&image),
            };
            let Some(sel) = sel.filter(|s| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                return Err(Error::InvalidSetting(
                    "merge needs the image to consolidate: SET@IMAGE_ID or SET IMAGE_ID (a unique hex prefix)".into(),
                )
                .into());
            };
            let o = tintype::merge::MergeOptions { set, image: sel.to_ascii_lowercase(), full, io: Default::default() };
            let obs = output::Console::new("merging", json);
            let report = tintype::merge::merge(&o, &obs)?;
            obs.finish();
            output::print_merge(&report, json);
            Ok(exit::OK)
        }
        Command::Prune { set, keep_last, keep_daily, keep_weekly, dry_run, discard_unfinished, json } => {
            let o = tintype::merge::PruneOptions {
                set,
                keep_last,
                keep_daily,
                keep_weekly,
                dry_run,
                discard_unfinished,
                io: Default::default(),
            };
            let obs = output::Console::new("consolidating", json);
            let report = tintype::merge::prune(&o, &obs)?;
            obs.finish();
            output::print_prune(&report, json);
            Ok(exit::OK)
        }
        Command::Info { image, json } => {
            let path = std::path::Path::new(&image);
            if path.exists() && !path.is_dir() {
                // A device or disk image file: its partitions and filesystems.
                let src = tintype::io::device::Source::open(path, false)?;
                let meta = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
                let layout = tintype::fs::analyze(&meta, &meta, src.size_bytes, src.logical_sector_bytes);
                output::print_layout(&image, src.size_bytes, &layout.table, &layout.partitions, &layout.notes, json);
                return Ok(exit::OK);
            }
            let (set, sel) = parse_spec(&image);
            let set = ImageSet::open(&set)?;
            let img = set.resolve(sel.as_deref())?;
            let all = set.images()?;
            output::print_info(&img, &all, json);
            Ok(exit::OK)
        }
        Command::Serve { image, listen, public, cache_size, max_connections, writable_overlay } => {
            let (set, sel) = parse_spec(&image);
            let o = tintype::serve::ServeOptions {
                set,
                image: sel,
                listen: tintype::serve::Listen::parse(&listen)?,
                public,
                cache_bytes: cache_size,
                max_connections,
                overlay: writable_overlay,
            };
            let obs = output::Console::new("serving", true);
            tintype::serve::nbd::serve(&o, &obs)?;
            Ok(exit::OK)
        }
        Command::Demo { size, dir, keep, level, io } => demo::run(size, dir, keep, level, io.into()),
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
