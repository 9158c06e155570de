//! Exit codes: the one table of them (README.md and `--help` point here),
//! how a library error maps to one, and a failed `--json` command's answer.

use tintype::Error;

/// One exit code: its number and the one word `--json` errors carry (what
/// each means is README.md's table, kept in step by a test).
#[derive(Debug, Clone, Copy)]
pub struct Code {
    pub code: u8,
    pub kind: &'static str,
}

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const DAMAGED: u8 = 3;
pub const NOT_AN_IMAGE: u8 = 4;
pub const BUSY: u8 = 5;
pub const UNREADABLE: u8 = 6;
pub const INTERRUPTED: u8 = 130;

/// Every exit code tintype uses.
pub const CODES: &[Code] = &[
    Code { code: OK, kind: "ok" },
    Code { code: FAILURE, kind: "failure" },
    Code { code: USAGE, kind: "usage" },
    Code { code: DAMAGED, kind: "damaged" },
    Code { code: NOT_AN_IMAGE, kind: "not_an_image" },
    Code { code: BUSY, kind: "busy" },
    Code { code: UNREADABLE, kind: "unreadable" },
    Code { code: INTERRUPTED, kind: "interrupted" },
];

/// What `--help` ends with (the same table; a test keeps them equal).
pub const HELP: &str =
    "Exit codes: 0 success, 1 failure, 2 bad usage, 3 image damaged, 4 not a committed or supported \
                        image, 5 image set in use by another run, 6 image committed but the source had unreadable \
                        sectors, 130 interrupted (README.md, \"Exit codes\").";

/// The exit code for a failed command.
pub fn code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::InvalidSetting(_)) => USAGE,
        Some(Error::Corrupt { .. }) | Some(Error::BrokenChain { .. }) => DAMAGED,
        Some(Error::Busy { .. }) => BUSY,
        Some(Error::NotCommitted { .. }) | Some(Error::UnsupportedVersion { .. }) => NOT_AN_IMAGE,
        Some(Error::Interrupted { .. }) => INTERRUPTED,
        _ => FAILURE,
    }
}

/// The exit code's meaning as one word, for `--json` errors.
pub fn kind_of(code: u8) -> &'static str {
    CODES.iter().find(|c| c.code == code).map_or("failure", |c| c.kind)
}

/// A failed `--json` command's stdout: `{"error": {...}}` with the exit
/// code, its kind, the whole message, what the library error says of where
/// (file, byte offset, errno, image) when it knows, and why as one word a
/// script can match (`reason`: `mounted`, `holds_data`, `parent_missing`…).
pub fn error_json(code: u8, message: &str, e: Option<&Error>) -> String {
    let mut v = serde_json::json!({ "exit_code": code, "kind": kind_of(code), "message": message });
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
        Some(Error::NotCommitted { path, reason, why }) => {
            put("path", path.to_string_lossy().into());
            put("reason", serde_json::to_value(reason).unwrap_or_default());
            put("cause", why.as_str().into());
        }
        Some(Error::Unusable { path, reason, why }) => {
            put("path", path.to_string_lossy().into());
            put("reason", serde_json::to_value(reason).unwrap_or_default());
            put("cause", why.as_str().into());
        }
        Some(Error::Busy { path, why }) => {
            put("path", path.to_string_lossy().into());
            put("cause", why.as_str().into());
        }
        Some(Error::BrokenChain { path, image, reason, why }) => {
            put("path", path.to_string_lossy().into());
            put("image_id", image.as_str().into());
            put("reason", serde_json::to_value(reason).unwrap_or_default());
            put("cause", why.as_str().into());
        }
        Some(Error::Interrupted { left, .. }) => put("left", serde_json::to_value(left).unwrap_or_default()),
        Some(Error::InvalidSetting(_)) | None => {}
    }
    serde_json::json!({ "error": v }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_names_every_exit_code() {
        for c in CODES {
            assert!(HELP.contains(&format!("{} ", c.code)), "--help misses exit code {}", c.code);
        }
    }

    #[test]
    fn the_readme_table_lists_every_exit_code_with_its_meaning() {
        let readme = include_str!("../../../README.md");
        for c in CODES {
            let row = format!("| {} |", c.code);
            assert!(readme.contains(&row), "README.md's exit-code table misses {}", c.code);
        }
    }
}
