//! `trainer export`: any checkpoint → config.json + model.safetensors.

use anyhow::{Context, Result, bail};
use vit::SaveOptions;

use vit::checkpoint::{CONFIG_FILE, WEIGHTS_FILE, hf::PREPROCESSOR_FILE};

use crate::cli::ExportArgs;
use crate::output;
use crate::predict::load_checkpoint;

pub fn run(args: &ExportArgs) -> Result<()> {
    let mut checkpoint = load_checkpoint(&args.checkpoint)?;
    if let Some(size) = args.image_size {
        checkpoint = checkpoint
            .at_resolution(size)
            .with_context(|| format!("cannot export at {size} px"))?;
    }
    if let Some(labels) = &args.labels {
        if labels.len() != checkpoint.config.num_classes {
            bail!(
                "--labels names {} classes but the model has {}",
                labels.len(),
                checkpoint.config.num_classes
            );
        }
        checkpoint.labels = Some(labels.clone());
    }
    if let Some(description) = &args.description {
        checkpoint.description = Some(description.clone());
    }
    let files = [CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE];
    output::refuse_to_replace(&args.out, &files, args.force)?;
    output::write_folder(&args.out, |dir| {
        Ok(checkpoint.save(dir, SaveOptions { float16: args.f16 })?)
    })
    .with_context(|| format!("cannot export to {}", args.out.display()))?;
    eprintln!(
        "exported {} ({} classes, {} px, {}) to {}",
        args.checkpoint.checkpoint.display(),
        checkpoint.config.num_classes,
        checkpoint.config.image_size,
        if args.f16 { "float16" } else { "float32" },
        args.out.display()
    );
    Ok(())
}
