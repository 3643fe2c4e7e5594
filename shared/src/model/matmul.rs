//! The model's matmuls on burn-flex (all of its Linear layers and attention's products
//! with the probabilities), forward and backward: burn-flex's own matmul first fills a
//! zeroed byte vector for the output and then copies it into an aligned allocation, a
//! third of the demo model's training step on the CPU (`perf record`); ours writes the
//! product once into its output. Natively the product is `gemm`'s, as burn-flex's (AVX-512
//! kernels, threads); in the browser it is a kernel of our own (4-lane wasm SIMD), where
//! 80% of a ViT-B/16 forward pass goes.
//!
//! burn-flex's wasm build of `gemm` multiplies and adds in two instructions: plain wasm
//! SIMD has no fused multiply-add. Relaxed SIMD has one
//! (`f32x4.relaxed_madd`, a single `vfmadd` on x86-64 CPUs with FMA), in Chromium since
//! version 114 but not in every browser, and a module that uses it does not load where
//! it is missing. So the web app builds its CPU worker twice, with and without the
//! `relaxed-simd` feature, and the page picks by feature detection (its threaded worker,
//! for cross-origin isolated pages, is a third build, without relaxed SIMD, whose products
//! are split between threads: [`Operands::multiply_on`]). This kernel is what
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
//! Natively the same kernel (with plain 4-float arrays for the vectors) is what the unit
//! tests check against burn's matmul. The browser end-to-end test checks both worker
//! builds against `trainer predict`.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;

use super::cpu;
pub(in crate::model) use kernel::Matrix;
use kernel::Packed;

mod kernel;

/// `lhs · rhs`: ours on burn-flex (with or without autodiff), burn's elsewhere.
pub(crate) fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    if super::on_flex(&lhs.device()) {
        Tensor::from_dispatch(<Dispatch as Matmul>::matmul(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
        ))
    } else {
        lhs.matmul(rhs)
    }
}

/// `layer.forward(x)` in `x`'s dtype: the layer's float32 weights are cast on use for a
/// bfloat16 `x` (see [`Precision`](super::Precision)), and their gradients cast back.
/// On burn-flex with [`matmul`].
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    // A cast to a tensor's own dtype is no operation.
    let weight = layer.weight.val().cast(x.dtype());
    let bias = layer.bias.as_ref().map(|bias| bias.val().cast(x.dtype()));
    if !super::on_flex(&x.device()) {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let [inputs, outputs] = weight.dims();
    let mut dims = x.dims();
    let rows = x.shape().num_elements() / inputs.max(1);
    let product = matmul(x.reshape([rows, inputs]), weight);
    let output = match bias {
        Some(bias) => product + bias.unsqueeze::<2>(),
        None => product,
    };
    dims[D - 1] = outputs;
    output.reshape(dims)
}

/// Matrix product into an output written once (see the module's documentation).
#[backend_extension(Flex, Autodiff)]
pub trait Matmul: Backend {
    /// `lhs [..., m, k] · rhs [..., k, n]`.
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

impl Matmul for Flex {
    fn matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        match Operands::of(&lhs, &rhs) {
            #[cfg(target_arch = "wasm32")]
            Some(operands) => operands.multiply(),
            #[cfg(not(target_arch = "wasm32"))]
            Some(operands) => operands.multiply_with_gemm(),
            // Another dtype, broadcast batch dimensions or negative strides: burn-flex's.
            None => <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs),
        }
    }
}

/// The backward pass of a product with the same batch dimensions on both sides:
/// `d lhs = d out · rhsᵀ`, `d rhs = lhsᵀ · d out`, both with [`Matmul::matmul`].
impl<B: Backend + Matmul, C: CheckpointStrategy> Matmul for Autodiff<B, C> {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: Backend + Matmul> Backward<B, 2> for MatmulBackward {
            /// The two operands.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [lhs_node, rhs_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                let rank = grad.shape().num_dims();
                let transpose = |tensor| B::float_swap_dims(tensor, rank - 2, rank - 1);
                if let Some(node) = lhs_node {
                    grads.register::<B>(node.id, B::matmul(grad.clone(), transpose(rhs)));
                }
                if let Some(node) = rhs_node {
                    grads.register::<B>(node.id, B::matmul(transpose(lhs), grad));
                }
            }
        }

        // Broadcast batch dimensions need their gradients summed: burn's autodiff matmul.
        let (left, right) = (lhs.shape(), rhs.shape());
        let rank = left.num_dims();
        if rank < 2 || right.num_dims() != rank || left[..rank - 2] != right[..rank - 2] {
            return <Self as FloatTensorOps<Self>>::float_matmul(lhs, rhs);
        }
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (lhs, rhs) = (lhs.into_primitive(), rhs.into_primitive());
                let output = B::matmul(lhs.clone(), rhs.clone());
                prep.finish((lhs, rhs), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
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

    /// Matrices in the batch.
    fn count(&self) -> usize {
        self.batch.iter().product()
    }

    /// A contiguous tensor of the product's shape.
    fn output(&self, values: Vec<f32>) -> FlexTensor {
        let mut shape = self.batch.clone();
        shape.extend([self.m, self.n]);
        cpu::tensor(values, shape.into())
    }

    /// The product with our kernel (natively only in the unit tests), a new contiguous
    /// tensor, on the threads there are ([`cpu::threads`]).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    fn multiply(&self) -> FlexTensor {
        self.multiply_on(cpu::threads())
    }

    /// The product with our kernel, split for `threads` threads: the matrices of a batch
    /// are tasks of their own, and where that gives fewer than two tasks per thread, each
    /// matrix is cut into blocks of columns. Cutting columns rather than rows keeps the
    /// packing work as it is: each task packs only its columns of the right operand (a
    /// layer's weight, the large one) and the whole left one (the activations, `1 / n` of
    /// its work). A block's output goes to a buffer of its own and is copied into place.
    /// Every value is summed in the same order whatever the split.
    fn multiply_on(&self, threads: usize) -> FlexTensor {
        let (m, k, n) = (self.m, self.k, self.n);
        let (count, size) = (self.count(), m * n);
        let mut output = vec![0.0f32; count * size];
        if size == 0 {
            return self.output(output);
        }
        let width = column_block(count, [m, k, n], threads);
        // `out` (`m` rows of `columns`) = the `index`-th product's columns from `first`.
        let product = |index: usize, first: usize, columns: usize, out: &mut [f32]| {
            let lhs = self.matrix(self.lhs, index);
            let rhs = self.matrix(self.rhs, index);
            let rhs = Matrix {
                offset: rhs.offset + first * rhs.columns,
                ..rhs
            };
            PACKED.with_borrow_mut(|packed| kernel::multiply(lhs, rhs, k, out, columns, packed));
        };
        if width == n {
            let tasks: Vec<_> = output.chunks_mut(size).enumerate().collect();
            cpu::map(tasks, |(index, out)| product(index, 0, n, out));
        } else {
            let tasks: Vec<_> = (0..count)
                .flat_map(|index| (0..n).step_by(width).map(move |first| (index, first)))
                .collect();
            let blocks = cpu::map(tasks.clone(), |(index, first)| {
                let columns = width.min(n - first);
                let mut block = vec![0.0f32; m * columns];
                product(index, first, columns, &mut block);
                block
            });
            for ((index, first), block) in tasks.into_iter().zip(blocks) {
                let columns = block.len() / m;
                for (row, values) in block.chunks_exact(columns).enumerate() {
                    let start = index * size + row * n + first;
                    output[start..start + columns].copy_from_slice(values);
                }
            }
        }
        self.output(output)
    }

    /// The product with `gemm`, threaded as burn-flex does it: on a large matrix, in
    /// `gemm`; on a batch of small ones, one matrix per task.
    #[cfg(not(target_arch = "wasm32"))]
    fn multiply_with_gemm(&self) -> FlexTensor {
        use rayon::prelude::*;
        use std::mem::MaybeUninit;
        // burn-flex's thresholds (multiply-adds).
        const LARGE: usize = 192 * 192 * 192;
        const LARGE_BATCH: usize = 128 * 128 * 128;

        let (m, k, n) = (self.m, self.k, self.n);
        let (count, size) = (self.count(), m * n);
        let mut output = Vec::<f32>::with_capacity(count * size);
        if size > 0 {
            let one = |index: usize, out: &mut [MaybeUninit<f32>], parallelism| {
                let lhs = self.matrix(self.lhs, index);
                let rhs = self.matrix(self.rhs, index);
                // gemm multiplies a column-major right operand (a transposed weight, in
                // the backward pass's `d x = d y · Wᵀ`) without packing it, about 30%
                // slower on ViT-B/16's shapes than after this copy (`gemm` alone, 3152 ×
                // 3072 × 768: 115 against 85 ms).
                if rhs.rows == 1 && rhs.columns != 1 && m > 2 * 64 {
                    let copy = row_major(rhs, k, n);
                    gemm_into(
                        lhs,
                        Matrix::contiguous(&copy, n),
                        [m, k, n],
                        out,
                        parallelism,
                    );
                } else {
                    gemm_into(lhs, rhs, [m, k, n], out, parallelism);
                }
            };
            let outputs = output.spare_capacity_mut()[..count * size].chunks_mut(size);
            let work = size * k;
            if count > 1 && count * work >= LARGE_BATCH && (count >= 4 || work < LARGE) {
                outputs
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(index, out)| one(index, out, gemm::Parallelism::None));
            } else {
                let parallelism = if work >= LARGE {
                    gemm::Parallelism::Rayon(0)
                } else {
                    gemm::Parallelism::None
                };
                for (index, out) in outputs.enumerate() {
                    one(index, out, parallelism);
                }
            }
        }
        // SAFETY: gemm has written all `count × m × n` values (none when `size` is 0).
        unsafe { output.set_len(count * size) };
        self.output(output)
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

thread_local! {
    /// Each thread's buffers for packed operands, reused from product to product.
    static PACKED: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// The fewest multiply-adds worth a task of their own: about 10 µs of the browser's
/// kernel, well above what handing a task to another thread costs.
const MIN_TASK: usize = 1 << 17;

/// Columns per task for `count` products of `m × k` by `k × n` on `threads` threads:
/// all `n` when the batch alone gives every thread two tasks (or the products are too
/// small to share), else blocks of whole kernel panels.
fn column_block(count: usize, [m, k, n]: [usize; 3], threads: usize) -> usize {
    let wanted = (2 * threads).div_ceil(count.max(1));
    let affordable = (m * k * n / MIN_TASK).max(1);
    let blocks = wanted.min(affordable).min(n.div_ceil(kernel::NR));
    if threads <= 1 || blocks <= 1 {
        return n;
    }
    n.div_ceil(blocks).next_multiple_of(kernel::NR)
}

/// `matrix` (`rows × columns`) copied into a row-major buffer, in blocks that stay in
/// the cache.
#[cfg(not(target_arch = "wasm32"))]
fn row_major(matrix: Matrix, rows: usize, columns: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let mut out = vec![0.0f32; rows * columns];
    for first_row in (0..rows).step_by(BLOCK) {
        for first_column in (0..columns).step_by(BLOCK) {
            let last_column = (first_column + BLOCK).min(columns);
            for row in first_row..(first_row + BLOCK).min(rows) {
                let out = &mut out[row * columns + first_column..row * columns + last_column];
                for (value, column) in out.iter_mut().zip(first_column..) {
                    *value = matrix.at(row, column);
                }
            }
        }
    }
    out
}

/// `out (m × n, rows n apart) = lhs (m × k) · rhs (k × n)` with gemm (`[m, k, n]`):
/// writes every value of `out`, reads none.
#[cfg(not(target_arch = "wasm32"))]
fn gemm_into(
    lhs: Matrix,
    rhs: Matrix,
    [m, k, n]: [usize; 3],
    out: &mut [std::mem::MaybeUninit<f32>],
    parallelism: gemm::Parallelism,
) {
    assert!(out.len() >= m * n, "gemm_into: output too small");
    // SAFETY: the output holds `m × n` values, rows `n` apart.
    unsafe { gemm_with(lhs, rhs, [m, k, n], out.as_mut_ptr().cast(), n, parallelism) }
}

/// `dst (m × n, rows dst_stride apart) = lhs · rhs` with gemm on the calling thread.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` values, `dst_stride` apart, that no
/// one else reads or writes meanwhile.
#[cfg(not(target_arch = "wasm32"))]
pub(super) unsafe fn gemm_raw(
    lhs: Matrix,
    rhs: Matrix,
    mkn: [usize; 3],
    dst: *mut f32,
    dst_stride: usize,
) {
    // SAFETY: the caller's.
    unsafe { gemm_with(lhs, rhs, mkn, dst, dst_stride, gemm::Parallelism::None) }
}

/// [`gemm_raw`] with a choice of threads.
///
/// # Safety
/// As [`gemm_raw`].
#[cfg(not(target_arch = "wasm32"))]
unsafe fn gemm_with(
    lhs: Matrix,
    rhs: Matrix,
    [m, k, n]: [usize; 3],
    dst: *mut f32,
    dst_stride: usize,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    for (matrix, rows, columns) in [(&lhs, m, k), (&rhs, k, n)] {
        if rows > 0 && columns > 0 {
            let last = matrix.offset + (rows - 1) * matrix.rows + (columns - 1) * matrix.columns;
            assert!(last < matrix.values.len(), "gemm: operand out of bounds");
        }
    }
    // SAFETY: the operands' last elements are within their slices (checked above;
    // strides are non-negative), the destination is the caller's. gemm writes every
    // value of the destination and reads none (`read_dst` false; zeros where `k` is 0).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            false,
            lhs.values.as_ptr().add(lhs.offset),
            lhs.columns as isize,
            lhs.rows as isize,
            rhs.values.as_ptr().add(rhs.offset),
            rhs.columns as isize,
            rhs.rows as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData, Tolerance};

    fn device() -> Device {
        burn::backend::FlexDevice.into()
    }

    /// The product with this module's kernel (what the browser runs).
    fn packed<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
        let flex = |tensor: Tensor<D>| FlexTensor::from_data(tensor.into_data());
        let (lhs, rhs) = (flex(lhs), flex(rhs));
        let product = match Operands::of(&lhs, &rhs) {
            Some(operands) => operands.multiply(),
            None => Flex::matmul(lhs, rhs),
        };
        Tensor::from_data(product.into_data(), &device())
    }

    /// The product with [`matmul`] (natively gemm's, into an output written once).
    fn ours<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
        matmul(lhs, rhs)
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
    fn splits_across_threads_without_changing_a_value() {
        // The browser's threaded worker: a single product cut into column blocks (with a
        // last block narrower than the rest), a batch of a few (blocks of each), a batch
        // larger than the threads (one task per product), a product too small to share.
        let shapes = [
            [1, 100, 300, 203],
            [3, 50, 64, 130],
            [12, 20, 16, 20],
            [1, 3, 5, 7],
        ];
        for [batch, m, k, n] in shapes {
            let flex = |tensor: Tensor<3>| FlexTensor::from_data(tensor.into_data());
            let (lhs, rhs) = (random([batch, m, k]), random([batch, k, n]));
            let (left, right) = (flex(lhs.clone()), flex(rhs.clone()));
            let operands = Operands::of(&left, &right).expect("f32 operands");
            let one = operands.multiply_on(1).into_data();
            for threads in [2, 3, 8] {
                assert_eq!(
                    operands.multiply_on(threads).into_data(),
                    one,
                    "{batch} × {m} × {k} × {n} on {threads} threads"
                );
            }
            let one = Tensor::<3>::from_data(one, &device());
            assert_close(one, lhs.matmul(rhs));
        }
        // The split: two tasks per thread from the batch, else blocks of whole panels.
        assert_eq!(column_block(12, [20, 16, 20], 2), 20);
        assert_eq!(column_block(1, [100, 300, 203], 2), 56);
        assert_eq!(column_block(1, [3, 5, 7], 8), 7);
        assert_eq!(column_block(1, [197, 768, 3072], 1), 3072);
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
        assert_close(
            packed(lhs.clone(), rhs.clone()),
            lhs.clone().matmul(rhs.clone()),
        );
        assert_close(ours(lhs.clone(), rhs.clone()), lhs.matmul(rhs));
    }

    #[test]
    fn gemm_path_equals_burns_matmul_on_every_threading_branch() {
        // One large matrix (threads in gemm), a batch of small ones (one task each),
        // a small single product, an empty depth (zeros), strided operands.
        for (batch, m, k, n) in [
            (1, 200, 200, 200),
            (8, 40, 64, 40),
            (1, 3, 5, 7),
            (2, 3, 0, 4),
        ] {
            let (lhs, rhs) = (random([batch, m, k]), random([batch, k, n]));
            assert_close(ours(lhs.clone(), rhs.clone()), lhs.matmul(rhs));
        }
        let (lhs, rhs) = (random([2, 9, 6]), random([2, 7, 9]));
        let expected = lhs
            .clone()
            .swap_dims(1, 2)
            .matmul(rhs.clone().swap_dims(1, 2));
        assert_close(ours(lhs.swap_dims(1, 2), rhs.swap_dims(1, 2)), expected);
        // A transposed right operand with enough rows on the left to be copied row-major
        // first (across the copy's 64-value blocks).
        let (lhs, rhs) = (random([1, 130, 70]), random([1, 90, 70]));
        let expected = lhs.clone().matmul(rhs.clone().swap_dims(1, 2));
        assert_close(ours(lhs, rhs.swap_dims(1, 2)), expected);
    }

    #[test]
    fn gradients_equal_burns_matmul() {
        // Both operands tracked, then only the right one (a layer's weight after an
        // input that needs no gradient), through a strided (transposed) operand.
        let autodiff = device().autodiff();
        let data = |shape| random(shape).into_data();
        let values = (data([2, 5, 6]), data([2, 4, 5]), data([2, 6, 4]));
        for lhs_tracked in [true, false] {
            let gradients = |product: fn(Tensor<3>, Tensor<3>) -> Tensor<3>| {
                let lhs = Tensor::<3>::from_data(values.0.clone(), &autodiff);
                let lhs = if lhs_tracked { lhs.require_grad() } else { lhs };
                let rhs = Tensor::<3>::from_data(values.1.clone(), &autodiff).require_grad();
                let output = product(lhs.clone().swap_dims(1, 2), rhs.clone().swap_dims(1, 2));
                let weights = Tensor::<3>::from_data(values.2.clone(), &autodiff);
                let grads = (output * weights).sum().backward();
                (lhs.grad(&grads), rhs.grad(&grads))
            };
            let ((ours_lhs, ours_rhs), (burns_lhs, burns_rhs)) =
                (gradients(ours), gradients(|a, b| a.matmul(b)));
            assert_eq!(ours_lhs.is_some(), lhs_tracked);
            assert_eq!(burns_lhs.is_some(), lhs_tracked);
            if let (Some(a), Some(b)) = (ours_lhs, burns_lhs) {
                assert_close(a, b);
            }
            assert_close(ours_rhs.unwrap(), burns_rhs.unwrap());
        }
    }
}
