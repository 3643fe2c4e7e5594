//! Training data: image folders (directories or `.tar.gz` archives), the
//! official CIFAR binary releases, and a cached downloader for the latter.
//!
//! Everything here returns [`DataError`], whose messages name the file and
//! what to do, so the command line can print them as they are.

pub mod cifar;
pub mod download;
pub mod folder;

use std::path::{Path, PathBuf};

use vit::preprocess::PreprocessError;
pub use vit::preprocess::RgbImage;

/// One split in memory: decoded images (kept as u8, at their own size) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub images: Vec<RgbImage>,
    /// `labels[i]` is the class of `images[i]`, an index into `classes`.
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
}

/// The training split and the split it is evaluated on (the test set, or the
/// held-out validation part when a folder is split with `val_split`).
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

/// What a lenient load left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// `(path, reason)` for every image file that was not used. Files inside
    /// an archive are named `ARCHIVE:INNER/PATH`.
    pub skipped: Vec<(String, String)>,
}

/// Why a data set could not be loaded or downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{} does not exist; {hint}", path.display())]
    NotFound { path: PathBuf, hint: String },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot read the archive {} (corrupt or truncated? check the download, or unpack it and pass the folder): {source}",
        path.display()
    )]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The files are not arranged as the loader expects.
    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },

    #[error(
        "{}: the train and test splits have different classes (only in train: [{}]; only in test: [{}]); give both the same class folders",
        path.display(),
        only_train.join(", "),
        only_test.join(", ")
    )]
    ClassMismatch {
        path: PathBuf,
        only_train: Vec<String>,
        only_test: Vec<String>,
    },

    #[error(
        "cannot decode the image {path} ({source}); fix or remove the file, or load without strict mode to skip it"
    )]
    BadImage {
        /// The file, or `ARCHIVE:INNER/PATH` inside an archive.
        path: String,
        #[source]
        source: PreprocessError,
    },

    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// A CIFAR binary file that does not have the layout of its release.
    #[error("{}: {message}", path.display())]
    BadCifarFile { path: PathBuf, message: String },

    #[error("cannot download {url}: {reason}. {hint}")]
    Download {
        url: String,
        reason: String,
        /// Says where to get the file by other means and where to put it.
        hint: String,
    },

    #[error(
        "the download of {url} has {what} {actual}, expected {expected}; the partial file was deleted, so the next try starts afresh (if it keeps happening, the file on the server has changed)"
    )]
    Mismatch {
        url: String,
        /// "size", "md5" or "sha256".
        what: &'static str,
        expected: String,
        actual: String,
    },
}

impl DataError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn layout(path: &Path, message: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// How the loaders treat a file given as a path: an archive by its name,
/// else a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    TarGz,
    Tar,
}

/// Recognises `.tar.gz`, `.tgz` and `.tar` names (case-insensitive).
pub(crate) fn archive_kind(path: &Path) -> Option<ArchiveKind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some(ArchiveKind::TarGz)
    } else if name.ends_with(".tar") {
        Some(ArchiveKind::Tar)
    } else {
        None
    }
}

/// Opens a tar archive for streaming; gzip is decoded on the fly so nothing
/// is extracted to disk.
pub(crate) fn open_tar(
    path: &Path,
    kind: ArchiveKind,
) -> Result<tar::Archive<Box<dyn std::io::Read>>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io("open", path, e))?;
    // Large buffer: gzip decoding reads in small pieces otherwise.
    let buffered = std::io::BufReader::with_capacity(1 << 20, file);
    let reader: Box<dyn std::io::Read> = match kind {
        ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(buffered)),
        ArchiveKind::Tar => Box::new(buffered),
    };
    Ok(tar::Archive::new(reader))
}

/// Splits an archive member's path into normal components, dropping `.` and
/// refusing `..` or absolute paths (`None`), which no sane data set contains.
pub(crate) fn member_components(path: &Path) -> Option<Vec<String>> {
    use std::path::Component;
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// A `--dataset` value with the options that say how to read it.
#[derive(Debug, Clone)]
pub struct Source {
    /// `cifar10`, `cifar100`, or the path of an image folder or archive.
    pub dataset: String,
    pub cache_dir: PathBuf,
    pub strict: bool,
    pub val_split: Option<f64>,
}

impl Source {
    /// The official CIFAR release this names, if any.
    pub fn cifar(&self) -> Option<(cifar::CifarKind, &'static download::RemoteArchive)> {
        match self.dataset.to_ascii_lowercase().as_str() {
            "cifar10" => Some((cifar::CifarKind::Cifar10, &*download::CIFAR10)),
            "cifar100" => Some((cifar::CifarKind::Cifar100, &*download::CIFAR100)),
            _ => None,
        }
    }

    /// Loads both splits: CIFAR downloaded once into the cache, or an image
    /// folder (skipped files are reported, unless `strict` makes them errors).
    pub fn load(&self) -> anyhow::Result<Splits> {
        if let Some((kind, remote)) = self.cifar() {
            let dest = self.cache_dir.join(remote.file_name);
            eprintln!("data set: {}", remote.url);
            download::fetch(
                remote.url,
                &dest,
                &remote.expected,
                &mut crate::progress::download(),
            )?;
            return Ok(cifar::load_cifar(&dest, kind)?);
        }
        let options = folder::FolderOptions {
            strict: self.strict,
            val_split: self.val_split,
        };
        let (splits, report) = folder::load_image_folder(Path::new(&self.dataset), &options)?;
        warn_skipped(&report);
        Ok(splits)
    }

    /// Only the images to evaluate on: an image folder's `test/` split or, without one,
    /// its whole `<class>/` tree (the training split is not decoded); CIFAR's test split;
    /// with `val_split`, the held-out part as in training.
    pub fn load_test(&self) -> anyhow::Result<Dataset> {
        if self.cifar().is_some() || self.val_split.is_some() {
            return Ok(self.load()?.test);
        }
        let (test, report) = folder::load_test_folder(Path::new(&self.dataset), self.strict)?;
        warn_skipped(&report);
        Ok(test)
    }
}

fn warn_skipped(report: &LoadReport) {
    if let Some((path, reason)) = report.skipped.first() {
        eprintln!(
            "warning: skipped {} unreadable image(s), e.g. {path}: {reason} (use --strict to fail instead)",
            report.skipped.len()
        );
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::io::Write;
    use std::path::Path;

    /// Writes a `.tar.gz` holding `files` (path inside, bytes) and,
    /// first, directory entries for `dirs`.
    pub fn write_tar_gz(dest: &Path, dirs: &[&str], files: &[(&str, &[u8])]) {
        let file = std::fs::File::create(dest).expect("create archive");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for dir in dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            header.set_cksum();
            builder
                .append_data(&mut header, dir, std::io::empty())
                .expect("append dir");
        }
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *bytes)
                .expect("append file");
        }
        let gz = builder.into_inner().expect("finish tar");
        gz.finish().expect("finish gzip").flush().expect("flush");
    }
}
