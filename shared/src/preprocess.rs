//! Image bytes → model input: decode, bilinear resize, normalise to `[-1, 1]`.
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

/// A normalised image ready for the model: CHW, values in [-1, 1].
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

/// Source indices and weights for one output position along one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

/// Per-axis interpolation taps, computed in f32 exactly as PyTorch's CPU
/// kernel does (`scale = n / m`; `src = max(scale * (o + 0.5) - 0.5, 0)`;
/// `i0 = min(floor(src), n - 1)`; `lambda = clamp(src - i0, 0, 1)`), so
/// results match its fixtures bit for bit in the common cases. The trainer's
/// fused crop-and-resize uses the same taps, so both resize identically.
pub fn axis_taps(n: usize, m: usize) -> Vec<Tap> {
    let scale = n as f32 / m as f32;
    (0..m)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            // `src` is finite and non-negative, so the cast is exact floor.
            let i0 = (src.floor() as usize).min(n - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            Tap {
                i0,
                i1: (i0 + 1).min(n - 1),
                w0: 1.0 - lambda,
                w1: lambda,
            }
        })
        .collect()
}

/// Bilinear resize with half-pixel centres and no antialiasing — the same function as TensorFlow 2
/// `tf.image.resize(method="bilinear")` and PyTorch `interpolate(mode="bilinear", align_corners=False,
/// antialias=False)`; output in f32 pixel units (0..255), HWC.
///
/// # Panics
/// If `image.pixels.len() != image.width * image.height * 3`, or if the image
/// is empty while the requested output is not: both are caller bugs, since
/// [`decode_rgb`] never produces such an image.
pub fn resize_bilinear(image: &RgbImage, out_height: usize, out_width: usize) -> Vec<f32> {
    let planes = resize_to_chw(image, out_height, out_width, |x| x);
    let plane = out_height * out_width;
    let (r, rest) = planes.split_at(plane);
    let (g, b) = rest.split_at(plane);
    r.iter()
        .zip(g)
        .zip(b)
        .flat_map(|((&r, &g), &b)| [r, g, b])
        .collect()
}

/// The resize behind [`resize_bilinear`] and [`preprocess_rgb`], writing
/// channel planes and applying `map` to each result, so preprocessing needs
/// no separate normalise/transpose pass over the large output.
fn resize_to_chw(
    image: &RgbImage,
    out_height: usize,
    out_width: usize,
    map: impl Fn(f32) -> f32,
) -> Vec<f32> {
    check_rgb(image);
    let plane = out_height * out_width;
    if plane == 0 {
        return Vec::new();
    }
    assert!(
        image.width > 0 && image.height > 0,
        "cannot resize an empty {}x{} image",
        image.width,
        image.height
    );
    let (in_w, in_h) = (image.width, image.height);
    let x_taps = axis_taps(in_w, out_width);
    let y_taps = axis_taps(in_h, out_height);

    // Horizontal pass first, once per input row, then blend rows vertically.
    // That is PyTorch's `h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)`
    // grouping, so the arithmetic is identical, and it costs far less than
    // four taps per output value when upscaling. Rows are stored per channel
    // so the vertical pass runs over contiguous slices.
    let mut rows = vec![0f32; 3 * in_h * out_width];
    for (y, src_row) in image.pixels.chunks_exact(in_w * 3).enumerate() {
        for (x, tap) in x_taps.iter().enumerate() {
            for c in 0..3 {
                let a = f32::from(src_row[tap.i0 * 3 + c]);
                let b = f32::from(src_row[tap.i1 * 3 + c]);
                rows[(c * in_h + y) * out_width + x] = tap.w0 * a + tap.w1 * b;
            }
        }
    }

    let mut out = vec![0f32; 3 * plane];
    for (c, out_plane) in out.chunks_exact_mut(plane).enumerate() {
        let channel_rows = &rows[c * in_h * out_width..(c + 1) * in_h * out_width];
        for (tap, dst) in y_taps.iter().zip(out_plane.chunks_exact_mut(out_width)) {
            let top = &channel_rows[tap.i0 * out_width..(tap.i0 + 1) * out_width];
            let bottom = &channel_rows[tap.i1 * out_width..(tap.i1 + 1) * out_width];
            for ((d, &t), &b) in dst.iter_mut().zip(top).zip(bottom) {
                *d = map(tap.w0 * t + tap.w1 * b);
            }
        }
    }
    out
}

/// Maps pixel values to [-1, 1] as (x - 127.5) / 127.5 and reorders HWC -> CHW.
///
/// # Panics
/// If `hwc.len() != 3 * height * width` (a caller bug).
pub fn normalize_to_chw(hwc: &[f32], height: usize, width: usize) -> ModelInput {
    let plane = height * width;
    assert_eq!(
        Some(hwc.len()),
        plane.checked_mul(3),
        "HWC buffer does not hold {height}x{width}x3 values"
    );
    ModelInput {
        height,
        width,
        data: to_chw(hwc, plane, normalize),
    }
}

/// Scatters interleaved RGB values into three planes, mapping each value.
fn to_chw<T: Copy>(hwc: &[T], plane: usize, map: impl Fn(T) -> f32) -> Vec<f32> {
    let mut data = vec![0f32; 3 * plane];
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        r[i] = map(px[0]);
        g[i] = map(px[1]);
        b[i] = map(px[2]);
    }
    data
}

/// decode + resize to `size`x`size` (skipped when the image already has that size) + normalise.
pub fn preprocess(bytes: &[u8], size: usize) -> Result<ModelInput, PreprocessError> {
    Ok(preprocess_rgb(&decode_rgb(bytes)?, size))
}

/// Same for an already decoded image (the trainer's augmentation produces RgbImage crops).
///
/// # Panics
/// Under the same caller-bug conditions as [`resize_bilinear`].
pub fn preprocess_rgb(image: &RgbImage, size: usize) -> ModelInput {
    if image.width == size && image.height == size {
        // An identity resize returns the pixels unchanged, so skip it.
        check_rgb(image);
        return ModelInput {
            height: size,
            width: size,
            data: to_chw(&image.pixels, size * size, |x| normalize(f32::from(x))),
        };
    }
    ModelInput {
        height: size,
        width: size,
        data: resize_to_chw(image, size, size, normalize),
    }
}

/// The normalisation of [`normalize_to_chw`] for one value.
fn normalize(x: f32) -> f32 {
    (x - 127.5) / 127.5
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

    fn assert_close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-5, "index {i}: {a} != {e}");
        }
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

    #[test]
    fn resize_identity_returns_same_values() {
        let img = RgbImage {
            width: 5,
            height: 3,
            pixels: gradient(5, 3),
        };
        let out = resize_bilinear(&img, 3, 5);
        let expected: Vec<f32> = img.pixels.iter().map(|&p| f32::from(p)).collect();
        assert_eq!(out, expected);
    }

    /// A single-channel-looking image: every pixel is (v, v, v).
    fn grey(width: usize, height: usize, values: &[u8]) -> RgbImage {
        RgbImage {
            width,
            height,
            pixels: values.iter().flat_map(|&v| [v, v, v]).collect(),
        }
    }

    fn first_channel(hwc: &[f32]) -> Vec<f32> {
        hwc.iter().step_by(3).copied().collect()
    }

    #[test]
    fn upscale_2x2_to_4x4_matches_hand_computation() {
        // Per axis, n=2 -> m=4: source coordinates -0.25 (clamped to 0), 0.25,
        // 0.75, 1.25 (i0 = 1, i1 clamped to 1), so weights on the second
        // sample are 0, 0.25, 0.75, and the last output is the edge pixel.
        let img = grey(2, 2, &[0, 100, 200, 40]);
        let out = first_channel(&resize_bilinear(&img, 4, 4));
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
        assert_close(&out, &expected);
        assert_close(&out[..4], &[0.0, 25.0, 75.0, 100.0]);
        assert_close(&out[12..], &[200.0, 160.0, 80.0, 40.0]);
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
        let out = first_channel(&resize_bilinear(&img, 2, 2));
        let mean = |a: u8, b: u8, c: u8, d: u8| {
            (f32::from(a) + f32::from(b) + f32::from(c) + f32::from(d)) / 4.0
        };
        assert_close(
            &out,
            &[
                mean(0, 10, 40, 50),
                mean(20, 30, 60, 70),
                mean(80, 90, 120, 130),
                mean(100, 110, 140, 250),
            ],
        );
    }

    #[test]
    fn resize_handles_non_square_and_channels_independently() {
        // 1x3 -> 2x1: rows average (n=1 -> m=2 repeats), columns pick the middle.
        let img = RgbImage {
            width: 3,
            height: 1,
            pixels: vec![0, 0, 0, 10, 20, 30, 255, 255, 255],
        };
        let out = resize_bilinear(&img, 2, 1);
        assert_close(&out, &[10.0, 20.0, 30.0, 10.0, 20.0, 30.0]);
    }

    #[test]
    fn normalize_maps_range_and_orders_chw() {
        // Two pixels: (0, 127.5, 255) and (255, 0, 127.5).
        let hwc = [0.0, 127.5, 255.0, 255.0, 0.0, 127.5];
        let input = normalize_to_chw(&hwc, 1, 2);
        assert_eq!((input.height, input.width), (1, 2));
        assert_eq!(input.data, [-1.0, 1.0, 0.0, -1.0, 1.0, 0.0]);
    }

    #[test]
    fn preprocess_resizes_and_normalises() {
        let bytes = png(2, 2, image::ExtendedColorType::Rgb8, &gradient(2, 2));
        let input = preprocess(&bytes, 4).expect("preprocess");
        assert_eq!((input.height, input.width, input.data.len()), (4, 4, 48));
        assert!(input.data.iter().all(|v| (-1.0..=1.0).contains(v)));

        // The same-size shortcut agrees with the general path.
        let img = RgbImage {
            width: 3,
            height: 3,
            pixels: gradient(3, 3),
        };
        let fast = preprocess_rgb(&img, 3);
        let slow = normalize_to_chw(&resize_bilinear(&img, 3, 3), 3, 3);
        assert_eq!(fast, slow);
        // The fused resize-and-normalise path agrees exactly with the two steps.
        for size in [2, 5, 7] {
            let fused = preprocess_rgb(&img, size);
            let steps = normalize_to_chw(&resize_bilinear(&img, size, size), size, size);
            assert_eq!(fused, steps, "size {size}");
        }
        assert_eq!(fast.data[0], (f32::from(img.pixels[0]) - 127.5) / 127.5);
        assert_eq!(fast.data[9], (f32::from(img.pixels[1]) - 127.5) / 127.5);
    }
}
