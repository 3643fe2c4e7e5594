//! The reference input pipeline (`vit_jax/input_pipeline.py`), deterministic.
//!
//! Training: an Inception-style random crop as TensorFlow's
//! `tf.image.sample_distorted_bounding_box(area_range=(0.05, 1.0),
//! min_object_covered=0, use_image_if_no_bounding_boxes=True)` with its
//! default aspect-ratio range and attempts, bilinear resize to `size×size`,
//! a horizontal flip with probability 1/2, then `(x − 127.5) / 127.5` in CHW.
//! Evaluation: resize the whole image, normalise.
//!
//! Every random draw for an example comes from [`example_rng`], so a batch is
//! the same whichever thread processes which example.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
#[cfg(test)]
use vit::preprocess::ModelInput;
use vit::preprocess::{RgbImage, Tap, axis_taps};

/// The smallest crop area as a fraction of the image: the reference passes
/// `area_range=(0.05, 1.0)`. `--min-crop-area` changes it; the largest stays 1.
pub const MIN_CROP_AREA: f32 = 0.05;
/// Crop width / height: TensorFlow's default, which the reference keeps.
pub const ASPECT_RATIO_RANGE: (f32, f32) = (0.75, 1.33);
/// Crop attempts before falling back to the whole image: TensorFlow's default.
pub const MAX_ATTEMPTS: usize = 100;

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

impl Crop {
    /// The whole of a `width`×`height` image.
    pub fn full(width: usize, height: usize) -> Self {
        Crop {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// Samples a crop as TensorFlow's `SampleDistortedBoundingBox` kernel does
/// with the reference's arguments: up to [`MAX_ATTEMPTS`] tries of an aspect
/// ratio drawn uniformly from [`ASPECT_RATIO_RANGE`] and a crop built for it
/// by [`crop_for_ratio`], with an area of at least `min_area` (a fraction of
/// the image; [`MIN_CROP_AREA`] in the reference); the whole image when every
/// try fails.
///
/// The distribution is TensorFlow's; the random stream is not (TensorFlow
/// draws from Philox with `RandFloat` and `Uniform(n) = u32 % n`; we draw
/// from `rng` with rand's unbiased ranges).
///
/// With no bounding boxes the kernel checks crops against the whole image
/// with `min_object_covered = 0`, which every non-empty crop passes, so that
/// check is left out.
pub fn sample_crop(width: usize, height: usize, min_area: f32, rng: &mut impl Rng) -> Crop {
    let (min_ratio, max_ratio) = ASPECT_RATIO_RANGE;
    for _ in 0..MAX_ATTEMPTS {
        // f32 arithmetic throughout, as the kernel's.
        let ratio = rng.random::<f32>() * (max_ratio - min_ratio) + min_ratio;
        if let Some(crop) = crop_for_ratio(width, height, ratio, min_area, rng) {
            return crop;
        }
    }
    Crop::full(width, height)
}

/// One attempt of TensorFlow's `GenerateRandomCrop` for aspect ratio `ratio`:
/// the height is uniform between those giving the smallest and largest
/// allowed areas, the width is `round(height · ratio)`, the offsets uniform.
/// `None` when the rounded rectangle breaks the constraints.
fn crop_for_ratio(
    width: usize,
    height: usize,
    ratio: f32,
    min_fraction: f32,
    rng: &mut impl Rng,
) -> Option<Crop> {
    if width == 0 || height == 0 {
        return None;
    }
    // Image sides are far below 2^24, so these conversions are exact.
    let (w, h) = (width as i64, height as i64);
    // `lrintf` under the default rounding mode: nearest, ties to even.
    let lrint = |v: f32| v.round_ties_even() as i64;
    // The kernel's own evaluation order, so the rounding matches.
    let min_area = min_fraction * width as f32 * height as f32;
    let max_area = width as f32 * height as f32;

    let mut crop_h = lrint((min_area / ratio).sqrt());
    let mut max_h = lrint((max_area / ratio).sqrt());
    if lrint(max_h as f32 * ratio) > w {
        // The largest height whose rounded width still fits; the kernel
        // computes this in double with a float epsilon, then steps down once
        // if rounding still overshoots.
        max_h = ((w as f64 + 0.5 - f64::from(1e-7_f32)) / f64::from(ratio)) as i64;
        if lrint(max_h as f32 * ratio) > w {
            max_h -= 1;
        }
    }
    max_h = max_h.min(h);
    if crop_h >= max_h {
        crop_h = max_h;
    } else {
        // Inclusive: [crop_h, max_h].
        crop_h += i64::from(rng.random_range(0..=(max_h - crop_h) as u32));
    }
    let mut crop_w = lrint(crop_h as f32 * ratio);

    // Rounding can push the area just outside the range: the kernel tries one
    // row more, then one row fewer, before giving up.
    let mut area = (crop_w * crop_h) as f32;
    if area < min_area {
        crop_h += 1;
        crop_w = lrint(crop_h as f32 * ratio);
        area = (crop_w * crop_h) as f32;
    }
    if area > max_area {
        crop_h -= 1;
        crop_w = lrint(crop_h as f32 * ratio);
        area = (crop_w * crop_h) as f32;
    }
    if area < min_area || area > max_area || crop_w > w || crop_h > h || crop_w <= 0 || crop_h <= 0
    {
        return None;
    }

    // `Uniform(n)` is in [0, n), so a smaller crop never touches the last
    // row or column: a quirk of the kernel, kept for the same distribution.
    let y = if crop_h < h {
        rng.random_range(0..(h - crop_h) as u32) as usize
    } else {
        0
    };
    let x = if crop_w < w {
        rng.random_range(0..(w - crop_w) as u32) as usize
    } else {
        0
    };
    Some(Crop {
        x,
        y,
        width: crop_w as usize,
        height: crop_h as usize,
    })
}

/// Random crop, resize to `size`×`size`, random horizontal flip, normalise.
///
/// # Panics
/// If the image is empty or its pixel buffer does not match its size.
#[cfg(test)] // One image at a time: the form the batch functions are tested against.
pub fn train_input(image: &RgbImage, size: usize, rng: &mut impl Rng) -> ModelInput {
    let mut data = vec![0.0; 3 * size * size];
    train_into(image, size, MIN_CROP_AREA, rng, &mut Vec::new(), &mut data);
    ModelInput {
        height: size,
        width: size,
        data,
    }
}

/// Resize the whole image to `size`×`size` and normalise: the same values as
/// `normalize_to_chw(&resize_bilinear(image, size, size), size, size)`.
///
/// # Panics
/// If the image is empty or its pixel buffer does not match its size.
#[cfg(test)] // One image at a time: the form the batch functions are tested against.
pub fn eval_input(image: &RgbImage, size: usize) -> ModelInput {
    let mut data = vec![0.0; 3 * size * size];
    let crop = Crop::full(image.width, image.height);
    resize_crop_into(image, crop, size, false, &mut Vec::new(), &mut data);
    ModelInput {
        height: size,
        width: size,
        data,
    }
}

/// A reproducible RNG for example `index` of update `step` under `seed`, so the
/// result does not depend on which worker thread processes it.
///
/// Each of the three is scrambled by a bijection into its own word of the
/// generator's state, so different triples give different streams.
pub fn example_rng(seed: u64, step: u64, index: u64) -> impl Rng + Clone {
    let words = [
        mix64(seed),
        mix64(step ^ 0x6A09_E667_F3BC_C908),
        mix64(index ^ 0xBB67_AE85_84CA_A73B),
        mix64(seed ^ step.rotate_left(21) ^ index.rotate_left(42) ^ 0x3C6E_F372_FE94_F82B),
    ];
    let mut bytes = [0u8; 32];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    Xoshiro256PlusPlus::from_seed(bytes)
}

/// SplitMix64's output function: a bijection on u64 that spreads every input
/// bit over the whole word, so nearby seeds give unrelated generator states.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Builds the training batch for `step`: `indices` into `images`, each
/// augmented with its own [`example_rng`]; returns the concatenated CHW data
/// `[B, 3, S, S]`, in `indices` order.
///
/// The example at position `i` of the whole update (`first_position` is where
/// `indices` start, for micro-batches) uses `example_rng(seed, step, i)`: the
/// position rather than the image index, so an image that appears twice in a
/// batch gets two different augmentations, and micro-batches of one update get
/// different ones. Work is split over the available cores; the output is the
/// same for any thread count.
///
/// # Panics
/// If an index is out of range or an image is empty or malformed.
pub fn train_batch(
    images: &[RgbImage],
    indices: &[usize],
    size: usize,
    min_crop_area: f32,
    seed: u64,
    step: u64,
    first_position: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; indices.len() * 3 * size * size];
    let positions = Positions {
        first_position,
        seed,
        step,
    };
    train_batch_threads(
        images,
        indices,
        size,
        min_crop_area,
        positions,
        &mut out,
        default_threads(),
    );
    out
}

/// Where a run of examples sits in the stream of augmentations.
#[derive(Debug, Clone, Copy)]
struct Positions {
    first_position: usize,
    seed: u64,
    step: u64,
}

/// The whole images of `indices`, resized and normalised, concatenated as
/// [B, 3, S, S] in `indices` order.
///
/// # Panics
/// If an index is out of range or an image is empty or malformed.
pub fn eval_batch(images: &[RgbImage], indices: &[usize], size: usize) -> Vec<f32> {
    let mut out = vec![0.0; indices.len() * 3 * size * size];
    for_each_example(
        indices,
        size,
        &mut out,
        default_threads(),
        |_, index, rows, dst| {
            let image = &images[index];
            let crop = Crop::full(image.width, image.height);
            resize_crop_into(image, crop, size, false, rows, dst);
        },
    );
    out
}

fn train_batch_threads(
    images: &[RgbImage],
    indices: &[usize],
    size: usize,
    min_crop_area: f32,
    positions: Positions,
    out: &mut [f32],
    threads: usize,
) {
    for_each_example(indices, size, out, threads, |offset, index, rows, dst| {
        let position = (positions.first_position + offset) as u64;
        let mut rng = example_rng(positions.seed, positions.step, position);
        train_into(&images[index], size, min_crop_area, &mut rng, rows, dst);
    });
}

/// The size of the global rayon pool, which `--threads` sets for the whole trainer.
fn default_threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `work(position, index, scratch, output)` for every example, split
/// into contiguous runs over at most `threads` scoped threads. Each example
/// writes only its own slice of `out`, so the split cannot change the result.
fn for_each_example<F>(indices: &[usize], size: usize, out: &mut [f32], threads: usize, work: F)
where
    F: Fn(usize, usize, &mut Vec<f32>, &mut [f32]) + Sync,
{
    let example_len = 3 * size * size;
    assert_eq!(
        out.len(),
        indices.len() * example_len,
        "batch buffer must hold {} examples of 3x{size}x{size}",
        indices.len()
    );
    if indices.is_empty() || example_len == 0 {
        return;
    }
    let per_thread = indices.len().div_ceil(threads.max(1));
    let run = |first: usize, indices: &[usize], out: &mut [f32]| {
        // One row buffer per thread, reused across its examples.
        let mut rows = Vec::new();
        for (offset, (&index, dst)) in indices
            .iter()
            .zip(out.chunks_exact_mut(example_len))
            .enumerate()
        {
            work(first + offset, index, &mut rows, dst);
        }
    };
    if per_thread >= indices.len() {
        run(0, indices, out);
        return;
    }
    std::thread::scope(|scope| {
        for (chunk, (idx, dst)) in indices
            .chunks(per_thread)
            .zip(out.chunks_mut(per_thread * example_len))
            .enumerate()
        {
            let run = &run;
            scope.spawn(move || run(chunk * per_thread, idx, dst));
        }
    });
}

/// The training augmentation of one image into `out` (3·size² values).
/// Draws the crop first, then the flip, in the reference's order.
fn train_into(
    image: &RgbImage,
    size: usize,
    min_crop_area: f32,
    rng: &mut impl Rng,
    rows: &mut Vec<f32>,
    out: &mut [f32],
) {
    let crop = sample_crop(image.width, image.height, min_crop_area, rng);
    // The reference flips when `tf.random.uniform([]) > 0.5`.
    let flip = rng.random::<f32>() > 0.5;
    resize_crop_into(image, crop, size, flip, rows, out);
}

/// Taps for resizing the `n` samples starting at `offset` to `m`: the taps of
/// `vit::preprocess::resize_bilinear`, shifted into the crop, so results equal it bit for bit.
fn crop_taps(offset: usize, n: usize, m: usize) -> Vec<Tap> {
    let mut taps = axis_taps(n, m);
    for tap in &mut taps {
        tap.i0 += offset;
        tap.i1 += offset;
    }
    taps
}

/// Resizes `crop` of `image` to `size`×`size`, mirrored left-right when
/// `flip`, normalised to [-1, 1], into `out` as CHW.
///
/// Fused so a batch is written in one pass with no intermediate images or
/// copied crops: the crop is read in place through offset taps, and the flip
/// is reversed horizontal taps. The arithmetic is that of
/// `normalize_to_chw(&resize_bilinear(..))` on the cropped image, grouped the
/// same way, so the values are identical (the tests check this).
fn resize_crop_into(
    image: &RgbImage,
    crop: Crop,
    size: usize,
    flip: bool,
    rows: &mut Vec<f32>,
    out: &mut [f32],
) {
    assert_eq!(
        Some(image.pixels.len()),
        image
            .width
            .checked_mul(image.height)
            .and_then(|p| p.checked_mul(3)),
        "RgbImage of {}x{} must hold width*height*3 bytes",
        image.width,
        image.height
    );
    assert!(
        crop.width > 0
            && crop.height > 0
            && crop.x + crop.width <= image.width
            && crop.y + crop.height <= image.height,
        "crop {crop:?} is empty or outside the {}x{} image",
        image.width,
        image.height
    );
    let plane = size * size;
    assert_eq!(
        out.len(),
        3 * plane,
        "output must hold 3x{size}x{size} values"
    );
    if plane == 0 {
        return;
    }

    let mut x_taps = crop_taps(crop.x, crop.width, size);
    if flip {
        // Output column x takes the taps of column size-1-x: the mirror of
        // the resized image, without touching any pixel twice.
        x_taps.reverse();
    }
    // Rows below are indexed relative to the crop.
    let y_taps = axis_taps(crop.height, size);

    // Horizontal pass over the crop's rows, per channel, then blend rows
    // vertically: the grouping of `resize_bilinear`.
    let crop_h = crop.height;
    rows.clear();
    rows.resize(3 * crop_h * size, 0.0);
    let stride = image.width * 3;
    for r in 0..crop_h {
        let src = &image.pixels[(crop.y + r) * stride..][..stride];
        for (x, tap) in x_taps.iter().enumerate() {
            for c in 0..3 {
                let a = f32::from(src[tap.i0 * 3 + c]);
                let b = f32::from(src[tap.i1 * 3 + c]);
                rows[(c * crop_h + r) * size + x] = tap.w0 * a + tap.w1 * b;
            }
        }
    }

    for (c, out_plane) in out.chunks_exact_mut(plane).enumerate() {
        let channel_rows = &rows[c * crop_h * size..(c + 1) * crop_h * size];
        for (tap, dst) in y_taps.iter().zip(out_plane.chunks_exact_mut(size)) {
            let top = &channel_rows[tap.i0 * size..(tap.i0 + 1) * size];
            let bottom = &channel_rows[tap.i1 * size..(tap.i1 + 1) * size];
            for ((d, &t), &b) in dst.iter_mut().zip(top).zip(bottom) {
                // Division, not a reciprocal multiply, to match
                // `normalize_to_chw` exactly.
                *d = (tap.w0 * t + tap.w1 * b - 127.5) / 127.5;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vit::preprocess::{normalize_to_chw, resize_bilinear};

    fn test_image(width: usize, height: usize, salt: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: (0..width * height * 3)
                .map(|i| ((i * 37 + salt * 101 + i / 7) % 256) as u8)
                .collect(),
        }
    }

    /// The crop as its own image, the slow way.
    fn cut(image: &RgbImage, crop: Crop) -> RgbImage {
        let mut pixels = Vec::new();
        for y in crop.y..crop.y + crop.height {
            let start = (y * image.width + crop.x) * 3;
            pixels.extend_from_slice(&image.pixels[start..start + crop.width * 3]);
        }
        RgbImage {
            width: crop.width,
            height: crop.height,
            pixels,
        }
    }

    fn mirror_image(image: &RgbImage) -> RgbImage {
        let pixels = image
            .pixels
            .chunks_exact(image.width * 3)
            .flat_map(|row| row.chunks_exact(3).rev().flatten().copied())
            .collect();
        RgbImage {
            pixels,
            ..image.clone()
        }
    }

    /// Mirrors each row of CHW data.
    fn mirror_chw(data: &[f32], width: usize) -> Vec<f32> {
        data.chunks_exact(width)
            .flat_map(|row| row.iter().rev().copied())
            .collect()
    }

    /// What the reference computes, from the preprocessing functions.
    fn reference(image: &RgbImage, crop: Crop, size: usize, flip: bool) -> Vec<f32> {
        let resized = resize_bilinear(&cut(image, crop), size, size);
        let data = normalize_to_chw(&resized, size, size).data;
        if flip { mirror_chw(&data, size) } else { data }
    }

    fn fused(image: &RgbImage, crop: Crop, size: usize, flip: bool) -> Vec<f32> {
        let mut out = vec![0.0; 3 * size * size];
        resize_crop_into(image, crop, size, flip, &mut Vec::new(), &mut out);
        out
    }

    #[test]
    fn crops_respect_the_constraints() {
        let mut rng = example_rng(1, 2, 3);
        let sizes = [(32, 32), (500, 375), (37, 101), (224, 160), (7, 5)];
        for ((w, h), min_area) in sizes
            .into_iter()
            .flat_map(|s| [MIN_CROP_AREA, 0.5, 1.0].map(|a| (s, a)))
        {
            let image_area = (w * h) as f64;
            for _ in 0..1000 {
                let c = sample_crop(w, h, min_area, &mut rng);
                assert!(c.width > 0 && c.height > 0, "{c:?}");
                assert!(
                    c.x + c.width <= w && c.y + c.height <= h,
                    "{c:?} in {w}x{h}"
                );
                let fraction = (c.width * c.height) as f64 / image_area;
                assert!(
                    (f64::from(min_area) - 1e-6..=1.0).contains(&fraction),
                    "{c:?} in {w}x{h}: area {fraction}, at least {min_area}"
                );
                if c != Crop::full(w, h) {
                    // The width is the height times a ratio in range,
                    // rounded: off by at most half a pixel.
                    let ratio = c.width as f64 / c.height as f64;
                    let slack = 0.5 / c.height as f64 + 1e-6;
                    assert!(
                        (0.75 - slack..=1.33 + slack).contains(&ratio),
                        "{c:?} in {w}x{h}: ratio {ratio}"
                    );
                }
            }
        }
    }

    #[test]
    fn impossible_crops_fall_back_to_the_whole_image() {
        // A 100x1 strip cannot hold a crop of 5% area with ratio <= 1.33;
        // a 1x1 image can only be cropped to itself.
        let mut rng = example_rng(0, 0, 0);
        for (w, h) in [(100, 1), (1, 100), (1, 1)] {
            for _ in 0..50 {
                assert_eq!(
                    sample_crop(w, h, MIN_CROP_AREA, &mut rng),
                    Crop::full(w, h),
                    "{w}x{h}"
                );
            }
        }
    }

    #[test]
    fn crops_cover_small_and_large_areas_and_positions() {
        let mut rng = example_rng(7, 0, 0);
        let (w, h) = (224, 224);
        let crops: Vec<Crop> = (0..4000)
            .map(|_| sample_crop(w, h, MIN_CROP_AREA, &mut rng))
            .collect();
        let fractions: Vec<f64> = crops
            .iter()
            .map(|c| (c.width * c.height) as f64 / (w * h) as f64)
            .collect();
        let min = fractions.iter().copied().fold(1.0, f64::min);
        let max = fractions.iter().copied().fold(0.0, f64::max);
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        assert!(min < 0.06, "smallest crop {min}");
        assert!(max > 0.95, "largest crop {max}");
        // Height uniform in [sqrt(0.05), 1] (relative) puts the mean area
        // near (1 - 0.05^1.5) / (3 (1 - sqrt(0.05))) = 0.42.
        assert!((0.36..0.48).contains(&mean), "mean area {mean}");
        // Both very narrow and very wide crops, and offsets across the image.
        let ratios = crops.iter().map(|c| c.width as f64 / c.height as f64);
        assert!(ratios.clone().any(|r| r < 0.78) && ratios.clone().any(|r| r > 1.28));
        assert!(crops.iter().any(|c| c.x == 0) && crops.iter().any(|c| c.x > 150));
        assert!(crops.iter().any(|c| c.y == 0) && crops.iter().any(|c| c.y > 150));
    }

    #[test]
    fn crop_heights_are_tfs_for_a_fixed_ratio() {
        // Ratio 1 on 100x100: heights uniform in [round(sqrt(500)),
        // round(sqrt(10000))] = [22, 100], width equal to height. 22x22 is
        // under 5% of the area, so TF bumps it to 23, which then comes up
        // twice as often as any other height.
        let mut rng = example_rng(3, 3, 3);
        let mut counts = [0usize; 101];
        let samples = 8000;
        for _ in 0..samples {
            let c = crop_for_ratio(100, 100, 1.0, MIN_CROP_AREA, &mut rng)
                .expect("ratio 1 always fits");
            assert_eq!(c.width, c.height);
            assert!((23..=100).contains(&c.height), "{c:?}");
            // TF's offsets are in [0, side - crop), or 0 for a full side.
            assert!(c.height == 100 || c.y < 100 - c.height, "{c:?}");
            counts[c.height] += 1;
        }
        let per_height = samples as f64 / 79.0;
        assert!(counts[100] > 0);
        assert!(counts[23] as f64 > 1.6 * per_height, "{}", counts[23]);
        assert!((counts[24] as f64) < 1.4 * per_height, "{}", counts[24]);
    }

    #[test]
    fn fused_resize_equals_crop_resize_normalise() {
        let image = test_image(13, 9, 1);
        let crops = [
            Crop::full(13, 9),
            Crop {
                x: 2,
                y: 1,
                width: 7,
                height: 5,
            },
            Crop {
                x: 12,
                y: 8,
                width: 1,
                height: 1,
            },
            Crop {
                x: 0,
                y: 3,
                width: 13,
                height: 6,
            },
        ];
        for crop in crops {
            for size in [1, 4, 9, 24] {
                for flip in [false, true] {
                    assert_eq!(
                        fused(&image, crop, size, flip),
                        reference(&image, crop, size, flip),
                        "{crop:?} size {size} flip {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn flip_mirrors_and_twice_is_identity() {
        let image = test_image(11, 8, 2);
        let crop = Crop {
            x: 1,
            y: 2,
            width: 6,
            height: 5,
        };
        let size = 10;
        let plain = fused(&image, crop, size, false);
        let flipped = fused(&image, crop, size, true);
        assert_ne!(plain, flipped);
        assert_eq!(flipped, mirror_chw(&plain, size));
        // Flipping the mirrored image's mirrored crop gives the original back.
        let mirrored = mirror_image(&image);
        let mirrored_crop = Crop {
            x: image.width - crop.x - crop.width,
            ..crop
        };
        // Equal up to rounding: the sample positions of a mirrored axis are
        // the same numbers computed from the other end.
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5);
        assert!(close(&fused(&mirrored, mirrored_crop, size, true), &plain));
        assert!(close(
            &fused(&mirrored, mirrored_crop, size, false),
            &flipped
        ));
    }

    #[test]
    fn train_input_is_the_reference_pipeline() {
        let image = test_image(32, 32, 3);
        let size = 48;
        let mut flips = 0;
        for index in 0..40 {
            let mut rng = example_rng(9, 1, index);
            let mut replay = rng.clone();
            let got = train_input(&image, size, &mut rng);
            let crop = sample_crop(32, 32, MIN_CROP_AREA, &mut replay);
            let flip = replay.random::<f32>() > 0.5;
            flips += usize::from(flip);
            assert_eq!((got.height, got.width), (size, size));
            assert_eq!(
                got.data,
                reference(&image, crop, size, flip),
                "example {index}"
            );
        }
        assert!((8..=32).contains(&flips), "{flips} flips in 40");
    }

    #[test]
    fn example_rng_is_reproducible_and_distinct() {
        let draw = |seed, step, index| {
            let mut rng = example_rng(seed, step, index);
            (0..4).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        let base = draw(1, 2, 3);
        for other in [
            draw(1, 2, 4),
            draw(1, 3, 3),
            draw(2, 2, 3),
            draw(3, 2, 1),
            draw(1, 3, 2),
        ] {
            assert_ne!(base, other);
        }
        let image = test_image(32, 32, 4);
        let a = train_input(&image, 16, &mut example_rng(5, 6, 7));
        let b = train_input(&image, 16, &mut example_rng(5, 6, 7));
        let c = train_input(&image, 16, &mut example_rng(5, 6, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn train_batch_is_independent_of_threads() {
        let images: Vec<RgbImage> = (0..5).map(|i| test_image(32 + i, 30, i)).collect();
        let indices = [4, 0, 2, 2, 1, 3, 0];
        let size = 12;
        let len = indices.len() * 3 * size * size;
        let run = |threads| {
            let mut out = vec![0.0; len];
            let positions = Positions {
                first_position: 0,
                seed: 11,
                step: 5,
            };
            train_batch_threads(
                &images,
                &indices,
                size,
                MIN_CROP_AREA,
                positions,
                &mut out,
                threads,
            );
            out
        };
        let one = run(1);
        for threads in [2, 3, 16] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
        assert_eq!(
            train_batch(&images, &indices, size, MIN_CROP_AREA, 11, 5, 0),
            one
        );
        // In `indices` order, each from its position's RNG; the repeated
        // image 2 gets two different augmentations.
        let example = |pos: usize| &one[pos * 3 * size * size..(pos + 1) * 3 * size * size];
        for (pos, &index) in indices.iter().enumerate() {
            let mut rng = example_rng(11, 5, pos as u64);
            assert_eq!(
                example(pos),
                train_input(&images[index], size, &mut rng).data
            );
        }
        assert_ne!(example(2), example(3));
        assert_ne!(
            train_batch(&images, &indices, size, MIN_CROP_AREA, 11, 6, 0),
            one
        );
        assert!(train_batch(&images, &[], size, MIN_CROP_AREA, 11, 5, 0).is_empty());
        // A micro-batch starting at position 3 of the update is the tail of the whole.
        let tail = train_batch(&images, &indices[3..], size, MIN_CROP_AREA, 11, 5, 3);
        assert_eq!(tail, one[3 * 3 * size * size..]);
    }

    #[test]
    fn eval_is_resize_and_normalise() {
        let images = [test_image(32, 32, 5), test_image(17, 23, 6)];
        for image in &images {
            for size in [8, 32, 50] {
                let expected = normalize_to_chw(&resize_bilinear(image, size, size), size, size);
                assert_eq!(eval_input(image, size), expected, "size {size}");
            }
        }
        let batch = eval_batch(&images, &[1, 0, 1], 20);
        let expected: Vec<f32> = [1, 0, 1]
            .iter()
            .flat_map(|&i| eval_input(&images[i], 20).data)
            .collect();
        assert_eq!(batch, expected);
    }
}
