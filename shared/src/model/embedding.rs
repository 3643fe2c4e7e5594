use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::matmul::linear;

/// Cuts the image into `patch×patch` squares and projects each to `hidden_size`.
///
/// The reference uses a convolution with kernel = stride = patch; a matmul over
/// flattened patches is the same function and faster on CPU. Patches are flattened
/// in (row, column, channel) order so that `weight` is the reference's HWIO kernel
/// `[p, p, 3, D]` reshaped to `[p·p·3, D]`.
#[derive(Module, Debug)]
pub struct PatchEmbedding {
    pub projection: Linear,
    #[module(skip)]
    patch_size: usize,
}

impl PatchEmbedding {
    pub fn new(patch_size: usize, hidden_size: usize, device: &Device) -> Self {
        let fan_in = patch_size * patch_size * 3;
        // flax's default kernel init: lecun_normal (variance 1/fan_in); bias zero.
        let projection = LinearConfig::new(fan_in, hidden_size)
            .with_initializer(Initializer::KaimingNormal {
                gain: 1.0,
                fan_out_only: false,
            })
            .init(device);
        let projection = Linear {
            bias: Some(Initializer::Zeros.init([hidden_size], device)),
            ..projection
        };
        Self {
            projection,
            patch_size,
        }
    }

    pub fn from_linear(projection: Linear, patch_size: usize) -> Self {
        Self {
            projection,
            patch_size,
        }
    }

    /// `[B, 3, H, W]` → `[B, (H/p)·(W/p), D]`, patches in row-major order.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = images.dims();
        let p = self.patch_size;
        let (rows, cols) = (height / p, width / p);
        let patches = images
            .reshape([batch, channels, rows, p, cols, p])
            .permute([0, 2, 4, 3, 5, 1])
            .reshape([batch, rows * cols, p * p * channels]);
        linear(&self.projection, patches)
    }
}

/// Adds learned position embeddings (one per token, class token included).
#[derive(Module, Debug)]
pub struct AddPositionEmbs {
    /// `[1, tokens, D]`.
    pub pos_embedding: Param<Tensor<3>>,
}

impl AddPositionEmbs {
    pub fn new(num_tokens: usize, hidden_size: usize, device: &Device) -> Self {
        Self {
            pos_embedding: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, num_tokens, hidden_size], device),
        }
    }

    pub fn forward(&self, tokens: Tensor<3>) -> Tensor<3> {
        tokens + self.pos_embedding.val()
    }
}
