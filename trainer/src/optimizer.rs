//! The optimisers, after clipping the gradients to one global norm:
//!
//! - SGD with momentum as the reference uses it (optax `sgd(momentum=0.9)` / PyTorch
//!   without dampening: `t = g + μ·t`, `p = p − lr·t`). burn's own SGD dampens momentum
//!   by default and clips each tensor separately, which is not the reference recipe.
//! - AdamW as PyTorch's `torch.optim.AdamW` computes it, for training from scratch:
//!   decoupled weight decay first (`p = p·(1 − lr·wd)`), then `m = m + (g − m)·(1 − β1)`,
//!   `v = v·β2 + g²·(1 − β2)` and `p = p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`.
//!   As timm, weight decay applies to matrices only: not to biases, LayerNorms, the
//!   position embeddings or the class token.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vit::checkpoint::Array;
use vit::model::sgd::momentum_step;

use crate::parameters::{Parameter, parameters};

/// Which update rule, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Sgd {
        momentum: f64,
    },
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

/// `--optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SGD with momentum, the reference's fine-tuning optimiser.
    #[default]
    Sgd,
    /// AdamW with decoupled weight decay, for training from scratch.
    Adamw,
}

/// The optimiser state: per parameter, SGD's momentum trace or AdamW's first and second
/// moments, each flattened; and the number of updates done.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    steps: u64,
    first: HashMap<ParamId, Tensor<1>>,
    second: HashMap<ParamId, Tensor<1>>,
}

impl Optimizer {
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            steps: 0,
            first: HashMap::new(),
            second: HashMap::new(),
        }
    }

    /// The global L2 norm of all gradients of `module`.
    pub fn global_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
        let mut visitor = SquaredNorm { grads, total: None };
        module.visit(&mut visitor);
        visitor
            .total
            .map_or(0.0, |total| f64::from(total.into_scalar::<f32>()).sqrt())
    }

    /// One update: clip to `max_norm` (if given), then the rule. Returns the updated
    /// module and the gradient norm before clipping. With a non-finite norm nothing
    /// changes, so that no NaN reaches the weights.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: GradientsParams,
        lr: f64,
        max_norm: Option<f64>,
    ) -> (M, f64) {
        let norm = Self::global_norm(&module, &grads);
        if !norm.is_finite() {
            return (module, norm);
        }
        let scale = match max_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        self.steps += 1;
        let decayed = parameters(&module)
            .into_iter()
            .filter(decays)
            .map(|parameter| parameter.id)
            .collect();
        let mut update = Update {
            grads,
            state: self,
            lr,
            scale,
            decayed,
        };
        (module.map(&mut update), norm)
    }

    /// The buffers by name, each in its parameter's shape, for checkpoints: SGD's
    /// `momentum.PATH`, AdamW's `exp_avg.PATH` and `exp_avg_sq.PATH`, where PATH is the
    /// parameter's (`encoder.blocks.0.mlp.dense_0.weight`). Parameters without buffers
    /// (before their first update) are left out: a missing buffer means zeros.
    pub fn buffers<M: Module>(&self, module: &M) -> BTreeMap<String, Array> {
        let mut out = BTreeMap::new();
        for parameter in parameters(module) {
            for (prefix, buffers) in self.named_buffers() {
                if let Some(buffer) = buffers.get(&parameter.id) {
                    let values = buffer
                        .clone()
                        .try_into_vec_as::<f32>()
                        .expect("reading an optimiser buffer back from the device");
                    out.insert(
                        format!("{prefix}.{}", parameter.path),
                        Array::new(parameter.shape.clone(), values),
                    );
                }
            }
        }
        out
    }

    /// The optimiser with the buffers [`Self::buffers`] saved after `steps` updates,
    /// filed under `module`'s parameters (on `device`, without gradients). Every saved
    /// buffer must belong to a parameter of the same shape.
    pub fn with_buffers<M: Module>(
        rule: Rule,
        steps: u64,
        module: &M,
        mut saved: BTreeMap<String, Array>,
        device: &Device,
    ) -> Result<Self, String> {
        let mut optimizer = Self::new(rule);
        optimizer.steps = steps;
        let prefixes: Vec<&str> = optimizer
            .named_buffers()
            .map(|(prefix, _)| prefix)
            .collect();
        for parameter in parameters(module) {
            for (slot, prefix) in prefixes.iter().enumerate() {
                let Some(array) = saved.remove(&format!("{prefix}.{}", parameter.path)) else {
                    continue;
                };
                if array.shape != parameter.shape {
                    return Err(format!(
                        "the {prefix} of `{}` has shape {:?} but the parameter {:?}",
                        parameter.path, array.shape, parameter.shape
                    ));
                }
                let count = array.data.len();
                let buffer = Tensor::<1>::from_data(TensorData::new(array.data, [count]), device);
                let buffers = if slot == 0 {
                    &mut optimizer.first
                } else {
                    &mut optimizer.second
                };
                buffers.insert(parameter.id, buffer);
            }
        }
        if let Some(name) = saved.keys().next() {
            return Err(format!(
                "`{name}`, which this optimiser and model do not have"
            ));
        }
        Ok(optimizer)
    }

    /// The buffer maps with the names they are saved under.
    fn named_buffers(&self) -> impl Iterator<Item = (&'static str, &HashMap<ParamId, Tensor<1>>)> {
        let names: &[&'static str] = match self.rule {
            Rule::Sgd { .. } => &["momentum"],
            Rule::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        };
        names.iter().copied().zip([&self.first, &self.second])
    }
}

/// Whether AdamW decays this parameter: matrices, except the position embeddings and
/// the class token (timm's `no_weight_decay`).
fn decays(parameter: &Parameter) -> bool {
    parameter.shape.len() >= 2
        && !parameter.path.ends_with("pos_embedding")
        && parameter.path != "cls"
}

/// Whether every parameter of `module` is a finite number, in one reduction read once:
/// `x − x` is 0 for a finite `x` and NaN for an infinite or NaN one.
pub fn all_finite<M: Module>(module: &M) -> bool {
    struct Check(Option<Tensor<1>>);
    impl ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let zero = (value.clone() - value).sum();
            self.0 = Some(match self.0.take() {
                Some(total) => total + zero,
                None => zero,
            });
        }
    }
    let mut check = Check(None);
    module.visit(&mut check);
    check
        .0
        .is_none_or(|total| total.into_scalar::<f32>().is_finite())
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squared = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + squared,
                None => squared,
            });
        }
    }
}

struct Update<'a> {
    grads: GradientsParams,
    state: &'a mut Optimizer,
    lr: f64,
    scale: f64,
    decayed: HashSet<ParamId>,
}

impl Update<'_> {
    /// The new value of a parameter `value` with gradient `grad` (both flat), updating
    /// the buffers.
    fn update(&mut self, id: ParamId, value: Tensor<1>, grad: Tensor<1>) -> Tensor<1> {
        let state = &mut *self.state;
        match state.rule {
            Rule::Sgd { momentum } => {
                // No trace before the first update: zeros give `trace = grad·scale`.
                let trace = state.first.remove(&id).unwrap_or_else(|| grad.zeros_like());
                let (value, trace) =
                    momentum_step(value, grad, trace, self.scale, momentum, self.lr);
                state.first.insert(id, trace);
                value
            }
            Rule::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let grad = grad * self.scale;
                let t = state.steps as i32;
                let exp_avg = match state.first.remove(&id) {
                    // PyTorch's `lerp_`: m + (g − m)·(1 − β1).
                    Some(m) => m.clone() + (grad.clone() - m) * (1.0 - beta1),
                    None => grad.clone() * (1.0 - beta1),
                };
                let exp_avg_sq = match state.second.remove(&id) {
                    Some(v) => v * beta2 + grad.clone() * grad * (1.0 - beta2),
                    None => grad.clone() * grad * (1.0 - beta2),
                };
                let step_size = self.lr / (1.0 - beta1.powi(t));
                let correction = (1.0 - beta2.powi(t)).sqrt();
                let denominator = exp_avg_sq.clone().sqrt() / correction + eps;
                let adam = exp_avg.clone() / denominator * step_size;
                state.first.insert(id, exp_avg);
                state.second.insert(id, exp_avg_sq);
                let delta = if self.decayed.contains(&id) && weight_decay > 0.0 {
                    // p·(1 − lr·wd) − adam = p − (p·lr·wd + adam).
                    value.clone() * (self.lr * weight_decay) + adam
                } else {
                    adam
                };
                value - delta
            }
        }
    }
}

impl ModuleMapper for Update<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = param.id;
        let Some(grad) = self.grads.remove::<D>(id) else {
            return param;
        };
        param.map(|tensor| {
            let shape = tensor.shape();
            let count = shape.num_elements();
            let flat: Tensor<1> = tensor.inner().reshape([count]);
            let updated = self.update(id, flat, grad.reshape([count]));
            Tensor::from_inner(updated.reshape(shape)).require_grad()
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::*;

    /// A 1x2 linear layer without bias, weights [1, 1], and a gradient we choose.
    fn layer_and_grads(grad: [f32; 2]) -> (Linear, GradientsParams) {
        let device = Device::flex().autodiff();
        let mut layer = LinearConfig::new(1, 2).with_bias(false).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 1.0], [1, 2]),
            &device,
        ));
        let mut grads = GradientsParams::new();
        grads.register(
            layer.weight.id,
            Tensor::<2>::from_data(TensorData::new(grad.to_vec(), [1, 2]), &Device::flex()),
        );
        (layer, grads)
    }

    fn weights(layer: &Linear) -> Vec<f32> {
        layer.weight.val().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn momentum_has_no_dampening() {
        let mut sgd = Optimizer::new(Rule::Sgd { momentum: 0.9 });
        let (layer, grads) = layer_and_grads([1.0, -2.0]);
        let (layer, norm) = sgd.step(layer, grads, 0.1, None);
        assert!((norm - 5f64.sqrt()).abs() < 1e-6);
        // t = g; p = 1 - 0.1 g
        let w = weights(&layer);
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.2).abs() < 1e-6,
            "{w:?}"
        );
        let mut grads = GradientsParams::new();
        grads.register(
            layer.weight.id,
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &Device::flex()),
        );
        let (layer, _) = sgd.step(layer, grads, 0.1, None);
        // t = g + 0.9 g = 1.9 g; p = p - 0.19 g (dampening 0.1 would give 1.8 g).
        let w = weights(&layer);
        assert!(
            (w[0] - 0.71).abs() < 1e-6 && (w[1] - 1.58).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut sgd = Optimizer::new(Rule::Sgd { momentum: 0.0 });
        let (layer, grads) = layer_and_grads([3.0, 4.0]);
        let (layer, norm) = sgd.step(layer, grads, 1.0, Some(1.0));
        assert!((norm - 5.0).abs() < 1e-6);
        let w = weights(&layer);
        assert!(
            (w[0] - 0.4).abs() < 1e-6 && (w[1] - 0.2).abs() < 1e-6,
            "{w:?}"
        );
        // Below the limit nothing is scaled.
        let (layer, grads) = layer_and_grads([0.3, 0.4]);
        let (layer, _) =
            Optimizer::new(Rule::Sgd { momentum: 0.0 }).step(layer, grads, 1.0, Some(1.0));
        let w = weights(&layer);
        assert!(
            (w[0] - 0.7).abs() < 1e-6 && (w[1] - 0.6).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn non_finite_weights_are_found() {
        let (layer, _) = layer_and_grads([0.0, 0.0]);
        assert!(all_finite(&layer));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let broken = layer.clone().map(&mut SetWeights(vec![1.0, bad]));
            assert!(!all_finite(&broken), "{bad}");
        }
    }

    #[test]
    fn saved_buffers_continue_the_same_momentum() {
        let mut sgd = Optimizer::new(Rule::Sgd { momentum: 0.9 });
        // Before any update there are no buffers (they are zeros).
        let (fresh, _) = layer_and_grads([0.0, 0.0]);
        assert!(sgd.buffers(&fresh).is_empty());
        let (layer, grads) = layer_and_grads([1.0, -2.0]);
        let (layer, _) = sgd.step(layer, grads, 0.1, None);
        let saved = sgd.buffers(&layer);
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["momentum.weight"]);
        assert_eq!(
            saved["momentum.weight"],
            Array::new(vec![1, 2], vec![1.0, -2.0])
        );

        // A restored optimiser on a rebuilt layer (new parameter ids) continues
        // exactly as the original one.
        let (rebuilt, _) = layer_and_grads([0.0, 0.0]);
        let rebuilt = rebuilt.map(&mut SetWeights(weights(&layer)));
        let mut restored = Optimizer::with_buffers(
            Rule::Sgd { momentum: 0.9 },
            1,
            &rebuilt,
            saved.clone(),
            &Device::flex(),
        )
        .expect("restore");
        let grad = |id| {
            let mut grads = GradientsParams::new();
            let data = TensorData::new(vec![0.5f32, 0.5], [1, 2]);
            grads.register(id, Tensor::<2>::from_data(data, &Device::flex()));
            grads
        };
        let id = layer.weight.id;
        let (original, _) = sgd.step(layer, grad(id), 0.1, None);
        let id = rebuilt.weight.id;
        let (continued, _) = restored.step(rebuilt, grad(id), 0.1, None);
        assert_eq!(weights(&original), weights(&continued));

        // Buffers of another model are refused, by name.
        let mut wrong = saved.clone();
        wrong.insert("momentum.bias".into(), Array::new(vec![2], vec![0.0; 2]));
        let error = Optimizer::with_buffers(
            Rule::Sgd { momentum: 0.9 },
            1,
            &fresh,
            wrong,
            &Device::flex(),
        )
        .unwrap_err();
        assert!(error.contains("`momentum.bias`"), "{error}");
        let mut reshaped = saved;
        reshaped.insert(
            "momentum.weight".into(),
            Array::new(vec![2, 1], vec![0.0; 2]),
        );
        assert!(
            Optimizer::with_buffers(
                Rule::Sgd { momentum: 0.9 },
                1,
                &fresh,
                reshaped,
                &Device::flex()
            )
            .is_err()
        );
    }

    struct SetWeights(Vec<f32>);

    impl ModuleMapper for SetWeights {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let values = self.0.clone();
            param.map(|tensor| {
                let data = TensorData::new(values, tensor.shape());
                Tensor::from_data(data, &tensor.device())
            })
        }
    }

    /// Three AdamW steps against `torch.optim.AdamW` (tests/fixtures/adamw.safetensors):
    /// a matrix with weight decay and a bias without, as our rule decides by shape.
    #[test]
    fn adamw_steps_equal_pytorchs() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/adamw.safetensors"
        );
        let bytes = std::fs::read(path).expect("fixture");
        let tensors = vit::checkpoint::safetensors_io::Tensors::parse(&[&bytes]).expect("parse");
        let get = |name: &str| tensors.get(name).expect(name).data;
        let device = Device::flex().autodiff();
        let mut layer = LinearConfig::new(3, 4).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(get("weight_0"), [3, 4]),
            &device,
        ));
        layer.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(get("bias_0"), [4]),
            &device,
        )));
        let mut adamw = Optimizer::new(Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        });
        for step in 1..=3 {
            let mut grads = GradientsParams::new();
            let weight_grad = TensorData::new(get(&format!("grad_weight_{step}")), [3, 4]);
            grads.register(
                layer.weight.id,
                Tensor::<2>::from_data(weight_grad, &Device::flex()),
            );
            let bias = layer.bias.as_ref().expect("bias");
            let bias_grad = TensorData::new(get(&format!("grad_bias_{step}")), [4]);
            grads.register(bias.id, Tensor::<1>::from_data(bias_grad, &Device::flex()));
            layer = adamw.step(layer, grads, 0.01, None).0;
            let close = |ours: Vec<f32>, theirs: Vec<f32>, what: &str| {
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!(
                        (a - b).abs() < 1e-6,
                        "step {step} {what}: {ours:?} vs {theirs:?}"
                    );
                }
            };
            close(weights(&layer), get(&format!("weight_{step}")), "weight");
            let bias = layer.bias.as_ref().expect("bias").val();
            close(
                bias.try_into_vec_as::<f32>().unwrap(),
                get(&format!("bias_{step}")),
                "bias",
            );
        }
        // Its state saves and restores under its own names.
        let saved = adamw.buffers(&layer);
        assert_eq!(
            saved.keys().collect::<Vec<_>>(),
            [
                "exp_avg.bias",
                "exp_avg.weight",
                "exp_avg_sq.bias",
                "exp_avg_sq.weight"
            ]
        );
        let rule = Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let restored = Optimizer::with_buffers(rule, 3, &layer, saved.clone(), &Device::flex())
            .expect("restore");
        assert_eq!(restored.buffers(&layer), saved);
    }
}
