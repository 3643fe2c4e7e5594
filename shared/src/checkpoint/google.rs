//! Google `vit_jax` `.npz` checkpoints: flat `/`-joined flax names, HWIO and
//! `[D, H, Dh]` kernels — already our layout, up to the old module numbering.

use super::CheckpointError;
use super::params::{self, Params};
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

/// Renames the arrays of an npz file to our layout. Arrays outside the model
/// (optimizer state next to `opt/target/`) are returned as `ignored`.
pub fn to_params(arrays: Vec<(String, params::Array)>) -> (Params, Vec<String>) {
    let prefix = PREFIXES
        .iter()
        .find(|prefix| arrays.iter().any(|(key, _)| key.starts_with(*prefix)))
        .copied();
    let old_numbering = arrays
        .iter()
        .any(|(key, _)| key.contains("/MultiHeadDotProductAttention_1/"));
    let mut params = Params::new();
    let mut ignored = Vec::new();
    for (key, array) in arrays {
        let key = match prefix {
            Some(prefix) => match key.strip_prefix(prefix) {
                Some(rest) => rest.to_string(),
                None => {
                    ignored.push(key);
                    continue;
                }
            },
            None => key,
        };
        let key = if old_numbering {
            OLD_NUMBERING
                .iter()
                .fold(key, |key, (old, new)| key.replace(old, new))
        } else {
            key
        };
        params.insert(key, array);
    }
    (params, ignored)
}

/// Reads the architecture from the shapes, as the reference configs would give it.
pub fn infer_config(params: &Params) -> Result<ViTConfig, CheckpointError> {
    let shape = |key: &str| {
        params
            .get(key)
            .map(|array| array.shape.clone())
            .ok_or_else(|| CheckpointError::Architecture(format!("no `{key}` array")))
    };
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
        .take_while(|&layer| params.contains_key(&params::block(layer, "LayerNorm_0/scale")))
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
    let classifier = if params.contains_key(params::CLS) {
        Classifier::Token
    } else {
        Classifier::Gap
    };
    let prefix_tokens = usize::from(classifier == Classifier::Token);
    let tokens = shape(params::POS_EMBEDDING)?.get(1).copied().unwrap_or(0);
    let image_size = grid_side(tokens.saturating_sub(prefix_tokens))? * patch_h;
    let representation_size = params
        .get(params::PRE_LOGITS_BIAS)
        .map(|array| array.data.len());
    let num_classes = params
        .get(params::HEAD_BIAS)
        .map_or(0, |array| array.data.len());
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
