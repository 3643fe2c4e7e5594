//! Model configurations: one JSON-serialisable description of a ViT, and the
//! presets of the reference `vit_jax/configs/models.py`.

use serde::{Deserialize, Serialize};

use crate::preprocess::Normalization;

/// How the encoder output becomes one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classifier {
    /// A learned class token is prepended; its final state is the representation.
    Token,
    /// Global average pooling over all tokens (no class token).
    Gap,
}

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: flax `nn.gelu`, the reference default.
    GeluTanh,
    /// `x·Φ(x)` with the exact error function: PyTorch `nn.GELU()`, used by HF and timm ports.
    GeluExact,
}

/// Everything needed to build a Vision Transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    /// 0 means no head: the model outputs its representation.
    pub num_classes: usize,
    pub classifier: Classifier,
    /// Size of the optional pre-logits layer (Dense + tanh).
    #[serde(default)]
    pub representation_size: Option<usize>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    /// Stochastic depth (timm's `drop_path_rate`): in training, each block's residual
    /// branches are dropped per example with a rate rising linearly from 0 in the first
    /// block to this in the last. 0 for every reference model.
    #[serde(default)]
    pub drop_path: f64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// How images are normalised for this model: `image_mean` and `image_std` in
    /// JSON, `(x − 127.5) / 127.5` (both 0.5) when absent, as Google's models.
    #[serde(flatten)]
    pub normalization: Normalization,
}

fn default_layer_norm_eps() -> f64 {
    1e-6
}

fn default_activation() -> Activation {
    Activation::GeluTanh
}

/// A configuration that cannot describe a working model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("unknown model preset `{0}`; known presets: {known}", known = PRESET_NAMES.join(", "))]
    UnknownPreset(String),
    #[error("invalid model configuration: {0}")]
    Invalid(String),
    #[error("cannot read the model config {path}: {message}")]
    File { path: String, message: String },
}

/// Limits on a configuration, so that a hostile or mistaken file (or option) gets an error
/// naming the limit instead of an allocation that cannot succeed. Each is far above any
/// published ViT (ViT-22B: width 6144, MLP 24576, 48 layers; 518 px at most).
pub mod limits {
    /// Largest input side in pixels.
    pub const IMAGE_SIZE: usize = 4096;
    /// Most tokens (patches plus the class token): a 256 × 256 grid.
    pub const TOKENS: usize = 256 * 256 + 1;
    /// Widest hidden, MLP and pre-logits layers.
    pub const WIDTH: usize = 65_536;
    pub const LAYERS: usize = 1024;
    pub const CLASSES: usize = 1_000_000;
    /// Most parameters (ViT-22B has 21.7 billion); on 32-bit targets (wasm), what a
    /// 32-bit index can count.
    pub const PARAMETERS: u64 = if usize::BITS < 64 {
        u32::MAX as u64
    } else {
        25_000_000_000
    };
}

/// Names accepted by [`ViTConfig::preset`].
pub const PRESET_NAMES: &[&str] = &[
    "Ti/16", "S/16", "B/16", "B/32", "B/8", "L/16", "L/32", "H/14", "Lite-7/4",
];

impl ViTConfig {
    /// A preset of the reference (`configs/models.py`) at 224 px with 1000 classes, or
    /// `Lite-7/4`, the ViT-Lite of "Escaping the Big Data Paradigm with Compact
    /// Transformers" (Hassani et al.) for small images trained from scratch: 7 layers of
    /// width 256, 4 heads, MLP 512, 4 px patches (set the resolution to 32 for CIFAR).
    /// Accepts `B/16`, `b16`, `ViT-B_16`, `vit-b16` and similar spellings.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let key: String = name
            .trim()
            .to_ascii_lowercase()
            .trim_start_matches("vit")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let (hidden_size, mlp_dim, num_heads, num_layers, patch_size, dropout) = match key.as_str()
        {
            "ti16" => (192, 768, 3, 12, 16, 0.0),
            "s16" => (384, 1536, 6, 12, 16, 0.0),
            "b16" => (768, 3072, 12, 12, 16, 0.0),
            "b32" => (768, 3072, 12, 12, 32, 0.0),
            "b8" => (768, 3072, 12, 12, 8, 0.0),
            "l16" => (1024, 4096, 16, 24, 16, 0.1),
            "l32" => (1024, 4096, 16, 24, 32, 0.0),
            "h14" => (1280, 5120, 16, 32, 14, 0.1),
            "lite74" => (256, 512, 4, 7, 4, 0.0),
            _ => return Err(ConfigError::UnknownPreset(name.to_string())),
        };
        Ok(Self {
            image_size: 224,
            patch_size,
            hidden_size,
            mlp_dim,
            num_heads,
            num_layers,
            num_classes: 1000,
            classifier: Classifier::Token,
            representation_size: None,
            dropout,
            attention_dropout: 0.0,
            drop_path: 0.0,
            layer_norm_eps: 1e-6,
            activation: Activation::GeluTanh,
            normalization: Normalization::REFERENCE,
        })
    }

    /// A model as `--model` names it: a preset (`B/16`), or a JSON file holding our
    /// config, an export's `config.json` or a Hugging Face ViT `config.json`.
    pub fn from_name_or_file(model: &str) -> Result<Self, ConfigError> {
        let path = std::path::Path::new(model);
        if path.extension().is_none_or(|ext| ext != "json") {
            return Self::preset(model);
        }
        let file_error = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read(path).map_err(|error| file_error(error.to_string()))?;
        let json: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|error| file_error(format!("not valid JSON: {error}")))?;
        Self::from_json(&json).map_err(|error| file_error(error.to_string()))
    }

    /// Our config as JSON, or a Hugging Face ViT `config.json` (an export's carries our
    /// config inside). From a plain Hugging Face config, whose weights would say how many
    /// classes there are, the class count is 0: the caller sets it.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, ConfigError> {
        if json.get("model_type").is_some() {
            return crate::checkpoint::hf::read_config(json, |_| None, "vit.").map_err(|error| {
                match error {
                    crate::checkpoint::CheckpointError::Config(error) => error,
                    other => ConfigError::Invalid(other.to_string()),
                }
            });
        }
        let config: Self = serde_json::from_value(json.clone())
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn with_image_size(mut self, image_size: usize) -> Self {
        self.image_size = image_size;
        self
    }

    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens the encoder sees: the patches plus the class token, if any.
    pub fn num_tokens(&self) -> usize {
        self.grid_size() * self.grid_size() + self.num_prefix_tokens()
    }

    /// 1 with a class token, 0 with global average pooling.
    pub fn num_prefix_tokens(&self) -> usize {
        match self.classifier {
            Classifier::Token => 1,
            Classifier::Gap => 0,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// The stochastic-depth rate of block `layer` (timm's linear rule: 0 for the first
    /// block, `drop_path` for the last).
    pub fn drop_path_at(&self, layer: usize) -> f64 {
        Self::stochastic_depth(self.drop_path, self.num_layers, layer)
    }

    /// The rule of [`drop_path_at`](Self::drop_path_at) for a rate and a depth.
    pub fn stochastic_depth(rate: f64, num_layers: usize, layer: usize) -> f64 {
        if num_layers <= 1 {
            rate
        } else {
            rate * layer as f64 / (num_layers - 1) as f64
        }
    }

    /// Width of the vector the head sees.
    pub fn representation_width(&self) -> usize {
        self.representation_size.unwrap_or(self.hidden_size)
    }

    /// Checks the numbers fit together, so that building the model cannot panic.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError::Invalid(message));
        let sizes = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("hidden_size", self.hidden_size),
            ("mlp_dim", self.mlp_dim),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return fail(format!("{name} must be positive"));
        }
        let bounded = [
            ("image_size", self.image_size, limits::IMAGE_SIZE, "px"),
            ("hidden_size", self.hidden_size, limits::WIDTH, ""),
            ("mlp_dim", self.mlp_dim, limits::WIDTH, ""),
            ("num_heads", self.num_heads, limits::WIDTH, ""),
            ("num_layers", self.num_layers, limits::LAYERS, ""),
            ("num_classes", self.num_classes, limits::CLASSES, ""),
            (
                "representation_size",
                self.representation_size.unwrap_or(0),
                limits::WIDTH,
                "",
            ),
        ];
        if let Some((name, value, limit, unit)) =
            bounded.iter().find(|(_, value, limit, _)| value > limit)
        {
            return fail(format!(
                "{name} {value} is above the limit of {limit}{unit}"
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return fail(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_tokens() > limits::TOKENS {
            return fail(format!(
                "{} tokens ({} px in {} px patches) is above the limit of {}",
                self.num_tokens(),
                self.image_size,
                self.patch_size,
                limits::TOKENS
            ));
        }
        if self.param_count() > limits::PARAMETERS {
            return fail(format!(
                "{} parameters is above the limit of {}",
                self.param_count(),
                limits::PARAMETERS
            ));
        }
        if self.representation_size == Some(0) {
            return fail("representation_size must be positive when given".into());
        }
        for (name, rate) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("drop_path", self.drop_path),
        ] {
            if !(0.0..1.0).contains(&rate) {
                return fail(format!("{name} must be in [0, 1), got {rate}"));
            }
        }
        if !self.normalization.is_valid() {
            return fail(format!(
                "image_mean must be finite and image_std positive, got {:?} and {:?}",
                self.normalization.mean, self.normalization.std
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return fail(format!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Number of trainable parameters, counted as the reference counts them.
    pub fn num_params(&self) -> usize {
        usize::try_from(self.param_count()).unwrap_or(usize::MAX)
    }

    /// [`Self::num_params`] in 64 bits, so that it cannot overflow on 32-bit targets
    /// (wasm) for any configuration within the other limits.
    fn param_count(&self) -> u64 {
        let wide = |value: usize| value as u64;
        let d = wide(self.hidden_size);
        let p = wide(self.patch_size);
        let m = wide(self.mlp_dim);
        let embedding = p * p * 3 * d + d;
        let cls = wide(self.num_prefix_tokens()) * d;
        let pos_embedding = wide(self.num_tokens()) * d;
        let layer_norm = 2 * d;
        let attention = 4 * (d * d + d);
        let mlp = d * m + m + m * d + d;
        let block = 2 * layer_norm + attention + mlp;
        let pre_logits = self
            .representation_size
            .map_or(0, |r| d * wide(r) + wide(r));
        let classes = wide(self.num_classes);
        let head = if classes > 0 {
            wide(self.representation_width()) * classes + classes
        } else {
            0
        };
        embedding
            + cls
            + pos_embedding
            + wide(self.num_layers) * block
            + layer_norm
            + pre_logits
            + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_equal_the_reference() {
        // Published counts at 224 px with 1000 classes (the reference prints B/16's; timm lists the others).
        let b16 = ViTConfig::preset("B/16").unwrap();
        assert_eq!(b16.num_params(), 86_567_656);
        let ti16 = ViTConfig::preset("Ti/16").unwrap();
        assert_eq!(ti16.num_params(), 5_717_416);
        let s16 = ViTConfig::preset("S/16").unwrap();
        assert_eq!(s16.num_params(), 22_050_664);
        let l16 = ViTConfig::preset("L/16").unwrap();
        assert_eq!(l16.num_params(), 304_326_632);
        let b32 = ViTConfig::preset("B/32").unwrap();
        assert_eq!(b32.num_params(), 88_224_232);
    }

    #[test]
    fn vit_lite_has_the_papers_size() {
        // Hassani et al. list ViT-Lite-7/4 at 3.72 M parameters on CIFAR-10.
        let lite = ViTConfig::preset("Lite-7/4")
            .unwrap()
            .with_image_size(32)
            .with_num_classes(10);
        assert_eq!(lite.num_params(), 3_722_250);
        assert_eq!(lite.num_tokens(), 65);
    }

    #[test]
    fn presets_match_models_py() {
        let h14 = ViTConfig::preset("H/14").unwrap();
        assert_eq!(
            (
                h14.hidden_size,
                h14.mlp_dim,
                h14.num_heads,
                h14.num_layers,
                h14.patch_size
            ),
            (1280, 5120, 16, 32, 14)
        );
        assert_eq!(h14.dropout, 0.1);
        assert_eq!(ViTConfig::preset("L/16").unwrap().dropout, 0.1);
        assert_eq!(ViTConfig::preset("L/32").unwrap().dropout, 0.0);
        assert_eq!(
            ViTConfig::preset("ViT-B_16").unwrap(),
            ViTConfig::preset("b16").unwrap()
        );
        assert!(matches!(
            ViTConfig::preset("B/17"),
            Err(ConfigError::UnknownPreset(_))
        ));
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let config = ViTConfig::preset("S/16").unwrap().with_num_classes(10);
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"activation\":\"gelu_tanh\""));
        assert!(json.contains("\"classifier\":\"token\""));
        let back: ViTConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        let minimal = r#"{"image_size":32,"patch_size":8,"hidden_size":24,"mlp_dim":40,
            "num_heads":3,"num_layers":2,"num_classes":7,"classifier":"gap"}"#;
        let parsed: ViTConfig = serde_json::from_str(minimal).unwrap();
        assert_eq!(parsed.layer_norm_eps, 1e-6);
        assert_eq!(parsed.activation, Activation::GeluTanh);
        assert_eq!(parsed.num_tokens(), 16);
    }

    #[test]
    fn from_name_or_file_reads_presets_our_json_and_hf_config_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = ViTConfig {
            image_size: 8,
            patch_size: 4,
            hidden_size: 8,
            mlp_dim: 16,
            num_heads: 2,
            num_layers: 1,
            num_classes: 3,
            normalization: Normalization::IMAGENET,
            ..ViTConfig::preset("Ti/16").unwrap()
        };
        let write = |name: &str, json: serde_json::Value| {
            let path = dir.path().join(name);
            std::fs::write(&path, json.to_string()).expect("write config");
            path.to_string_lossy().into_owned()
        };
        let ours = write("vit.json", serde_json::to_value(&config).unwrap());
        assert_eq!(ViTConfig::from_name_or_file(&ours).unwrap(), config);
        // An export's config.json carries our config beside the HF fields.
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let mut exported = crate::checkpoint::hf::write_config(&config, &labels, None);
        let from_export = write("export.json", exported.clone());
        assert_eq!(ViTConfig::from_name_or_file(&from_export).unwrap(), config);
        // A plain HF config: the architecture, with the class count left to the caller
        // (and the normalisation to preprocessor_config.json, which is not read here).
        exported
            .as_object_mut()
            .unwrap()
            .remove(crate::checkpoint::hf::OUR_CONFIG_FIELD);
        let hf = ViTConfig::from_name_or_file(&write("hf.json", exported)).unwrap();
        assert_eq!(
            ViTConfig {
                normalization: Normalization::IMAGENET,
                ..hf.with_num_classes(3)
            },
            config
        );
        assert_eq!(
            ViTConfig::from_name_or_file("B/16").unwrap().hidden_size,
            768
        );
        let broken = write("broken.json", serde_json::json!({"hidden_size": 8}));
        let error = ViTConfig::from_name_or_file(&broken)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("broken.json") && error.contains("image_size"),
            "{error}"
        );
        let missing = ViTConfig::from_name_or_file("no/such/file.json").unwrap_err();
        assert!(matches!(missing, ConfigError::File { .. }), "{missing}");
    }

    #[test]
    fn validate_names_the_limit_before_anything_is_allocated() {
        let b16 = ViTConfig::preset("B/16").unwrap();
        for (config, words) in [
            (
                b16.clone().with_image_size(100_000 * 16),
                "image_size 1600000 is above the limit of 4096px",
            ),
            (
                ViTConfig {
                    patch_size: 8,
                    ..b16.clone()
                }
                .with_image_size(4096),
                "262145 tokens (4096 px in 8 px patches) is above the limit of 65537",
            ),
            (
                ViTConfig {
                    num_layers: 1_000_000,
                    ..b16.clone()
                },
                "num_layers 1000000 is above the limit of 1024",
            ),
            (
                ViTConfig {
                    hidden_size: 1 << 20,
                    num_heads: 1,
                    ..b16.clone()
                },
                "hidden_size 1048576",
            ),
            (
                ViTConfig {
                    num_layers: 1024,
                    mlp_dim: 65_536,
                    ..b16.clone()
                },
                "parameters is above the limit",
            ),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(words), "{error}");
        }
        // Every preset fits, at any resolution up to 2048 px with 16 px patches.
        for name in PRESET_NAMES {
            let config = ViTConfig::preset(name).unwrap();
            assert!(config.validate().is_ok(), "{name}");
        }
        assert!(b16.with_image_size(2048).validate().is_ok());
    }

    #[test]
    fn validate_rejects_inconsistent_sizes() {
        let mut config = ViTConfig::preset("Ti/16").unwrap();
        assert!(config.validate().is_ok());
        config.image_size = 225;
        assert!(config.validate().is_err());
        config.image_size = 224;
        config.num_heads = 5;
        assert!(config.validate().is_err());
        config.num_heads = 3;
        config.dropout = 1.0;
        assert!(config.validate().is_err());
    }
}
