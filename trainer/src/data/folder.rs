//! Image-folder data sets (the torchvision `ImageFolder` convention), from a
//! directory or streamed from a `.tar.gz` / `.tgz` / `.tar` archive.
//!
//! Layouts:
//! - `ROOT/train/<class>/...` and `ROOT/test/<class>/...`;
//! - with [`FolderOptions::val_split`], `ROOT/<class>/...`, split per class.
//!   If ROOT has a `train/` folder, that tree is split and `test/` is left
//!   unused, so the real test set stays untouched.
//!
//! ROOT is the given folder (or the archive's top level), or its single
//! top-level folder when everything sits inside one (`cifar10/train/...`).
//! Files below a class folder count at any depth; hidden files and folders
//! (`.name`) and `__MACOSX/` are ignored, as macOS archives are full of them.
//!
//! Validation split: each class's files, sorted by path, give their last
//! `round(n * f)` files (at least one, and at least one left for training)
//! to the held-out split. That is deterministic and keeps class proportions
//! exact; the cost is that adding files to a class can move others across.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, LoadReport, RgbImage, Splits, archive_kind, open_tar};
use vit::preprocess::{PreprocessError, decode_rgb};

/// How [`load_image_folder`] treats the data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderOptions {
    /// Fail on the first unreadable or corrupt image instead of skipping it.
    pub strict: bool,
    /// Hold out this fraction (0 < f < 1) of each class of a single
    /// `ROOT/<class>/` tree as the test split.
    pub val_split: Option<f64>,
}

/// Largest single file read from an archive: far above any real training
/// image, it stops a corrupt header from asking for gigabytes.
const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Deeper folders than this are refused (a symlink loop, most likely).
const MAX_DEPTH: usize = 32;

/// Where an image's bytes are.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// One image file, by its path relative to the directory or archive.
struct Member {
    components: Vec<String>,
    /// The file as messages name it (components may lose a wrapping folder).
    shown: String,
    source: Source,
}

/// Everything found under the given path, before the layout is applied.
#[derive(Default)]
struct Listing {
    /// Every folder seen (relative components), including those only
    /// implied by a file's path, so empty class folders are noticed.
    dirs: BTreeSet<Vec<String>>,
    images: Vec<Member>,
}

impl Listing {
    fn add_dir_chain(&mut self, components: &[String]) {
        for end in 1..=components.len() {
            self.dirs.insert(components[..end].to_vec());
        }
    }
}

/// Loads an image-folder data set from a directory or a `.tar.gz` of one.
///
/// Images are decoded on all cores; the order within each split is sorted by
/// (class, path within the class), so runs are reproducible. Unreadable or
/// corrupt images are skipped and listed in the [`LoadReport`], unless
/// `options.strict` is set.
pub fn load_image_folder(
    path: &Path,
    options: &FolderOptions,
) -> Result<(Splits, LoadReport), DataError> {
    if let Some(f) = options.val_split
        && !(f > 0.0 && f < 1.0)
    {
        return Err(DataError::InvalidOption(format!(
            "the validation split must be a fraction between 0 and 1 (exclusive), got {f}"
        )));
    }
    let listing = list(path)?;
    let (mut train_plan, mut test_plan) = plan_splits(path, listing, options.val_split)?;
    let mut report = LoadReport::default();
    report.skipped.append(&mut train_plan.skipped_outside);
    report.skipped.append(&mut test_plan.skipped_outside);
    let train = decode_split(path, train_plan, options.strict, &mut report)?;
    let test = decode_split(path, test_plan, options.strict, &mut report)?;
    Ok((Splits { train, test }, report))
}

/// Loads only the images to evaluate on, for `trainer eval`: `ROOT/test/<class>/` when
/// there is a `test` folder (a training split beside it is neither read nor decoded), else
/// the whole `ROOT/<class>/` tree. A single wrapping folder is stripped, as for training.
pub fn load_test_folder(path: &Path, strict: bool) -> Result<(Dataset, LoadReport), DataError> {
    let mut listing = list(path)?;
    if listing.images.is_empty() {
        return Err(DataError::layout(
            path,
            "no images found (.jpg, .jpeg, .png or .webp); expected ROOT/test/<class>/ or ROOT/<class>/ folders of images",
        ));
    }
    strip_wrapper(&mut listing, 2);
    let (tree, prefix) = if listing.dirs.contains(&vec!["test".to_owned()]) {
        (take_subtree(listing, "test").0, "test/")
    } else {
        (listing, "")
    };
    let mut plan = group_by_class(path, tree, "test", prefix)?;
    let mut report = LoadReport::default();
    report.skipped.append(&mut plan.skipped_outside);
    let test = decode_split(path, plan, strict, &mut report)?;
    Ok((test, report))
}

/// Every image of a folder or archive, not yet read.
fn list(path: &Path) -> Result<Listing, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
            hint: "pass a folder of images or a .tar.gz of one".to_owned(),
        },
        _ => DataError::io("read", path, e),
    })?;
    if meta.is_dir() {
        list_dir(path)
    } else if let Some(kind) = archive_kind(path) {
        list_archive(path, kind)
    } else {
        Err(DataError::layout(
            path,
            "not a folder or a .tar.gz/.tgz/.tar archive; pass a folder laid out as ROOT/train/<class>/ and ROOT/test/<class>/, or an archive of one",
        ))
    }
}

/// Strips a single wrapping folder (`cifar10/train/...`): when every image is under one
/// top-level folder that is not `train` or `test`, and some lie deeper than
/// `depth_needed` components.
fn strip_wrapper(listing: &mut Listing, depth_needed: usize) {
    let first: BTreeSet<&str> = listing
        .images
        .iter()
        .map(|m| m.components[0].as_str())
        .collect();
    let has_split_dirs = first.contains("train") || first.contains("test");
    let Some(&only) = first.iter().next() else {
        return;
    };
    if first.len() != 1
        || has_split_dirs
        || !listing
            .images
            .iter()
            .any(|m| m.components.len() > depth_needed)
    {
        return;
    }
    let only = only.to_owned();
    for m in &mut listing.images {
        if m.components.first() == Some(&only) {
            m.components.remove(0);
        }
    }
    listing.dirs = std::mem::take(&mut listing.dirs)
        .into_iter()
        .filter(|d| d.len() > 1 && d[0] == only)
        .map(|d| d[1..].to_vec())
        .collect();
}

/// One split's files grouped by class, in load order.
struct SplitPlan {
    /// The split's name in messages ("train", "test", "validation").
    name: &'static str,
    classes: Vec<String>,
    /// `(class index, member)`, sorted by class then path.
    members: Vec<(usize, Member)>,
    /// Images outside any class folder, reported rather than silently lost.
    skipped_outside: Vec<(String, String)>,
}

/// Applies the layout: finds ROOT, the splits and their classes, and checks
/// the class lists before any decoding work.
fn plan_splits(
    path: &Path,
    mut listing: Listing,
    val_split: Option<f64>,
) -> Result<(SplitPlan, SplitPlan), DataError> {
    if listing.images.is_empty() {
        return Err(DataError::layout(
            path,
            "no images found (.jpg, .jpeg, .png or .webp); expected ROOT/train/<class>/ and ROOT/test/<class>/ folders of images",
        ));
    }
    // Strip a single wrapping folder (`cifar10/train/...`).
    strip_wrapper(&mut listing, if val_split.is_some() { 2 } else { 3 });

    let has = |split: &str| listing.dirs.contains(&vec![split.to_owned()]);
    match val_split {
        None => {
            if !has("train") || !has("test") {
                let missing: Vec<&str> =
                    ["train", "test"].into_iter().filter(|s| !has(s)).collect();
                return Err(DataError::layout(
                    path,
                    format!(
                        "no {} folder; expected ROOT/train/<class>/ and ROOT/test/<class>/ (or a single ROOT/<class>/ tree with a validation split)",
                        missing.join(" or ")
                    ),
                ));
            }
            let (train, rest) = take_subtree(listing, "train");
            let (test, _) = take_subtree(rest, "test");
            let train = group_by_class(path, train, "train", "train/")?;
            let test = group_by_class(path, test, "test", "test/")?;
            if train.classes != test.classes {
                let a: BTreeSet<&String> = train.classes.iter().collect();
                let b: BTreeSet<&String> = test.classes.iter().collect();
                return Err(DataError::ClassMismatch {
                    path: path.to_path_buf(),
                    only_train: a.difference(&b).map(|s| s.to_string()).collect(),
                    only_test: b.difference(&a).map(|s| s.to_string()).collect(),
                });
            }
            Ok((train, test))
        }
        Some(fraction) => {
            let (tree, prefix) = if has("train") {
                (take_subtree(listing, "train").0, "train/")
            } else {
                (listing, "")
            };
            let all = group_by_class(path, tree, "train", prefix)?;
            Ok(split_per_class(all, fraction))
        }
    }
}

/// The part of `listing` under the top-level folder `name` (with that folder
/// stripped), and the rest.
fn take_subtree(listing: Listing, name: &str) -> (Listing, Listing) {
    let mut inside = Listing::default();
    let mut rest = Listing::default();
    for d in listing.dirs {
        if d[0] == name {
            if d.len() > 1 {
                inside.dirs.insert(d[1..].to_vec());
            }
        } else {
            rest.dirs.insert(d);
        }
    }
    for mut m in listing.images {
        if m.components[0] == name {
            m.components.remove(0);
            inside.images.push(m);
        } else {
            rest.images.push(m);
        }
    }
    (inside, rest)
}

/// Groups a `<class>/...` tree; errors on empty classes or fewer than two.
fn group_by_class(
    path: &Path,
    tree: Listing,
    split: &'static str,
    prefix: &str,
) -> Result<SplitPlan, DataError> {
    let mut by_class: BTreeMap<String, Vec<Member>> = tree
        .dirs
        .iter()
        .filter(|d| d.len() == 1)
        .map(|d| (d[0].clone(), Vec::new()))
        .collect();
    let mut skipped_outside = Vec::new();
    for m in tree.images {
        if m.components.len() < 2 {
            skipped_outside.push((
                m.shown,
                format!("not inside a class folder ({prefix}<class>/)"),
            ));
            continue;
        }
        by_class.entry(m.components[0].clone()).or_default().push(m);
    }
    if let Some((class, _)) = by_class.iter().find(|(_, v)| v.is_empty()) {
        return Err(DataError::layout(
            path,
            format!(
                "class folder {prefix}{class}/ has no images (.jpg, .jpeg, .png or .webp); add images or remove the folder"
            ),
        ));
    }
    if by_class.len() < 2 {
        return Err(DataError::layout(
            path,
            format!(
                "the {split} split has {} class folder(s); a classifier needs at least two: expected {prefix}<class>/ folders of images",
                by_class.len()
            ),
        ));
    }
    let classes: Vec<String> = by_class.keys().cloned().collect();
    let mut members = Vec::new();
    for (index, (_, mut files)) in by_class.into_iter().enumerate() {
        files.sort_by(|a, b| a.components.cmp(&b.components));
        members.extend(files.into_iter().map(|m| (index, m)));
    }
    Ok(SplitPlan {
        name: split,
        classes,
        members,
        skipped_outside,
    })
}

/// Moves the last `round(n * fraction)` files of each class (at least one,
/// leaving at least one) into a validation split.
fn split_per_class(all: SplitPlan, fraction: f64) -> (SplitPlan, SplitPlan) {
    let mut counts = vec![0usize; all.classes.len()];
    for (c, _) in &all.members {
        counts[*c] += 1;
    }
    let mut seen = vec![0usize; all.classes.len()];
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (c, m) in all.members {
        let n = counts[c];
        // A one-image class cannot be in both splits; it stays in train and
        // the validation split reports it as empty below.
        let held = ((n as f64 * fraction).round() as usize).clamp(1, n.max(2) - 1);
        let held = if n < 2 { 0 } else { held };
        if seen[c] >= n - held {
            val.push((c, m));
        } else {
            train.push((c, m));
        }
        seen[c] += 1;
    }
    (
        SplitPlan {
            name: "train",
            classes: all.classes.clone(),
            members: train,
            skipped_outside: all.skipped_outside,
        },
        SplitPlan {
            name: "validation",
            classes: all.classes,
            members: val,
            skipped_outside: Vec::new(),
        },
    )
}

/// Decodes one split on all cores, in order, and checks no class ended up
/// empty after skipping bad files.
fn decode_split(
    path: &Path,
    plan: SplitPlan,
    strict: bool,
    report: &mut LoadReport,
) -> Result<Dataset, DataError> {
    let labels: Vec<usize> = plan.members.iter().map(|(c, _)| *c).collect();
    let names: Vec<String> = plan.members.iter().map(|(_, m)| m.shown.clone()).collect();
    let decoded = decode_all(plan.members.into_iter().map(|(_, m)| m.source).collect());

    let mut images = Vec::with_capacity(decoded.len());
    let mut kept_labels = Vec::with_capacity(decoded.len());
    let mut per_class = vec![0usize; plan.classes.len()];
    for ((result, label), name) in decoded.into_iter().zip(labels).zip(names) {
        match result {
            Ok(image) => {
                images.push(image);
                kept_labels.push(label);
                per_class[label] += 1;
            }
            Err(failure) => {
                if strict {
                    return Err(match failure {
                        Failure::Decode(source) => DataError::BadImage { path: name, source },
                        Failure::Read(source) => DataError::Io {
                            action: "read",
                            path: PathBuf::from(name),
                            source,
                        },
                    });
                }
                report.skipped.push((name, failure.to_string()));
            }
        }
    }
    if let Some(class) = per_class.iter().position(|&n| n == 0) {
        return Err(DataError::layout(
            path,
            format!(
                "the {} split has no usable images of class {:?} (all failed to decode, or too few to split); fix the files or add images",
                plan.name, plan.classes[class]
            ),
        ));
    }
    Ok(Dataset {
        images,
        labels: kept_labels,
        classes: plan.classes,
    })
}

/// Why one image was not loaded.
#[derive(Debug)]
enum Failure {
    Read(std::io::Error),
    Decode(PreprocessError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Read(e) => write!(f, "cannot read: {e}"),
            Failure::Decode(e) => write!(f, "{e}"),
        }
    }
}

/// Decodes every source on the rayon pool (which `--threads` sizes), returning
/// results in input order. Each image's bytes are freed as soon as it is decoded.
fn decode_all(sources: Vec<Source>) -> Vec<Result<RgbImage, Failure>> {
    use rayon::prelude::*;
    sources.into_par_iter().map(decode_one).collect()
}

fn decode_one(source: Source) -> Result<RgbImage, Failure> {
    let bytes = match source {
        Source::Bytes(b) => b,
        Source::File(p) => std::fs::read(&p).map_err(Failure::Read)?,
    };
    decode_rgb(&bytes).map_err(Failure::Decode)
}

/// True for the image extensions the loader uses (case-insensitive).
fn is_image_name(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "jpg" | "jpeg" | "png" | "webp"
    )
}

/// Hidden files and folders and macOS archive litter are never data.
fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.') || name == "__MACOSX"
}

fn list_dir(root: &Path) -> Result<Listing, DataError> {
    let mut listing = Listing::default();
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, components)) = stack.pop() {
        if components.len() > MAX_DEPTH {
            return Err(DataError::layout(
                &dir,
                format!("folders nest deeper than {MAX_DEPTH} levels (a symbolic-link loop?)"),
            ));
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io("list", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io("list", &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_ignored_name(&name) {
                continue;
            }
            let full = entry.path();
            // Follows symbolic links, so linked class folders work.
            let meta = std::fs::metadata(&full).map_err(|e| DataError::io("read", &full, e))?;
            let mut child = components.clone();
            child.push(name.clone());
            if meta.is_dir() {
                listing.dirs.insert(child.clone());
                stack.push((full, child));
            } else if is_image_name(&name) {
                listing.images.push(Member {
                    components: child,
                    shown: full.display().to_string(),
                    source: Source::File(full),
                });
            }
        }
    }
    Ok(listing)
}

fn list_archive(path: &Path, kind: super::ArchiveKind) -> Result<Listing, DataError> {
    let archive_err = |source| DataError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let mut archive = open_tar(path, kind)?;
    let mut listing = Listing::default();
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let entry_path = entry.path().map_err(archive_err)?.into_owned();
        let Some(components) = super::member_components(&entry_path) else {
            continue;
        };
        if components.is_empty() || components.iter().any(|c| is_ignored_name(c)) {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            listing.add_dir_chain(&components);
            continue;
        }
        listing.add_dir_chain(&components[..components.len() - 1]);
        let name = &components[components.len() - 1];
        if !(kind.is_file() && is_image_name(name)) {
            continue;
        }
        let size = entry.size();
        if size > MAX_MEMBER_BYTES {
            return Err(DataError::layout(
                path,
                format!(
                    "{} is {size} bytes, more than any training image should be; remove it from the archive",
                    entry_path.display()
                ),
            ));
        }
        // `size` is bounded above, so preallocating it is safe.
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(archive_err)?;
        listing.images.push(Member {
            shown: format!("{}:{}", path.display(), components.join("/")),
            components,
            source: Source::Bytes(bytes),
        });
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::write_tar_gz;
    use image::ImageEncoder;

    fn png(width: u32, height: u32, value: u8) -> Vec<u8> {
        let pixels = vec![value; (width * height * 3) as usize];
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .expect("encode png");
        out
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    /// train/{cat,dog} and test/{cat,dog}; each image's grey value encodes
    /// which file it is, so order can be checked.
    fn standard_tree(root: &Path) {
        write(root, "train/dog/b.png", &png(2, 2, 21));
        write(root, "train/dog/a.PNG", &png(3, 2, 20));
        write(root, "train/cat/z.png", &png(2, 2, 11));
        write(root, "train/cat/y.png", &png(2, 2, 10));
        write(root, "train/cat/notes.txt", b"not an image");
        write(root, "test/cat/1.png", &png(2, 2, 30));
        write(root, "test/dog/1.png", &png(2, 2, 40));
        write(root, "README.md", b"hello");
    }

    fn values(d: &Dataset) -> Vec<u8> {
        d.images.iter().map(|i| i.pixels[0]).collect()
    }

    #[test]
    fn loads_directory_sorted_by_class_then_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        let (splits, report) =
            load_image_folder(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(splits.train.classes, ["cat", "dog"]);
        assert_eq!(values(&splits.train), [10, 11, 20, 21]);
        assert_eq!(splits.train.labels, [0, 0, 1, 1]);
        assert_eq!(
            (splits.train.images[2].width, splits.train.images[2].height),
            (3, 2)
        );
        assert_eq!(values(&splits.test), [30, 40]);
        assert_eq!(splits.test.labels, [0, 1]);
        assert!(report.skipped.is_empty(), "{report:?}");
    }

    #[test]
    fn evaluation_reads_the_test_split_or_a_plain_class_tree_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = dir.path().join("full");
        standard_tree(&full);
        // A broken training image would fail a strict load of both splits: the test
        // split alone never touches it.
        write(&full, "train/cat/broken.jpg", b"\xff\xd8\xff garbage");
        let (test, report) = load_test_folder(&full, true).expect("test split");
        assert_eq!(test.classes, ["cat", "dog"]);
        assert_eq!(values(&test), [30, 40]);
        assert!(report.skipped.is_empty(), "{report:?}");
        // A plain ROOT/<class>/ tree, also inside a wrapping folder.
        let plain = dir.path().join("plain");
        write(&plain, "photos/dog/a.png", &png(2, 2, 7));
        write(&plain, "photos/cat/a.png", &png(2, 2, 5));
        write(&plain, "photos/cat/b.png", &png(2, 2, 6));
        let (test, _) = load_test_folder(&plain, true).expect("class tree");
        assert_eq!(test.classes, ["cat", "dog"]);
        assert_eq!((values(&test), test.labels), (vec![5, 6, 7], vec![0, 0, 1]));
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let error = load_test_folder(&empty, false)
            .expect_err("no images")
            .to_string();
        assert!(error.contains("no images found"), "{error}");
    }

    #[test]
    fn loads_tar_gz_with_wrapping_folder_like_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(&dir.path().join("tree"));
        let files = [
            ("data/train/dog/b.png", png(2, 2, 21)),
            ("data/train/dog/a.PNG", png(3, 2, 20)),
            ("data/train/cat/z.png", png(2, 2, 11)),
            ("./data/train/cat/y.png", png(2, 2, 10)),
            ("data/test/cat/1.png", png(2, 2, 30)),
            ("data/test/dog/1.png", png(2, 2, 40)),
            ("data/._junk.png", b"mac".to_vec()),
            ("__MACOSX/data/train/cat/._y.png", b"mac".to_vec()),
        ];
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        let archive = dir.path().join("set.TGZ");
        write_tar_gz(&archive, &["data/", "data/train/"], &refs);
        let (from_tar, report) =
            load_image_folder(&archive, &FolderOptions::default()).expect("tar");
        assert!(report.skipped.is_empty(), "{report:?}");
        let (from_dir, _) =
            load_image_folder(&dir.path().join("tree"), &FolderOptions::default()).expect("dir");
        assert_eq!(from_tar, from_dir);
    }

    #[test]
    fn corrupt_images_are_skipped_or_fatal_in_strict_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        write(dir.path(), "train/cat/broken.jpg", b"\xff\xd8\xff garbage");
        let (splits, report) =
            load_image_folder(dir.path(), &FolderOptions::default()).expect("lenient");
        assert_eq!(splits.train.images.len(), 4);
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].0.ends_with("broken.jpg"), "{report:?}");

        let strict = FolderOptions {
            strict: true,
            val_split: None,
        };
        let err = load_image_folder(dir.path(), &strict).expect_err("strict");
        assert!(matches!(err, DataError::BadImage { .. }), "{err}");
        assert!(err.to_string().contains("broken.jpg"), "{err}");
    }

    #[test]
    fn class_mismatch_names_the_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        write(dir.path(), "test/bird/1.png", &png(2, 2, 1));
        let err = load_image_folder(dir.path(), &FolderOptions::default()).expect_err("mismatch");
        match &err {
            DataError::ClassMismatch {
                only_train,
                only_test,
                ..
            } => {
                assert!(only_train.is_empty());
                assert_eq!(only_test, &["bird"]);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains("bird"));
    }

    #[test]
    fn empty_class_one_class_and_no_images_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        std::fs::create_dir_all(dir.path().join("train/emu")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("test/emu")).expect("mkdir");
        let err = load_image_folder(dir.path(), &FolderOptions::default()).expect_err("empty");
        assert!(err.to_string().contains("train/emu/"), "{err}");

        let one = tempfile::tempdir().expect("tempdir");
        write(one.path(), "train/cat/1.png", &png(1, 1, 0));
        write(one.path(), "test/cat/1.png", &png(1, 1, 0));
        let err = load_image_folder(one.path(), &FolderOptions::default()).expect_err("one");
        assert!(err.to_string().contains("at least two"), "{err}");

        let none = tempfile::tempdir().expect("tempdir");
        write(none.path(), "train/cat/readme.txt", b"x");
        let err = load_image_folder(none.path(), &FolderOptions::default()).expect_err("none");
        assert!(err.to_string().contains("no images"), "{err}");

        let missing = none.path().join("nope");
        let err = load_image_folder(&missing, &FolderOptions::default()).expect_err("missing");
        assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    }

    #[test]
    fn all_images_of_a_class_corrupt_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        write(dir.path(), "test/dog/1.png", b"not a png");
        let err = load_image_folder(dir.path(), &FolderOptions::default()).expect_err("empty");
        assert!(err.to_string().contains("\"dog\""), "{err}");
    }

    #[test]
    fn val_split_takes_the_last_fraction_of_each_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..10u8 {
            write(
                dir.path(),
                &format!("flowers/rose/{i:02}.png"),
                &png(1, 1, i),
            );
            write(
                dir.path(),
                &format!("flowers/tulip/{i:02}.png"),
                &png(1, 1, 100 + i),
            );
        }
        write(dir.path(), "flowers/tulip/extra/deep.png", &png(1, 1, 200));
        let options = FolderOptions {
            strict: false,
            val_split: Some(0.2),
        };
        let (splits, _) = load_image_folder(dir.path(), &options).expect("split");
        assert_eq!(splits.train.classes, ["rose", "tulip"]);
        assert_eq!(
            values(&splits.train),
            [
                0, 1, 2, 3, 4, 5, 6, 7, 100, 101, 102, 103, 104, 105, 106, 107, 108
            ]
        );
        // 11 tulips: round(2.2) = 2 held out, the last two by path.
        assert_eq!(values(&splits.test), [8, 9, 109, 200]);
        assert_eq!(splits.test.labels, [0, 0, 1, 1]);
        let again = load_image_folder(dir.path(), &options).expect("again");
        assert_eq!(again.0, splits);

        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            let options = FolderOptions {
                strict: false,
                val_split: Some(bad),
            };
            let err = load_image_folder(dir.path(), &options).expect_err("bad fraction");
            assert!(matches!(err, DataError::InvalidOption(_)), "{err}");
        }
    }

    #[test]
    fn val_split_of_a_train_test_tree_splits_train_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        standard_tree(dir.path());
        let options = FolderOptions {
            strict: false,
            val_split: Some(0.5),
        };
        let (splits, _) = load_image_folder(dir.path(), &options).expect("split");
        assert_eq!(values(&splits.train), [10, 20]);
        assert_eq!(values(&splits.test), [11, 21]);
    }

    #[test]
    fn images_outside_class_folders_are_reported_with_full_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("wrap");
        standard_tree(&root);
        write(&root, "train/stray.png", &png(1, 1, 0));
        write(&root, "test/stray.png", &png(1, 1, 0));
        write(&root, "test/dog/bad.png", b"broken");
        let (splits, report) =
            load_image_folder(dir.path(), &FolderOptions::default()).expect("load");
        assert_eq!(splits.train.images.len(), 4);
        let paths: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
        let expect = |rel: &str| root.join(rel).display().to_string();
        assert_eq!(
            paths,
            [
                expect("train/stray.png"),
                expect("test/stray.png"),
                expect("test/dog/bad.png")
            ]
        );
    }

    #[test]
    fn missing_test_folder_and_non_archive_file_are_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "train/cat/1.png", &png(1, 1, 0));
        write(dir.path(), "train/dog/1.png", &png(1, 1, 0));
        let err = load_image_folder(dir.path(), &FolderOptions::default()).expect_err("no test");
        assert!(err.to_string().contains("no test folder"), "{err}");

        let file = dir.path().join("data.zip");
        std::fs::write(&file, b"PK").expect("write");
        let err = load_image_folder(&file, &FolderOptions::default()).expect_err("zip");
        assert!(err.to_string().contains(".tar.gz"), "{err}");

        let bad = dir.path().join("bad.tar.gz");
        std::fs::write(&bad, b"definitely not gzip").expect("write");
        let err = load_image_folder(&bad, &FolderOptions::default()).expect_err("bad gzip");
        assert!(matches!(err, DataError::Archive { .. }), "{err}");
    }

    #[test]
    fn parallel_decode_keeps_order_for_many_images() {
        let sources: Vec<Source> = (0..257u32)
            .map(|i| Source::Bytes(png(1, 1, (i % 251) as u8)))
            .collect();
        let out = decode_all(sources);
        for (i, r) in out.iter().enumerate() {
            let img = r.as_ref().expect("decoded");
            assert_eq!(img.pixels[0], (i % 251) as u8);
        }
    }

    /// Mutated tar archives (`vit_tests::fuzz`) never panic the loader: every one is a
    /// data set or an error, whatever its headers, names and sizes say.
    #[test]
    fn mutated_tar_archives_load_or_fail_cleanly() {
        let mut builder = tar::Builder::new(Vec::new());
        for (index, name) in [
            "train/a/0.png",
            "train/b/1.png",
            "test/a/2.png",
            "test/b/3.png",
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = png(3, 2, 40 * index as u8);
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .expect("append");
        }
        let archive = builder.into_inner().expect("tar");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("case.tar");
        let report = vit_tests::fuzz::run(
            "tar",
            std::slice::from_ref(&archive),
            std::time::Duration::from_secs(2),
            |bytes| {
                std::fs::write(&path, bytes).expect("write");
                load_image_folder(&path, &FolderOptions::default()).is_ok()
            },
        );
        assert!(report.accepted > 0 && report.refused > 0, "{report:?}");
    }
}
