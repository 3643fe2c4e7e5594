//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vit::model::Precision;
use vit::preprocess::Normalization;

use crate::augment;
use crate::optimizer::Kind;
use crate::recipe::{Preset, Recipe, RepresentationSize, RunOptions, Runtime};
use crate::schedule::Decay;

/// Fine-tune Vision Transformers (ViT) and run them, with the numerics of Google's
/// reference `vision_transformer` code.
///
/// Checkpoints can be a Google `.npz` (e.g. `ViT-B_16.npz`), a timm `.safetensors`
/// file, or a folder with `config.json` + `model.safetensors` (Hugging Face, or
/// what `trainer export` writes).
///
/// Training is the default command: `trainer --steps 2000` fine-tunes the ImageNet-21k
/// ViT-B/16 on CIFAR-10 with the reference recipe (see `trainer train --help`).
#[derive(Debug, Parser)]
#[command(
    name = "trainer",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fine-tune a ViT (the default command).
    ///
    /// Defaults are the reference `b16,cifar10` config: ViT-B/16 pretrained on
    /// ImageNet-21k, 384 px, batch 512 in 8 micro-batches, SGD momentum 0.9, lr 0.01,
    /// 500 warm-up steps then cosine decay, gradient clipping at norm 1.
    ///
    /// Example: trainer train --steps 2000 --dataset cifar10
    Train(Box<TrainArgs>),
    /// Classify images with a checkpoint.
    ///
    /// Example: trainer predict --checkpoint export/ --top-k 3 cat.jpg dog.png
    Predict(PredictArgs),
    /// Convert a checkpoint to the export format (config.json + model.safetensors,
    /// the Hugging Face ViTForImageClassification layout) that the browser app loads.
    ///
    /// Example: trainer export --checkpoint ViT-B_16.npz --out exported/ --f16
    Export(ExportArgs),
    /// Accuracy of a checkpoint on a data set's test split: overall, per class, and a
    /// confusion matrix (printed, and written as an SVG image).
    ///
    /// Example: trainer eval --checkpoint runs/latest/export --dataset cifar10
    Eval(EvalArgs),
    /// What this machine offers for training: backends, devices, memory, threads, disk.
    ///
    /// Example: trainer info --workdir runs/latest
    Info(InfoArgs),
    /// Time a model with random weights: its forward pass, or with --train a whole
    /// training update (forward, loss, backward, clipping, SGD with momentum).
    ///
    /// Examples: trainer bench --model B/16 --image-size 224 --batch 1;
    /// trainer bench --train --model B/16 --batch 16 --json
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// `cifar10`, `cifar100`, or an image folder / .tar.gz: its `test/<class>/` split, or
    /// without one every image of its `<class>/` folders.
    #[arg(long, default_value = "cifar10")]
    pub dataset: String,
    /// Where downloads are cached (default: the user's cache folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Split this fraction of a single-tree image folder off for testing.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Evaluate at this resolution (default: the checkpoint's).
    #[arg(long, value_name = "N")]
    pub resolution: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Where to write confusion.svg and eval.json (default: the checkpoint's folder,
    /// or beside the checkpoint file).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace an earlier eval.json and confusion.svg there (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// Compute device: `cpu` (burn-flex); `tch`, `tch:cpu`, `tch:cuda:N` with the `tch` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The folder whose free disk space matters (where runs are written).
    #[arg(long, default_value = "runs")]
    pub workdir: PathBuf,
}

/// Options shared by every command that reads a checkpoint.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// A `.npz`, a `.safetensors` file, or a folder with config.json + model.safetensors.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Attention heads, needed for timm files (they do not record it): e.g. 12 for ViT-B.
    #[arg(long, value_name = "N")]
    pub num_heads: Option<usize>,
    #[command(flatten)]
    pub normalization: NormalizationArgs,
}

/// `--image-mean` and `--image-std`: the model's input normalisation, when the
/// checkpoint does not record it (timm files) or records it wrongly.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct NormalizationArgs {
    /// Per-channel mean of the model's inputs, `R,G,B` in [0, 1] (one value for all three
    /// also works), replacing the checkpoint's: e.g. 0.485,0.456,0.406 for ImageNet-normalised
    /// models (DeiT, many timm models). Default: the checkpoint's (Hugging Face folders:
    /// preprocessor_config.json), else 0.5 as Google's ViTs.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    pub image_mean: Option<[f32; 3]>,
    /// Per-channel standard deviation, as --image-mean: e.g. 0.229,0.224,0.225 for ImageNet.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    pub image_std: Option<[f32; 3]>,
}

impl NormalizationArgs {
    /// `base` with the given values replaced.
    pub fn apply(&self, base: Normalization) -> Normalization {
        base.replaced(self.image_mean, self.image_std)
    }
}

/// `R,G,B` or a single value for all three channels.
fn parse_rgb(text: &str) -> Result<[f32; 3], String> {
    let values = text
        .split(',')
        .map(|part| part.trim().parse::<f32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("expected three numbers R,G,B (or one), not `{text}`"))?;
    let rgb = match values[..] {
        [value] => [value; 3],
        [r, g, b] => [r, g, b],
        _ => {
            return Err(format!(
                "expected three numbers R,G,B (or one), not `{text}`"
            ));
        }
    };
    if rgb.iter().all(|value| value.is_finite()) {
        Ok(rgb)
    } else {
        Err(format!("`{text}` is not finite"))
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// Run the model at this resolution instead of the checkpoint's (position
    /// embeddings are resized as the reference does).
    #[arg(long, value_name = "N")]
    pub image_size: Option<usize>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
    /// Print one JSON object per image per line (logits, probabilities, top-k).
    #[arg(long)]
    pub json: bool,
    /// Compute device: `cpu` (burn-flex), or `ndarray` when built with that feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// JPEG, PNG, WebP or GIF images.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointArgs,
    /// Output folder (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Store weights as float16: half the size, for the browser.
    #[arg(long)]
    pub f16: bool,
    /// Class names, comma-separated, in class-index order (default: the checkpoint's
    /// own, else the indices).
    #[arg(long, value_delimiter = ',', value_name = "A,B,C...")]
    pub labels: Option<Vec<String>>,
    /// Export at this resolution (position embeddings resized).
    #[arg(long, value_name = "N")]
    pub image_size: Option<usize>,
    /// How the model was made, in a sentence the browser page shows (default: the
    /// checkpoint's own, which a training run writes).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Replace the model files in an existing --out folder (refused otherwise).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model: a preset (Ti/16, S/16, B/16, B/32, B/8, L/16, L/32, H/14, Lite-7/4) or a
    /// JSON config file.
    #[arg(long, default_value = "B/16")]
    pub model: String,
    /// Time a training update instead of a forward pass.
    #[arg(long)]
    pub train: bool,
    /// Print one JSON line: case, model, resolution, batch, device, precision, median_ms,
    /// min_ms, runs, images_per_sec, peak_memory_bytes.
    #[arg(long)]
    pub json: bool,
    /// Number format: `fp32`, or `bf16` mixed precision on libtorch devices (see
    /// `trainer --help`).
    #[arg(long, default_value_t = Precision::Fp32, value_name = "fp32|bf16")]
    pub precision: Precision,
    #[arg(long, default_value_t = 224, value_name = "N")]
    pub image_size: usize,
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Compute device: `cpu` (burn-flex); `tch`, `tch:cpu`, `tch:cuda:N` with the Cargo
    /// feature `tch`; `ndarray` with the feature `ndarray`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[arg(long, value_enum, long_help = Preset::help())]
    pub preset: Option<Preset>,
    /// Total training steps (updates).
    #[arg(long, default_value_t = 10_000)]
    pub steps: usize,
    /// Model: a preset (Ti/16, S/16, B/16, B/32, B/8, L/16, L/32, H/14) or a JSON file (our
    /// config, an export's config.json, or a Hugging Face ViT config.json). Default: the
    /// pretrained checkpoint's architecture.
    #[arg(long)]
    pub model: Option<String>,
    /// The pre-logits layer (Dense + tanh before the head) of the fine-tuned model: `none`
    /// drops the pretrained one (the reference's "drop-head variant", what its fine-tuning
    /// configs do), `keep` keeps the pretrained one, `N` asks for one of size N. Default:
    /// `none`, or the value of the --model preset or file when one is given.
    #[arg(long, value_name = "none|keep|N")]
    pub representation_size: Option<RepresentationSize>,
    /// Pretrained weights: a local file or folder, `gs://BUCKET/PATH`, `hf:ORG/NAME[@REVISION]`
    /// (Hugging Face Hub: HF_TOKEN for gated models, HF_HOME for the cache),
    /// an https URL, or `none` to train from scratch.
    #[arg(long, default_value = crate::pretrained::DEFAULT)]
    pub pretrained: String,
    /// `cifar10`, `cifar100`, or the path of an image folder (DIR/train/<class>/*,
    /// DIR/test/<class>/*) or of a .tar.gz of one.
    #[arg(long, default_value = "cifar10")]
    pub dataset: String,
    /// Where downloads are cached (default: the user's cache folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Images per update.
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Micro-batches per update (gradients averaged); `batch` must be a multiple.
    #[arg(long, default_value_t = 8)]
    pub accum_steps: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    pub decay: Decay,
    /// SGD's momentum (the reference's 0.9).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// The optimiser: `sgd` with momentum (the reference's), or `adamw` (PyTorch's AdamW,
    /// with --weight-decay, --beta1, --beta2, --eps), usual for training from scratch.
    #[arg(long, value_enum, default_value_t = Kind::Sgd)]
    pub optimizer: Kind,
    /// AdamW's decoupled weight decay, applied to weight matrices only (not biases,
    /// LayerNorms, position embeddings or the class token), as timm does.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Label smoothing of the cross-entropy (0.1 is usual for training from scratch).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.9999),
    /// and evaluate and export it instead of the weights themselves.
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Clip gradients to this global norm (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Training and evaluation resolution in pixels.
    #[arg(long, default_value_t = 384)]
    pub resolution: usize,
    /// Smallest random training crop, as a fraction of the image area (the reference's 0.05;
    /// larger values are gentler, e.g. for short training from scratch on small images).
    #[arg(long, default_value_t = augment::MIN_CROP_AREA)]
    pub min_crop_area: f32,
    /// Crop as torchvision's RandomCrop(padding=N) instead: pad every side with N black
    /// pixels and take a crop of the image's own size at a random offset (4 is usual for
    /// CIFAR from scratch). Replaces the reference's area crop; the flip stays.
    #[arg(long, value_name = "N")]
    pub pad_crop: Option<usize>,
    /// TrivialAugment (torchvision's TrivialAugmentWide): one of 14 operations (shear,
    /// translate, rotate, brightness, colour, contrast, sharpness, posterize, solarize,
    /// autocontrast, equalize, identity) at a random strength on every training image,
    /// before the crop. `--trivial-augment false` turns off a preset's.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub trivial_augment: bool,
    /// timm's random erasing: each training example, with this probability, gets a random
    /// rectangle (2% to 1/3 of the image) replaced by noise (0.25 is usual).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub random_erasing: f64,
    /// Mixup as timm's: blend each micro-batch with itself reversed by λ ~ Beta(A, A),
    /// and the labels likewise (0.8 is usual; 0 is off).
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    pub mixup: f64,
    /// CutMix as timm's: paste a box of the reversed micro-batch, of area 1 − λ with
    /// λ ~ Beta(A, A) (1.0 is usual; 0 is off). With --mixup, each batch takes one.
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    pub cutmix: f64,
    /// The probability that a micro-batch is mixed at all (with --mixup or --cutmix).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub mixup_prob: f64,
    /// With both --mixup and --cutmix: the probability of CutMix for a batch.
    #[arg(long, default_value_t = 0.5, value_name = "P")]
    pub mixup_switch_prob: f64,
    #[command(flatten)]
    pub normalization: NormalizationArgs,
    /// Dropout rate (default: the model's; 0 for B/16).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Stochastic depth (timm's drop_path_rate): the last block's residual branches are
    /// dropped per example with this rate, earlier blocks' with linearly less (default:
    /// the model's; 0 for the reference's).
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// Evaluate on the test split every N steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Log metrics every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Split this fraction of a single-tree image folder off for testing.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Fail on unreadable images instead of skipping them.
    #[arg(long)]
    pub strict: bool,
    /// Write a checkpoint every N steps (and at the end, and on Ctrl-C or SIGTERM).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// Output folder: config, metrics.jsonl, curves.svg, summary, checkpoint/, export/.
    #[arg(long, default_value = "runs/latest")]
    pub workdir: PathBuf,
    /// Start a new run in a --workdir that already holds files a run writes (config.json,
    /// metrics.jsonl, curves.svg, summary.md, export/), replacing them; refused otherwise.
    /// A --workdir holding a checkpoint is refused even so: continue it with --resume, or
    /// delete its checkpoint/ folder first.
    #[arg(long)]
    pub force: bool,
    /// Continue the run saved in --workdir from its checkpoint, with its saved options
    /// (only --device, --precision, --threads, --data-dir, --log-every, --eval-every and
    /// --checkpoint-every may change). Gives the same metrics as an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Stop once this many steps are done, writing a checkpoint, to continue later
    /// with --resume (e.g. to fit a run into time slots).
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<usize>,
    /// Seed for the data order and the augmentations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device: `cpu` (burn-flex); `tch`, `tch:cpu`, `tch:cuda:N` with the Cargo
    /// feature `tch`; `ndarray` with the feature `ndarray`. Several for data-parallel
    /// training: `cpu*N` (N CPU replicas), `tch:cuda:0,1` or `tch:cuda:all`; every
    /// micro-batch is split evenly over them, and the result is the one-device run's.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Number format: `fp32`, or `bf16` mixed precision on libtorch devices (tch:cuda:N,
    /// tch:cpu), as PyTorch's autocast: the encoder blocks' matrix products, attention and
    /// GELU in bfloat16; weights, gradients, optimizer state, LayerNorms, head and loss in
    /// float32. Faster on GPUs with bfloat16 tensor cores; the loss curve follows fp32's
    /// within noise. A resumed run may change it.
    #[arg(long, default_value_t = Precision::Fp32, value_name = "fp32|bf16")]
    pub precision: Precision,
    /// CPU threads for the model (burn-flex, or libtorch on `tch:cpu`) and the input
    /// pipeline (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl TrainArgs {
    /// The recipe and runtime options these arguments describe, with the `--preset`'s
    /// settings for the options not in `explicit` (those given on the command line).
    pub fn options(&self, explicit: &[String]) -> anyhow::Result<RunOptions> {
        let options = self.plain_options();
        match self.preset {
            Some(preset) => preset.apply(options, explicit),
            None => Ok(options),
        }
    }

    /// The options as given, without a preset.
    fn plain_options(&self) -> RunOptions {
        RunOptions {
            recipe: Recipe {
                steps: self.steps,
                model: self.model.clone(),
                representation_size: self.representation_size,
                pretrained: self.pretrained.clone(),
                dataset: self.dataset.clone(),
                val_split: self.val_split,
                strict: self.strict,
                batch: self.batch,
                accum_steps: self.accum_steps,
                lr: self.lr,
                warmup: self.warmup,
                decay: self.decay,
                momentum: self.momentum,
                optimizer: self.optimizer,
                weight_decay: self.weight_decay,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                label_smoothing: self.label_smoothing,
                ema: self.ema,
                grad_clip: self.grad_clip,
                resolution: self.resolution,
                min_crop_area: self.min_crop_area,
                pad_crop: self.pad_crop,
                trivial_augment: self.trivial_augment,
                random_erasing: self.random_erasing,
                mixup: self.mixup,
                cutmix: self.cutmix,
                mixup_prob: self.mixup_prob,
                mixup_switch_prob: self.mixup_switch_prob,
                image_mean: self.normalization.image_mean,
                image_std: self.normalization.image_std,
                dropout: self.dropout,
                drop_path: self.drop_path,
                seed: self.seed,
            },
            runtime: Runtime {
                eval_every: self.eval_every,
                log_every: self.log_every,
                checkpoint_every: self.checkpoint_every,
                workdir: self.workdir.clone(),
                data_dir: self.data_dir.clone(),
                device: self.device.clone(),
                precision: self.precision,
                threads: self.threads,
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::Parser;

    use super::*;

    /// The run options of `trainer OPTIONS...`.
    pub(crate) fn options(options: &[&str]) -> RunOptions {
        let command_line = std::iter::once("trainer").chain(options.iter().copied());
        Cli::parse_from(command_line).train.plain_options()
    }

    #[test]
    fn every_option_of_the_command_line_reaches_the_run_options() {
        let options = options(&[
            "--steps",
            "7",
            "--representation-size",
            "keep",
            "--image-mean",
            "0.4",
            "--image-std",
            "0.1,0.2,0.3",
            "--accum-steps",
            "2",
            "--batch",
            "6",
            "--workdir",
            "w",
            "--threads",
            "3",
        ]);
        assert_eq!(options.recipe.steps, 7);
        assert_eq!(
            options.recipe.representation_size,
            Some(RepresentationSize::Keep)
        );
        assert_eq!(options.recipe.image_mean, Some([0.4; 3]));
        assert_eq!(options.recipe.image_std, Some([0.1, 0.2, 0.3]));
        assert_eq!(options.recipe.micro_batch(), 3);
        assert_eq!(options.runtime.workdir, PathBuf::from("w"));
        assert_eq!(options.runtime.threads, Some(3));
    }

    #[test]
    fn augmentation_flags_reach_the_recipe() {
        let plain = options(&[]);
        assert!(!plain.recipe.trivial_augment);
        assert!(!plain.recipe.mixing().enabled());
        let given = options(&[
            "--trivial-augment",
            "--random-erasing",
            "0.25",
            "--mixup",
            "0.8",
            "--cutmix",
            "1",
            "--mixup-prob",
            "0.5",
        ]);
        assert!(given.recipe.trivial_augment);
        assert_eq!(given.recipe.augmentation().random_erasing, 0.25);
        let mixing = given.recipe.mixing();
        assert_eq!((mixing.mixup, mixing.cutmix, mixing.prob), (0.8, 1.0, 0.5));
        // A preset's TrivialAugment can be turned off.
        let off = options(&["--trivial-augment", "false"]);
        assert!(!off.recipe.trivial_augment);
        // Training options only: the commands that read a checkpoint refuse them.
        for command in ["predict", "eval", "export"] {
            let line = ["trainer", command, "--checkpoint", "m", "--mixup", "0.8"];
            assert!(Cli::try_parse_from(line).is_err(), "{command}");
        }
    }
}
