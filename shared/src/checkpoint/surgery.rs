//! Preparing a pretrained checkpoint for another task or resolution, as the
//! reference `checkpoint.load_pretrained` does.

use super::params::{self, Array};
use super::posemb::resize_pos_embedding;
use super::{Checkpoint, CheckpointError};
use crate::config::ViTConfig;

impl Checkpoint {
    /// For fine-tuning to `target`: a fresh zero head for the target's classes,
    /// pre-logits dropped when the target has none, position embeddings resized
    /// to the target resolution. The backbone must match the target's.
    pub fn for_finetuning(mut self, target: &ViTConfig) -> Result<Self, CheckpointError> {
        target.validate()?;
        let source = &self.config;
        let fields = [
            ("patch_size", source.patch_size, target.patch_size),
            ("hidden_size", source.hidden_size, target.hidden_size),
            ("mlp_dim", source.mlp_dim, target.mlp_dim),
            ("num_heads", source.num_heads, target.num_heads),
            ("num_layers", source.num_layers, target.num_layers),
        ];
        if let Some((name, have, want)) = fields.iter().find(|(_, have, want)| have != want) {
            return Err(CheckpointError::Architecture(format!(
                "the pretrained model has {name} {have} but the target model needs {want}"
            )));
        }
        if source.classifier != target.classifier {
            return Err(CheckpointError::Architecture(format!(
                "the pretrained model uses the {:?} classifier but the target model the {:?} one",
                source.classifier, target.classifier
            )));
        }
        match (source.representation_size, target.representation_size) {
            (_, None) => {
                self.params.remove(params::PRE_LOGITS_KERNEL);
                self.params.remove(params::PRE_LOGITS_BIAS);
            }
            (Some(have), Some(want)) if have == want => {}
            (have, Some(want)) => {
                return Err(CheckpointError::Architecture(format!(
                    "the target model needs a pre-logits layer of size {want} but the pretrained model has {have:?}"
                )));
            }
        }
        self.params.remove(params::HEAD_KERNEL);
        self.params.remove(params::HEAD_BIAS);
        if target.num_classes > 0 {
            let width = target.representation_width();
            self.params.insert(
                params::HEAD_KERNEL.into(),
                Array::zeros(vec![width, target.num_classes]),
            );
            self.params.insert(
                params::HEAD_BIAS.into(),
                Array::zeros(vec![target.num_classes]),
            );
        }
        self = self.at_resolution(target.image_size)?;
        self.config = target.clone();
        // A new head makes a new model: the old classes and description no longer apply.
        self.labels = None;
        self.description = None;
        Ok(self)
    }

    /// The same model at another input resolution (position embeddings resized;
    /// head and pre-logits kept).
    pub fn at_resolution(mut self, image_size: usize) -> Result<Self, CheckpointError> {
        let config = self.config.clone().with_image_size(image_size);
        config.validate()?;
        if config.num_tokens() != self.config.num_tokens() {
            let pos = self
                .params
                .get(params::POS_EMBEDDING)
                .ok_or_else(|| CheckpointError::MissingKeys(vec![params::POS_EMBEDDING.into()]))?;
            let resized =
                resize_pos_embedding(pos, config.num_prefix_tokens(), config.grid_size())?;
            self.params.insert(params::POS_EMBEDDING.into(), resized);
        }
        self.config = config;
        Ok(self)
    }
}
