use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Distribution, Tensor};

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
    /// Stochastic depth rate of this block's residual branches.
    #[module(skip)]
    drop_path: f64,
}

impl Encoder1DBlock {
    pub fn new(config: &ViTConfig, layer: usize, device: &Device) -> Self {
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
            config.drop_path_at(layer),
        )
    }

    pub fn from_parts(
        layer_norm_0: LayerNorm,
        attention: MultiHeadDotProductAttention,
        layer_norm_1: LayerNorm,
        mlp: MlpBlock,
        dropout: f64,
        drop_path: f64,
    ) -> Self {
        Self {
            layer_norm_0,
            attention,
            layer_norm_1,
            mlp,
            dropout: DropoutConfig::new(dropout).init(),
            drop_path,
        }
    }

    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        let x = self.layer_norm_0.forward(inputs.clone());
        let x = self.attention.forward(x);
        let x = self.drop_path(self.dropout.forward(x)) + inputs;
        let y = self.layer_norm_1.forward(x.clone());
        self.drop_path(self.mlp.forward(y)) + x
    }

    /// The same, also returning this block's attention probabilities `[B, H, N, N]`.
    pub fn forward_with_attention(&self, inputs: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let x = self.layer_norm_0.forward(inputs.clone());
        let (x, probabilities) = self.attention.forward_with_probabilities(x);
        let x = self.drop_path(self.dropout.forward(x)) + inputs;
        let y = self.layer_norm_1.forward(x.clone());
        (self.drop_path(self.mlp.forward(y)) + x, probabilities)
    }

    /// timm's `DropPath`: in training, each example's branch is kept with probability
    /// `1 − rate` and then scaled by `1 / (1 − rate)`, so its expectation is unchanged.
    fn drop_path(&self, branch: Tensor<3>) -> Tensor<3> {
        let device = branch.device();
        if self.drop_path == 0.0 || !device.is_autodiff() {
            return branch;
        }
        let [batch, _, _] = branch.dims();
        let keep = 1.0 - self.drop_path;
        let mask = Tensor::<3>::random([batch, 1, 1], Distribution::Bernoulli(keep), &device);
        branch * mask / keep
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
                .map(|layer| Encoder1DBlock::new(config, layer, device))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_path_keeps_the_expectation_in_training_and_is_off_otherwise() {
        let config = ViTConfig {
            drop_path: 0.3,
            num_layers: 4,
            ..ViTConfig::preset("Ti/16").unwrap()
        };
        assert_eq!(config.drop_path_at(0), 0.0);
        assert!((config.drop_path_at(3) - 0.3).abs() < 1e-12);
        let device = Device::flex().autodiff();
        device.seed(5);
        let last = Encoder1DBlock::new(&config, 3, &device);
        let ones = Tensor::<3>::ones([20_000, 1, 2], &device);
        let out: Vec<f32> = last.drop_path(ones).try_into_vec_as::<f32>().unwrap();
        let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / out.len() as f64;
        let mean = out.iter().map(|&v| f64::from(v)).sum::<f64>() / out.len() as f64;
        assert!((dropped - 0.3).abs() < 0.02, "{dropped}");
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
        // Both values of an example together: the whole branch is kept or dropped.
        assert!(out.chunks(2).all(|pair| pair[0] == pair[1]));
        assert!(
            out.iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6)
        );
        // Without gradients (evaluation, inference) nothing is dropped; nor in block 0.
        let plain = Device::flex();
        let block = Encoder1DBlock::new(&config, 3, &plain);
        let ones = Tensor::<3>::ones([8, 1, 2], &plain);
        assert_eq!(
            block
                .drop_path(ones.clone())
                .try_into_vec_as::<f32>()
                .unwrap(),
            vec![1.0; 16]
        );
        let first = Encoder1DBlock::new(&config, 0, &device);
        let ones = Tensor::<3>::ones([8, 1, 2], &device);
        assert_eq!(
            first.drop_path(ones).try_into_vec_as::<f32>().unwrap(),
            vec![1.0; 16]
        );
    }
}
