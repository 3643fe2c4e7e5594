//! timm `VisionTransformer` safetensors: fused qkv, PyTorch layouts. The files do
//! not record the number of attention heads, so the caller supplies it.

use super::CheckpointError;
use super::params;
use super::safetensors_io::Tensors;
use super::torch_layout::{Entry, Transform};
use crate::config::{Activation, Classifier, ViTConfig};
use crate::preprocess::Normalization;

/// The name table: our parameter ↔ timm tensor.
pub fn entries(config: &ViTConfig) -> Vec<Entry> {
    let linear = Transform::Linear { in_dims: 1 };
    let mut entries = vec![
        Entry::new(
            params::EMBEDDING_KERNEL,
            "patch_embed.proj.weight",
            Transform::Conv,
        ),
        Entry::new(
            params::EMBEDDING_BIAS,
            "patch_embed.proj.bias",
            Transform::Same,
        ),
        Entry::new(params::POS_EMBEDDING, "pos_embed", Transform::Same),
        Entry::new(params::ENCODER_NORM_SCALE, "norm.weight", Transform::Same),
        Entry::new(params::ENCODER_NORM_BIAS, "norm.bias", Transform::Same),
    ];
    if config.classifier == Classifier::Token {
        entries.push(Entry::new(params::CLS, "cls_token", Transform::Same));
    }
    for layer in 0..config.num_layers {
        let timm = |rest: &str| format!("blocks.{layer}.{rest}");
        for (ours, theirs) in [("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")] {
            entries.push(Entry::new(
                params::block(layer, &format!("{ours}/scale")),
                timm(&format!("{theirs}.weight")),
                Transform::Same,
            ));
            entries.push(Entry::new(
                params::block(layer, &format!("{ours}/bias")),
                timm(&format!("{theirs}.bias")),
                Transform::Same,
            ));
        }
        for (index, name) in ["query", "key", "value"].into_iter().enumerate() {
            entries.push(Entry::new(
                params::attention(layer, name, "kernel"),
                timm("attn.qkv.weight"),
                Transform::QkvKernel { index },
            ));
            entries.push(Entry::new(
                params::attention(layer, name, "bias"),
                timm("attn.qkv.bias"),
                Transform::QkvBias { index },
            ));
        }
        entries.push(Entry::new(
            params::attention(layer, "out", "kernel"),
            timm("attn.proj.weight"),
            Transform::Linear { in_dims: 2 },
        ));
        entries.push(Entry::new(
            params::attention(layer, "out", "bias"),
            timm("attn.proj.bias"),
            Transform::Same,
        ));
        entries.push(Entry::new(
            params::mlp(layer, 0, "kernel"),
            timm("mlp.fc1.weight"),
            linear,
        ));
        entries.push(Entry::new(
            params::mlp(layer, 0, "bias"),
            timm("mlp.fc1.bias"),
            Transform::Same,
        ));
        entries.push(Entry::new(
            params::mlp(layer, 1, "kernel"),
            timm("mlp.fc2.weight"),
            linear,
        ));
        entries.push(Entry::new(
            params::mlp(layer, 1, "bias"),
            timm("mlp.fc2.bias"),
            Transform::Same,
        ));
    }
    if config.num_classes > 0 {
        entries.push(Entry::new(params::HEAD_KERNEL, "head.weight", linear));
        entries.push(Entry::new(params::HEAD_BIAS, "head.bias", Transform::Same));
    }
    entries
}

/// Reads the architecture from the tensor shapes; `num_heads` must come from the user.
pub fn infer_config(
    tensors: &Tensors,
    num_heads: Option<usize>,
) -> Result<ViTConfig, CheckpointError> {
    let shape = |key: &str| {
        tensors
            .shape(key)
            .ok_or_else(|| CheckpointError::Architecture(format!("no `{key}` tensor")))
    };
    if tensors.contains("fc_norm.weight") {
        return Err(CheckpointError::Unsupported(
            "timm models that normalise after pooling (`fc_norm`); the reference normalises before"
                .into(),
        ));
    }
    let embedding = shape("patch_embed.proj.weight")?;
    let [hidden_size, 3, patch_size, patch_w] = embedding[..] else {
        return Err(CheckpointError::Architecture(format!(
            "`patch_embed.proj.weight` has shape {embedding:?}, expected [D, 3, p, p]"
        )));
    };
    if patch_size != patch_w {
        return Err(CheckpointError::Architecture(format!(
            "non-square patches {patch_size}x{patch_w} are not supported"
        )));
    }
    let num_heads = num_heads.ok_or_else(|| {
        CheckpointError::Architecture(format!(
            "timm checkpoints do not record the number of attention heads (hidden size {hidden_size}); \
             give it explicitly or name a preset (Ti: 3, S: 6, B: 12, L: 16, H: 16)"
        ))
    })?;
    let num_layers = (0..)
        .take_while(|layer| tensors.contains(&format!("blocks.{layer}.norm1.weight")))
        .count();
    let mlp_dim = shape("blocks.0.mlp.fc1.weight")?
        .first()
        .copied()
        .unwrap_or(0);
    let classifier = if tensors.contains("cls_token") {
        Classifier::Token
    } else {
        Classifier::Gap
    };
    let tokens = shape("pos_embed")?.get(1).copied().unwrap_or(0);
    let grid = super::google::grid_side(
        tokens.saturating_sub(usize::from(classifier == Classifier::Token)),
    )?;
    let num_classes = tensors.len("head.bias").unwrap_or(0);
    let config = ViTConfig {
        image_size: grid * patch_size,
        patch_size,
        hidden_size,
        mlp_dim,
        num_heads,
        num_layers,
        num_classes,
        classifier,
        representation_size: None,
        dropout: 0.0,
        attention_dropout: 0.0,
        drop_path: 0.0,
        layer_norm_eps: 1e-6,
        activation: Activation::GeluExact,
        normalization: Normalization::REFERENCE,
    };
    config.validate()?;
    Ok(config)
}
