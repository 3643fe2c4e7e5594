//! The matmuls of inference in the browser, with a kernel of our own (4-lane wasm SIMD),
//! where 80% of a ViT-B/16 forward pass goes.
//!
//! burn-flex multiplies matrices with `gemm`, whose wasm kernel multiplies and adds in
//! two instructions: plain wasm SIMD has no fused multiply-add. Relaxed SIMD has one
//! (`f32x4.relaxed_madd`, a single `vfmadd` on x86-64 CPUs with FMA), in Chromium since
//! version 114 but not in every browser, and a module that uses it does not load where
//! it is missing. So the web app builds its CPU worker twice, with and without the
//! `relaxed-simd` feature, and the page picks by feature detection. This kernel is what
//! both run: with relaxed SIMD about 1.3× gemm's speed on ViT-B/16's shapes in Chromium
//! 156 here, without it about the same as gemm. It keeps 12 vector registers live (8
//! accumulators of a 4 × 8 tile, two vectors of the right operand, a broadcast and a
//! product), and its loops call nothing.
//!
//! The usual blocked scheme (as in BLIS): the right operand is packed in blocks of
//! `KC` rows × `NC` columns as panels of [`NR`] columns, the left operand in blocks of
//! `MC` rows × `KC` as panels of [`MR`] rows (both zero-padded to whole panels), and the
//! kernel computes one `MR × NR` tile of the output over `KC` steps from one panel of
//! each, the right panel staying in the L1 cache across the left panels of a block.
//!
//! The model uses it only in the browser (wasm32), for inference. Natively burn-flex's
//! `gemm` has AVX-512 kernels and threads; there the same code (with plain 4-float
//! arrays for the vectors) is what the unit tests check against burn's matmul. The
//! browser end-to-end test checks both worker builds against `trainer predict`.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_flex::FlexTensor;

use super::cpu;

/// Rows of an output tile.
const MR: usize = 4;
/// Columns of an output tile: two vectors.
const NR: usize = 8;
/// Depth of a block (a right panel is `KC × NR` floats, 8 KiB).
const KC: usize = 256;
/// Rows of a left block (`MC × KC` floats, 64 KiB, for the L2 cache).
const MC: usize = 64;
/// Columns of a right block (`KC × NC` floats, 512 KiB).
const NC: usize = 512;

/// `lhs · rhs` for inference: with our kernel in the browser, burn's matmul elsewhere.
pub(crate) fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    if uses_own_kernel(&lhs.device()) {
        Tensor::from_dispatch(<Dispatch as PackedMatmul>::packed_matmul(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
        ))
    } else {
        lhs.matmul(rhs)
    }
}

/// `layer.forward(x)`, with [`matmul`].
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    if !uses_own_kernel(&x.device()) {
        return layer.forward(x);
    }
    let weight = layer.weight.val();
    let [inputs, outputs] = weight.dims();
    let mut dims = x.dims();
    let rows = x.shape().num_elements() / inputs.max(1);
    let product = matmul(x.reshape([rows, inputs]), weight);
    let output = match &layer.bias {
        Some(bias) => product + bias.val().unsqueeze::<2>(),
        None => product,
    };
    dims[D - 1] = outputs;
    output.reshape(dims)
}

/// Inference on burn-flex in the browser (see the module's documentation).
fn uses_own_kernel(device: &Device) -> bool {
    cfg!(target_arch = "wasm32") && !device.is_autodiff() && super::on_flex(device)
}

/// Matrix product with the packed kernel of this module.
#[backend_extension(Flex)]
pub trait PackedMatmul: Backend {
    /// `lhs [..., m, k] · rhs [..., k, n]` with the same batch dimensions.
    fn packed_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

impl PackedMatmul for Flex {
    fn packed_matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        match Operands::of(&lhs, &rhs) {
            Some(operands) => operands.multiply(),
            // Another dtype, broadcast batch dimensions or negative strides: burn-flex's.
            None => <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs),
        }
    }
}

/// A strided matrix: element `(i, j)` is `values[offset + i·rows + j·columns]`.
#[derive(Clone, Copy)]
struct Matrix<'a> {
    values: &'a [f32],
    offset: usize,
    rows: usize,
    columns: usize,
}

impl Matrix<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.values[self.offset + i * self.rows + j * self.columns]
    }

    fn transposed(self) -> Self {
        Self {
            rows: self.columns,
            columns: self.rows,
            ..self
        }
    }
}

/// Two f32 tensors that this kernel multiplies, read in place.
struct Operands<'a> {
    lhs: &'a FlexTensor,
    rhs: &'a FlexTensor,
    /// Batch dimensions, then `m`, `k`, `n`.
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
}

impl<'a> Operands<'a> {
    fn of(lhs: &'a FlexTensor, rhs: &'a FlexTensor) -> Option<Self> {
        if lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
            return None;
        }
        let (left, right) = (lhs.layout(), rhs.layout());
        let rank = left.num_dims();
        let positive = left.has_positive_strides() && right.has_positive_strides();
        if rank < 2 || right.num_dims() != rank || !positive {
            return None;
        }
        let (ls, rs) = (left.shape(), right.shape());
        let batch = ls[..rank - 2].to_vec();
        if batch != rs[..rank - 2] || ls[rank - 1] != rs[rank - 2] {
            return None;
        }
        Some(Self {
            lhs,
            rhs,
            batch,
            m: ls[rank - 2],
            k: ls[rank - 1],
            n: rs[rank - 1],
        })
    }

    /// The product, a new contiguous tensor.
    fn multiply(&self) -> FlexTensor {
        let (m, n) = (self.m, self.n);
        let count: usize = self.batch.iter().product();
        let mut output = vec![0.0f32; count * m * n];
        let mut packed = Packed::default();
        for (index, out) in output.chunks_mut((m * n).max(1)).enumerate().take(count) {
            let lhs = self.matrix(self.lhs, index);
            let rhs = self.matrix(self.rhs, index);
            multiply(lhs, rhs, self.k, out, n, &mut packed);
        }
        let mut shape = self.batch.clone();
        shape.extend([m, n]);
        cpu::tensor(output, Shape::from(shape))
    }

    /// The `index`-th matrix (in row-major order of the batch dimensions) of `tensor`.
    fn matrix(&self, tensor: &'a FlexTensor, index: usize) -> Matrix<'a> {
        let layout = tensor.layout();
        let strides = layout.strides();
        let rank = strides.len();
        let mut offset = layout.start_offset();
        let mut rest = index;
        for (dim, &size) in self.batch.iter().enumerate().rev() {
            offset += (rest % size) * strides[dim] as usize;
            rest /= size;
        }
        Matrix {
            values: tensor.storage::<f32>(),
            offset,
            rows: strides[rank - 2] as usize,
            columns: strides[rank - 1] as usize,
        }
    }
}

/// Buffers for the packed operands, reused across the matrices of a batch.
#[derive(Default)]
struct Packed {
    lhs: Vec<f32>,
    rhs: Vec<f32>,
}

/// `out (m × n, row-major, rows `out_stride` apart) = lhs (m × k) · rhs (k × n)`.
/// With the `relaxed-simd` feature, compiled with relaxed SIMD (the kernel inlines into
/// it), whose fused multiply-add does the kernel's work in half the instructions.
#[cfg_attr(
    all(target_arch = "wasm32", feature = "relaxed-simd"),
    target_feature(enable = "relaxed-simd")
)]
fn multiply(
    lhs: Matrix,
    rhs: Matrix,
    k: usize,
    out: &mut [f32],
    out_stride: usize,
    packed: &mut Packed,
) {
    let m = out.len() / out_stride.max(1);
    let n = out_stride;
    for column in (0..n).step_by(NC) {
        let nc = NC.min(n - column);
        for depth in (0..k).step_by(KC) {
            let kc = KC.min(k - depth);
            let rhs_panels = aligned(&mut packed.rhs, nc.div_ceil(NR) * NR * kc);
            pack::<NR>(rhs.transposed(), column, nc, depth, kc, rhs_panels);
            for row in (0..m).step_by(MC) {
                let mc = MC.min(m - row);
                let lhs_panels = aligned(&mut packed.lhs, mc.div_ceil(MR) * MR * kc);
                pack::<MR>(lhs, row, mc, depth, kc, lhs_panels);
                let first = depth == 0;
                for (panel_j, rhs_panel) in rhs_panels.chunks_exact(kc * NR).enumerate() {
                    let j = column + panel_j * NR;
                    let width = NR.min(n - j);
                    for (panel_i, lhs_panel) in lhs_panels.chunks_exact(kc * MR).enumerate() {
                        let i = row + panel_i * MR;
                        let tile = kernel(lhs_panel, rhs_panel);
                        let height = MR.min(m - i);
                        store(&tile, &mut out[i * n + j..], n, height, width, first);
                    }
                }
            }
        }
    }
}

/// `len` values of `buffer` that start on a 64-byte cache line, so that no vector load
/// of the kernel straddles two lines (the allocator aligns to 8 or 16 bytes only).
fn aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE: usize = 64 / size_of::<f32>();
    buffer.resize(len + LINE, 0.0);
    let start = buffer.as_ptr().align_offset(64).min(LINE);
    &mut buffer[start..start + len]
}

/// `matrix[first .. first + len, depth .. depth + kc]` as panels of `W` rows, each stored
/// column by column (`W` values per step of the kernel), zero-padded. The right operand
/// is packed as its transpose (panels of `NR` columns).
fn pack<const W: usize>(
    matrix: Matrix,
    first: usize,
    len: usize,
    depth: usize,
    kc: usize,
    out: &mut [f32],
) {
    for (panel, out) in out.chunks_exact_mut(kc * W).enumerate() {
        let start = first + panel * W;
        let valid = W.min(len - panel * W);
        for (p, out) in out.chunks_exact_mut(W).enumerate() {
            for (r, out) in out.iter_mut().enumerate() {
                *out = if r < valid {
                    matrix.at(start + r, depth + p)
                } else {
                    0.0
                };
            }
        }
    }
}

/// One `MR × NR` tile: `Σ_p lhs_panel[p] ⊗ rhs_panel[p]`, rows of two vectors. Inlined
/// (as is `store`), so that the loops of `multiply` call nothing that V8 could inline.
#[inline(always)]
fn kernel(lhs_panel: &[f32], rhs_panel: &[f32]) -> [[F32x4; 2]; MR] {
    let mut tile = [[F32x4::zero(); 2]; MR];
    for (a, b) in lhs_panel.chunks_exact(MR).zip(rhs_panel.chunks_exact(NR)) {
        let b0 = F32x4::load(&b[..4]);
        let b1 = F32x4::load(&b[4..]);
        for (row, &a) in tile.iter_mut().zip(a) {
            let a = F32x4::splat(a);
            row[0] = row[0].mul_add(a, b0);
            row[1] = row[1].mul_add(a, b1);
        }
    }
    tile
}

/// Writes (`first`) or adds a tile to the output at `out` (rows `stride` apart), only
/// its first `height` rows and `width` columns.
#[inline(always)]
fn store(
    tile: &[[F32x4; 2]; MR],
    out: &mut [f32],
    stride: usize,
    height: usize,
    width: usize,
    first: bool,
) {
    for (r, row) in tile.iter().enumerate().take(height) {
        let mut values = [0.0f32; NR];
        row[0].store(&mut values[..4]);
        row[1].store(&mut values[4..]);
        let out = &mut out[r * stride..r * stride + width];
        if first {
            out.copy_from_slice(&values[..width]);
        } else {
            for (out, value) in out.iter_mut().zip(values) {
                *out += value;
            }
        }
    }
}

/// Four f32 lanes: wasm's `v128` in the browser, a plain array natively (a product,
/// then a sum, as the plain SIMD build: the same results).
#[cfg(target_arch = "wasm32")]
#[derive(Clone, Copy)]
struct F32x4(core::arch::wasm32::v128);

#[cfg(target_arch = "wasm32")]
impl F32x4 {
    #[inline(always)]
    fn zero() -> Self {
        Self(core::arch::wasm32::f32x4_splat(0.0))
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        Self(core::arch::wasm32::f32x4_splat(value))
    }

    #[inline(always)]
    fn load(values: &[f32]) -> Self {
        let values: &[f32; 4] = values.try_into().expect("four values");
        // SAFETY: `values` is four f32, 16 readable bytes; v128_load has no alignment
        // requirement.
        Self(unsafe { core::arch::wasm32::v128_load(values.as_ptr().cast()) })
    }

    #[inline(always)]
    fn store(self, out: &mut [f32]) {
        let out: &mut [f32; 4] = out.try_into().expect("four values");
        // SAFETY: `out` is four f32, 16 writable bytes; no alignment requirement.
        unsafe { core::arch::wasm32::v128_store(out.as_mut_ptr().cast(), self.0) }
    }

    /// `self + a·b`: one fused instruction with relaxed SIMD (rounded once or twice, as
    /// the CPU does it), a product and a sum without.
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        use core::arch::wasm32::*;
        #[cfg(feature = "relaxed-simd")]
        return Self(f32x4_relaxed_madd(a.0, b.0, self.0));
        #[cfg(not(feature = "relaxed-simd"))]
        return Self(f32x4_add(self.0, f32x4_mul(a.0, b.0)));
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
struct F32x4([f32; 4]);

#[cfg(not(target_arch = "wasm32"))]
impl F32x4 {
    fn zero() -> Self {
        Self([0.0; 4])
    }

    fn splat(value: f32) -> Self {
        Self([value; 4])
    }

    fn load(values: &[f32]) -> Self {
        Self(values.try_into().expect("four values"))
    }

    fn store(self, out: &mut [f32]) {
        out.copy_from_slice(&self.0);
    }

    fn mul_add(self, a: Self, b: Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i] + a.0[i] * b.0[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    fn device() -> Device {
        burn::backend::FlexDevice.into()
    }

    fn packed<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as PackedMatmul>::packed_matmul(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
        ))
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device())
    }

    fn assert_close<const D: usize>(actual: Tensor<D>, expected: Tensor<D>) {
        assert_eq!(actual.dims(), expected.dims());
        actual
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
    }

    #[test]
    fn equals_burns_matmul_across_block_and_tile_edges() {
        // m, k, n: one element; below, at and above a tile, a panel block, a depth block,
        // a column block (MR 4, NR 8, MC 64, KC 256, NC 512); ViT-B/16's MLP shape.
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (4, 8, 8),
            (5, 9, 9),
            (65, 257, 17),
            (197, 300, 520),
            (197, 768, 3072),
        ] {
            let (lhs, rhs) = (random([m, k]), random([k, n]));
            assert_close(packed(lhs.clone(), rhs.clone()), lhs.matmul(rhs));
        }
    }

    #[test]
    fn reads_strided_and_batched_operands_in_place() {
        // Attention's shapes: [batch, heads, tokens, head dim] views of a permuted
        // tensor, and the transposed keys.
        let qkv = random([2, 7, 3, 4, 16]).permute([2, 0, 3, 1, 4]);
        let part = |i| qkv.clone().narrow(0, i, 1).reshape([2, 4, 7, 16]);
        let (query, key) = (part(0), part(1));
        let scores = packed(query.clone(), key.clone().swap_dims(2, 3));
        assert_close(scores.clone(), query.matmul(key.clone().swap_dims(2, 3)));
        let value = part(2);
        assert_close(packed(scores.clone(), value.clone()), scores.matmul(value));
    }

    #[test]
    fn computes_exact_products_of_small_integers() {
        // Integers below 2^24 in every partial sum: any order of additions is exact.
        let lhs = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [2, 3]),
            &device(),
        );
        let rhs = Tensor::<2>::from_data(
            TensorData::new(vec![7.0f32, 8., 9., 10., 11., 12.], [3, 2]),
            &device(),
        );
        let product = packed(lhs, rhs).into_data();
        assert_eq!(
            product.try_to_vec::<f32>().unwrap(),
            [58.0, 64.0, 139.0, 154.0]
        );
    }

    #[test]
    fn falls_back_to_burn_for_broadcast_batches() {
        let (lhs, rhs) = (random([2, 3, 5]), random([1, 5, 4]));
        assert_close(packed(lhs.clone(), rhs.clone()), lhs.matmul(rhs));
    }
}
