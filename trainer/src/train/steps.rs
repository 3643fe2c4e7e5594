//! The training loop: updates over micro-batches, metrics, evaluations and
//! checkpoints, until the last step or a stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use indicatif::ProgressBar;
use vit::VisionTransformer;

use super::Completion;
use super::replicas::{LossOptions, Replicas};
use crate::data::Dataset;
use crate::ema::Ema;
use crate::metrics::{Metrics, MetricsLine};
use crate::optimizer::{self, Optimizer};
use crate::pipeline::{self, DropPath, MicroBatch, Plan};
use crate::recipe::RunOptions;
use crate::{augment, checkpoint, device, eval, progress};

/// Mean softmax cross-entropy of `logits` [B, C] against class `targets`, with label
/// smoothing `smoothing` as PyTorch's `CrossEntropyLoss(label_smoothing=…)`:
/// `(1 − s)·(−log p_target) + s·mean_c(−log p_c)`. With 0 it is the plain loss.
pub fn cross_entropy(logits: Tensor<2>, targets: &[usize], smoothing: f64) -> Tensor<1> {
    let device = logits.device();
    let [batch, _] = logits.dims();
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, 1]), &device);
    let log_probabilities = log_softmax(logits, 1);
    let target_loss = log_probabilities.clone().gather(1, targets).mean().neg();
    if smoothing == 0.0 {
        return target_loss;
    }
    let uniform_loss = log_probabilities.mean().neg();
    target_loss * (1.0 - smoothing) + uniform_loss * smoothing
}

/// [`cross_entropy`] of a mixed micro-batch: weight `lambda` on each example's own target
/// and `1 − lambda` on its partner's (mixup, CutMix: the example at the mirrored position
/// of the whole micro-batch).
pub fn mixed_cross_entropy(
    logits: Tensor<2>,
    targets: &[usize],
    partners: &[usize],
    lambda: f64,
    smoothing: f64,
) -> Tensor<1> {
    if lambda >= 1.0 {
        return cross_entropy(logits, targets, smoothing);
    }
    cross_entropy(logits.clone(), targets, smoothing) * lambda
        + cross_entropy(logits, partners, smoothing) * (1.0 - lambda)
}

/// Where training starts: a fresh model, or a checkpoint's.
pub struct Start {
    pub model: VisionTransformer,
    pub optimizer: Optimizer,
    /// The weights' moving average, with `--ema`.
    pub ema: Option<Ema>,
    /// Updates already done.
    pub step: usize,
    pub metrics: Metrics,
}

/// What every step of a run reads.
pub struct Run<'a> {
    pub options: &'a RunOptions,
    /// `--stop-after`: stop with a checkpoint once this many updates are done.
    pub stop_after: Option<usize>,
    pub classes: &'a [String],
    pub train_set: &'a Dataset,
    pub test_set: &'a Dataset,
    /// The devices; the first holds the weights and evaluates.
    pub replicas: &'a Replicas,
    pub interrupted: Arc<AtomicBool>,
}

/// The model a run evaluates and exports (without gradients): the moving average with
/// `--ema`, else the weights; in the precision `model` computes in.
fn evaluated(model: &VisionTransformer, ema: &Option<Ema>) -> VisionTransformer {
    match ema {
        Some(ema) => ema.model().clone().with_precision(model.precision()),
        None => model.valid(),
    }
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
    pub fn train(
        &self,
        start: Start,
    ) -> Result<Result<(VisionTransformer, Option<f64>), Completion>> {
        let RunOptions { recipe, runtime } = self.options;
        ensure!(
            !self.train_set.images.is_empty(),
            "the training set is empty"
        );
        let Start {
            mut model,
            mut optimizer,
            mut ema,
            step: first,
            mut metrics,
        } = start;
        // Not part of the checkpoint: a resumed run may change it.
        model = model.with_precision(runtime.precision);
        let plan = Plan {
            batch: recipe.batch,
            micro_batch: recipe.micro_batch(),
            seed: recipe.seed,
            size: model.config().image_size,
            augmentation: recipe.augmentation(),
            mixing: recipe.mixing(),
            normalization: model.config().normalization,
            drop_path: DropPath::of(model.config()),
        };
        let steps = recipe.steps;
        let bar = progress::training(steps, first);
        let mut last_checkpoint = (first > 0).then_some(first);
        let outcome = pipeline::with_batches(self.train_set, plan, first..steps, |batches| {
            for step in first..steps {
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
                // Also the last update, whose weights nothing would compute with again.
                if !optimizer::all_finite(&model.valid()) {
                    bar.abandon();
                    bail!(
                        "the update of step {number} (lr {lr:e}) made some weights infinite or NaN; \
                         {}. Lower --lr",
                        self.kept_checkpoint(last_checkpoint)
                    );
                }
                if let Some(ema) = &mut ema {
                    ema.update(&model);
                }
                let images_per_sec = recipe.batch as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {loss:.4} lr {lr:.2e} {images_per_sec:.1} img/s"
                ));
                bar.inc(1);
                let mut line = MetricsLine {
                    step: number,
                    loss,
                    lr,
                    grad_norm,
                    images_per_sec,
                    test_accuracy: None,
                };
                let is_eval = number % runtime.eval_every == 0 || number == steps;
                if is_eval {
                    bar.set_message(format!(
                        "evaluating on {} test images",
                        self.test_set.images.len()
                    ));
                    let accuracy = self.test_accuracy(&evaluated(&model, &ema), plan.micro_batch);
                    line.test_accuracy = Some(accuracy);
                    progress::log(
                        &bar,
                        &format!("step {number}: test accuracy {:.2}%", accuracy * 100.0),
                    );
                }
                if is_eval || number % runtime.log_every == 0 || number == 1 {
                    metrics.record(&line)?;
                    progress::log(
                        &bar,
                        &format!(
                            "step {number}/{steps}: loss {loss:.6} lr {lr:.6} grad norm {grad_norm:.4} {images_per_sec:.1} img/s"
                        ),
                    );
                }
                if is_eval {
                    metrics.write_plot()?;
                }
                let stop_here = self.stop_after == Some(number);
                let interrupted = self.interrupted.load(Ordering::SeqCst);
                if interrupted
                    || stop_here
                    || number % runtime.checkpoint_every == 0
                    || number == steps
                {
                    bar.set_message("writing a checkpoint");
                    self.save(&model, &optimizer, ema.as_ref(), number)?;
                    last_checkpoint = Some(number);
                }
                if (interrupted || stop_here) && number < steps {
                    bar.abandon();
                    eprintln!(
                        "{}: checkpoint at step {number} in {}; continue with: trainer --resume --workdir {}",
                        if interrupted {
                            "interrupted"
                        } else {
                            "stopped as asked"
                        },
                        checkpoint::dir(&runtime.workdir).display(),
                        runtime.workdir.display()
                    );
                    return Ok(Err(if interrupted {
                        Completion::Interrupted
                    } else {
                        Completion::Stopped
                    }));
                }
            }
            Ok(Ok(evaluated(&model, &ema)))
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

    /// One update (`step` counted from 0) over its micro-batches, each shared out
    /// over the devices.
    fn update(
        &self,
        model: VisionTransformer,
        optimizer: &mut Optimizer,
        step: usize,
        batches: &Receiver<MicroBatch>,
    ) -> Result<(VisionTransformer, StepReport)> {
        let recipe = &self.options.recipe;
        let options = LossOptions {
            label_smoothing: recipe.label_smoothing,
            weight: 1.0 / recipe.accum_steps as f64,
        };
        let devices = self.replicas.count();
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        let mut loss = 0.0;
        for part in 0..recipe.accum_steps {
            let batch = batches.recv().context("the input pipeline stopped")?;
            debug_assert_eq!(batch.step, step);
            // One device: the seed of micro-batch `part`, as before there were several.
            let seed = |shard: usize| {
                augment::model_seed(recipe.seed, step as u64, (part * devices + shard) as u64)
            };
            let (part_loss, grads) = self.replicas.gradients(&model, &batch, options, seed)?;
            loss += part_loss;
            device::on_pool(|| accumulator.accumulate(&model, grads));
        }
        let lr = recipe.schedule().lr_at(step);
        let clip = (recipe.grad_clip > 0.0).then_some(recipe.grad_clip);
        let (model, grad_norm) =
            device::on_pool(|| optimizer.step(model, accumulator.grads(), lr, clip));
        Ok((
            model,
            StepReport {
                loss,
                grad_norm,
                lr,
            },
        ))
    }

    /// `model` without gradients.
    fn test_accuracy(&self, model: &VisionTransformer, batch: usize) -> f64 {
        let hidden = ProgressBar::hidden();
        let predictions =
            eval::predict_all(model, self.test_set, batch, self.replicas.main(), &hidden);
        eval::accuracy(&predictions, &self.test_set.labels)
    }

    fn kept_checkpoint(&self, last: Option<usize>) -> String {
        match last {
            Some(step) => format!(
                "the last good checkpoint (step {step}) is kept in {}",
                checkpoint::dir(&self.options.runtime.workdir).display()
            ),
            None => "no checkpoint had been written yet".to_string(),
        }
    }

    fn save(
        &self,
        model: &VisionTransformer,
        optimizer: &Optimizer,
        ema: Option<&Ema>,
        completed: usize,
    ) -> Result<()> {
        let state = checkpoint::State {
            step: completed,
            args: self.options.clone(),
            classes: self.classes.to_vec(),
        };
        checkpoint::save(&self.options.runtime.workdir, model, optimizer, ema, &state).with_context(
            || {
                format!(
                    "cannot write the checkpoint in {}",
                    self.options.runtime.workdir.display()
                )
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_classes() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([2, 10], &device);
        let loss = cross_entropy(logits.clone(), &[3, 7], 0.0).into_scalar::<f32>();
        assert!((loss - 10f32.ln()).abs() < 1e-6);
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0], [1, 2]), &device);
        let loss = cross_entropy(logits.clone(), &[1], 0.0).into_scalar::<f32>();
        assert!((loss - (1.0 + (-2f32).exp()).ln() - 2.0).abs() < 1e-6);
        // Smoothing 0.1 as PyTorch: 0.9·(−log p₁) + 0.1·mean(−log p₀, −log p₁).
        let smoothed = cross_entropy(logits, &[1], 0.1).into_scalar::<f32>();
        let log_p = |x: f32| x - (2f32.exp() + 1.0).ln();
        let expected = 0.9 * -log_p(0.0) + 0.1 * -(log_p(2.0) + log_p(0.0)) / 2.0;
        assert!(
            (smoothed - expected).abs() < 1e-6,
            "{smoothed} vs {expected}"
        );
    }

    #[test]
    fn mixed_loss_is_timms_soft_target_cross_entropy() {
        // timm: target = λ·smooth(one_hot(t)) + (1 − λ)·smooth(one_hot(flip(t))) with
        // smooth(y) = y·(1 − s) + s/C, loss = mean over the batch of −Σ target·log p.
        let device = Device::flex();
        let values: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let logits = Tensor::<2>::from_data(TensorData::new(values.clone(), [3, 5]), &device);
        let targets = [4, 0, 2];
        let (lambda, smoothing) = (0.3, 0.1);
        let partners = [2, 0, 4];
        let got = mixed_cross_entropy(logits, &targets, &partners, lambda, smoothing)
            .into_scalar::<f32>();
        let mut expected = 0.0;
        for (b, row) in values.chunks(5).enumerate() {
            let log_sum = row.iter().map(|v| f64::from(*v).exp()).sum::<f64>().ln();
            for (c, &v) in row.iter().enumerate() {
                let smooth =
                    |t: usize| (if t == c { 1.0 - smoothing } else { 0.0 }) + smoothing / 5.0;
                let target = lambda * smooth(targets[b]) + (1.0 - lambda) * smooth(targets[2 - b]);
                expected -= target * (f64::from(v) - log_sum) / 3.0;
            }
        }
        assert!(
            (f64::from(got) - expected).abs() < 1e-5,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn accumulated_micro_batches_equal_one_large_batch() {
        let device = Device::flex().autodiff();
        let mut model =
            VisionTransformer::new(&super::super::tests::tiny_config(), &device).unwrap();
        // A non-zero head, so that every parameter gets a gradient.
        model.head = Some(burn::nn::LinearConfig::new(8, 3).init(&device));
        let images = Tensor::<4>::random([4, 3, 8, 8], Distribution::Uniform(-1.0, 1.0), &device);
        let targets = [0, 2, 1, 2];
        let whole = cross_entropy(model.forward(images.clone()), &targets, 0.0);
        let whole = GradientsParams::from_grads(whole.backward(), &model);
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        for half in 0..2 {
            let part = images.clone().narrow(0, half * 2, 2);
            let loss =
                cross_entropy(model.forward(part), &targets[half * 2..half * 2 + 2], 0.0) / 2.0;
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let accumulated = accumulator.grads();
        let norm_whole = Optimizer::global_norm(&model, &whole);
        let norm_accumulated = Optimizer::global_norm(&model, &accumulated);
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
