//! Choosing an image: `SET@PREFIX` split into the set and a selector, and
//! the selector resolved to one committed image (the newest by default).

use std::path::PathBuf;

use super::image::Image;
use super::{ImageSet, Loaded, Scan};
use crate::error::ChainBreak;
use crate::error::Uncommitted;
use crate::error::{Error, Result};
use crate::format::ImageId;

/// `SET[@IMAGE_ID]` as the commands take it: the set directory and,
/// optionally, a selector (a unique prefix of an Image ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub dir: PathBuf,
    pub image: Option<String>,
}

impl SetSpec {
    /// Split `SET@IMAGE_ID`. A path that itself contains `@` is taken whole
    /// when what follows the last `@` is not hex.
    pub fn parse(spec: &str) -> SetSpec {
        if let Some((dir, sel)) = spec.rsplit_once('@') {
            if !sel.is_empty() && sel.len() <= 16 && sel.bytes().all(|b| b.is_ascii_hexdigit()) && !dir.is_empty() {
                return SetSpec { dir: PathBuf::from(dir), image: Some(sel.to_ascii_lowercase()) };
            }
        }
        SetSpec { dir: PathBuf::from(spec), image: None }
    }
}

impl ImageSet {
    /// The image a selector names: a unique prefix of an Image ID, or the
    /// newest committed image when there is none.
    pub fn resolve(&self, selector: Option<&str>) -> Result<Image> {
        let Scan { committed: ids, unfinished: partial } = self.scan()?;
        match selector {
            None => {
                if ids.is_empty() {
                    let why = if partial.is_empty() {
                        "the set holds no committed image".to_string()
                    } else {
                        format!(
                            "the set holds no committed image, only the files of unfinished run(s) {} (no manifest was written)",
                            partial.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                        )
                    };
                    return Err(Error::NotCommitted { path: self.dir.clone(), reason: Uncommitted::EmptySet, why });
                }
                let Loaded { images: good, unloadable: bad } = self.load_all()?;
                match bad.into_iter().next().map(|u| (u.id, u.error)) {
                    // Which image is the newest cannot be told while one does
                    // not load: say so, and how to pick one that does.
                    Some((id, e)) if !good.is_empty() => Err(Error::BrokenChain {
                        path: self.dir.clone(),
                        image: id.to_string(),
                        reason: ChainBreak::ManifestUnreadable,
                        why: format!(
                            "its manifest does not load ({e}), so which image is the newest cannot be told; pick one \
                             with SET@ID ({} other image(s) load: `tintype list {}`)",
                            good.len(),
                            self.dir.display()
                        ),
                    }),
                    Some((_, e)) => Err(e),
                    None => Ok(good.into_iter().next_back().expect("at least one image")),
                }
            }
            Some(prefix) => {
                let hits: Vec<ImageId> = ids.iter().copied().filter(|i| i.to_string().starts_with(prefix)).collect();
                match hits.as_slice() {
                    [id] => Image::load(&self.dir, *id),
                    [] => {
                        let (reason, why) = if partial.iter().any(|i| i.to_string().starts_with(prefix)) {
                            let why = format!("image {prefix} has data files but no manifest: its run did not finish");
                            (Uncommitted::RunUnfinished, why)
                        } else {
                            // An image a merge replaced and removed: name what stands for it.
                            let images = self.load_all()?.images;
                            let by = images.iter().find(|i| i.manifest.replaces.iter().any(|r| r.starts_with(prefix)));
                            match by {
                                Some(r) => (
                                    Uncommitted::Consolidated,
                                    format!(
                                        "image {prefix} was consolidated by a merge into image {} (the same point in \
                                         time): use @{}",
                                        r.id(),
                                        r.id()
                                    ),
                                ),
                                None => (Uncommitted::NoSuchImage, format!("no image whose ID starts with {prefix}")),
                            }
                        };
                        Err(Error::NotCommitted { path: self.dir.clone(), reason, why })
                    }
                    _ => Err(Error::InvalidSetting(format!(
                        "{}: image ID prefix {prefix} is ambiguous ({} images match: {}{}); give more digits",
                        self.dir.display(),
                        hits.len(),
                        hits.iter().take(10).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                        if hits.len() > 10 { ", …" } else { "" }
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_splits_on_a_hex_suffix_only() {
        let spec = |dir: &str, image: Option<&str>| SetSpec { dir: dir.into(), image: image.map(String::from) };
        assert_eq!(SetSpec::parse("/a/set@12AB"), spec("/a/set", Some("12ab")));
        assert_eq!(SetSpec::parse("/a/set"), spec("/a/set", None));
        assert_eq!(SetSpec::parse("/a/s@t/set"), spec("/a/s@t/set", None));
        assert_eq!(SetSpec::parse("@12"), spec("@12", None));
    }
}
