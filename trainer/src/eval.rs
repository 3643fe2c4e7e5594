//! Accuracy of a model on a data set, and `trainer eval`: per-class accuracy and
//! the confusion matrix of a checkpoint.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use serde_json::json;
use vit::VisionTransformer;

use crate::cli::EvalArgs;
use crate::data::{Dataset, Source};
use crate::output;
use crate::predict::load_checkpoint;

const REPORT_FILE: &str = "eval.json";
const CONFUSION_FILE: &str = "confusion.svg";
use crate::{augment, device, plot, progress};

/// Predicted class of every image, in data set order; `bar` advances per image.
pub fn predict_all(
    model: &VisionTransformer,
    data: &Dataset,
    batch: usize,
    device: &Device,
    bar: &ProgressBar,
) -> Vec<usize> {
    device::on_pool(|| predict_on_this_thread(model, data, batch, device, bar))
}

/// [`predict_all`] on the calling thread.
fn predict_on_this_thread(
    model: &VisionTransformer,
    data: &Dataset,
    batch: usize,
    device: &Device,
    bar: &ProgressBar,
) -> Vec<usize> {
    let size = model.config().image_size;
    let indices: Vec<usize> = (0..data.images.len()).collect();
    let mut predictions = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(batch.max(1)) {
        let normalization = &model.config().normalization;
        let pixels = augment::eval_batch(&data.images, chunk, size, normalization);
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels, [chunk.len(), 3, size, size]),
            device,
        );
        let classes: Tensor<1, Int> = model.forward(images).argmax(1).reshape([chunk.len()]);
        let classes = classes
            .try_into_vec_as::<i64>()
            .expect("reading predictions back from the device");
        predictions.extend(classes.into_iter().map(|class| class as usize));
        bar.inc(chunk.len() as u64);
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

/// `counts[true][predicted]` over `classes` classes.
pub fn confusion(predictions: &[usize], labels: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut counts = vec![vec![0; classes]; classes];
    for (&predicted, &truth) in predictions.iter().zip(labels) {
        if truth < classes && predicted < classes {
            counts[truth][predicted] += 1;
        }
    }
    counts
}

/// Accuracy of each true class (the diagonal over the row sums); `None` for
/// a class without test images.
pub fn per_class(counts: &[Vec<usize>]) -> Vec<Option<f64>> {
    counts
        .iter()
        .enumerate()
        .map(|(class, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row[class] as f64 / total as f64)
        })
        .collect()
}

/// For each data set class, the model's output index: the same name, else
/// the same position when the model has no names (only numbers).
fn class_mapping(model_labels: &[String], data_classes: &[String]) -> Result<Vec<usize>> {
    let named = model_labels
        .iter()
        .any(|label| label.parse::<usize>().is_err());
    if !named {
        ensure!(
            model_labels.len() == data_classes.len(),
            "the model has {} classes and the data set {}",
            model_labels.len(),
            data_classes.len()
        );
        return Ok((0..data_classes.len()).collect());
    }
    data_classes
        .iter()
        .map(|class| {
            model_labels
                .iter()
                .position(|label| label == class)
                .with_context(|| {
                    format!(
                        "the data set class `{class}` is not one of the model's classes ({})",
                        model_labels.join(", ")
                    )
                })
        })
        .collect()
}

pub fn run(args: &EvalArgs) -> Result<()> {
    device::configure_threads(args.threads)?;
    let device = device::parse(&args.device)?;
    let path = &args.checkpoint.checkpoint;
    // Checked before the (long) evaluation, not after it.
    let out = args.out.clone().unwrap_or_else(|| default_out(path));
    output::refuse_to_replace(&out, &[REPORT_FILE, CONFUSION_FILE], args.force)?;
    let mut checkpoint = load_checkpoint(&args.checkpoint)?;
    if let Some(size) = args.resolution {
        checkpoint = checkpoint.at_resolution(size)?;
    }
    let model_labels = checkpoint.label_names();
    let model = checkpoint.into_model(&device)?;
    let source = Source {
        dataset: args.dataset.clone(),
        cache_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(crate::data::download::cache_dir),
        strict: false,
        val_split: args.val_split,
    };
    let test = source.load_test().context("cannot load the data set")?;
    if test.images.is_empty() {
        bail!("the data set {} has no test images", args.dataset);
    }
    let mapping = class_mapping(&model_labels, &test.classes)?;
    let labels: Vec<usize> = test.labels.iter().map(|&class| mapping[class]).collect();

    let bar = progress::images(test.images.len(), "evaluating");
    let predictions = predict_all(&model, &test, args.batch, &device, &bar);
    bar.finish_and_clear();
    let counts = confusion(&predictions, &labels, model_labels.len());
    let total = accuracy(&predictions, &labels);
    println!(
        "{}",
        report(&model_labels, &counts, total, test.images.len())
    );

    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let svg = out.join(CONFUSION_FILE);
    vit::checkpoint::write_atomically(
        &svg,
        plot::confusion_matrix(&model_labels, &counts).as_bytes(),
    )?;
    let summary = json!({
        "checkpoint": path, "dataset": args.dataset, "images": test.images.len(),
        "accuracy": total, "labels": model_labels,
        "per_class_accuracy": per_class(&counts), "confusion": counts,
    });
    let json_path = out.join(REPORT_FILE);
    vit::checkpoint::write_atomically(
        &json_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    eprintln!("wrote {} and {}", svg.display(), json_path.display());
    Ok(())
}

/// Inside a model folder, or beside a checkpoint file. A training checkpoint
/// folder is replaced at every save, so its run's folder is used instead.
fn default_out(checkpoint: &Path) -> PathBuf {
    let is_training_checkpoint = checkpoint.join("state.json").exists();
    if checkpoint.is_dir() && !is_training_checkpoint {
        checkpoint.to_path_buf()
    } else {
        checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// Accuracy, per-class accuracy, and the matrix itself when it fits a terminal.
fn report(labels: &[String], counts: &[Vec<usize>], total: f64, images: usize) -> String {
    let mut text = format!(
        "accuracy: {:.2}% of {images} test images\n\n",
        total * 100.0
    );
    let width = labels.iter().map(String::len).max().unwrap_or(0).max(5);
    // Matrix rows are labelled "index name".
    let row_width = width + labels.len().to_string().len() + 1;
    text.push_str("per class:\n");
    for (label, accuracy) in labels.iter().zip(per_class(counts)) {
        let shown = accuracy.map_or("no images".into(), |a| format!("{:6.2}%", a * 100.0));
        let _ = writeln!(text, "  {label:>width$}  {shown}");
    }
    if labels.len() <= 20 {
        text.push_str("\nconfusion matrix (rows: true class, columns: predicted):\n");
        let _ = write!(text, "  {:>row_width$}", "");
        for index in 0..labels.len() {
            let _ = write!(text, " {index:>5}");
        }
        text.push('\n');
        for (index, (label, row)) in labels.iter().zip(counts).enumerate() {
            let _ = write!(text, "  {:>row_width$}", format!("{index} {label}"));
            for count in row {
                let _ = write!(text, " {count:>5}");
            }
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn confusion_counts_true_rows_and_predicted_columns() {
        let labels = [0, 0, 1, 2, 2, 2];
        let predictions = [0, 1, 1, 2, 0, 2];
        let counts = confusion(&predictions, &labels, 3);
        assert_eq!(counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
        assert_eq!(
            per_class(&counts),
            vec![Some(0.5), Some(1.0), Some(2.0 / 3.0)]
        );
        assert_eq!(per_class(&[vec![0, 0], vec![0, 3]])[0], None);
        assert!((accuracy(&predictions, &labels) - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn data_classes_map_to_model_classes_by_name() {
        let model = names(&["cat", "dog", "ship"]);
        assert_eq!(
            class_mapping(&model, &names(&["dog", "ship"])).unwrap(),
            vec![1, 2]
        );
        let error = class_mapping(&model, &names(&["cow"])).unwrap_err();
        assert!(error.to_string().contains("`cow`"), "{error}");
        // A model without names is taken in the data set's class order.
        let unnamed = names(&["0", "1"]);
        assert_eq!(
            class_mapping(&unnamed, &names(&["a", "b"])).unwrap(),
            vec![0, 1]
        );
        assert!(class_mapping(&unnamed, &names(&["a", "b", "c"])).is_err());
    }

    #[test]
    fn report_lists_every_class_and_the_matrix() {
        let text = report(&names(&["cat", "dog"]), &[vec![3, 1], vec![0, 4]], 0.875, 8);
        assert!(text.contains("accuracy: 87.50% of 8 test images"), "{text}");
        assert!(text.contains("cat   75.00%"), "{text}");
        assert!(text.contains("  0 cat     3     1"), "{text}");
    }
}
