//! safetensors files to and from named f32 arrays.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::CheckpointError;
use super::params::Array;

/// The tensors of one or more safetensors files (the shards of one model), read in
/// place: each is converted to f32 only when asked for, so loading holds the file
/// bytes and the converted parameters, never a second converted copy.
pub struct Tensors<'a> {
    /// Every tensor's name, with the shard that holds it.
    index: BTreeMap<String, usize>,
    shards: Vec<SafeTensors<'a>>,
}

impl<'a> Tensors<'a> {
    /// Parses the headers of `shards`; a name in two shards is an error.
    pub fn parse(shards: &[&'a [u8]]) -> Result<Self, CheckpointError> {
        let mut index = BTreeMap::new();
        let mut parsed = Vec::with_capacity(shards.len());
        for (shard, bytes) in shards.iter().enumerate() {
            let file = SafeTensors::deserialize(bytes)
                .map_err(|error| CheckpointError::Safetensors(error.to_string()))?;
            for name in file.names() {
                if index.insert(name.to_string(), shard).is_some() {
                    return Err(CheckpointError::Safetensors(format!(
                        "tensor `{name}` appears in two shards"
                    )));
                }
            }
            parsed.push(file);
        }
        Ok(Self {
            index,
            shards: parsed,
        })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.view(name).map(|view| view.shape().to_vec())
    }

    /// Number of elements of tensor `name`, if present.
    pub fn len(&self, name: &str) -> Option<usize> {
        self.view(name)
            .map(|view| view.shape().iter().product::<usize>())
    }

    fn view(&self, name: &str) -> Option<TensorView<'a>> {
        let shard = *self.index.get(name)?;
        self.shards[shard].tensor(name).ok()
    }

    /// Tensor `name` as f32 (float32, float16 and bfloat16 are accepted).
    pub fn get(&self, name: &str) -> Result<Array, CheckpointError> {
        let view = self
            .view(name)
            .ok_or_else(|| CheckpointError::MissingKeys(vec![name.to_string()]))?;
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
        Ok(Array::new(view.shape().to_vec(), data))
    }
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
