//! `trainer bench`: time a model with random weights, either its forward pass (`infer`)
//! or a whole training update (`--train`: forward, cross-entropy, backward, gradient
//! clipping and an SGD-with-momentum update, as the trainer runs them), and print the
//! median, as a sentence or as one JSON line per case (`--json`).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use serde::Serialize;
use vit::model::Precision;
use vit::{ViTConfig, VisionTransformer};

use crate::cli::BenchArgs;
use crate::device;
use crate::optimizer::{Optimizer, Rule};
use crate::train::cross_entropy;

/// One measured case, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Case {
    /// `infer` or `train`.
    pub case: &'static str,
    pub model: String,
    pub resolution: usize,
    pub batch: usize,
    pub device: String,
    pub precision: Precision,
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
    pub images_per_sec: f64,
    /// The process's peak resident memory (Linux's `VmHWM`) after the runs; `None`
    /// elsewhere. For GPU devices it is host memory only.
    pub peak_memory_bytes: Option<u64>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    device::check_precision(&args.device, args.precision)?;
    let device = device::parse(&args.device)?;
    let config = ViTConfig::from_name_or_file(&args.model)?
        .with_image_size(args.image_size)
        .with_num_classes(args.num_classes);
    if args.train && config.num_classes == 0 {
        bail!("--train needs a head to train: give --num-classes 1 or more");
    }
    let times_ms = if args.train {
        time_training(args, &config, &device)?
    } else {
        time_inference(args, &config, &device)?
    };
    let case = summarise(args, times_ms);
    if args.json {
        println!("{}", serde_json::to_string(&case)?);
    } else {
        let memory = case.peak_memory_bytes.map_or_else(String::new, |bytes| {
            format!(", peak memory {:.0} MB", bytes as f64 / 1e6)
        });
        println!(
            "{} {} {}px batch {} on {}: median {:.1} ms per {} ({:.1} images/s), min {:.1} ms, {} runs{memory}",
            case.case,
            case.model,
            case.resolution,
            case.batch,
            case.device,
            case.median_ms,
            if args.train { "update" } else { "forward" },
            case.images_per_sec,
            case.min_ms,
            case.runs,
        );
    }
    Ok(())
}

fn random_images(args: &BenchArgs, device: &burn::tensor::Device) -> Tensor<4> {
    Tensor::<4>::random(
        [args.batch, 3, args.image_size, args.image_size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

/// Runs `work` `warmup` times untimed, then `iterations` times timed; milliseconds. On
/// the thread pool, as the trainer runs its steps (see [`device::on_pool`]).
fn time(args: &BenchArgs, work: impl FnMut() -> Result<()> + Send) -> Result<Vec<f64>> {
    device::on_pool(|| time_on_this_thread(args, work))
}

/// [`time`] on the calling thread.
fn time_on_this_thread(args: &BenchArgs, mut work: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..args.warmup {
        work()?;
    }
    let mut times_ms = Vec::with_capacity(args.iterations as usize);
    for _ in 0..args.iterations {
        let start = Instant::now();
        work()?;
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times_ms)
}

fn time_inference(
    args: &BenchArgs,
    config: &ViTConfig,
    device: &burn::tensor::Device,
) -> Result<Vec<f64>> {
    let model = VisionTransformer::new(config, device)
        .context("cannot build the model")?
        .with_precision(args.precision);
    let images = random_images(args, device);
    time(args, || {
        let logits = model.forward(images.clone());
        // Reading the result back waits for the device to finish.
        logits
            .try_into_vec_as::<f32>()
            .context("reading logits back")?;
        Ok(())
    })
}

fn time_training(
    args: &BenchArgs,
    config: &ViTConfig,
    device: &burn::tensor::Device,
) -> Result<Vec<f64>> {
    let training = device.clone().autodiff();
    let model = VisionTransformer::new(config, &training).context("cannot build the model")?;
    let mut model = Some(model.with_precision(args.precision));
    let images = random_images(args, &training);
    let targets: Vec<usize> = (0..args.batch).map(|i| i % config.num_classes).collect();
    // The reference's update: SGD with momentum 0.9, clipping at global norm 1.
    let mut optimizer = Optimizer::new(Rule::Sgd { momentum: 0.9 });
    time(args, || {
        let current = model
            .take()
            .context("the model was lost in a failed step")?;
        let loss = cross_entropy(current.forward(images.clone()), &targets, 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &current);
        let (updated, norm) = optimizer.step(current, grads, 0.01, Some(1.0));
        if !norm.is_finite() {
            bail!("the gradient norm became {norm}");
        }
        // Reading the class token back waits for the update itself (on asynchronous
        // devices such as CUDA).
        if let Some(cls) = &updated.cls {
            cls.val()
                .try_into_vec_as::<f32>()
                .context("reading weights back")?;
        }
        model = Some(updated);
        Ok(())
    })
}

fn summarise(args: &BenchArgs, mut times_ms: Vec<f64>) -> Case {
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms[times_ms.len() / 2];
    Case {
        case: if args.train { "train" } else { "infer" },
        model: args.model.clone(),
        resolution: args.image_size,
        batch: args.batch,
        device: args.device.clone(),
        precision: args.precision,
        median_ms: median,
        min_ms: times_ms[0],
        runs: times_ms.len(),
        images_per_sec: args.batch as f64 * 1e3 / median,
        peak_memory_bytes: peak_memory_bytes(),
    }
}

/// Linux's high-water mark of the process's resident memory.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
