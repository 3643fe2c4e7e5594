//! TrivialAugment (Müller & Hutter, 2021) as torchvision's `TrivialAugmentWide` computes it
//! on PIL images: one operation drawn uniformly from fourteen, with a magnitude drawn
//! uniformly from 31 bins of the "wide" ranges and a random sign where it has one.
//!
//! Each operation is written after the Pillow code that torchvision calls for it
//! (`Image.transform` with nearest-neighbour sampling in 16.16 fixed point,
//! `ImageEnhance`'s blends with their truncation, `ImageOps`' lookup tables), so an
//! operation with a given magnitude gives the same bytes as torchvision's;
//! `tests/fixtures/trivial_augment.py` records them and the tests below compare.
//! The random stream is ours (the distribution is torchvision's).

use rand::{Rng, RngExt};
use vit::preprocess::RgbImage;

/// torchvision's `num_magnitude_bins`.
pub const BINS: usize = 31;

/// One operation with its magnitude.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Identity,
    /// Horizontal shear: the output pixel (x, y) is the input's (x + m·y, y).
    ShearX(f64),
    /// Vertical shear: the output pixel (x, y) is the input's (x, y + m·x).
    ShearY(f64),
    /// Shift right by this many pixels (left when negative).
    TranslateX(i64),
    /// Shift down by this many pixels (up when negative).
    TranslateY(i64),
    /// Counter-clockwise rotation about the centre, in degrees.
    Rotate(f64),
    /// `ImageEnhance` factors: 1 leaves the image unchanged.
    Brightness(f64),
    Color(f64),
    Contrast(f64),
    Sharpness(f64),
    /// Keep this many high bits of every value.
    Posterize(u32),
    /// Invert every value at or above this threshold.
    Solarize(f64),
    AutoContrast,
    Equalize,
}

/// `torch.linspace(start, end, BINS)[bin]` in float32, as torchvision builds its ranges.
fn linspace(start: f32, end: f32, bin: usize) -> f64 {
    let step = (end - start) / (BINS - 1) as f32;
    let value = if bin < BINS / 2 {
        start + step * bin as f32
    } else {
        end - step * (BINS - 1 - bin) as f32
    };
    f64::from(value)
}

impl Op {
    /// The operation `index` (0..14, torchvision's order) at magnitude bin `bin`, negated
    /// when `negative` and the operation is signed.
    pub fn from_bin(index: usize, bin: usize, negative: bool) -> Op {
        let sign = if negative { -1.0 } else { 1.0 };
        let signed = |start, end| sign * linspace(start, end, bin);
        // The enhancements take 1 + magnitude.
        let factor = |start, end| 1.0 + signed(start, end);
        match index {
            0 => Op::Identity,
            1 => Op::ShearX(signed(0.0, 0.99)),
            2 => Op::ShearY(signed(0.0, 0.99)),
            // torchvision passes `int(magnitude)`: truncated toward zero.
            3 => Op::TranslateX(signed(0.0, 32.0) as i64),
            4 => Op::TranslateY(signed(0.0, 32.0) as i64),
            5 => Op::Rotate(signed(0.0, 135.0)),
            6 => Op::Brightness(factor(0.0, 0.99)),
            7 => Op::Color(factor(0.0, 0.99)),
            8 => Op::Contrast(factor(0.0, 0.99)),
            9 => Op::Sharpness(factor(0.0, 0.99)),
            // `8 - (arange(31) / ((31 - 1) / 6)).round()`: 8 bits down to 2.
            10 => Op::Posterize(8 - (bin as f64 / 5.0).round_ties_even() as u32),
            11 => Op::Solarize(linspace(255.0, 0.0, bin)),
            12 => Op::AutoContrast,
            _ => Op::Equalize,
        }
    }

    /// TrivialAugment's draw: an operation, then its magnitude bin and sign.
    pub fn sample(rng: &mut impl Rng) -> Op {
        let index = rng.random_range(0..14);
        let bin = rng.random_range(0..BINS);
        let negative = rng.random::<bool>();
        Op::from_bin(index, bin, negative)
    }

    /// `image` transformed by this operation.
    pub fn apply(self, image: &RgbImage) -> RgbImage {
        let (w, h) = (image.width as f64, image.height as f64);
        match self {
            Op::Identity => image.clone(),
            // torchvision's inverse affine matrices, with the shears about the corner.
            Op::ShearX(m) => affine(image, [1.0, m, 0.0, 0.0, 1.0, 0.0]),
            Op::ShearY(m) => affine(image, [1.0, 0.0, 0.0, m, 1.0, 0.0]),
            Op::TranslateX(t) => affine(image, [1.0, 0.0, -t as f64, 0.0, 1.0, 0.0]),
            Op::TranslateY(t) => affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -t as f64]),
            Op::Rotate(degrees) => {
                // `Image.rotate` about (w/2, h/2), its matrix rounded to 15 decimals.
                let angle = -(degrees.rem_euclid(360.0)).to_radians();
                let round15 = |v: f64| (v * 1e15).round() / 1e15;
                let (cos, sin) = (round15(angle.cos()), round15(angle.sin()));
                let (cx, cy) = (w / 2.0, h / 2.0);
                let c = cos * -cx + sin * -cy + cx;
                let f = -sin * -cx + cos * -cy + cy;
                affine(image, [cos, sin, c, -sin, cos, f])
            }
            Op::Brightness(factor) => {
                let black = RgbImage {
                    pixels: vec![0; image.pixels.len()],
                    ..image.clone()
                };
                blend(&black, image, factor)
            }
            Op::Color(factor) => {
                let mut gray = image.clone();
                for pixel in gray.pixels.chunks_exact_mut(3) {
                    let l = luma(pixel);
                    pixel.fill(l);
                }
                blend(&gray, image, factor)
            }
            Op::Contrast(factor) => {
                let count = (image.width * image.height).max(1) as f64;
                let sum: f64 = image
                    .pixels
                    .chunks_exact(3)
                    .map(|p| f64::from(luma(p)))
                    .sum();
                let mean = (sum / count + 0.5) as u8;
                let flat = RgbImage {
                    pixels: vec![mean; image.pixels.len()],
                    ..image.clone()
                };
                blend(&flat, image, factor)
            }
            Op::Sharpness(factor) => blend(&smooth(image), image, factor),
            Op::Posterize(bits) => {
                let mask = !((1u32 << (8 - bits.min(8))) - 1) as u8;
                map_values(image, |_, v| v & mask)
            }
            Op::Solarize(threshold) => {
                map_values(
                    image,
                    |_, v| {
                        if f64::from(v) < threshold { v } else { 255 - v }
                    },
                )
            }
            Op::AutoContrast => {
                let luts = per_channel(image, autocontrast_lut);
                map_values(image, |c, v| luts[c][v as usize])
            }
            Op::Equalize => {
                let luts = per_channel(image, equalize_lut);
                map_values(image, |c, v| luts[c][v as usize])
            }
        }
    }
}

/// Pillow's `L` conversion: ITU-R 601-2 luma in 16.16 fixed point, rounded.
fn luma(pixel: &[u8]) -> u8 {
    let [r, g, b] = [pixel[0], pixel[1], pixel[2]].map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `Image.blend(degenerate, image, factor)`: `degenerate + factor·(image − degenerate)` in
/// float32, clipped to [0, 255] and truncated, as Pillow's `ImagingBlend`.
fn blend(degenerate: &RgbImage, image: &RgbImage, factor: f64) -> RgbImage {
    let alpha = factor as f32;
    let pixels = degenerate
        .pixels
        .iter()
        .zip(&image.pixels)
        .map(|(&a, &b)| {
            let value = f32::from(a) + alpha * (f32::from(b) - f32::from(a));
            value.clamp(0.0, 255.0) as u8
        })
        .collect();
    RgbImage {
        pixels,
        ..image.clone()
    }
}

/// `ImageFilter.SMOOTH` (3×3, weights 1 around a centre of 5, over 13), with Pillow's
/// rounding; the border rows and columns are the image's own.
fn smooth(image: &RgbImage) -> RgbImage {
    let (w, h) = (image.width, image.height);
    let mut out = image.clone();
    if w < 3 || h < 3 {
        return out;
    }
    let at = |x: usize, y: usize, c: usize| f32::from(image.pixels[(y * w + x) * 3 + c]);
    let weight = 1.0 / 13.0_f32;
    let centre = 5.0 / 13.0_f32;
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                // Pillow's order: the row below, the row itself, the row above.
                let mut sum = 0.5_f32;
                for (dy, row) in [(1isize, y + 1), (0, y), (-1, y - 1)] {
                    for column in [x - 1, x, x + 1] {
                        let k = if dy == 0 && column == x {
                            centre
                        } else {
                            weight
                        };
                        sum += at(column, row, c) * k;
                    }
                }
                out.pixels[(y * w + x) * 3 + c] = sum.clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Pillow's `Image.transform(AFFINE, matrix, NEAREST)` with black fill: the output pixel
/// (x, y) takes the input pixel at `matrix · (x + ½, y + ½)`, rounded down, in Pillow's
/// 16.16 fixed point (`affine_fixed`); black where that falls outside.
fn affine(image: &RgbImage, m: [f64; 6]) -> RgbImage {
    let (w, h) = (image.width as i64, image.height as i64);
    let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i64;
    let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
    let mut a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5);
    let mut a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5);
    let mut pixels = vec![0u8; image.pixels.len()];
    for y in 0..h {
        let (mut xx, mut yy) = (a2, a5);
        for x in 0..w {
            let (xin, yin) = (xx >> 16, yy >> 16);
            if (0..w).contains(&xin) && (0..h).contains(&yin) {
                let from = ((yin * w + xin) * 3) as usize;
                let to = ((y * w + x) * 3) as usize;
                pixels[to..to + 3].copy_from_slice(&image.pixels[from..from + 3]);
            }
            xx += a0;
            yy += a3;
        }
        a2 += a1;
        a5 += a4;
    }
    RgbImage {
        pixels,
        ..image.clone()
    }
}

/// `image` with `f(channel, value)` applied to every value.
fn map_values(image: &RgbImage, f: impl Fn(usize, u8) -> u8) -> RgbImage {
    let pixels = image
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| f(i % 3, v))
        .collect();
    RgbImage {
        pixels,
        ..image.clone()
    }
}

/// A lookup table per channel, each made from that channel's histogram.
fn per_channel(image: &RgbImage, lut: fn(&[usize; 256]) -> [u8; 256]) -> [[u8; 256]; 3] {
    let mut histograms = [[0usize; 256]; 3];
    for pixel in image.pixels.chunks_exact(3) {
        for (c, &v) in pixel.iter().enumerate() {
            histograms[c][v as usize] += 1;
        }
    }
    histograms.map(|histogram| lut(&histogram))
}

/// `ImageOps.autocontrast` without cut-off: the channel's range stretched to [0, 255].
fn autocontrast_lut(histogram: &[usize; 256]) -> [u8; 256] {
    let mut lut = std::array::from_fn(|i| i as u8);
    let lo = histogram.iter().position(|&n| n > 0);
    let hi = histogram.iter().rposition(|&n| n > 0);
    if let (Some(lo), Some(hi)) = (lo, hi)
        && hi > lo
    {
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        for (i, entry) in lut.iter_mut().enumerate() {
            // Python's int(): toward zero, then clipped.
            *entry = (i as f64 * scale + offset).trunc().clamp(0.0, 255.0) as u8;
        }
    }
    lut
}

/// `ImageOps.equalize`: the channel's cumulative histogram as the lookup table.
fn equalize_lut(histogram: &[usize; 256]) -> [u8; 256] {
    let mut lut = std::array::from_fn(|i| i as u8);
    let used: Vec<usize> = histogram.iter().copied().filter(|&n| n > 0).collect();
    if used.len() <= 1 {
        return lut;
    }
    let last = used[used.len() - 1];
    let step = (used.iter().sum::<usize>() - last) / 255;
    if step == 0 {
        return lut;
    }
    let mut n = step / 2;
    for (entry, &count) in lut.iter_mut().zip(histogram) {
        *entry = (n / step).min(255) as u8;
        n += count;
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: (0..width * height * 3)
                .map(|i| ((i * 7 + i / 5) % 256) as u8)
                .collect(),
        }
    }

    #[test]
    fn magnitudes_span_torchvisions_wide_ranges() {
        assert_eq!(Op::from_bin(1, 0, false), Op::ShearX(0.0));
        assert_eq!(Op::from_bin(1, 30, true), Op::ShearX(-f64::from(0.99_f32)));
        assert_eq!(Op::from_bin(3, 30, false), Op::TranslateX(32));
        assert_eq!(Op::from_bin(3, 14, true), Op::TranslateX(-14));
        assert_eq!(Op::from_bin(5, 20, false), Op::Rotate(90.0));
        assert_eq!(
            Op::from_bin(6, 30, true),
            Op::Brightness(1.0 - f64::from(0.99_f32))
        );
        let bits: Vec<Op> = [0, 2, 3, 7, 8, 30]
            .map(|bin| Op::from_bin(10, bin, true))
            .to_vec();
        assert_eq!(
            bits,
            [8, 8, 7, 7, 6, 2].map(Op::Posterize).to_vec(),
            "posterize bits"
        );
        assert_eq!(Op::from_bin(11, 0, true), Op::Solarize(255.0));
        assert_eq!(Op::from_bin(11, 30, false), Op::Solarize(0.0));
        assert_eq!(Op::from_bin(13, 5, true), Op::Equalize);
    }

    #[test]
    fn geometry_moves_pixels_where_torchvision_does() {
        let image = gradient(8, 6);
        let pixel =
            |im: &RgbImage, x: usize, y: usize| im.pixels[(y * im.width + x) * 3..][..3].to_vec();
        let right = Op::TranslateX(3).apply(&image);
        assert_eq!(pixel(&right, 5, 2), pixel(&image, 2, 2));
        assert_eq!(pixel(&right, 2, 2), vec![0, 0, 0]);
        let up = Op::TranslateY(-2).apply(&image);
        assert_eq!(pixel(&up, 4, 1), pixel(&image, 4, 3));
        // A quarter turn counter-clockwise of a square: out(x, y) = in(w − 1 − y, x).
        let square = gradient(6, 6);
        let turned = Op::Rotate(90.0).apply(&square);
        for (x, y) in [(0, 0), (2, 5), (5, 1)] {
            assert_eq!(pixel(&turned, x, y), pixel(&square, 5 - y, x), "{x},{y}");
        }
        // Shear about the top-left corner: the top row stays.
        let sheared = Op::ShearX(0.5).apply(&image);
        assert_eq!(pixel(&sheared, 3, 0), pixel(&image, 3, 0));
        assert_eq!(pixel(&sheared, 3, 4), pixel(&image, 5, 4));
    }

    #[test]
    fn colour_operations_keep_their_fixed_points() {
        let image = gradient(9, 7);
        for op in [
            Op::Identity,
            Op::Brightness(1.0),
            Op::Color(1.0),
            Op::Contrast(1.0),
            Op::Sharpness(1.0),
            Op::Posterize(8),
            Op::Solarize(256.0),
        ] {
            assert_eq!(op.apply(&image), image, "{op:?}");
        }
        let inverted = Op::Solarize(0.0).apply(&image);
        assert!(
            inverted
                .pixels
                .iter()
                .zip(&image.pixels)
                .all(|(a, b)| a + b == 255)
        );
        let black = Op::Brightness(0.0).apply(&image);
        assert!(black.pixels.iter().all(|&v| v == 0));
        let gray = Op::Color(0.0).apply(&image);
        assert!(
            gray.pixels
                .chunks_exact(3)
                .all(|p| p[0] == p[1] && p[1] == p[2])
        );
        let stretched = Op::AutoContrast.apply(&RgbImage {
            width: 2,
            height: 1,
            pixels: vec![50, 60, 70, 101, 111, 121],
        });
        assert_eq!(stretched.pixels, vec![0, 0, 0, 255, 255, 255]);
    }

    /// `tests/fixtures/trivial_augment.json`: Pillow's output for each operation.
    #[test]
    fn operations_give_pillows_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/trivial_augment.json"
        );
        let text =
            std::fs::read_to_string(path).expect("the fixture (tests/fixtures/trivial_augment.py)");
        let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
        let input = &fixture["input"];
        let image = RgbImage {
            width: input["width"].as_u64().expect("width") as usize,
            height: input["height"].as_u64().expect("height") as usize,
            pixels: bytes(&input["pixels"]),
        };
        let cases = fixture["cases"].as_array().expect("cases");
        assert!(cases.len() > 40, "{} cases", cases.len());
        for case in cases {
            let index = case["op"].as_u64().expect("op") as usize;
            let bin = case["bin"].as_u64().expect("bin") as usize;
            let negative = case["negative"].as_bool().expect("negative");
            let op = Op::from_bin(index, bin, negative);
            let expected = bytes(&case["pixels"]);
            let got = op.apply(&image).pixels;
            let differing = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing, 0,
                "{op:?} ({}): {differing} values differ",
                case["name"]
            );
        }
    }

    fn bytes(value: &serde_json::Value) -> Vec<u8> {
        let hex = value.as_str().expect("hexadecimal bytes").as_bytes();
        hex.chunks_exact(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(text, 16).expect("a hexadecimal byte")
            })
            .collect()
    }
}
