//! The training input pipeline: a worker thread picks and augments the next
//! micro-batches while the device computes the current one. Every batch is a
//! pure function of (seed, step, position), so thread timing cannot change it.

use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use rand::RngExt;

use vit::ViTConfig;
use vit::preprocess::Normalization;

use crate::augment::{self, Augmentation, Positions};
use crate::data::Dataset;
use crate::mixing::Mixing;

/// One micro-batch, ready for the device: `[len, 3, size, size]` pixels.
pub struct MicroBatch {
    pub step: usize,
    pub pixels: Vec<f32>,
    pub targets: Vec<usize>,
    /// The weight of each example's own label; the rest goes to the label of the
    /// example at the mirrored position (mixup, CutMix). 1 when not mixed.
    pub lambda: f64,
    /// With stochastic depth: `[len, 2 × layers]` decisions, 1 (keep) or 0 (drop), for
    /// each example's residual branches ([`vit::VisionTransformer::forward_training`]).
    pub keep: Option<Vec<f32>>,
}

/// Stochastic depth, as far as the pipeline draws its decisions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropPath {
    /// The last block's rate ([`ViTConfig::drop_path`]).
    pub rate: f64,
    pub layers: usize,
}

impl DropPath {
    /// `None` when the model drops nothing.
    pub fn of(config: &ViTConfig) -> Option<Self> {
        (config.drop_path > 0.0).then_some(Self {
            rate: config.drop_path,
            layers: config.num_layers,
        })
    }

    /// One example's `2 × layers` decisions: each block's attention branch, then its
    /// MLP branch, kept with probability `1 − rate` of that block.
    fn draw(self, rng: &mut impl rand::Rng) -> impl Iterator<Item = f32> {
        (0..2 * self.layers).map(move |column| {
            let rate = ViTConfig::stochastic_depth(self.rate, self.layers, column / 2);
            if rng.random::<f64>() < rate { 0.0 } else { 1.0 }
        })
    }
}

/// How updates are cut out of the shuffled stream of training examples.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Examples per update.
    pub batch: usize,
    /// Examples per forward pass; divides `batch`.
    pub micro_batch: usize,
    pub seed: u64,
    /// Image side in pixels.
    pub size: usize,
    /// What happens to each training example.
    pub augmentation: Augmentation,
    /// Mixup and CutMix of each micro-batch.
    pub mixing: Mixing,
    /// The model's input normalisation.
    pub normalization: Normalization,
    /// The model's stochastic depth, if any.
    pub drop_path: Option<DropPath>,
}

/// The random stream of micro-batch `part`'s mixing is `example_rng(seed, step,
/// MIXING_STREAM + part)`: no example position comes near it.
const MIXING_STREAM: u64 = 1 << 63;

/// The random stream of the stochastic-depth decisions of the example at position `k` of
/// an update is `example_rng(seed, step, DROP_PATH_STREAM + k)`: a function of the
/// example's place, not of how the update is split into micro-batches or over devices.
const DROP_PATH_STREAM: u64 = 1 << 62;

/// How many micro-batches the worker prepares ahead of the one in use.
const AHEAD: usize = 2;

/// Runs `consume` with a receiver of the micro-batches of `steps`, in order,
/// prepared on a worker thread. When `consume` returns early the worker stops.
pub fn with_batches<R>(
    data: &Dataset,
    plan: Plan,
    steps: Range<usize>,
    consume: impl FnOnce(&Receiver<MicroBatch>) -> R,
) -> R {
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel(AHEAD);
        scope.spawn(move || produce(data, plan, steps, &sender));
        let result = consume(&receiver);
        // Unblocks a worker waiting to send, so that the scope can end.
        drop(receiver);
        result
    })
}

fn produce(data: &Dataset, plan: Plan, steps: Range<usize>, sender: &SyncSender<MicroBatch>) {
    let count = data.images.len();
    let mut order = None;
    for step in steps {
        let indices: Vec<usize> = (0..plan.batch)
            .map(|j| example_at(step * plan.batch + j, count, plan.seed, &mut order))
            .collect();
        for (part, micro) in indices.chunks(plan.micro_batch).enumerate() {
            let positions = Positions {
                seed: plan.seed,
                step: step as u64,
                first: part * plan.micro_batch,
            };
            let mut pixels = augment::train_batch(
                &data.images,
                micro,
                plan.size,
                plan.augmentation,
                &plan.normalization,
                positions,
            );
            let lambda = plan.mixing.apply(
                &mut pixels,
                plan.size,
                &mut augment::example_rng(plan.seed, step as u64, MIXING_STREAM + part as u64),
            );
            let targets = micro.iter().map(|&i| data.labels[i]).collect();
            let keep = plan.drop_path.map(|drop_path| {
                (0..micro.len())
                    .flat_map(|j| {
                        let position = (part * plan.micro_batch + j) as u64;
                        let mut rng = augment::example_rng(
                            plan.seed,
                            step as u64,
                            DROP_PATH_STREAM + position,
                        );
                        drop_path.draw(&mut rng).collect::<Vec<_>>()
                    })
                    .collect()
            });
            let batch = MicroBatch {
                step,
                pixels,
                targets,
                lambda,
                keep,
            };
            if sender.send(batch).is_err() {
                return;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use vit::preprocess::RgbImage;

    use super::*;

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

    fn tiny_data() -> Dataset {
        let images = (0..7)
            .map(|i| RgbImage {
                width: 6,
                height: 5,
                pixels: (0..90).map(|p| (p * 7 + i * 31) as u8).collect(),
            })
            .collect();
        Dataset {
            images,
            labels: vec![0, 1, 0, 1, 0, 1, 1],
            classes: vec!["a".into(), "b".into()],
        }
    }

    /// 4 px examples with the reference's augmentation and no mixing.
    fn plan(batch: usize, micro_batch: usize, seed: u64) -> Plan {
        Plan {
            batch,
            micro_batch,
            seed,
            size: 4,
            augmentation: Augmentation::area(augment::MIN_CROP_AREA),
            mixing: Mixing::NONE,
            normalization: Normalization::REFERENCE,
            drop_path: None,
        }
    }

    fn collect(
        data: &Dataset,
        plan: Plan,
        steps: Range<usize>,
    ) -> Vec<(usize, Vec<f32>, Vec<usize>)> {
        with_batches(data, plan, steps, |batches| {
            batches
                .iter()
                .map(|batch| {
                    assert_eq!(batch.lambda, 1.0);
                    (batch.step, batch.pixels, batch.targets)
                })
                .collect()
        })
    }

    #[test]
    fn batches_do_not_depend_on_where_a_run_starts_or_how_it_is_cut() {
        let data = tiny_data();
        let plan = plan(4, 2, 9);
        let whole = collect(&data, plan, 0..5);
        assert_eq!(whole.len(), 10);
        assert_eq!(whole[4].0, 2);
        // A resumed run (starting at step 3) sees exactly the same batches.
        assert_eq!(collect(&data, plan, 3..5), whole[6..]);
        // One micro-batch per update gives the same examples, concatenated.
        let unsplit = collect(
            &data,
            Plan {
                micro_batch: 4,
                ..plan
            },
            0..5,
        );
        for (step, (_, pixels, targets)) in unsplit.iter().enumerate() {
            let halves = &whole[2 * step..2 * step + 2];
            assert_eq!(*pixels, [halves[0].1.clone(), halves[1].1.clone()].concat());
            assert_eq!(
                *targets,
                [halves[0].2.clone(), halves[1].2.clone()].concat()
            );
        }
    }

    #[test]
    fn stopping_early_ends_the_worker() {
        let data = tiny_data();
        let plan = plan(2, 1, 0);
        let first = with_batches(&data, plan, 0..1_000_000, |batches| {
            batches.recv().expect("one batch").targets
        });
        assert_eq!(first.len(), 1);
    }

    #[test]
    fn mixed_batches_are_the_same_in_a_resumed_run() {
        let data = tiny_data();
        let plan = Plan {
            mixing: Mixing {
                mixup: 1.0,
                cutmix: 1.0,
                prob: 1.0,
                switch_prob: 0.5,
            },
            ..plan(4, 2, 4)
        };
        let run = |steps: Range<usize>| {
            with_batches(&data, plan, steps, |batches| {
                batches
                    .iter()
                    .map(|batch| (batch.step, batch.pixels, batch.lambda))
                    .collect::<Vec<_>>()
            })
        };
        let whole = run(0..4);
        assert!(whole.iter().any(|(_, _, lambda)| *lambda < 1.0));
        assert_eq!(run(2..4), whole[4..]);
    }

    #[test]
    fn drop_path_decisions_belong_to_the_example_position_and_keep_the_rate() {
        let data = tiny_data();
        let drop_path = DropPath {
            rate: 0.4,
            layers: 3,
        };
        let dropping = Plan {
            drop_path: Some(drop_path),
            ..plan(4, 2, 5)
        };
        let keep = |plan: Plan| {
            with_batches(&data, plan, 0..200, |batches| {
                batches
                    .iter()
                    .flat_map(|batch| batch.keep.expect("decisions"))
                    .collect::<Vec<f32>>()
            })
        };
        let split = keep(dropping);
        // Cut into micro-batches differently, each example keeps its decisions.
        assert_eq!(
            keep(Plan {
                micro_batch: 4,
                ..dropping
            }),
            split
        );
        assert_eq!(split.len(), 200 * 4 * 6);
        // Block 0 never drops; blocks 1 and 2 drop at 0.2 and 0.4.
        for (column, rate) in [0.0, 0.0, 0.2, 0.2, 0.4, 0.4].into_iter().enumerate() {
            let values: Vec<f32> = split.iter().skip(column).step_by(6).copied().collect();
            assert!(values.iter().all(|&v| v == 0.0 || v == 1.0));
            let dropped = values.iter().filter(|&&v| v == 0.0).count() as f64 / 800.0;
            assert!((dropped - rate).abs() < 0.05, "column {column}: {dropped}");
        }
        assert_eq!(
            with_batches(&data, plan(4, 2, 5), 0..1, |b| b.recv().unwrap().keep),
            None
        );
    }
}
