use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::matmul::{linear, matmul};
use super::{attention_kernel, training_attention};

/// Multi-head self-attention, as flax `MultiHeadDotProductAttention`.
///
/// Query, key and value projections are fused into one `[D, 3·D]` matmul (columns:
/// all query heads, then key, then value; head-major within each), which is the
/// reference's `[D, H, Dh]` kernels side by side.
#[derive(Module, Debug)]
pub struct MultiHeadDotProductAttention {
    pub qkv: Linear,
    /// `[H·Dh, D]`: the reference's `out/kernel` `[H, Dh, D]` flattened.
    pub out: Linear,
    dropout: Dropout,
    #[module(skip)]
    num_heads: usize,
}

impl MultiHeadDotProductAttention {
    pub fn new(hidden_size: usize, num_heads: usize, dropout: f64, device: &Device) -> Self {
        // flax's defaults: lecun_normal kernels, zero biases.
        let dense = |d_in, d_out| {
            let layer = LinearConfig::new(d_in, d_out)
                .with_initializer(Initializer::KaimingNormal {
                    gain: 1.0,
                    fan_out_only: false,
                })
                .init(device);
            Linear {
                bias: Some(Initializer::Zeros.init([d_out], device)),
                ..layer
            }
        };
        Self::from_layers(
            dense(hidden_size, 3 * hidden_size),
            dense(hidden_size, hidden_size),
            num_heads,
            dropout,
        )
    }

    pub fn from_layers(qkv: Linear, out: Linear, num_heads: usize, dropout: f64) -> Self {
        Self {
            qkv,
            out,
            dropout: DropoutConfig::new(dropout).init(),
            num_heads,
        }
    }

    /// `[B, N, D]` → `[B, N, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let training_dropout = self.dropout.prob > 0.0 && x.device().is_autodiff();
        if training_dropout {
            return self.forward_with_probabilities(x).0;
        }
        let qkv = linear(&self.qkv, x);
        // Training stores no attention matrix (see `training_attention`); inference reads
        // the heads in place (see `attention_kernel`).
        let context = if training_attention::supported(&qkv.device()) {
            training_attention::attention(qkv, self.num_heads)
        } else {
            attention_kernel::attention(qkv, self.num_heads)
        };
        linear(&self.out, context)
    }

    /// Also returns the attention probabilities `[B, H, N, N]` (rows sum to 1).
    pub fn forward_with_probabilities(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [batch, tokens, hidden] = x.dims();
        let (query, key, value) = self.project(x);
        let probabilities = attention_kernel::probabilities(query, key);
        let context = matmul(self.dropout.forward(probabilities.clone()), value);
        (
            self.merge_heads(context, batch, tokens, hidden),
            probabilities,
        )
    }

    /// The output at the first token only (the class token's), `[B, 1, D]`: its query
    /// against every token's key and value, and its attention probabilities
    /// `[B, H, 1, N]`. The same values as the first rows of
    /// [`forward_with_probabilities`](Self::forward_with_probabilities): the projection
    /// of every token (keys and values), the scores, softmax and output projection of one.
    pub fn forward_first_token(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [batch, _, hidden] = x.dims();
        let (query, key, value) = self.project(x);
        let probabilities = attention_kernel::probabilities(query.narrow(2, 0, 1), key);
        let context = matmul(self.dropout.forward(probabilities.clone()), value);
        (self.merge_heads(context, batch, 1, hidden), probabilities)
    }

    /// `[B, N, D]` → query, key, value, each `[B, H, N, Dh]`.
    fn project(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let [batch, tokens, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let qkv = linear(&self.qkv, x)
            .reshape([batch, tokens, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |index: usize| {
            qkv.clone()
                .narrow(0, index, 1)
                .reshape([batch, self.num_heads, tokens, head_dim])
        };
        (part(0), part(1), part(2))
    }

    fn merge_heads(
        &self,
        context: Tensor<4>,
        batch: usize,
        tokens: usize,
        hidden: usize,
    ) -> Tensor<3> {
        let merged = context.swap_dims(1, 2).reshape([batch, tokens, hidden]);
        linear(&self.out, merged)
    }
}
