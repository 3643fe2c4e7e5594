use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::matmul::linear;
use super::{Encoder, PatchEmbedding, Precision};
use crate::config::{Classifier, ConfigError, ViTConfig};

/// The Vision Transformer of the reference `models_vit.VisionTransformer`.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub embedding: PatchEmbedding,
    /// `[1, 1, D]`, present with the `token` classifier.
    pub cls: Option<Param<Tensor<3>>>,
    pub encoder: Encoder,
    /// Optional `Dense + tanh` before the head.
    pub pre_logits: Option<Linear>,
    /// Absent when `num_classes` is 0: the model then outputs its representation.
    pub head: Option<Linear>,
    #[module(skip)]
    config: ViTConfig,
}

/// Logits and, per layer, the attention probabilities `[B, heads, tokens, tokens]`.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    pub logits: Tensor<2>,
    /// With the `token` classifier the last layer's holds the class token's row only,
    /// `[B, heads, 1, tokens]`: all that attention rollout reads from it (see
    /// [`Encoder::forward_class_token`]).
    pub attentions: Vec<Tensor<4>>,
}

impl VisionTransformer {
    /// A freshly initialised model, with the reference's initialisers (zero class
    /// token and head, normal(0.02) position embeddings).
    pub fn new(config: &ViTConfig, device: &Device) -> Result<Self, ConfigError> {
        config.validate()?;
        let d = config.hidden_size;
        let cls = (config.classifier == Classifier::Token)
            .then(|| Initializer::Zeros.init([1, 1, d], device));
        let pre_logits = config.representation_size.map(|size| {
            LinearConfig::new(d, size)
                .with_initializer(Initializer::KaimingNormal {
                    gain: 1.0,
                    fan_out_only: false,
                })
                .init(device)
        });
        let head = (config.num_classes > 0).then(|| {
            LinearConfig::new(config.representation_width(), config.num_classes)
                .with_initializer(Initializer::Zeros)
                .init(device)
        });
        Ok(Self {
            embedding: PatchEmbedding::new(config.patch_size, d, device),
            cls,
            encoder: Encoder::new(config, device),
            pre_logits,
            head,
            config: config.clone(),
        })
    }

    /// Assembles a model from already built parts (used by checkpoint loading).
    pub fn from_parts(
        config: ViTConfig,
        embedding: PatchEmbedding,
        cls: Option<Param<Tensor<3>>>,
        encoder: Encoder,
        pre_logits: Option<Linear>,
        head: Option<Linear>,
    ) -> Self {
        Self {
            embedding,
            cls,
            encoder,
            pre_logits,
            head,
            config,
        }
    }

    pub fn config(&self) -> &ViTConfig {
        &self.config
    }

    /// The same model with its encoder blocks computing in `precision` (see
    /// [`Precision`]); the weights stay float32.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.encoder.blocks = (self.encoder.blocks.into_iter())
            .map(|block| block.with_precision(precision))
            .collect();
        self
    }

    /// What the encoder blocks compute in.
    pub fn precision(&self) -> Precision {
        self.encoder
            .blocks
            .first()
            .map_or(Precision::Fp32, |block| block.precision())
    }

    /// `[B, 3, H, W]` images in [-1, 1] → `[B, num_classes]` logits (or the
    /// representation when the model has no head).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_training(images, None)
    }

    /// [`forward`](Self::forward) in training with stochastic depth: `keep`
    /// `[B, 2 × num_layers]` holds each example's decisions, 1 (keep) or 0 (drop), for
    /// every block's attention branch (column `2i`) and MLP branch (column `2i + 1`).
    pub fn forward_training(&self, images: Tensor<4>, keep: Option<Tensor<2>>) -> Tensor<2> {
        let encoded = self.encode(images, keep);
        self.classify(encoded)
    }

    /// The encoder's output that pooling reads: with the `token` classifier the class
    /// token alone (`[B, 1, D]`; see [`Encoder::forward_class_token`]), else every token.
    fn encode(&self, images: Tensor<4>, keep: Option<Tensor<2>>) -> Tensor<3> {
        let tokens = self.tokens(images);
        match self.config.classifier {
            Classifier::Token => self.encoder.forward_class_token(tokens, keep),
            Classifier::Gap => self.encoder.forward(tokens, keep),
        }
    }

    /// Like [`forward`](Self::forward), also returning every layer's attention probabilities.
    pub fn forward_with_attention(&self, images: Tensor<4>) -> ForwardOutput {
        let tokens = self.tokens(images);
        let (encoded, attentions) = match self.config.classifier {
            Classifier::Token => self.encoder.forward_class_token_with_attention(tokens),
            Classifier::Gap => self.encoder.forward_with_attention(tokens),
        };
        ForwardOutput {
            logits: self.classify(encoded),
            attentions,
        }
    }

    /// Patch embeddings with the class token prepended: `[B, N, D]`.
    fn tokens(&self, images: Tensor<4>) -> Tensor<3> {
        let patches = self.embedding.forward(images);
        match &self.cls {
            Some(cls) => {
                let [batch, _, hidden] = patches.dims();
                let cls = cls.val().expand([batch, 1, hidden]);
                Tensor::cat(vec![cls, patches], 1)
            }
            None => patches,
        }
    }

    /// What the head sees, `[B, representation_width]`: the class token (or the mean
    /// of the tokens) after the final LayerNorm, through the pre-logits layer if there
    /// is one. These are the features a new head is trained on (the page's teaching).
    pub fn representation(&self, images: Tensor<4>) -> Tensor<2> {
        self.pool(self.encode(images, None))
    }

    /// Pooling, pre-logits and head: `[B, N, D]` → `[B, C]`.
    fn classify(&self, encoded: Tensor<3>) -> Tensor<2> {
        let representation = self.pool(encoded);
        match &self.head {
            Some(head) => linear(head, representation),
            None => representation,
        }
    }

    /// Pooling and pre-logits: `[B, N, D]` → `[B, representation_width]`.
    fn pool(&self, encoded: Tensor<3>) -> Tensor<2> {
        let [batch, _, hidden] = encoded.dims();
        let pooled: Tensor<2> = match self.config.classifier {
            Classifier::Token => encoded.slice([0..batch, 0..1]).reshape([batch, hidden]),
            Classifier::Gap => encoded.mean_dim(1).reshape([batch, hidden]),
        };
        match &self.pre_logits {
            Some(dense) => linear(dense, pooled).tanh(),
            None => pooled,
        }
    }
}
