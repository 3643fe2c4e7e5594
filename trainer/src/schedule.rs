//! The reference learning-rate schedule: linear warmup, then cosine or linear
//! decay, as Google's `vit_jax` (`utils.create_learning_rate_schedule`).

/// How the learning rate falls after warmup.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// `base · 0.5 · (1 + cos(π·progress))`, reaching 0 at the last step.
    Cosine,
    /// `LINEAR_END + (base − LINEAR_END) · (1 − progress)`.
    Linear,
}

/// Where linear decay ends: the reference's `linear_end` default (it does not
/// decay to 0, and the fine-tuning script never overrides it).
pub const LINEAR_END: f64 = 1e-5;

/// A learning-rate schedule over `total_steps` updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate for update `step`, counted from 0.
    ///
    /// The reference's optimiser (optax) calls the schedule with its update
    /// count, which starts at 0, so with warmup the first update has rate 0.
    /// Computed in f64 where the reference uses f32; the values differ only
    /// by f32 rounding.
    pub fn lr_at(&self, step: usize) -> f64 {
        let step_f = step as f64;
        let warmup = self.warmup_steps as f64;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if decay_steps == 0 {
            // The reference divides by zero here (NaN at step == warmup);
            // with no decay phase, warm up and then stay at the end value.
            if step < self.warmup_steps { 0.0 } else { 1.0 }
        } else {
            ((step_f - warmup) / decay_steps as f64).clamp(0.0, 1.0)
        };
        let lr = match self.decay {
            Decay::Cosine => self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => LINEAR_END + (self.base_lr - LINEAR_END) * (1.0 - progress),
        };
        if self.warmup_steps > 0 {
            lr * (step_f / warmup).min(1.0)
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay, warmup_steps: usize, total_steps: usize) -> Schedule {
        Schedule {
            base_lr: 0.1,
            warmup_steps,
            total_steps,
            decay,
        }
    }

    fn assert_lr(s: &Schedule, step: usize, expected: f64) {
        let got = s.lr_at(step);
        assert!(
            (got - expected).abs() <= 1e-12,
            "{:?} step {step}: {got} != {expected}",
            s.decay
        );
    }

    #[test]
    fn cosine_with_warmup() {
        // warmup 10, then 100 decay steps; base 0.1.
        let s = schedule(Decay::Cosine, 10, 110);
        assert_lr(&s, 0, 0.0);
        assert_lr(&s, 1, 0.01); // 0.1 · 1/10
        assert_lr(&s, 5, 0.05);
        assert_lr(&s, 10, 0.1);
        assert_lr(&s, 35, 0.085_355_339_059_327_38); // 0.05 · (1 + cos(π/4))
        assert_lr(&s, 60, 0.05); // halfway: cos(π/2) = 0
        assert_lr(&s, 110, 0.0);
        assert_lr(&s, 500, 0.0); // progress is clipped at 1
    }

    #[test]
    fn linear_with_warmup_ends_at_linear_end() {
        let s = schedule(Decay::Linear, 10, 110);
        assert_lr(&s, 0, 0.0);
        assert_lr(&s, 1, 0.01); // progress 0: the full 0.1, times 1/10
        assert_lr(&s, 10, 0.1);
        assert_lr(&s, 35, 0.075_002_5); // 1e-5 + 0.09999 · 0.75
        assert_lr(&s, 60, 0.050_005); // 1e-5 + 0.09999 · 0.5
        assert_lr(&s, 110, 1e-5);
        assert_lr(&s, 500, 1e-5);
    }

    #[test]
    fn no_warmup_starts_at_base() {
        let cos = schedule(Decay::Cosine, 0, 100);
        assert_lr(&cos, 0, 0.1);
        assert_lr(&cos, 1, 0.099_975_328_018_286_58); // 0.05 · (1 + cos(π/100))
        assert_lr(&cos, 50, 0.05);
        assert_lr(&cos, 100, 0.0);
        let lin = schedule(Decay::Linear, 0, 100);
        assert_lr(&lin, 0, 0.1);
        assert_lr(&lin, 1, 0.099_000_1); // 1e-5 + 0.09999 · 0.99
        assert_lr(&lin, 100, 1e-5);
    }

    #[test]
    fn all_warmup_is_finite() {
        // total == warmup: no decay phase, and no NaN at step == warmup.
        for decay in [Decay::Cosine, Decay::Linear] {
            let s = schedule(decay, 10, 10);
            assert_lr(&s, 0, 0.0);
            assert_lr(&s, 5, 0.05);
            let end = if decay == Decay::Cosine { 0.0 } else { 1e-5 };
            assert_lr(&s, 10, end);
            assert_lr(&s, 20, end);
        }
        // Also with nothing to do at all.
        assert_lr(&schedule(Decay::Cosine, 0, 0), 0, 0.0);
    }
}
