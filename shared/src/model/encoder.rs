use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use super::{AddPositionEmbs, MlpBlock, MultiHeadDotProductAttention};
use crate::config::ViTConfig;

/// One pre-LayerNorm transformer block: `x + MHA(LN(x))`, then `y + MLP(LN(y))`.
#[derive(Module, Debug)]
pub struct Encoder1DBlock {
    pub layer_norm_0: LayerNorm,
    pub attention: MultiHeadDotProductAttention,
    pub layer_norm_1: LayerNorm,
    pub mlp: MlpBlock,
    dropout: Dropout,
}

impl Encoder1DBlock {
    pub fn new(config: &ViTConfig, device: &Device) -> Self {
        Self::from_parts(
            layer_norm(config, device),
            MultiHeadDotProductAttention::new(
                config.hidden_size,
                config.num_heads,
                config.attention_dropout,
                device,
            ),
            layer_norm(config, device),
            MlpBlock::new(
                config.hidden_size,
                config.mlp_dim,
                config.dropout,
                config.activation,
                device,
            ),
            config.dropout,
        )
    }

    pub fn from_parts(
        layer_norm_0: LayerNorm,
        attention: MultiHeadDotProductAttention,
        layer_norm_1: LayerNorm,
        mlp: MlpBlock,
        dropout: f64,
    ) -> Self {
        Self {
            layer_norm_0,
            attention,
            layer_norm_1,
            mlp,
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        let x = self.layer_norm_0.forward(inputs.clone());
        let x = self.attention.forward(x);
        let x = self.dropout.forward(x) + inputs;
        let y = self.layer_norm_1.forward(x.clone());
        self.mlp.forward(y) + x
    }

    /// The same, also returning this block's attention probabilities `[B, H, N, N]`.
    pub fn forward_with_attention(&self, inputs: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let x = self.layer_norm_0.forward(inputs.clone());
        let (x, probabilities) = self.attention.forward_with_probabilities(x);
        let x = self.dropout.forward(x) + inputs;
        let y = self.layer_norm_1.forward(x.clone());
        (self.mlp.forward(y) + x, probabilities)
    }
}

/// Position embeddings, dropout, the stack of blocks, then the final LayerNorm
/// (`encoder_norm`), as the reference `Encoder`.
#[derive(Module, Debug)]
pub struct Encoder {
    pub pos_embedding: AddPositionEmbs,
    dropout: Dropout,
    pub blocks: Vec<Encoder1DBlock>,
    pub encoder_norm: LayerNorm,
}

impl Encoder {
    pub fn new(config: &ViTConfig, device: &Device) -> Self {
        Self::from_parts(
            AddPositionEmbs::new(config.num_tokens(), config.hidden_size, device),
            (0..config.num_layers)
                .map(|_| Encoder1DBlock::new(config, device))
                .collect(),
            layer_norm(config, device),
            config.dropout,
        )
    }

    pub fn from_parts(
        pos_embedding: AddPositionEmbs,
        blocks: Vec<Encoder1DBlock>,
        encoder_norm: LayerNorm,
        dropout: f64,
    ) -> Self {
        Self {
            pos_embedding,
            dropout: DropoutConfig::new(dropout).init(),
            blocks,
            encoder_norm,
        }
    }

    /// `[B, N, D]` tokens (class token included) → encoded `[B, N, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.embed_positions(x);
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x));
        self.encoder_norm.forward(x)
    }

    pub fn forward_with_attention(&self, x: Tensor<3>) -> (Tensor<3>, Vec<Tensor<4>>) {
        let mut x = self.embed_positions(x);
        let mut attentions = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (next, probabilities) = block.forward_with_attention(x);
            attentions.push(probabilities);
            x = next;
        }
        (self.encoder_norm.forward(x), attentions)
    }

    fn embed_positions(&self, x: Tensor<3>) -> Tensor<3> {
        self.dropout.forward(self.pos_embedding.forward(x))
    }
}

/// LayerNorm with the model's epsilon (burn's default, 1e-5, is not the reference's).
pub(crate) fn layer_norm(config: &ViTConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}
