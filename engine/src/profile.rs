//! Hardware profiles: settings for one kind of hardware, between the
//! command-line flags (which override them) and the built-in defaults.
//! `profiles/*.toml` in the repository are compiled in, so `--profile NAME`
//! works wherever the binary is; `--profile PATH` reads any file, such as
//! one `tintype tune` wrote. The schema is in docs/TUNING.md.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::parse_size;

/// A profile. Every field is optional: what it leaves out falls through to
/// the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Reads in flight per lane.
    pub queue_depth: Option<u32>,
    /// Bytes per read. In this version a lane reads one chunk per read, so
    /// this is the chunk size; giving both requires them to be equal.
    pub read_size: Option<String>,
    pub chunk_size: Option<String>,
    /// zstd level (0 stores uncompressed, negative is fast).
    pub level: Option<i32>,
    /// Lanes (threads); absent means one per available core.
    pub lanes: Option<u32>,
    pub segment_size: Option<String>,
    /// "auto", "uring" or "portable".
    pub io: Option<String>,
}

/// The profiles shipped in `profiles/`, compiled in.
pub const BUILTIN: &[(&str, &str)] = &[
    ("nvme-gen4", include_str!("../../profiles/nvme-gen4.toml")),
    ("nvme-gen5", include_str!("../../profiles/nvme-gen5.toml")),
    ("nvme-array", include_str!("../../profiles/nvme-array.toml")),
    ("sata-ssd", include_str!("../../profiles/sata-ssd.toml")),
    ("hdd", include_str!("../../profiles/hdd.toml")),
    ("cloud-volume", include_str!("../../profiles/cloud-volume.toml")),
    ("ci-loop", include_str!("../../profiles/ci-loop.toml")),
];

impl Profile {
    /// Parse and check a profile's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile> {
        let p: Profile = toml::from_str(text)
            .map_err(|e| Error::InvalidSetting(format!("profile {origin}: {}", e.message().trim())))?;
        let bad = |what: String| Err(Error::InvalidSetting(format!("profile {origin}: {what}")));
        for (key, v) in [("read_size", &p.read_size), ("chunk_size", &p.chunk_size), ("segment_size", &p.segment_size)]
        {
            if let Some(v) = v {
                if let Err(e) = parse_size(v) {
                    return bad(format!("{key}: {e}"));
                }
            }
        }
        if let (Some(r), Some(c)) = (&p.read_size, &p.chunk_size) {
            if parse_size(r) != parse_size(c) {
                return bad(format!(
                    "read_size {r} differs from chunk_size {c}; in this version a lane reads one chunk per read"
                ));
            }
        }
        if let Some(io) = &p.io {
            if !matches!(io.as_str(), "auto" | "uring" | "portable") {
                return bad(format!("io {io:?}: use \"auto\", \"uring\" or \"portable\""));
            }
        }
        Ok(p)
    }

    /// The chunk size the profile asks for (chunk_size, else read_size).
    pub fn chunk_size_bytes(&self) -> Option<u64> {
        self.chunk_size.as_deref().or(self.read_size.as_deref()).and_then(|s| parse_size(s).ok())
    }

    pub fn segment_size_bytes(&self) -> Option<u64> {
        self.segment_size.as_deref().and_then(|s| parse_size(s).ok())
    }

    /// Load a profile: a path to a TOML file (anything with a `/` or ending
    /// in `.toml`), or the name of a built-in profile. Returns it and where
    /// it came from.
    pub fn load(name_or_path: &str) -> Result<(Profile, String)> {
        let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml");
        if looks_like_path {
            let text = std::fs::read_to_string(Path::new(name_or_path))
                .map_err(|e| Error::InvalidSetting(format!("--profile {name_or_path}: cannot read it: {e}")))?;
            return Ok((Profile::parse(&text, name_or_path)?, name_or_path.to_string()));
        }
        match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((n, text)) => Ok((Profile::parse(text, n)?, format!("built-in profile {n}"))),
            None => Err(Error::InvalidSetting(format!(
                "--profile {name_or_path}: no such built-in profile (built in: {}); give a path to use a file",
                BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The profile as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("profiles serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::format_size;

    #[test]
    fn every_builtin_profile_parses_and_is_consistent() {
        for (name, text) in BUILTIN {
            let p = Profile::parse(text, name).unwrap();
            assert_eq!(p.name.as_deref(), Some(*name));
            let cs = p.chunk_size_bytes().unwrap();
            assert!(cs.is_power_of_two() && (64 << 10..=64 << 20).contains(&cs), "{name}: chunk size {cs}");
            assert!(p.queue_depth.is_some_and(|q| (1..=1024).contains(&q)), "{name}");
            assert!(p.level.is_some(), "{name}");
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_the_key_named() {
        assert!(Profile::parse("queue_depth = \"x\"", "t").unwrap_err().to_string().contains("profile t"));
        assert!(Profile::parse("bogus = 1", "t").unwrap_err().to_string().contains("bogus"));
        assert!(Profile::parse("chunk_size = \"1X\"", "t").unwrap_err().to_string().contains("chunk_size"));
        assert!(Profile::parse("read_size = \"4M\"\nchunk_size = \"1M\"", "t")
            .unwrap_err()
            .to_string()
            .contains("read_size"));
        assert!(Profile::parse("io = \"spdk\"", "t").unwrap_err().to_string().contains("io"));
        assert!(Profile::load("no-such-profile").unwrap_err().to_string().contains("nvme-gen4"));
    }

    #[test]
    fn a_profile_round_trips_through_toml() {
        let p = Profile { chunk_size: Some(format_size(4 << 20)), level: Some(3), ..Profile::default() };
        assert_eq!(Profile::parse(&p.to_toml(), "round trip").unwrap(), p);
    }
}
