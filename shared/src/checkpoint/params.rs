//! The one parameter layout every format converts to and from: the reference's
//! own (flax, Linen numbering), with the reference's shapes.

use std::collections::BTreeMap;

use crate::config::ViTConfig;

pub use super::npz::NpyArray as Array;

/// Parameters by reference name, e.g. `Transformer/encoder_norm/scale`.
pub type Params = BTreeMap<String, Array>;

pub const EMBEDDING_KERNEL: &str = "embedding/kernel";
pub const EMBEDDING_BIAS: &str = "embedding/bias";
pub const CLS: &str = "cls";
pub const POS_EMBEDDING: &str = "Transformer/posembed_input/pos_embedding";
pub const ENCODER_NORM_SCALE: &str = "Transformer/encoder_norm/scale";
pub const ENCODER_NORM_BIAS: &str = "Transformer/encoder_norm/bias";
pub const PRE_LOGITS_KERNEL: &str = "pre_logits/kernel";
pub const PRE_LOGITS_BIAS: &str = "pre_logits/bias";
pub const HEAD_KERNEL: &str = "head/kernel";
pub const HEAD_BIAS: &str = "head/bias";

/// A parameter of encoder block `layer`, e.g. `block(0, "LayerNorm_0/scale")`.
pub fn block(layer: usize, rest: &str) -> String {
    format!("Transformer/encoderblock_{layer}/{rest}")
}

/// The sub-path of attention projection `name` (`query`, `key`, `value`, `out`).
pub fn attention(layer: usize, name: &str, kind: &str) -> String {
    block(
        layer,
        &format!("MultiHeadDotProductAttention_0/{name}/{kind}"),
    )
}

pub fn mlp(layer: usize, dense: usize, kind: &str) -> String {
    block(layer, &format!("MlpBlock_0/Dense_{dense}/{kind}"))
}

/// Every parameter a model of `config` has, with its reference shape.
pub fn expected_shapes(config: &ViTConfig) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let p = config.patch_size;
    let (h, dh, m) = (config.num_heads, config.head_dim(), config.mlp_dim);
    let mut shapes = vec![
        (EMBEDDING_KERNEL.to_string(), vec![p, p, 3, d]),
        (EMBEDDING_BIAS.to_string(), vec![d]),
        (POS_EMBEDDING.to_string(), vec![1, config.num_tokens(), d]),
        (ENCODER_NORM_SCALE.to_string(), vec![d]),
        (ENCODER_NORM_BIAS.to_string(), vec![d]),
    ];
    if config.num_prefix_tokens() == 1 {
        shapes.push((CLS.to_string(), vec![1, 1, d]));
    }
    for layer in 0..config.num_layers {
        for norm in ["LayerNorm_0", "LayerNorm_1"] {
            shapes.push((block(layer, &format!("{norm}/scale")), vec![d]));
            shapes.push((block(layer, &format!("{norm}/bias")), vec![d]));
        }
        for name in ["query", "key", "value"] {
            shapes.push((attention(layer, name, "kernel"), vec![d, h, dh]));
            shapes.push((attention(layer, name, "bias"), vec![h, dh]));
        }
        shapes.push((attention(layer, "out", "kernel"), vec![h, dh, d]));
        shapes.push((attention(layer, "out", "bias"), vec![d]));
        shapes.push((mlp(layer, 0, "kernel"), vec![d, m]));
        shapes.push((mlp(layer, 0, "bias"), vec![m]));
        shapes.push((mlp(layer, 1, "kernel"), vec![m, d]));
        shapes.push((mlp(layer, 1, "bias"), vec![d]));
    }
    if let Some(r) = config.representation_size {
        shapes.push((PRE_LOGITS_KERNEL.to_string(), vec![d, r]));
        shapes.push((PRE_LOGITS_BIAS.to_string(), vec![r]));
    }
    if config.num_classes > 0 {
        let c = config.num_classes;
        shapes.push((
            HEAD_KERNEL.to_string(),
            vec![config.representation_width(), c],
        ));
        shapes.push((HEAD_BIAS.to_string(), vec![c]));
    }
    shapes
}

impl Array {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Self::new(shape, vec![0.0; len])
    }

    /// The same data under another shape with as many elements.
    pub fn reshaped(self, shape: Vec<usize>) -> Self {
        Self::new(shape, self.data)
    }

    /// A 2-D `[rows, cols]` array transposed.
    pub fn transposed_2d(&self) -> Self {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self::new(vec![cols, rows], data)
    }

    /// Axes reordered: output axis `i` is input axis `axes[i]`.
    pub fn permuted(&self, axes: &[usize]) -> Self {
        let rank = self.shape.len();
        let shape: Vec<usize> = axes.iter().map(|&a| self.shape[a]).collect();
        let mut in_strides = vec![1; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * self.shape[i + 1];
        }
        let strides: Vec<usize> = axes.iter().map(|&a| in_strides[a]).collect();
        let mut data = Vec::with_capacity(self.data.len());
        let mut index = vec![0usize; rank];
        for _ in 0..self.data.len() {
            let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
            data.push(self.data[offset]);
            for axis in (0..rank).rev() {
                index[axis] += 1;
                if index[axis] < shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        Self::new(shape, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_moves_axes() {
        // [2, 3] -> transpose equals permute [1, 0].
        let a = Array::new(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(a.permuted(&[1, 0]), a.transposed_2d());
        assert_eq!(a.transposed_2d().data, vec![0., 3., 1., 4., 2., 5.]);
        // [1, 2, 2] -> [2, 2, 1]: element (0, i, j) moves to (i, j, 0).
        let b = Array::new(vec![1, 2, 2], vec![1., 2., 3., 4.]);
        assert_eq!(b.permuted(&[1, 2, 0]).data, vec![1., 2., 3., 4.]);
        let c = Array::new(vec![2, 1, 2], vec![1., 2., 3., 4.]);
        assert_eq!(c.permuted(&[2, 1, 0]).data, vec![1., 3., 2., 4.]);
    }

    #[test]
    fn expected_shapes_count_every_parameter() {
        let config = ViTConfig::preset("B/16").unwrap();
        let total: usize = expected_shapes(&config)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        assert_eq!(total, config.num_params());
    }
}
