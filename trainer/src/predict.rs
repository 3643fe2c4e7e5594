//! `trainer predict`: classify image files.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use vit::checkpoint::Format;
use vit::prediction::{self, Ranked};
use vit::preprocess;
use vit::{Checkpoint, LoadOptions};

use crate::cli::{CheckpointArgs, PredictArgs};
use crate::device;

/// Images run through the model together.
const BATCH: usize = 8;

/// Loads a checkpoint and reports names in the file the model does not use.
pub fn load_checkpoint(args: &CheckpointArgs) -> Result<Checkpoint> {
    let options = LoadOptions {
        num_heads: args.num_heads,
    };
    let mut checkpoint = vit::checkpoint::load(&args.checkpoint, &options)
        .with_context(|| format!("cannot load checkpoint {}", args.checkpoint.display()))?;
    let config = &mut checkpoint.config;
    config.normalization = args.normalization.apply(config.normalization);
    config
        .validate()
        .context("invalid --image-mean or --image-std")?;
    let given = &args.normalization;
    if checkpoint.format == Format::Timm && given.image_mean.is_none() && given.image_std.is_none()
    {
        eprintln!(
            "note: timm files do not record how images are normalised; using mean 0.5 and std 0.5 \
             (Google's ViTs). Give --image-mean 0.485,0.456,0.406 --image-std 0.229,0.224,0.225 \
             for ImageNet-normalised models such as DeiT"
        );
    }
    if !checkpoint.unexpected.is_empty() {
        eprintln!(
            "note: {} unused entries in {} (e.g. {})",
            checkpoint.unexpected.len(),
            args.checkpoint.display(),
            checkpoint.unexpected[0]
        );
    }
    Ok(checkpoint)
}

pub fn run(args: &PredictArgs) -> Result<()> {
    let device = device::parse(&args.device)?;
    let mut checkpoint = load_checkpoint(&args.checkpoint)?;
    if let Some(size) = args.image_size {
        checkpoint = checkpoint
            .at_resolution(size)
            .with_context(|| format!("cannot run the model at {size} px"))?;
    }
    let labels = checkpoint.label_names();
    let config = checkpoint.config.clone();
    let model = checkpoint
        .into_model(&device)
        .context("cannot build the model")?;
    for paths in args.images.chunks(BATCH) {
        let inputs = paths
            .iter()
            .map(|path| read_image(path, config.image_size, &config.normalization))
            .collect::<Result<Vec<_>>>()?;
        let all_logits = prediction::logits(&model, &inputs, &device);
        for (path, logits) in paths.iter().zip(all_logits) {
            let probabilities = prediction::softmax(&logits);
            let top = prediction::top_k(&probabilities, &labels, args.top_k);
            if args.json {
                let line = json!({
                    "image": path.display().to_string(),
                    "logits": logits,
                    "probabilities": probabilities,
                    "top": top,
                });
                println!("{line}");
            } else {
                print_top(path, &top);
            }
        }
    }
    Ok(())
}

fn read_image(
    path: &Path,
    size: usize,
    normalization: &preprocess::Normalization,
) -> Result<preprocess::ModelInput> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    preprocess::preprocess(&bytes, size, normalization)
        .with_context(|| format!("cannot use image {}", path.display()))
}

fn print_top(path: &Path, top: &[Ranked]) {
    println!("{}", path.display());
    let width = top
        .iter()
        .map(|ranked| ranked.label.len())
        .max()
        .unwrap_or(0);
    for (rank, ranked) in top.iter().enumerate() {
        println!(
            "  {:>2}. {:<width$}  {:>6.2}%",
            rank + 1,
            ranked.label,
            ranked.probability * 100.0
        );
    }
}
