use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use super::{AddPositionEmbs, LayerNorm, MlpBlock, MultiHeadDotProductAttention, Precision};
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
    /// What the branches compute in (float32 unless set).
    #[module(skip)]
    precision: Precision,
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
            precision: Precision::Fp32,
        }
    }

    /// The same block computing its branches in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `LN(x)` as the attention branch takes it, in the block's precision.
    fn attention_input(&self, inputs: Tensor<3>) -> Tensor<3> {
        self.precision
            .branch_input(self.layer_norm_0.forward(inputs))
    }

    /// `MLP(LN(x))` in the block's precision, output in float32.
    fn mlp_branch(&self, inputs: Tensor<3>) -> Tensor<3> {
        let y = self
            .precision
            .branch_input(self.layer_norm_1.forward(inputs));
        self.precision.branch_output(self.mlp.forward(y))
    }

    pub fn forward(&self, inputs: Tensor<3>) -> Tensor<3> {
        self.forward_keeping(inputs, None)
    }

    /// In training with stochastic depth: `keep` `[B, 2]` says for each example whether
    /// its attention branch (column 0) and its MLP branch (column 1) are kept (1) or
    /// dropped (0), as timm's `DropPath` decides with a random draw per example. A kept
    /// branch is scaled by `1 / (1 − rate)`, so its expectation is unchanged. The caller
    /// draws `keep`, so that it can be a function of each example's place in the data
    /// stream (the same however a batch is split into micro-batches or over devices).
    pub fn forward_keeping(&self, inputs: Tensor<3>, keep: Option<Tensor<2>>) -> Tensor<3> {
        let (attention_keep, mlp_keep) = split_keep(keep);
        let x = self.attention_input(inputs.clone());
        let x = self.precision.branch_output(self.attention.forward(x));
        let x = self.drop_path(self.dropout.forward(x), attention_keep) + inputs;
        self.drop_path(self.mlp_branch(x.clone()), mlp_keep) + x
    }

    /// The output at the class token only, `[B, 1, D]`: the first row of
    /// [`forward_keeping`](Self::forward_keeping), and the class token's attention
    /// probabilities `[B, H, 1, N]`. After the last block nothing reads the other tokens
    /// (the head sees the class token, attention rollout its row), so the last block
    /// computes only what its class token needs: every token's key and value, one query,
    /// one row through the MLP. At 197 tokens that skips three quarters of the last
    /// block's multiply-adds (ViT-B/16: 1/16 of a forward pass).
    pub fn forward_class_token(
        &self,
        inputs: Tensor<3>,
        keep: Option<Tensor<2>>,
    ) -> (Tensor<3>, Tensor<4>) {
        let (attention_keep, mlp_keep) = split_keep(keep);
        let x = self.attention_input(inputs.clone());
        let (x, probabilities) = self.attention.forward_first_token(x);
        let x = self.precision.branch_output(x);
        let x = self.drop_path(self.dropout.forward(x), attention_keep) + inputs.narrow(1, 0, 1);
        let output = self.drop_path(self.mlp_branch(x.clone()), mlp_keep) + x;
        (output, self.precision.branch_output(probabilities))
    }

    /// The same as [`forward`](Self::forward), also returning this block's attention
    /// probabilities `[B, H, N, N]`.
    pub fn forward_with_attention(&self, inputs: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let x = self.attention_input(inputs.clone());
        let (x, probabilities) = self.attention.forward_with_probabilities(x);
        let x = self.dropout.forward(self.precision.branch_output(x)) + inputs;
        let output = self.mlp_branch(x.clone()) + x;
        (output, self.precision.branch_output(probabilities))
    }

    /// `branch` `[B, N, D]` times `keep` `[B, 1]` over `1 − rate`; unchanged without
    /// `keep` or at rate 0.
    fn drop_path(&self, branch: Tensor<3>, keep: Option<Tensor<2>>) -> Tensor<3> {
        match keep {
            Some(keep) if self.drop_path > 0.0 => {
                let [batch, _] = keep.dims();
                branch * keep.reshape([batch, 1, 1]) / (1.0 - self.drop_path)
            }
            _ => branch,
        }
    }
}

/// A block's stochastic-depth decisions `[B, 2]` as those of its attention branch and of
/// its MLP branch, each `[B, 1]`.
fn split_keep(keep: Option<Tensor<2>>) -> (Option<Tensor<2>>, Option<Tensor<2>>) {
    match keep {
        Some(keep) => (
            Some(keep.clone().narrow(1, 0, 1)),
            Some(keep.narrow(1, 1, 1)),
        ),
        None => (None, None),
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

    /// `[B, N, D]` tokens (class token included) → encoded `[B, N, D]`. `keep`
    /// `[B, 2 × blocks]`: block `i`'s stochastic-depth decisions are columns `2i` and
    /// `2i + 1` (see [`Encoder1DBlock::forward_keeping`]).
    pub fn forward(&self, x: Tensor<3>, keep: Option<Tensor<2>>) -> Tensor<3> {
        let mut x = self.embed_positions(x);
        for (index, block) in self.blocks.iter().enumerate() {
            let keep = keep
                .as_ref()
                .map(|keep| keep.clone().narrow(1, 2 * index, 2));
            x = block.forward_keeping(x, keep);
        }
        self.encoder_norm.forward(x)
    }

    /// The encoded class token, `[B, 1, D]`: the first token of [`forward`](Self::forward),
    /// with the last block computing that token only (see
    /// [`Encoder1DBlock::forward_class_token`]).
    pub fn forward_class_token(&self, x: Tensor<3>, keep: Option<Tensor<2>>) -> Tensor<3> {
        let mut x = self.embed_positions(x);
        let Some((last, blocks)) = self.blocks.split_last() else {
            return self.encoder_norm.forward(x.narrow(1, 0, 1));
        };
        let keep_of = |index: usize| {
            keep.as_ref()
                .map(|keep| keep.clone().narrow(1, 2 * index, 2))
        };
        for (index, block) in blocks.iter().enumerate() {
            x = block.forward_keeping(x, keep_of(index));
        }
        let (x, _) = last.forward_class_token(x, keep_of(blocks.len()));
        self.encoder_norm.forward(x)
    }

    /// [`forward_class_token`](Self::forward_class_token) with every layer's attention
    /// probabilities: `[B, H, N, N]`, the last layer's `[B, H, 1, N]` (the class token's
    /// row, all that attention rollout reads from it).
    pub fn forward_class_token_with_attention(&self, x: Tensor<3>) -> (Tensor<3>, Vec<Tensor<4>>) {
        let mut x = self.embed_positions(x);
        let mut attentions = Vec::with_capacity(self.blocks.len());
        let Some((last, blocks)) = self.blocks.split_last() else {
            return (self.encoder_norm.forward(x.narrow(1, 0, 1)), attentions);
        };
        for block in blocks {
            let (next, probabilities) = block.forward_with_attention(x);
            attentions.push(probabilities);
            x = next;
        }
        let (x, probabilities) = last.forward_class_token(x, None);
        attentions.push(probabilities);
        (self.encoder_norm.forward(x), attentions)
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

/// LayerNorm of the model's width with the model's epsilon.
pub(crate) fn layer_norm(config: &ViTConfig, device: &Device) -> LayerNorm {
    LayerNorm::new(config.hidden_size, config.layer_norm_eps, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    /// Deterministic, varied values in about [-1, 1].
    fn values<const D: usize>(shape: [usize; D], seed: f32, device: &Device) -> Tensor<D> {
        let count = shape.iter().product();
        let data = (0..count)
            .map(|index| ((index as f32 + seed) * 0.7548).sin())
            .collect::<Vec<_>>();
        Tensor::from_data(TensorData::new(data, shape), device)
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// The class-token path computes the first token of the full encoder, and the same
    /// gradients (a loss on the class token reaches the other tokens' keys and values in
    /// the last block, and every token before it), with stochastic depth dropping some
    /// branches; on the CPU kernels and on burn's composed operations under autodiff.
    #[test]
    fn class_token_path_equals_the_first_token_of_the_full_encoder() {
        let config = ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 16,
            mlp_dim: 32,
            num_heads: 4,
            num_layers: 3,
            drop_path: 0.2,
            ..ViTConfig::preset("Ti/16").unwrap()
        };
        for device in [Device::flex(), Device::flex().autodiff()] {
            let encoder = Encoder::new(&config, &device);
            let mut x = values([2, 5, 16], 0.0, &device);
            if device.is_autodiff() {
                x = x.require_grad();
            }
            let keep = Tensor::<2>::from_floats(
                [
                    [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
                    [1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
                ],
                &device,
            );
            let full = encoder
                .forward(x.clone(), Some(keep.clone()))
                .narrow(1, 0, 1);
            let class = encoder.forward_class_token(x.clone(), Some(keep));
            assert_eq!(class.dims(), [2, 1, 16]);
            let read = |tensor: Tensor<3>| tensor.try_into_vec_as::<f32>().unwrap();
            let difference = largest_difference(&read(class.clone()), &read(full.clone()));
            assert!(
                difference < 1e-5,
                "outputs: largest difference {difference}"
            );
            if !device.is_autodiff() {
                // Inference with the attention probabilities: the same, with the last
                // layer's class-token row alone.
                let (full_output, full) = encoder.forward_with_attention(x.clone());
                let (class_output, class) = encoder.forward_class_token_with_attention(x);
                let full_output = full_output.narrow(1, 0, 1);
                let difference = largest_difference(&read(class_output), &read(full_output));
                assert!(difference < 1e-5, "outputs with attention: {difference}");
                assert_eq!(class.len(), 3);
                assert_eq!(class[2].dims(), [2, 4, 1, 5]);
                let rows = |attention: Tensor<4>, rows: usize| {
                    attention
                        .narrow(2, 0, rows)
                        .try_into_vec_as::<f32>()
                        .unwrap()
                };
                for (layer, (ours, theirs)) in class.into_iter().zip(full).enumerate() {
                    let queries = ours.dims()[2];
                    let difference =
                        largest_difference(&rows(ours, queries), &rows(theirs, queries));
                    assert!(
                        difference < 1e-6,
                        "layer {layer} probabilities: {difference}"
                    );
                }
                continue;
            }
            let weights = values([2, 1, 16], 3.0, &device);
            let gradients = |output: Tensor<3>| {
                let grads = (output * weights.clone()).sum().backward();
                let block = &encoder.blocks[2];
                [
                    read(x.grad(&grads).unwrap()),
                    read(block.attention.qkv.weight.grad(&grads).unwrap().unsqueeze()),
                    read(block.mlp.dense_0.weight.grad(&grads).unwrap().unsqueeze()),
                ]
            };
            let (ours, theirs) = (gradients(class), gradients(full));
            for (what, (ours, theirs)) in ["input", "last qkv kernel", "last dense_0 kernel"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                let difference = largest_difference(ours, theirs);
                assert!(difference < 1e-5, "{what} gradient: {difference}");
                assert!(
                    theirs.iter().any(|value| value.abs() > 1e-3),
                    "{what}: all zero"
                );
            }
        }
    }

    #[test]
    fn drop_path_scales_kept_branches_and_zeroes_dropped_ones() {
        let config = ViTConfig {
            drop_path: 0.3,
            num_layers: 4,
            ..ViTConfig::preset("Ti/16").unwrap()
        };
        assert_eq!(config.drop_path_at(0), 0.0);
        assert!((config.drop_path_at(3) - 0.3).abs() < 1e-12);
        let device = Device::flex();
        let last = Encoder1DBlock::new(&config, 3, &device);
        let ones = Tensor::<3>::ones([3, 1, 2], &device);
        let keep = Tensor::<2>::from_floats([[1.0], [0.0], [1.0]], &device);
        let out: Vec<f32> = last
            .drop_path(ones.clone(), Some(keep.clone()))
            .try_into_vec_as::<f32>()
            .unwrap();
        let kept = 1.0 / 0.7;
        assert_eq!(out, [kept, kept, 0.0, 0.0, kept, kept]);
        // Without decisions (evaluation, inference) nothing is dropped; nor at rate 0.
        assert_eq!(
            last.drop_path(ones.clone(), None)
                .try_into_vec_as::<f32>()
                .unwrap(),
            vec![1.0; 6]
        );
        let first = Encoder1DBlock::new(&config, 0, &device);
        assert_eq!(
            first
                .drop_path(ones, Some(keep))
                .try_into_vec_as::<f32>()
                .unwrap(),
            vec![1.0; 6]
        );
    }
}
