//! The command line as clap sees it: the commands, their flags and help.
//! Parsing only; [`super::commands`] turns each into a run of the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tintype::io::IoChoice;
use tintype::pipeline::capture::DEFAULT_LEVEL;
use tintype::units::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "tintype",
    version,
    about = "Image block devices into compressed, checksummed, seekable image sets at the speed of the hardware",
    after_help = super::exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IoArg {
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
pub enum OnReadErrorArg {
    Fail,
    Skip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UsedOnlyArg {
    Auto,
    Off,
    On,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Image SOURCE (a block device or file) into the image set directory SET.
    Create(CreateArgs),
    /// Consolidate an image into its parent (or with --full its whole chain into a synthetic full
    /// image) without reading the source. Writes a new image for the same point in time, commits it
    /// atomically, then removes the images nothing needs any more.
    Merge(MergeArgs),
    /// Remove the images outside a retention policy, consolidating where needed so every kept
    /// image stays restorable. Policies add up: an image any of them keeps is kept.
    Prune(PruneArgs),
    /// Check every frame of an image without restoring it. SET@ID picks an image (a unique ID prefix); default the newest.
    Verify(VerifyArgs),
    /// Restore an image to TARGET: a block device, or a file (created sparse if absent).
    /// Every check that can refuse runs before the first byte is written.
    Restore(RestoreArgs),
    /// List the images of a set, oldest first, and any unfinished runs' leftovers.
    List(ListArgs),
    /// Measure a device (read-only, bounded: a few seconds) and choose queue depth, read size and
    /// compression level for it; optionally write them as a profile for `create --profile`.
    Tune(TuneArgs),
    /// Export an image as a read-only NBD device (browse it with nbdfuse, qemu-nbd or nbd-client
    /// + mount -o ro; copy it out with nbdcopy). Runs until Ctrl-C.
    Serve(ServeArgs),
    /// Show an image's metadata and statistics (partitions included), or, given a block device or
    /// disk image file, its partition table and filesystems.
    Info(InfoArgs),
    /// Generate a sample source with mixed content, image it, verify it, restore it and compare.
    Demo(DemoArgs),
}

/// `tintype create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Block device or regular file to image; opened read-only.
    pub source: PathBuf,
    /// Image set directory (created if absent).
    pub set: PathBuf,
    /// Settings for a kind of hardware: a built-in profile name (nvme-gen4, nvme-gen5,
    /// nvme-array, sata-ssd, hdd, cloud-volume, ci-loop) or a path to a TOML file.
    /// Flags given here override it.
    #[arg(long)]
    pub profile: Option<String>,
    /// zstd level: 1..22, negative for fast levels, 0 stores uncompressed [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    pub level: Option<i32>,
    /// Parallel lanes (threads, one per core) [default: one per available core].
    #[arg(long)]
    pub lanes: Option<u32>,
    /// Reads in flight per lane [default: 8].
    #[arg(long)]
    pub queue_depth: Option<u32>,
    /// Chunk size: a power of two from 64KiB to 64MiB (suffixes K, M, G are binary) [default: 1M].
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Roll segment files over at this size [default: 1G].
    #[arg(long, value_parser = parse_size)]
    pub segment_size: Option<u64>,
    /// I/O backend [default: auto].
    #[arg(long, value_enum)]
    pub io: Option<IoArg>,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store only the chunks that changed since the newest image of the set.
    #[arg(long, conflicts_with = "differential")]
    pub incremental: bool,
    /// Store only the chunks that changed since the newest full image of the set.
    #[arg(long)]
    pub differential: bool,
    /// Carry on an interrupted run of SOURCE in SET (kill -9, power loss, full disk, Ctrl-C),
    /// keeping every complete frame it wrote; starts a new image if there is none.
    #[arg(long)]
    pub resume: bool,
    /// Take an incremental or differential although SOURCE's identity (serial, WWN, backing
    /// file, inode) differs from the parent's. A different size or sector size is always refused.
    #[arg(long)]
    pub force: bool,
    /// Store only chunks a filesystem uses (ext2/3/4 read from its bitmaps; anything else
    /// imaged whole): auto (where a map can be made), off (a full sector copy, for
    /// forensics), on (fail if no filesystem can be mapped).
    #[arg(long, value_enum, default_value_t = UsedOnlyArg::Auto)]
    pub used_only: UsedOnlyArg,
    /// On unreadable sectors: fail (stop, naming the byte ranges and the error) or skip
    /// (find the exact bad sectors, image the rest, record them; exit 6).
    #[arg(long, value_enum, default_value_t = OnReadErrorArg::Fail)]
    pub on_read_error: OnReadErrorArg,
    /// Retries of a failing sector before it counts as unreadable (0 to 100).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub read_retries: u32,
    /// Freeze (FIFREEZE) filesystems of SOURCE that are mounted read-write for the duration of
    /// the run instead of refusing; they are thawed at the end, on error and on Ctrl-C.
    #[arg(long)]
    pub freeze: bool,
    /// Use this Image ID (16 hex digits) instead of a fresh one; for fixtures.
    #[arg(long, hide = true)]
    pub image_id: Option<String>,
}

/// `tintype merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Image set directory @ the image to consolidate (a unique Image ID prefix), or SET IMAGE_ID.
    pub image: String,
    /// The Image ID prefix, when not given as SET@ID.
    pub id: Option<String>,
    /// Fold the whole chain into a full image, not only the parent.
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

/// `tintype prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Image set directory.
    pub set: PathBuf,
    /// Keep the N newest images.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest image of each of the N most recent days (UTC) that have one.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep the newest image of each of the N most recent weeks (Monday to Sunday, UTC) that have one.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Say what would be kept, rewritten and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the files of unfinished runs (which `create --resume` could carry on).
    #[arg(long)]
    pub discard_unfinished: bool,
    #[arg(long)]
    pub json: bool,
}

/// `tintype verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Image set directory, optionally @IMAGE_ID.
    pub image: String,
    /// Parallel lanes, 1 to 256 [default: one per available core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub lanes: Option<u32>,
    /// Reads in flight per lane, 1 to 1024.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queue_depth: u32,
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    pub io: IoArg,
    #[arg(long)]
    pub json: bool,
}

/// `tintype restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Image set directory, optionally @IMAGE_ID (default: the newest image).
    pub image: String,
    /// Block device or file to write.
    pub target: PathBuf,
    /// Overwrite a target that holds data, or has another logical sector size than the source.
    #[arg(long)]
    pub force: bool,
    /// Restore to a smaller block device when everything past its end is zero or unused.
    #[arg(long)]
    pub allow_shrink: bool,
    /// On block devices, discard zero ranges where the device guarantees zeroed reads (else zero-out).
    #[arg(long)]
    pub discard: bool,
    /// Verify the whole image before writing anything; a damaged image leaves the target untouched.
    #[arg(long)]
    pub verify_first: bool,
    /// Write zeros for damaged chunks, restore the rest, list them, exit 3.
    #[arg(long)]
    pub skip_bad: bool,
    /// Read the target back (O_DIRECT) and compare every chunk with the index's hashes.
    #[arg(long)]
    pub verify_after: bool,
    /// Parallel lanes, 1 to 256 [default: one per available core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub lanes: Option<u32>,
    /// Reads in flight per lane, 1 to 1024.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queue_depth: u32,
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    pub io: IoArg,
    #[arg(long)]
    pub json: bool,
}

/// `tintype list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Image set directory.
    pub set: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `tintype tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Block device or file to measure.
    pub device: PathBuf,
    /// Write the chosen settings to this new TOML file.
    #[arg(long)]
    pub write_profile: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    pub io: IoArg,
    #[arg(long)]
    pub json: bool,
    /// Longest time one read measurement may take, in milliseconds.
    #[arg(long, default_value_t = 400, hide = true)]
    pub step_ms: u64,
}

/// `tintype serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Image set directory, optionally @IMAGE_ID (default: the newest image).
    pub image: String,
    /// unix:PATH or tcp:HOST:PORT.
    #[arg(long, default_value = "tcp:127.0.0.1:10809")]
    pub listen: String,
    /// Allow a TCP address other than loopback (NBD has no authentication here).
    #[arg(long)]
    pub public: bool,
    /// Memory for decompressed chunks.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub cache_size: u64,
    /// Stop after this many connections have ended (for tests).
    #[arg(long, hide = true)]
    pub max_connections: Option<u64>,
    /// Accept writes into this new copy-on-write file (so fsck or a journal replay can run on
    /// the export); the image is never written. The overlay lives for this run of serve.
    #[arg(long)]
    pub writable_overlay: Option<PathBuf>,
}

/// `tintype info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Image set directory, optionally @IMAGE_ID; or a block device or disk image file.
    pub image: String,
    #[arg(long)]
    pub json: bool,
}

/// `tintype demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Size of the sample source, plus 12,345 bytes so its size is odd (a last chunk that is partial, a tail that is not sector-aligned).
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub size: u64,
    /// Where to put the sample and its image set (a new temporary directory by default). The demo
    /// writes sample.img, sample-set and sample-restored.img there and removes them afterwards, so a
    /// directory already holding any of them is refused.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the sample and the image set afterwards.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value_t = DEFAULT_LEVEL, allow_negative_numbers = true)]
    pub level: i32,
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    pub io: IoArg,
}
