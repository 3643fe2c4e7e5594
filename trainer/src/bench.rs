//! `trainer bench`: time the model's forward pass (random weights) and print it.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Distribution, Tensor};
use vit::{ViTConfig, VisionTransformer};

use crate::cli::BenchArgs;
use crate::device;

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = device::parse(&args.device)?;
    let config = ViTConfig::preset(&args.model)?
        .with_image_size(args.image_size)
        .with_num_classes(args.num_classes);
    let model = VisionTransformer::new(&config, &device).context("cannot build the model")?;
    let images = Tensor::<4>::random(
        [args.batch, 3, args.image_size, args.image_size],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let forward = || {
        let logits = model.forward(images.clone());
        // Reading the result back waits for the device to finish.
        logits
            .try_into_vec_as::<f32>()
            .context("reading logits back")
    };
    for _ in 0..args.warmup {
        forward()?;
    }
    let mut times_ms = Vec::with_capacity(args.iterations as usize);
    for _ in 0..args.iterations {
        let start = Instant::now();
        forward()?;
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms[times_ms.len() / 2];
    println!(
        "{} {}px batch {} on {}: median {:.1} ms per forward ({:.1} images/s), min {:.1} ms, {} runs",
        args.model,
        args.image_size,
        args.batch,
        args.device,
        median,
        args.batch as f64 * 1e3 / median,
        times_ms[0],
        times_ms.len()
    );
    Ok(())
}
