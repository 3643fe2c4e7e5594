//! Our matmul kernel for the browser (4-lane wasm SIMD; see the parent module). Natively
//! it is built with plain 4-float arrays for the vectors and only the unit tests run it.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

/// Rows of an output tile.
const MR: usize = 4;
/// Columns of an output tile: two vectors.
pub(super) const NR: usize = 8;
/// Depth of a block (a right panel is `KC × NR` floats, 8 KiB).
const KC: usize = 256;
/// Rows of a left block (`MC × KC` floats, 64 KiB, for the L2 cache).
const MC: usize = 64;
/// Columns of a right block (`KC × NC` floats, 512 KiB).
const NC: usize = 512;

/// A strided matrix: element `(i, j)` is `values[offset + i·rows + j·columns]`.
#[derive(Clone, Copy)]
pub(in crate::model) struct Matrix<'a> {
    pub(in crate::model) values: &'a [f32],
    pub(in crate::model) offset: usize,
    pub(in crate::model) rows: usize,
    pub(in crate::model) columns: usize,
}

impl<'a> Matrix<'a> {
    #[inline(always)]
    pub(in crate::model) fn at(&self, i: usize, j: usize) -> f32 {
        self.values[self.offset + i * self.rows + j * self.columns]
    }

    /// A contiguous row-major matrix with `columns` columns.
    #[cfg(not(target_arch = "wasm32"))]
    pub(in crate::model) fn contiguous(values: &'a [f32], columns: usize) -> Self {
        Self {
            values,
            offset: 0,
            rows: columns,
            columns: 1,
        }
    }

    /// The first `len` values of row `i` (of a matrix with consecutive columns).
    #[cfg(not(target_arch = "wasm32"))]
    pub(in crate::model) fn row(&self, i: usize, len: usize) -> &'a [f32] {
        &self.values[self.offset + i * self.rows..][..len]
    }

    pub(in crate::model) fn transposed(self) -> Self {
        Self {
            rows: self.columns,
            columns: self.rows,
            ..self
        }
    }
}

/// Buffers for the packed operands, reused across the matrices of a batch.
#[derive(Default)]
pub(super) struct Packed {
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
pub(super) fn multiply(
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
