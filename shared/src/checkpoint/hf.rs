//! Hugging Face `ViTModel` / `ViTForImageClassification` folders (`config.json` +
//! `model.safetensors`), which is also our export format.

use serde_json::{Map, Value, json};

use super::CheckpointError;
use super::params;
use super::torch_layout::{Entry, Transform};
use crate::config::{Activation, Classifier, ViTConfig};
use crate::preprocess::Normalization;

/// Our own description of the model, kept in config.json beside the HF fields so
/// that models HF's layout cannot express (gap, pre-logits) still load exactly.
pub const OUR_CONFIG_FIELD: &str = "vit_config";
/// The config.json field holding [`Checkpoint::description`](super::Checkpoint::description).
pub const DESCRIPTION_FIELD: &str = "vit_description";

/// The name table: our parameter ↔ HF tensor. `prefix` is `vit.` inside
/// `ViTForImageClassification` and empty in a bare `ViTModel`.
pub fn entries(config: &ViTConfig, prefix: &str) -> Vec<Entry> {
    let linear = Transform::Linear { in_dims: 1 };
    let e = |ours: String, theirs: String, transform| {
        Entry::new(ours, format!("{prefix}{theirs}"), transform)
    };
    let mut entries = vec![
        e(
            params::EMBEDDING_KERNEL.into(),
            "embeddings.patch_embeddings.projection.weight".into(),
            Transform::Conv,
        ),
        e(
            params::EMBEDDING_BIAS.into(),
            "embeddings.patch_embeddings.projection.bias".into(),
            Transform::Same,
        ),
        e(
            params::POS_EMBEDDING.into(),
            "embeddings.position_embeddings".into(),
            Transform::Same,
        ),
        e(
            params::ENCODER_NORM_SCALE.into(),
            "layernorm.weight".into(),
            Transform::Same,
        ),
        e(
            params::ENCODER_NORM_BIAS.into(),
            "layernorm.bias".into(),
            Transform::Same,
        ),
    ];
    if config.classifier == Classifier::Token {
        entries.push(e(
            params::CLS.into(),
            "embeddings.cls_token".into(),
            Transform::Same,
        ));
    }
    for layer in 0..config.num_layers {
        let hf = |rest: &str| format!("encoder.layer.{layer}.{rest}");
        for (ours, theirs) in [
            ("LayerNorm_0", "layernorm_before"),
            ("LayerNorm_1", "layernorm_after"),
        ] {
            entries.push(e(
                params::block(layer, &format!("{ours}/scale")),
                hf(&format!("{theirs}.weight")),
                Transform::Same,
            ));
            entries.push(e(
                params::block(layer, &format!("{ours}/bias")),
                hf(&format!("{theirs}.bias")),
                Transform::Same,
            ));
        }
        for name in ["query", "key", "value"] {
            let theirs = hf(&format!("attention.attention.{name}"));
            entries.push(e(
                params::attention(layer, name, "kernel"),
                format!("{theirs}.weight"),
                linear,
            ));
            entries.push(e(
                params::attention(layer, name, "bias"),
                format!("{theirs}.bias"),
                Transform::Flat,
            ));
        }
        entries.push(e(
            params::attention(layer, "out", "kernel"),
            hf("attention.output.dense.weight"),
            Transform::Linear { in_dims: 2 },
        ));
        entries.push(e(
            params::attention(layer, "out", "bias"),
            hf("attention.output.dense.bias"),
            Transform::Same,
        ));
        entries.push(e(
            params::mlp(layer, 0, "kernel"),
            hf("intermediate.dense.weight"),
            linear,
        ));
        entries.push(e(
            params::mlp(layer, 0, "bias"),
            hf("intermediate.dense.bias"),
            Transform::Same,
        ));
        entries.push(e(
            params::mlp(layer, 1, "kernel"),
            hf("output.dense.weight"),
            linear,
        ));
        entries.push(e(
            params::mlp(layer, 1, "bias"),
            hf("output.dense.bias"),
            Transform::Same,
        ));
    }
    if config.representation_size.is_some() {
        entries.push(e(
            params::PRE_LOGITS_KERNEL.into(),
            "pooler.dense.weight".into(),
            linear,
        ));
        entries.push(e(
            params::PRE_LOGITS_BIAS.into(),
            "pooler.dense.bias".into(),
            Transform::Same,
        ));
    }
    if config.num_classes > 0 {
        // The classifier sits outside the `vit.` backbone.
        entries.push(Entry::new(params::HEAD_KERNEL, "classifier.weight", linear));
        entries.push(Entry::new(
            params::HEAD_BIAS,
            "classifier.bias",
            Transform::Same,
        ));
    }
    entries
}

/// The architecture described by an HF config.json, given which tensors the
/// weights file holds: `tensor_len` gives a tensor's element count, if present.
pub fn read_config(
    json: &Value,
    tensor_len: impl Fn(&str) -> Option<usize>,
    prefix: &str,
) -> Result<ViTConfig, CheckpointError> {
    if let Some(ours) = json.get(OUR_CONFIG_FIELD) {
        let config: ViTConfig = serde_json::from_value(ours.clone()).map_err(|error| {
            CheckpointError::Architecture(format!("`{OUR_CONFIG_FIELD}` in config.json: {error}"))
        })?;
        config.validate()?;
        return Ok(config);
    }
    let number = |key: &str| -> Result<usize, CheckpointError> {
        json.get(key)
            .and_then(Value::as_u64)
            .map(|value| value as usize)
            .ok_or_else(|| {
                CheckpointError::Architecture(format!("config.json has no integer `{key}`"))
            })
    };
    let activation = match json
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => Activation::GeluExact,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
        other => {
            return Err(CheckpointError::Unsupported(format!(
                "hidden_act `{other}` (supported: gelu, gelu_pytorch_tanh, gelu_new, gelu_fast)"
            )));
        }
    };
    if json
        .get("num_channels")
        .and_then(Value::as_u64)
        .is_some_and(|c| c != 3)
    {
        return Err(CheckpointError::Unsupported(
            "models with other than 3 input channels".into(),
        ));
    }
    if json.get("qkv_bias").and_then(Value::as_bool) == Some(false) {
        return Err(CheckpointError::Unsupported(
            "attention without qkv biases (qkv_bias: false)".into(),
        ));
    }
    let hidden_size = number("hidden_size")?;
    let num_classes = tensor_len("classifier.bias").unwrap_or(0);
    let config = ViTConfig {
        image_size: number("image_size")?,
        patch_size: number("patch_size")?,
        hidden_size,
        mlp_dim: number("intermediate_size")?,
        num_heads: number("num_attention_heads")?,
        num_layers: number("num_hidden_layers")?,
        num_classes,
        classifier: Classifier::Token,
        representation_size: tensor_len(&format!("{prefix}pooler.dense.bias")),
        dropout: 0.0,
        attention_dropout: 0.0,
        drop_path: 0.0,
        layer_norm_eps: match json.get("layer_norm_eps") {
            None => 1e-12,
            Some(value) => value.as_f64().ok_or_else(|| {
                CheckpointError::Architecture(format!(
                    "config.json has `layer_norm_eps` {value}, not a number"
                ))
            })?,
        },
        activation,
        normalization: Normalization::REFERENCE,
    };
    config.validate()?;
    Ok(config)
}

/// The model's description, when config.json has one.
pub fn read_description(json: &Value) -> Option<String> {
    json.get(DESCRIPTION_FIELD)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Labels in index order from `id2label`. A model without a head ignores it (transformers
/// writes a default two-label map even then); with a head, it must name every class once.
pub fn read_labels(
    json: &Value,
    num_classes: usize,
) -> Result<Option<Vec<String>>, CheckpointError> {
    let Some(map) = json.get("id2label") else {
        return Ok(None);
    };
    if num_classes == 0 {
        return Ok(None);
    }
    let invalid = |message: String| CheckpointError::Json(format!("id2label {message}"));
    let map = map
        .as_object()
        .ok_or_else(|| invalid(format!("is {map}, not an object")))?;
    if map.len() != num_classes {
        return Err(invalid(format!(
            "names {} classes but the model has {num_classes}",
            map.len()
        )));
    }
    (0..num_classes)
        .map(|index| {
            map.get(&index.to_string())
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("has no name for class {index}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Whether HF's `ViTForImageClassification` computes exactly this model.
pub fn is_hf_expressible(config: &ViTConfig) -> bool {
    config.classifier == Classifier::Token
        && config.representation_size.is_none()
        && config.num_classes > 0
}

/// config.json for an exported model: HF fields plus ours.
pub fn write_config(config: &ViTConfig, labels: &[String], description: Option<&str>) -> Value {
    let hidden_act = match config.activation {
        Activation::GeluTanh => "gelu_pytorch_tanh",
        Activation::GeluExact => "gelu",
    };
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(index, label)| (index.to_string(), json!(label)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(index, label)| (label.clone(), json!(index)))
        .collect();
    let mut fields = json!({
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": 3,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp_dim,
        "num_attention_heads": config.num_heads,
        "num_hidden_layers": config.num_layers,
        "hidden_act": hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "qkv_bias": true,
        "initializer_range": 0.02,
        "id2label": id2label,
        "label2id": label2id,
        OUR_CONFIG_FIELD: config,
    });
    if is_hf_expressible(config) {
        fields["model_type"] = json!("vit");
        fields["architectures"] = json!(["ViTForImageClassification"]);
    } else {
        // Not `vit`: transformers must refuse it rather than compute another function.
        fields["model_type"] = json!("vit-reference");
        fields["architectures"] = json!(["VisionTransformer"]);
    }
    if let Some(description) = description {
        fields[DESCRIPTION_FIELD] = json!(description);
    }
    fields
}

/// Hugging Face's image-processor file beside config.json: how images are
/// resized and normalised for the model.
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// The normalisation a `preprocessor_config.json` describes, in our terms
/// (`(x / 255 − mean) / std`): `image_mean` / `image_std` (default 0.5, as
/// `ViTImageProcessor`), with `do_normalize`, `do_rescale` and `rescale_factor`
/// folded in. The resize size is the model's `image_size`.
pub fn read_preprocessor(json: &Value) -> Result<Normalization, CheckpointError> {
    let invalid =
        |message: String| CheckpointError::Json(format!("{PREPROCESSOR_FILE}: {message}"));
    let flag = |key: &str| json.get(key).and_then(Value::as_bool).unwrap_or(true);
    let channels = |key: &str| -> Result<[f32; 3], CheckpointError> {
        match json.get(key) {
            None | Some(Value::Null) => Ok([0.5; 3]),
            Some(Value::Number(number)) => Ok([number.as_f64().unwrap_or(f64::NAN) as f32; 3]),
            Some(Value::Array(values)) if values.len() == 3 => {
                let mut out = [0.0; 3];
                for (slot, value) in out.iter_mut().zip(values) {
                    *slot = value
                        .as_f64()
                        .ok_or_else(|| invalid(format!("`{key}` holds {value}, not a number")))?
                        as f32;
                }
                Ok(out)
            }
            Some(other) => Err(invalid(format!(
                "`{key}` is {other}; expected three numbers (R, G, B)"
            ))),
        }
    };
    let (mean, std) = if flag("do_normalize") {
        (channels("image_mean")?, channels("image_std")?)
    } else {
        ([0.0; 3], [1.0; 3])
    };
    let rescale = if flag("do_rescale") {
        json.get("rescale_factor")
            .and_then(Value::as_f64)
            .unwrap_or(1.0 / 255.0)
    } else {
        1.0
    };
    // `(x·r − m) / s` is `(x/255 − m/(255·r)) / (s/(255·r))`.
    let to_ours = (255.0 * rescale) as f32;
    let normalization = Normalization {
        mean: mean.map(|m| m / to_ours),
        std: std.map(|s| s / to_ours),
    };
    if !normalization.is_valid() {
        return Err(invalid(format!(
            "mean {:?} and standard deviation {:?} cannot normalise images",
            normalization.mean, normalization.std
        )));
    }
    Ok(normalization)
}

/// Checks that a `preprocessor_config.json` feeds the model images of its own size:
/// `crop_size` when the processor centre-crops (`do_center_crop`), else `size`, given as
/// `{"height", "width"}` or a number. A ViT takes only its `image_size` (transformers'
/// pipeline fails on any other), so a disagreement means the two files do not belong
/// together. A `shortest_edge` resize without a crop gives no fixed size: not checked.
pub fn check_preprocessor_size(json: &Value, image_size: usize) -> Result<(), CheckpointError> {
    let side = |value: &Value| value.as_u64().and_then(|n| usize::try_from(n).ok());
    let size_of = |key: &str| -> Option<(usize, usize)> {
        match json.get(key)? {
            Value::Object(fields) => {
                Some((side(fields.get("height")?)?, side(fields.get("width")?)?))
            }
            number => side(number).map(|n| (n, n)),
        }
    };
    let crops = json.get("do_center_crop").and_then(Value::as_bool) == Some(true);
    let (key, found) = match (crops, size_of("crop_size")) {
        (true, Some(crop)) => ("crop_size", crop),
        _ => match size_of("size") {
            Some(size) => ("size", size),
            None => return Ok(()),
        },
    };
    if found == (image_size, image_size) {
        return Ok(());
    }
    Err(CheckpointError::Json(format!(
        "{PREPROCESSOR_FILE}: `{key}` gives the model {}x{} images, but its config.json's \
         image_size is {image_size}: the two files do not describe the same model",
        found.0, found.1
    )))
}

/// Applies a `preprocessor_config.json` to the model it sits beside: its size must be
/// the model's ([`check_preprocessor_size`]), its normalisation becomes the model's.
pub fn apply_preprocessor(json: &Value, config: &mut ViTConfig) -> Result<(), CheckpointError> {
    check_preprocessor_size(json, config.image_size)?;
    config.normalization = read_preprocessor(json)?;
    Ok(())
}

/// `preprocessor_config.json` for an exported model, as `ViTImageProcessor`
/// reads it, so that `transformers`' `pipeline("image-classification")`
/// normalises as we do.
pub fn write_preprocessor(config: &ViTConfig) -> Value {
    json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": config.image_size, "width": config.image_size},
        // PIL's BILINEAR.
        "resample": 2,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": config.normalization.mean,
        "image_std": config.normalization.std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_must_feed_the_model_its_own_size() {
        let fits = [
            json!({}),
            json!({"size": {"height": 32, "width": 32}}),
            json!({"size": 32}),
            // A centre crop to the model's size after a larger resize.
            json!({"size": {"height": 36, "width": 36}, "do_center_crop": true,
                   "crop_size": {"height": 32, "width": 32}}),
            // No fixed size to compare.
            json!({"size": {"shortest_edge": 40}}),
        ];
        for json in fits {
            assert!(check_preprocessor_size(&json, 32).is_ok(), "{json}");
        }
        for (json, named) in [
            (
                json!({"size": {"height": 224, "width": 224}}),
                "`size` gives the model 224x224",
            ),
            (json!({"size": {"height": 32, "width": 48}}), "32x48"),
            (
                json!({"size": 32, "do_center_crop": true, "crop_size": 28}),
                "`crop_size` gives the model 28x28",
            ),
        ] {
            let message = check_preprocessor_size(&json, 32)
                .expect_err("a size that is not the model's")
                .to_string();
            assert!(
                message.contains(named) && message.contains("image_size is 32"),
                "{message}"
            );
        }
    }

    #[test]
    fn an_export_reads_back_its_own_processor() {
        let config = ViTConfig {
            normalization: Normalization::IMAGENET,
            ..ViTConfig::preset("Ti/16").expect("a preset")
        };
        let written = write_preprocessor(&config);
        check_preprocessor_size(&written, config.image_size).expect("its own size");
        let read = read_preprocessor(&written).expect("readable");
        for c in 0..3 {
            assert!((read.mean[c] - config.normalization.mean[c]).abs() < 1e-6);
            assert!((read.std[c] - config.normalization.std[c]).abs() < 1e-6);
        }
    }
}
