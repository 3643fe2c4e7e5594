//! Our model against the reference implementations, on the committed fixtures
//! made by `tests/fixtures/generate.py` (timm, transformers, scipy, torch).
//! Tolerance: 1e-4 max abs on logits in f32 (the references ran in f64).

use burn::tensor::{Device, Tensor, TensorData};
use vit::checkpoint::{self, Array, LoadOptions, posemb};
use vit::{Activation, Checkpoint, Classifier};
use vit_tests::{devices, fixture, max_abs_diff, read_tensors};

const TOLERANCE: f32 = 1e-4;

fn run(checkpoint: &Checkpoint, input: &Array, device: &Device) -> Vec<f32> {
    let model = checkpoint.build(device).expect("model builds");
    let images = Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), input.shape.clone()),
        device,
    );
    model.forward(images).try_into_vec_as::<f32>().unwrap()
}

fn assert_matches_reference(case: &str, checkpoint: &Checkpoint, output: &str) {
    let io = read_tensors(&format!("{case}.io.safetensors"));
    for (name, device) in devices() {
        let ours = run(checkpoint, &io["input"], &device);
        let diff = max_abs_diff(&ours, &io[output].data);
        assert!(
            diff < TOLERANCE,
            "{case} on {name}: max abs diff {diff} to the reference"
        );
    }
}

fn load(path: &str) -> Checkpoint {
    checkpoint::load(&fixture(path), &LoadOptions::default())
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[test]
fn google_npz_token_classifier_matches_timm() {
    let checkpoint = load("google_token.npz");
    let config = &checkpoint.config;
    assert_eq!(
        (
            config.image_size,
            config.patch_size,
            config.hidden_size,
            config.num_heads,
            config.mlp_dim
        ),
        (32, 8, 24, 3, 40)
    );
    assert_eq!((config.num_layers, config.num_classes), (2, 7));
    assert_eq!(config.activation, Activation::GeluTanh);
    assert_eq!(config.layer_norm_eps, 1e-6);
    assert!(
        checkpoint.unexpected.is_empty(),
        "{:?}",
        checkpoint.unexpected
    );
    assert_matches_reference("google_token", &checkpoint, "logits");
}

#[test]
fn google_npz_with_pre_logits_matches_reference() {
    let checkpoint = load("google_token_prelogits.npz");
    assert_eq!(checkpoint.config.representation_size, Some(16));
    assert_eq!(checkpoint.config.num_heads, 4);
    assert_matches_reference("google_token_prelogits", &checkpoint, "logits");
}

#[test]
fn google_npz_gap_classifier_matches_timm() {
    let checkpoint = load("google_gap.npz");
    assert_eq!(checkpoint.config.classifier, Classifier::Gap);
    assert_eq!(
        (checkpoint.config.image_size, checkpoint.config.num_classes),
        (24, 3)
    );
    assert_matches_reference("google_gap", &checkpoint, "logits");
}

#[test]
fn google_npz_linen_numbering_and_float16() {
    let linen = load("google_token_linen.npz");
    assert_matches_reference("google_token_linen", &linen, "logits");
    let half = load("google_token_f16.npz");
    assert_matches_reference("google_token_f16", &half, "logits");
}

#[test]
fn hugging_face_classifier_matches_transformers() {
    let checkpoint = load("hf_vit_cls");
    assert_eq!(checkpoint.config.activation, Activation::GeluExact);
    assert_eq!(checkpoint.config.layer_norm_eps, 1e-12);
    assert_eq!(checkpoint.config.num_heads, 4);
    assert_eq!(
        checkpoint.labels.as_deref(),
        Some(&["apple", "bus", "cloud", "dune", "eel", "fern"].map(String::from)[..])
    );
    assert_matches_reference("hf_vit_cls", &checkpoint, "logits");
}

#[test]
fn hugging_face_pooler_is_pre_logits() {
    let checkpoint = load("hf_vit_pooler");
    assert_eq!(checkpoint.config.representation_size, Some(24));
    assert_eq!(checkpoint.config.num_classes, 0);
    assert_eq!(checkpoint.config.activation, Activation::GeluTanh);
    assert_matches_reference("hf_vit_pooler", &checkpoint, "pooler_output");
}

#[test]
fn timm_safetensors_matches_timm_given_the_head_count() {
    let path = fixture("timm_vit.safetensors");
    let error = checkpoint::load(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("attention heads"), "{error}");
    let checkpoint = checkpoint::load(&path, &LoadOptions { num_heads: Some(3) }).unwrap();
    assert_eq!(checkpoint.config.activation, Activation::GeluExact);
    assert_matches_reference("timm_vit", &checkpoint, "logits");
}

#[test]
fn attention_entry_point_gives_the_same_logits_and_probabilities() {
    let checkpoint = load("google_token.npz");
    let io = read_tensors("google_token.io.safetensors");
    let device = Device::flex();
    let model = checkpoint.build(&device).unwrap();
    let input = &io["input"];
    let images = Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), input.shape.clone()),
        &device,
    );
    let output = model.forward_with_attention(images);
    let logits = output.logits.try_into_vec_as::<f32>().unwrap();
    assert!(max_abs_diff(&logits, &io["logits"].data) < TOLERANCE);
    assert_eq!(output.attentions.len(), 2);
    // The last layer's holds the class token's row alone (all that rollout reads).
    for (attention, queries) in output.attentions.into_iter().zip([17, 1]) {
        assert_eq!(attention.dims(), [2, 3, queries, 17]);
        let row_sums = attention.sum_dim(3).try_into_vec_as::<f32>().unwrap();
        assert!(row_sums.iter().all(|sum| (sum - 1.0).abs() < 1e-5));
    }
}

#[test]
fn position_embedding_resize_matches_scipy_zoom() {
    let tensors = read_tensors("posemb_resize.safetensors");
    for (input, output, prefix, grid) in [
        ("token_in", "token_out_6", 1, 6),
        ("token_in", "token_out_3", 1, 3),
        ("token_in", "token_out_24", 1, 24),
        ("gap_in", "gap_out_7", 0, 7),
        ("gap_in", "gap_out_2", 0, 2),
    ] {
        let resized = posemb::resize_pos_embedding(&tensors[input], prefix, grid).unwrap();
        assert_eq!(resized.shape, tensors[output].shape, "{output}");
        let diff = max_abs_diff(&resized.data, &tensors[output].data);
        assert!(diff < 1e-6, "{output}: max abs diff {diff}");
    }
}

#[test]
fn preprocessing_matches_torch_bilinear() {
    let bytes = std::fs::read(fixture("preprocess_image.png")).unwrap();
    let tensors = read_tensors("preprocess.safetensors");
    let decoded = vit::preprocess::decode_rgb(&bytes).unwrap();
    assert_eq!((decoded.width, decoded.height), (13, 9));
    // The PNG decodes to the pixels torch read (channel planes, normalised).
    let original: Vec<f32> = (0..3)
        .flat_map(|c| decoded.pixels[c..].iter().step_by(3))
        .map(|&p| (f32::from(p) - 127.5) / 127.5)
        .collect();
    assert!(max_abs_diff(&original, &tensors["original"].data) < 1e-6);
    for (name, size) in [("resized_32", 32), ("resized_5", 5)] {
        let ours =
            vit::preprocess::preprocess(&bytes, size, &vit::preprocess::Normalization::REFERENCE)
                .unwrap();
        let diff = max_abs_diff(&ours.data, &tensors[name].data);
        assert!(diff < 1e-5, "{name}: max abs diff {diff}");
    }
}

#[test]
fn preprocessor_config_normalisation_matches_transformers() {
    // ImageNet's mean and standard deviation, from preprocessor_config.json: the input
    // equals transformers' ViTImageProcessor output, the logits its model's.
    let checkpoint = load("hf_vit_imagenet");
    assert_eq!(
        checkpoint.config.normalization,
        vit::preprocess::Normalization::IMAGENET
    );
    let io = read_tensors("hf_vit_imagenet.io.safetensors");
    let bytes = std::fs::read(fixture("hf_vit_imagenet.png")).unwrap();
    let input = vit::preprocess::preprocess(&bytes, 32, &checkpoint.config.normalization).unwrap();
    let diff = max_abs_diff(&input.data, &io["input"].data);
    assert!(diff < 1e-5, "input: max abs diff {diff}");
    assert_matches_reference("hf_vit_imagenet", &checkpoint, "logits");
}
