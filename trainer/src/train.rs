//! `trainer train`: fine-tuning with the reference recipe.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::RngExt;
use serde_json::json;
use vit::{Checkpoint, SaveOptions, ViTConfig, VisionTransformer};

use crate::cli::TrainArgs;
use crate::data::{self, Dataset};
use crate::optimizer::Sgd;
use crate::schedule::Schedule;
use crate::{augment, device, eval, pretrained};

/// Mean softmax cross-entropy of `logits` [B, C] against class `targets`.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let device = logits.device();
    let [batch, _] = logits.dims();
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, targets);
    picked.mean().neg()
}

/// Which training example comes at position `k` of the stream: each epoch is a
/// fresh permutation seeded by (seed, epoch), so the order depends only on the step.
pub fn example_at(
    k: usize,
    count: usize,
    seed: u64,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> usize {
    let epoch = k / count;
    if cache.as_ref().is_none_or(|(cached, _)| *cached != epoch) {
        *cache = Some((epoch, permutation(count, seed, epoch as u64)));
    }
    let (_, order) = cache.as_ref().expect("permutation was just computed");
    order[k % count]
}

/// A seeded Fisher–Yates shuffle of `0..count` for one epoch.
fn permutation(count: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // Step u64::MAX is never a training step, so this stream is apart from the augmentations'.
    let mut rng = augment::example_rng(seed, u64::MAX, epoch);
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

pub fn run(args: &TrainArgs) -> Result<()> {
    ensure!(args.steps > 0, "--steps must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    ensure!(
        args.eval_every > 0 && args.log_every > 0,
        "--eval-every and --log-every must be at least 1"
    );
    ensure!(
        args.accum_steps > 0 && args.batch.is_multiple_of(args.accum_steps),
        "--batch {} must be a multiple of --accum-steps {}",
        args.batch,
        args.accum_steps
    );
    let device = device::parse(&args.device)?;
    let splits = load_data(args).context("cannot load the data set")?;
    let (train_set, test_set) = (splits.train, splits.test);
    let classes = train_set.classes.clone();
    eprintln!(
        "data: {} training and {} test images, {} classes",
        train_set.images.len(),
        test_set.images.len(),
        classes.len()
    );

    let model = initial_model(args, classes.len(), &device.clone().autodiff())?;
    let config = model.config().clone();
    fs::create_dir_all(&args.workdir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            args.workdir.display()
        )
    })?;
    fs::write(
        args.workdir.join("config.json"),
        serde_json::to_vec_pretty(&json!({
            "model": config,
            "train": args,
        }))?,
    )?;
    eprintln!(
        "model: {} parameters, {} px, {} classes",
        config.num_params(),
        config.image_size,
        config.num_classes
    );

    let model = train_loop(args, model, &train_set, &test_set, &device)?;
    let export_dir = args.workdir.join("export");
    Checkpoint::from_model(&model.valid(), Some(classes))
        .save(&export_dir, SaveOptions::default())
        .context("cannot write the exported model")?;
    eprintln!("exported the fine-tuned model to {}", export_dir.display());
    Ok(())
}

/// `cifar10` / `cifar100` (downloaded once into the cache), or an image folder.
fn load_data(args: &TrainArgs) -> Result<data::Splits> {
    let cifar = match args.dataset.to_ascii_lowercase().as_str() {
        "cifar10" => Some((data::cifar::CifarKind::Cifar10, &data::download::CIFAR10)),
        "cifar100" => Some((data::cifar::CifarKind::Cifar100, &data::download::CIFAR100)),
        _ => None,
    };
    if let Some((kind, remote)) = cifar {
        let dest = args.cache_dir().join(remote.file_name);
        eprintln!("data set: {}", remote.url);
        data::download::fetch(
            remote.url,
            &dest,
            &remote.expected,
            &mut pretrained::print_progress(),
        )?;
        return Ok(data::cifar::load_cifar(&dest, kind)?);
    }
    let options = data::folder::FolderOptions {
        strict: args.strict,
        val_split: args.val_split,
    };
    let (splits, report) = data::folder::load_image_folder(Path::new(&args.dataset), &options)?;
    if let Some((path, reason)) = report.skipped.first() {
        eprintln!(
            "warning: skipped {} unreadable image(s), e.g. {path}: {reason} (use --strict to fail instead)",
            report.skipped.len()
        );
    }
    Ok(splits)
}

/// The model to start from: pretrained weights with a fresh head, or random.
fn initial_model(
    args: &TrainArgs,
    num_classes: usize,
    device: &Device,
) -> Result<VisionTransformer> {
    let pretrained = pretrained::load(&args.pretrained, &args.cache_dir())?;
    let target = match (&args.model, &pretrained) {
        (Some(model), _) => model_config(model)?,
        (None, Some(checkpoint)) => checkpoint.config.clone(),
        (None, None) => {
            bail!("--pretrained none needs --model (a preset like B/16 or a JSON config file)")
        }
    }
    .with_num_classes(num_classes)
    .with_image_size(args.resolution);
    let mut target = target;
    target.dropout = args.dropout.unwrap_or(target.dropout);
    match pretrained {
        Some(checkpoint) => {
            let adapted = checkpoint
                .for_finetuning(&target)
                .context("the pretrained checkpoint does not fit the model")?;
            Ok(adapted.build(device)?)
        }
        None => Ok(VisionTransformer::new(&target, device)?),
    }
}

fn model_config(model: &str) -> Result<ViTConfig> {
    let path = Path::new(model);
    if path.extension().is_some_and(|ext| ext == "json") {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("invalid model config {}", path.display()));
    }
    Ok(ViTConfig::preset(model)?)
}

fn train_loop(
    args: &TrainArgs,
    mut model: VisionTransformer,
    train_set: &Dataset,
    test_set: &Dataset,
    device: &Device,
) -> Result<VisionTransformer> {
    let training_device = device.clone().autodiff();
    let size = model.config().image_size;
    let schedule = Schedule {
        base_lr: args.lr,
        warmup_steps: args.warmup,
        total_steps: args.steps,
        decay: args.decay,
    };
    let mut optimizer = Sgd::new(args.momentum);
    let micro_batch = args.batch / args.accum_steps;
    let mut metrics = BufWriter::new(
        File::create(args.workdir.join("metrics.jsonl")).context("cannot create metrics.jsonl")?,
    );
    let mut order_cache = None;
    let mut summary = Vec::new();
    let count = train_set.images.len();
    ensure!(count > 0, "the training set is empty");
    for step in 0..args.steps {
        let started = Instant::now();
        let lr = schedule.lr_at(step);
        let indices: Vec<usize> = (0..args.batch)
            .map(|j| example_at(step * args.batch + j, count, args.seed, &mut order_cache))
            .collect();
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        let mut loss_sum = 0.0;
        for micro in indices.chunks(micro_batch) {
            let pixels =
                augment::train_batch(&train_set.images, micro, size, args.seed, step as u64);
            let images = Tensor::<4>::from_data(
                TensorData::new(pixels, [micro.len(), 3, size, size]),
                &training_device,
            );
            let targets: Vec<usize> = micro.iter().map(|&i| train_set.labels[i]).collect();
            let loss = cross_entropy(model.forward(images), &targets) / args.accum_steps as f64;
            loss_sum += f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        if !loss_sum.is_finite() {
            bail!(
                "the loss became {loss_sum} at step {}; lower --lr or check the data",
                step + 1
            );
        }
        let (updated, grad_norm) = optimizer.step(
            model,
            accumulator.grads(),
            lr,
            (args.grad_clip > 0.0).then_some(args.grad_clip),
        );
        model = updated;
        let images_per_sec = args.batch as f64 / started.elapsed().as_secs_f64();
        let number = step + 1;
        let is_eval = number % args.eval_every == 0 || number == args.steps;
        let mut line = json!({
            "step": number, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
            "images_per_sec": images_per_sec,
        });
        if is_eval {
            let predictions = eval::predict_all(&model.valid(), test_set, micro_batch, device);
            let accuracy = eval::accuracy(&predictions, &test_set.labels);
            line["test_accuracy"] = json!(accuracy);
            summary.push((number, loss_sum, accuracy));
            eprintln!("step {number}: test accuracy {:.2}%", accuracy * 100.0);
        }
        if is_eval || number % args.log_every == 0 || number == 1 {
            writeln!(metrics, "{line}")?;
            metrics.flush()?;
            eprintln!(
                "step {number}/{}: loss {loss_sum:.4} lr {lr:.5} grad norm {grad_norm:.3} {images_per_sec:.1} img/s",
                args.steps
            );
        }
    }
    write_summary(&args.workdir, &summary)?;
    Ok(model)
}

/// The table of the reference run: step | train loss | test accuracy.
fn write_summary(workdir: &Path, rows: &[(usize, f64, f64)]) -> Result<()> {
    let mut table = String::from("| step | train loss | test accuracy |\n|---:|---:|---:|\n");
    for (step, loss, accuracy) in rows {
        table.push_str(&format!(
            "| {step} | {loss:.4} | {:.2}% |\n",
            accuracy * 100.0
        ));
    }
    println!("{table}");
    fs::write(workdir.join("summary.md"), table).context("cannot write summary.md")
}

#[cfg(test)]
mod tests {
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
    fn accumulated_micro_batches_equal_one_large_batch() {
        let device = Device::flex().autodiff();
        let config = ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 8,
            mlp_dim: 16,
            num_heads: 2,
            num_layers: 1,
            num_classes: 3,
            ..ViTConfig::preset("Ti/16").unwrap()
        };
        let mut model = VisionTransformer::new(&config, &device).unwrap();
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

    #[test]
    fn data_order_is_a_permutation_per_epoch_and_depends_only_on_position() {
        let mut cache = None;
        let first_epoch: Vec<usize> = (0..10).map(|k| example_at(k, 10, 1, &mut cache)).collect();
        let mut sorted = first_epoch.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second_epoch: Vec<usize> = (10..20).map(|k| example_at(k, 10, 1, &mut cache)).collect();
        assert_ne!(first_epoch, second_epoch);
        let mut fresh = None;
        assert_eq!(example_at(13, 10, 1, &mut fresh), second_epoch[3]);
    }
}
