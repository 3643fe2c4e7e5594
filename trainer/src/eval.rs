//! Accuracy of a model on a data set.

use burn::tensor::{Device, Int, Tensor, TensorData};
use vit::VisionTransformer;

use crate::augment;
use crate::data::Dataset;

/// Predicted class of every image, in data set order.
pub fn predict_all(
    model: &VisionTransformer,
    data: &Dataset,
    batch: usize,
    device: &Device,
) -> Vec<usize> {
    let size = model.config().image_size;
    let indices: Vec<usize> = (0..data.images.len()).collect();
    let mut predictions = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(batch.max(1)) {
        let pixels = augment::eval_batch(&data.images, chunk, size);
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels, [chunk.len(), 3, size, size]),
            device,
        );
        let classes: Tensor<1, Int> = model.forward(images).argmax(1).reshape([chunk.len()]);
        let classes = classes
            .try_into_vec_as::<i64>()
            .expect("reading predictions back from the device");
        predictions.extend(classes.into_iter().map(|class| class as usize));
    }
    predictions
}

/// Fraction of `predictions` equal to `labels`.
pub fn accuracy(predictions: &[usize], labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len() as f64
}
