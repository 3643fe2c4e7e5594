//! `trainer train`: fine-tuning with the reference recipe.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use serde_json::json;
use vit::{Checkpoint, SaveOptions, ViTConfig, VisionTransformer};

use crate::cli::{RepresentationSize, TrainArgs};
use crate::data::{Dataset, Source, Splits};
use crate::metrics::Metrics;
use crate::optimizer::Sgd;
use crate::pipeline::{self, MicroBatch, Plan};
use crate::schedule::Schedule;
use crate::{checkpoint, device, eval, pretrained, progress};

/// Mean softmax cross-entropy of `logits` [B, C] against class `targets`.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let device = logits.device();
    let [batch, _] = logits.dims();
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, targets);
    picked.mean().neg()
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Finished,
    /// Stopped at `--stop-after`, after writing a checkpoint.
    Stopped,
    /// Stopped by Ctrl-C (or SIGTERM, SIGHUP), after writing a checkpoint.
    Interrupted,
}

/// Options that a resumed run may change: they do not change what it computes.
const RUNTIME_OPTIONS: [&str; 9] = [
    "device",
    "stop_after",
    "threads",
    "data_dir",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "workdir",
    "resume",
];

/// `explicit` names the options given on the command line (clap ids), which
/// matter when resuming: the saved recipe is kept, and may not be contradicted.
pub fn run(args: &TrainArgs, explicit: &[String]) -> Result<Completion> {
    let resumed = if args.resume {
        Some(resume_point(args, explicit)?)
    } else {
        None
    };
    let args = resumed.as_ref().map_or(args, |(_, state)| &state.args);
    validate(args)?;
    device::configure_threads(args.threads)?;
    let device = device::parse(&args.device)?;
    if resumed.is_none() {
        refuse_to_overwrite(&args.workdir)?;
    }
    let source = Source {
        dataset: args.dataset.clone(),
        cache_dir: args.cache_dir(),
        strict: args.strict,
        val_split: args.val_split,
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
    let classes = train_set.classes.clone();
    eprintln!(
        "data: {} training and {} test images, {} classes",
        train_set.images.len(),
        test_set.images.len(),
        classes.len()
    );
    fs::create_dir_all(&args.workdir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            args.workdir.display()
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
            let (model, optimizer) = checkpoint::load(dir, args.momentum, &device)?;
            eprintln!(
                "resuming from the checkpoint at step {} in {}",
                state.step,
                dir.display()
            );
            Start {
                model,
                optimizer,
                step: state.step,
                metrics: Metrics::resume(&args.workdir, state.step)?,
            }
        }
        None => {
            let model = initial_model(args, classes.len(), &device.clone().autodiff())?;
            fs::write(
                args.workdir.join("config.json"),
                serde_json::to_vec_pretty(&json!({
                    "model": model.config(),
                    "train": args,
                }))?,
            )?;
            Start {
                model,
                optimizer: Sgd::new(args.momentum),
                step: 0,
                metrics: Metrics::create(&args.workdir)?,
            }
        }
    };
    let config = start.model.config();
    eprintln!(
        "model: {} parameters, {} px, {} classes, inputs normalised with mean {:?} and std {:?}; \
         the first loss of a zero head is ln({}) = {:.6}",
        config.num_params(),
        config.image_size,
        config.num_classes,
        config.normalization.mean,
        config.normalization.std,
        config.num_classes,
        (config.num_classes as f64).ln()
    );

    let run = Run {
        args,
        classes: &classes,
        train_set: &train_set,
        test_set: &test_set,
        device: &device,
        interrupted: interrupt_flag(),
    };
    let (model, test_accuracy) = match run.train(start)? {
        Ok(trained) => trained,
        Err(stopped) => return Ok(stopped),
    };
    let export_dir = args.workdir.join("export");
    let mut export = Checkpoint::from_model(&model.valid(), Some(classes));
    export.description = Some(describe(
        args,
        model.config(),
        test_accuracy,
        test_set.images.len(),
    ));
    export
        .save(&export_dir, SaveOptions::default())
        .context("cannot write the exported model")?;
    eprintln!("exported the fine-tuned model to {}", export_dir.display());
    Ok(Completion::Finished)
}

/// How the exported model was made, in a sentence that travels with it (the
/// browser page shows it). Paths are cut to their file names: they mean nothing
/// on another machine.
fn describe(
    args: &TrainArgs,
    config: &ViTConfig,
    test_accuracy: Option<f64>,
    test_images: usize,
) -> String {
    let name = |source: &str| {
        if source.contains("://") || source.starts_with("hf:") {
            source.to_owned()
        } else {
            Path::new(source).file_name().map_or_else(
                || source.to_owned(),
                |name| name.to_string_lossy().into_owned(),
            )
        }
    };
    let origin = if args.pretrained == "none" {
        "trained from scratch".to_owned()
    } else {
        format!("fine-tuned from {}", name(&args.pretrained))
    };
    let mut text = format!(
        "ViT ({:.1} M parameters, {} px, {} px patches) {origin} on {} for {} steps of {} images",
        config.num_params() as f64 / 1e6,
        config.image_size,
        config.patch_size,
        name(&args.dataset),
        args.steps,
        args.batch
    );
    if let Some(accuracy) = test_accuracy {
        text.push_str(&format!(
            "; test accuracy {:.2}% on {test_images} images",
            accuracy * 100.0
        ));
    }
    text
}

fn validate(args: &TrainArgs) -> Result<()> {
    ensure!(args.steps > 0, "--steps must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    ensure!(
        args.eval_every > 0 && args.log_every > 0 && args.checkpoint_every > 0,
        "--eval-every, --log-every and --checkpoint-every must be at least 1"
    );
    ensure!(
        args.accum_steps > 0 && args.batch.is_multiple_of(args.accum_steps),
        "--batch {} must be a multiple of --accum-steps {}",
        args.batch,
        args.accum_steps
    );
    ensure!(
        args.min_crop_area > 0.0 && args.min_crop_area <= 1.0,
        "--min-crop-area must be in (0, 1], not {}",
        args.min_crop_area
    );
    Ok(())
}

/// A new run must not silently replace one that can still be resumed.
fn refuse_to_overwrite(workdir: &Path) -> Result<()> {
    if let Some((dir, state)) = checkpoint::find(workdir)? {
        bail!(
            "{} already holds a run (checkpoint at step {} of {}); continue it with --resume, \
             or choose another --workdir (or delete {})",
            workdir.display(),
            state.step,
            state.args.steps,
            dir.display()
        );
    }
    Ok(())
}

/// The checkpoint to resume and its options, with the runtime options given now.
fn resume_point(args: &TrainArgs, explicit: &[String]) -> Result<(PathBuf, checkpoint::State)> {
    let Some((dir, mut state)) = checkpoint::find(&args.workdir)? else {
        bail!(
            "there is no checkpoint in {} to resume; check --workdir, or start without --resume",
            args.workdir.display()
        );
    };
    let now = serde_json::to_value(args)?;
    let mut saved = serde_json::to_value(&state.args)?;
    let mut conflicts = Vec::new();
    for id in explicit {
        if RUNTIME_OPTIONS.contains(&id.as_str()) {
            saved[id] = now[id].clone();
        } else if now[id] != saved[id] {
            conflicts.push(format!(
                "--{} {} (the run has {})",
                id.replace('_', "-"),
                now[id],
                saved[id]
            ));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "a resumed run keeps its recipe, but these options differ: {}; drop them, or start a new run in another --workdir",
            conflicts.join(", ")
        );
    }
    saved["workdir"] = now["workdir"].clone();
    state.args = serde_json::from_value(saved).context("cannot merge the saved options")?;
    state.args.resume = true;
    state.args.stop_after = args.stop_after;
    Ok((dir, state))
}

/// Set by Ctrl-C, SIGTERM or SIGHUP; the training loop checkpoints and stops
/// after the current step. A second signal exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&flag);
    let installed = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step to write a checkpoint (Ctrl-C again to quit at once)"
        );
    });
    if let Err(error) = installed {
        eprintln!("warning: Ctrl-C and SIGTERM will not write a checkpoint ({error})");
    }
    flag
}

/// The model to start from: pretrained weights with a fresh head, or random.
fn initial_model(
    args: &TrainArgs,
    num_classes: usize,
    device: &Device,
) -> Result<VisionTransformer> {
    let pretrained = pretrained::load(&args.pretrained, &args.cache_dir())?;
    let mut target = match (&args.model, &pretrained) {
        (Some(model), _) => model_config(model)?,
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
    .with_image_size(args.resolution);
    target.dropout = args.dropout.unwrap_or(target.dropout);
    // The pretrained weights expect their own input normalisation.
    let normalization = pretrained
        .as_ref()
        .map_or(target.normalization, |checkpoint| {
            checkpoint.config.normalization
        });
    target.normalization = args.normalization.apply(normalization);
    if let Some(choice) = args.representation_size {
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
    match pretrained {
        Some(checkpoint) => {
            let variant = head_variant(&checkpoint.config, &target);
            let adapted = checkpoint
                .for_finetuning(&target)
                .context("the pretrained checkpoint does not fit the model")?;
            eprintln!("head: {variant}");
            Ok(adapted.build(device)?)
        }
        None => Ok(VisionTransformer::new(&target, device)?),
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

/// A preset name, or a JSON file: our `ViTConfig`, or a Hugging Face `config.json`
/// (such as an export's), whose class count the data set then sets.
fn model_config(model: &str) -> Result<ViTConfig> {
    let path = Path::new(model);
    if path.extension().is_none_or(|ext| ext != "json") {
        return Ok(ViTConfig::preset(model)?);
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let config = if json.get("model_type").is_some() {
        vit::checkpoint::hf::read_config(&json, |_| None, "vit.").map_err(anyhow::Error::from)
    } else {
        serde_json::from_value(json).map_err(anyhow::Error::from)
    };
    config.with_context(|| format!("invalid model config {}", path.display()))
}

/// Where training starts: a fresh model, or a checkpoint's.
struct Start {
    model: VisionTransformer,
    optimizer: Sgd,
    /// Updates already done.
    step: usize,
    metrics: Metrics,
}

/// What every step of a run reads.
struct Run<'a> {
    args: &'a TrainArgs,
    classes: &'a [String],
    train_set: &'a Dataset,
    test_set: &'a Dataset,
    device: &'a Device,
    interrupted: Arc<AtomicBool>,
}

/// What one update reports.
struct StepReport {
    loss: f64,
    grad_norm: f64,
    lr: f64,
}

impl Run<'_> {
    /// Trains from `start` to the last step and gives the model with its final
    /// test accuracy, or stops early with a checkpoint (Ctrl-C, `--stop-after`)
    /// and says how.
    fn train(&self, start: Start) -> Result<Result<(VisionTransformer, Option<f64>), Completion>> {
        let args = self.args;
        ensure!(
            !self.train_set.images.is_empty(),
            "the training set is empty"
        );
        let Start {
            mut model,
            mut optimizer,
            step: first,
            mut metrics,
        } = start;
        let plan = Plan {
            batch: args.batch,
            micro_batch: args.batch / args.accum_steps,
            seed: args.seed,
            size: model.config().image_size,
            min_crop_area: args.min_crop_area,
            normalization: model.config().normalization,
        };
        let bar = progress::training(args.steps, first);
        let mut last_checkpoint = (first > 0).then_some(first);
        let outcome = pipeline::with_batches(self.train_set, plan, first..args.steps, |batches| {
            for step in first..args.steps {
                let started = Instant::now();
                let (updated, report) = self.update(model, &mut optimizer, step, batches)?;
                model = updated;
                let number = step + 1;
                let StepReport {
                    loss,
                    grad_norm,
                    lr,
                } = report;
                if !loss.is_finite() || !grad_norm.is_finite() {
                    bar.abandon();
                    bail!(
                        "the loss became {loss} (gradient norm {grad_norm}) at step {number}; {}. \
                         Lower --lr, or check the data",
                        self.kept_checkpoint(last_checkpoint)
                    );
                }
                let images_per_sec = args.batch as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.2e} {images_per_sec:.1} img/s"
                ));
                bar.inc(1);
                let mut line = json!({
                    "step": number, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                    "images_per_sec": images_per_sec,
                });
                let is_eval = number % args.eval_every == 0 || number == args.steps;
                if is_eval {
                    bar.set_message(format!(
                        "evaluating on {} test images",
                        self.test_set.images.len()
                    ));
                    let accuracy = self.test_accuracy(&model, plan.micro_batch);
                    line["test_accuracy"] = json!(accuracy);
                    progress::log(
                        &bar,
                        &format!("step {number}: test accuracy {:.2}%", accuracy * 100.0),
                    );
                }
                if is_eval || number % args.log_every == 0 || number == 1 {
                    metrics.record(&line)?;
                    progress::log(
                        &bar,
                        &format!(
                            "step {number}/{}: loss {loss:.6} lr {lr:.6} grad norm {grad_norm:.4} {images_per_sec:.1} img/s",
                            args.steps
                        ),
                    );
                }
                if is_eval {
                    metrics.write_plot()?;
                }
                let stop_here = args.stop_after == Some(number);
                let interrupted = self.interrupted.load(Ordering::SeqCst);
                if interrupted
                    || stop_here
                    || number % args.checkpoint_every == 0
                    || number == args.steps
                {
                    bar.set_message("writing a checkpoint");
                    self.save(&model, &optimizer, number)?;
                    last_checkpoint = Some(number);
                }
                if (interrupted || stop_here) && number < args.steps {
                    bar.abandon();
                    eprintln!(
                        "{}: checkpoint at step {number} in {}; continue with: trainer --resume --workdir {}",
                        if interrupted {
                            "interrupted"
                        } else {
                            "stopped as asked"
                        },
                        checkpoint::dir(&args.workdir).display(),
                        args.workdir.display()
                    );
                    return Ok(Err(if interrupted {
                        Completion::Interrupted
                    } else {
                        Completion::Stopped
                    }));
                }
            }
            Ok(Ok(model))
        })?;
        let model = match outcome {
            Ok(model) => model,
            Err(stopped) => return Ok(Err(stopped)),
        };
        bar.finish();
        metrics.write_plot()?;
        println!("{}", metrics.write_summary()?);
        Ok(Ok((model, metrics.final_test_accuracy())))
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            base_lr: self.args.lr,
            warmup_steps: self.args.warmup,
            total_steps: self.args.steps,
            decay: self.args.decay,
        }
    }

    /// One update (`step` counted from 0) over its micro-batches.
    fn update(
        &self,
        model: VisionTransformer,
        optimizer: &mut Sgd,
        step: usize,
        batches: &Receiver<MicroBatch>,
    ) -> Result<(VisionTransformer, StepReport)> {
        let args = self.args;
        let training_device = self.device.clone().autodiff();
        let size = model.config().image_size;
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        let mut loss = 0.0;
        for _ in 0..args.accum_steps {
            let batch = batches.recv().context("the input pipeline stopped")?;
            debug_assert_eq!(batch.step, step);
            let images = Tensor::<4>::from_data(
                TensorData::new(batch.pixels, [batch.targets.len(), 3, size, size]),
                &training_device,
            );
            let part =
                cross_entropy(model.forward(images), &batch.targets) / args.accum_steps as f64;
            loss += f64::from(part.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(part.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        let lr = self.schedule().lr_at(step);
        let clip = (args.grad_clip > 0.0).then_some(args.grad_clip);
        let (model, grad_norm) = optimizer.step(model, accumulator.grads(), lr, clip);
        Ok((
            model,
            StepReport {
                loss,
                grad_norm,
                lr,
            },
        ))
    }

    fn test_accuracy(&self, model: &VisionTransformer, batch: usize) -> f64 {
        let hidden = ProgressBar::hidden();
        let predictions =
            eval::predict_all(&model.valid(), self.test_set, batch, self.device, &hidden);
        eval::accuracy(&predictions, &self.test_set.labels)
    }

    fn kept_checkpoint(&self, last: Option<usize>) -> String {
        match last {
            Some(step) => format!(
                "the last good checkpoint (step {step}) is kept in {}",
                checkpoint::dir(&self.args.workdir).display()
            ),
            None => "no checkpoint had been written yet".to_string(),
        }
    }

    fn save(&self, model: &VisionTransformer, optimizer: &Sgd, completed: usize) -> Result<()> {
        let state = checkpoint::State {
            step: completed,
            args: self.args.clone(),
            classes: self.classes.to_vec(),
        };
        checkpoint::save(&self.args.workdir, model, optimizer, &state)
            .context("cannot write the checkpoint")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::Distribution;

    use super::*;

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_classes() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([2, 10], &device);
        let loss = cross_entropy(logits, &[3, 7]).into_scalar::<f32>();
        assert!((loss - 10f32.ln()).abs() < 1e-6);
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0], [1, 2]), &device);
        let loss = cross_entropy(logits, &[1]).into_scalar::<f32>();
        assert!((loss - (1.0 + (-2f32).exp()).ln() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn model_config_reads_presets_our_json_and_hf_config_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = tiny_config();
        let write = |name: &str, json: serde_json::Value| {
            let path = dir.path().join(name);
            fs::write(&path, json.to_string()).expect("write config");
            path.to_string_lossy().into_owned()
        };
        let ours = write("vit.json", serde_json::to_value(&config).expect("json"));
        assert_eq!(model_config(&ours).expect("our config"), config);
        // An export's config.json carries our config beside the HF fields.
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let mut exported = vit::checkpoint::hf::write_config(&config, &labels, None);
        let from_export = write("export.json", exported.clone());
        assert_eq!(model_config(&from_export).expect("export config"), config);
        // A plain HF config: the architecture, with the class count left to the data set.
        exported
            .as_object_mut()
            .expect("object")
            .remove(vit::checkpoint::hf::OUR_CONFIG_FIELD);
        let hf = model_config(&write("hf.json", exported)).expect("HF config");
        assert_eq!(hf.with_num_classes(3), config);
        assert_eq!(model_config("B/16").expect("preset").hidden_size, 768);
        let broken = write("broken.json", serde_json::json!({"hidden_size": 8}));
        let error = format!("{:#}", model_config(&broken).expect_err("incomplete"));
        assert!(error.contains("invalid model config"), "{error}");
    }

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

    #[test]
    fn accumulated_micro_batches_equal_one_large_batch() {
        let device = Device::flex().autodiff();
        let mut model = VisionTransformer::new(&tiny_config(), &device).unwrap();
        // A non-zero head, so that every parameter gets a gradient.
        model.head = Some(burn::nn::LinearConfig::new(8, 3).init(&device));
        let images = Tensor::<4>::random([4, 3, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let targets = [0, 2, 1, 2];
        let whole = cross_entropy(model.forward(images.clone()), &targets);
        let whole = GradientsParams::from_grads(whole.backward(), &model);
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        for half in 0..2 {
            let part = images.clone().narrow(0, half * 2, 2);
            let loss = cross_entropy(model.forward(part), &targets[half * 2..half * 2 + 2]) / 2.0;
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let accumulated = accumulator.grads();
        let norm_whole = Sgd::global_norm(&model, &whole);
        let norm_accumulated = Sgd::global_norm(&model, &accumulated);
        assert!(norm_whole > 0.0);
        assert!((norm_whole - norm_accumulated).abs() < 1e-5 * norm_whole);
        let id = model.head.as_ref().unwrap().weight.id;
        let a = whole
            .get::<2>(id)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        let b = accumulated
            .get::<2>(id)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
    }
}
