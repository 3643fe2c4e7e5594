//! The official CIFAR-10 / CIFAR-100 binary releases, from the downloaded
//! `.tar.gz` (streamed, not extracted) or from its extracted folder.
//!
//! A record is the label byte(s) then 3072 pixel bytes: the 1024 red values
//! of the 32x32 image in row-major order, then green, then blue. CIFAR-100
//! records carry a coarse and a fine label; the fine one (100 classes) is used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, RgbImage, Splits, archive_kind, member_components, open_tar};

/// Which CIFAR release a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

/// CIFAR-10's class names in label order, used when `batches.meta.txt` is absent.
use vit::labels::CIFAR10 as CIFAR10_CLASSES;

const SIDE: usize = 32;
const PIXEL_BYTES: usize = 3 * SIDE * SIDE;
/// Meta files are a few hundred bytes; refuse anything absurd.
const MAX_META_BYTES: u64 = 1 << 20;

impl CifarKind {
    /// The folder the release's archive unpacks to.
    pub fn folder_name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }

    /// The archive users download.
    pub fn archive_name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-binary.tar.gz",
            CifarKind::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    fn train_files(self) -> &'static [&'static str] {
        match self {
            CifarKind::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarKind::Cifar100 => &["train.bin"],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "test_batch.bin",
            CifarKind::Cifar100 => "test.bin",
        }
    }

    fn meta_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "batches.meta.txt",
            CifarKind::Cifar100 => "fine_label_names.txt",
        }
    }

    /// Label bytes before the pixels; the label used is the last of them.
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    fn record_bytes(self) -> usize {
        self.label_bytes() + PIXEL_BYTES
    }

    fn data_files(self) -> impl Iterator<Item = &'static str> {
        self.train_files()
            .iter()
            .copied()
            .chain(std::iter::once(self.test_file()))
    }
}

/// Images and labels of one binary file.
struct Records {
    images: Vec<RgbImage>,
    labels: Vec<usize>,
}

/// Loads a CIFAR binary release: the `.tar.gz` archive, its extracted folder
/// (`cifar-10-batches-bin/`, `cifar-100-binary/`), or a folder holding that one.
pub fn load_cifar(path: &Path, kind: CifarKind) -> Result<Splits, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
            hint: format!(
                "pass {} or the {}/ folder it unpacks to",
                kind.archive_name(),
                kind.folder_name()
            ),
        },
        _ => DataError::io("read", path, e),
    })?;
    let (mut data, meta_text) = if meta.is_dir() {
        read_folder(path, kind)?
    } else if let Some(archive) = archive_kind(path) {
        read_archive(path, archive, kind)?
    } else {
        return Err(DataError::layout(
            path,
            format!(
                "not a folder or a .tar.gz archive; pass {} or the {}/ folder it unpacks to",
                kind.archive_name(),
                kind.folder_name()
            ),
        ));
    };

    let classes = match meta_text {
        Some((meta_path, text)) => parse_class_names(&meta_path, &text, kind)?,
        None => vit::labels::owned(&CIFAR10_CLASSES),
    };
    let mut take = |name: &str| data.remove(name).unwrap_or_else(empty_records);
    let mut train = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        classes: classes.clone(),
    };
    for name in kind.train_files() {
        let part = take(name);
        train.images.extend(part.images);
        train.labels.extend(part.labels);
    }
    let part = take(kind.test_file());
    let test = Dataset {
        images: part.images,
        labels: part.labels,
        classes,
    };
    Ok(Splits { train, test })
}

fn empty_records() -> Records {
    Records {
        images: Vec::new(),
        labels: Vec::new(),
    }
}

type Loaded = (BTreeMap<String, Records>, Option<(PathBuf, String)>);

fn read_folder(path: &Path, kind: CifarKind) -> Result<Loaded, DataError> {
    // Accept the folder that holds the release's folder, as after `tar xzf`.
    let nested = path.join(kind.folder_name());
    let dir = if nested.is_dir() {
        nested
    } else {
        path.to_path_buf()
    };
    let missing: Vec<&str> = kind
        .data_files()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::layout(
            &dir,
            format!(
                "missing {}; expected the {}/ folder from {} (or pass the archive itself)",
                missing.join(", "),
                kind.folder_name(),
                kind.archive_name()
            ),
        ));
    }
    let mut data = BTreeMap::new();
    for name in kind.data_files() {
        let file_path = dir.join(name);
        let file =
            std::fs::File::open(&file_path).map_err(|e| DataError::io("open", &file_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DataError::io("read", &file_path, e))?
            .len();
        let records = read_records(BufReader::new(file), len, &file_path, kind)?;
        data.insert(name.to_owned(), records);
    }
    let meta_path = dir.join(kind.meta_file());
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => Some((meta_path, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(DataError::io("read", &meta_path, e)),
    };
    let meta = require_meta(meta, &dir.join(kind.meta_file()), kind)?;
    Ok((data, meta))
}

/// CIFAR-10 has a built-in fallback for its names; CIFAR-100 needs its file.
fn require_meta(
    meta: Option<(PathBuf, String)>,
    expected_at: &Path,
    kind: CifarKind,
) -> Result<Option<(PathBuf, String)>, DataError> {
    if meta.is_none() && kind == CifarKind::Cifar100 {
        return Err(DataError::NotFound {
            path: expected_at.to_path_buf(),
            hint: format!(
                "CIFAR-100's class names come from it; use the complete {}",
                kind.archive_name()
            ),
        });
    }
    Ok(meta)
}

fn read_archive(
    path: &Path,
    archive: super::ArchiveKind,
    kind: CifarKind,
) -> Result<Loaded, DataError> {
    let archive_err = |source| DataError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let mut tar = open_tar(path, archive)?;
    let mut data = BTreeMap::new();
    let mut meta = None;
    for entry in tar.entries().map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let entry_path = entry.path().map_err(archive_err)?.into_owned();
        let Some(components) = member_components(&entry_path) else {
            continue;
        };
        let Some(name) = components.last().cloned() else {
            continue;
        };
        let shown = PathBuf::from(format!("{}:{}", path.display(), components.join("/")));
        let len = entry.size();
        if kind.data_files().any(|n| n == name) && !data.contains_key(&name) {
            // Streams records straight out of the decompressor.
            let records = read_records(BufReader::new(entry), len, &shown, kind)?;
            data.insert(name, records);
        } else if name == kind.meta_file() && meta.is_none() {
            if len > MAX_META_BYTES {
                return Err(DataError::BadCifarFile {
                    path: shown,
                    message: format!("is {len} bytes, too large for a list of class names"),
                });
            }
            let mut text = String::new();
            entry
                .take(MAX_META_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| DataError::BadCifarFile {
                    path: shown.clone(),
                    message: format!("cannot read the class names as text: {e}"),
                })?;
            meta = Some((shown, text));
        }
    }
    let missing: Vec<&str> = kind
        .data_files()
        .filter(|n| !data.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(DataError::layout(
            path,
            format!(
                "the archive lacks {}; is it {}? (pass CIFAR-10 or CIFAR-100 to match the archive)",
                missing.join(", "),
                kind.archive_name()
            ),
        ));
    }
    let meta = require_meta(meta, &path.join(kind.meta_file()), kind)?;
    Ok((data, meta))
}

/// Reads `len` bytes of records, checking the size and every label.
fn read_records(
    mut reader: impl BufRead,
    len: u64,
    shown: &Path,
    kind: CifarKind,
) -> Result<Records, DataError> {
    let record = kind.record_bytes() as u64;
    if len == 0 || !len.is_multiple_of(record) {
        return Err(DataError::BadCifarFile {
            path: shown.to_path_buf(),
            message: format!(
                "is {len} bytes, not a whole number of {record}-byte records; the file is truncated or not from {} (download it again)",
                kind.archive_name()
            ),
        });
    }
    let count = (len / record) as usize;
    let mut images = Vec::with_capacity(count);
    let mut labels = Vec::with_capacity(count);
    let mut buf = vec![0u8; kind.record_bytes()];
    for index in 0..count {
        reader
            .read_exact(&mut buf)
            .map_err(|e| DataError::BadCifarFile {
                path: shown.to_path_buf(),
                message: format!("cannot read record {index}: {e} (truncated? download it again)"),
            })?;
        let label = usize::from(buf[kind.label_bytes() - 1]);
        if label >= kind.num_classes() {
            return Err(DataError::BadCifarFile {
                path: shown.to_path_buf(),
                message: format!(
                    "record {index} has label {label}, but {} has {} classes (is this file from {}?)",
                    kind.archive_name(),
                    kind.num_classes(),
                    kind.archive_name()
                ),
            });
        }
        let planes = &buf[kind.label_bytes()..];
        let plane = SIDE * SIDE;
        let pixels = (0..plane)
            .flat_map(|i| [planes[i], planes[plane + i], planes[2 * plane + i]])
            .collect();
        images.push(RgbImage {
            width: SIDE,
            height: SIDE,
            pixels,
        });
        labels.push(label);
    }
    Ok(Records { images, labels })
}

/// One name per non-empty line (the files end with blank lines).
fn parse_class_names(path: &Path, text: &str, kind: CifarKind) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if names.len() != kind.num_classes() {
        return Err(DataError::BadCifarFile {
            path: path.to_path_buf(),
            message: format!(
                "lists {} class names, expected {} (one per line); is it from {}?",
                names.len(),
                kind.num_classes(),
                kind.archive_name()
            ),
        });
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::write_tar_gz;

    /// A record whose pixel (y, x) channel c is `seed + c * 7 + y * 3 + x`.
    fn record(kind: CifarKind, label: u8, seed: u8) -> Vec<u8> {
        let mut out = match kind {
            CifarKind::Cifar10 => vec![label],
            // The coarse label is deliberately out of the fine range's way.
            CifarKind::Cifar100 => vec![label % 20, label],
        };
        for c in 0..3u8 {
            for y in 0..32u8 {
                for x in 0..32u8 {
                    out.push(
                        seed.wrapping_add(c * 7)
                            .wrapping_add(y.wrapping_mul(3))
                            .wrapping_add(x),
                    );
                }
            }
        }
        out
    }

    fn expected_pixel(seed: u8, y: u8, x: u8, c: u8) -> u8 {
        seed.wrapping_add(c * 7)
            .wrapping_add(y.wrapping_mul(3))
            .wrapping_add(x)
    }

    /// CIFAR-10 files: batch i holds labels [i, i+1] with seeds [10i, 10i+1].
    fn cifar10_files() -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for i in 1..=5u8 {
            let mut bytes = record(CifarKind::Cifar10, i, 10 * i);
            bytes.extend(record(CifarKind::Cifar10, i + 1, 10 * i + 1));
            files.push((format!("data_batch_{i}.bin"), bytes));
        }
        files.push((
            "test_batch.bin".to_owned(),
            record(CifarKind::Cifar10, 9, 200),
        ));
        let meta = CIFAR10_CLASSES.map(|n| format!("{n}\n")).concat() + "\n\n";
        files.push(("batches.meta.txt".to_owned(), meta.into_bytes()));
        files
    }

    fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
        std::fs::create_dir_all(dir).expect("mkdir");
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("write");
        }
    }

    #[test]
    fn cifar10_folder_converts_planes_to_hwc_in_file_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cifar-10-batches-bin");
        write_dir(&dir, &cifar10_files());
        let splits = load_cifar(&dir, CifarKind::Cifar10).expect("load");
        assert_eq!(splits.train.labels, [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
        assert_eq!(splits.test.labels, [9]);
        assert_eq!(splits.train.classes, CIFAR10_CLASSES);
        let img = &splits.train.images[3]; // batch 2, second record: seed 21
        assert_eq!((img.width, img.height, img.pixels.len()), (32, 32, 3072));
        for (y, x) in [(0u8, 0u8), (5, 17), (31, 31)] {
            for c in 0..3u8 {
                let i = (usize::from(y) * 32 + usize::from(x)) * 3 + usize::from(c);
                assert_eq!(img.pixels[i], expected_pixel(21, y, x, c), "y{y} x{x} c{c}");
            }
        }
        // The parent folder works too, as after `tar xzf`.
        let from_parent = load_cifar(tmp.path(), CifarKind::Cifar10).expect("parent");
        assert_eq!(from_parent, splits);
    }

    #[test]
    fn cifar10_archive_equals_folder_and_missing_meta_falls_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = cifar10_files();
        let dir = tmp.path().join("cifar-10-batches-bin");
        write_dir(&dir, &files);
        let archive = tmp.path().join("cifar-10-binary.tar.gz");
        let entries: Vec<(String, &[u8])> = files
            .iter()
            .map(|(n, b)| (format!("cifar-10-batches-bin/{n}"), b.as_slice()))
            .collect();
        let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (n.as_str(), *b)).collect();
        write_tar_gz(&archive, &["cifar-10-batches-bin/"], &refs);
        let from_tar = load_cifar(&archive, CifarKind::Cifar10).expect("tar");
        assert_eq!(from_tar, load_cifar(&dir, CifarKind::Cifar10).expect("dir"));

        std::fs::remove_file(dir.join("batches.meta.txt")).expect("rm");
        let no_meta = load_cifar(&dir, CifarKind::Cifar10).expect("no meta");
        assert_eq!(no_meta.test.classes[9], "truck");
    }

    #[test]
    fn cifar100_uses_fine_labels_and_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut train = record(CifarKind::Cifar100, 99, 1);
        train.extend(record(CifarKind::Cifar100, 42, 2));
        let names: String = (0..100).map(|i| format!("class_{i}\n")).collect();
        let files = vec![
            ("train.bin".to_owned(), train),
            ("test.bin".to_owned(), record(CifarKind::Cifar100, 7, 3)),
            ("fine_label_names.txt".to_owned(), names.into_bytes()),
        ];
        let dir = tmp.path().join("cifar-100-binary");
        write_dir(&dir, &files);
        let splits = load_cifar(tmp.path(), CifarKind::Cifar100).expect("load");
        assert_eq!(splits.train.labels, [99, 42]);
        assert_eq!(splits.test.labels, [7]);
        assert_eq!(splits.train.classes.len(), 100);
        assert_eq!(splits.train.classes[42], "class_42");
        assert_eq!(splits.test.images[0].pixels[0], expected_pixel(3, 0, 0, 0));

        // The same files read as CIFAR-10 are missing batches.
        let err = load_cifar(&dir, CifarKind::Cifar10).expect_err("wrong kind");
        assert!(err.to_string().contains("data_batch_1.bin"), "{err}");

        std::fs::remove_file(dir.join("fine_label_names.txt")).expect("rm");
        let err = load_cifar(&dir, CifarKind::Cifar100).expect_err("no names");
        assert!(err.to_string().contains("fine_label_names.txt"), "{err}");
    }

    #[test]
    fn partial_records_and_bad_labels_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cifar-10-batches-bin");
        let mut files = cifar10_files();
        files[2].1.pop(); // data_batch_3.bin loses its last byte
        write_dir(&dir, &files);
        let err = load_cifar(&dir, CifarKind::Cifar10).expect_err("partial");
        assert!(
            err.to_string().contains("data_batch_3.bin")
                && err.to_string().contains("whole number"),
            "{err}"
        );

        let mut files = cifar10_files();
        files[5].1[0] = 10; // test_batch.bin label out of range
        write_dir(&dir, &files);
        let err = load_cifar(&dir, CifarKind::Cifar10).expect_err("label");
        assert!(err.to_string().contains("label 10"), "{err}");

        let mut files = cifar10_files();
        files[6].1 = b"cat\ndog\n".to_vec();
        write_dir(&dir, &files);
        let err = load_cifar(&dir, CifarKind::Cifar10).expect_err("names");
        assert!(err.to_string().contains("2 class names"), "{err}");

        // A truncated archive: gzip or tar reports it.
        let archive = tmp.path().join("cut.tar.gz");
        let files = cifar10_files();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        write_tar_gz(&archive, &[], &refs);
        let bytes = std::fs::read(&archive).expect("read");
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).expect("cut");
        let err = load_cifar(&archive, CifarKind::Cifar10).expect_err("cut archive");
        assert!(
            matches!(
                err,
                DataError::Archive { .. } | DataError::BadCifarFile { .. }
            ),
            "{err}"
        );
    }
}
