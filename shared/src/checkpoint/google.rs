//! Google `vit_jax` `.npz` checkpoints: flat `/`-joined flax names, HWIO and
//! `[D, H, Dh]` kernels — already our layout, up to the old module numbering.

use super::CheckpointError;
use std::collections::BTreeMap;

use super::params;
use crate::config::{Activation, Classifier, ViTConfig};
use crate::preprocess::Normalization;

/// Prefixes some published files put before the parameter names.
const PREFIXES: &[&str] = &["opt/target/", "params/"];

/// Old (pre-Linen) module names and their Linen names.
const OLD_NUMBERING: &[(&str, &str)] = &[
    (
        "/MultiHeadDotProductAttention_1/",
        "/MultiHeadDotProductAttention_0/",
    ),
    ("/LayerNorm_2/", "/LayerNorm_1/"),
    ("/MlpBlock_3/", "/MlpBlock_0/"),
];

/// Our names for the arrays of an npz file: `(name in the file, our name)`, and the
/// names of arrays outside the model (optimizer state next to `opt/target/`).
pub fn param_names(keys: &[&str]) -> (Vec<(String, String)>, Vec<String>) {
    let prefix = PREFIXES
        .iter()
        .find(|prefix| keys.iter().any(|key| key.starts_with(*prefix)))
        .copied();
    let old_numbering = keys
        .iter()
        .any(|key| key.contains("/MultiHeadDotProductAttention_1/"));
    let mut names = Vec::new();
    let mut ignored = Vec::new();
    for &key in keys {
        let ours = match prefix {
            Some(prefix) => match key.strip_prefix(prefix) {
                Some(rest) => rest.to_string(),
                None => {
                    ignored.push(key.to_string());
                    continue;
                }
            },
            None => key.to_string(),
        };
        let ours = if old_numbering {
            OLD_NUMBERING
                .iter()
                .fold(ours, |key, (old, new)| key.replace(old, new))
        } else {
            ours
        };
        names.push((key.to_string(), ours));
    }
    (names, ignored)
}

/// Reads the architecture from the shapes, as the reference configs would give it.
/// `shapes` gives each array's shape by our name.
pub fn infer_config(shapes: &BTreeMap<String, Vec<usize>>) -> Result<ViTConfig, CheckpointError> {
    let shape = |key: &str| {
        shapes
            .get(key)
            .cloned()
            .ok_or_else(|| CheckpointError::Architecture(format!("no `{key}` array")))
    };
    let len = |key: &str| shapes.get(key).map(|shape| shape.iter().product::<usize>());
    let embedding = shape(params::EMBEDDING_KERNEL)?;
    let [patch_h, patch_w, 3, hidden_size] = embedding[..] else {
        return Err(CheckpointError::Architecture(format!(
            "`{}` has shape {embedding:?}, expected [p, p, 3, D]",
            params::EMBEDDING_KERNEL
        )));
    };
    if patch_h != patch_w {
        return Err(CheckpointError::Architecture(format!(
            "non-square patches {patch_h}x{patch_w} are not supported"
        )));
    }
    let num_layers = (0..)
        .take_while(|&layer| shapes.contains_key(&params::block(layer, "LayerNorm_0/scale")))
        .count();
    if num_layers == 0 {
        return Err(CheckpointError::Architecture(
            "no encoder blocks (`Transformer/encoderblock_0/...`) found".into(),
        ));
    }
    let query = shape(&params::attention(0, "query", "kernel"))?;
    let num_heads = match query[..] {
        [_, heads, _] => heads,
        _ => {
            return Err(CheckpointError::Architecture(format!(
                "query kernel has shape {query:?}, expected [D, heads, head_dim]"
            )));
        }
    };
    let mlp_dim = *shape(&params::mlp(0, 0, "kernel"))?.last().unwrap_or(&0);
    let classifier = if shapes.contains_key(params::CLS) {
        Classifier::Token
    } else {
        Classifier::Gap
    };
    let prefix_tokens = usize::from(classifier == Classifier::Token);
    let tokens = shape(params::POS_EMBEDDING)?.get(1).copied().unwrap_or(0);
    let image_size = grid_side(tokens.saturating_sub(prefix_tokens))? * patch_h;
    let representation_size = len(params::PRE_LOGITS_BIAS);
    let num_classes = len(params::HEAD_BIAS).unwrap_or(0);
    let config = ViTConfig {
        image_size,
        patch_size: patch_h,
        hidden_size,
        mlp_dim,
        num_heads,
        num_layers,
        num_classes,
        classifier,
        representation_size,
        dropout: 0.0,
        attention_dropout: 0.0,
        drop_path: 0.0,
        layer_norm_eps: 1e-6,
        activation: Activation::GeluTanh,
        normalization: Normalization::REFERENCE,
    };
    config.validate()?;
    Ok(config)
}

/// The side of a square grid of `cells` patches.
pub fn grid_side(cells: usize) -> Result<usize, CheckpointError> {
    let side = (cells as f64).sqrt().round() as usize;
    if side == 0 || side * side != cells {
        return Err(CheckpointError::Architecture(format!(
            "{cells} position embeddings do not form a square grid"
        )));
    }
    Ok(side)
}
