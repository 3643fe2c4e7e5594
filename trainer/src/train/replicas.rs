//! Data parallelism: each micro-batch is cut into equal shards, one per device; every
//! device computes its shard's loss and gradients on a replica of the model, and the
//! gradients are summed on the first device, where the optimizer then updates the one
//! set of weights (which every replica copies at the next micro-batch).
//!
//! Why not burn's collectives: burn 0.22's `burn::tensor::distributed` (`all_reduce`,
//! and the autodiff hooks that call it during the backward pass) is implemented only
//! for its cubecl CUDA and remote backends. burn-backend-extension's catalog marks
//! Flex, NdArray and LibTorch `distributed: false`, so on the devices this project
//! builds `DistributedContext::init` panics in burn-dispatch ("Distributed operations
//! are not supported for device"), and below it their `all_reduce` is the trait's
//! `unimplemented!()`. So this does what burn-train's
//! multi-device strategy (`MultiDeviceOptim::OptimMainDevice`) does with burn's public
//! API: `Module::fork` puts the weights on a device, `GradientsParams::to_device` brings
//! the gradients back and `GradientsAccumulator` sums them; one scoped thread per device.
//!
//! The shards of a micro-batch are cut after the whole micro-batch was made (augmented,
//! mixed), and each shard's loss is weighted by its share, so the sum of the shards'
//! gradients is the micro-batch's gradient: a run on N devices computes what a run on one
//! computes, up to the order of floating-point sums.

use std::sync::Mutex;

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use vit::VisionTransformer;

use super::steps::mixed_cross_entropy;
use crate::device;
use crate::pipeline::MicroBatch;

/// The backends' random generators (flex's, libtorch's) are one per process, not one
/// per device: replicas that draw dropout masks take turns seeding and drawing, so that
/// what each draws depends on its seed, not on thread timing.
static RANDOM: Mutex<()> = Mutex::new(());

/// The devices of a run, each with a replica during a micro-batch.
pub struct Replicas {
    /// Without autodiff; the first holds the weights, the optimizer and evaluation.
    devices: Vec<Device>,
}

/// What the loss of a micro-batch depends on besides the model and the examples.
#[derive(Debug, Clone, Copy)]
pub struct LossOptions {
    pub label_smoothing: f64,
    /// The micro-batch's share of the update: `1 / accum_steps`.
    pub weight: f64,
}

impl Replicas {
    pub fn new(devices: Vec<Device>) -> Self {
        assert!(!devices.is_empty(), "a run has at least one device");
        Self { devices }
    }

    /// The device that holds the weights.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    pub fn count(&self) -> usize {
        self.devices.len()
    }

    /// The weighted loss of `batch` (its value) and its gradients on the main device.
    /// `seed(shard)` seeds the model's own randomness for shard `shard` of `count()`.
    pub fn gradients(
        &self,
        model: &VisionTransformer,
        batch: &MicroBatch,
        options: LossOptions,
        seed: impl Fn(usize) -> u64,
    ) -> Result<(f64, GradientsParams)> {
        let count = self.count();
        let len = batch.targets.len();
        assert_eq!(len % count, 0, "checked when the run starts");
        let shard_len = len / count;
        // The partner of each example (mixup, CutMix) is the mirrored example of the
        // whole micro-batch, which may be in another shard.
        let partners: Vec<usize> = batch.targets.iter().rev().copied().collect();
        let pixels_per_example = batch.pixels.len() / len;
        let size = model.config().image_size;
        let shard = |index: usize| Shard {
            pixels: &batch.pixels[index * shard_len * pixels_per_example..]
                [..shard_len * pixels_per_example],
            targets: &batch.targets[index * shard_len..][..shard_len],
            keep: batch.keep.as_ref().map(|keep| {
                let columns = keep.len() / len;
                &keep[index * shard_len * columns..][..shard_len * columns]
            }),
            partners: &partners[index * shard_len..][..shard_len],
            size,
            lambda: batch.lambda,
            smoothing: options.label_smoothing,
            weight: options.weight / count as f64,
            seed: seed(index),
        };
        let stochastic = is_stochastic(model);
        if count == 1 {
            let (shard, device) = (shard(0), self.devices[0].clone().autodiff());
            return Ok(device::on_pool(|| shard.gradients(model, &device, false)));
        }
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .devices
                .iter()
                .enumerate()
                .map(|(index, device)| {
                    let replica = model.clone();
                    let shard = shard(index);
                    scope.spawn(move || {
                        let device = device.clone().autodiff();
                        let replica = replica.fork(&device);
                        shard.gradients(&replica, &device, stochastic)
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(index, handle)| {
                    handle.join().map_err(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic");
                        anyhow!("the replica on device {index} failed: {message}")
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        // Summed in device order, whatever order the threads finished in.
        let mut loss = 0.0;
        let mut accumulator = GradientsAccumulator::<VisionTransformer>::new();
        for (part, grads) in results {
            loss += part;
            accumulator.accumulate(model, grads.to_device(self.main(), model));
        }
        Ok((loss, accumulator.grads()))
    }
}

/// Whether a training forward pass draws random numbers on the device (dropout; the
/// stochastic-depth decisions come with the micro-batch).
fn is_stochastic(model: &VisionTransformer) -> bool {
    let config = model.config();
    config.dropout > 0.0 || config.attention_dropout > 0.0
}

/// One device's part of a micro-batch.
struct Shard<'a> {
    /// `[len, 3, size, size]`, normalised.
    pixels: &'a [f32],
    targets: &'a [usize],
    partners: &'a [usize],
    /// `[len, 2 × layers]` stochastic-depth decisions.
    keep: Option<&'a [f32]>,
    size: usize,
    lambda: f64,
    smoothing: f64,
    /// What the shard's mean loss is multiplied by: its share of the update.
    weight: f64,
    seed: u64,
}

impl Shard<'_> {
    /// The weighted loss (its value) and its gradients, computed by `model` on `device`
    /// (with autodiff). `exclusive`: hold the random generators while drawing.
    fn gradients(
        &self,
        model: &VisionTransformer,
        device: &Device,
        exclusive: bool,
    ) -> (f64, GradientsParams) {
        let images = Tensor::<4>::from_data(
            TensorData::new(
                self.pixels.to_vec(),
                [self.targets.len(), 3, self.size, self.size],
            ),
            device,
        );
        let len = self.targets.len();
        let keep = self.keep.map(|keep| {
            Tensor::<2>::from_data(
                TensorData::new(keep.to_vec(), [len, keep.len() / len]),
                device,
            )
        });
        let logits = {
            let _turn = exclusive.then(|| RANDOM.lock().unwrap_or_else(|e| e.into_inner()));
            device.seed(self.seed);
            model.forward_training(images, keep)
        };
        let loss = mixed_cross_entropy(
            logits,
            self.targets,
            self.partners,
            self.lambda,
            self.smoothing,
        ) * self.weight;
        let value = f64::from(loss.clone().into_scalar::<f32>());
        (value, GradientsParams::from_grads(loss.backward(), model))
    }
}
