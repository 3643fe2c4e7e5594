//! `--ema DECAY`: an exponential moving average of the weights, `e = d·e + (1 − d)·p`
//! after every update (timm's `ModelEmaV2`), evaluated and exported instead of the
//! weights themselves. It usually generalises better when training from scratch.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use vit::VisionTransformer;
use vit::checkpoint::Array;

use crate::parameters::parameters;

/// The averaged weights: a copy of the model (without gradients) whose parameters keep
/// the trained model's ids.
pub struct Ema {
    decay: f64,
    model: VisionTransformer,
}

impl Ema {
    /// Starts from `model`'s current weights.
    pub fn new(model: &VisionTransformer, decay: f64) -> Self {
        Self {
            decay,
            model: model.valid(),
        }
    }

    /// The average model, for evaluation and export.
    pub fn model(&self) -> &VisionTransformer {
        &self.model
    }

    /// Moves the average towards `model`'s weights after an update.
    pub fn update(&mut self, model: &VisionTransformer) {
        let mut current = Values::default();
        model.valid().visit(&mut current);
        let mut blend = Blend {
            decay: self.decay,
            current: current.0,
        };
        self.model = self.model.clone().map(&mut blend);
    }

    /// The averaged weights by parameter path, for checkpoints.
    pub fn weights(&self) -> BTreeMap<String, Array> {
        let mut values = Values::default();
        self.model.visit(&mut values);
        parameters(&self.model)
            .into_iter()
            .map(|parameter| {
                let data = values.0[&parameter.id]
                    .clone()
                    .try_into_vec_as::<f32>()
                    .expect("reading an EMA weight back from the device");
                (parameter.path, Array::new(parameter.shape, data))
            })
            .collect()
    }

    /// The average saved by [`Self::weights`], for `model` (whose parameter ids it takes).
    /// Every parameter must be there with its shape.
    pub fn restore(
        model: &VisionTransformer,
        decay: f64,
        mut saved: BTreeMap<String, Array>,
    ) -> Result<Self, String> {
        let average = model.valid();
        let mut values = HashMap::new();
        for parameter in parameters(&average) {
            let array = saved
                .remove(&parameter.path)
                .ok_or_else(|| format!("no average for `{}`", parameter.path))?;
            if array.shape != parameter.shape {
                return Err(format!(
                    "the average of `{}` has shape {:?} but the parameter {:?}",
                    parameter.path, array.shape, parameter.shape
                ));
            }
            values.insert(parameter.id, array);
        }
        if let Some(path) = saved.keys().next() {
            return Err(format!(
                "an average for `{path}`, which the model does not have"
            ));
        }
        Ok(Self {
            decay,
            model: average.map(&mut Set(values)),
        })
    }
}

/// Every float parameter's value, flattened, by id.
#[derive(Default)]
struct Values(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let count = value.shape().num_elements();
        self.0.insert(param.id, value.reshape([count]));
    }
}

struct Blend {
    decay: f64,
    current: HashMap<ParamId, Tensor<1>>,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.current.remove(&param.id) else {
            return param;
        };
        param.map(|average| {
            let shape = average.shape();
            average * self.decay + current.reshape(shape) * (1.0 - self.decay)
        })
    }
}

/// Sets each parameter to the given values.
struct Set(HashMap<ParamId, Array>);

impl ModuleMapper for Set {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(array) = self.0.remove(&param.id) else {
            return param;
        };
        param.map(|value| {
            Tensor::from_data(TensorData::new(array.data, array.shape), &value.device())
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn values(model: &VisionTransformer) -> Vec<f32> {
        let mut all = Vec::new();
        for (_, array) in Ema::new(model, 0.0).weights() {
            all.extend(array.data);
        }
        all
    }

    #[test]
    fn the_average_moves_by_one_minus_the_decay_and_round_trips() {
        let device = Device::flex().autodiff();
        let config = crate::train::tests::tiny_config();
        let start = VisionTransformer::new(&config, &device).expect("model");
        let mut ema = Ema::new(&start, 0.75);
        // Another model with the same parameter ids: the start, shifted by 1.
        let shifted = start.clone().map(&mut Shift(1.0));
        ema.update(&shifted);
        let before = values(&start);
        let after: Vec<f32> = ema
            .weights()
            .into_values()
            .flat_map(|array| array.data)
            .collect();
        for (a, b) in after.iter().zip(&before) {
            assert!((a - (b + 0.25)).abs() < 1e-6, "{a} vs {b} + 0.25");
        }
        let restored = Ema::restore(&shifted, 0.75, ema.weights()).expect("restore");
        assert_eq!(restored.weights(), ema.weights());
        let mut partial = ema.weights();
        partial.pop_first();
        assert!(Ema::restore(&shifted, 0.75, partial).is_err());
    }

    struct Shift(f64);

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|value| value + self.0)
        }
    }
}
