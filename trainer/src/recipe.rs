//! What a training run is, apart from the command line that started it: the recipe
//! (everything that decides what the run computes, which a resumed run keeps) and the
//! runtime options (how it is carried out, which a resumed run may change).
//!
//! A checkpoint's `state.json` stores both as one flat object whose keys are the
//! command-line option names (`--accum-steps` is `accum_steps`), so a resumed run can
//! say which option contradicts its recipe.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};
use vit::ViTConfig;
use vit::model::Precision;
use vit::preprocess::Normalization;

use crate::augment::{self, Augmentation, Cropping};
use crate::mixing::Mixing;
use crate::optimizer::{Kind, Rule};
use crate::schedule::{Decay, Schedule};

/// Everything that decides what a run computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Total updates.
    pub steps: usize,
    /// A preset name or a JSON config file; `None`: the pretrained checkpoint's.
    pub model: Option<String>,
    /// What happens to a pretrained pre-logits layer; `None`: drop it, unless
    /// `model` says otherwise.
    #[serde(default)]
    pub representation_size: Option<RepresentationSize>,
    /// `none`, a local path, `gs://`, `hf:` or an https URL.
    pub pretrained: String,
    pub dataset: String,
    pub val_split: Option<f64>,
    /// Fail on unreadable images instead of skipping them.
    pub strict: bool,
    /// Images per update.
    pub batch: usize,
    /// Micro-batches per update.
    pub accum_steps: usize,
    pub lr: f64,
    pub warmup: usize,
    pub decay: Decay,
    pub momentum: f64,
    #[serde(default)]
    pub optimizer: Kind,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Label smoothing of the cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Decay of the weights' exponential moving average, evaluated and exported.
    #[serde(default)]
    pub ema: Option<f64>,
    /// Global-norm clipping threshold; 0 disables it.
    pub grad_clip: f64,
    pub resolution: usize,
    #[serde(default = "reference_min_crop_area")]
    pub min_crop_area: f32,
    /// torchvision-style padded crops instead of the reference's area crops.
    #[serde(default)]
    pub pad_crop: Option<usize>,
    /// A TrivialAugment operation on every training image.
    #[serde(default)]
    pub trivial_augment: bool,
    /// The probability of random erasing.
    #[serde(default)]
    pub random_erasing: f64,
    /// Mixup's and CutMix's Beta parameters, how often a batch is mixed, and how
    /// often with CutMix when both are on.
    #[serde(default)]
    pub mixup: f64,
    #[serde(default)]
    pub cutmix: f64,
    #[serde(default = "always")]
    pub mixup_prob: f64,
    #[serde(default = "half")]
    pub mixup_switch_prob: f64,
    /// Replace the model's input normalisation (per channel, in [0, 1] units).
    #[serde(default)]
    pub image_mean: Option<[f32; 3]>,
    #[serde(default)]
    pub image_std: Option<[f32; 3]>,
    /// Dropout rate; `None`: the model's.
    pub dropout: Option<f64>,
    /// Stochastic depth rate; `None`: the model's.
    #[serde(default)]
    pub drop_path: Option<f64>,
    /// Seed of the data order and the augmentations.
    pub seed: u64,
}

/// For runs saved before `--min-crop-area` existed.
fn reference_min_crop_area() -> f32 {
    augment::MIN_CROP_AREA
}

// timm's Mixup defaults, for runs saved before these options existed.
fn always() -> f64 {
    1.0
}

fn half() -> f64 {
    0.5
}

// PyTorch's AdamW defaults, for runs saved before these options existed.
fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_eps() -> f64 {
    1e-8
}

/// How a run is carried out: none of it changes what it computes beyond the rounding of
/// floating-point numbers (the device, `--precision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub eval_every: usize,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub workdir: PathBuf,
    /// Where downloads are cached; `None`: the user's cache folder.
    pub data_dir: Option<PathBuf>,
    pub device: String,
    /// What the model computes in; float32 for runs saved before it existed.
    #[serde(default)]
    pub precision: Precision,
    pub threads: Option<usize>,
}

/// Both halves, as `state.json` stores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(flatten)]
    pub recipe: Recipe,
    #[serde(flatten)]
    pub runtime: Runtime,
}

/// `--representation-size`: what fine-tuning does with the pre-logits layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RepresentationSize {
    /// No pre-logits layer: the pretrained one is dropped.
    None,
    /// The pretrained checkpoint's own (none if it has none).
    Keep,
    /// A pre-logits layer of this size (the pretrained one, which must have it).
    Size(usize),
}

impl std::str::FromStr for RepresentationSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "none" => Ok(Self::None),
            "keep" => Ok(Self::Keep),
            _ => match text.parse::<usize>() {
                Ok(size) if size > 0 => Ok(Self::Size(size)),
                _ => Err(format!(
                    "expected `none`, `keep` or a positive size, not `{text}`"
                )),
            },
        }
    }
}

impl std::fmt::Display for RepresentationSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Keep => f.write_str("keep"),
            Self::Size(size) => write!(f, "{size}"),
        }
    }
}

impl From<RepresentationSize> for String {
    fn from(value: RepresentationSize) -> Self {
        value.to_string()
    }
}

impl TryFrom<String> for RepresentationSize {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl Recipe {
    /// Refuses recipes that cannot run, naming the option.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.steps > 0, "--steps must be at least 1");
        // A warm-up longer than the run is a mistake (typically --steps lowered without
        // --warmup, whose default is 500): the rate would never reach --lr nor decay. The
        // reference has no sensible meaning for it either (`vit_jax` clips its progress to
        // 1 and trains at rate 0 with cosine decay), so it is refused, not reinterpreted.
        // `--warmup 0` and `--warmup` equal to `--steps` stay legal.
        ensure!(
            self.warmup <= self.steps,
            "--warmup {} is more than --steps {}: the learning rate would never reach --lr; \
             give a --warmup of at most {} (the default is 500)",
            self.warmup,
            self.steps,
            self.steps
        );
        ensure!(self.batch > 0, "--batch must be at least 1");
        ensure!(
            self.accum_steps > 0 && self.batch.is_multiple_of(self.accum_steps),
            "--batch {} must be a multiple of --accum-steps {}",
            self.batch,
            self.accum_steps
        );
        ensure!(
            self.min_crop_area > 0.0 && self.min_crop_area <= 1.0,
            "--min-crop-area must be in (0, 1], not {}",
            self.min_crop_area
        );
        ensure!(
            (1..=vit::config::limits::IMAGE_SIZE).contains(&self.resolution),
            "--resolution must be from 1 to {} px, not {}",
            vit::config::limits::IMAGE_SIZE,
            self.resolution
        );
        // The rates are applied in float32: beyond its range they are infinite.
        let float32 = f64::from(f32::MAX);
        ensure!(
            (0.0..=float32).contains(&self.lr),
            "--lr must be a number from 0 to {float32:.1e}, not {}",
            self.lr
        );
        ensure!(
            (0.0..1.0).contains(&self.momentum),
            "--momentum must be in [0, 1), not {} (the reference uses 0.9)",
            self.momentum
        );
        ensure!(
            (0.0..=float32).contains(&self.grad_clip),
            "--grad-clip must be a number from 0 (no clipping) to {float32:.1e}, not {}",
            self.grad_clip
        );
        ensure!(
            (0.0..=float32).contains(&self.weight_decay),
            "--weight-decay must be a number from 0 to {float32:.1e}, not {}",
            self.weight_decay
        );
        for (name, beta) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            ensure!(
                (0.0..1.0).contains(&beta),
                "{name} must be in [0, 1), not {beta}"
            );
        }
        ensure!(
            self.eps > 0.0 && self.eps <= float32,
            "--eps must be a positive number, not {}",
            self.eps
        );
        if let Some(padding) = self.pad_crop {
            ensure!(
                padding <= vit::config::limits::IMAGE_SIZE,
                "--pad-crop must be at most {} px, not {padding}",
                vit::config::limits::IMAGE_SIZE
            );
        }
        if let Some(decay) = self.ema {
            ensure!(
                decay > 0.0 && decay < 1.0,
                "--ema must be between 0 and 1 (e.g. 0.9999), not {decay}"
            );
        }
        ensure!(
            (0.0..1.0).contains(&self.label_smoothing),
            "--label-smoothing must be in [0, 1), not {}",
            self.label_smoothing
        );
        for (name, alpha) in [("--mixup", self.mixup), ("--cutmix", self.cutmix)] {
            ensure!(
                (0.0..=1e6).contains(&alpha),
                "{name} is a Beta parameter from 0 (off) to 1e6, not {alpha} (timm's usual: 0.8 for mixup, 1.0 for CutMix)"
            );
        }
        for (name, probability) in [
            ("--mixup-prob", self.mixup_prob),
            ("--mixup-switch-prob", self.mixup_switch_prob),
            ("--random-erasing", self.random_erasing),
        ] {
            ensure!(
                (0.0..=1.0).contains(&probability),
                "{name} is a probability from 0 to 1, not {probability}"
            );
        }
        Ok(())
    }

    /// What happens to each training example.
    pub fn augmentation(&self) -> Augmentation {
        let cropping = match self.pad_crop {
            Some(padding) => Cropping::Padded { padding },
            None => Cropping::Area {
                min_area: self.min_crop_area,
            },
        };
        Augmentation {
            cropping,
            trivial_augment: self.trivial_augment,
            random_erasing: self.random_erasing,
        }
    }

    /// Mixup and CutMix of each micro-batch.
    pub fn mixing(&self) -> Mixing {
        Mixing {
            mixup: self.mixup,
            cutmix: self.cutmix,
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
        }
    }

    /// The optimiser's update rule.
    pub fn rule(&self) -> Rule {
        match self.optimizer {
            Kind::Sgd => Rule::Sgd {
                momentum: self.momentum,
            },
            Kind::Adamw => Rule::AdamW {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
        }
    }

    /// Images per forward pass.
    pub fn micro_batch(&self) -> usize {
        self.batch / self.accum_steps
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            base_lr: self.lr,
            warmup_steps: self.warmup,
            total_steps: self.steps,
            decay: self.decay,
        }
    }

    /// `base` with `--image-mean` and `--image-std` applied.
    pub fn normalization(&self, base: Normalization) -> Normalization {
        base.replaced(self.image_mean, self.image_std)
    }

    /// How the exported model was made, in a sentence that travels with it (the
    /// browser page shows it). Paths are cut to their file names: they mean nothing
    /// on another machine.
    pub fn describe(
        &self,
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
        let origin = if self.pretrained == "none" {
            "trained from scratch".to_owned()
        } else {
            format!("fine-tuned from {}", name(&self.pretrained))
        };
        let mut text = format!(
            "ViT ({:.1} M parameters, {} px, {} px patches) {origin} on {} for {} steps of {} images",
            config.num_params() as f64 / 1e6,
            config.image_size,
            config.patch_size,
            name(&self.dataset),
            self.steps,
            self.batch
        );
        if let Some(decay) = self.ema {
            text.push_str(&format!(" (weights averaged, EMA {decay})"));
        }
        if let Some(accuracy) = test_accuracy {
            text.push_str(&format!(
                "; test accuracy {:.2}% on {test_images} images",
                accuracy * 100.0
            ));
        }
        text
    }
}

impl Runtime {
    /// Refuses options that cannot work, naming them.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.eval_every > 0 && self.log_every > 0 && self.checkpoint_every > 0,
            "--eval-every, --log-every and --checkpoint-every must be at least 1"
        );
        Ok(())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::data::download::cache_dir)
    }
}

/// `--preset`: named recipes. Each sets the options it lists; options given on the
/// command line win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The browser demo's model: ViT-Lite-7/4 trained from scratch on CIFAR-10.
    Cifar10Scratch,
}

impl Preset {
    /// The options it sets, by name, as JSON values.
    pub fn settings(self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        match self {
            // ViT-Lite-7/4 at 32 px (3.7 M parameters): 100 epochs of `cifar10`'s 49,000
            // training images at batch 128 (38,300 updates), 5 of warm-up; AdamW with
            // decoupled weight decay, label smoothing, padded crops and flips,
            // TrivialAugment, random erasing, stochastic depth, and a moving average of the
            // weights (no mixup or CutMix: they pay off only over longer schedules). A GPU
            // trains it in minutes, two CPU cores in days; shorten it with --steps (and
            // --warmup, --ema) for a first try.
            Preset::Cifar10Scratch => vec![
                ("pretrained", json!("none")),
                ("model", json!("Lite-7/4")),
                ("resolution", json!(32)),
                ("batch", json!(128)),
                ("accum_steps", json!(1)),
                ("steps", json!(38_300)),
                ("warmup", json!(1_915)),
                ("optimizer", json!("adamw")),
                ("lr", json!(0.0005)),
                ("weight_decay", json!(0.05)),
                ("label_smoothing", json!(0.1)),
                ("pad_crop", json!(4)),
                ("trivial_augment", json!(true)),
                ("random_erasing", json!(0.25)),
                ("drop_path", json!(0.1)),
                ("ema", json!(0.9995)),
                ("grad_clip", json!(1.0)),
                ("eval_every", json!(1_915)),
                ("checkpoint_every", json!(1_915)),
            ],
        }
    }

    /// `options` with this preset's settings, except those named in `explicit` (the
    /// command-line options, which win).
    pub fn apply(self, options: RunOptions, explicit: &[String]) -> Result<RunOptions> {
        let mut json = serde_json::to_value(options)?;
        for (name, value) in self.settings() {
            if !explicit.iter().any(|given| given == name) {
                json[name] = value;
            }
        }
        Ok(serde_json::from_value(json)?)
    }

    /// What `--help` says of the presets: each with its settings.
    pub fn help() -> String {
        use clap::ValueEnum;
        let mut text = String::from(
            "A named recipe: it sets the options below, and options given on the command line \
             win.",
        );
        for preset in Preset::value_variants() {
            let name = preset
                .to_possible_value()
                .map_or_else(String::new, |value| value.get_name().to_string());
            let settings: Vec<String> = preset
                .settings()
                .into_iter()
                .map(|(option, value)| {
                    let flag = format!("--{}", option.replace('_', "-"));
                    match value {
                        serde_json::Value::Bool(true) => flag,
                        value => format!("{flag} {}", value.to_string().trim_matches('"')),
                    }
                })
                .collect();
            text.push_str(&format!("\n\n{name}: {}", settings.join(" ")));
        }
        text
    }
}

impl RunOptions {
    /// The names of the runtime options (a resumed run may give them anew).
    pub fn runtime_names(&self) -> Vec<String> {
        match serde_json::to_value(&self.runtime) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_json_is_one_flat_object_keyed_by_option_names() {
        let options = crate::cli::tests::options(&["--accum-steps", "4", "--eval-every", "7"]);
        let json = serde_json::to_value(&options).expect("json");
        assert_eq!(json["accum_steps"], 4);
        assert_eq!(json["eval_every"], 7);
        assert_eq!(json["representation_size"], serde_json::Value::Null);
        let back: RunOptions = serde_json::from_value(json).expect("back");
        assert_eq!(back, options);
        assert!(options.runtime_names().contains(&"eval_every".to_string()));
        assert!(!options.runtime_names().contains(&"accum_steps".to_string()));
    }

    #[test]
    fn presets_set_their_options_unless_given() {
        let options = crate::cli::tests::options(&[]);
        let explicit = ["lr".to_string(), "steps".to_string(), "warmup".to_string()];
        let given = RunOptions {
            recipe: Recipe {
                lr: 0.002,
                steps: 10,
                // The preset's 1,915 would be longer than the run.
                warmup: 2,
                ..options.recipe.clone()
            },
            ..options.clone()
        };
        let applied = Preset::Cifar10Scratch
            .apply(given, &explicit)
            .expect("apply");
        assert_eq!(applied.recipe.lr, 0.002);
        assert_eq!(applied.recipe.steps, 10);
        assert_eq!(applied.recipe.warmup, 2);
        assert_eq!(applied.recipe.model.as_deref(), Some("Lite-7/4"));
        assert_eq!(applied.recipe.pretrained, "none");
        assert_eq!(applied.recipe.optimizer, Kind::Adamw);
        assert_eq!(applied.recipe.pad_crop, Some(4));
        assert_eq!(applied.recipe.ema, Some(0.9995));
        assert_eq!(applied.runtime.eval_every, 1_915);
        applied.recipe.validate().expect("a valid recipe");
        // Every setting names a real option, and the help lists them all.
        let help = Preset::help();
        for (name, _) in Preset::Cifar10Scratch.settings() {
            assert!(
                serde_json::to_value(&applied)
                    .expect("json")
                    .get(name)
                    .is_some(),
                "{name}"
            );
            assert!(
                help.contains(&format!("--{}", name.replace('_', "-"))),
                "{name}"
            );
        }
    }

    #[test]
    fn a_warmup_longer_than_the_run_is_refused() {
        let recipe = |warmup: usize| Recipe {
            warmup,
            steps: 10,
            ..crate::cli::tests::options(&[]).recipe
        };
        // No warm-up, and a run that is all warm-up, are legal.
        for warmup in [0, 1, 10] {
            recipe(warmup).validate().expect("a valid recipe");
        }
        let error = recipe(11).validate().unwrap_err().to_string();
        assert!(
            error.contains("--warmup 11") && error.contains("--steps 10"),
            "{error}"
        );
    }

    #[test]
    fn representation_sizes_read_and_write_as_on_the_command_line() {
        for (text, value) in [
            ("none", RepresentationSize::None),
            ("keep", RepresentationSize::Keep),
            ("768", RepresentationSize::Size(768)),
        ] {
            assert_eq!(text.parse::<RepresentationSize>(), Ok(value));
            assert_eq!(value.to_string(), text);
            let json = serde_json::to_value(value).expect("json");
            assert_eq!(json, serde_json::json!(text));
        }
        for bad in ["0", "-1", "big", ""] {
            assert!(bad.parse::<RepresentationSize>().is_err(), "{bad}");
        }
    }
}
