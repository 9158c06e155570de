//! `tintype create`: settings resolved as flag, then profile, then the
//! built-in default; then the library's `create`.

use tintype::format::manifest::ImageKind;
use tintype::format::ImageId;
use tintype::io::quiesce::WhenMounted;
use tintype::io::IoChoice;
use tintype::pipeline::capture::{
    CreateOptions, OnReadError, UsedOnly, DEFAULT_CHUNK_BYTES, DEFAULT_LEVEL, DEFAULT_QUEUE_DEPTH,
    DEFAULT_SEGMENT_BYTES,
};
use tintype::profile::Profile;
use tintype::set::select::SetSpec;
use tintype::Error;

use crate::cli::args::{CreateArgs, OnReadErrorArg, UsedOnlyArg};
use crate::cli::exit;
use crate::cli::output::{self, Console};

pub fn run(a: CreateArgs) -> anyhow::Result<u8> {
    refuse_set_named_like_a_selector(&a)?;
    let o = options(&a)?;
    let format = output::Format::from_json_flag(a.json);
    let obs = Console::new("imaging", format);
    let report = tintype::create(&o, &obs).map_err(|e| match (e, &o.profile) {
        // Name where a bad value came from when it was not a flag.
        (Error::InvalidSetting(m), Some(origin)) => {
            Error::InvalidSetting(format!("{m} (settings not given as flags come from {origin})"))
        }
        (e, _) => e,
    })?;
    obs.finish();
    output::create::print(&report, format);
    Ok(if report.manifest.unreadable.is_empty() { exit::OK } else { exit::UNREADABLE })
}

/// Every other command reads SET@HEX as "image HEX of SET": a new set must
/// not be named so.
fn refuse_set_named_like_a_selector(a: &CreateArgs) -> Result<(), Error> {
    match SetSpec::parse(&a.set.to_string_lossy()).image {
        Some(sel) if !a.set.is_dir() => Err(Error::InvalidSetting(format!(
            "SET {}: the other commands would read `@{sel}` as an image ID; name the set directory without `@` and \
             hex digits at its end",
            a.set.display()
        ))),
        _ => Ok(()),
    }
}

/// The library's options: each setting from its flag, else the profile,
/// else the built-in default.
fn options(a: &CreateArgs) -> Result<CreateOptions, Error> {
    let mut o = CreateOptions::new(&a.source, &a.set);
    o.used_only = match a.used_only {
        UsedOnlyArg::Auto => UsedOnly::Auto,
        UsedOnlyArg::Off => UsedOnly::Off,
        UsedOnlyArg::On => UsedOnly::On,
    };
    o.when_mounted = if a.freeze { WhenMounted::Freeze } else { WhenMounted::Refuse };
    o.on_read_error = match a.on_read_error {
        OnReadErrorArg::Fail => OnReadError::Fail,
        OnReadErrorArg::Skip => OnReadError::Skip,
    };
    o.read_retries = a.read_retries;
    o.kind = match (a.incremental, a.differential) {
        (true, _) => ImageKind::Incremental,
        (_, true) => ImageKind::Differential,
        _ => ImageKind::Full,
    };
    o.resume = a.resume;
    o.force = a.force;
    let p = match &a.profile {
        Some(name) => {
            let (p, origin) = Profile::load(name)?;
            o.profile = Some(origin);
            p
        }
        None => Profile::default(),
    };
    o.level = a.level.or(p.level).unwrap_or(DEFAULT_LEVEL);
    o.lanes = a.lanes.or(p.lanes);
    o.queue_depth = a.queue_depth.or(p.queue_depth).unwrap_or(DEFAULT_QUEUE_DEPTH);
    chunk_size(a, &p, &mut o)?;
    o.segment_size_bytes = a.segment_size.or(p.segment_size_bytes()).unwrap_or(DEFAULT_SEGMENT_BYTES);
    o.io = match (a.io, p.io.as_deref()) {
        (Some(arg), _) => arg.into(),
        (None, Some("uring")) => IoChoice::Uring,
        (None, Some("portable")) => IoChoice::Portable,
        (None, _) => IoChoice::Auto,
    };
    o.image_id = match &a.image_id {
        None => None,
        Some(s) => Some(
            ImageId::parse(s)
                .ok_or_else(|| Error::InvalidSetting(format!("--image-id {s:?}: need 16 hex digits, not all zero")))?,
        ),
    };
    Ok(o)
}

/// The chunk size, and whether it was asked for (a flag or a profile)
/// rather than the default; a bad one names where it came from.
fn chunk_size(a: &CreateArgs, p: &Profile, o: &mut CreateOptions) -> Result<(), Error> {
    let from = match (a.chunk_size, &p.chunk_size, &o.profile) {
        (Some(_), _, _) => "--chunk-size".to_string(),
        (None, Some(_), Some(origin)) => format!("chunk_size of the profile {origin}"),
        (None, None, Some(origin)) => format!("read_size of the profile {origin}"),
        (None, _, None) => "--chunk-size".to_string(),
    };
    let asked = a.chunk_size.or(p.chunk_size_bytes());
    o.chunk_size_given = asked.is_some();
    let bytes = asked.unwrap_or(u64::from(DEFAULT_CHUNK_BYTES));
    o.chunk_size_bytes =
        u32::try_from(bytes).map_err(|_| Error::InvalidSetting(format!("{from} {bytes}: at most 64 MiB")))?;
    Ok(())
}
