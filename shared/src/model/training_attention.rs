//! Attention for training that keeps no attention matrix between the forward and the
//! backward pass.
//!
//! burn 0.22's autodiff runs `attention` through its decomposed fallback, which stores
//! the scores and probabilities of every layer (`[B, H, N, N]` each) until the backward
//! pass. This operation stores only its input (the fused projection's `[B, N, 3·D]`
//! output: query, key and value heads side by side) and its output (`[B, N, D]`, heads
//! merged), and recomputes the probabilities of one layer at a time in the backward pass,
//! the scheme of flash attention.
//!
//! With S = scale·Q·Kᵀ, P = softmax(S) along keys and O = P·V, the backward pass is
//! dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = scale·dS·K,
//! dK = scale·dSᵀ·Q (rowsum(dO ⊙ O) equals rowsum(dP ⊙ P), without a second N×N product).
//!
//! On burn-flex both passes are ours, one head per task (`attention_kernel.rs`): heads
//! read in place from the qkv tensor and their gradients written in place into its
//! gradient, every step of the backward pass in that task. On libtorch the forward pass
//! is its `scaled_dot_product_attention` and the backward pass the formulas above
//! composed of tensor operations.

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
use burn::backend::{Backend, Dispatch, TensorMetadata};
use burn::backend::{Flex, backend_extension};
use burn::tensor::{Shape, Tensor};
use burn_flex::FlexTensor;

use super::attention_kernel::{
    SoftmaxAttention, composed_attention, composed_probabilities, split_heads,
};

/// Scaled dot-product attention (no mask, scale 1/√Dh) of a qkv tensor, with a backward
/// pass that recomputes the probabilities.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait TrainingAttention: Backend {
    /// softmax(Q·Kᵀ/√Dh)·V, `[B, N, 3·D]` → `[B, N, D]`.
    fn training_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        composed_attention::<Self>(qkv, heads)
    }

    /// The gradient of [`Self::training_attention`]'s input from its input, its output
    /// and the gradient of its output.
    fn training_attention_backward(
        qkv: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        composed_backward::<Self>(qkv, output, output_grad, heads)
    }
}

/// [`TrainingAttention::training_attention_backward`] composed of the backend's
/// operations.
fn composed_backward<B: Backend>(
    qkv: FloatTensor<B>,
    output: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    heads: usize,
) -> FloatTensor<B> {
    let dims: [usize; 3] = qkv.shape().dims();
    let [batch, tokens, _] = dims;
    let hidden = dims[2] / 3;
    let split = |merged: FloatTensor<B>| {
        let shape = Shape::from([batch, tokens, heads, hidden / heads]);
        B::float_swap_dims(B::float_reshape(merged, shape), 1, 2)
    };
    let [query, key, value] = split_heads::<B>(qkv, heads);
    let (output, output_grad) = (split(output), split(output_grad));
    let head_dim = hidden / heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let transpose = |tensor| B::float_swap_dims(tensor, 2, 3);
    let probabilities = composed_probabilities::<B>(query.clone(), key.clone());
    let value_grad = B::float_matmul(transpose(probabilities.clone()), output_grad.clone());
    let probabilities_grad = B::float_matmul(output_grad.clone(), transpose(value));
    let row_dot = B::float_sum_dim(B::float_mul(output_grad, output), 3);
    let scores_grad = B::float_mul_scalar(
        B::float_mul(probabilities, B::float_sub(probabilities_grad, row_dot)),
        scale.into(),
    );
    let query_grad = B::float_matmul(scores_grad.clone(), key);
    let key_grad = B::float_matmul(transpose(scores_grad), query);
    // Back to `[B, N, 3, H, Dh]`, then `[B, N, 3·D]`.
    let parts = [query_grad, key_grad, value_grad].map(|grad| {
        let grad = B::float_swap_dims(grad, 1, 2);
        B::float_reshape(grad, Shape::from([batch, tokens, 1, heads, head_dim]))
    });
    B::float_reshape(B::float_cat(parts.into(), 2), Shape::from(dims))
}

/// On burn-flex, ours (see `attention_kernel.rs`).
impl TrainingAttention for Flex {
    fn training_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        <Self as SoftmaxAttention>::softmax_attention(qkv, heads)
    }

    fn training_attention_backward(
        qkv: FlexTensor,
        output: FlexTensor,
        output_grad: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(grad) = super::attention_kernel::backward(&qkv, &output, &output_grad, heads) {
            return grad;
        }
        composed_backward::<Self>(qkv, output, output_grad, heads)
    }
}

#[cfg(feature = "tch")]
impl TrainingAttention for LibTorch {}

impl<B: Backend + TrainingAttention, C: CheckpointStrategy> TrainingAttention for Autodiff<B, C> {
    fn training_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + TrainingAttention> Backward<B, 1> for AttentionBackward {
            /// The qkv tensor, the output and the number of heads.
            type State = (FloatTensor<B>, FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [qkv_node] = ops.parents;
                let output_grad = grads.consume::<B>(&ops.node);
                let (qkv, output, heads) = ops.state;
                if let Some(node) = qkv_node {
                    let grad = B::training_attention_backward(qkv, output, output_grad, heads);
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.into_primitive();
                let output = B::training_attention(qkv.clone(), heads);
                prep.finish((qkv, output.clone(), heads), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::training_attention(qkv.into_primitive(), heads))
            }
        }
    }
}

/// Whether [`attention`] runs on tensors of `device` (an autodiff device on a backend
/// the extension is built for); elsewhere burn's `attention` is used.
pub fn supported(device: &burn::tensor::Device) -> bool {
    device.is_autodiff() && super::has_own_operations(device)
}

/// softmax(Q·Kᵀ/√Dh)·V with heads merged, `[B, N, D]`, from a `[B, N, 3·D]` qkv tensor
/// of a [`supported`] device, keeping no attention matrix for the backward pass.
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as TrainingAttention>::training_attention(
        qkv.into_dispatch(),
        heads,
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

    #[test]
    fn flex_backward_kernel_equals_the_composed_backward() {
        // The kernel itself (the module test above would pass on the composed fallback
        // too): ViT-B/16's 197 tokens, 3 heads of 16.
        let device = Device::flex();
        let qkv = values([2, 197, 3 * 48], 1.0, &device);
        let output_grad = values([2, 197, 48], 5.0, &device);
        let flex = |tensor: Tensor<3>| FlexTensor::from_data(tensor.into_data());
        let (qkv, output_grad) = (flex(qkv), flex(output_grad));
        let output = Flex::training_attention(qkv.clone(), 3);
        let ours = super::super::attention_kernel::backward(&qkv, &output, &output_grad, 3)
            .expect("contiguous f32 tensors");
        let composed = composed_backward::<Flex>(qkv, output, output_grad, 3);
        let read = |tensor: FlexTensor| tensor.into_data().try_to_vec::<f32>().unwrap();
        let (ours, composed) = (read(ours), read(composed));
        assert_eq!(ours.len(), 2 * 197 * 3 * 48);
        let largest = ours
            .iter()
            .zip(&composed)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(largest < 1e-5, "largest difference {largest}");
        assert!(composed.iter().any(|value| value.abs() > 1e-2));
    }
}
