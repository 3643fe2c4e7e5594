//! Resolving `--pretrained`: a local file, `gs://`, `hf:ORG/NAME`, an https URL, or `none`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vit::{Checkpoint, LoadOptions};

use crate::data::download::{self, Expected};

/// The reference's own pretrained weights (ImageNet-21k ViT-B/16).
pub const DEFAULT: &str = "gs://vit_models/imagenet21k/ViT-B_16.npz";

/// Where a `--pretrained` value is fetched from and cached.
#[derive(Debug, PartialEq)]
pub enum Source {
    None,
    Local(PathBuf),
    /// Files to download: (URL, path in the cache). The checkpoint is the first
    /// path's folder when there are several files (HF), else the file.
    Remote(Vec<(String, PathBuf)>),
}

pub fn resolve(value: &str, cache: &Path) -> Source {
    if value.eq_ignore_ascii_case("none") {
        return Source::None;
    }
    if let Some(rest) = value.strip_prefix("gs://") {
        let url = format!("https://storage.googleapis.com/{rest}");
        return Source::Remote(vec![(url, cache.join("gs").join(rest))]);
    }
    if let Some(repo) = value.strip_prefix("hf:") {
        let folder = cache.join("hf").join(repo);
        let files = ["config.json", "model.safetensors"]
            .iter()
            .map(|file| {
                (
                    format!("https://huggingface.co/{repo}/resolve/main/{file}"),
                    folder.join(file),
                )
            })
            .collect();
        return Source::Remote(files);
    }
    if value.starts_with("https://") || value.starts_with("http://") {
        let name = value
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("checkpoint");
        return Source::Remote(vec![(value.to_string(), cache.join("urls").join(name))]);
    }
    Source::Local(PathBuf::from(value))
}

/// Loads the pretrained checkpoint named by `value`, downloading it into `cache` once.
pub fn load(value: &str, cache: &Path) -> Result<Option<Checkpoint>> {
    let path = match resolve(value, cache) {
        Source::None => return Ok(None),
        Source::Local(path) => path,
        Source::Remote(files) => {
            for (url, dest) in &files {
                eprintln!("pretrained weights: {url}");
                download::fetch(url, dest, &Expected::default(), &mut crate::progress::download())
                    .with_context(|| {
                        format!(
                            "cannot download {url}; without network, download it elsewhere and put it at {} \
                             (or pass --pretrained PATH)",
                            dest.display()
                        )
                    })?;
            }
            let first = &files[0].1;
            if files.len() > 1 {
                first.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                first.clone()
            }
        }
    };
    let checkpoint = vit::checkpoint::load(&path, &LoadOptions::default())
        .with_context(|| format!("cannot load the pretrained checkpoint {}", path.display()))?;
    Ok(Some(checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_map_to_urls_and_cache_paths() {
        let cache = Path::new("/cache");
        assert_eq!(resolve("none", cache), Source::None);
        assert_eq!(
            resolve(DEFAULT, cache),
            Source::Remote(vec![(
                "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz".into(),
                PathBuf::from("/cache/gs/vit_models/imagenet21k/ViT-B_16.npz")
            )])
        );
        let Source::Remote(files) = resolve("hf:google/vit-base-patch16-224-in21k", cache) else {
            panic!("hf: is remote");
        };
        assert_eq!(
            files[1].0,
            "https://huggingface.co/google/vit-base-patch16-224-in21k/resolve/main/model.safetensors"
        );
        assert_eq!(
            resolve("weights/b16.npz", cache),
            Source::Local(PathBuf::from("weights/b16.npz"))
        );
    }
}
