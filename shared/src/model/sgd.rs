//! One step of SGD with momentum for one parameter, in one pass on burn-flex.
//!
//! The trainer's update (the reference's `optax.sgd(momentum)` after clipping to a global
//! norm) composed of tensor operations makes five passes over every parameter, each into
//! a fresh allocation and on one thread (burn-flex's elementwise operations are not
//! threaded): about 3% of a ViT-B/16 training step on the CPU, with the other core idle.
//! On burn-flex this module makes one pass on the thread pool, with the same f32
//! operations in the same order, so the same values to the bit; elsewhere the composed
//! form.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::Tensor;

use burn_flex::FlexTensor;

use super::cpu;

/// `trace ← grad·scale + trace·momentum`, then `value ← value − lr·trace`, for flat
/// tensors of one length; returns the new value and the new trace. (On the first step,
/// where there is no trace yet, the trace is `grad·scale`: pass a zero trace.)
pub fn momentum_step(
    value: Tensor<1>,
    grad: Tensor<1>,
    trace: Tensor<1>,
    scale: f64,
    momentum: f64,
    lr: f64,
) -> (Tensor<1>, Tensor<1>) {
    let device = value.device();
    let inputs = (
        value.into_dispatch(),
        grad.into_dispatch(),
        trace.into_dispatch(),
    );
    let factors = [scale, momentum, lr];
    // The operation is built for burn-flex only; elsewhere its composed form.
    let step = if device.is_autodiff() || !super::on_flex(&device) {
        composed::<Dispatch>(inputs.0, inputs.1, inputs.2, factors)
    } else {
        <Dispatch as MomentumStep>::momentum_step(inputs.0, inputs.1, inputs.2, factors)
    };
    (
        Tensor::from_dispatch(step.value),
        Tensor::from_dispatch(step.trace),
    )
}

/// The new value and trace.
#[derive(ExtensionType)]
pub struct Step<B: Backend> {
    pub value: FloatTensor<B>,
    pub trace: FloatTensor<B>,
}

/// [`momentum_step`] as one operation.
#[backend_extension(Flex)]
pub trait MomentumStep: Backend {
    /// `factors`: scale, momentum, learning rate.
    fn momentum_step(
        value: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        trace: FloatTensor<Self>,
        factors: [f64; 3],
    ) -> Step<Self> {
        composed::<Self>(value, grad, trace, factors)
    }
}

/// [`MomentumStep::momentum_step`] composed of tensor operations.
fn composed<B: Backend>(
    value: FloatTensor<B>,
    grad: FloatTensor<B>,
    trace: FloatTensor<B>,
    [scale, momentum, lr]: [f64; 3],
) -> Step<B> {
    let trace = B::float_add(
        B::float_mul_scalar(grad, scale.into()),
        B::float_mul_scalar(trace, momentum.into()),
    );
    Step {
        value: B::float_sub(value, B::float_mul_scalar(trace.clone(), lr.into())),
        trace,
    }
}

/// Values per task of the thread pool.
const CHUNK: usize = 1 << 14;

impl MomentumStep for Flex {
    fn momentum_step(
        mut value: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        mut trace: FloatTensor<Self>,
        factors: [f64; 3],
    ) -> Step<Self> {
        // burn's scalar operations on f32 tensors take the factors as f32.
        let [scale, momentum, lr] = factors.map(|factor| factor as f32);
        if step_in_place(&mut value, &grad, &mut trace, [scale, momentum, lr]) {
            Step { value, trace }
        } else {
            // Not contiguous f32 of one length: the composed form.
            composed::<Self>(value, grad, trace, factors)
        }
    }
}

/// The step written over `value` and `trace` when all three are contiguous f32 of one
/// length (`false`, nothing changed, otherwise): in their own memory when nothing else
/// holds them (the trainer's parameters and momentum buffers, step after step), so no new
/// memory to allocate and fill; else in copies.
fn step_in_place(
    value: &mut FlexTensor,
    grad: &FlexTensor,
    trace: &mut FlexTensor,
    [scale, momentum, lr]: [f32; 3],
) -> bool {
    let Some(gradient) = cpu::f32_values(grad) else {
        return false;
    };
    let (Some(values), Some(traces)) = (cpu::f32_values_mut(value), cpu::f32_values_mut(trace))
    else {
        return false;
    };
    if values.len() != gradient.len() || traces.len() != gradient.len() {
        return false;
    }
    cpu::for_each_piece_pair(values, traces, CHUNK, |index, values, traces| {
        update(
            values,
            traces,
            &gradient[index * CHUNK..],
            [scale, momentum, lr],
        );
    });
    true
}

cpu::vectorised! {
    /// The step on one piece (over the shortest of the three slices).
    fn update(values: &mut [f32], traces: &mut [f32], gradient: &[f32], [scale, momentum, lr]: [f32; 3]) {
        for ((value, trace), &grad) in values.iter_mut().zip(traces.iter_mut()).zip(gradient) {
            *trace = grad * scale + *trace * momentum;
            *value -= *trace * lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn one_pass_equals_the_composed_update_to_the_bit() {
        // Long enough for several chunks of the thread pool; factors that are not exact
        // in f32.
        let device: Device = burn::backend::FlexDevice.into();
        let random =
            || Tensor::<1>::random([40_000], Distribution::Normal(0.0, 1.0), &device).into_data();
        let (value, grad, trace) = (random(), random(), random());
        let tensor =
            |data: &burn::tensor::TensorData| Tensor::<1>::from_data(data.clone(), &device);
        let (scale, momentum, lr) = (0.37, 0.9, 0.003);
        // Fresh tensors, as the trainer's: updated in place.
        let (ours_value, ours_trace) = momentum_step(
            tensor(&value),
            tensor(&grad),
            tensor(&trace),
            scale,
            momentum,
            lr,
        );
        let expected_trace = tensor(&grad) * scale + tensor(&trace) * momentum;
        let expected_value = tensor(&value) - expected_trace.clone() * lr;
        assert_eq!(ours_trace.into_data(), expected_trace.into_data());
        assert_eq!(ours_value.into_data(), expected_value.into_data());
    }

    #[test]
    fn buffers_that_nothing_else_holds_are_updated_in_place_others_in_copies() {
        let values = |seed: u32| -> Vec<f32> {
            (0..40_000u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 20_011) as f32 / 7_919.0 - 1.3)
                .collect()
        };
        let flex = |values: &[f32]| cpu::tensor(values.to_vec(), [values.len()].into());
        let (value, grad, trace) = (values(1), values(2), values(3));
        let factors = [0.37, 0.9, 0.003];
        let [scale, momentum, lr] = factors.map(|factor| factor as f32);
        let expected_trace: Vec<f32> = grad
            .iter()
            .zip(&trace)
            .map(|(&g, &t)| g * scale + t * momentum)
            .collect();
        let expected_value: Vec<f32> = value
            .iter()
            .zip(&expected_trace)
            .map(|(&v, &t)| v - t * lr)
            .collect();
        let address = |tensor: &FlexTensor| tensor.storage::<f32>().as_ptr();
        // Held by nothing else: written over.
        let (value_tensor, trace_tensor) = (flex(&value), flex(&trace));
        let addresses = (address(&value_tensor), address(&trace_tensor));
        let step = Flex::momentum_step(value_tensor, flex(&grad), trace_tensor, factors);
        assert_eq!((address(&step.value), address(&step.trace)), addresses);
        assert_eq!(cpu::f32_values(&step.value), Some(&expected_value[..]));
        assert_eq!(cpu::f32_values(&step.trace), Some(&expected_trace[..]));
        // Shared: written in copies, the originals unchanged.
        let (value_tensor, trace_tensor) = (flex(&value), flex(&trace));
        let step = Flex::momentum_step(
            value_tensor.clone(),
            flex(&grad),
            trace_tensor.clone(),
            factors,
        );
        assert_ne!(address(&step.value), address(&value_tensor));
        assert_eq!(cpu::f32_values(&value_tensor), Some(&value[..]));
        assert_eq!(cpu::f32_values(&trace_tensor), Some(&trace[..]));
        assert_eq!(cpu::f32_values(&step.value), Some(&expected_value[..]));
        assert_eq!(cpu::f32_values(&step.trace), Some(&expected_trace[..]));
    }
}
