//! LayerNorm over the last axis (flax's `nn.LayerNorm`: biased variance, `epsilon` inside
//! the square root, a scale and a bias), with a backward pass of its own for training.
//!
//! burn 0.22 has a fused `layer_norm` for inference (burn-flex: one pass per row), but
//! its autodiff runs the decomposed form: about ten tensor operations forward, each a
//! fresh allocation that the graph keeps, and twice as many backward. This operation
//! keeps only the input and the scale for the backward pass, which recomputes each row's
//! mean and 1/σ; it is one loop over the rows. With x̂ = (x − μ)/σ and g the gradient
//! of the output:
//!
//! dx = (γg − mean(γg) − x̂·mean(γg·x̂)) / σ,   dγ = Σ_rows g·x̂,   dβ = Σ_rows g.
//!
//! Only on burn-flex. On libtorch, this backward composed of tensor operations (after
//! libtorch's own `layer_norm` forward) gave gradients 1e-4 (relative) away from flex's
//! and ndarray's on one parity fixture (`google_token_f16`, `tests/tests/tch_parity.rs`),
//! where burn's decomposition stays within 5e-6 of both; so libtorch keeps that.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, Flex, TensorMetadata, backend_extension};
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Shape, Tensor};

use super::cpu;

/// LayerNorm with a scale (`gamma`) and a bias (`beta`), as every norm of the ViT has.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    /// Added to the variance (the reference's 1e-6; burn's `LayerNormConfig` default,
    /// 1e-5, is not).
    #[module(skip)]
    pub epsilon: f64,
}

impl LayerNorm {
    /// The identity's parameters: scale 1, bias 0.
    pub fn new(size: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([size], device),
            beta: Initializer::Zeros.init([size], device),
            epsilon,
        }
    }

    /// `(x − mean) / √(var + ε) · γ + β` along the last axis of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        let device = x.device();
        // Training on burn-flex; elsewhere, and in inference, burn's operation.
        if device.is_autodiff() && super::on_flex(&device) {
            return Tensor::from_dispatch(<Dispatch as TrainingLayerNorm>::training_layer_norm(
                x.into_dispatch(),
                gamma.into_dispatch(),
                beta.into_dispatch(),
                self.epsilon,
            ));
        }
        burn::tensor::module::layer_norm(x, gamma, Some(beta), self.epsilon)
    }
}

/// The gradients of the LayerNorm's input, scale and bias.
#[derive(ExtensionType)]
pub struct LayerNormGradients<B: Backend> {
    pub input: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// LayerNorm whose backward pass stores only the input and the scale.
#[backend_extension(Flex, Autodiff)]
pub trait TrainingLayerNorm: Backend {
    /// The backend's fused `layer_norm`.
    fn training_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// The gradients from the input, the scale and the gradient of the output.
    fn training_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> LayerNormGradients<Self> {
        composed_backward::<Self>(x, gamma, grad, epsilon)
    }
}

/// [`TrainingLayerNorm::training_layer_norm_backward`] composed of tensor operations.
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    epsilon: f64,
) -> LayerNormGradients<B> {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let size = shape[last];
    let rows = shape.num_elements() / size;
    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let variance = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let inverse_std = B::float_recip(B::float_sqrt(B::float_add_scalar(variance, epsilon.into())));
    let normalized = B::float_mul(centered, inverse_std.clone());
    let mut row_shape = vec![1; last];
    row_shape.push(size);
    let scaled_grad = B::float_mul(
        grad.clone(),
        B::float_reshape(gamma, Shape::from(row_shape)),
    );
    let grad_mean = B::float_mean_dim(scaled_grad.clone(), last);
    let projection = B::float_mean_dim(B::float_mul(scaled_grad.clone(), normalized.clone()), last);
    let input = B::float_mul(
        B::float_sub(
            B::float_sub(scaled_grad, grad_mean),
            B::float_mul(normalized.clone(), projection),
        ),
        inverse_std,
    );
    let column_sums = |tensor| {
        let sums = B::float_sum_dim(B::float_reshape(tensor, Shape::from([rows, size])), 0);
        B::float_reshape(sums, Shape::from([size]))
    };
    LayerNormGradients {
        input,
        gamma: column_sums(B::float_mul(grad.clone(), normalized)),
        beta: column_sums(grad),
    }
}

impl TrainingLayerNorm for Flex {
    fn training_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
    ) -> LayerNormGradients<Self> {
        let shape = x.layout().shape().clone();
        let values = (
            cpu::f32_values(&x),
            cpu::f32_values(&gamma),
            cpu::f32_values(&grad),
        );
        match values {
            (Some(x), Some(gamma), Some(grad))
                if grad.len() == x.len()
                    && !gamma.is_empty()
                    && shape.last() == Some(&gamma.len()) =>
            {
                let size = gamma.len();
                let (input, gamma, beta) = backward_f32(x, gamma, grad, epsilon as f32);
                LayerNormGradients {
                    input: cpu::tensor(input, shape),
                    gamma: cpu::tensor(gamma, Shape::from([size])),
                    beta: cpu::tensor(beta, Shape::from([size])),
                }
            }
            // Not contiguous f32: the composed form.
            _ => composed_backward::<Self>(x, gamma, grad, epsilon),
        }
    }
}

impl<B: Backend + TrainingLayerNorm, C: CheckpointStrategy> TrainingLayerNorm for Autodiff<B, C> {
    fn training_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormBackward;

        impl<B: Backend + TrainingLayerNorm> Backward<B, 3> for LayerNormBackward {
            /// The input, the scale and epsilon.
            type State = (FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node, gamma_node, beta_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, epsilon) = ops.state;
                let gradients = B::training_layer_norm_backward(x, gamma, grad, epsilon);
                for (node, grad) in [
                    (x_node, gradients.input),
                    (gamma_node, gradients.gamma),
                    (beta_node, gradients.beta),
                ] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let output = B::training_layer_norm(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x, gamma, epsilon), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::training_layer_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }
}

/// The backward pass on `[rows, size]` values (`size` = the scale's length): the input
/// gradient, and the scale's and the bias's.
fn backward_f32(
    x: &[f32],
    gamma: &[f32],
    grad: &[f32],
    epsilon: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let size = gamma.len();
    // Rows per piece of work, as burn-flex's forward kernel.
    let chunk = 64 * size;
    // Each piece's column sums of g·x̂ and of g, in f64, added up below in order (so the
    // result does not depend on the number of threads).
    let (input_grad, partial_sums) = cpu::compute(x.len(), chunk, |index, out| {
        let start = index * chunk;
        let x = &x[start..start + out.len()];
        backward_rows(x, &grad[start..start + out.len()], gamma, epsilon, out)
    });
    let mut gamma_grad = vec![0.0f64; size];
    let mut beta_grad = vec![0.0f64; size];
    for (gamma_sum, beta_sum) in partial_sums {
        for i in 0..size {
            gamma_grad[i] += gamma_sum[i];
            beta_grad[i] += beta_sum[i];
        }
    }
    let to_f32 = |sums: Vec<f64>| sums.into_iter().map(|sum| sum as f32).collect();
    (input_grad, to_f32(gamma_grad), to_f32(beta_grad))
}

cpu::vectorised! {
    /// The input gradient of whole rows of `x` into `out`, and these rows' column sums of
    /// g·x̂ and of g (for the scale's and the bias's gradients).
    fn backward_rows(
        x: &[f32],
        grad: &[f32],
        gamma: &[f32],
        epsilon: f32,
        out: &mut [f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let size = gamma.len();
        let mut gamma_sum = vec![0.0f64; size];
        let mut beta_sum = vec![0.0f64; size];
        let mut scaled_grad = vec![0.0f32; size];
        let rows = x
            .chunks_exact(size)
            .zip(grad.chunks_exact(size))
            .zip(out.chunks_exact_mut(size));
        for ((x, grad), out) in rows {
            let mean = cpu::sum_of(x, x, |x, _| x) / size as f32;
            let variance = cpu::sum_of(x, x, |x, _| (x - mean) * (x - mean)) / size as f32;
            let inverse_std = 1.0 / (variance + epsilon).sqrt();
            // x̂ into `out` for now, and γg.
            for (out, &x) in out.iter_mut().zip(x) {
                *out = (x - mean) * inverse_std;
            }
            for ((scaled, &grad), &gamma) in scaled_grad.iter_mut().zip(grad).zip(gamma) {
                *scaled = grad * gamma;
            }
            let grad_mean = cpu::sum_of(&scaled_grad, &scaled_grad, |g, _| g) / size as f32;
            let projection = cpu::sum_of(&scaled_grad, out, |g, x| g * x) / size as f32;
            for (i, out) in out.iter_mut().enumerate() {
                let normalized = *out;
                gamma_sum[i] += f64::from(grad[i] * normalized);
                beta_sum[i] += f64::from(grad[i]);
                *out = (scaled_grad[i] - grad_mean - normalized * projection) * inverse_std;
            }
        }
        (gamma_sum, beta_sum)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;

    /// Deterministic, varied values: rows of different means and spreads.
    fn values(shape: [usize; 3], seed: f32, device: &Device) -> Tensor<3> {
        let count = shape.iter().product();
        let data = (0..count)
            .map(|i| {
                ((i as f32 + seed) * 0.7548).sin() * (1.0 + (i % 7) as f32) + ((i / 19) % 4) as f32
            })
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    /// Output and the gradients of input, scale and bias of a loss weighing each output
    /// differently, through our operation or burn's `LayerNorm` (decomposed by autodiff).
    fn run(ours: bool, transposed: bool) -> [Vec<f32>; 4] {
        let device = Device::flex().autodiff();
        let mut norm = LayerNorm::new(24, 1e-6, &device);
        norm.gamma = Param::from_tensor(values([1, 1, 24], 3.0, &device).reshape([24]) * 0.3);
        norm.beta = Param::from_tensor(values([1, 1, 24], 5.0, &device).reshape([24]) * 0.1);
        // 150 rows: three pieces of work, the last one short; transposed, not contiguous
        // (the composed backward).
        let x = if transposed {
            values([30, 5, 24], 0.0, &device).swap_dims(0, 1)
        } else {
            values([5, 30, 24], 0.0, &device)
        };
        let x = x.require_grad();
        let output = if ours {
            norm.forward(x.clone())
        } else {
            let mut theirs = burn::nn::LayerNormConfig::new(24)
                .with_epsilon(1e-6)
                .init(&device);
            theirs.gamma = norm.gamma.clone();
            theirs.beta = Some(norm.beta.clone());
            theirs.forward(x.clone())
        };
        let loss = (output.clone() * values([5, 30, 24], 11.0, &device)).sum();
        let grads = loss.backward();
        let read = |tensor: Tensor<1>| tensor.try_into_vec_as::<f32>().unwrap();
        [
            read(output.inner().flatten(0, 2)),
            read(x.grad(&grads).unwrap().flatten(0, 2)),
            read(norm.gamma.grad(&grads).unwrap()),
            read(norm.beta.grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn gradients_equal_the_decomposed_layer_norm() {
        for transposed in [false, true] {
            let ours = run(true, transposed);
            let theirs = run(false, transposed);
            for (what, (ours, theirs)) in ["output", "input", "scale", "bias"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                // Relative to the largest value (the scale's gradient sums 150 rows).
                let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let worst = ours
                    .iter()
                    .zip(theirs)
                    .map(|(a, b)| (a - b).abs() / scale)
                    .fold(0.0f32, f32::max);
                assert!(worst < 2e-6, "{what} (transposed: {transposed}): {worst:e}");
                assert!(theirs.iter().any(|v| v.abs() > 1e-3), "{what} is all zero");
            }
        }
    }
}
