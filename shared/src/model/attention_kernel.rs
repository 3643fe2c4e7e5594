//! Scaled dot-product attention (no mask) on burn-flex, one (batch, head) per task of the
//! thread pool: a head's scores with `gemm`, the softmax along keys with our vectorised
//! `exp`, then the product with the values. burn-flex's own kernel does the same with
//! libm's `expf`, one value at a time: 9% of a ViT-B/16 forward pass went to its softmax
//! (`perf`). The heads are read where they are, in the fused projection's `[B, N, 3·D]`
//! output, and written straight into the `[B, N, D]` input of the output projection: no
//! copies to split and merge heads. Used for inference, by `training_attention` (forward
//! and backward) and for the probabilities of attention rollout; natively only (in the
//! browser, burn-flex's kernel and burn's softmax).

use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Slice, Tensor};
#[cfg(not(target_arch = "wasm32"))]
use burn_flex::FlexTensor;

#[cfg(not(target_arch = "wasm32"))]
use super::cpu::{self, exp_f32};
#[cfg(not(target_arch = "wasm32"))]
use super::matmul::{Matrix, gemm_raw};

/// softmax(Q·Kᵀ/√Dh)·V with heads merged, `[B, N, D]`, from the fused projection's
/// `[B, N, 3·D]` output (query, key and value heads side by side): ours on burn-flex
/// without autodiff, burn's `attention` elsewhere.
pub(crate) fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let device = qkv.device();
    let primitive = qkv.into_dispatch();
    let output = if device.is_autodiff() || !super::on_flex(&device) {
        composed_attention::<Dispatch>(primitive, heads)
    } else {
        <Dispatch as SoftmaxAttention>::softmax_attention(primitive, heads)
    };
    Tensor::from_dispatch(output)
}

/// softmax(Q·Kᵀ/√Dh) `[B, H, Q, N]` for `[B, H, Q, Dh]` query and `[B, H, N, Dh]` key:
/// ours on burn-flex without autodiff (every token's query, `Q = N`), composed of burn's
/// operations elsewhere and for fewer queries (the class token's alone).
pub(crate) fn probabilities(query: Tensor<4>, key: Tensor<4>) -> Tensor<4> {
    let device = query.device();
    let every_query = query.dims()[2] == key.dims()[2];
    if device.is_autodiff() || !super::on_flex(&device) || !every_query {
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
    /// [`attention`]: `[B, N, 3·D]` → `[B, N, D]`.
    fn softmax_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        composed_attention::<Self>(qkv, heads)
    }

    /// softmax(Q·Kᵀ/√Dh), `[B, H, N, N]`.
    fn attention_probabilities(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_probabilities::<Self>(query, key)
    }
}

/// [`attention`] with the backend's operations: heads split, its `attention`, merged.
pub(super) fn composed_attention<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let shape = qkv.shape();
    let [query, key, value] = split_heads::<B>(qkv, heads);
    let output = B::attention(
        query,
        key,
        value,
        None,
        None,
        AttentionModuleOptions::default(),
    );
    merge_heads::<B>(output, [shape[0], shape[1], shape[2] / 3])
}

/// `[B, N, 3·D]` → query, key and value, each a contiguous `[B, H, N, Dh]` (one copy
/// each, as backends' attention kernels want them).
pub(super) fn split_heads<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [FloatTensor<B>; 3] {
    let shape = qkv.shape();
    let (batch, tokens) = (shape[0], shape[1]);
    let head_dim = shape[2] / 3 / heads;
    let qkv = B::float_reshape(qkv, Shape::from([batch, tokens, 3, heads, head_dim]));
    let qkv = B::float_permute(qkv, &[2, 0, 3, 1, 4]);
    [0, 1, 2].map(|part| {
        let slices = [
            Slice::from(part..part + 1),
            Slice::from(0..batch),
            Slice::from(0..heads),
            Slice::from(0..tokens),
            Slice::from(0..head_dim),
        ];
        let part = B::float_slice(qkv.clone(), &slices);
        B::float_reshape(part, Shape::from([batch, heads, tokens, head_dim]))
    })
}

/// `[B, H, N, Dh]` → `[B, N, D]` (`dims`).
pub(super) fn merge_heads<B: Backend>(heads: FloatTensor<B>, dims: [usize; 3]) -> FloatTensor<B> {
    B::float_reshape(B::float_swap_dims(heads, 1, 2), Shape::from(dims))
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
    fn softmax_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        match Heads::of_qkv(&qkv, heads) {
            Some(layout) => layout.attention(),
            None => composed_attention::<Self>(qkv, heads),
        }
    }

    fn attention_probabilities(query: FlexTensor, key: FlexTensor) -> FlexTensor {
        match Heads::of_query_key(&query, &key) {
            Some(layout) => layout.probabilities(),
            None => composed_probabilities::<Self>(query, key),
        }
    }
}

/// Where the rows of one part (query, key, value, output...) of every head are: head
/// `h` of batch `b` starts at `start + b·batch_stride + h·head_stride`, its rows
/// `row_stride` apart, its values consecutive.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
pub(super) struct Part {
    start: usize,
    batch_stride: usize,
    head_stride: usize,
    row_stride: usize,
}

#[cfg(not(target_arch = "wasm32"))]
impl Part {
    /// Part `part` (0 query, 1 key, 2 value) of a contiguous `[B, N, 3·D]` qkv tensor.
    pub fn of_qkv(part: usize, heads: &Heads) -> Self {
        let hidden = heads.heads * heads.head_dim;
        Self {
            start: part * hidden,
            batch_stride: heads.tokens * 3 * hidden,
            head_stride: heads.head_dim,
            row_stride: 3 * hidden,
        }
    }

    /// A contiguous `[B, N, D]` tensor with merged heads.
    pub fn merged(heads: &Heads) -> Self {
        let hidden = heads.heads * heads.head_dim;
        Self {
            start: 0,
            batch_stride: heads.tokens * hidden,
            head_stride: heads.head_dim,
            row_stride: hidden,
        }
    }

    /// A contiguous `[B, H, N, Dh]` tensor.
    fn split(heads: &Heads) -> Self {
        let size = heads.tokens * heads.head_dim;
        Self {
            start: 0,
            batch_stride: heads.heads * size,
            head_stride: size,
            row_stride: heads.head_dim,
        }
    }

    /// Where head `index` (`b·H + h`) starts.
    pub fn offset(&self, heads: &Heads, index: usize) -> usize {
        let (batch, head) = (index / heads.heads, index % heads.heads);
        self.start + batch * self.batch_stride + head * self.head_stride
    }

    /// Head `index` of `values` as an `N × Dh` matrix.
    pub fn matrix<'a>(&self, heads: &Heads, values: &'a [f32], index: usize) -> Matrix<'a> {
        Matrix {
            values,
            offset: self.offset(heads, index),
            rows: self.row_stride,
            columns: 1,
        }
    }

    /// Rows apart.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }
}

/// The shape of multi-head attention and where its query, key and value are.
#[cfg(not(target_arch = "wasm32"))]
pub(super) struct Heads<'a> {
    /// The query's values; the key's and value's too for a qkv tensor.
    pub query: &'a [f32],
    pub key: &'a [f32],
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
    /// Query, key and value parts as in a qkv tensor (else contiguous `[B, H, N, Dh]`).
    qkv: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl<'a> Heads<'a> {
    /// A contiguous f32 `[B, N, 3·D]` qkv tensor with `heads` heads.
    pub fn of_qkv(qkv: &'a FlexTensor, heads: usize) -> Option<Self> {
        let shape = qkv.shape();
        let values = cpu::f32_values(qkv)?;
        if shape.num_dims() != 3 || heads == 0 || !shape[2].is_multiple_of(3 * heads) {
            return None;
        }
        Some(Self {
            query: values,
            key: values,
            batch: shape[0],
            heads,
            tokens: shape[1],
            head_dim: shape[2] / 3 / heads,
            qkv: true,
        })
    }

    /// Contiguous f32 `[B, H, N, Dh]` query and key.
    fn of_query_key(query: &'a FlexTensor, key: &'a FlexTensor) -> Option<Self> {
        let shape = query.shape();
        if shape.num_dims() != 4 || key.shape() != shape {
            return None;
        }
        Some(Self {
            query: cpu::f32_values(query)?,
            key: cpu::f32_values(key)?,
            batch: shape[0],
            heads: shape[1],
            tokens: shape[2],
            head_dim: shape[3],
            qkv: false,
        })
    }

    /// Where part `part` (0 query, 1 key, 2 value) of the heads is.
    pub fn part(&self, part: usize) -> Part {
        if self.qkv {
            Part::of_qkv(part, self)
        } else {
            Part::split(self)
        }
    }

    /// Batch × heads.
    pub fn count(&self) -> usize {
        self.batch * self.heads
    }

    /// The attention output with heads merged, `[B, N, D]` (value heads in `query`'s
    /// storage, as in a qkv tensor).
    fn attention(&self) -> FlexTensor {
        let (n, dh) = (self.tokens, self.head_dim);
        let merged = Part::merged(self);
        let size = self.batch * n * self.heads * dh;
        let mut output = Vec::<f32>::with_capacity(size);
        let out = cpu::Shared(output.as_mut_ptr());
        cpu::for_each_index(self.count(), |index| {
            cpu::with_scratch(n * n, |probabilities| {
                self.probabilities_into(index, probabilities);
                let probabilities = Matrix::contiguous(probabilities, n);
                let value = self.part(2).matrix(self, self.query, index);
                // SAFETY: head `index`'s block of the output (N rows of Dh values, rows D
                // apart from its offset) is within the output's capacity and written by
                // this task only; gemm writes all of it.
                unsafe {
                    gemm_raw(
                        probabilities,
                        value,
                        [n, n, dh],
                        out.at(merged.offset(self, index)),
                        merged.row_stride(),
                    )
                };
            })
        });
        // SAFETY: the heads' blocks cover the output, each written by gemm above.
        unsafe { output.set_len(size) };
        cpu::tensor(output, [self.batch, n, self.heads * dh].into())
    }

    /// The probabilities, `[B, H, N, N]`.
    fn probabilities(&self) -> FlexTensor {
        let n = self.tokens;
        let (output, _) = cpu::compute(self.count() * n * n, (n * n).max(1), |index, out| {
            self.probabilities_into(index, out)
        });
        cpu::tensor(output, [self.batch, self.heads, n, n].into())
    }

    /// softmax(Q·Kᵀ/√Dh) of head `index` into `out` (`N × N`). Inlined into the callers'
    /// AVX2 code (see `cpu::compute`).
    #[inline(always)]
    pub fn probabilities_into(&self, index: usize, out: &mut [f32]) {
        let (n, d) = (self.tokens, self.head_dim);
        let query = self.part(0).matrix(self, self.query, index);
        let key = self.part(1).matrix(self, self.key, index).transposed();
        // SAFETY: `out` holds N × N values.
        assert!(out.len() >= n * n);
        unsafe { gemm_raw(query, key, [n, d, n], out.as_mut_ptr(), n) };
        // As burn-flex: the scale in f64, rounded once.
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        for row in out[..n * n].chunks_exact_mut(n.max(1)) {
            softmax(row, scale);
        }
    }
}

/// The gradient of the qkv tensor `[B, N, 3·D]` of [`attention`] from its output and the
/// output's gradient (both `[B, N, D]`), one head per task (see `training_attention.rs`
/// for the formulas): each head's probabilities recomputed into scratch memory, its
/// three gradients written in place into the result. `None` for tensors that are not
/// contiguous f32 of those shapes.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward(
    qkv: &FlexTensor,
    output: &FlexTensor,
    output_grad: &FlexTensor,
    heads: usize,
) -> Option<FlexTensor> {
    let layout = Heads::of_qkv(qkv, heads)?;
    let (output, output_grad) = (cpu::f32_values(output)?, cpu::f32_values(output_grad)?);
    let (n, dh) = (layout.tokens, layout.head_dim);
    let merged = Part::merged(&layout);
    let size = layout.batch * n * layout.heads * dh;
    if output.len() != size || output_grad.len() != size {
        return None;
    }
    let scale = (1.0 / (dh as f64).sqrt()) as f32;
    let mut grad = Vec::<f32>::with_capacity(3 * size);
    let out = cpu::Shared(grad.as_mut_ptr());
    cpu::for_each_index(layout.count(), |index| {
        let [query, key, value] =
            [0, 1, 2].map(|part| layout.part(part).matrix(&layout, layout.query, index));
        let output = merged.matrix(&layout, output, index);
        let output_grad = merged.matrix(&layout, output_grad, index);
        cpu::with_scratch(2 * n * n, |scratch| {
            let (probabilities, scores_grad) = scratch.split_at_mut(n * n);
            layout.probabilities_into(index, probabilities);
            let slot = |part: usize| out.at(layout.part(part).offset(&layout, index));
            let stride = layout.part(0).row_stride();
            let probabilities_matrix = Matrix::contiguous(probabilities, n);
            // SAFETY (all four products): the destinations are this head's blocks of the
            // gradient (N rows of Dh values, rows 3·D apart: disjoint across heads and
            // parts, within its capacity) or this task's N × N buffer, which gemm
            // overwrites.
            unsafe {
                // dV = Pᵀ·dO
                gemm_raw(
                    probabilities_matrix.transposed(),
                    output_grad,
                    [n, n, dh],
                    slot(2),
                    stride,
                );
                // dP = dO·Vᵀ
                gemm_raw(
                    output_grad,
                    value.transposed(),
                    [n, dh, n],
                    scores_grad.as_mut_ptr(),
                    n,
                );
            }
            // dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale, in place of dP.
            let rows = scores_grad
                .chunks_exact_mut(n.max(1))
                .zip(probabilities.chunks_exact(n.max(1)));
            for (row, (scores_grad, probabilities)) in rows.enumerate() {
                let row_dot =
                    cpu::sum_of(output_grad.row(row, dh), output.row(row, dh), |a, b| a * b);
                softmax_backward(scores_grad, probabilities, row_dot, scale);
            }
            let scores_grad = Matrix::contiguous(scores_grad, n);
            unsafe {
                // dQ = dS·K, dK = dSᵀ·Q
                gemm_raw(scores_grad, key, [n, n, dh], slot(0), stride);
                gemm_raw(scores_grad.transposed(), query, [n, n, dh], slot(1), stride);
            }
        })
    });
    // SAFETY: the heads' three blocks cover the gradient, each written by gemm above.
    unsafe { grad.set_len(3 * size) };
    Some(cpu::tensor(grad, qkv.shape().clone()))
}

#[cfg(not(target_arch = "wasm32"))]
cpu::vectorised! {
    /// `dS ← P ⊙ (dP − row_dot)·scale` on one row, `grad` (dP) overwritten.
    fn softmax_backward(grad: &mut [f32], probabilities: &[f32], row_dot: f32, scale: f32) {
        for (grad, &probability) in grad.iter_mut().zip(probabilities) {
            *grad = probability * (*grad - row_dot) * scale;
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
cpu::vectorised! {
/// `row ← softmax(row · scale)`, in the order of burn-flex's kernel: scaled scores, their
/// maximum, `e^(s − max)` and its sum, then a product with `1 / sum`. Eight lanes of
/// partial maxima and sums so that the loops vectorise.
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
        // Tokens below, at and off the eight lanes (ViT-B/16's 197 and head width 64),
        // and a transposed (strided) query, which falls back to burn's.
        let device: Device = burn::backend::FlexDevice.into();
        // Our `exp` and burn-flex's (libm) differ by about an ulp.
        let tolerance = Tolerance::rel_abs(1e-5, 1e-6);
        for [batch, heads, tokens, head_dim] in [[1, 1, 3, 4], [2, 3, 8, 16], [1, 2, 197, 64]] {
            let hidden = heads * head_dim;
            let qkv = Tensor::<3>::random(
                [batch, tokens, 3 * hidden],
                Distribution::Normal(0.0, 2.0),
                &device,
            );
            let parts = qkv
                .clone()
                .reshape([batch, tokens, 3, heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let part = |index| {
                parts
                    .clone()
                    .narrow(0, index, 1)
                    .reshape([batch, heads, tokens, head_dim])
            };
            let (query, key, value) = (part(0), part(1), part(2));
            let expected = burn::tensor::module::attention(
                query.clone(),
                key.clone(),
                value,
                None,
                None,
                AttentionModuleOptions::default(),
            )
            .swap_dims(1, 2)
            .reshape([batch, tokens, hidden]);
            attention(qkv, heads)
                .into_data()
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
