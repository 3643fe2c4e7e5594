//! Mixup and CutMix as timm's `Mixup` in its default batch mode: each micro-batch is
//! mixed with itself reversed (example i with example B − 1 − i), by one λ drawn from a
//! Beta distribution; the loss weighs each example's own label by λ and its partner's by
//! 1 − λ, which with label smoothing equals timm's `SoftTargetCrossEntropy` on its
//! `mixup_target` (the cross-entropy is linear in the target).

use rand::{Rng, RngExt};
use rand_distr::{Beta, Distribution};

/// `--mixup`, `--cutmix`, `--mixup-prob`, `--mixup-switch-prob`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixing {
    /// Mixup's Beta(α, α) parameter; 0: no mixup.
    pub mixup: f64,
    /// CutMix's Beta(α, α) parameter; 0: no CutMix.
    pub cutmix: f64,
    /// The probability that a micro-batch is mixed at all.
    pub prob: f64,
    /// With both, the probability of CutMix rather than mixup.
    pub switch_prob: f64,
}

impl Mixing {
    #[cfg(test)]
    pub const NONE: Mixing = Mixing {
        mixup: 0.0,
        cutmix: 0.0,
        prob: 1.0,
        switch_prob: 0.5,
    };

    pub fn enabled(&self) -> bool {
        (self.mixup > 0.0 || self.cutmix > 0.0) && self.prob > 0.0
    }

    /// Mixes the micro-batch `pixels` (`[B, 3, size, size]`) in place, as timm's
    /// `Mixup._mix_batch`, and gives λ, the weight of each example's own label (1 when
    /// the batch is left alone). The draws: whether to mix, CutMix or mixup, λ, then
    /// CutMix's box centre.
    pub fn apply(&self, pixels: &mut [f32], size: usize, rng: &mut impl Rng) -> f64 {
        if !self.enabled() || rng.random::<f64>() >= self.prob {
            return 1.0;
        }
        let cutmix = match (self.mixup > 0.0, self.cutmix > 0.0) {
            (true, true) => rng.random::<f64>() < self.switch_prob,
            (true, false) => false,
            _ => true,
        };
        let alpha = if cutmix { self.cutmix } else { self.mixup };
        let lambda = match Beta::new(alpha, alpha) {
            Ok(beta) => beta.sample(rng),
            Err(_) => return 1.0,
        };
        let example = 3 * size * size;
        if example == 0 {
            return 1.0;
        }
        let original = pixels.to_vec();
        let batch = pixels.len() / example;
        let partner = |b: usize| &original[(batch - 1 - b) * example..][..example];
        if cutmix {
            let (top, bottom, left, right) = cutmix_box(size, lambda, rng);
            for (b, own) in pixels.chunks_exact_mut(example).enumerate() {
                let other = partner(b);
                for plane in 0..3 {
                    for y in top..bottom {
                        let row = plane * size * size + y * size;
                        own[row + left..row + right]
                            .copy_from_slice(&other[row + left..row + right]);
                    }
                }
            }
            // timm's `correct_lam`: the label weight is the area actually kept.
            1.0 - ((bottom - top) * (right - left)) as f64 / (size * size) as f64
        } else {
            let (own_weight, other_weight) = (lambda as f32, (1.0 - lambda) as f32);
            for (b, own) in pixels.chunks_exact_mut(example).enumerate() {
                for (value, &other) in own.iter_mut().zip(partner(b)) {
                    *value = *value * own_weight + other * other_weight;
                }
            }
            lambda
        }
    }
}

/// timm's `rand_bbox`: a box of sides `int(size·√(1 − λ))` centred uniformly in the
/// image, clipped to it; `(top, bottom, left, right)`, bottom and right exclusive.
fn cutmix_box(size: usize, lambda: f64, rng: &mut impl Rng) -> (usize, usize, usize, usize) {
    let cut = (size as f64 * (1.0 - lambda).sqrt()) as usize;
    let cy = rng.random_range(0..size);
    let cx = rng.random_range(0..size);
    let low = |centre: usize| centre.saturating_sub(cut / 2);
    let high = |centre: usize| (centre + cut / 2).min(size);
    (low(cy), high(cy), low(cx), high(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::example_rng;

    /// Two examples of 4x4 px: the first all 1, the second all 3.
    fn two_flat_examples() -> Vec<f32> {
        [vec![1.0; 48], vec![3.0; 48]].concat()
    }

    #[test]
    fn mixup_blends_each_example_with_its_mirror_by_lambda() {
        let mixing = Mixing {
            mixup: 0.8,
            ..Mixing::NONE
        };
        let mut lambdas = Vec::new();
        for trial in 0..500 {
            let mut pixels = two_flat_examples();
            let lambda = mixing.apply(&mut pixels, 4, &mut example_rng(0, trial, 0));
            assert!((0.0..=1.0).contains(&lambda));
            let (first, second) = pixels.split_at(48);
            let expected = (lambda * 1.0 + (1.0 - lambda) * 3.0) as f32;
            assert!(first.iter().all(|&v| (v - expected).abs() < 1e-5));
            let expected = (lambda * 3.0 + (1.0 - lambda) * 1.0) as f32;
            assert!(second.iter().all(|&v| (v - expected).abs() < 1e-5));
            lambdas.push(lambda);
        }
        // Beta(0.8, 0.8): mean 1/2, variance 1/(4·2.6) ≈ 0.096.
        let n = lambdas.len() as f64;
        let mean = lambdas.iter().sum::<f64>() / n;
        let var = lambdas.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        assert!((var - 1.0 / 10.4).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn cutmix_pastes_a_box_and_weighs_labels_by_the_area_kept() {
        let mixing = Mixing {
            cutmix: 1.0,
            ..Mixing::NONE
        };
        let mut saw_a_box = false;
        for trial in 0..300 {
            let mut pixels = two_flat_examples();
            let lambda = mixing.apply(&mut pixels, 4, &mut example_rng(1, trial, 0));
            let (first, second) = pixels.split_at(48);
            let pasted = first.iter().filter(|&&v| v == 3.0).count();
            assert_eq!(pasted + first.iter().filter(|&&v| v == 1.0).count(), 48);
            // The same box in each of the three planes, and in both examples.
            assert_eq!(pasted % 3, 0);
            assert_eq!(second.iter().filter(|&&v| v == 1.0).count(), pasted);
            let kept = 1.0 - (pasted / 3) as f64 / 16.0;
            assert!((lambda - kept).abs() < 1e-12, "{lambda} vs {kept}");
            saw_a_box |= pasted > 0;
        }
        assert!(saw_a_box);
    }

    #[test]
    fn cutmix_boxes_are_timms() {
        // λ = 0.75 on 8 px: cut = int(8·0.5) = 4, half 2, centres anywhere in [0, 8).
        let mut rng = example_rng(2, 2, 2);
        let mut sides = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let (top, bottom, left, right) = cutmix_box(8, 0.75, &mut rng);
            assert!(top <= bottom && bottom <= 8 && left <= right && right <= 8);
            assert!(bottom - top <= 4 && right - left <= 4);
            sides.insert(bottom - top);
        }
        // Clipped at the borders: 2 (centre 0), 3, and 4 inside.
        assert_eq!(sides.into_iter().collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    #[test]
    fn mixing_happens_at_its_probability_and_never_when_off() {
        let mut pixels = two_flat_examples();
        let original = pixels.clone();
        assert_eq!(
            Mixing::NONE.apply(&mut pixels, 4, &mut example_rng(0, 0, 0)),
            1.0
        );
        assert_eq!(pixels, original);
        let sometimes = Mixing {
            mixup: 1.0,
            cutmix: 1.0,
            prob: 0.3,
            switch_prob: 0.5,
        };
        let mixed = (0..2000)
            .filter(|&trial| {
                let mut pixels = two_flat_examples();
                sometimes.apply(&mut pixels, 4, &mut example_rng(3, trial, 0)) < 1.0
            })
            .count();
        // 30% of batches, less the CutMix boxes that come out empty at 4 px.
        assert!((430..=620).contains(&mixed), "{mixed} of 2000 mixed");
    }
}
