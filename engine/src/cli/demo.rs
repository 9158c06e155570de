//! `tintype demo`: generate a sample source with mixed content, image it,
//! verify it, restore it, compare, and say what happened and how fast.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use tintype::io::IoChoice;
use tintype::{CreateOptions, RestoreOptions, VerifyOptions};

use super::args::DemoArgs;
use super::output::{human, Console, Format};

pub fn run(a: DemoArgs) -> anyhow::Result<u8> {
    let DemoArgs { size, dir, keep, level, io } = a;
    let io: IoChoice = io.into();
    if size == 0 {
        bail!(tintype::Error::InvalidSetting("--size must be more than 0".into()));
    }
    let mut tmp = None;
    let base = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            d
        }
        None => tmp.insert(tempdir()?).0.clone(),
    };
    // An odd size, so the last chunk is short, as on real devices of odd sizes.
    let size = size + 12_345;
    let sample = base.join("sample.img");
    let set = base.join("sample-set");
    let restored = base.join("sample-restored.img");
    // The demo writes these and removes them afterwards: it never takes
    // over (and then deletes) files a user already has there.
    if let Some(p) = [&sample, &set, &restored].into_iter().find(|p| p.symlink_metadata().is_ok()) {
        bail!(tintype::Error::InvalidSetting(format!(
            "--dir {}: {} already exists; the demo writes its own sample.img, sample-set and sample-restored.img \
             there and removes them afterwards, so it uses only a directory without them (choose another --dir, \
             or leave it out for a temporary one)",
            base.display(),
            p.display()
        )));
    }
    println!(
        "demo: writing a {} sample with zeros, text, random and repetitive binary data to {}",
        human(size),
        sample.display()
    );
    tintype::sample::write_mixed(&sample, size, 0x7147_7970_6500_0001)
        .with_context(|| format!("write {}", sample.display()))?;

    println!("demo: tintype create {} {} --level {level}", sample.display(), set.display());
    let mut o = CreateOptions::new(&sample, &set);
    o.level = level;
    o.io = io.clone();
    let obs = Console::new("imaging", Format::Human);
    let report = tintype::create(&o, &obs)?;
    obs.finish();
    super::output::create::print(&report, Format::Human);

    println!("demo: tintype verify {}", set.display());
    let mut v = VerifyOptions::new(&set);
    v.io = io.clone();
    let obs = Console::new("verifying", Format::Human);
    let vr = tintype::verify(&v, &obs)?;
    obs.finish();
    super::output::verify::print(&vr, Format::Human);
    if !vr.is_clean() {
        bail!("the demo image failed verification");
    }

    println!("demo: tintype restore {} {} --verify-after", set.display(), restored.display());
    let mut r = RestoreOptions::new(&set, &restored);
    r.verify_after = true;
    r.io = io;
    let obs = Console::new("restoring", Format::Human);
    let rr = tintype::restore(&r, &obs)?;
    obs.finish();
    super::output::restore::print(&rr, Format::Human);
    if !rr.is_clean() {
        bail!("the demo restore did not read back intact");
    }
    let t = Instant::now();
    let same = files_equal(&sample, &restored)?;
    if !same {
        bail!("{} differs from {}", restored.display(), sample.display());
    }
    println!(
        "demo: compared byte for byte: {} identical to the sample ({} bytes, {:.2} s)",
        restored.display(),
        size,
        t.elapsed().as_secs_f64()
    );
    if keep {
        println!("demo: kept {}, {} and {}", sample.display(), set.display(), restored.display());
        // Keep the temporary directory too.
        std::mem::forget(tmp.take());
    } else {
        std::fs::remove_file(&sample).ok();
        std::fs::remove_file(&restored).ok();
        std::fs::remove_dir_all(&set).ok();
    }
    Ok(super::exit::OK)
}

/// Compare two files byte for byte, a few MiB at a time.
fn files_equal(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let base = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let d = base.join(format!("tintype-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    Ok(TempDir(d))
}
