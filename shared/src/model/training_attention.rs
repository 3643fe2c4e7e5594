//! Attention for training that keeps no attention matrix between the forward and the
//! backward pass.
//!
//! burn 0.22's autodiff runs `attention` through its decomposed fallback, which stores
//! the scores and probabilities of every layer (`[B, H, N, N]` each) until the backward
//! pass. This operation stores only its inputs and output (`[B, H, N, Dh]` each) and
//! recomputes the probabilities of one layer at a time in the backward pass, the scheme
//! of flash attention. The forward pass is the backend's own fused `attention` (burn-flex's
//! flash kernel on the CPU, libtorch's `scaled_dot_product_attention` on `tch`).
//!
//! With S = scale·Q·Kᵀ, P = softmax(S) along keys and O = P·V, the backward pass is
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = scale·dS·K,
//! dK = scale·dSᵀ·Q (rowsum(dO ⊙ O) equals rowsum(dP ⊙ P), without a second N×N product).

// burn-tch is deprecated upstream but is the GPU path this project builds today
// (see trainer/src/device.rs).
#![cfg_attr(feature = "tch", allow(deprecated))]

#[cfg(feature = "tch")]
use burn::backend::LibTorch;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, TensorMetadata};
use burn::backend::{Flex, backend_extension};
use burn::tensor::Tensor;
use burn_flex::FlexTensor;

use super::attention_kernel::{SoftmaxAttention, composed_probabilities};
use super::matmul::Matmul;

/// The gradients of the attention inputs.
#[derive(ExtensionType)]
pub struct AttentionGradients<B: Backend> {
    pub query: FloatTensor<B>,
    pub key: FloatTensor<B>,
    pub value: FloatTensor<B>,
}

/// Scaled dot-product attention (no mask, scale 1/√Dh) with a backward pass that
/// recomputes the probabilities.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait TrainingAttention: Backend {
    /// softmax(Q·Kᵀ/√Dh)·V for `[B, H, N, Dh]` inputs.
    fn training_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::attention(
            query,
            key,
            value,
            None,
            None,
            AttentionModuleOptions::default(),
        )
    }

    /// The gradients of [`Self::training_attention`]'s inputs from its inputs, its output
    /// and the gradient of its output.
    fn training_attention_backward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> AttentionGradients<Self> {
        backward::<Self>(
            [query, key, value, output, output_grad],
            Self::float_matmul,
            composed_probabilities::<Self>,
        )
    }
}

/// [`TrainingAttention::training_attention_backward`] with the backend's `matmul` and
/// attention `probabilities` (of query and key).
fn backward<B: Backend>(
    [query, key, value, output, output_grad]: [FloatTensor<B>; 5],
    matmul: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    probabilities: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> AttentionGradients<B> {
    let head_dim = query.shape()[3];
    let scale = 1.0 / (head_dim as f64).sqrt();
    let transpose = |tensor| B::float_swap_dims(tensor, 2, 3);
    let probabilities = probabilities(query.clone(), key.clone());
    let value_grad = matmul(transpose(probabilities.clone()), output_grad.clone());
    let probabilities_grad = matmul(output_grad.clone(), transpose(value));
    let row_dot = B::float_sum_dim(B::float_mul(output_grad, output), 3);
    let scores_grad = B::float_mul_scalar(
        B::float_mul(probabilities, B::float_sub(probabilities_grad, row_dot)),
        scale.into(),
    );
    AttentionGradients {
        query: matmul(scores_grad.clone(), key),
        key: matmul(transpose(scores_grad), query),
        value: value_grad,
    }
}

/// On burn-flex with our matmul and attention (see `matmul.rs`, `attention_kernel.rs`).
impl TrainingAttention for Flex {
    fn training_attention(query: FlexTensor, key: FlexTensor, value: FlexTensor) -> FlexTensor {
        <Self as SoftmaxAttention>::softmax_attention(query, key, value)
    }

    fn training_attention_backward(
        query: FlexTensor,
        key: FlexTensor,
        value: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
    ) -> AttentionGradients<Self> {
        backward::<Self>(
            [query, key, value, output, output_grad],
            <Self as Matmul>::matmul,
            <Self as SoftmaxAttention>::attention_probabilities,
        )
    }
}

#[cfg(feature = "tch")]
impl TrainingAttention for LibTorch {}

impl<B: Backend + TrainingAttention, C: CheckpointStrategy> TrainingAttention for Autodiff<B, C> {
    fn training_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + TrainingAttention> Backward<B, 3> for AttentionBackward {
            /// Query, key, value and output.
            type State = [FloatTensor<B>; 4];

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [query_node, key_node, value_node] = ops.parents;
                let output_grad = grads.consume::<B>(&ops.node);
                let [query, key, value, output] = ops.state;
                let gradients =
                    B::training_attention_backward(query, key, value, output, output_grad);
                for (node, grad) in [
                    (query_node, gradients.query),
                    (key_node, gradients.key),
                    (value_node, gradients.value),
                ] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([query.node(), key.node(), value.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (query, key, value) = (
                    query.into_primitive(),
                    key.into_primitive(),
                    value.into_primitive(),
                );
                let output = B::training_attention(query.clone(), key.clone(), value.clone());
                prep.finish([query, key, value, output.clone()], output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::training_attention(
                query.into_primitive(),
                key.into_primitive(),
                value.into_primitive(),
            )),
        }
    }
}

/// Whether [`attention`] runs on tensors of `device` (an autodiff device on a backend
/// the extension is built for); elsewhere burn's `attention` is used.
pub fn supported(device: &burn::tensor::Device) -> bool {
    device.is_autodiff() && super::has_own_operations(device)
}

/// softmax(Q·Kᵀ/√Dh)·V on `[B, H, N, Dh]` tensors of a [`supported`] device, keeping
/// no attention matrix for the backward pass.
pub fn attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as TrainingAttention>::training_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::model::MultiHeadDotProductAttention;

    /// Deterministic, varied values in about [-1, 1].
    fn values(shape: [usize; 3], seed: f32, device: &Device) -> Tensor<3> {
        let count = shape.iter().product();
        let data = (0..count)
            .map(|index| ((index as f32 + seed) * 0.7548).sin())
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    /// Output, input gradient and qkv-kernel gradient of a loss that weighs every
    /// output differently, through the fused operation or the decomposed attention
    /// (which keeps the probabilities, as attention rollout needs).
    fn run(
        attention: &MultiHeadDotProductAttention,
        device: &Device,
        fused: bool,
    ) -> [Vec<f32>; 3] {
        let x = values([2, 7, 16], 0.0, device).require_grad();
        let output = if fused {
            attention.forward(x.clone())
        } else {
            attention.forward_with_probabilities(x.clone()).0
        };
        let loss = (output.clone() * values([2, 7, 16], 11.0, device)).sum();
        let grads = loss.backward();
        let read = |tensor: Tensor<3>| tensor.try_into_vec_as::<f32>().unwrap();
        [
            read(output.inner()),
            read(x.grad(&grads).unwrap()),
            read(attention.qkv.weight.grad(&grads).unwrap().unsqueeze::<3>()),
        ]
    }

    /// Checks the fused operation against the decomposed attention on `device`'s
    /// autodiff: outputs and gradients within 1e-5 (absolute, values of order 1).
    fn assert_matches_decomposed(device: &Device) {
        let training = device.clone().autodiff();
        assert!(supported(&training));
        let attention = MultiHeadDotProductAttention::new(16, 4, 0.0, &training);
        let fused = run(&attention, &training, true);
        let decomposed = run(&attention, &training, false);
        for (what, (ours, theirs)) in ["output", "input gradient", "qkv kernel gradient"]
            .iter()
            .zip(fused.iter().zip(&decomposed))
        {
            let largest = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(largest < 1e-5, "{what}: largest difference {largest}");
            assert!(
                theirs.iter().any(|value| value.abs() > 1e-3),
                "{what} is all zero"
            );
        }
    }

    #[test]
    fn gradients_equal_the_decomposed_attention_on_flex() {
        assert_matches_decomposed(&Device::flex());
        // Inference keeps burn's fused kernel.
        assert!(!supported(&Device::flex()));
    }
}
