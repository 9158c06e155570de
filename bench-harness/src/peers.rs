//! The tools a run measures: Tintype and its peers, as command lines, for
//! creating an image of a device and restoring it to another.

use std::path::{Path, PathBuf};

/// Which half of the job a tool does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Create,
    Restore,
}

/// One tool's command line for one phase.
#[derive(Debug, Clone)]
pub struct Tool {
    /// Short, stable name used in ratio keys (e.g. "dd_zstd").
    pub key: String,
    /// What the report shows.
    pub name: String,
    pub phase: Phase,
    pub argv: Vec<String>,
    /// The tool's output, removed before each create run and measured after it.
    pub output: PathBuf,
    /// A readable command line for the report, with placeholders.
    pub shown: String,
}

/// Is `tool` on PATH (or in /usr/sbin)?
pub fn installed(tool: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).is_file())
}

/// Everything a run needs to build command lines.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub tintype: &'a Path,
    pub source: &'a Path,
    pub target: &'a Path,
    pub out_dir: &'a Path,
    pub level: i32,
    pub cores: usize,
    pub ext4: bool,
    pub tintype_args: &'a [String],
    pub peers: bool,
}

fn bash(script: String) -> Vec<String> {
    vec!["bash".into(), "-c".into(), format!("set -o pipefail; {script}")]
}

/// Create tools: Tintype first, then each peer that is installed.
pub fn create_tools(c: &Ctx<'_>) -> Vec<Tool> {
    let (src, out, l, t) = (c.source.display(), c.out_dir, c.level, c.cores);
    let set = out.join("set");
    let mut argv: Vec<String> = vec![
        c.tintype.display().to_string(),
        "create".into(),
        src.to_string(),
        set.display().to_string(),
        "--level".into(),
        l.to_string(),
    ];
    argv.extend(c.tintype_args.iter().cloned());
    let mut tools = vec![Tool {
        key: "tintype".into(),
        name: "tintype create".into(),
        phase: Phase::Create,
        shown: format!("tintype create DEV SET --level {l} {}", c.tintype_args.join(" ")).trim().to_string(),
        argv,
        output: set,
    }];
    if !c.peers || !installed("zstd") {
        return tools;
    }
    let zst = out.join("dd.zst");
    tools.push(Tool {
        key: "dd_zstd".into(),
        name: format!("dd | zstd -{l} -T{t}"),
        phase: Phase::Create,
        argv: bash(format!("dd if={src} bs=1M iflag=direct status=none | zstd -{l} -T{t} -q > {}", zst.display())),
        output: zst,
        shown: format!("dd if=DEV bs=1M iflag=direct | zstd -{l} -T{t} > OUT"),
    });
    if c.ext4 && installed("partclone.ext4") {
        let pc = out.join("partclone.zst");
        let log = out.join("partclone.log");
        tools.push(Tool {
            key: "partclone_zstd".into(),
            name: format!("partclone.ext4 | zstd -{l} -T{t}"),
            phase: Phase::Create,
            argv: bash(format!(
                "partclone.ext4 -q -c -s {src} -o - -L {} | zstd -{l} -T{t} -q > {}",
                log.display(),
                pc.display()
            )),
            output: pc,
            shown: format!("partclone.ext4 -c -s DEV -o - | zstd -{l} -T{t} > OUT"),
        });
    }
    if installed("qemu-img") {
        let q = out.join("image.qcow2");
        tools.push(Tool {
            key: "qemu_img".into(),
            name: "qemu-img convert -c (zstd)".into(),
            phase: Phase::Create,
            argv: vec![
                "qemu-img".into(),
                "convert".into(),
                "-f".into(),
                "raw".into(),
                "-c".into(),
                "-O".into(),
                "qcow2".into(),
                "-o".into(),
                "compression_type=zstd".into(),
                src.to_string(),
                q.display().to_string(),
            ],
            output: q,
            shown: "qemu-img convert -f raw -c -O qcow2 -o compression_type=zstd DEV OUT.qcow2".into(),
        });
    }
    tools
}

/// Restore tools, each writing what its create counterpart made to the target.
pub fn restore_tools(c: &Ctx<'_>, created: &[Tool]) -> Vec<Tool> {
    let tgt = c.target.display();
    let mut tools = Vec::new();
    for t in created {
        let out = t.output.display();
        let (argv, shown, name) = match t.key.as_str() {
            "tintype" => (
                vec![
                    c.tintype.display().to_string(),
                    "restore".into(),
                    out.to_string(),
                    tgt.to_string(),
                    "--force".into(),
                ],
                "tintype restore SET DEV --force".to_string(),
                "tintype restore".to_string(),
            ),
            "dd_zstd" => (
                bash(format!("zstd -dc -q {out} | dd of={tgt} bs=1M oflag=direct status=none")),
                "zstd -dc OUT | dd of=DEV bs=1M oflag=direct".to_string(),
                "zstd -dc | dd".to_string(),
            ),
            "partclone_zstd" => (
                bash(format!(
                    "zstd -dc -q {out} | partclone.ext4 -q -r -s - -o {tgt} -L {}",
                    c.out_dir.join("partclone-r.log").display()
                )),
                "zstd -dc OUT | partclone.ext4 -r -s - -o DEV".to_string(),
                "zstd -dc | partclone.ext4 -r".to_string(),
            ),
            "qemu_img" => (
                vec![
                    "qemu-img".into(),
                    "convert".into(),
                    "-n".into(),
                    "-f".into(),
                    "qcow2".into(),
                    "-O".into(),
                    "raw".into(),
                    out.to_string(),
                    tgt.to_string(),
                ],
                "qemu-img convert -n -f qcow2 -O raw OUT.qcow2 DEV".to_string(),
                "qemu-img convert (restore)".to_string(),
            ),
            _ => continue,
        };
        tools.push(Tool { key: t.key.clone(), name, phase: Phase::Restore, argv, output: c.target.into(), shown });
    }
    tools
}
