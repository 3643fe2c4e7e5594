//! Image bytes → model input: decode, crop, bilinear resize, flip, normalise with the
//! model's mean and standard deviation, in one kernel ([`resize_crop_into`]).
//!
//! Shared by the native trainer and the browser build, so it is pure Rust
//! with no threads and no filesystem access.
//!
//! The resize reproduces TensorFlow 2 `tf.image.resize(method="bilinear")` /
//! PyTorch `interpolate(mode="bilinear", align_corners=False, antialias=False)`,
//! because the reference pipeline (and its test fixtures) use that function.
//! EXIF orientation is not applied, matching those pipelines' decoders.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits};

/// Refuse absurd sizes before decoding.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Refuse absurd sizes before decoding.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Decoder allocation budget: the largest allowed image at 16-bit RGBA
/// (8 bytes per pixel) plus headroom for the decoders' working buffers.
const MAX_DECODER_ALLOC: u64 = MAX_IMAGE_PIXELS * 8 + (64 << 20);

/// An RGB image, 8 bits per channel, row-major HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// A normalised image ready for the model: CHW.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    pub height: usize,
    pub width: usize,
    /// `3 * height * width` values, channel-planar (all R, then G, then B).
    pub data: Vec<f32>,
}

/// Why image bytes could not be turned into an [`RgbImage`].
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("unsupported image format ({found}); supported formats are JPEG, PNG, WebP and GIF")]
    UnsupportedFormat {
        /// The detected format, or "not recognised" when the bytes match none.
        found: String,
    },
    #[error(
        "image is {width}x{height} pixels, too large: the limits are {MAX_IMAGE_SIDE} pixels per side and {MAX_IMAGE_PIXELS} pixels in total"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("image is {width}x{height} pixels; it has no pixels to use")]
    Empty { width: u32, height: u32 },
    #[error("cannot decode the {format} image (corrupt or truncated?)")]
    Decode {
        format: &'static str,
        #[source]
        source: image::ImageError,
    },
}

/// Decodes JPEG/PNG/WebP/GIF (first frame) bytes to RGB (alpha dropped, grey expanded, 16-bit reduced).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, PreprocessError> {
    let unknown = || PreprocessError::UnsupportedFormat {
        found: "not recognised".to_owned(),
    };
    // Guessing from a Cursor over a slice cannot fail with I/O; treat any
    // error as "not recognised".
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| unknown())?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif)) => {
            f
        }
        Some(other) => {
            return Err(PreprocessError::UnsupportedFormat {
                found: format!("{other:?}"),
            });
        }
        None => return Err(unknown()),
    };
    let format_name = match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        _ => "GIF",
    };
    let decode_err = |source| PreprocessError::Decode {
        format: format_name,
        source,
    };

    // Headers first, with only a memory cap, so an oversized image gets our
    // own error naming its dimensions rather than a generic limit error.
    let mut header_limits = Limits::default();
    header_limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(PreprocessError::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::Empty { width, height });
    }

    // Now the full limits, so the decoders bound what they allocate.
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    limits.reserve(decoder.total_bytes()).map_err(decode_err)?;
    decoder.set_limits(limits).map_err(decode_err)?;
    let rgb = image::DynamicImage::from_decoder(decoder)
        .map_err(decode_err)?
        .into_rgb8();

    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage {
        width,
        height,
        pixels: rgb.into_raw(),
    })
}

/// How 8-bit pixel values become model inputs: `(x / 255 − mean) / std` per channel,
/// as Hugging Face's `image_mean` / `image_std` and timm's `mean` / `std` describe it.
///
/// The model's config carries it (`image_mean`, `image_std`), because weights trained
/// with one normalisation give worse answers with another.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    #[serde(rename = "image_mean", default = "half")]
    pub mean: [f32; 3],
    #[serde(rename = "image_std", default = "half")]
    pub std: [f32; 3],
}

/// The reference's mean and standard deviation, for configs written before these
/// fields existed.
fn half() -> [f32; 3] {
    [0.5; 3]
}

impl Default for Normalization {
    fn default() -> Self {
        Self::REFERENCE
    }
}

impl Normalization {
    /// Google's ViTs (and most Hugging Face ViT checkpoints): `(x − 127.5) / 127.5`, to [−1, 1].
    pub const REFERENCE: Self = Self {
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    /// ImageNet's statistics, used by DeiT and many timm models.
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// This normalisation with the given parts replaced (e.g. from command-line options).
    pub fn replaced(self, mean: Option<[f32; 3]>, std: Option<[f32; 3]>) -> Self {
        Self {
            mean: mean.unwrap_or(self.mean),
            std: std.unwrap_or(self.std),
        }
    }

    /// Finite values and positive standard deviations.
    pub fn is_valid(&self) -> bool {
        self.mean.iter().all(|m| m.is_finite())
            && self.std.iter().all(|s| s.is_finite() && *s > 0.0)
    }

    /// Per channel, `(offset, scale)` in 8-bit units, applied as `(x − offset) / scale`:
    /// for the reference's 0.5 that is exactly `(x − 127.5) / 127.5`, bit for bit.
    fn affine(&self) -> [(f32, f32); 3] {
        std::array::from_fn(|c| (255.0 * self.mean[c], 255.0 * self.std[c]))
    }
}

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

/// Source indices and weights for one output position along one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// Taps for resizing the `n` samples starting at `offset` to `m`, computed in f32
/// exactly as PyTorch's CPU kernel does (`scale = n / m`;
/// `src = max(scale * (o + 0.5) - 0.5, 0)`; `i0 = min(floor(src), n - 1)`;
/// `lambda = clamp(src - i0, 0, 1)`), so results match its fixtures bit for bit
/// in the common cases.
fn axis_taps(offset: usize, n: usize, m: usize) -> Vec<Tap> {
    let scale = n as f32 / m as f32;
    (0..m)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            // `src` is finite and non-negative, so the cast is exact floor.
            let i0 = (src.floor() as usize).min(n - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            Tap {
                i0: offset + i0,
                i1: offset + (i0 + 1).min(n - 1),
                w0: 1.0 - lambda,
                w1: lambda,
            }
        })
        .collect()
}

/// The one resize of the project, used for prediction, evaluation, training and in
/// the browser: `crop` of `image` resized to `size`×`size`, mirrored left-right when
/// `flip`, normalised, written into `out` as CHW (`3·size²` values).
///
/// The resize is TensorFlow 2's `tf.image.resize(method="bilinear")` (the reference
/// pipeline's) = PyTorch's `interpolate(mode="bilinear", align_corners=False,
/// antialias=False)`: half-pixel centres, no antialiasing. The crop is read in place
/// through offset taps and the flip is the horizontal taps reversed, so a batch is
/// written in one pass with no intermediate images. `rows` is scratch space, reused
/// across calls.
///
/// # Panics
/// If the image's buffer does not match its size, the crop is empty or outside the
/// image, or `out` does not hold `3·size²` values: all caller bugs.
pub fn resize_crop_into(
    image: &RgbImage,
    crop: Crop,
    size: usize,
    flip: bool,
    normalization: &Normalization,
    rows: &mut Vec<f32>,
    out: &mut [f32],
) {
    check_rgb(image);
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

    let mut x_taps = axis_taps(crop.x, crop.width, size);
    if flip {
        // Output column x takes the taps of column size-1-x: the mirror of the
        // resized image, without touching any pixel twice.
        x_taps.reverse();
    }
    // Rows below are indexed relative to the crop.
    let y_taps = axis_taps(0, crop.height, size);

    // Horizontal pass first, once per input row, then blend rows vertically.
    // That is PyTorch's `h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)`
    // grouping, so the arithmetic is identical, and it costs far less than four
    // taps per output value when upscaling. Rows are stored per channel so the
    // vertical pass runs over contiguous slices.
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

    let affine = normalization.affine();
    for (c, out_plane) in out.chunks_exact_mut(plane).enumerate() {
        let channel_rows = &rows[c * crop_h * size..(c + 1) * crop_h * size];
        let (offset, scale) = affine[c];
        for (tap, dst) in y_taps.iter().zip(out_plane.chunks_exact_mut(size)) {
            let top = &channel_rows[tap.i0 * size..(tap.i0 + 1) * size];
            let bottom = &channel_rows[tap.i1 * size..(tap.i1 + 1) * size];
            for ((d, &t), &b) in dst.iter_mut().zip(top).zip(bottom) {
                // Division, not a reciprocal multiply: `(x − 127.5) / 127.5` exactly.
                *d = (tap.w0 * t + tap.w1 * b - offset) / scale;
            }
        }
    }
}

/// Decode, resize the whole image to `size`×`size`, normalise.
pub fn preprocess(
    bytes: &[u8],
    size: usize,
    normalization: &Normalization,
) -> Result<ModelInput, PreprocessError> {
    Ok(preprocess_rgb(&decode_rgb(bytes)?, size, normalization))
}

/// The same for an already decoded image.
///
/// # Panics
/// If the image is empty or its buffer does not match its size (caller bugs:
/// [`decode_rgb`] never produces such an image).
pub fn preprocess_rgb(image: &RgbImage, size: usize, normalization: &Normalization) -> ModelInput {
    let mut data = vec![0.0; 3 * size * size];
    let crop = Crop::full(image.width, image.height);
    resize_crop_into(
        image,
        crop,
        size,
        false,
        normalization,
        &mut Vec::new(),
        &mut data,
    );
    ModelInput {
        height: size,
        width: size,
        data,
    }
}

/// Asserts the pixel buffer matches the declared dimensions.
fn check_rgb(image: &RgbImage) {
    let expected = image
        .width
        .checked_mul(image.height)
        .and_then(|p| p.checked_mul(3));
    assert_eq!(
        expected,
        Some(image.pixels.len()),
        "RgbImage of {}x{} must hold width*height*3 bytes",
        image.width,
        image.height
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, codecs::png::PngEncoder};

    fn png(width: u32, height: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(data, width, height, color)
            .expect("encode png");
        out
    }

    fn gradient(width: usize, height: usize) -> Vec<u8> {
        (0..width * height * 3)
            .map(|i| (i * 7 % 256) as u8)
            .collect()
    }

    #[test]
    fn decodes_png_exactly() {
        let pixels = gradient(5, 3);
        let bytes = png(5, 3, image::ExtendedColorType::Rgb8, &pixels);
        let img = decode_rgb(&bytes).expect("decode");
        assert_eq!(
            img,
            RgbImage {
                width: 5,
                height: 3,
                pixels
            }
        );
    }

    #[test]
    fn decodes_jpeg_approximately() {
        // A flat colour survives JPEG almost unchanged.
        let pixels: Vec<u8> = [200u8, 100, 50].repeat(16 * 8);
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
            .write_image(&pixels, 16, 8, image::ExtendedColorType::Rgb8)
            .expect("encode jpeg");
        let img = decode_rgb(&bytes).expect("decode");
        assert_eq!((img.width, img.height), (16, 8));
        for (got, want) in img.pixels.iter().zip(&pixels) {
            assert!(got.abs_diff(*want) <= 3, "{got} vs {want}");
        }
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let grey = png(2, 1, image::ExtendedColorType::L8, &[10, 250]);
        let img = decode_rgb(&grey).expect("grey");
        assert_eq!(img.pixels, [10, 10, 10, 250, 250, 250]);

        let rgba = png(
            2,
            1,
            image::ExtendedColorType::Rgba8,
            &[1, 2, 3, 0, 4, 5, 6, 255],
        );
        let img = decode_rgb(&rgba).expect("rgba");
        assert_eq!(img.pixels, [1, 2, 3, 4, 5, 6]);

        let grey16: Vec<u8> = [0u16, 65535].iter().flat_map(|v| v.to_be_bytes()).collect();
        let img = decode_rgb(&png(2, 1, image::ExtendedColorType::L16, &grey16)).expect("l16");
        assert_eq!(img.pixels, [0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn webp_decodes_exactly() {
        let pixels = gradient(4, 3);
        let mut bytes = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .write_image(&pixels, 4, 3, image::ExtendedColorType::Rgb8)
            .expect("encode webp");
        let img = decode_rgb(&bytes).expect("webp");
        assert_eq!((img.width, img.height), (4, 3));
        assert_eq!(img.pixels, pixels);
    }

    #[test]
    fn gif_first_frame_decodes() {
        let mut bytes = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
            let frame = image::Frame::new(image::RgbaImage::from_pixel(
                3,
                2,
                image::Rgba([255, 0, 0, 255]),
            ));
            encoder.encode_frame(frame).expect("gif frame");
        }
        let img = decode_rgb(&bytes).expect("gif");
        assert_eq!((img.width, img.height), (3, 2));
        assert_eq!(&img.pixels[..3], &[255, 0, 0]);
    }

    #[test]
    fn non_image_bytes_are_rejected_with_supported_list() {
        for bytes in [&b"hello, this is not an image"[..], &[]] {
            let err = decode_rgb(bytes).expect_err("not an image");
            assert!(matches!(err, PreprocessError::UnsupportedFormat { .. }));
            assert!(err.to_string().contains("JPEG, PNG, WebP and GIF"), "{err}");
        }
        // A BMP signature is recognised but not supported by this build.
        let err = decode_rgb(b"BM\x00\x00\x00\x00\x00\x00\x00\x00").expect_err("bmp");
        assert!(err.to_string().contains("Bmp"), "{err}");
    }

    #[test]
    fn truncated_png_is_rejected() {
        let bytes = png(8, 8, image::ExtendedColorType::Rgb8, &gradient(8, 8));
        for cut in [bytes.len() / 2, 40, bytes.len() - 13] {
            let err = decode_rgb(&bytes[..cut]).expect_err("truncated");
            assert!(
                matches!(err, PreprocessError::Decode { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    /// CRC-32 as PNG chunks use it (bitwise; speed is irrelevant here).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn oversized_header_is_refused_before_decoding() {
        let mut bytes = png(1, 1, image::ExtendedColorType::Rgb8, &[1, 2, 3]);
        // Signature (8) + length (4) + "IHDR" (4), then width and height.
        assert_eq!(&bytes[12..16], b"IHDR");
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_rgb(&bytes).expect_err("too large");
        assert!(
            matches!(
                err,
                PreprocessError::TooLarge {
                    width: 100_000,
                    height: 100_000
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("100000x100000"));

        // Within the side limit but over the pixel budget.
        bytes[16..20].copy_from_slice(&16_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&16_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_rgb(&bytes).expect_err("too many pixels");
        assert!(matches!(err, PreprocessError::TooLarge { .. }), "{err}");
    }

    /// Runs the kernel and returns channel planes in 8-bit units (mean 0, std 1/255
    /// gives a scale of 255·(1/255), which f32 rounds to within 1e-7 of 1).
    fn resize(image: &RgbImage, crop: Crop, size: usize, flip: bool) -> Vec<f32> {
        let raw = Normalization {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        };
        let mut out = vec![0.0; 3 * size * size];
        resize_crop_into(image, crop, size, flip, &raw, &mut Vec::new(), &mut out);
        out
    }

    fn whole(image: &RgbImage, size: usize) -> Vec<f32> {
        resize(image, Crop::full(image.width, image.height), size, false)
    }

    fn assert_close_pixels(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-4, "index {i}: {a} != {e}");
        }
    }

    /// A single-channel-looking image: every pixel is (v, v, v).
    fn grey(width: usize, height: usize, values: &[u8]) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: values.iter().flat_map(|&v| [v, v, v]).collect(),
        }
    }

    fn test_image(width: usize, height: usize, salt: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: (0..width * height * 3)
                .map(|i| ((i * 37 + salt * 101 + i / 7) % 256) as u8)
                .collect(),
        }
    }

    #[test]
    fn same_size_returns_the_pixels_in_planes() {
        let image = test_image(4, 4, 0);
        let out = whole(&image, 4);
        for c in 0..3 {
            let plane: Vec<f32> = image.pixels[c..]
                .iter()
                .step_by(3)
                .map(|&p| f32::from(p))
                .collect();
            assert_close_pixels(&out[c * 16..(c + 1) * 16], &plane);
        }
    }

    #[test]
    fn upscale_2x2_to_4x4_matches_hand_computation() {
        // Per axis, n=2 -> m=4: source coordinates -0.25 (clamped to 0), 0.25,
        // 0.75, 1.25 (i0 = 1, i1 clamped to 1), so weights on the second
        // sample are 0, 0.25, 0.75, and the last output is the edge pixel.
        let img = grey(2, 2, &[0, 100, 200, 40]);
        let out = &whole(&img, 4)[..16];
        let axis = |a: f32, b: f32| [a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b];
        let top = axis(0.0, 100.0);
        let bottom = axis(200.0, 40.0);
        let mut expected = Vec::new();
        for y in 0..4 {
            for x in 0..4 {
                let col = axis(top[x], bottom[x]);
                expected.push(col[y]);
            }
        }
        assert_close_pixels(out, &expected);
        assert_close_pixels(&out[..4], &[0.0, 25.0, 75.0, 100.0]);
        assert_close_pixels(&out[12..], &[200.0, 160.0, 80.0, 40.0]);
    }

    #[test]
    fn downscale_4x4_to_2x2_averages_middle_points() {
        // n=4 -> m=2: coordinates 0.5 and 2.5, i.e. the mean of samples
        // (0, 1) and (2, 3) along each axis.
        #[rustfmt::skip]
        let values = [
            0, 10, 20, 30,
            40, 50, 60, 70,
            80, 90, 100, 110,
            120, 130, 140, 250,
        ];
        let img = grey(4, 4, &values);
        let mean = |a: u8, b: u8, c: u8, d: u8| {
            (f32::from(a) + f32::from(b) + f32::from(c) + f32::from(d)) / 4.0
        };
        assert_close_pixels(
            &whole(&img, 2)[..4],
            &[
                mean(0, 10, 40, 50),
                mean(20, 30, 60, 70),
                mean(80, 90, 120, 130),
                mean(100, 110, 140, 250),
            ],
        );
    }

    #[test]
    fn non_square_images_and_channels_resize_independently() {
        // 3x1 -> 2x2: columns sample at 0.25 and 1.75 of 3 (scale 1.5), the single
        // row repeats; each channel on its own.
        let img = RgbImage {
            width: 3,
            height: 1,
            pixels: vec![0, 0, 0, 10, 20, 30, 255, 255, 255],
        };
        let out = whole(&img, 2);
        let at = |a: f32, b: f32, lambda: f32| (1.0 - lambda) * a + lambda * b;
        for (c, (first, second)) in [(10.0, 255.0), (20.0, 255.0), (30.0, 255.0)]
            .into_iter()
            .enumerate()
        {
            let row = [at(0.0, first, 0.25), at(first, second, 0.75)];
            assert_close_pixels(&out[c * 4..(c + 1) * 4], &[row[0], row[1], row[0], row[1]]);
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

    /// Mirrors each row of CHW data.
    fn mirror_chw(data: &[f32], width: usize) -> Vec<f32> {
        data.chunks_exact(width)
            .flat_map(|row| row.iter().rev().copied())
            .collect()
    }

    #[test]
    fn a_crop_read_in_place_equals_the_cut_out_image() {
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
            let piece = cut(&image, crop);
            for size in [1, 4, 9, 24] {
                for flip in [false, true] {
                    let expected = whole(&piece, size);
                    let expected = if flip {
                        mirror_chw(&expected, size)
                    } else {
                        expected
                    };
                    assert_eq!(
                        resize(&image, crop, size, flip),
                        expected,
                        "{crop:?} size {size} flip {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn flipping_a_mirrored_image_gives_the_original_back() {
        let image = test_image(11, 8, 2);
        let mirrored = RgbImage {
            pixels: image
                .pixels
                .chunks_exact(image.width * 3)
                .flat_map(|row| row.chunks_exact(3).rev().flatten().copied())
                .collect(),
            ..image.clone()
        };
        let crop = Crop {
            x: 1,
            y: 2,
            width: 6,
            height: 5,
        };
        let mirrored_crop = Crop {
            x: image.width - crop.x - crop.width,
            ..crop
        };
        let plain = resize(&image, crop, 10, false);
        assert_ne!(plain, resize(&image, crop, 10, true));
        // Equal up to rounding: the sample positions of a mirrored axis are the
        // same numbers computed from the other end.
        assert_close_pixels(&resize(&mirrored, mirrored_crop, 10, true), &plain);
    }

    #[test]
    fn normalisation_is_per_channel_and_the_reference_is_exact() {
        // Two pixels: (0, 127, 255) and (255, 0, 128).
        let image = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![0, 127, 255, 255, 0, 128],
        };
        let mut out = vec![0.0; 12];
        let crop = Crop {
            x: 0,
            y: 0,
            width: 2,
            height: 1,
        };
        // Upscaling 2x1 to 2x2 repeats the row, so the first row is the pixels.
        resize_crop_into(
            &image,
            crop,
            2,
            false,
            &Normalization::REFERENCE,
            &mut Vec::new(),
            &mut out,
        );
        let reference = |x: f32| (x - 127.5) / 127.5;
        assert_eq!(
            [out[0], out[1], out[4], out[5], out[8], out[9]],
            [0.0, 255.0, 127.0, 0.0, 255.0, 128.0].map(reference)
        );
        let imagenet = Normalization::IMAGENET;
        resize_crop_into(&image, crop, 2, false, &imagenet, &mut Vec::new(), &mut out);
        for (c, (first, second)) in [(0.0, 255.0), (127.0, 0.0), (255.0, 128.0)]
            .into_iter()
            .enumerate()
        {
            let expected = |x: f32| (x / 255.0 - imagenet.mean[c]) / imagenet.std[c];
            assert!((out[c * 4] - expected(first)).abs() < 1e-5);
            assert!((out[c * 4 + 1] - expected(second)).abs() < 1e-5);
        }
        assert!(Normalization::REFERENCE.is_valid());
        let zero_std = Normalization {
            std: [0.5, 0.0, 0.5],
            ..Normalization::REFERENCE
        };
        assert!(!zero_std.is_valid());
    }

    #[test]
    fn preprocess_decodes_resizes_and_normalises() {
        let pixels = gradient(3, 3);
        let bytes = png(3, 3, image::ExtendedColorType::Rgb8, &pixels);
        let image = RgbImage {
            width: 3,
            height: 3,
            pixels,
        };
        for size in [2, 3, 7] {
            let input = preprocess(&bytes, size, &Normalization::REFERENCE).expect("preprocess");
            assert_eq!((input.height, input.width), (size, size));
            assert_eq!(
                input,
                preprocess_rgb(&image, size, &Normalization::REFERENCE)
            );
            assert!(input.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
    }
}
