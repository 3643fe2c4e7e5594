//! Moving parameters between the reference layout ([`Params`]) and a burn model.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

use super::CheckpointError;
use super::params::{self, Array, Params};
use crate::config::ViTConfig;
use crate::model::{
    AddPositionEmbs, Encoder, Encoder1DBlock, LayerNorm, MlpBlock, MultiHeadDotProductAttention,
    PatchEmbedding, VisionTransformer,
};

/// Checks `params` against what `config` needs: every expected key present with its
/// shape, and every value finite. Returns the keys that are present but not used.
pub fn check_params(config: &ViTConfig, params: &Params) -> Result<Vec<String>, CheckpointError> {
    let expected = params::expected_shapes(config);
    let missing: Vec<String> = expected
        .iter()
        .filter(|(key, _)| !params.contains_key(key))
        .map(|(key, _)| key.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingKeys(missing));
    }
    for (key, shape) in &expected {
        let found = &params[key].shape;
        if found != shape {
            return Err(CheckpointError::ShapeMismatch {
                key: key.clone(),
                expected: shape.clone(),
                found: found.clone(),
            });
        }
    }
    if let Some((key, _)) = expected
        .iter()
        .find(|(key, _)| params[key].data.iter().any(|value| !value.is_finite()))
    {
        return Err(CheckpointError::NonFinite { key: key.clone() });
    }
    let unexpected = params
        .keys()
        .filter(|key| !expected.iter().any(|(name, _)| name == *key))
        .cloned()
        .collect();
    Ok(unexpected)
}

/// Builds a model of `config` holding `params` (checked first; see [`check_params`]),
/// moving each array into its tensor.
pub fn build_model(
    config: &ViTConfig,
    mut params: Params,
    device: &Device,
) -> Result<VisionTransformer, CheckpointError> {
    config.validate()?;
    check_params(config, &params)?;
    let params = &mut params;
    let d = config.hidden_size;
    let p = config.patch_size;

    let embedding = PatchEmbedding::from_linear(
        linear(
            take(params, params::EMBEDDING_KERNEL).reshaped(vec![p * p * 3, d]),
            take(params, params::EMBEDDING_BIAS),
            device,
        ),
        p,
    );
    let cls =
        (config.num_prefix_tokens() == 1).then(|| param::<3>(take(params, params::CLS), device));
    let pos_embedding = param::<3>(take(params, params::POS_EMBEDDING), device);
    let blocks = (0..config.num_layers)
        .map(|layer| build_block(config, params, layer, device))
        .collect();
    let encoder = Encoder::from_parts(
        AddPositionEmbs { pos_embedding },
        blocks,
        layer_norm(
            config,
            take(params, params::ENCODER_NORM_SCALE),
            take(params, params::ENCODER_NORM_BIAS),
            device,
        ),
        config.dropout,
    );
    let pre_logits = config.representation_size.map(|_| {
        linear(
            take(params, params::PRE_LOGITS_KERNEL),
            take(params, params::PRE_LOGITS_BIAS),
            device,
        )
    });
    let head = (config.num_classes > 0).then(|| {
        linear(
            take(params, params::HEAD_KERNEL),
            take(params, params::HEAD_BIAS),
            device,
        )
    });
    Ok(VisionTransformer::from_parts(
        config.clone(),
        embedding,
        cls,
        encoder,
        pre_logits,
        head,
    ))
}

/// Moves a parameter out; [`check_params`] has made sure it is there.
fn take(params: &mut Params, key: &str) -> Array {
    params
        .remove(key)
        .unwrap_or_else(|| panic!("`{key}` was checked to be present"))
}

fn build_block(
    config: &ViTConfig,
    params: &mut Params,
    layer: usize,
    device: &Device,
) -> Encoder1DBlock {
    let d = config.hidden_size;
    let mut norm = |name: &str| {
        layer_norm(
            config,
            take(params, &params::block(layer, &format!("{name}/scale"))),
            take(params, &params::block(layer, &format!("{name}/bias"))),
            device,
        )
    };
    let layer_norm_0 = norm("LayerNorm_0");
    let layer_norm_1 = norm("LayerNorm_1");
    // Query, key and value side by side in one [D, 3D] kernel.
    let mut kernels = Vec::with_capacity(3);
    let mut qkv_bias = Vec::with_capacity(3 * d);
    for name in ["query", "key", "value"] {
        kernels.push(take(params, &params::attention(layer, name, "kernel")).reshaped(vec![d, d]));
        qkv_bias.extend(take(params, &params::attention(layer, name, "bias")).data);
    }
    let qkv = linear(
        concat_columns(&kernels),
        Array::new(vec![3 * d], qkv_bias),
        device,
    );
    drop(kernels);
    let out = linear(
        take(params, &params::attention(layer, "out", "kernel")).reshaped(vec![d, d]),
        take(params, &params::attention(layer, "out", "bias")),
        device,
    );
    let mlp = MlpBlock::from_layers(
        linear(
            take(params, &params::mlp(layer, 0, "kernel")),
            take(params, &params::mlp(layer, 0, "bias")),
            device,
        ),
        linear(
            take(params, &params::mlp(layer, 1, "kernel")),
            take(params, &params::mlp(layer, 1, "bias")),
            device,
        ),
        config.dropout,
        config.activation,
    );
    Encoder1DBlock::from_parts(
        layer_norm_0,
        MultiHeadDotProductAttention::from_layers(
            qkv,
            out,
            config.num_heads,
            config.attention_dropout,
        ),
        layer_norm_1,
        mlp,
        config.dropout,
        config.drop_path_at(layer),
    )
}

/// Reads every parameter of `model` back into the reference layout.
pub fn model_params(model: &VisionTransformer) -> Params {
    let config = model.config();
    let d = config.hidden_size;
    let p = config.patch_size;
    let (h, dh) = (config.num_heads, config.head_dim());
    let mut out = Params::new();
    let mut put = |key: String, array: Array| {
        out.insert(key, array);
    };

    let (kernel, bias) = linear_arrays(&model.embedding.projection);
    put(
        params::EMBEDDING_KERNEL.into(),
        kernel.reshaped(vec![p, p, 3, d]),
    );
    put(params::EMBEDDING_BIAS.into(), bias);
    if let Some(cls) = &model.cls {
        put(params::CLS.into(), tensor_array(cls.val()));
    }
    put(
        params::POS_EMBEDDING.into(),
        tensor_array(model.encoder.pos_embedding.pos_embedding.val()),
    );
    for (layer, block) in model.encoder.blocks.iter().enumerate() {
        for (name, norm) in [
            ("LayerNorm_0", &block.layer_norm_0),
            ("LayerNorm_1", &block.layer_norm_1),
        ] {
            let (scale, bias) = layer_norm_arrays(norm);
            put(params::block(layer, &format!("{name}/scale")), scale);
            put(params::block(layer, &format!("{name}/bias")), bias);
        }
        let (qkv_kernel, qkv_bias) = linear_arrays(&block.attention.qkv);
        for (index, name) in ["query", "key", "value"].iter().enumerate() {
            let kernel = column_block(&qkv_kernel, index * d, d).reshaped(vec![d, h, dh]);
            let bias = qkv_bias.data[index * d..(index + 1) * d].to_vec();
            put(params::attention(layer, name, "kernel"), kernel);
            put(
                params::attention(layer, name, "bias"),
                Array::new(vec![h, dh], bias),
            );
        }
        let (kernel, bias) = linear_arrays(&block.attention.out);
        put(
            params::attention(layer, "out", "kernel"),
            kernel.reshaped(vec![h, dh, d]),
        );
        put(params::attention(layer, "out", "bias"), bias);
        for (index, dense) in [&block.mlp.dense_0, &block.mlp.dense_1]
            .into_iter()
            .enumerate()
        {
            let (kernel, bias) = linear_arrays(dense);
            put(params::mlp(layer, index, "kernel"), kernel);
            put(params::mlp(layer, index, "bias"), bias);
        }
    }
    let (scale, bias) = layer_norm_arrays(&model.encoder.encoder_norm);
    put(params::ENCODER_NORM_SCALE.into(), scale);
    put(params::ENCODER_NORM_BIAS.into(), bias);
    if let Some(pre_logits) = &model.pre_logits {
        let (kernel, bias) = linear_arrays(pre_logits);
        put(params::PRE_LOGITS_KERNEL.into(), kernel);
        put(params::PRE_LOGITS_BIAS.into(), bias);
    }
    if let Some(head) = &model.head {
        let (kernel, bias) = linear_arrays(head);
        put(params::HEAD_KERNEL.into(), kernel);
        put(params::HEAD_BIAS.into(), bias);
    }
    out
}

/// A parameter holding `array`'s values, moved (not copied) into the tensor on the CPU.
fn param<const D: usize>(array: Array, device: &Device) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(array.data, array.shape),
        device,
    ))
}

fn linear(kernel: Array, bias: Array, device: &Device) -> Linear {
    Linear {
        weight: param::<2>(kernel, device),
        bias: Some(param::<1>(bias, device)),
    }
}

fn layer_norm(config: &ViTConfig, scale: Array, bias: Array, device: &Device) -> LayerNorm {
    let mut norm = crate::model::layer_norm(config, device);
    norm.gamma = param::<1>(scale, device);
    norm.beta = param::<1>(bias, device);
    norm
}

fn tensor_array<const D: usize>(tensor: Tensor<D>) -> Array {
    let shape = tensor.dims().to_vec();
    // Reading back a tensor we created ourselves cannot fail on a working device.
    let data = tensor
        .try_into_vec_as::<f32>()
        .expect("reading a parameter tensor back from the device");
    Array::new(shape, data)
}

fn linear_arrays(linear: &Linear) -> (Array, Array) {
    let kernel = tensor_array(linear.weight.val());
    let bias = match &linear.bias {
        Some(bias) => tensor_array(bias.val()),
        None => Array::zeros(vec![kernel.shape[1]]),
    };
    (kernel, bias)
}

fn layer_norm_arrays(norm: &LayerNorm) -> (Array, Array) {
    (
        tensor_array(norm.gamma.val()),
        tensor_array(norm.beta.val()),
    )
}

/// `[rows, c1] ++ [rows, c2] ++ ...` along the columns.
fn concat_columns(parts: &[Array]) -> Array {
    let rows = parts[0].shape[0];
    let cols: usize = parts.iter().map(|part| part.shape[1]).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for part in parts {
            let width = part.shape[1];
            data.extend_from_slice(&part.data[row * width..(row + 1) * width]);
        }
    }
    Array::new(vec![rows, cols], data)
}

/// Columns `start..start + width` of a 2-D array.
fn column_block(array: &Array, start: usize, width: usize) -> Array {
    let (rows, cols) = (array.shape[0], array.shape[1]);
    let mut data = Vec::with_capacity(rows * width);
    for row in 0..rows {
        data.extend_from_slice(&array.data[row * cols + start..row * cols + start + width]);
    }
    Array::new(vec![rows, width], data)
}
