//! What our own burn-flex kernels (`gelu.rs`, `layer_norm.rs`, `sgd.rs`,
//! `attention_kernel.rs`, `matmul.rs`) share: reading f32 tensors as slices, running loops over
//! chunks of an output (or over heads) on the thread pool, and a vectorisable `exp`.
//!
//! Their loops are functions marked [`vectorised`](macro@vectorised): compiled also for
//! AVX-512 and for AVX2 (16 and 8 lanes, where the baseline x86-64 build has SSE2's 4),
//! the widest that the CPU has picked at run time. Rust never fuses a product and a sum
//! into one rounding (FMA) on its own, so every version gives the same bits.

use std::mem::MaybeUninit;

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// The values of `tensor` when it is a contiguous f32 tensor (else the caller takes the
/// composed path).
pub(super) fn f32_values(tensor: &FlexTensor) -> Option<&[f32]> {
    (tensor.dtype() == DType::F32)
        .then(|| tensor.as_slice::<f32>())
        .flatten()
}

/// The values of a contiguous f32 tensor to write over: its own memory when nothing else
/// holds it, else a copy that it then holds alone (copy on write).
pub(super) fn f32_values_mut(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    let (start, end) = tensor.layout().contiguous_offsets()?;
    Some(&mut tensor.storage_mut::<f32>()[start..end])
}

/// A new f32 tensor.
pub(super) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A new `len`-long output computed piece by piece: `work(index, piece)` on its
/// consecutive `chunk`-long pieces (the last may be shorter), which returns what each
/// call returns, in order. Pieces run on the thread pool (natively, and in the browser's
/// threaded worker: see [`threads`]), with AVX2 where the CPU has it. The split does not
/// depend on the number of threads, so neither do results that the caller combines in
/// order.
///
/// Each task zeroes its own piece before `work` sees it: `vec![0.0; len]` would zero
/// the whole output first on the calling thread, a serial pass over memory (mimalloc
/// reuses freed blocks, so they are not fresh zero pages) while the pool waits.
pub(super) fn compute<R: Send>(
    len: usize,
    chunk: usize,
    work: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> (Vec<f32>, Vec<R>) {
    let mut output = Vec::with_capacity(len);
    let run = |(index, piece)| work(index, zeroed(piece));
    let pieces = output.spare_capacity_mut()[..len].chunks_mut(chunk.max(1));
    let results = map(pieces.enumerate().collect(), run);
    // SAFETY: the pieces cover the first `len` values, and each was zeroed.
    unsafe { output.set_len(len) };
    (output, results)
}

/// `work(index, a, b)` on the `index`-th consecutive `chunk`-long pieces of two equally
/// long slices, written in place, on the thread pool as [`compute`] runs its pieces.
pub(super) fn for_each_piece_pair(
    a: &mut [f32],
    b: &mut [f32],
    chunk: usize,
    work: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    let run = |(index, (a, b))| work(index, a, b);
    let pairs = a.chunks_mut(chunk.max(1)).zip(b.chunks_mut(chunk.max(1)));
    map(pairs.enumerate().collect(), run);
}

/// Threads that our kernels may use: rayon's pool, natively and in the browser's threaded
/// worker (built with wasm atomics: web's `threads` feature); one in the other browser
/// builds, which have no threads.
pub(super) fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        1
    }
}

/// `task`'s result for every item, in order, on the thread pool where there is one (see
/// [`threads`]).
pub(super) fn map<T: Send, R: Send>(items: Vec<T>, task: impl Fn(T) -> R + Send + Sync) -> Vec<R> {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        items.into_par_iter().map(task).collect()
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        items.into_iter().map(task).collect()
    }
}

/// Calls `work(index)` for every index below `count`, on the thread pool (natively only).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn for_each_index(count: usize, work: impl Fn(usize) + Sync) {
    use rayon::prelude::*;
    (0..count).into_par_iter().for_each(&work);
}

/// Runs `work` on `len` values of this thread's scratch memory, which keeps what earlier
/// calls left there (callers overwrite before they read): a per-head buffer of the
/// attention kernels, which `vec![0.0; len]` would allocate and zero for every head
/// (about half a percent of a ViT-B/16 training step, `perf`). A nested call on the same
/// thread gets a buffer of its own.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn with_scratch<R>(len: usize, work: impl FnOnce(&mut [f32]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            work(&mut buffer[..len])
        }
        Err(_) => work(&mut vec![0.0; len]),
    })
}

/// An output buffer that tasks of [`for_each_index`] write to in disjoint places.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
pub(super) struct Shared(pub *mut f32);

// SAFETY: only a pointer; whoever writes through it keeps the writes of different
// threads apart (see the callers).
#[cfg(not(target_arch = "wasm32"))]
unsafe impl Send for Shared {}
#[cfg(not(target_arch = "wasm32"))]
unsafe impl Sync for Shared {}

#[cfg(not(target_arch = "wasm32"))]
impl Shared {
    /// The address `offset` values in.
    pub fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `piece`, zeroed, as initialised values.
fn zeroed(piece: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    piece.fill(MaybeUninit::new(0.0));
    // SAFETY: every value of `piece` is initialised, and `MaybeUninit<f32>` has the
    // layout of `f32`.
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Marks a function to compile also for AVX-512 and AVX2 (see the module's
/// documentation). A closure is not enough: one passed to a function compiled for AVX2
/// keeps the features of where it was written unless the compiler inlines it, and ours
/// (long loops) it did not: before, the GELU's and the softmax's loops ran with SSE2's
/// four lanes (`perf annotate`).
#[cfg(target_arch = "x86_64")]
macro_rules! vectorised {
    ($item:item) => {
        #[multiversion::multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
        $item
    };
}
/// Elsewhere (the browser's wasm SIMD is fixed at build time) the function as written.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! vectorised {
    ($item:item) => {
        $item
    };
}
pub(super) use vectorised;

/// `Σ f(a_i, b_i)` over two equally long slices, in eight independent partial sums so
/// that the loop vectorises (a single running sum must add in order, one at a time).
#[inline(always)]
pub(super) fn sum_of(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 8;
    let mut partial = [0.0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (a, b) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for lane in 0..LANES {
            partial[lane] += f(a[lane], b[lane]);
        }
    }
    let mut total = partial.iter().sum::<f32>();
    for (&a, &b) in a_tail.iter().zip(b_tail) {
        total += f(a, b);
    }
    total
}

/// `e^x` for f32 without a library call, so that loops over it vectorise: `2^n · p(r)`
/// with `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, and Cephes' degree-5 minimax polynomial for
/// `(e^r − 1 − r) / r²` (about 1 ulp over the range). Inputs are clamped to [−87, 88],
/// where the result stays a normal, finite f32 (σ(u) below e^−87 is 0 to f32 anyway).
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((exponent + 127) << 23) as u32)
}
