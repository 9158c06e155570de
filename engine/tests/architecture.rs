//! The shape of the library, checked: every import points down the layers
//! docs/ARCHITECTURE.md draws, no two files import each other (directly or
//! round a cycle), and files and functions stay small enough to read whole.
//! Reads `engine/src` as text: every `crate::`, `super::` and `self::` path
//! outside tests, comments and strings, `use` trees expanded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may use. Everything may
/// use `error`; `lib.rs` and the fuzz harnesses sit on top of all of it.
const MAY_USE: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("observe", &[]),
    ("units", &[]),
    ("sample", &[]),
    ("profile", &["units"]),
    ("codec", &[]),
    ("fs", &[]),
    ("io", &["observe"]),
    ("format", &["codec"]),
    ("set", &["observe", "io", "codec", "format"]),
    ("pipeline", &["observe", "io", "codec", "fs", "format", "set", "sample", "profile", "units"]),
    ("merge", &["observe", "io", "codec", "format", "set"]),
    ("serve", &["observe", "io", "codec", "format", "set"]),
];

/// Files that may be larger than the guide figure, and why.
const LONG_FILES: &[(&str, &str)] = &[];
/// Functions that may be longer than the guide figure, and why.
const LONG_FUNCTIONS: &[(&str, &str)] = &[];
const FILE_LINES_MAX: usize = 600;
const FUNCTION_LINES_MAX: usize = 100;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A library source file: its module path (`["pipeline", "capture"]` for
/// `pipeline/capture/mod.rs`) and its code without tests, comments and
/// string contents.
#[derive(Debug)]
struct Source {
    rel: String,
    module: Vec<String>,
    code: String,
}

fn library_files() -> Vec<Source> {
    let mut out = Vec::new();
    // The binary's own modules (`cli/`, `main.rs`) are not the library.
    for rel in rust_files().into_iter().filter(|r| !r.starts_with("cli/") && r != "main.rs") {
        let mut module: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
        if module.last().is_some_and(|m| m == "mod" || m == "lib") {
            module.pop();
        }
        let text = std::fs::read_to_string(src().join(&rel)).unwrap();
        out.push(Source { rel, module, code: strip(&without_tests(&text)) });
    }
    out
}

/// The file without its `#[cfg(test)] mod tests { … }` (tests may use anything).
fn without_tests(text: &str) -> String {
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// Comments and the contents of string and char literals blanked out.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path the code names: `use` trees expanded, and paths written out
/// in expressions and types.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use` statements first (expanded), then blanked so the scan of the
    // rest does not see them again.
    let mut rest = code.to_string();
    let mut from = 0;
    while let Some(i) = rest[from..].find("use ").map(|i| from + i) {
        let before = rest[..i].chars().last();
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        from = end.min(rest.len());
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        // A `pub use` is the module's public face (a re-export), not a
        // dependency of its code.
        let head = rest[..i].trim_end();
        if !(head.ends_with("pub") || head.ends_with(')')) {
            expand(rest[i + 4..end].trim(), &mut Vec::new(), &mut out);
        }
        rest.replace_range(i..end, &" ".repeat(end - i));
    }
    let words: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < words.len() {
        let start = i;
        while i < words.len() && (words[i].is_alphanumeric() || words[i] == '_' || words[i] == ':') {
            i += 1;
        }
        let token: String = words[start..i].iter().collect();
        let first = token.split("::").next().unwrap_or("");
        let prev_ok = start == 0 || !(words[start - 1].is_alphanumeric() || words[start - 1] == '_');
        if prev_ok && token.contains("::") && matches!(first, "crate" | "super" | "self") {
            out.push(token.split("::").filter(|s| !s.is_empty()).map(String::from).collect());
        }
        i = i.max(start + 1);
    }
    out
}

/// Expand one `use` tree (`a::b::{c, d::{e, f}}`) into paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> =
            tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        for part in split_top(inner) {
            expand(part, prefix, out);
        }
        prefix.truncate(n);
    } else {
        let mut p = prefix.clone();
        let tree = tree.split(" as ").next().unwrap_or(tree);
        p.extend(tree.split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        out.push(p);
    }
}

/// Split on commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The file a path names from `module`: the deepest module it walks into.
fn resolve(path: &[String], module: &[String], files: &BTreeMap<Vec<String>, String>) -> Option<String> {
    let mut at: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let mut segs = &path[1..];
    while let Some(s) = segs.first().filter(|s| *s == "super") {
        let _ = s;
        at.pop();
        segs = &segs[1..];
    }
    for s in segs {
        let mut next = at.clone();
        next.push(s.clone());
        if !files.contains_key(&next) {
            break;
        }
        at = next;
    }
    // `crate::Error` and `crate::Result` are the error module's, re-exported.
    if at.is_empty() && matches!(segs.first().map(String::as_str), Some("Error" | "Result")) {
        at = vec!["error".into()];
    }
    files.get(&at).cloned()
}

fn graph() -> (Vec<Source>, BTreeMap<String, BTreeSet<String>>) {
    let files = library_files();
    let by_module: BTreeMap<Vec<String>, String> = files.iter().map(|f| (f.module.clone(), f.rel.clone())).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let to = edges.entry(f.rel.clone()).or_default();
        for p in paths(&f.code) {
            if let Some(target) = resolve(&p, &f.module, &by_module).filter(|t| *t != f.rel) {
                to.insert(target);
            }
        }
    }
    (files, edges)
}

fn top(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs")
}

#[test]
fn every_import_points_down_the_layers() {
    let (_, edges) = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        if std::env::var_os("TINTYPE_ARCH_DEBUG").is_some() {
            eprintln!("{from} -> {tos:?}");
        }
        let (a, allowed) = match MAY_USE.iter().find(|(m, _)| *m == top(from)) {
            Some((m, allowed)) => (*m, *allowed),
            // lib.rs and the fuzz harnesses are above every layer.
            None if matches!(top(from), "lib" | "fuzz") => continue,
            None => panic!("{from}: a top-level module ARCHITECTURE.md's layers (and MAY_USE here) do not name"),
        };
        for to in tos {
            let b = top(to);
            if b != a && b != "error" && !allowed.contains(&b) {
                wrong.push(format!("{from} uses {to}: {a} may use only {allowed:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not point down:\n  {}", wrong.join("\n  "));
}

#[test]
fn no_files_import_each_other_round_a_cycle() {
    let (_, edges) = graph();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, &edges, &mut state, &mut Vec::new()) {
                panic!("files that import each other: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn format_knows_no_analyser_and_no_pipeline() {
    // Spelled out because it is the rule a newcomer is most tempted to break:
    // the on-disk model must not change when an analyser's struct does.
    let (_, edges) = graph();
    for (from, tos) in edges.iter().filter(|(f, _)| top(f) == "format") {
        for to in tos {
            assert!(matches!(top(to), "format" | "error" | "codec"), "{from} uses {to}");
        }
    }
}

#[test]
fn files_and_functions_stay_readable() {
    let mut long = Vec::new();
    for f in rust_files() {
        let text = std::fs::read_to_string(src().join(&f)).unwrap();
        let code = without_tests(&text);
        let lines = code.lines().count();
        if lines > FILE_LINES_MAX && !LONG_FILES.iter().any(|(n, _)| *n == f) {
            long.push(format!("{f}: {lines} lines (guide: {FILE_LINES_MAX})"));
        }
        for (name, n) in functions(&code) {
            let key = format!("{f}:{name}");
            if n > FUNCTION_LINES_MAX && !LONG_FUNCTIONS.iter().any(|(k, _)| *k == key) {
                long.push(format!("{key}: {n} lines (guide: {FUNCTION_LINES_MAX})"));
            }
        }
    }
    assert!(long.is_empty(), "too long to read whole:\n  {}", long.join("\n  "));
}

/// Every source file of the crate, library and binary, relative to `src`, sorted.
fn rust_files() -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(src()).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Each function's name and length in lines (rustfmt'd code: a function
/// ends at the first line that closes it at its own indentation).
fn functions(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let t = t.trim_start_matches("pub ").trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ");
        let t = t.trim_start_matches("const ").trim_start_matches("unsafe ");
        let Some(rest) = t.strip_prefix("fn ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if let Some(end) = lines[i + 1..].iter().position(|m| *m == format!("{indent}}}")) {
            out.push((name, end + 2));
        }
    }
    out
}

#[test]
fn the_checks_see_what_they_check() {
    // The graph finds the imports it must: a check that saw nothing would
    // pass whatever the code did.
    let (files, edges) = graph();
    assert!(files.len() > 40, "{} files", files.len());
    let has = |a: &str, b: &str| edges.get(a).is_some_and(|t| t.contains(b));
    assert!(has("pipeline/capture/lane/read.rs", "observe.rs"), "{:?}", edges.get("pipeline/capture/lane/read.rs"));
    assert!(has("merge/consolidate.rs", "set/segment_writer.rs"));
    assert!(has("set/listing.rs", "set/lineage.rs"));
    let mut found = Vec::new();
    expand("crate::format::{frame::{A, B}, names::c as d}", &mut Vec::new(), &mut found);
    assert_eq!(found.len(), 3);
    assert_eq!(found[2], ["crate", "format", "names", "c"]);
    assert_eq!(functions("fn a() {\n    x\n}\n    pub fn b() {\n    }\n"), [("a".into(), 3), ("b".into(), 2)]);
}

#[test]
fn architecture_md_draws_the_layers_this_test_checks() {
    // The doc's "who may use whom" table and MAY_USE above are one rule.
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ARCHITECTURE.md")).unwrap();
    let names = |cell: &str| -> BTreeSet<String> { cell.split('`').skip(1).step_by(2).map(String::from).collect() };
    for (module, allowed) in MAY_USE.iter().filter(|(m, _)| *m != "error") {
        let row = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .find(|l| names(l.split('|').nth(1).unwrap_or("")).contains(*module))
            .unwrap_or_else(|| panic!("ARCHITECTURE.md's layer table has no row for `{module}`"));
        let doc_allowed = names(row.split('|').nth(2).unwrap_or(""));
        let want: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            doc_allowed, want,
            "ARCHITECTURE.md says `{module}` may use {doc_allowed:?}; the test says {want:?}"
        );
    }
}
