//! The worker's job, free of browser APIs so that it is tested natively:
//! load a model in the export format, classify image bytes, roll out attention.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use vit::checkpoint::ByteSource;
use vit::prediction::{self, Ranked};
use vit::{Checkpoint, CheckpointError, ViTConfig, VisionTransformer};

use crate::image_input::{self, InputError};
use crate::protocol::{ModelInfo, Prediction};
use crate::rollout::{self, LayerAttention, RolloutError};
use crate::teach::Head;

/// Classes listed per image.
pub const TOP_K: usize = 5;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read the model: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the model has no classification head (num_classes is 0)")]
    NoHead,
}

/// Why an image could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot read the model output: {0}")]
    Backend(String),
    #[error("cannot compute the attention map: {0}")]
    Rollout(#[from] RolloutError),
}

/// A model ready to classify, with where it came from. It lives on the CPU (burn-flex),
/// where teaching and export read it; [`Classifier::to_device`] copies it to a GPU.
#[derive(Debug)]
pub struct LoadedModel {
    classifier: Classifier,
    source: String,
    description: Option<String>,
}

/// A model on the device that runs it, with its class names: what classifies an image.
/// Cheap to clone (the weights are shared), so a classification in flight keeps its own.
#[derive(Debug, Clone)]
pub struct Classifier {
    model: VisionTransformer,
    labels: Vec<String>,
    device: Device,
}

/// Top classes and attention map of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub top: Vec<Prediction>,
    pub rollout: Vec<f32>,
    pub grid: usize,
}

impl LoadedModel {
    /// Builds the model from the export format's two files.
    pub fn from_export(
        config_json: &[u8],
        weights: &dyn ByteSource,
        source: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let checkpoint = vit::checkpoint::from_hf_source(config_json, weights)?;
        Self::from_checkpoint(checkpoint, source, device)
    }

    /// Builds the model from a zip of the export format's files.
    pub fn from_zip(zip: &[u8], source: &str, device: &Device) -> Result<Self, ModelError> {
        let checkpoint = vit::checkpoint::export_zip::read_bytes(zip)?;
        Self::from_checkpoint(checkpoint, source, device)
    }

    /// Builds the model, moving the checkpoint's weights into it (the browser's
    /// 32-bit heap holds one copy, not two).
    pub fn from_checkpoint(
        checkpoint: Checkpoint,
        source: &str,
        device: &Device,
    ) -> Result<Self, ModelError> {
        if checkpoint.config.num_classes == 0 {
            return Err(ModelError::NoHead);
        }
        let labels = checkpoint.label_names();
        let description = checkpoint.description.clone();
        Ok(Self {
            classifier: Classifier {
                model: checkpoint.into_model(device)?,
                labels,
                device: device.clone(),
            },
            source: source.to_owned(),
            description,
        })
    }

    pub fn config(&self) -> &ViTConfig {
        self.classifier.model.config()
    }

    pub fn model(&self) -> &VisionTransformer {
        &self.classifier.model
    }

    pub fn device(&self) -> &Device {
        &self.classifier.device
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// This model with `head` for the taught `labels`: the classifier teaching made.
    pub fn taught(&self, head: &Head, labels: Vec<String>) -> Self {
        let description = format!(
            "{} classes taught in the page ({}) on the features of {}",
            labels.len(),
            labels.join(", "),
            self.description.as_deref().unwrap_or(&self.source)
        );
        let device = self.device().clone();
        Self {
            classifier: Classifier {
                model: head.install(self.model().clone(), &device),
                labels: labels.clone(),
                device,
            },
            source: format!("taught model ({})", labels.join(", ")),
            description: Some(description),
        }
    }

    /// The model as a zip of its export (config.json with the labels,
    /// model.safetensors, preprocessor_config.json), which `trainer predict` and
    /// "load your own model" read.
    pub fn export_zip(&self) -> Result<Vec<u8>, ModelError> {
        let labels = self.classifier.labels.clone();
        let mut checkpoint = Checkpoint::from_model(self.model(), Some(labels));
        checkpoint.description = self.description.clone();
        Ok(vit::checkpoint::export_zip::write(
            &checkpoint,
            vit::SaveOptions::default(),
        )?)
    }

    pub fn info(&self) -> ModelInfo {
        let config = self.config();
        ModelInfo {
            source: self.source.clone(),
            image_size: config.image_size,
            patch_size: config.patch_size,
            num_layers: config.num_layers,
            hidden_size: config.hidden_size,
            num_classes: config.num_classes,
            num_params: config.num_params(),
            description: self.description.clone(),
            memory_bytes: None,
        }
    }

    /// Classifies `image` on the CPU (see [`Classifier::classify`]).
    pub async fn classify(&self, image: &[u8]) -> Result<Outcome, ClassifyError> {
        self.classifier.classify(image).await
    }
}

impl Classifier {
    /// The same model and classes on `device`: the weights are copied there.
    pub fn to_device(&self, device: &Device) -> Self {
        Self {
            model: self.model.clone().to_device(device),
            labels: self.labels.clone(),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes and preprocesses `image` as `trainer predict` does, runs the
    /// model, and returns the top classes and the class-token rollout.
    ///
    /// Asynchronous because a GPU's results can only be read back so in the browser;
    /// on the CPU it never waits.
    pub async fn classify(&self, image: &[u8]) -> Result<Outcome, ClassifyError> {
        let config = self.model.config();
        let input = image_input::to_model_input(image, config.image_size, &config.normalization)?;
        let batch = prediction::batch(&[input], &self.device);
        let output = self.model.forward_with_attention(batch);
        let logits = read_f32(output.logits).await?;
        let probabilities = prediction::softmax(&logits);
        let top = prediction::top_k(&probabilities, &self.labels, TOP_K)
            .into_iter()
            .map(
                |Ranked {
                     label, probability, ..
                 }| Prediction { label, probability },
            )
            .collect();
        let mut maps = Vec::with_capacity(output.attentions.len());
        for attention in output.attentions {
            let [_, heads, queries, tokens] = attention.dims();
            maps.push(([heads, queries, tokens], read_f32(attention).await?));
        }
        let layers: Vec<LayerAttention<'_>> = maps
            .iter()
            .map(|([heads, queries, tokens], values)| LayerAttention {
                heads: *heads,
                queries: *queries,
                tokens: *tokens,
                probabilities: values,
            })
            .collect();
        let rollout = rollout::class_token_rollout(&layers, config.num_prefix_tokens())?;
        Ok(Outcome {
            top,
            rollout,
            grid: config.grid_size(),
        })
    }
}

async fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ClassifyError> {
    let backend = |error: &dyn std::fmt::Debug| ClassifyError::Backend(format!("{error:?}"));
    let data = tensor.into_data_async().await.map_err(|e| backend(&e))?;
    data.try_into_vec_as::<f32>().map_err(|e| backend(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use std::io::Cursor;
    use vit::SaveOptions;

    fn tiny_export() -> (Vec<u8>, Vec<u8>) {
        let config = ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 8,
            mlp_dim: 16,
            num_heads: 2,
            num_layers: 2,
            // Not the default, so that the tests see the model's own normalisation used.
            normalization: vit::preprocess::Normalization::IMAGENET,
            ..ViTConfig::preset("Ti/16").unwrap()
        }
        .with_num_classes(6);
        let device = Device::flex();
        let mut model = VisionTransformer::new(&config, &device).unwrap();
        // A non-zero head, so that the classes are not all tied.
        model.head = Some(
            burn::nn::LinearConfig::new(8, 6)
                .with_initializer(burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                })
                .init(&device),
        );
        let labels = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let mut checkpoint = Checkpoint::from_model(&model, Some(labels));
        checkpoint.description = Some("a tiny test model".into());
        checkpoint.to_hf_bytes(SaveOptions::default()).unwrap()
    }

    fn png() -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(10, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 90]));
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn classify_matches_the_model_crate_pipeline() {
        let (config, weights) = tiny_export();
        let device = Device::flex();
        let loaded = LoadedModel::from_export(&config, &weights, "test", &device).unwrap();
        let outcome = block_on(loaded.classify(&png())).unwrap();

        // What `trainer predict` computes: preprocess, logits, softmax, top-k.
        let checkpoint = vit::checkpoint::from_hf_bytes(&config, &weights).unwrap();
        let model = checkpoint.build(&device).unwrap();
        assert_eq!(
            checkpoint.config.normalization,
            vit::preprocess::Normalization::IMAGENET
        );
        let input =
            vit::preprocess::preprocess(&png(), 8, &checkpoint.config.normalization).unwrap();
        let logits = &prediction::logits(&model, &[input], &device)[0];
        let expected = prediction::top_k(
            &prediction::softmax(logits),
            &checkpoint.label_names(),
            TOP_K,
        );

        assert_eq!(outcome.top.len(), TOP_K);
        for (got, want) in outcome.top.iter().zip(&expected) {
            assert_eq!(got.label, want.label);
            assert!((got.probability - want.probability).abs() < 1e-6);
        }
        assert_eq!(outcome.grid, 2);
        assert_eq!(outcome.rollout.len(), 4);
        // Rollout rows are stochastic: the class token's weights on patches sum below 1.
        let total: f32 = outcome.rollout.iter().sum();
        assert!(total > 0.0 && total < 1.0, "{total}");
        assert_eq!(loaded.info().num_classes, 6);
        assert_eq!(
            loaded.info().description.as_deref(),
            Some("a tiny test model")
        );
    }

    #[test]
    fn a_taught_model_exports_a_zip_that_classifies_as_in_the_page() {
        let (config, weights) = tiny_export();
        let device = Device::flex();
        let loaded = LoadedModel::from_export(&config, &weights, "test", &device).unwrap();
        let head = Head {
            weight: (0..16).map(|i| (i as f32 * 0.7).sin()).collect(),
            bias: vec![0.1, -0.1],
            dim: 8,
            classes: 2,
        };
        let taught = loaded.taught(&head, vec!["ship".into(), "frog".into()]);
        assert_eq!(taught.info().num_classes, 2);
        assert!(taught.info().source.contains("ship, frog"));
        let in_page = block_on(taught.classify(&png())).unwrap();
        let zipped = taught.export_zip().unwrap();
        let reloaded = LoadedModel::from_zip(&zipped, "zip", &device).unwrap();
        let from_zip = block_on(reloaded.classify(&png())).unwrap();
        assert_eq!(from_zip.top.len(), 2);
        for (a, b) in in_page.top.iter().zip(&from_zip.top) {
            assert_eq!(a.label, b.label);
            assert!((a.probability - b.probability).abs() < 1e-6);
        }
        // The features were the original model's: the taught head sees them.
        let representation = crate::teach::features(
            loaded.model(),
            &[image_input::to_model_input(&png(), 8, &loaded.config().normalization).unwrap()],
            &device,
        )
        .unwrap();
        let probabilities = prediction::softmax(&head.logits(&representation));
        let ship = in_page.top.iter().find(|p| p.label == "ship").unwrap();
        assert!((ship.probability - probabilities[0]).abs() < 1e-5);
    }

    #[test]
    fn corrupt_model_and_bad_image_give_errors() {
        let (config, weights) = tiny_export();
        let device = Device::flex();
        let truncated = &weights[..weights.len() / 2];
        assert!(LoadedModel::from_export(&config, &truncated, "test", &device).is_err());
        assert!(LoadedModel::from_export(b"{not json", &weights, "test", &device).is_err());
        let loaded = LoadedModel::from_export(&config, &weights, "test", &device).unwrap();
        assert!(matches!(
            block_on(loaded.classify(b"plain text")),
            Err(ClassifyError::Input(InputError::NotAnImage))
        ));
    }
}
