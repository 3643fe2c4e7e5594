//! The Vision Transformer, module by module as in the reference `models_vit.py`.

mod attention;
mod embedding;
mod encoder;
pub mod gelu;
mod mlp;
pub mod training_attention;
mod vit;

pub use attention::MultiHeadDotProductAttention;
pub use embedding::{AddPositionEmbs, PatchEmbedding};
pub(crate) use encoder::layer_norm;
pub use encoder::{Encoder, Encoder1DBlock};
pub use mlp::MlpBlock;
pub use vit::{ForwardOutput, VisionTransformer};
