//! Training checkpoints: everything `--resume` needs to continue a run as if it
//! had never stopped.
//!
//! `WORKDIR/checkpoint/` holds the model in the export format (so `predict` and
//! `eval` read it as it is), the optimiser's buffers (`optimizer.safetensors`, float32,
//! keyed by buffer and parameter path such as `momentum.encoder.blocks.0.mlp.dense_0.weight`),
//! and `state.json` (completed steps and the run's options). The data order and
//! every augmentation are pure functions of (seed, step), so the seed (in the
//! options) and the step are the whole data-pipeline and RNG state.

use std::fs;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use vit::checkpoint::Array;
use vit::checkpoint::safetensors_io::{self, Tensors};
use vit::{Checkpoint, SaveOptions, VisionTransformer};

use crate::ema::Ema;
use crate::optimizer::Optimizer;
use crate::recipe::{Recipe, RunOptions};

const DIR: &str = "checkpoint";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The `--ema` average, by parameter path.
const EMA_FILE: &str = "ema.safetensors";
const STATE_FILE: &str = "state.json";

/// What is saved besides the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Updates completed; training continues with update `step` (counted from 0).
    pub step: usize,
    /// The options of the run, so that a resumed run uses the same recipe.
    pub args: RunOptions,
    pub classes: Vec<String>,
}

/// The checkpoint folder of a work folder.
pub fn dir(workdir: &Path) -> PathBuf {
    workdir.join(DIR)
}

/// Writes the checkpoint so that it appears complete or not at all: into a fresh folder
/// (every file flushed to the disk), which then replaces the previous checkpoint by
/// renames. A failed write (a full disk) removes what it wrote and keeps the previous
/// checkpoint.
pub fn save(
    workdir: &Path,
    model: &VisionTransformer,
    optimizer: &Optimizer,
    ema: Option<&Ema>,
    state: &State,
) -> Result<()> {
    let target = dir(workdir);
    let staging = workdir.join(format!("{DIR}.partial"));
    let previous = workdir.join(format!("{DIR}.previous"));
    tidy(workdir)?;
    if let Err(error) = write_files(&staging, model, optimizer, ema, state) {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    if target.exists() {
        fs::rename(&target, &previous)
            .with_context(|| format!("cannot move {} aside", target.display()))?;
    }
    fs::rename(&staging, &target)
        .with_context(|| format!("cannot move the new checkpoint to {}", target.display()))?;
    if previous.exists() {
        fs::remove_dir_all(&previous)
            .with_context(|| format!("cannot remove {}", previous.display()))?;
    }
    vit::checkpoint::sync_folder(workdir)
        .with_context(|| format!("cannot flush {} to the disk", workdir.display()))
}

fn write_files(
    staging: &Path,
    model: &VisionTransformer,
    optimizer: &Optimizer,
    ema: Option<&Ema>,
    state: &State,
) -> Result<()> {
    let exact = SaveOptions { float16: false };
    Checkpoint::from_model(&model.valid(), Some(state.classes.clone()))
        .save(staging, exact)
        .context("cannot write the checkpoint's model")?;
    let momentum = safetensors_io::write(&optimizer.buffers(model), false)
        .context("cannot serialise the momentum buffers")?;
    vit::checkpoint::write_atomically(&staging.join(OPTIMIZER_FILE), &momentum)?;
    if let Some(ema) = ema {
        let weights = safetensors_io::write(&ema.weights(), false)
            .context("cannot serialise the average weights")?;
        vit::checkpoint::write_atomically(&staging.join(EMA_FILE), &weights)?;
    }
    vit::checkpoint::write_atomically(
        &staging.join(STATE_FILE),
        &serde_json::to_vec_pretty(state)?,
    )?;
    Ok(())
}

/// Leaves `workdir` with at most its checkpoint: a crash between the renames of [`save`]
/// leaves only `checkpoint.previous`, which becomes the checkpoint again; a crash while
/// writing leaves `checkpoint.partial`, which is removed. [`save`] calls it, and so does
/// `--resume` before it looks for the checkpoint (so the space is free from the start).
pub fn tidy(workdir: &Path) -> Result<()> {
    let target = dir(workdir);
    let staging = workdir.join(format!("{DIR}.partial"));
    let previous = workdir.join(format!("{DIR}.previous"));
    if previous.exists() && !target.exists() {
        fs::rename(&previous, &target)
            .with_context(|| format!("cannot restore {}", previous.display()))?;
    }
    for stale in [&staging, &previous] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .with_context(|| format!("cannot remove the stale {}", stale.display()))?;
        }
    }
    Ok(())
}

/// The state of the checkpoint in `workdir`, if there is one. A crash between
/// the two renames of [`save`] leaves only `checkpoint.previous`, which is used.
pub fn find(workdir: &Path) -> Result<Option<(PathBuf, State)>> {
    for candidate in [dir(workdir), workdir.join(format!("{DIR}.previous"))] {
        let path = candidate.join(STATE_FILE);
        if path.exists() {
            let text =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let state = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a checkpoint state", path.display()))?;
            return Ok(Some((candidate, state)));
        }
    }
    Ok(None)
}

/// The model (on `device`, with gradients), the optimiser and (with `--ema`) the average
/// of a checkpoint of a run with `recipe` after `steps` updates.
pub fn load(
    dir: &Path,
    recipe: &Recipe,
    steps: usize,
    device: &Device,
) -> Result<(VisionTransformer, Optimizer, Option<Ema>)> {
    let model = vit::checkpoint::load(dir, &Default::default())
        .and_then(|checkpoint| checkpoint.into_model(&device.clone().autodiff()))
        .with_context(|| format!("the checkpoint model in {} is unreadable", dir.display()))?;
    let buffers = read_arrays(&dir.join(OPTIMIZER_FILE))?;
    let optimizer = Optimizer::with_buffers(recipe.rule(), steps as u64, &model, buffers, device)
        .map_err(|error| {
        anyhow!(
            "the optimiser state in {} does not fit the model: {error}",
            dir.display()
        )
    })?;
    let ema = match recipe.ema {
        Some(decay) => {
            let weights = read_arrays(&dir.join(EMA_FILE))?;
            Some(Ema::restore(&model, decay, weights).map_err(|error| {
                anyhow!(
                    "the average weights in {} do not fit the model: {error}",
                    dir.display()
                )
            })?)
        }
        None => None,
    };
    Ok((model, optimizer, ema))
}

/// Every tensor of a safetensors file, by name.
fn read_arrays(path: &Path) -> Result<BTreeMap<String, Array>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let unreadable = || format!("{} is unreadable", path.display());
    let tensors = Tensors::parse(&[&bytes]).with_context(unreadable)?;
    tensors
        .names()
        .map(|name| Ok((name.to_string(), tensors.get(name)?)))
        .collect::<Result<BTreeMap<_, _>, vit::CheckpointError>>()
        .with_context(unreadable)
}

#[cfg(test)]
mod tests {
    use burn::module::{ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::optimizer::Rule;

    /// A checkpoint state at `step` of a run with these command-line options.
    fn state(step: usize, options: &[&str]) -> State {
        State {
            step,
            args: crate::cli::tests::options(options),
            classes: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    struct Values(Vec<f32>);

    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .extend(param.val().try_into_vec_as::<f32>().expect("f32"));
        }
    }

    fn values<M: Module>(module: &M) -> Vec<f32> {
        let mut values = Values(Vec::new());
        module.visit(&mut values);
        values.0
    }

    #[test]
    fn round_trip_keeps_weights_momentum_and_state_exactly() {
        let device = Device::flex();
        let workdir = tempfile::tempdir().expect("tempdir");
        let mut model = VisionTransformer::new(
            &crate::train::tests::tiny_config(),
            &device.clone().autodiff(),
        )
        .expect("model");
        // A random head, so that every parameter gets a gradient, and one update.
        model.head = Some(burn::nn::LinearConfig::new(8, 3).init(&device.clone().autodiff()));
        let images = Tensor::<4>::random(
            [2, 3, 8, 8],
            Distribution::Uniform(-1.0, 1.0),
            &device.clone().autodiff(),
        );
        let grads = GradientsParams::from_grads(model.forward(images).sum().backward(), &model);
        let mut optimizer = Optimizer::new(Rule::Sgd { momentum: 0.9 });
        let (model, _) = optimizer.step(model, grads, 0.1, None);
        let buffers = optimizer.buffers(&model);
        assert!(buffers.contains_key("momentum.encoder.blocks.0.attention.qkv.weight"));
        assert!(buffers.contains_key("momentum.head.bias"));

        let state = state(5, &["--steps", "7", "--seed", "3"]);
        save(workdir.path(), &model, &optimizer, None, &state).expect("first save");
        // A second save replaces the first and leaves no staging folders behind.
        save(workdir.path(), &model, &optimizer, None, &state).expect("second save");
        let names: Vec<_> = fs::read_dir(workdir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(DIR)]);

        let (found_dir, found) = find(workdir.path()).expect("find").expect("a checkpoint");
        assert_eq!(found.step, 5);
        assert_eq!(found.args, state.args);
        let (loaded, restored, ema) =
            load(&found_dir, &state.args.recipe, 5, &device).expect("load");
        assert!(ema.is_none());
        assert_eq!(values(&loaded), values(&model));
        assert_eq!(restored.buffers(&loaded), buffers);
        // `predict` and `eval` read the checkpoint folder as an ordinary model.
        let as_export = vit::checkpoint::load(&found_dir, &Default::default()).expect("export");
        assert_eq!(as_export.label_names(), state.classes);
    }

    #[test]
    fn a_crash_between_renames_falls_back_to_the_previous_checkpoint() {
        let device = Device::flex();
        let workdir = tempfile::tempdir().expect("tempdir");
        let model = VisionTransformer::new(
            &crate::train::tests::tiny_config(),
            &device.clone().autodiff(),
        )
        .expect("model");
        let state = state(2, &[]);
        save(
            workdir.path(),
            &model,
            &Optimizer::new(Rule::Sgd { momentum: 0.9 }),
            None,
            &state,
        )
        .expect("save");
        fs::rename(
            dir(workdir.path()),
            workdir.path().join("checkpoint.previous"),
        )
        .expect("mv");
        let (found_dir, found) = find(workdir.path()).expect("find").expect("found");
        assert_eq!(found.step, 2);
        assert!(load(&found_dir, &state.args.recipe, 2, &device).is_ok());
        assert!(
            find(tempfile::tempdir().expect("empty").path())
                .expect("find")
                .is_none()
        );
    }
}
