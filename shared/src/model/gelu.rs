//! flax's `nn.gelu` (the tanh approximation) as one operation: one pass over the
//! activations forward and one backward, storing only the input for the backward pass.
//!
//! `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` is computed as the identical
//! `x·σ(u)` with `u = 2·√(2/π)·(x + 0.044715·x³)`; its derivative is
//! `σ(u) + x·σ(u)·(1 − σ(u))·2·√(2/π)·(1 + 3·0.044715·x²)`.
//!
//! Composed of tensor operations, the same function takes seven passes over the MLP's
//! largest activations forward (each a fresh allocation, `exp` one value at a time on
//! burn-flex) and about twice that backward, and the autodiff graph keeps their
//! intermediates. On burn-flex this module computes it in one loop that the compiler
//! vectorises (with its own `exp`, accurate to a few units in the last place); elsewhere
//! the composed form, still with the one-input backward.

// burn-tch is deprecated upstream but is the GPU path this project builds today
// (see trainer/src/device.rs).
#![cfg_attr(feature = "tch", allow(deprecated))]

#[cfg(feature = "tch")]
use burn::backend::LibTorch;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Shape, Tensor};
use burn_flex::FlexTensor;

use super::cpu::{self, exp_f32};

/// 2·√(2/π).
const K: f32 = 2.0 * 0.797_884_6;
const A: f32 = 0.044715;

/// The tanh GELU and its backward pass.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait TanhGelu: Backend {
    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::<Self>(x)
    }

    /// The gradient of the input from the input and the gradient of the output.
    fn tanh_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_backward::<Self>(x, grad)
    }
}

/// [`TanhGelu::tanh_gelu`] composed of tensor operations.
fn composed<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(inner::<B>(x.clone()));
    B::float_mul(x, s)
}

/// [`TanhGelu::tanh_gelu_backward`] composed of tensor operations.
fn composed_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(inner::<B>(x.clone()));
    // σ'(u)·du/dx = σ(u)·(1 − σ(u))·K·(1 + 3A·x²)
    let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let x2 = B::float_mul(x.clone(), x.clone());
    let du = B::float_mul_scalar(
        B::float_add_scalar(B::float_mul_scalar(x2, (3.0 * A).into()), 1.0.into()),
        K.into(),
    );
    let slope = B::float_mul(B::float_mul(x, B::float_mul(s.clone(), one_minus_s)), du);
    B::float_mul(grad, B::float_add(s, slope))
}

/// `u = K·(x + A·x³)`, composed.
fn inner<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let x2 = B::float_mul(x.clone(), x.clone());
    let factor = B::float_add_scalar(B::float_mul_scalar(x2, A.into()), 1.0.into());
    B::float_mul_scalar(B::float_mul(factor, x), K.into())
}

impl TanhGelu for Flex {
    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match contiguous_f32(&x, None) {
            Some((input, _, shape)) => map(shape, |start, out| gelu_into(out, &input[start..])),
            None => composed::<Self>(x),
        }
    }

    fn tanh_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match contiguous_f32(&x, Some(&grad)) {
            Some((input, grad, shape)) => map(shape, |start, out| {
                gelu_backward_into(out, &input[start..], &grad[start..])
            }),
            // Not contiguous f32: the composed form.
            None => composed_backward::<Self>(x, grad),
        }
    }
}

#[cfg(feature = "tch")]
impl TanhGelu for LibTorch {}

impl<B: Backend + TanhGelu, C: CheckpointStrategy> TanhGelu for Autodiff<B, C> {
    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: Backend + TanhGelu> Backward<B, 1> for GeluBackward {
            /// The input.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::tanh_gelu_backward(ops.state, grad));
                }
            }
        }

        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                let output = B::tanh_gelu(x.clone());
                prep.finish(x, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::tanh_gelu(x.into_primitive())),
        }
    }
}

/// The f32 values of `x` (and of `other`, of the same shape) and its shape, when they
/// are contiguous f32 tensors.
fn contiguous_f32<'a>(
    x: &'a FlexTensor,
    other: Option<&'a FlexTensor>,
) -> Option<(&'a [f32], &'a [f32], Shape)> {
    let shape = x.layout().shape().clone();
    let other = match other {
        Some(other) if other.layout().shape() == &shape => cpu::f32_values(other)?,
        Some(_) => return None,
        None => &[],
    };
    Some((cpu::f32_values(x)?, other, shape))
}

/// A new f32 tensor of `shape` whose chunks `fill(start, chunk)` writes (see
/// [`cpu::compute`]).
fn map(shape: Shape, fill: impl Fn(usize, &mut [f32]) + Sync) -> FlexTensor {
    const CHUNK: usize = 1 << 14;
    let (output, _) = cpu::compute(shape.num_elements(), CHUNK, |index, chunk| {
        fill(index * CHUNK, chunk)
    });
    cpu::tensor(output, shape)
}

cpu::vectorised! {
    /// `out ← gelu(input)`, over the shorter of the two.
    fn gelu_into(out: &mut [f32], input: &[f32]) {
        for (out, &x) in out.iter_mut().zip(input) {
            *out = gelu_f32(x);
        }
    }
}

cpu::vectorised! {
    /// `out ← gelu'(input)·grad`, over the shortest of the three.
    fn gelu_backward_into(out: &mut [f32], input: &[f32], grad: &[f32]) {
        for (out, (&x, &grad)) in out.iter_mut().zip(input.iter().zip(grad)) {
            *out = gelu_backward_f32(x, grad);
        }
    }
}

/// The tanh GELU of one value.
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    x * sigmoid_f32(K * x * (1.0 + A * x * x))
}

/// Its derivative at `x` times `grad`.
#[inline(always)]
fn gelu_backward_f32(x: f32, grad: f32) -> f32 {
    let s = sigmoid_f32(K * x * (1.0 + A * x * x));
    grad * (s + x * s * (1.0 - s) * K * (1.0 + 3.0 * A * x * x))
}

/// `1 / (1 + e^(−u))` with [`exp_f32`].
#[inline(always)]
fn sigmoid_f32(u: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-u))
}

/// flax's `nn.gelu` (tanh approximation), see the module's documentation.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    // One operation where it is built (see `has_own_operations`), else composed.
    if super::has_own_operations(&x.device()) {
        return Tensor::from_dispatch(<Dispatch as TanhGelu>::tanh_gelu(x.into_dispatch()));
    }
    let inner = (x.clone() * x.clone() * f64::from(A) + 1.0) * x.clone() * f64::from(K);
    x * sigmoid(inner)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_the_library_exp() {
        let mut worst = 0.0f32;
        // Inside the clamp, against the exact value (f64).
        for step in -86_990..=87_990 {
            let x = step as f32 * 1e-3;
            let exact = f64::from(x).exp();
            let relative = (f64::from(exp_f32(x)) - exact).abs() / exact;
            worst = worst.max(relative as f32);
        }
        // f32's epsilon is 1.19e-7.
        assert!(worst < 3e-7, "largest relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) > 0.0 && exp_f32(1000.0).is_finite());
    }

    /// Values from −8 to 8 in a `[rows, 3]` tensor, transposed when `strided` (not
    /// contiguous, which takes the composed path).
    fn input(device: &Device, strided: bool) -> Tensor<2> {
        let values: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) * 0.054).collect();
        let tensor = Tensor::<2>::from_data(TensorData::new(values, [100, 3]), device);
        if strided { tensor.transpose() } else { tensor }
    }

    /// Output and input gradient (of a loss weighing each output differently) of `gelu`.
    fn run(gelu: impl Fn(Tensor<2>) -> Tensor<2>, strided: bool) -> [Vec<f32>; 2] {
        let device = Device::flex().autodiff();
        let x = input(&device, strided).require_grad();
        let output = gelu(x.clone());
        let weights = input(&device, strided).cos();
        let grads = (output.clone() * weights).sum().backward();
        let read = |tensor: Tensor<2>| tensor.try_into_vec_as::<f32>().unwrap();
        [read(output.inner()), read(x.grad(&grads).unwrap())]
    }

    #[test]
    fn kernel_and_backward_equal_the_composed_tanh_gelu() {
        let composed = |x: Tensor<2>| {
            let tanh = ((x.clone() + x.clone().powi_scalar(3) * f64::from(A))
                * (f64::from(K) / 2.0))
                .tanh();
            (tanh + 1.0) * x * 0.5
        };
        for strided in [false, true] {
            let ours = run(gelu_tanh, strided);
            let theirs = run(composed, strided);
            for (what, (ours, theirs)) in
                ["output", "gradient"].iter().zip(ours.iter().zip(&theirs))
            {
                let worst = ours
                    .iter()
                    .zip(theirs)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 2e-6, "{what} (strided: {strided}): {worst:e}");
            }
        }
    }
    /// The loops compiled for AVX-512 or AVX2 (whichever this CPU has) give the bits of
    /// the one-value functions in this test's baseline build: no fused multiply-add.
    #[test]
    fn vectorised_loops_give_the_scalar_bits() {
        let input: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0123).collect();
        let grad: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let mut out = vec![0.0; 1000];
        super::gelu_into(&mut out, &input);
        for (&out, &x) in out.iter().zip(&input) {
            assert_eq!(out.to_bits(), super::gelu_f32(x).to_bits(), "gelu({x})");
        }
        super::gelu_backward_into(&mut out, &input, &grad);
        for ((&out, &x), &grad) in out.iter().zip(&input).zip(&grad) {
            let expected = super::gelu_backward_f32(x, grad);
            assert_eq!(out.to_bits(), expected.to_bits(), "gelu'({x})·{grad}");
        }
    }
}
