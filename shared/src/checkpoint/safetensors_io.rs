//! safetensors files to and from named f32 arrays.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::CheckpointError;
use super::params::Array;

/// Reads every tensor as f32 (float32, float16 and bfloat16 are accepted).
pub fn read(bytes: &[u8]) -> Result<BTreeMap<String, Array>, CheckpointError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|error| CheckpointError::Safetensors(error.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(CheckpointError::Safetensors(format!(
                    "tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 weights can be loaded"
                )));
            }
        };
        tensors.insert(name.to_string(), Array::new(view.shape().to_vec(), data));
    }
    Ok(tensors)
}

/// Serialises arrays as F32, or F16 when `float16`.
pub fn write(tensors: &BTreeMap<String, Array>, float16: bool) -> Result<Vec<u8>, CheckpointError> {
    let encoded: Vec<(&String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, array)| {
            let bytes = if float16 {
                array
                    .data
                    .iter()
                    .flat_map(|value| half::f16::from_f32(*value).to_le_bytes())
                    .collect()
            } else {
                array
                    .data
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect()
            };
            (name, array.shape.clone(), bytes)
        })
        .collect();
    let dtype = if float16 { Dtype::F16 } else { Dtype::F32 };
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes)
                .map(|view| (name.as_str(), view))
                .map_err(|error| CheckpointError::Safetensors(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, None)
        .map_err(|error| CheckpointError::Safetensors(error.to_string()))
}
