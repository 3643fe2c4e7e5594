//! Checks on image files given to the page, before the model crate decodes them.
//!
//! The model crate accepts images up to 100 megapixels, which a 32-bit wasm
//! heap cannot always hold next to the model; here the limit is lower and is
//! checked from the file header alone, so a huge image is refused without
//! being decoded.

use std::io::Cursor;

use image::ImageReader;
use vit::preprocess::{self, ModelInput, Normalization, PreprocessError, RgbImage};

/// Largest file the page reads (bytes).
pub const MAX_FILE_BYTES: usize = 64 << 20;
/// Largest image the page decodes (pixels): 50 MP covers phone cameras.
pub const MAX_PIXELS: u64 = 50_000_000;

/// Why a file cannot be classified; the text is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {mib:.0} MiB; the demo reads files up to {} MiB", MAX_FILE_BYTES >> 20)]
    FileTooLarge { mib: f64 },
    #[error("this is not an image the demo can read: use a JPEG, PNG, WebP or GIF file")]
    NotAnImage,
    #[error("the image header is damaged (corrupt or truncated file?): {0}")]
    BadHeader(String),
    #[error(
        "the image is {width}x{height} pixels ({megapixels:.0} megapixels); the demo accepts up to {} megapixels, so scale it down first",
        MAX_PIXELS / 1_000_000
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        megapixels: f64,
    },
    #[error("{0}")]
    Preprocess(#[from] PreprocessError),
}

/// Image width and height read from the header only.
pub fn header_dimensions(bytes: &[u8]) -> Result<(u32, u32), InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    if bytes.len() > MAX_FILE_BYTES {
        return Err(InputError::FileTooLarge {
            mib: bytes.len() as f64 / f64::from(1u32 << 20),
        });
    }
    // Reading from a slice cannot fail with I/O.
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| InputError::NotAnImage)?;
    if reader.format().is_none() {
        return Err(InputError::NotAnImage);
    }
    reader
        .into_dimensions()
        .map_err(|error| InputError::BadHeader(error.to_string()))
}

/// Refuses images above [`MAX_PIXELS`], then preprocesses exactly as `trainer predict` does.
pub fn to_model_input(
    bytes: &[u8],
    image_size: usize,
    normalization: &Normalization,
) -> Result<ModelInput, InputError> {
    Ok(preprocess::preprocess_rgb(
        &to_rgb(bytes)?,
        image_size,
        normalization,
    ))
}

/// The decoded image, after the same checks.
pub fn to_rgb(bytes: &[u8]) -> Result<RgbImage, InputError> {
    let (width, height) = header_dimensions(bytes)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(InputError::TooManyPixels {
            width,
            height,
            megapixels: pixels as f64 / 1e6,
        });
    }
    Ok(preprocess::decode_rgb(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]))
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .expect("encoding a PNG in memory");
        bytes
    }

    /// A PNG whose header claims `width`x`height` but whose data is one pixel.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = png(1, 1);
        // IHDR: length at 8..12, type + data at 12..29, CRC at 29..33.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// The CRC-32 of PNG chunks (reflected, polynomial 0xEDB88320).
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = u32::MAX;
        for &byte in data {
            crc ^= u32::from(byte);
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
    fn small_image_is_preprocessed_like_the_model_crate() {
        let bytes = png(7, 5);
        let input = to_model_input(&bytes, 8, &Normalization::IMAGENET).unwrap();
        assert_eq!(
            input,
            preprocess::preprocess(&bytes, 8, &Normalization::IMAGENET).unwrap()
        );
    }

    #[test]
    fn huge_image_is_refused_from_its_header() {
        let error = to_model_input(
            &png_header_only(10_000, 10_000),
            32,
            &Normalization::REFERENCE,
        )
        .unwrap_err();
        assert!(matches!(
            error,
            InputError::TooManyPixels {
                width: 10_000,
                height: 10_000,
                ..
            }
        ));
        assert!(error.to_string().contains("10000x10000"), "{error}");
    }

    #[test]
    fn text_empty_and_corrupt_files_have_clear_errors() {
        let text =
            to_model_input(b"hello, this is text\n", 32, &Normalization::REFERENCE).unwrap_err();
        assert!(matches!(text, InputError::NotAnImage), "{text}");
        assert!(text.to_string().contains("not an image"));
        assert!(matches!(
            to_model_input(b"", 32, &Normalization::REFERENCE),
            Err(InputError::Empty)
        ));
        let mut truncated = png(16, 16);
        truncated.truncate(60);
        let error = to_model_input(&truncated, 32, &Normalization::REFERENCE).unwrap_err();
        assert!(
            matches!(error, InputError::Preprocess(_) | InputError::BadHeader(_)),
            "{error}"
        );
    }
}
