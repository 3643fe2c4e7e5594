//! The model a new run starts from: pretrained weights with a fresh head (the
//! reference's `checkpoint.load_pretrained`), or a random one.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use vit::{ViTConfig, VisionTransformer};

use crate::recipe::{Recipe, RepresentationSize};
use crate::{augment, pretrained};

/// Builds the starting model for `num_classes` classes on `device`.
pub fn initial_model(
    recipe: &Recipe,
    cache_dir: &Path,
    num_classes: usize,
    device: &Device,
) -> Result<VisionTransformer> {
    let pretrained = pretrained::load(&recipe.pretrained, cache_dir)?;
    let mut target = match (&recipe.model, &pretrained) {
        (Some(model), _) => ViTConfig::from_name_or_file(model)?,
        // The reference's fine-tuning configs have no pre-logits layer, whatever
        // the pretrained model had (`representation_size = None`).
        (None, Some(checkpoint)) => ViTConfig {
            representation_size: None,
            ..checkpoint.config.clone()
        },
        (None, None) => {
            bail!("--pretrained none needs --model (a preset like B/16 or a JSON config file)")
        }
    }
    .with_num_classes(num_classes)
    .with_image_size(recipe.resolution);
    target.dropout = recipe.dropout.unwrap_or(target.dropout);
    target.drop_path = recipe.drop_path.unwrap_or(target.drop_path);
    // The pretrained weights expect their own input normalisation.
    let normalization = pretrained
        .as_ref()
        .map_or(target.normalization, |checkpoint| {
            checkpoint.config.normalization
        });
    target.normalization = recipe.normalization(normalization);
    if let Some(choice) = recipe.representation_size {
        target.representation_size = match choice {
            RepresentationSize::None => None,
            RepresentationSize::Keep => pretrained
                .as_ref()
                .map_or(target.representation_size, |checkpoint| {
                    checkpoint.config.representation_size
                }),
            RepresentationSize::Size(size) => Some(size),
        };
    }
    device.seed(augment::init_seed(recipe.seed));
    let model = match pretrained {
        Some(checkpoint) => {
            let variant = head_variant(&checkpoint.config, &target);
            let adapted = checkpoint
                .for_finetuning(&target)
                .context("the pretrained checkpoint does not fit the model")?;
            eprintln!("head: {variant}");
            adapted.into_model(device)?
        }
        None => VisionTransformer::new(&target, device)?,
    };
    // burn draws a parameter's initial values lazily, when it is first used, which
    // could be on any replica's thread: draw them all now, in module order, right after
    // seeding, so that a new model is a function of --seed alone.
    model.visit(&mut Materialize);
    Ok(model)
}

/// Initialises every parameter it visits.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Which of the reference's fine-tuning head variants a run uses, in words.
fn head_variant(pretrained: &ViTConfig, target: &ViTConfig) -> String {
    let head = format!("a zero-initialised head for {} classes", target.num_classes);
    match (pretrained.representation_size, target.representation_size) {
        (Some(size), None) => format!(
            "drop-head variant, as the reference fine-tunes: the pretrained pre-logits layer \
             (size {size}) is dropped and {head} reads the {}-wide representation \
             (--representation-size keep keeps the layer)",
            target.hidden_size
        ),
        (Some(size), Some(_)) => format!(
            "the pretrained pre-logits layer (size {size}, tanh) is kept, with {head} \
             (the reference drops it unless representation_size is set; \
             --representation-size none drops it)"
        ),
        (None, _) => format!(
            "{head} on the {}-wide representation (the checkpoint has no pre-logits layer)",
            target.hidden_size
        ),
    }
}
