//! Scaled dot-product attention (no mask) on burn-flex, one (batch, head) per task of the
//! thread pool: a head's scores with `gemm`, the softmax along keys with our vectorised
//! `exp`, then the product with the values. burn-flex's own kernel does the same with
//! libm's `expf`, one value at a time: 9% of a ViT-B/16 forward pass went to its softmax
//! (`perf`). Used for inference, for the forward pass of `training_attention` and for
//! the probabilities that its backward pass recomputes; natively only (in the browser,
//! burn-flex's kernel and burn's softmax).

use burn::backend::ops::AttentionModuleOptions;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
#[cfg(not(target_arch = "wasm32"))]
use burn_flex::FlexTensor;

#[cfg(not(target_arch = "wasm32"))]
use std::mem::MaybeUninit;

#[cfg(not(target_arch = "wasm32"))]
use super::cpu::{self, exp_f32};
#[cfg(not(target_arch = "wasm32"))]
use super::matmul::Matrix;

/// softmax(Q·Kᵀ/√Dh)·V for `[B, H, N, Dh]` tensors: ours on burn-flex without autodiff,
/// burn's `attention` elsewhere.
pub(crate) fn attention(query: Tensor<4>, key: Tensor<4>, value: Tensor<4>) -> Tensor<4> {
    let device = query.device();
    if device.is_autodiff() || !super::on_flex(&device) {
        return burn::tensor::module::attention(
            query,
            key,
            value,
            None,
            None,
            AttentionModuleOptions::default(),
        );
    }
    Tensor::from_dispatch(<Dispatch as SoftmaxAttention>::softmax_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
    ))
}

/// softmax(Q·Kᵀ/√Dh) `[B, H, N, N]` for `[B, H, N, Dh]` query and key: ours on burn-flex
/// without autodiff, composed of burn's operations elsewhere.
pub(crate) fn probabilities(query: Tensor<4>, key: Tensor<4>) -> Tensor<4> {
    let device = query.device();
    if device.is_autodiff() || !super::on_flex(&device) {
        let head_dim = query.dims()[3];
        let scores = super::matmul::matmul(query, key.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        return burn::tensor::activation::softmax(scores, 3);
    }
    Tensor::from_dispatch(<Dispatch as SoftmaxAttention>::attention_probabilities(
        query.into_dispatch(),
        key.into_dispatch(),
    ))
}

/// Attention and its probabilities as operations (see the module's documentation).
#[backend_extension(Flex)]
pub trait SoftmaxAttention: Backend {
    /// softmax(Q·Kᵀ/√Dh)·V for `[B, H, N, Dh]` inputs.
    fn softmax_attention(
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

    /// softmax(Q·Kᵀ/√Dh), `[B, H, N, N]`.
    fn attention_probabilities(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_probabilities::<Self>(query, key)
    }
}

/// [`SoftmaxAttention::attention_probabilities`] composed of the backend's operations.
pub(super) fn composed_probabilities<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
) -> FloatTensor<B> {
    let scale = 1.0 / (query.shape()[3] as f64).sqrt();
    let scores = B::float_matmul(query, B::float_swap_dims(key, 2, 3));
    B::softmax(B::float_mul_scalar(scores, scale.into()), 3)
}

#[cfg(target_arch = "wasm32")]
impl SoftmaxAttention for Flex {}

#[cfg(not(target_arch = "wasm32"))]
impl SoftmaxAttention for Flex {
    fn softmax_attention(query: FlexTensor, key: FlexTensor, value: FlexTensor) -> FlexTensor {
        match Heads::of(&query, &key, Some(&value)) {
            Some(heads) => heads.output(),
            None => Self::attention(
                query,
                key,
                value,
                None,
                None,
                AttentionModuleOptions::default(),
            ),
        }
    }

    fn attention_probabilities(query: FlexTensor, key: FlexTensor) -> FlexTensor {
        match Heads::of(&query, &key, None) {
            Some(heads) => heads.probabilities(),
            None => composed_probabilities::<Self>(query, key),
        }
    }
}

/// Contiguous f32 `[B, H, N, Dh]` query and key (and value, `[B, H, N, Dv]`).
#[cfg(not(target_arch = "wasm32"))]
struct Heads<'a> {
    query: &'a [f32],
    key: &'a [f32],
    value: &'a [f32],
    /// Batch and heads.
    outer: [usize; 2],
    /// Batch × heads.
    count: usize,
    tokens: usize,
    head_dim: usize,
    value_dim: usize,
}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> Heads<'a> {
    fn of(
        query: &'a FlexTensor,
        key: &'a FlexTensor,
        value: Option<&'a FlexTensor>,
    ) -> Option<Self> {
        let (shape, key_shape) = (query.shape(), key.shape());
        if shape.num_dims() != 4 || key_shape != shape {
            return None;
        }
        let outer = [shape[0], shape[1]];
        let (count, tokens, head_dim) = (shape[0] * shape[1], shape[2], shape[3]);
        let (value, value_dim) = match value {
            Some(value) => {
                let value_shape = value.shape();
                if value_shape.num_dims() != 4 || value_shape[..3] != shape[..3] {
                    return None;
                }
                (cpu::f32_values(value)?, value_shape[3])
            }
            None => (&[][..], 0),
        };
        Some(Self {
            query: cpu::f32_values(query)?,
            key: cpu::f32_values(key)?,
            value,
            outer,
            count,
            tokens,
            head_dim,
            value_dim,
        })
    }

    /// The attention output, `[B, H, N, Dv]`.
    fn output(&self) -> FlexTensor {
        let (n, dv) = (self.tokens, self.value_dim);
        let (output, _) = cpu::compute(self.count * n * dv, (n * dv).max(1), |head, out| {
            let mut probabilities = vec![0.0f32; n * n];
            self.probabilities_into(head, &mut probabilities);
            let probabilities = matrix(&probabilities, 0, n, 1);
            let value = matrix(self.value, head * n * dv, dv, 1);
            super::matmul::gemm_into(
                probabilities,
                value,
                [n, n, dv],
                uninit(out),
                gemm::Parallelism::None,
            );
        });
        self.tensor(output, dv)
    }

    /// The probabilities, `[B, H, N, N]`.
    fn probabilities(&self) -> FlexTensor {
        let n = self.tokens;
        let (output, _) = cpu::compute(self.count * n * n, (n * n).max(1), |head, out| {
            self.probabilities_into(head, out)
        });
        self.tensor(output, n)
    }

    /// softmax(Q·Kᵀ/√Dh) of head `head` into `out` (`N × N`). Inlined into the callers'
    /// AVX2 code (see `cpu::compute`).
    #[inline(always)]
    fn probabilities_into(&self, head: usize, out: &mut [f32]) {
        let (n, d) = (self.tokens, self.head_dim);
        let query = matrix(self.query, head * n * d, d, 1);
        // Kᵀ: element (i, j) is key[j, i].
        let key = matrix(self.key, head * n * d, 1, d);
        super::matmul::gemm_into(query, key, [n, d, n], uninit(out), gemm::Parallelism::None);
        // As burn-flex: the scale in f64, rounded once.
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        for row in out.chunks_exact_mut(n.max(1)) {
            softmax(row, scale);
        }
    }

    /// A `[B, H, N, last]` tensor.
    fn tensor(&self, values: Vec<f32>, last: usize) -> FlexTensor {
        let [batch, heads] = self.outer;
        cpu::tensor(values, [batch, heads, self.tokens, last].into())
    }
}

/// A row-major view of `values` (rows `rows` apart, columns `columns` apart) at `offset`.
#[cfg(not(target_arch = "wasm32"))]
fn matrix(values: &[f32], offset: usize, rows: usize, columns: usize) -> Matrix<'_> {
    Matrix {
        values,
        offset,
        rows,
        columns,
    }
}

/// `values` as slots that `gemm_into` overwrites.
#[cfg(not(target_arch = "wasm32"))]
fn uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and what is written through the
    // result (by gemm) is initialised f32 values only.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `row ← softmax(row · scale)`, in the order of burn-flex's kernel: scaled scores, their
/// maximum, `e^(s − max)` and its sum, then a product with `1 / sum`. Eight lanes of
/// partial maxima and sums so that the loops vectorise.
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn softmax(row: &mut [f32], scale: f32) {
    const LANES: usize = 8;
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let (body, tail) = row.split_at_mut(row.len() / LANES * LANES);
    for values in body.chunks_exact_mut(LANES) {
        for (value, max) in values.iter_mut().zip(&mut maxima) {
            *value *= scale;
            *max = if *value > *max { *value } else { *max };
        }
    }
    let mut max = maxima.into_iter().fold(f32::NEG_INFINITY, f32::max);
    for value in tail.iter_mut() {
        *value *= scale;
        max = max.max(*value);
    }
    let mut sums = [0.0f32; LANES];
    for values in body.chunks_exact_mut(LANES) {
        for (value, sum) in values.iter_mut().zip(&mut sums) {
            *value = exp_f32(*value - max);
            *sum += *value;
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for value in tail.iter_mut() {
        *value = exp_f32(*value - max);
        sum += *value;
    }
    let inverse = 1.0 / sum;
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(shape, Distribution::Normal(0.0, 2.0), device)
    }

    #[test]
    fn equals_burns_attention_and_softmax() {
        // Tokens below, at and off the eight lanes (ViT-B/16's 197), a value width that
        // differs from the head's, and a transposed (strided) query, which falls back.
        let device: Device = burn::backend::FlexDevice.into();
        // Our `exp` and burn-flex's (libm) differ by about an ulp.
        let tolerance = Tolerance::rel_abs(1e-5, 1e-6);
        for (batch, heads, tokens, head_dim, value_dim) in
            [(1, 1, 3, 4, 4), (2, 3, 8, 16, 5), (1, 2, 197, 64, 64)]
        {
            let query = random([batch, heads, tokens, head_dim], &device);
            let key = random([batch, heads, tokens, head_dim], &device);
            let value = random([batch, heads, tokens, value_dim], &device);
            let options = AttentionModuleOptions::default();
            let expected = burn::tensor::module::attention(
                query.clone(),
                key.clone(),
                value.clone(),
                None,
                None,
                options,
            );
            let ours = attention(query.clone(), key.clone(), value);
            ours.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), tolerance);
            let scores =
                query.clone().matmul(key.clone().swap_dims(2, 3)) / (head_dim as f64).sqrt();
            let expected = burn::tensor::activation::softmax(scores, 3);
            probabilities(query, key)
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), tolerance);
        }
        let query = random([1, 2, 6, 5], &device).swap_dims(2, 3);
        let key = random([1, 2, 5, 6], &device);
        let scores = query.clone().matmul(key.clone().swap_dims(2, 3)) / 6f64.sqrt();
        probabilities(query, key)
            .into_data()
            .assert_approx_eq::<f32>(
                &burn::tensor::activation::softmax(scores, 3).into_data(),
                tolerance,
            );
    }
}
