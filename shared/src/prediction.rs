//! From model outputs to what a user reads: probabilities and the top classes.
//! Shared by `trainer predict` and the browser so both print the same numbers.

use burn::tensor::{Device, Tensor, TensorData};

use crate::model::VisionTransformer;
use crate::preprocess::ModelInput;

/// One ranked class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// Softmax computed in f64, so that large logits cannot overflow.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / total) as f32).collect()
}

/// The `k` most probable classes, most probable first (ties: lower index first).
pub fn top_k(probabilities: &[f32], labels: &[String], k: usize) -> Vec<Ranked> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|index| Ranked {
            index,
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            probability: probabilities[index],
        })
        .collect()
}

/// Stacks preprocessed images (all of one size) into a `[B, 3, H, W]` batch.
pub fn batch(inputs: &[ModelInput], device: &Device) -> Tensor<4> {
    let (height, width) = inputs
        .first()
        .map_or((0, 0), |input| (input.height, input.width));
    let data: Vec<f32> = inputs
        .iter()
        .flat_map(|input| input.data.iter().copied())
        .collect();
    Tensor::from_data(
        TensorData::new(data, [inputs.len(), 3, height, width]),
        device,
    )
}

/// Logits for each image, one `Vec` per image.
pub fn logits(model: &VisionTransformer, inputs: &[ModelInput], device: &Device) -> Vec<Vec<f32>> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let output = model.forward(batch(inputs, device));
    let [rows, cols] = output.dims();
    // The model ran on our own tensors: reading them back only fails on a broken device.
    let flat = output
        .try_into_vec_as::<f32>()
        .expect("reading logits back from the device");
    (0..rows)
        .map(|row| flat[row * cols..(row + 1) * cols].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_normalised_and_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        let q = softmax(&[0.0, (2.0f32).ln()]);
        assert!((q[1] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_by_probability_then_index() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let top = top_k(&[0.2, 0.6, 0.2], &labels, 2);
        assert_eq!(top[0].label, "b");
        assert_eq!(top[1].index, 0);
        assert_eq!(top_k(&[0.5, 0.5], &labels, 5).len(), 2);
    }
}
