//! SGD with momentum as the reference uses it (optax `sgd(momentum=0.9)` /
//! PyTorch without dampening: `t = g + μ·t`, `p = p − lr·t`), after clipping the
//! gradients to a global norm. burn's own SGD dampens momentum by default and
//! clips each tensor separately, which is not the reference recipe.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use vit::checkpoint::Array;

/// Momentum buffers, one per parameter, flattened.
#[derive(Debug, Default)]
pub struct Sgd {
    pub momentum: f64,
    buffers: HashMap<ParamId, Tensor<1>>,
}

impl Sgd {
    pub fn new(momentum: f64) -> Self {
        Self {
            momentum,
            buffers: HashMap::new(),
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

    /// One update: clip to `max_norm` (if given), then momentum and the step.
    /// Returns the updated module and the gradient norm before clipping. With a
    /// non-finite norm nothing changes, so that no NaN reaches the weights.
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
        let mut update = Update {
            grads,
            buffers: &mut self.buffers,
            momentum: self.momentum,
            lr,
            scale,
        };
        (module.map(&mut update), norm)
    }

    /// The momentum buffers by parameter path (`encoder.blocks.0.mlp.dense_0.weight`),
    /// each in its parameter's shape, for checkpoints. Parameters without a buffer
    /// (before their first update) are left out: a missing buffer means zeros.
    pub fn buffers<M: Module>(&self, module: &M) -> BTreeMap<String, Array> {
        parameters(module)
            .into_iter()
            .filter_map(|parameter| {
                let buffer = self.buffers.get(&parameter.id)?.clone();
                let values = buffer
                    .try_into_vec_as::<f32>()
                    .expect("reading a momentum buffer back from the device");
                Some((parameter.path, Array::new(parameter.shape, values)))
            })
            .collect()
    }

    /// The optimiser with the buffers [`Self::buffers`] saved, filed under `module`'s
    /// parameters (on `device`, without gradients). Every saved buffer must belong to
    /// a parameter of the same shape.
    pub fn with_buffers<M: Module>(
        momentum: f64,
        module: &M,
        mut saved: BTreeMap<String, Array>,
        device: &Device,
    ) -> Result<Self, String> {
        let mut buffers = HashMap::new();
        for parameter in parameters(module) {
            let Some(array) = saved.remove(&parameter.path) else {
                continue;
            };
            if array.shape != parameter.shape {
                return Err(format!(
                    "the momentum of `{}` has shape {:?} but the parameter {:?}",
                    parameter.path, array.shape, parameter.shape
                ));
            }
            let count = array.data.len();
            let buffer = Tensor::<1>::from_data(TensorData::new(array.data, [count]), device);
            buffers.insert(parameter.id, buffer);
        }
        if let Some(path) = saved.keys().next() {
            return Err(format!(
                "momentum for `{path}`, which the model does not have"
            ));
        }
        Ok(Self { momentum, buffers })
    }
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

/// A float parameter of a module: where it sits, its id and its shape.
struct Parameter {
    path: String,
    id: ParamId,
    shape: Vec<usize>,
}

/// Every float parameter of `module`, in visiting order.
fn parameters<M: Module>(module: &M) -> Vec<Parameter> {
    let mut visitor = Parameters::default();
    module.visit(&mut visitor);
    visitor.found
}

#[derive(Default)]
struct Parameters {
    /// The module names from the root to where the visit is.
    path: Vec<String>,
    found: Vec<Parameter>,
}

impl ModuleVisitor for Parameters {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.found.push(Parameter {
            path: self.path.join("."),
            id: param.id,
            shape: param.shape().dims::<D>().to_vec(),
        });
    }
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
    buffers: &'a mut HashMap<ParamId, Tensor<1>>,
    momentum: f64,
    lr: f64,
    scale: f64,
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
            let grad: Tensor<1> = grad.reshape([count]) * self.scale;
            let trace = match self.buffers.remove(&id) {
                Some(trace) => grad + trace * self.momentum,
                None => grad,
            };
            let step: Tensor<D> = (trace.clone() * self.lr).reshape(shape);
            self.buffers.insert(id, trace);
            let updated = tensor.inner() - step;
            Tensor::from_inner(updated).require_grad()
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
        let mut sgd = Sgd::new(0.9);
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
        let mut sgd = Sgd::new(0.0);
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
        let (layer, _) = Sgd::new(0.0).step(layer, grads, 1.0, Some(1.0));
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
        let mut sgd = Sgd::new(0.9);
        // Before any update there are no buffers (they are zeros).
        let (fresh, _) = layer_and_grads([0.0, 0.0]);
        assert!(sgd.buffers(&fresh).is_empty());
        let (layer, grads) = layer_and_grads([1.0, -2.0]);
        let (layer, _) = sgd.step(layer, grads, 0.1, None);
        let saved = sgd.buffers(&layer);
        assert_eq!(saved.keys().collect::<Vec<_>>(), ["weight"]);
        assert_eq!(saved["weight"], Array::new(vec![1, 2], vec![1.0, -2.0]));

        // A restored optimiser on a rebuilt layer (new parameter ids) continues
        // exactly as the original one.
        let (rebuilt, _) = layer_and_grads([0.0, 0.0]);
        let rebuilt = rebuilt.map(&mut SetWeights(weights(&layer)));
        let mut restored =
            Sgd::with_buffers(0.9, &rebuilt, saved.clone(), &Device::flex()).expect("restore");
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
        wrong.insert("bias".into(), Array::new(vec![2], vec![0.0; 2]));
        let error = Sgd::with_buffers(0.9, &fresh, wrong, &Device::flex()).unwrap_err();
        assert!(error.contains("`bias`"), "{error}");
        let mut reshaped = saved;
        reshaped.insert("weight".into(), Array::new(vec![2, 1], vec![0.0; 2]));
        assert!(Sgd::with_buffers(0.9, &fresh, reshaped, &Device::flex()).is_err());
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
}
