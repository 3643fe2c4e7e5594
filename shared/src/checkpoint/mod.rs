//! Loading and saving real checkpoints. Every format is converted to one layout,
//! the reference's ([`params`]); [`load`] detects the format from the file.
//!
//! - Google `vit_jax` `.npz` ([`google`]),
//! - Hugging Face folders, which are also our export format ([`hf`]),
//! - timm safetensors ([`timm`]).

pub mod export_zip;
pub mod google;
pub mod hf;
pub mod npz;
pub mod params;
pub mod posemb;
pub mod safetensors_io;
mod surgery;
pub mod timm;
pub mod torch_layout;
pub mod weights;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Cursor, Seek};
use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use npz::NpzError;
pub use params::{Array, Params};

use crate::config::{ConfigError, ViTConfig};
use crate::model::VisionTransformer;
pub use safetensors_io::ByteSource;
use safetensors_io::{FileSource, Tensors};

/// What can go wrong reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    UnknownFormat { path: PathBuf, message: String },
    #[error("invalid .npz checkpoint")]
    Npz(#[from] NpzError),
    #[error("invalid zipped model: {0}")]
    ExportZip(String),
    #[error("invalid safetensors data: {0}")]
    Safetensors(String),
    #[error("invalid config.json: {0}")]
    Json(String),
    #[error("the checkpoint lacks {} parameter(s) the model needs: {}", .0.len(), list(.0))]
    MissingKeys(Vec<String>),
    #[error("`{key}` has shape {found:?} but the model needs {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "`{key}` holds a value that is not a finite number (NaN or infinite): the model is broken"
    )]
    NonFinite { key: String },
    #[error("cannot work out the model architecture: {0}")]
    Architecture(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn list(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", and {} more", keys.len() - SHOWN));
    }
    text
}

/// The file layouts [`load`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    GoogleNpz,
    HuggingFace,
    Timm,
}

/// What the files cannot tell by themselves.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Attention heads, for timm files (they do not record it).
    pub num_heads: Option<usize>,
}

/// A model read from a file: its architecture, its parameters in the reference
/// layout, and its class names when the file has them.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: ViTConfig,
    pub params: Params,
    pub labels: Option<Vec<String>>,
    /// What the model is and how it was made (e.g. the training run and its test
    /// accuracy), for people and pages showing it; `vit_description` in config.json.
    pub description: Option<String>,
    pub format: Format,
    /// Names in the file the model does not use (the reference's `inspect_params`
    /// reports these too); loading still succeeds.
    pub unexpected: Vec<String>,
}

/// Options for [`Checkpoint::save`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    /// Store weights as float16 (half the download, for the browser).
    pub float16: bool,
}

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// How Hugging Face names the list of shards of a model saved in parts.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads a checkpoint: a Google `.npz`, a timm or HF `.safetensors` file, a folder
/// with `config.json` + `model.safetensors` (HF, or our export; the weights may be
/// sharded, and `preprocessor_config.json` gives the normalisation), or a zip of those
/// files (the page's "download the taught model").
///
/// Weights are read and converted one tensor at a time: the whole file is never in
/// memory, only the parameters it holds. Files that do not record the normalisation
/// (timm's, Google's) get the reference's; set `config.normalization` to change it.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Checkpoint, CheckpointError> {
    if path.is_dir() {
        load_hf_folder(path)
    } else {
        load_file(path, options)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_file(path: &Path, options: &LoadOptions) -> Result<Checkpoint, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let head_len = std::io::Read::read(&mut &file, &mut magic).map_err(io)?;
    if head_len == 4 && magic == *b"PK\x03\x04" {
        // A zipped export (config.json inside) or a Google .npz.
        let mut reader = BufReader::new(file);
        reader.rewind().map_err(io)?;
        if let Ok(archive) = zip::ZipArchive::new(&mut reader)
            && export_zip::is_export(&archive)
        {
            return export_zip::read(archive);
        }
        reader.rewind().map_err(io)?;
        return from_npz(npz::NpzReader::open(reader)?);
    }
    let source = FileSource::open(path).map_err(io)?;
    let tensors = Tensors::parse(&[&source]).map_err(|error| match error {
        CheckpointError::Safetensors(message) => CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            message: format!(
                "not a Google .npz (zip) nor a readable safetensors file ({message}); \
                 expected a .npz, a .safetensors file or a folder with config.json + model.safetensors"
            ),
        },
        other => other,
    })?;
    if tensors.contains("patch_embed.proj.weight") {
        return from_timm_tensors(&tensors, options);
    }
    if tensors
        .names()
        .any(|key| key.contains("embeddings.patch_embeddings"))
    {
        let mut checkpoint = from_hf_parts(&read(&path.with_file_name(CONFIG_FILE))?, &tensors)?;
        read_preprocessor_beside(path.parent().unwrap_or(Path::new(".")), &mut checkpoint)?;
        return Ok(checkpoint);
    }
    Err(CheckpointError::UnknownFormat {
        path: path.to_path_buf(),
        message: format!(
            "safetensors file with neither timm (`patch_embed.proj.weight`) nor Hugging Face \
             (`embeddings.patch_embeddings...`) names; first names: {}",
            list(&tensors.names().map(str::to_string).collect::<Vec<_>>())
        ),
    })
}

/// A folder with config.json and model.safetensors, or the shards that
/// model.safetensors.index.json lists.
fn load_hf_folder(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let config = read(&dir.join(CONFIG_FILE))?;
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    let shard_files = if !single.exists() && index.exists() {
        shard_names(&read(&index)?)?
            .into_iter()
            .map(|name| dir.join(name))
            .collect()
    } else {
        vec![single]
    };
    let shards = shard_files
        .iter()
        .map(|path| {
            FileSource::open(path).map_err(|source| CheckpointError::Io {
                path: path.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sources: Vec<&dyn ByteSource> = shards.iter().map(|s| s as &dyn ByteSource).collect();
    let mut checkpoint = from_hf_parts(&config, &Tensors::parse(&sources)?)?;
    read_preprocessor_beside(dir, &mut checkpoint)?;
    Ok(checkpoint)
}

/// The shard files a `model.safetensors.index.json` names (its `weight_map`
/// values), each once, in order.
pub fn shard_names(index_json: &[u8]) -> Result<Vec<String>, CheckpointError> {
    let invalid =
        |message: String| CheckpointError::Json(format!("{WEIGHTS_INDEX_FILE}: {message}"));
    let json: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|error| invalid(error.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| invalid("no `weight_map` object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(format!("shard {file} is not a file name")))?;
        // Shards sit beside the index: no folders, so a file cannot point elsewhere.
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
            return Err(invalid(format!("`{file}` is not a plain file name")));
        }
        if !names.iter().any(|name| name == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Applies `dir/preprocessor_config.json`, when there is one.
fn read_preprocessor_beside(
    dir: &Path,
    checkpoint: &mut Checkpoint,
) -> Result<(), CheckpointError> {
    let path = dir.join(hf::PREPROCESSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|error| CheckpointError::Json(format!("{}: {error}", path.display())))?;
    hf::apply_preprocessor(&json, &mut checkpoint.config)
}

/// A Google `.npz` held in memory.
pub fn from_npz_bytes(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    from_npz(npz::NpzReader::open(Cursor::new(bytes))?)
}

/// The model an npz archive describes. The arrays' names and shapes (their headers) give
/// the architecture, which is checked, and each array the model needs is checked against
/// its expected shape before any data is read: memory follows the model the file claims
/// to be, whatever its entries would inflate to. Other arrays are never read.
fn from_npz<R: std::io::Read + std::io::Seek>(
    mut npz: npz::NpzReader<R>,
) -> Result<Checkpoint, CheckpointError> {
    let keys: Vec<&str> = npz.shapes().map(|(key, _)| key).collect();
    let (names, ignored) = google::param_names(&keys);
    let declared: BTreeMap<&str, &[usize]> = npz.shapes().collect();
    let shapes: BTreeMap<String, Vec<usize>> = names
        .iter()
        .map(|(file, ours)| (ours.clone(), declared[file.as_str()].to_vec()))
        .collect();
    let config = google::infer_config(&shapes)?;
    let expected = params::expected_shapes(&config);
    let missing: Vec<String> = expected
        .iter()
        .filter(|(key, _)| !shapes.contains_key(key))
        .map(|(key, _)| key.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingKeys(missing));
    }
    if let Some((key, shape)) = expected.iter().find(|(key, shape)| shapes[key] != *shape) {
        return Err(CheckpointError::ShapeMismatch {
            key: key.clone(),
            expected: shape.clone(),
            found: shapes[key].clone(),
        });
    }
    let mut params = Params::new();
    let mut unexpected = ignored;
    for (file, ours) in names {
        if expected.iter().any(|(key, _)| *key == ours) {
            let array = npz.read(&file)?;
            params.insert(ours, array);
        } else {
            unexpected.push(file);
        }
    }
    weights::check_params(&config, &params)?;
    Ok(Checkpoint {
        config,
        params,
        labels: None,
        description: None,
        format: Format::GoogleNpz,
        unexpected,
    })
}

/// An HF folder (or our export) held in memory: config.json and model.safetensors bytes.
pub fn from_hf_bytes(config_json: &[u8], weights: &[u8]) -> Result<Checkpoint, CheckpointError> {
    from_hf_source(config_json, &weights)
}

/// The same with the weights read from `weights` one tensor at a time (e.g. in the
/// browser, from a JavaScript buffer, so that the file never has to be in the heap).
pub fn from_hf_source(
    config_json: &[u8],
    weights: &dyn ByteSource,
) -> Result<Checkpoint, CheckpointError> {
    from_hf_parts(config_json, &Tensors::parse(&[weights])?)
}

fn from_hf_parts(config_json: &[u8], tensors: &Tensors) -> Result<Checkpoint, CheckpointError> {
    let json: serde_json::Value = serde_json::from_slice(config_json)
        .map_err(|error| CheckpointError::Json(error.to_string()))?;
    let prefix = if tensors.names().any(|key| key.starts_with("vit.")) {
        "vit."
    } else {
        ""
    };
    let config = hf::read_config(&json, |key| tensors.len(key), prefix)?;
    let expected = params::expected_shapes(&config);
    let (params, unexpected) =
        torch_layout::import(&hf::entries(&config, prefix), &expected, tensors)?;
    weights::check_params(&config, &params)?;
    let labels = hf::read_labels(&json, config.num_classes)?;
    Ok(Checkpoint {
        config,
        params,
        labels,
        description: hf::read_description(&json),
        format: Format::HuggingFace,
        unexpected,
    })
}

fn from_timm_tensors(
    tensors: &Tensors,
    options: &LoadOptions,
) -> Result<Checkpoint, CheckpointError> {
    let config = timm::infer_config(tensors, options.num_heads)?;
    let expected = params::expected_shapes(&config);
    let (params, unexpected) = torch_layout::import(&timm::entries(&config), &expected, tensors)?;
    weights::check_params(&config, &params)?;
    Ok(Checkpoint {
        config,
        params,
        labels: None,
        description: None,
        format: Format::Timm,
        unexpected,
    })
}

impl Checkpoint {
    /// Captures a model's parameters (e.g. after training) with its class names.
    pub fn from_model(model: &VisionTransformer, labels: Option<Vec<String>>) -> Self {
        Self {
            config: model.config().clone(),
            params: weights::model_params(model),
            labels,
            description: None,
            format: Format::HuggingFace,
            unexpected: Vec::new(),
        }
    }

    /// Builds the model on `device`, keeping the checkpoint (its weights are copied).
    pub fn build(&self, device: &Device) -> Result<VisionTransformer, CheckpointError> {
        weights::build_model(&self.config, self.params.clone(), device)
    }

    /// Builds the model on `device`, moving the weights into it.
    pub fn into_model(self, device: &Device) -> Result<VisionTransformer, CheckpointError> {
        weights::build_model(&self.config, self.params, device)
    }

    /// Class names, from the checkpoint or else the class indices.
    pub fn label_names(&self) -> Vec<String> {
        match &self.labels {
            Some(labels) if labels.len() == self.config.num_classes => labels.clone(),
            _ => (0..self.config.num_classes)
                .map(|index| index.to_string())
                .collect(),
        }
    }

    /// The export format in memory: (config.json, model.safetensors).
    pub fn to_hf_bytes(&self, options: SaveOptions) -> Result<(Vec<u8>, Vec<u8>), CheckpointError> {
        weights::check_params(&self.config, &self.params)?;
        let config = hf::write_config(
            &self.config,
            &self.label_names(),
            self.description.as_deref(),
        );
        let config = serde_json::to_vec_pretty(&config)
            .map_err(|error| CheckpointError::Json(error.to_string()))?;
        let tensors = torch_layout::export(&hf::entries(&self.config, "vit."), &self.params)?;
        let weights = safetensors_io::write(&tensors, options.float16)?;
        Ok((config, weights))
    }

    /// Writes `dir/config.json`, `dir/model.safetensors` (Hugging Face
    /// `ViTForImageClassification` layout where it can express the model) and
    /// `dir/preprocessor_config.json` (the normalisation, for `transformers`'
    /// pipelines). Files appear complete or not at all.
    pub fn save(&self, dir: &Path, options: SaveOptions) -> Result<(), CheckpointError> {
        let (config, weights) = self.to_hf_bytes(options)?;
        let preprocessor = serde_json::to_vec_pretty(&hf::write_preprocessor(&self.config))
            .map_err(|error| CheckpointError::Json(error.to_string()))?;
        fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_atomically(&dir.join(WEIGHTS_FILE), &weights)?;
        write_atomically(&dir.join(hf::PREPROCESSOR_FILE), &preprocessor)?;
        write_atomically(&dir.join(CONFIG_FILE), &config)
    }
}

/// Writes to a temporary name beside `path`, flushes it to the disk, then renames it into
/// place and flushes the folder, so that neither a crash nor a power loss can leave a
/// partly written (or renamed but empty) file at `path`. A failed write leaves nothing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let written = (|| {
        let mut file = fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        sync_folder(path.parent().unwrap_or(Path::new(".")))
    })();
    written.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Flushes a folder's entries (new names, renames) to the disk.
pub fn sync_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
