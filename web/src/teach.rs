//! Teaching the loaded model new classes: each taught image (with a few mirrored and
//! cropped variants) becomes a feature vector, the model's representation before its
//! head; a new linear head is trained on them by full-batch softmax cross-entropy with
//! weight decay; leave-one-out accuracy says how well it generalises; and the taught
//! model is the old one with the new head and labels. Free of browser APIs, so tested
//! natively; the worker runs it on the same backend as classification.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use vit::VisionTransformer;
use vit::preprocess::{Crop, ModelInput, Normalization, RgbImage, resize_crop_into};

/// How a head is trained. The defaults learn 2–10 classes of 5 images each in well under
/// a second for the shipped model's 128-wide features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeachOptions {
    /// Full-batch Adam updates.
    pub steps: usize,
    pub lr: f64,
    /// L2 penalty `weight_decay / 2 · |W|²` on the weights (not the biases), in units of
    /// the standardised features.
    pub weight_decay: f64,
}

impl Default for TeachOptions {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.05,
            weight_decay: 1e-2,
        }
    }
}

/// Why teaching could not start or finish.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TeachError {
    #[error("teach at least two classes")]
    TooFewClasses,
    #[error("class `{0}` has no images")]
    EmptyClass(String),
    #[error("two classes are named `{0}`")]
    DuplicateClass(String),
    #[error("image {index} of class `{class}`: {message}")]
    Image {
        class: String,
        index: usize,
        message: String,
    },
    #[error("cannot read the model output: {0}")]
    Backend(String),
}

/// Leave-one-out trains one more head per taught image; beyond this many images it
/// leaves out an evenly spread sample of them.
pub const MAX_LEFT_OUT: usize = 20;

/// One teaching job, done in small units so that the worker can report progress and
/// yield between them (a newer request then cancels this one): the features of 16
/// images at a time, then the head, then one left-out image at a time.
pub struct Lesson {
    classes: Vec<String>,
    inputs: Vec<ModelInput>,
    targets: Vec<usize>,
    /// The taught image each input is a variant of.
    groups: Vec<usize>,
    /// The first input of each taught image (the image itself).
    firsts: Vec<usize>,
    features: Vec<f32>,
    dim: usize,
    options: TeachOptions,
    head: Option<Head>,
    left_out: Vec<usize>,
    next_left_out: usize,
    correct: usize,
}

impl Lesson {
    /// `images[c]` are the files of class `classes[c]`; `model` is the one taught.
    pub fn new(
        model: &VisionTransformer,
        classes: Vec<String>,
        images: &[Vec<Vec<u8>>],
        options: TeachOptions,
    ) -> Result<Self, TeachError> {
        if classes.len() < 2 {
            return Err(TeachError::TooFewClasses);
        }
        for (index, class) in classes.iter().enumerate() {
            if classes[..index].contains(class) {
                return Err(TeachError::DuplicateClass(class.clone()));
            }
        }
        let config = model.config();
        let (mut inputs, mut targets, mut groups, mut firsts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (target, (class, files)) in classes.iter().zip(images).enumerate() {
            if files.is_empty() {
                return Err(TeachError::EmptyClass(class.clone()));
            }
            for (index, bytes) in files.iter().enumerate() {
                let image =
                    crate::image_input::to_rgb(bytes).map_err(|error| TeachError::Image {
                        class: class.clone(),
                        index: index + 1,
                        message: error.to_string(),
                    })?;
                firsts.push(inputs.len());
                for variant in variants(&image, config.image_size, &config.normalization) {
                    inputs.push(variant);
                    targets.push(target);
                    groups.push(firsts.len() - 1);
                }
            }
        }
        let count = firsts.len();
        let left_out = (0..count.min(MAX_LEFT_OUT))
            .map(|i| i * count / count.min(MAX_LEFT_OUT))
            .collect();
        Ok(Self {
            classes,
            inputs,
            targets,
            groups,
            firsts,
            features: Vec::new(),
            dim: config.representation_width(),
            options,
            head: None,
            left_out,
            next_left_out: 0,
            correct: 0,
        })
    }

    fn feature_units(&self) -> usize {
        self.inputs.len().div_ceil(16)
    }

    /// Units of work in all.
    pub fn total(&self) -> usize {
        self.feature_units() + 1 + self.left_out.len()
    }

    /// Units done.
    pub fn done(&self) -> usize {
        (self.features.len() / self.dim).div_ceil(16)
            + usize::from(self.head.is_some())
            + self.next_left_out
    }

    pub fn is_finished(&self) -> bool {
        self.head.is_some() && self.next_left_out == self.left_out.len()
    }

    /// Does the next unit of work with `model` (the one the lesson was made for).
    pub fn step(&mut self, model: &VisionTransformer, device: &Device) -> Result<(), TeachError> {
        let computed = self.features.len() / self.dim;
        if computed < self.inputs.len() {
            let chunk = &self.inputs[computed..(computed + 16).min(self.inputs.len())];
            self.features.extend(features(model, chunk, device)?);
        } else if self.head.is_none() {
            let (head, _) = train_head(
                &self.features,
                self.dim,
                &self.targets,
                self.classes.len(),
                self.options,
                device,
            );
            self.head = Some(head);
        } else if let Some(&image) = self.left_out.get(self.next_left_out) {
            let data = Taught {
                features: &self.features,
                dim: self.dim,
                targets: &self.targets,
                groups: &self.groups,
                classes: self.classes.len(),
            };
            let correct = data.left_out_is_right(image, self.firsts[image], self.options, device);
            self.correct += usize::from(correct);
            self.next_left_out += 1;
        }
        Ok(())
    }

    /// The head on all taught images, its classes and its leave-one-out accuracy.
    pub fn finish(self) -> Option<(Head, Vec<String>, f64)> {
        let accuracy = self.correct as f64 / self.left_out.len().max(1) as f64;
        self.head.map(|head| (head, self.classes, accuracy))
    }
}

/// The variants each taught image is learned from: the image, mirrored, and the four
/// corner crops of 80% of its sides. Fixed, so teaching is deterministic.
pub fn variants(image: &RgbImage, size: usize, normalization: &Normalization) -> Vec<ModelInput> {
    let (width, height) = (image.width, image.height);
    let (crop_width, crop_height) = ((width * 4 / 5).max(1), (height * 4 / 5).max(1));
    let corner = |x: usize, y: usize| Crop {
        x,
        y,
        width: crop_width,
        height: crop_height,
    };
    let crops = [
        (Crop::full(width, height), false),
        (Crop::full(width, height), true),
        (corner(0, 0), false),
        (corner(width - crop_width, 0), false),
        (corner(0, height - crop_height), false),
        (corner(width - crop_width, height - crop_height), false),
    ];
    let mut rows = Vec::new();
    crops
        .into_iter()
        .map(|(crop, flip)| {
            let mut data = vec![0.0; 3 * size * size];
            resize_crop_into(image, crop, size, flip, normalization, &mut rows, &mut data);
            ModelInput {
                height: size,
                width: size,
                data,
            }
        })
        .collect()
}

/// The model's representations of `inputs`, `[N, representation_width]`, computed
/// 16 at a time so that a long list does not hold every activation at once.
pub fn features(
    model: &VisionTransformer,
    inputs: &[ModelInput],
    device: &Device,
) -> Result<Vec<f32>, TeachError> {
    let mut out = Vec::new();
    for chunk in inputs.chunks(16) {
        let batch = vit::prediction::batch(chunk, device);
        let values = model
            .representation(batch)
            .try_into_vec_as::<f32>()
            .map_err(|error| TeachError::Backend(format!("{error:?}")))?;
        out.extend(values);
    }
    Ok(out)
}

/// A linear classifier on the model's representation: `logits = x · weight + bias`,
/// `weight` `[dim, classes]` row-major as burn's `Linear` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub dim: usize,
    pub classes: usize,
}

impl Head {
    /// The logits of one feature vector.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        (0..self.classes)
            .map(|c| {
                self.bias[c]
                    + features
                        .iter()
                        .enumerate()
                        .map(|(d, x)| x * self.weight[d * self.classes + c])
                        .sum::<f32>()
            })
            .collect()
    }

    /// The class with the highest logit.
    pub fn predict(&self, features: &[f32]) -> usize {
        let logits = self.logits(features);
        (0..self.classes)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0)
    }

    /// `model` (on `device`) with this head in place of its own; the pre-logits layer,
    /// if any, stays.
    pub fn install(&self, model: VisionTransformer, device: &Device) -> VisionTransformer {
        let weight = Tensor::<2>::from_data(
            TensorData::new(self.weight.clone(), [self.dim, self.classes]),
            device,
        );
        let bias =
            Tensor::<1>::from_data(TensorData::new(self.bias.clone(), [self.classes]), device);
        let head = Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        };
        let config = model.config().clone().with_num_classes(self.classes);
        VisionTransformer::from_parts(
            config,
            model.embedding,
            model.cls,
            model.encoder,
            model.pre_logits,
            Some(head),
        )
    }
}

/// Trains a head on `features` (`[N, dim]`, row-major) for `targets` in `0..classes`;
/// returns it with the loss before every update. The features are standardised first
/// (each dimension to mean 0, deviation 1 over the taught images), which the returned
/// head folds back in, so it applies to raw features.
pub fn train_head(
    features: &[f32],
    dim: usize,
    targets: &[usize],
    classes: usize,
    options: TeachOptions,
    device: &Device,
) -> (Head, Vec<f32>) {
    let rows = targets.len();
    assert_eq!(features.len(), rows * dim);
    let (mean, deviation) = standardisation(features, dim);
    let standard: Vec<f32> = features
        .chunks(dim)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&deviation)
                .map(|((x, m), s)| (x - m) / s)
        })
        .collect();
    let device = device.clone().autodiff();
    let x = Tensor::<2>::from_data(TensorData::new(standard, [rows, dim]), &device);
    let y = Tensor::<2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect(), [rows, 1]),
        &device,
    );
    let mut linear = LinearConfig::new(dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(&device);
    let mut optimizer = AdamConfig::new().init();
    let mut losses = Vec::with_capacity(options.steps);
    for _ in 0..options.steps {
        let log_probabilities = log_softmax(linear.forward(x.clone()), 1);
        let data_loss = log_probabilities.gather(1, y.clone()).mean().neg();
        let penalty = linear.weight.val().powi_scalar(2).sum() * (options.weight_decay / 2.0);
        let loss = data_loss + penalty;
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        linear = optimizer.step(options.lr, linear, grads);
    }
    let weight = linear
        .weight
        .val()
        .try_into_vec_as::<f32>()
        .unwrap_or_default();
    let bias = linear
        .bias
        .as_ref()
        .map(|bias| bias.val().try_into_vec_as::<f32>().unwrap_or_default())
        .unwrap_or_else(|| vec![0.0; classes]);
    // x·W + b on standardised x is x_raw·(W / s) + (b − Σ_d m_d W_d / s_d).
    let mut head = Head {
        weight: vec![0.0; dim * classes],
        bias,
        dim,
        classes,
    };
    for d in 0..dim {
        for c in 0..classes {
            let w = weight[d * classes + c] / deviation[d];
            head.weight[d * classes + c] = w;
            head.bias[c] -= mean[d] * w;
        }
    }
    (head, losses)
}

/// Each dimension's mean and deviation over the rows (a constant dimension gets 1).
fn standardisation(features: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = (features.len() / dim).max(1) as f32;
    let mut mean = vec![0.0f32; dim];
    for row in features.chunks(dim) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / rows;
        }
    }
    let mut variance = vec![0.0f32; dim];
    for row in features.chunks(dim) {
        for ((v, x), m) in variance.iter_mut().zip(row).zip(&mean) {
            *v += (x - m) * (x - m) / rows;
        }
    }
    let deviation = variance
        .into_iter()
        .map(|v| if v > 1e-12 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, deviation)
}

/// Feature rows of taught images, `[N, dim]`, with their classes and the image each
/// row is a variant of.
struct Taught<'a> {
    features: &'a [f32],
    dim: usize,
    targets: &'a [usize],
    groups: &'a [usize],
    classes: usize,
}

impl Taught<'_> {
    /// Whether a head trained on every other image's rows classifies `image` (its row
    /// `first`, the unaltered image) right.
    fn left_out_is_right(
        &self,
        image: usize,
        first: usize,
        options: TeachOptions,
        device: &Device,
    ) -> bool {
        let kept: Vec<usize> = (0..self.targets.len())
            .filter(|&row| self.groups[row] != image)
            .collect();
        let rows: Vec<f32> = kept
            .iter()
            .flat_map(|&row| self.features[row * self.dim..][..self.dim].iter().copied())
            .collect();
        let targets: Vec<usize> = kept.iter().map(|&row| self.targets[row]).collect();
        let (head, _) = train_head(&rows, self.dim, &targets, self.classes, options, device);
        head.predict(&self.features[first * self.dim..][..self.dim]) == self.targets[first]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated clusters in 3 dimensions, plus a useless constant one.
    fn toy() -> (Vec<f32>, Vec<usize>) {
        let mut features = Vec::new();
        let mut targets = Vec::new();
        for i in 0..12 {
            let class = i % 2;
            let sign = if class == 0 { 1.0 } else { -1.0 };
            let jitter = (i as f32 * 0.37).sin() * 0.3;
            features.extend([sign * 2.0 + jitter, 5.0 - jitter, sign * 0.5, 7.0]);
            targets.push(class);
        }
        (features, targets)
    }

    #[test]
    fn a_head_learns_separable_features_exactly_and_its_loss_falls() {
        let (features, targets) = toy();
        let device = Device::flex();
        let (head, losses) =
            train_head(&features, 4, &targets, 2, TeachOptions::default(), &device);
        assert!((losses[0] - 2f32.ln()).abs() < 1e-5, "a zero head: ln 2");
        assert!(losses.windows(2).all(|w| w[1] <= w[0] + 1e-6), "{losses:?}");
        assert!(*losses.last().unwrap() < 0.1);
        for (row, &target) in features.chunks(4).zip(&targets) {
            assert_eq!(head.predict(row), target);
        }
    }

    #[test]
    fn the_folded_head_equals_the_installed_one() {
        let (features, targets) = toy();
        let device = Device::flex();
        let (head, _) = train_head(&features, 4, &targets, 2, TeachOptions::default(), &device);
        let config = vit::ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 4,
            mlp_dim: 8,
            num_heads: 2,
            num_layers: 1,
            ..vit::ViTConfig::preset("Ti/16").unwrap()
        }
        .with_num_classes(5);
        let model = VisionTransformer::new(&config, &device).unwrap();
        let model = head.install(model, &device);
        assert_eq!(model.config().num_classes, 2);
        let image = Tensor::<4>::ones([1, 3, 8, 8], &device);
        let representation = model
            .representation(image.clone())
            .try_into_vec_as::<f32>()
            .unwrap();
        let logits = model.forward(image).try_into_vec_as::<f32>().unwrap();
        let expected = head.logits(&representation);
        assert!(
            logits
                .iter()
                .zip(&expected)
                .all(|(a, b)| (a - b).abs() < 1e-5),
            "{logits:?} vs {expected:?}"
        );
    }

    #[test]
    fn leave_one_out_tells_learnable_from_random_labels() {
        let (features, targets) = toy();
        let device = Device::flex();
        let options = TeachOptions {
            steps: 100,
            ..TeachOptions::default()
        };
        let groups: Vec<usize> = (0..12).collect();
        let accuracy = |targets: &[usize]| {
            let data = Taught {
                features: &features,
                dim: 4,
                targets,
                groups: &groups,
                classes: 2,
            };
            (0..12)
                .filter(|&image| data.left_out_is_right(image, image, options, &device))
                .count() as f64
                / 12.0
        };
        assert_eq!(accuracy(&targets), 1.0);
        // Labels that alternate within each cluster cannot be predicted from the rest.
        let scrambled: Vec<usize> = (0..12).map(|i| (i / 2) % 2).collect();
        assert!(accuracy(&scrambled) < 0.75);
    }

    #[test]
    fn variants_are_the_image_its_mirror_and_four_corner_crops() {
        let image = RgbImage {
            width: 10,
            height: 10,
            pixels: (0..300).map(|i| (i % 251) as u8).collect(),
        };
        let normalization = Normalization::REFERENCE;
        let all = variants(&image, 10, &normalization);
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[0],
            vit::preprocess::preprocess_rgb(&image, 10, &normalization)
        );
        // The mirror reverses every row of every channel.
        for (a, b) in all[0].data.chunks(10).zip(all[1].data.chunks(10)) {
            let mut reversed = a.to_vec();
            reversed.reverse();
            assert_eq!(reversed, b);
        }
        assert!(all[2..].iter().all(|crop| crop.data != all[0].data));
    }
}

#[cfg(test)]
mod shipped_model_tests {
    use super::*;
    use std::path::Path;

    /// The shipped model learns two CIFAR-10 classes from 5 real images each and tells
    /// 10 other images of them apart.
    #[test]
    fn the_shipped_model_learns_ship_and_frog_from_five_images_each() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let model_dir = root.join("web/model");
        let config = std::fs::read(model_dir.join("config.json")).unwrap();
        let weights = std::fs::read(model_dir.join("model.safetensors")).unwrap();
        let device = Device::flex();
        let checkpoint = vit::checkpoint::from_hf_bytes(&config, &weights).unwrap();
        let model = checkpoint.into_model(&device).unwrap();
        let size = model.config().image_size;
        let normalization = model.config().normalization;
        let read = |class: &str, index: usize| {
            std::fs::read(root.join(format!(
                "tests/data/cifar10-sample/test/{class}/{index:04}.jpg"
            )))
            .unwrap()
        };
        let classes = vec!["ship".to_string(), "frog".to_string()];
        let images: Vec<Vec<Vec<u8>>> = classes
            .iter()
            .map(|class| (0..5).map(|index| read(class, index)).collect())
            .collect();
        let started = std::time::Instant::now();
        let mut lesson = Lesson::new(&model, classes, &images, TeachOptions::default()).unwrap();
        let total = lesson.total();
        assert_eq!(total, 60usize.div_ceil(16) + 1 + 10);
        while !lesson.is_finished() {
            let before = lesson.done();
            lesson.step(&model, &device).unwrap();
            assert_eq!(lesson.done(), before + 1);
        }
        assert_eq!(lesson.done(), total);
        let (head, _, held_out) = lesson.finish().unwrap();
        let taught = started.elapsed();
        let mut correct = 0;
        for (class, name) in ["ship", "frog"].into_iter().enumerate() {
            for index in 5..10 {
                let input =
                    vit::preprocess::preprocess(&read(name, index), size, &normalization).unwrap();
                let row = features(&model, &[input], &device).unwrap();
                correct += usize::from(head.predict(&row) == class);
            }
        }
        eprintln!("taught in {taught:?}; held-out {correct}/10; leave-one-out {held_out}");
        assert!(correct >= 8, "{correct}/10");
    }
}
