//! What our own burn-flex kernels (`gelu.rs`, `layer_norm.rs`) share: reading f32
//! tensors as slices, and running loops over chunks of an output on the thread pool,
//! compiled for the widest vector unit the CPU has.

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// The values of `tensor` when it is a contiguous f32 tensor (else the caller takes the
/// composed path).
pub(super) fn f32_values(tensor: &FlexTensor) -> Option<&[f32]> {
    (tensor.dtype() == DType::F32)
        .then(|| tensor.as_slice::<f32>())
        .flatten()
}

/// A new f32 tensor.
pub(super) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Calls `work(index, piece)` on the consecutive `chunk`-long pieces of `output` (the
/// last may be shorter) and returns what each call returns, in order. Pieces run on
/// the thread pool (not in the browser, which has one thread), with AVX2 where the CPU
/// has it. The split does not depend on the number of threads, so neither do results
/// that the caller combines in order.
pub(super) fn for_each_chunk<R: Send>(
    output: &mut [f32],
    chunk: usize,
    work: impl Fn(usize, &mut [f32]) -> R + Sync,
) -> Vec<R> {
    let run = |(index, piece): (usize, &mut [f32])| vectorised(|| work(index, piece));
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        output.par_chunks_mut(chunk).enumerate().map(run).collect()
    }
    #[cfg(target_arch = "wasm32")]
    output.chunks_mut(chunk).enumerate().map(run).collect()
}

/// Runs `work` (inlined) compiled for AVX2 where the CPU has it: eight lanes instead of
/// SSE2's four (the loops inline into it). Without FMA, so both give the same results.
#[inline(always)]
fn vectorised<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(work) };
    }
    work()
}

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
