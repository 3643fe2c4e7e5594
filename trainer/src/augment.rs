//! The reference input pipeline (`vit_jax/input_pipeline.py`), deterministic.
//!
//! Training: an Inception-style random crop as TensorFlow's
//! `tf.image.sample_distorted_bounding_box(area_range=(0.05, 1.0),
//! min_object_covered=0, use_image_if_no_bounding_boxes=True)` with its
//! default aspect-ratio range and attempts, bilinear resize to `size×size`,
//! a horizontal flip with probability 1/2, then the model's normalisation
//! (`(x − 127.5) / 127.5` for the reference's models) in CHW.
//! Evaluation: resize the whole image, normalise. Both run the one kernel of
//! `vit::preprocess`, on the rayon pool that `--threads` sizes.
//!
//! Every random draw for an example comes from [`example_rng`], so a batch is
//! the same whichever thread processes which example.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, RngExt, SeedableRng};
use rayon::prelude::*;
use vit::preprocess::{Crop, Normalization, RgbImage, resize_crop_into};

/// The smallest crop area as a fraction of the image: the reference passes
/// `area_range=(0.05, 1.0)`. `--min-crop-area` changes it; the largest stays 1.
pub const MIN_CROP_AREA: f32 = 0.05;
/// Crop width / height: TensorFlow's default, which the reference keeps.
pub const ASPECT_RATIO_RANGE: (f32, f32) = (0.75, 1.33);
/// Crop attempts before falling back to the whole image: TensorFlow's default.
pub const MAX_ATTEMPTS: usize = 100;

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

/// The seed of the model's own randomness (dropout) in micro-batch
/// `part` of update `step`: set on the device before each forward pass, so that these
/// too are functions of (seed, step) and a resumed run repeats them.
pub fn model_seed(seed: u64, step: u64, part: u64) -> u64 {
    // Index u64::MAX − part is never an example position, so this stream is apart.
    example_rng(seed, step, u64::MAX - part).next_u64()
}

/// The seed of a new model's random initial weights: no update has this step number.
pub fn init_seed(seed: u64) -> u64 {
    model_seed(seed, u64::MAX, 0)
}

/// SplitMix64's output function: a bijection on u64 that spreads every input
/// bit over the whole word, so nearby seeds give unrelated generator states.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a run of examples sits in the stream of augmentations.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    pub seed: u64,
    pub step: u64,
    /// The position within the update of the first example (for micro-batches).
    pub first: usize,
}

/// How a training example is cropped before the flip and the resize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cropping {
    /// The reference's Inception-style crop ([`sample_crop`]) of at least `min_area` of
    /// the image.
    Area { min_area: f32 },
    /// torchvision's `RandomCrop(size, padding)`: the image padded with `padding` black
    /// pixels on every side, then a crop of the image's own size at a uniform offset.
    Padded { padding: usize },
}

/// Everything that happens to one training example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub cropping: Cropping,
    /// A [`trivial_augment`](crate::trivial_augment) operation on the stored image, before
    /// the crop (`--trivial-augment`).
    pub trivial_augment: bool,
    /// The probability of timm's random erasing after normalisation (`--random-erasing`).
    pub random_erasing: f64,
}

impl Augmentation {
    /// The reference's: an area crop of at least `min_area`, the flip, nothing else.
    #[cfg(test)]
    pub const fn area(min_area: f32) -> Self {
        Self {
            cropping: Cropping::Area { min_area },
            trivial_augment: false,
            random_erasing: 0.0,
        }
    }
}

/// Builds training examples for `indices` into `images`, each augmented with its
/// own [`example_rng`]; returns the concatenated CHW data `[B, 3, S, S]`, in
/// `indices` order.
///
/// The example at position `i` of the whole update uses `example_rng(seed, step, i)`:
/// the position rather than the image index, so an image that appears twice in a
/// batch gets two different augmentations, and micro-batches of one update get
/// different ones. Work is spread over the rayon pool; the output is the same for
/// any number of threads.
///
/// # Panics
/// If an index is out of range or an image is empty or malformed.
pub fn train_batch(
    images: &[RgbImage],
    indices: &[usize],
    size: usize,
    augmentation: Augmentation,
    normalization: &Normalization,
    positions: Positions,
) -> Vec<f32> {
    for_each_example(indices, size, |offset, index, rows, out| {
        let position = (positions.first + offset) as u64;
        let mut rng = example_rng(positions.seed, positions.step, position);
        let augmented;
        let image = if augmentation.trivial_augment {
            augmented = crate::trivial_augment::Op::sample(&mut rng).apply(&images[index]);
            &augmented
        } else {
            &images[index]
        };
        let (source, crop) = match augmentation.cropping {
            Cropping::Area { min_area } => (
                std::borrow::Cow::Borrowed(image),
                sample_crop(image.width, image.height, min_area, &mut rng),
            ),
            Cropping::Padded { padding } => {
                // Offsets uniform in [0, 2·padding], as torchvision's.
                let x = rng.random_range(0..=2 * padding);
                let y = rng.random_range(0..=2 * padding);
                let crop = Crop {
                    x,
                    y,
                    width: image.width,
                    height: image.height,
                };
                (std::borrow::Cow::Owned(padded(image, padding)), crop)
            }
        };
        // The reference flips when `tf.random.uniform([]) > 0.5`, after the crop.
        let flip = rng.random::<f32>() > 0.5;
        resize_crop_into(&source, crop, size, flip, normalization, rows, out);
        if augmentation.random_erasing > 0.0 {
            random_erase(out, size, augmentation.random_erasing, &mut rng);
        }
    })
}

/// timm's `RandomErasing(probability, mode='pixel')` on one normalised CHW example: with
/// this probability, up to 10 tries of a rectangle of 2% to 1/3 of the area with a
/// log-uniform aspect ratio in [0.3, 1/0.3]; the first that fits is filled with standard
/// normal noise, a value per channel and pixel.
pub fn random_erase(example: &mut [f32], size: usize, probability: f64, rng: &mut impl Rng) {
    if rng.random::<f64>() > probability {
        return;
    }
    let area = (size * size) as f64;
    let log_ratio = (0.3_f64.ln(), (1.0 / 0.3_f64).ln());
    for _ in 0..10 {
        let target = rng.random_range(0.02..1.0 / 3.0) * area;
        let ratio = rng.random_range(log_ratio.0..log_ratio.1).exp();
        // Python's round(): half to even.
        let height = (target * ratio).sqrt().round_ties_even() as usize;
        let width = (target / ratio).sqrt().round_ties_even() as usize;
        if width < size && height < size {
            let top = rng.random_range(0..=size - height);
            let left = rng.random_range(0..=size - width);
            for plane in example.chunks_exact_mut(size * size) {
                for row in plane.chunks_exact_mut(size).skip(top).take(height) {
                    for value in &mut row[left..left + width] {
                        *value = rng.sample(rand_distr::StandardNormal);
                    }
                }
            }
            return;
        }
    }
}

/// `image` with `padding` black pixels on every side.
fn padded(image: &RgbImage, padding: usize) -> RgbImage {
    let width = image.width + 2 * padding;
    let height = image.height + 2 * padding;
    let mut pixels = vec![0u8; width * height * 3];
    for (y, row) in image.pixels.chunks_exact(image.width * 3).enumerate() {
        let start = ((y + padding) * width + padding) * 3;
        pixels[start..start + row.len()].copy_from_slice(row);
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

/// The whole images of `indices`, resized and normalised, concatenated as
/// `[B, 3, S, S]` in `indices` order.
///
/// # Panics
/// If an index is out of range or an image is empty or malformed.
pub fn eval_batch(
    images: &[RgbImage],
    indices: &[usize],
    size: usize,
    normalization: &Normalization,
) -> Vec<f32> {
    for_each_example(indices, size, |_, index, rows, out| {
        let image = &images[index];
        let crop = Crop::full(image.width, image.height);
        resize_crop_into(image, crop, size, false, normalization, rows, out);
    })
}

/// Runs `work(position, index, scratch, output)` for every example on the rayon
/// pool. Each example writes only its own slice of the batch, so the split over
/// threads cannot change the result.
fn for_each_example<F>(indices: &[usize], size: usize, work: F) -> Vec<f32>
where
    F: Fn(usize, usize, &mut Vec<f32>, &mut [f32]) + Sync,
{
    let example_len = 3 * size * size;
    let mut out = vec![0.0; indices.len() * example_len];
    if example_len > 0 {
        out.par_chunks_exact_mut(example_len)
            .zip(indices.par_iter())
            .enumerate()
            .for_each_init(Vec::new, |rows, (position, (dst, &index))| {
                work(position, index, rows, dst)
            });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vit::preprocess::preprocess_rgb;

    fn test_image(width: usize, height: usize, salt: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: (0..width * height * 3)
                .map(|i| ((i * 37 + salt * 101 + i / 7) % 256) as u8)
                .collect(),
        }
    }

    const REFERENCE: Normalization = Normalization::REFERENCE;
    const AREA: Augmentation = Augmentation::area(MIN_CROP_AREA);

    fn positions(seed: u64, step: u64, first: usize) -> Positions {
        Positions { seed, step, first }
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
    }

    /// The statistics `tests/fixtures/crop_distribution.py` records of TensorFlow's crops.
    #[derive(Debug, Default)]
    struct CropStats {
        fallback_rate: f64,
        area_mean: f64,
        area_std: f64,
        log_aspect_mean: Option<f64>,
        log_aspect_std: Option<f64>,
        x_offset_mean: Option<f64>,
        y_offset_mean: Option<f64>,
        x_at_last_column_rate: Option<f64>,
        y_at_last_row_rate: Option<f64>,
        height_counts: Vec<f64>,
        width_counts: Vec<f64>,
    }

    fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
        if values.is_empty() {
            return None;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        Some((mean, variance.sqrt()))
    }

    fn our_stats(width: usize, height: usize, min_area: f32, n: usize) -> CropStats {
        let mut rng = example_rng(2024, 6, 7);
        let crops: Vec<Crop> = (0..n)
            .map(|_| sample_crop(width, height, min_area, &mut rng))
            .collect();
        let whole = Crop::full(width, height);
        let areas: Vec<f64> = crops
            .iter()
            .map(|c| (c.width * c.height) as f64 / (width * height) as f64)
            .collect();
        let aspects: Vec<f64> = crops
            .iter()
            .filter(|c| **c != whole)
            .map(|c| (c.width as f64 / c.height as f64).ln())
            .collect();
        let offsets = |narrower: &dyn Fn(&Crop) -> Option<(usize, usize)>| {
            let pairs: Vec<(usize, usize)> = crops.iter().filter_map(narrower).collect();
            let mean = mean_std(
                &pairs
                    .iter()
                    .map(|&(o, room)| o as f64 / room as f64)
                    .collect::<Vec<_>>(),
            );
            let at_end = (!pairs.is_empty()).then(|| {
                pairs.iter().filter(|(o, room)| o == room).count() as f64 / pairs.len() as f64
            });
            (mean.map(|(m, _)| m), at_end)
        };
        let (x_offset_mean, x_at_last_column_rate) =
            offsets(&|c| (c.width < width).then(|| (c.x, width - c.width)));
        let (y_offset_mean, y_at_last_row_rate) =
            offsets(&|c| (c.height < height).then(|| (c.y, height - c.height)));
        let histogram = |side: usize, pick: &dyn Fn(&Crop) -> usize| {
            let mut counts = vec![0.0; side + 1];
            for crop in &crops {
                counts[pick(crop)] += 1.0;
            }
            counts
        };
        let (area_mean, area_std) = mean_std(&areas).expect("samples");
        let aspect = mean_std(&aspects);
        CropStats {
            fallback_rate: crops.iter().filter(|c| **c == whole).count() as f64 / n as f64,
            area_mean,
            area_std,
            log_aspect_mean: aspect.map(|(m, _)| m),
            log_aspect_std: aspect.map(|(_, s)| s),
            x_offset_mean,
            y_offset_mean,
            x_at_last_column_rate,
            y_at_last_row_rate,
            height_counts: histogram(height, &|c| c.height),
            width_counts: histogram(width, &|c| c.width),
        }
    }

    /// Pearson's two-sample chi-square statistic of two histograms of equal totals, and
    /// its degrees of freedom.
    fn chi_square(a: &[f64], b: &[f64]) -> (f64, usize) {
        let bins: Vec<(f64, f64)> = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x, y))
            .filter(|(x, y)| x + y > 0.0)
            .collect();
        let statistic = bins.iter().map(|(x, y)| (x - y).powi(2) / (x + y)).sum();
        (statistic, bins.len().saturating_sub(1))
    }

    #[test]
    fn the_crop_distribution_is_tensorflows() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/crop_distribution.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
        let number = |case: &serde_json::Value, key: &str| case[key].as_f64();
        let counts = |case: &serde_json::Value, key: &str| -> Vec<f64> {
            case[key]
                .as_array()
                .expect("counts")
                .iter()
                .map(|v| v.as_f64().expect("count"))
                .collect()
        };
        for case in fixture["cases"].as_array().expect("cases") {
            let width = case["width"].as_u64().expect("width") as usize;
            let height = case["height"].as_u64().expect("height") as usize;
            let min_area = case["min_area"].as_f64().expect("min_area") as f32;
            let n = case["n"].as_u64().expect("n") as usize;
            let name = format!("{width}x{height}, min area {min_area}");
            let ours = our_stats(width, height, min_area, n);
            // Two independent samples of n: a difference of means has standard error
            // std·√(2/n); 5 of them is far outside chance, but inside any real bug.
            let bound = |std: f64| 5.0 * std * (2.0 / n as f64).sqrt() + 1e-9;
            let close =
                |what: &str, ours: Option<f64>, theirs: Option<f64>, std: f64| match (ours, theirs)
                {
                    (Some(a), Some(b)) => assert!(
                        (a - b).abs() <= bound(std),
                        "{name}: {what} {a} vs TensorFlow's {b}"
                    ),
                    (None, None) => {}
                    (a, b) => panic!("{name}: {what} {a:?} vs TensorFlow's {b:?}"),
                };
            let tf_fallback = number(case, "fallback_rate").expect("fallback");
            let binomial = (tf_fallback * (1.0 - tf_fallback))
                .sqrt()
                .max(1.0 / n as f64);
            close(
                "fallback rate",
                Some(ours.fallback_rate),
                Some(tf_fallback),
                binomial,
            );
            let area_std = number(case, "area_std").expect("area std");
            close(
                "mean area",
                Some(ours.area_mean),
                number(case, "area_mean"),
                area_std,
            );
            close("area std", Some(ours.area_std), Some(area_std), area_std);
            let aspect_std = number(case, "log_aspect_std");
            let spread = aspect_std.unwrap_or(0.0);
            close(
                "mean log aspect",
                ours.log_aspect_mean,
                number(case, "log_aspect_mean"),
                spread,
            );
            close("log aspect std", ours.log_aspect_std, aspect_std, spread);
            // Offsets over the room left are roughly uniform: std about 0.29.
            close(
                "mean x offset",
                ours.x_offset_mean,
                number(case, "x_offset_mean"),
                0.3,
            );
            close(
                "mean y offset",
                ours.y_offset_mean,
                number(case, "y_offset_mean"),
                0.3,
            );
            // TensorFlow never puts a smaller crop against the last row or column.
            assert_eq!(
                ours.x_at_last_column_rate,
                number(case, "x_at_last_column_rate"),
                "{name}"
            );
            assert_eq!(
                ours.y_at_last_row_rate,
                number(case, "y_at_last_row_rate"),
                "{name}"
            );
            for (what, ours, theirs) in [
                (
                    "heights",
                    &ours.height_counts,
                    counts(case, "height_counts"),
                ),
                ("widths", &ours.width_counts, counts(case, "width_counts")),
            ] {
                // A chi-square within 5 standard deviations of its degrees of freedom.
                let (statistic, dof) = chi_square(ours, &theirs);
                let limit = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
                eprintln!(
                    "{name}: crop {what}: chi-square {statistic:.1}, {dof} degrees of freedom"
                );
                assert!(
                    statistic <= limit,
                    "{name}: crop {what} differ from TensorFlow's: chi-square {statistic:.1} with {dof} degrees of freedom"
                );
            }
        }
    }

    #[test]
    fn a_training_example_is_the_crop_then_the_flip_of_its_rng() {
        let images: Vec<RgbImage> = (0..5).map(|i| test_image(32 + i, 30, i)).collect();
        let indices = [4, 0, 2, 2, 1, 3, 0];
        let size = 12;
        let example_len = 3 * size * size;
        let batch = train_batch(
            &images,
            &indices,
            size,
            AREA,
            &REFERENCE,
            positions(11, 5, 0),
        );
        let mut flips = 0;
        for (position, &index) in indices.iter().enumerate() {
            let image = &images[index];
            let mut rng = example_rng(11, 5, position as u64);
            let crop = sample_crop(image.width, image.height, MIN_CROP_AREA, &mut rng);
            let flip = rng.random::<f32>() > 0.5;
            flips += usize::from(flip);
            let mut expected = vec![0.0; example_len];
            resize_crop_into(
                image,
                crop,
                size,
                flip,
                &REFERENCE,
                &mut Vec::new(),
                &mut expected,
            );
            assert_eq!(
                batch[position * example_len..(position + 1) * example_len],
                expected,
                "position {position}"
            );
        }
        assert!((1..indices.len()).contains(&flips), "{flips} flips");
        // The repeated image 2 gets two different augmentations.
        assert_ne!(
            batch[2 * example_len..3 * example_len],
            batch[3 * example_len..4 * example_len]
        );
        // Another step, another batch; a micro-batch starting at position 3 of the
        // update is the tail of the whole.
        assert_ne!(
            train_batch(
                &images,
                &indices,
                size,
                AREA,
                &REFERENCE,
                positions(11, 6, 0)
            ),
            batch
        );
        let tail = train_batch(
            &images,
            &indices[3..],
            size,
            AREA,
            &REFERENCE,
            positions(11, 5, 3),
        );
        assert_eq!(tail, batch[3 * example_len..]);
        assert!(train_batch(&images, &[], size, AREA, &REFERENCE, positions(11, 5, 0)).is_empty());
    }

    #[test]
    fn batches_do_not_depend_on_the_number_of_threads() {
        let images: Vec<RgbImage> = (0..5).map(|i| test_image(32 + i, 30, i)).collect();
        let indices = [4, 0, 2, 2, 1, 3, 0];
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                (
                    train_batch(&images, &indices, 12, AREA, &REFERENCE, positions(1, 2, 0)),
                    eval_batch(&images, &indices, 12, &REFERENCE),
                )
            })
        };
        let one = run(1);
        for threads in [2, 3, 16] {
            assert!(run(threads) == one, "{threads} threads");
        }
    }

    #[test]
    fn eval_is_the_whole_image_resized_and_normalised() {
        let images = [test_image(32, 32, 5), test_image(17, 23, 6)];
        let normalization = Normalization::IMAGENET;
        let batch = eval_batch(&images, &[1, 0, 1], 20, &normalization);
        let expected: Vec<f32> = [1, 0, 1]
            .iter()
            .flat_map(|&i| preprocess_rgb(&images[i], 20, &normalization).data)
            .collect();
        assert_eq!(batch, expected);
    }

    #[test]
    fn padded_crops_shift_the_image_inside_a_black_border() {
        let image = test_image(6, 6, 7);
        let padding = 2;
        let cropping = Augmentation {
            cropping: Cropping::Padded { padding },
            ..AREA
        };
        // Mean 0 and std 1/255: the output is the pixel values (up to f32 rounding).
        let raw = Normalization {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        };
        let mut offsets = std::collections::BTreeSet::new();
        for position in 0..300 {
            // A 6x6 crop at 6 px: no resizing, so the output is the crop itself.
            let out = train_batch(
                std::slice::from_ref(&image),
                &[0],
                6,
                cropping,
                &raw,
                positions(3, 1, position),
            );
            let mut rng = example_rng(3, 1, position as u64);
            let x = rng.random_range(0..=2 * padding);
            let y = rng.random_range(0..=2 * padding);
            let flip = rng.random::<f32>() > 0.5;
            offsets.insert((x, y));
            for row in 0..6 {
                for column in 0..6 {
                    let source_column = if flip { 5 - column } else { column };
                    let sx = (source_column + x) as isize - padding as isize;
                    let sy = (row + y) as isize - padding as isize;
                    let inside = (0..6).contains(&sx) && (0..6).contains(&sy);
                    let expected = if inside {
                        f32::from(image.pixels[(sy as usize * 6 + sx as usize) * 3])
                    } else {
                        0.0
                    };
                    let got = out[row * 6 + column];
                    assert!(
                        (got - expected).abs() < 1e-3,
                        "position {position}, ({row}, {column}): {got} vs {expected}"
                    );
                }
            }
        }
        // Offsets in [0, 4] x [0, 4], all of them seen.
        assert_eq!(offsets.len(), 25);
    }

    #[test]
    fn trivial_augment_and_erasing_follow_the_examples_rng() {
        let images: Vec<RgbImage> = (0..3).map(|i| test_image(8, 8, i)).collect();
        let raw = Normalization {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        };
        let augmentation = Augmentation {
            cropping: Cropping::Padded { padding: 0 },
            trivial_augment: true,
            random_erasing: 0.0,
        };
        let indices = [0, 1, 2, 1];
        let batch = train_batch(&images, &indices, 8, augmentation, &raw, positions(5, 7, 0));
        let example_len = 3 * 8 * 8;
        for (position, &index) in indices.iter().enumerate() {
            // The operation comes first from the example's stream, then crop and flip.
            let mut rng = example_rng(5, 7, position as u64);
            let op = crate::trivial_augment::Op::sample(&mut rng);
            let augmented = op.apply(&images[index]);
            let _ = (rng.random_range(0..=0usize), rng.random_range(0..=0usize));
            let flip = rng.random::<f32>() > 0.5;
            let mut expected = vec![0.0; example_len];
            resize_crop_into(
                &augmented,
                Crop::full(8, 8),
                8,
                flip,
                &raw,
                &mut Vec::new(),
                &mut expected,
            );
            let got = &batch[position * example_len..(position + 1) * example_len];
            for (a, b) in got.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-3, "position {position} ({op:?})");
            }
        }
    }

    #[test]
    fn random_erasing_fills_one_rectangle_with_noise_at_its_rate() {
        let size = 32;
        let mut erased = 0;
        let trials = 2000;
        let mut areas = Vec::new();
        for trial in 0..trials {
            let mut example = vec![f32::NAN; 3 * size * size];
            let mut rng = example_rng(1, 2, trial);
            random_erase(&mut example, size, 0.25, &mut rng);
            let touched: Vec<usize> = (0..size * size).filter(|&i| !example[i].is_nan()).collect();
            if touched.is_empty() {
                continue;
            }
            erased += 1;
            // One rectangle, the same in every channel, of 2% to 1/3 of the image.
            let (xs, ys): (Vec<usize>, Vec<usize>) =
                touched.iter().map(|&i| (i % size, i / size)).unzip();
            let width = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
            let height = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
            assert_eq!(
                width * height,
                touched.len(),
                "trial {trial}: not a rectangle"
            );
            for plane in example.chunks_exact(size * size) {
                assert_eq!(plane.iter().filter(|v| !v.is_nan()).count(), touched.len());
            }
            let fraction = touched.len() as f64 / (size * size) as f64;
            assert!((0.01..0.4).contains(&fraction), "trial {trial}: {fraction}");
            areas.push(fraction);
        }
        // Erased a quarter of the time (±5 standard errors), noise of mean 0 and std 1.
        let rate = erased as f64 / trials as f64;
        let standard_error = (0.25 * 0.75 / trials as f64).sqrt();
        assert!((rate - 0.25).abs() < 5.0 * standard_error, "rate {rate}");
        let mean_area = areas.iter().sum::<f64>() / areas.len() as f64;
        assert!((0.12..0.22).contains(&mean_area), "mean area {mean_area}");
        let mut example = vec![f32::NAN; 3 * size * size];
        let mut noise = Vec::new();
        for trial in 0..200 {
            example.fill(f32::NAN);
            random_erase(&mut example, size, 1.0, &mut example_rng(9, 9, trial));
            noise.extend(
                example
                    .iter()
                    .filter(|v| !v.is_nan())
                    .map(|&v| f64::from(v)),
            );
        }
        let mean = noise.iter().sum::<f64>() / noise.len() as f64;
        let var = noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / noise.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }
}
