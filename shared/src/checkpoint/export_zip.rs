//! An export as one file: a zip with `config.json` and `model.safetensors` (and
//! optionally `preprocessor_config.json`) at its top level, what the browser's "download
//! the taught model" writes. `trainer predict --checkpoint taught.zip` and the page's
//! "load your own model" read it as they read the folder.

use std::io::{Cursor, Read, Seek, Write};

use zip::ZipArchive;
use zip::write::SimpleFileOptions;

use super::hf::{self, PREPROCESSOR_FILE};
use super::{CONFIG_FILE, Checkpoint, CheckpointError, WEIGHTS_FILE, from_hf_bytes};
use crate::SaveOptions;

/// No entry may inflate to more than this many times its stored size: memory then
/// follows the size of the file, not what a crafted entry claims.
const MAX_INFLATION: u64 = 8;
/// Slack for tiny entries, whose ratio means little.
const SMALL_ENTRY: u64 = 1 << 20;

/// The export of `checkpoint` as a zip: `config.json`, `model.safetensors` and
/// `preprocessor_config.json`, stored (float weights barely compress).
pub fn write(checkpoint: &Checkpoint, options: SaveOptions) -> Result<Vec<u8>, CheckpointError> {
    let (config, weights) = checkpoint.to_hf_bytes(options)?;
    let preprocessor = serde_json::to_vec_pretty(&hf::write_preprocessor(&checkpoint.config))
        .map_err(|error| CheckpointError::Json(error.to_string()))?;
    let error = |error: zip::result::ZipError| CheckpointError::ExportZip(error.to_string());
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(weights.len() as u64 >= u64::from(u32::MAX));
    let files = [
        (CONFIG_FILE, config.as_slice()),
        (WEIGHTS_FILE, weights.as_slice()),
        (PREPROCESSOR_FILE, preprocessor.as_slice()),
    ];
    for (name, bytes) in files {
        writer.start_file(name, options).map_err(error)?;
        writer
            .write_all(bytes)
            .map_err(|io| CheckpointError::ExportZip(io.to_string()))?;
    }
    Ok(writer.finish().map_err(error)?.into_inner())
}

/// Whether a zip archive is an export (it holds `config.json`), not a Google `.npz`.
pub fn is_export<R: Read + Seek>(archive: &ZipArchive<R>) -> bool {
    archive.index_for_name(CONFIG_FILE).is_some()
}

/// The checkpoint a zipped export holds.
pub fn read<R: Read + Seek>(mut archive: ZipArchive<R>) -> Result<Checkpoint, CheckpointError> {
    let config = entry(&mut archive, CONFIG_FILE)?.ok_or_else(|| missing(CONFIG_FILE))?;
    let weights = entry(&mut archive, WEIGHTS_FILE)?.ok_or_else(|| missing(WEIGHTS_FILE))?;
    let mut checkpoint = from_hf_bytes(&config, &weights)?;
    if let Some(preprocessor) = entry(&mut archive, PREPROCESSOR_FILE)? {
        let json: serde_json::Value = serde_json::from_slice(&preprocessor)
            .map_err(|error| CheckpointError::Json(format!("{PREPROCESSOR_FILE}: {error}")))?;
        hf::apply_preprocessor(&json, &mut checkpoint.config)?;
    }
    Ok(checkpoint)
}

/// The same from bytes in memory (the page's file).
pub fn read_bytes(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|error| CheckpointError::ExportZip(error.to_string()))?;
    read(archive)
}

fn missing(name: &str) -> CheckpointError {
    CheckpointError::ExportZip(format!(
        "it has no {name}; a zipped model holds {CONFIG_FILE} and {WEIGHTS_FILE}"
    ))
}

/// The bytes of entry `name`, if present, refusing one that would inflate beyond
/// [`MAX_INFLATION`] times its stored size.
fn entry<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
) -> Result<Option<Vec<u8>>, CheckpointError> {
    let Some(index) = archive.index_for_name(name) else {
        return Ok(None);
    };
    let error = |message: String| CheckpointError::ExportZip(format!("{name}: {message}"));
    let file = archive
        .by_index(index)
        .map_err(|zip| error(zip.to_string()))?;
    let limit = file.compressed_size().saturating_mul(MAX_INFLATION) + SMALL_ENTRY;
    if file.size() > limit {
        return Err(error(format!(
            "claims {} bytes from {} stored; refused",
            file.size(),
            file.compressed_size()
        )));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|io| error(io.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(error(
            "inflates beyond its declared size; refused".to_string(),
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ViTConfig, VisionTransformer};
    use burn::tensor::Device;

    fn tiny() -> Checkpoint {
        let config = ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 8,
            mlp_dim: 16,
            num_heads: 2,
            num_layers: 1,
            ..ViTConfig::preset("Ti/16").unwrap()
        }
        .with_num_classes(2);
        let model = VisionTransformer::new(&config, &Device::flex()).unwrap();
        Checkpoint::from_model(&model, Some(vec!["ship".into(), "frog".into()]))
    }

    #[test]
    fn a_zipped_export_reads_back_as_the_folder_would() {
        let mut checkpoint = tiny();
        checkpoint.config.normalization = crate::preprocess::Normalization::IMAGENET;
        let (config, weights) = checkpoint.to_hf_bytes(SaveOptions::default()).unwrap();
        let zipped = write(&checkpoint, SaveOptions::default()).unwrap();
        let from_zip = read_bytes(&zipped).unwrap();
        let from_files = from_hf_bytes(&config, &weights).unwrap();
        // The normalisation travels in preprocessor_config.json, as in a folder.
        assert_eq!(from_zip.config, checkpoint.config);
        assert_eq!(from_zip.label_names(), ["ship", "frog"]);
        assert_eq!(from_zip.params, from_files.params);
        // Through the file loader too, told apart from a Google .npz by its config.json.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taught.zip");
        std::fs::write(&path, &zipped).unwrap();
        let loaded = crate::checkpoint::load(&path, &Default::default()).unwrap();
        assert_eq!(loaded.params, from_files.params);
    }

    #[test]
    fn a_zip_without_the_weights_or_with_a_bomb_is_refused() {
        let (config, _) = tiny().to_hf_bytes(SaveOptions::default()).unwrap();
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(CONFIG_FILE, SimpleFileOptions::default())
            .unwrap();
        writer.write_all(&config).unwrap();
        let only_config = writer.finish().unwrap().into_inner();
        let message = read_bytes(&only_config).unwrap_err().to_string();
        assert!(message.contains("no model.safetensors"), "{message}");

        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        writer.start_file(CONFIG_FILE, deflated).unwrap();
        writer.write_all(&config).unwrap();
        writer.start_file(WEIGHTS_FILE, deflated).unwrap();
        writer.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = writer.finish().unwrap().into_inner();
        assert!(bomb.len() < 1 << 20);
        let message = read_bytes(&bomb).unwrap_err().to_string();
        assert!(message.contains("refused"), "{message}");
    }
}
