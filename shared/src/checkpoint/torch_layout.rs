//! Converting PyTorch-layout tensors (HF, timm) to and from the reference layout.
//! Each format module only lists which of its names is which of ours, and how the
//! array is laid out; this module does the moving.

use std::collections::{BTreeMap, BTreeSet};

use super::CheckpointError;
use super::params::{Array, Params};
use super::safetensors_io::Tensors;

/// How a PyTorch tensor relates to the reference array of the same parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Same shape, same data.
    Same,
    /// Same data, flattened to 1-D on their side (e.g. a `[H, Dh]` bias).
    Flat,
    /// Conv kernel: theirs `[D, 3, p, p]` (OIHW), ours `[p, p, 3, D]` (HWIO).
    Conv,
    /// Dense kernel: theirs `[out, in]`, ours `[in..., out...]` whose first
    /// `in_dims` axes are the input.
    Linear { in_dims: usize },
    /// Part `index` of a fused `[3·D, D]` qkv weight, ours `[D, H, Dh]`.
    QkvKernel { index: usize },
    /// Part `index` of a fused `[3·D]` qkv bias, ours `[H, Dh]`.
    QkvBias { index: usize },
}

/// One parameter: our name, their name, and how the layouts differ.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ours: String,
    pub theirs: String,
    pub transform: Transform,
}

impl Entry {
    pub fn new(ours: impl Into<String>, theirs: impl Into<String>, transform: Transform) -> Self {
        Self {
            ours: ours.into(),
            theirs: theirs.into(),
            transform,
        }
    }
}

/// Their shape for a parameter whose reference shape is `ours`.
fn their_shape(ours: &[usize], transform: Transform) -> Vec<usize> {
    let product = |dims: &[usize]| dims.iter().product::<usize>();
    match transform {
        Transform::Same => ours.to_vec(),
        Transform::Flat => vec![product(ours)],
        Transform::Conv => vec![ours[3], ours[2], ours[0], ours[1]],
        Transform::Linear { in_dims } => vec![product(&ours[in_dims..]), product(&ours[..in_dims])],
        Transform::QkvKernel { .. } => vec![3 * product(&ours[1..]), ours[0]],
        Transform::QkvBias { .. } => vec![3 * product(ours)],
    }
}

fn to_ours(theirs: Array, ours_shape: &[usize], transform: Transform) -> Array {
    let shape = ours_shape.to_vec();
    match transform {
        Transform::Same | Transform::Flat => theirs.reshaped(shape),
        Transform::Conv => theirs.permuted(&[2, 3, 1, 0]),
        Transform::Linear { .. } => theirs.transposed_2d().reshaped(shape),
        Transform::QkvKernel { .. } | Transform::QkvBias { .. } => {
            qkv_part(&theirs, ours_shape, transform)
        }
    }
}

/// Query, key or value out of a fused qkv tensor (rows `index·D..(index+1)·D`).
fn qkv_part(theirs: &Array, ours_shape: &[usize], transform: Transform) -> Array {
    let shape = ours_shape.to_vec();
    match transform {
        Transform::QkvKernel { index } => {
            let rows = theirs.shape[0] / 3;
            let cols = theirs.shape[1];
            let part = theirs.data[index * rows * cols..(index + 1) * rows * cols].to_vec();
            Array::new(vec![rows, cols], part)
                .transposed_2d()
                .reshaped(shape)
        }
        Transform::QkvBias { index } => {
            let len = theirs.data.len() / 3;
            Array::new(shape, theirs.data[index * len..(index + 1) * len].to_vec())
        }
        _ => unreachable!("{transform:?} is not a part of a fused qkv tensor"),
    }
}

fn to_theirs(ours: &Array, transform: Transform) -> Array {
    let shape = their_shape(&ours.shape, transform);
    match transform {
        Transform::Same | Transform::Flat => Array::new(shape, ours.data.clone()),
        Transform::Conv => ours.permuted(&[3, 2, 0, 1]),
        Transform::Linear { .. } => ours
            .clone()
            .reshaped(vec![shape[1], shape[0]])
            .transposed_2d(),
        Transform::QkvKernel { .. } | Transform::QkvBias { .. } => {
            unreachable!("fused qkv tensors are only read, never written")
        }
    }
}

/// Converts their tensors to reference params, one at a time. `expected` gives our
/// shapes. Returns the params and their names that no entry used.
pub fn import(
    entries: &[Entry],
    expected: &[(String, Vec<usize>)],
    tensors: &Tensors,
) -> Result<(Params, Vec<String>), CheckpointError> {
    let missing: BTreeSet<String> = entries
        .iter()
        .filter(|entry| !tensors.contains(&entry.theirs))
        .map(|entry| entry.theirs.clone())
        .collect();
    if !missing.is_empty() {
        return Err(CheckpointError::MissingKeys(missing.into_iter().collect()));
    }
    // Every shape is checked before anything is converted.
    let mut planned = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some((_, ours_shape)) = expected.iter().find(|(key, _)| *key == entry.ours) else {
            continue;
        };
        let found = tensors.shape(&entry.theirs).unwrap_or_default();
        let want = their_shape(ours_shape, entry.transform);
        if found != want {
            return Err(CheckpointError::ShapeMismatch {
                key: entry.theirs.clone(),
                expected: want,
                found,
            });
        }
        planned.push((entry, ours_shape));
    }
    let mut params = Params::new();
    // A fused qkv tensor (timm) holds three parameters: it is decoded once and kept
    // until its value part (index 2) has been taken, not decoded for each part.
    let mut fused: BTreeMap<&str, Array> = BTreeMap::new();
    for (entry, ours_shape) in planned {
        let ours = match entry.transform {
            Transform::QkvKernel { index } | Transform::QkvBias { index } => {
                let name = entry.theirs.as_str();
                if !fused.contains_key(name) {
                    fused.insert(name, tensors.get(name)?);
                }
                let part = qkv_part(&fused[name], ours_shape, entry.transform);
                if index == 2 {
                    fused.remove(name);
                }
                part
            }
            _ => to_ours(tensors.get(&entry.theirs)?, ours_shape, entry.transform),
        };
        params.insert(entry.ours.clone(), ours);
    }
    let used: BTreeSet<&str> = entries.iter().map(|entry| entry.theirs.as_str()).collect();
    let unexpected = tensors
        .names()
        .filter(|key| !used.contains(key))
        .map(str::to_string)
        .collect();
    Ok((params, unexpected))
}

/// Converts reference params to their tensors (every entry must be present).
pub fn export(
    entries: &[Entry],
    params: &Params,
) -> Result<BTreeMap<String, Array>, CheckpointError> {
    let mut tensors = BTreeMap::new();
    for entry in entries {
        let ours = params
            .get(&entry.ours)
            .ok_or_else(|| CheckpointError::MissingKeys(vec![entry.ours.clone()]))?;
        tensors.insert(entry.theirs.clone(), to_theirs(ours, entry.transform));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting(shape: Vec<usize>) -> Array {
        let len = shape.iter().product();
        Array::new(shape, (0..len).map(|i| i as f32).collect())
    }

    #[test]
    fn every_written_layout_reads_back() {
        for (shape, transform) in [
            (vec![2, 2, 3, 4], Transform::Conv),
            (vec![4, 2, 3], Transform::Linear { in_dims: 1 }),
            (vec![2, 3, 4], Transform::Linear { in_dims: 2 }),
            (vec![2, 3], Transform::Flat),
        ] {
            let ours = counting(shape.clone());
            let theirs = to_theirs(&ours, transform);
            assert_eq!(theirs.shape, their_shape(&shape, transform));
            assert_eq!(to_ours(theirs, &shape, transform), ours, "{transform:?}");
        }
    }

    #[test]
    fn conv_kernel_is_hwio() {
        // theirs [D=2, C=3, p=1, p=1]: element (o, i) = 10·o + i; ours [1, 1, 3, 2] holds (i, o).
        let theirs = Array::new(vec![2, 3, 1, 1], vec![0., 1., 2., 10., 11., 12.]);
        let ours = to_ours(theirs, &[1, 1, 3, 2], Transform::Conv);
        assert_eq!(ours.data, vec![0., 10., 1., 11., 2., 12.]);
    }

    #[test]
    fn fused_qkv_splits_into_query_key_value() {
        // D = 2, one head: rows 0-1 query, 2-3 key, 4-5 value of a [6, 2] weight.
        let weight = counting(vec![6, 2]);
        let key = to_ours(weight, &[2, 1, 2], Transform::QkvKernel { index: 1 });
        // key rows are [4, 5] and [6, 7]; ours is their transpose.
        assert_eq!(key.data, vec![4., 6., 5., 7.]);
        let bias = to_ours(counting(vec![6]), &[1, 2], Transform::QkvBias { index: 2 });
        assert_eq!(bias.data, vec![4., 5.]);
    }

    fn safetensors(tensors: &[(&str, Array)]) -> Vec<u8> {
        let map = tensors
            .iter()
            .map(|(name, array)| (name.to_string(), array.clone()))
            .collect();
        super::super::safetensors_io::write(&map, false).unwrap()
    }

    #[test]
    fn import_names_missing_keys_and_wrong_shapes() {
        let entries = [Entry::new(
            "a",
            "x.weight",
            Transform::Linear { in_dims: 1 },
        )];
        let expected = vec![("a".to_string(), vec![2, 3])];
        let empty = safetensors(&[]);
        assert!(matches!(
            import(&entries, &expected, &Tensors::parse(&[&empty]).unwrap()),
            Err(CheckpointError::MissingKeys(keys)) if keys == vec!["x.weight".to_string()]
        ));
        let wrong = safetensors(&[
            ("x.weight", counting(vec![2, 3])),
            ("extra", counting(vec![1])),
        ]);
        let error = import(&entries, &expected, &Tensors::parse(&[&wrong]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.weight") && error.contains("[3, 2]") && error.contains("[2, 3]"),
            "{error}"
        );
        let right = safetensors(&[
            ("x.weight", counting(vec![3, 2])),
            ("extra", counting(vec![1])),
        ]);
        let (params, unexpected) =
            import(&entries, &expected, &Tensors::parse(&[&right]).unwrap()).unwrap();
        assert_eq!(params["a"].shape, vec![2, 3]);
        assert_eq!(unexpected, vec!["extra".to_string()]);
    }
}
