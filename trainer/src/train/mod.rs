//! `trainer train`: fine-tuning with the reference recipe.
//!
//! This module sets a run up (its options, data, model and where it starts) and hands
//! it to [`steps::Run`], the training loop. [`resume`] finds and checks the run a
//! `--resume` continues, [`model`] makes the starting model, [`signals`] turns Ctrl-C
//! and SIGTERM into a checkpoint.

mod model;
mod replicas;
mod resume;
mod signals;
mod steps;

use std::fs;

use anyhow::{Context, Result, bail};
use vit::model::Precision;
use vit::{Checkpoint, SaveOptions};

use crate::cli::TrainArgs;
use crate::data::{Dataset, Source, Splits};
use crate::ema::Ema;
use crate::metrics::Metrics;
use crate::optimizer::Optimizer;
use crate::recipe::{Recipe, RunOptions, Runtime};
use crate::{checkpoint, device, output};
use replicas::Replicas;
pub use steps::cross_entropy;
use steps::{Run, Start};

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Finished,
    /// Stopped at `--stop-after`, after writing a checkpoint.
    Stopped,
    /// Stopped by Ctrl-C (or SIGTERM, SIGHUP), after writing a checkpoint.
    Interrupted,
}

/// `explicit` names the options given on the command line (clap ids), which
/// matter when resuming: the saved recipe is kept, and may not be contradicted.
pub fn run(args: &TrainArgs, explicit: &[String]) -> Result<Completion> {
    let resumed = if args.resume {
        Some(resume::resume_point(args, explicit)?)
    } else {
        None
    };
    let options = match &resumed {
        Some((_, state)) => state.args.clone(),
        None => args.options(explicit)?,
    };
    let RunOptions { recipe, runtime } = &options;
    recipe.validate()?;
    runtime.validate()?;
    device::configure_threads(runtime.threads)?;
    device::check_precision(&runtime.device, runtime.precision)?;
    let devices = device::parse_list(&runtime.device)?;
    let micro_batch = recipe.micro_batch();
    if micro_batch % devices.len() != 0 {
        bail!(
            "a micro-batch of {micro_batch} examples (--batch {} / --accum-steps {}) does not \
             split evenly over {} devices; make it a multiple of {}",
            recipe.batch,
            recipe.accum_steps,
            devices.len(),
            devices.len()
        );
    }
    let replicas = Replicas::new(devices);
    let device = replicas.main().clone();
    if resumed.is_none() {
        resume::refuse_to_overwrite(&runtime.workdir, args.force)?;
    }
    let (train_set, test_set) = load_data(recipe, runtime)?;
    let classes = train_set.classes.clone();
    fs::create_dir_all(&runtime.workdir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            runtime.workdir.display()
        )
    })?;

    let start = match &resumed {
        Some((dir, state)) => {
            if state.classes != classes {
                bail!(
                    "the data set's classes ({}) are not those of the checkpoint ({})",
                    classes.join(", "),
                    state.classes.join(", ")
                );
            }
            let (model, optimizer, ema) = checkpoint::load(dir, recipe, state.step, &device)?;
            eprintln!(
                "resuming from the checkpoint at step {} in {}",
                state.step,
                dir.display()
            );
            Start {
                model,
                optimizer,
                ema,
                step: state.step,
                metrics: Metrics::resume(&runtime.workdir, state.step)?,
            }
        }
        None => {
            let model = model::initial_model(
                recipe,
                &runtime.cache_dir(),
                classes.len(),
                &device.clone().autodiff(),
            )?;
            let config = serde_json::json!({"model": model.config(), "train": &options});
            let path = runtime.workdir.join("config.json");
            fs::write(&path, serde_json::to_vec_pretty(&config)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Start {
                ema: recipe.ema.map(|decay| Ema::new(&model, decay)),
                model,
                optimizer: Optimizer::new(recipe.rule()),
                step: 0,
                metrics: Metrics::create(&runtime.workdir)?,
            }
        }
    };
    let config = start.model.config();
    eprintln!(
        "model: {} parameters, {} px, {} classes, {}, inputs normalised with mean {:?} and \
         std {:?}, computing in {}; the first loss of a zero head is ln({}) = {:.6}",
        config.num_params(),
        config.image_size,
        config.num_classes,
        // Said on every start, resumed or not: which of the reference's two head
        // variants this run trains (see `model::head_variant`).
        match config.representation_size {
            None => "no pre-logits layer".to_string(),
            Some(size) => format!("a pre-logits layer of {size} (tanh) before the head"),
        },
        config.normalization.mean,
        config.normalization.std,
        match runtime.precision {
            Precision::Fp32 => "float32",
            Precision::Bf16 => "bfloat16 mixed precision (--precision bf16)",
        },
        config.num_classes,
        (config.num_classes as f64).ln()
    );

    if replicas.count() > 1 {
        eprintln!(
            "data parallel on {} devices ({}): each micro-batch of {micro_batch} is split into \
             {} shards of {}, their gradients summed on the first device",
            replicas.count(),
            runtime.device,
            replicas.count(),
            micro_batch / replicas.count()
        );
    }
    let run = Run {
        options: &options,
        stop_after: args.stop_after,
        classes: &classes,
        train_set: &train_set,
        test_set: &test_set,
        replicas: &replicas,
        interrupted: signals::interrupt_flag(),
    };
    let (model, test_accuracy) = match run.train(start)? {
        Ok(trained) => trained,
        Err(stopped) => return Ok(stopped),
    };
    let export_dir = runtime.workdir.join("export");
    // `model` is what was evaluated: the average with --ema, else the weights.
    let mut export = Checkpoint::from_model(&model, Some(classes));
    export.description =
        Some(recipe.describe(model.config(), test_accuracy, test_set.images.len()));
    // Through `write_folder`: a new export/ appears whole or not at all, and its name is
    // flushed to the disk with the work folder (as checkpoints are).
    output::write_folder(&export_dir, |dir| {
        Ok(export.save(dir, SaveOptions::default())?)
    })
    .with_context(|| {
        format!(
            "cannot write the exported model to {}",
            export_dir.display()
        )
    })?;
    eprintln!("exported the trained model to {}", export_dir.display());
    Ok(Completion::Finished)
}

/// The training split and the split it is evaluated on.
fn load_data(recipe: &Recipe, runtime: &Runtime) -> Result<(Dataset, Dataset)> {
    let source = Source {
        dataset: recipe.dataset.clone(),
        cache_dir: runtime.cache_dir(),
        strict: recipe.strict,
        val_split: recipe.val_split,
    };
    let Splits {
        train: mut train_set,
        test: test_set,
    } = source.load().context("cannot load the data set")?;
    if source.cifar().is_some() {
        // The reference trains on `train[:98%]` (49,000 CIFAR images).
        let kept = (train_set.images.len() * 98).div_ceil(100);
        train_set.images.truncate(kept);
        train_set.labels.truncate(kept);
    }
    eprintln!(
        "data: {} training and {} test images, {} classes",
        train_set.images.len(),
        test_set.images.len(),
        train_set.classes.len()
    );
    Ok((train_set, test_set))
}

#[cfg(test)]
pub(crate) mod tests {
    use vit::ViTConfig;

    /// A ViT small enough for unit tests: 8 px, one layer, 3 classes.
    pub(crate) fn tiny_config() -> ViTConfig {
        ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 8,
            mlp_dim: 16,
            num_heads: 2,
            num_layers: 1,
            num_classes: 3,
            ..ViTConfig::preset("Ti/16").expect("preset")
        }
    }
}
