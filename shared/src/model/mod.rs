//! The Vision Transformer, module by module as in the reference `models_vit.py`.

mod attention;
mod attention_kernel;
mod cpu;
mod embedding;
mod encoder;
pub mod gelu;
mod layer_norm;
mod matmul;
mod mlp;
mod precision;
pub mod sgd;
pub mod training_attention;
mod vit;

pub use attention::MultiHeadDotProductAttention;
pub use embedding::{AddPositionEmbs, PatchEmbedding};
pub(crate) use encoder::layer_norm;
pub use encoder::{Encoder, Encoder1DBlock};
pub use layer_norm::LayerNorm;
pub use mlp::MlpBlock;
pub use precision::Precision;
pub use vit::{ForwardOutput, VisionTransformer};

/// Whether our own operations (`gelu`, `training_attention`) are built for `device`'s
/// backend (autodiff or not): burn-flex, and libtorch with the `tch` feature. They are
/// backend extensions, which panic on a backend they do not list; elsewhere the model
/// composes the same functions of burn's operations.
fn has_own_operations(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "tch")]
    if matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::LibTorch(_)
    ) {
        return true;
    }
    on_flex(device)
}

/// Whether `device` (autodiff or not) is a burn-flex device, where the `layer_norm`
/// operation is built.
fn on_flex(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}
