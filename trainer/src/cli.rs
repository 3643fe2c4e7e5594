//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fine-tune Vision Transformers (ViT) and run them, with the numerics of Google's
/// reference `vision_transformer` code.
///
/// Checkpoints can be a Google `.npz` (e.g. `ViT-B_16.npz`), a timm `.safetensors`
/// file, or a folder with `config.json` + `model.safetensors` (Hugging Face, or
/// what `trainer export` writes).
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify images with a checkpoint.
    ///
    /// Example: trainer predict --checkpoint export/ --top-k 3 cat.jpg dog.png
    Predict(PredictArgs),
    /// Convert a checkpoint to the export format (config.json + model.safetensors,
    /// the Hugging Face ViTForImageClassification layout) that the browser app loads.
    ///
    /// Example: trainer export --checkpoint ViT-B_16.npz --out exported/ --f16
    Export(ExportArgs),
    /// Time the forward pass of a model preset with random weights.
    ///
    /// Example: trainer bench --model B/16 --image-size 224 --batch 1
    Bench(BenchArgs),
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
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model preset (Ti/16, S/16, B/16, B/32, B/8, L/16, L/32, H/14).
    #[arg(long, default_value = "B/16")]
    pub model: String,
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
    /// Compute device: `cpu` (burn-flex), or `ndarray` when built with that feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}
