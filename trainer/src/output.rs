//! Output folders the user names (`export --out`, `eval --out`): files already there are
//! never replaced without `--force`, and a new folder appears complete or not at all.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Refuses `dir` when it holds any of `files`, unless `force`.
pub fn refuse_to_replace(dir: &Path, files: &[&str], force: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a folder", dir.display());
    }
    let present: Vec<&str> = files
        .iter()
        .copied()
        .filter(|file| dir.join(file).exists())
        .collect();
    if !present.is_empty() && !force {
        bail!(
            "{} already holds {}; choose another folder, or pass --force to replace {}",
            dir.display(),
            present.join(" and "),
            if present.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// Writes a folder with `write`: a new folder is written beside its final name and
/// renamed into place, so that it appears complete or not at all; into an existing
/// folder, `write` must replace each file atomically (as `Checkpoint::save` does). The
/// new folder's name is flushed to the disk before this returns.
pub fn write_folder(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        return write(dir);
    }
    let staging = sibling(dir, "partial");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove the stale {}", staging.display()))?;
    }
    if let Err(error) = write(&staging) {
        // Nothing half-written stays behind.
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    fs::rename(&staging, dir)
        .with_context(|| format!("cannot move {} to {}", staging.display(), dir.display()))?;
    // The rename is only durable once the parent folder is flushed (as checkpoints do):
    // after a power loss the folder could otherwise be missing, or still `DIR.partial`.
    let parent = dir.parent().unwrap_or(Path::new("."));
    vit::checkpoint::sync_folder(parent)
        .with_context(|| format!("cannot flush {} to the disk", parent.display()))
}

/// `DIR.suffix` beside `DIR`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("config.json"), "mine").expect("write");
        let error = refuse_to_replace(dir.path(), &["config.json", "model.safetensors"], false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("already holds config.json") && error.contains("--force"),
            "{error}"
        );
        assert!(refuse_to_replace(dir.path(), &["config.json"], true).is_ok());
        assert!(refuse_to_replace(dir.path(), &["other.json"], false).is_ok());
        assert!(refuse_to_replace(&dir.path().join("new"), &["config.json"], false).is_ok());
        let file = dir.path().join("config.json");
        assert!(refuse_to_replace(&file, &["x"], true).is_err());
    }

    #[test]
    fn a_new_folder_appears_complete_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let failed = write_folder(&out, |staging| {
            fs::create_dir_all(staging)?;
            fs::write(staging.join("a"), "half")?;
            bail!("disk full")
        });
        assert!(failed.is_err());
        assert!(!out.exists() && !sibling(&out, "partial").exists());
        write_folder(&out, |staging| {
            fs::create_dir_all(staging)?;
            Ok(fs::write(staging.join("a"), "whole")?)
        })
        .expect("write");
        assert_eq!(fs::read_to_string(out.join("a")).expect("read"), "whole");
    }
}
