//! Vision Transformers on burn: the reference model of Google's `vision_transformer`,
//! its presets, and loading and saving of the checkpoints people actually have.

pub mod checkpoint;
pub mod config;
pub mod labels;
pub mod model;
pub mod prediction;
pub mod preprocess;

pub use checkpoint::{Checkpoint, CheckpointError, LoadOptions, SaveOptions};
pub use config::{Activation, Classifier, ViTConfig};
pub use model::VisionTransformer;
