//! Export round trips, fine-tuning surgery, and what happens with bad files.

use std::io::Cursor;

use burn::tensor::{Device, Tensor, TensorData};
use vit::checkpoint::{self, Array, CheckpointError, LoadOptions, npz, params};
use vit::{Checkpoint, SaveOptions, ViTConfig};
use vit_tests::{fixture, max_abs_diff, read_tensors};

fn load(path: &str) -> Checkpoint {
    checkpoint::load(&fixture(path), &LoadOptions::default())
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn logits(checkpoint: &Checkpoint, input: &Array) -> Vec<f32> {
    let device = Device::flex();
    let model = checkpoint.build(&device).unwrap();
    let images = Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), input.shape.clone()),
        &device,
    );
    model.forward(images).try_into_vec_as::<f32>().unwrap()
}

#[test]
fn export_then_import_gives_identical_logits_for_every_kind_of_model() {
    for case in ["google_token", "google_token_prelogits", "google_gap"] {
        let original = load(&format!("{case}.npz"));
        let input = &read_tensors(&format!("{case}.io.safetensors"))["input"];
        let dir = tempfile::tempdir().unwrap();
        original.save(dir.path(), SaveOptions::default()).unwrap();
        let reloaded = checkpoint::load(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(reloaded.config, original.config, "{case}");
        assert_eq!(logits(&reloaded, input), logits(&original, input), "{case}");
    }
}

#[test]
fn export_is_labelled_for_transformers_only_when_it_computes_the_same_function() {
    let config_of = |case: &str| {
        let dir = tempfile::tempdir().unwrap();
        load(case).save(dir.path(), SaveOptions::default()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let token = config_of("google_token.npz");
    assert_eq!(token["architectures"][0], "ViTForImageClassification");
    assert_eq!(token["hidden_act"], "gelu_pytorch_tanh");
    assert_eq!(token["layer_norm_eps"], 1e-6);
    assert_eq!(token["id2label"]["6"], "6");
    for case in ["google_gap.npz", "google_token_prelogits.npz"] {
        let config = config_of(case);
        assert_ne!(
            config["architectures"][0], "ViTForImageClassification",
            "{case}"
        );
        assert_ne!(config["model_type"], "vit", "{case}");
    }
    let hf = config_of("hf_vit_cls");
    assert_eq!(hf["hidden_act"], "gelu");
    assert_eq!(hf["id2label"]["5"], "fern");
}

#[test]
fn export_loaded_by_transformers_gave_our_logits() {
    // Written by `generate.py export-check`, which loads our export with transformers.
    for case in ["google_token", "hf_vit_cls"] {
        let name = format!("{case}.export_transformers.safetensors");
        if !fixture(&name).exists() {
            panic!("missing fixture {name}: run `python3 tests/fixtures/generate.py export-check`");
        }
        let theirs = &read_tensors(&name)["logits"];
        let path = if case == "hf_vit_cls" {
            case.to_string()
        } else {
            format!("{case}.npz")
        };
        let original = load(&path);
        let dir = tempfile::tempdir().unwrap();
        original.save(dir.path(), SaveOptions::default()).unwrap();
        let reloaded = checkpoint::load(dir.path(), &LoadOptions::default()).unwrap();
        let input = &read_tensors(&format!("{case}.io.safetensors"))["input"];
        let diff = max_abs_diff(&logits(&reloaded, input), &theirs.data);
        assert!(diff < 1e-4, "{case}: transformers and we differ by {diff}");
    }
}

#[test]
fn float16_export_halves_the_file_and_stays_close() {
    let original = load("google_token.npz");
    let input = &read_tensors("google_token.io.safetensors")["input"];
    let (_, full) = original
        .to_hf_bytes(SaveOptions { float16: false })
        .unwrap();
    let (config, half) = original.to_hf_bytes(SaveOptions { float16: true }).unwrap();
    assert!(
        half.len() < full.len() * 6 / 10,
        "{} vs {}",
        half.len(),
        full.len()
    );
    let reloaded = checkpoint::from_hf_bytes(&config, &half).unwrap();
    let reference = logits(&original, input);
    let diff = max_abs_diff(&logits(&reloaded, input), &reference);
    // float16 keeps ~3 significant digits; the fixture's weights are large, so compare relatively.
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        diff > 0.0 && diff < 1e-2 * scale,
        "float16 changed logits by {diff} (scale {scale})"
    );
}

#[test]
fn description_is_kept_by_export_and_resolution_change_and_dropped_by_fine_tuning() {
    let mut checkpoint = load("google_token.npz");
    assert_eq!(checkpoint.description, None);
    let text = "ViT trained on CIFAR-10 for 4 steps; test accuracy 12.50%";
    checkpoint.description = Some(text.to_owned());
    let dir = tempfile::tempdir().unwrap();
    checkpoint.save(dir.path(), SaveOptions::default()).unwrap();
    let reloaded = checkpoint::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.description.as_deref(), Some(text));
    let resized = reloaded.clone().at_resolution(48).unwrap();
    assert_eq!(resized.description.as_deref(), Some(text));
    let target = reloaded.config.clone().with_num_classes(3);
    assert_eq!(reloaded.for_finetuning(&target).unwrap().description, None);
}

#[test]
fn finetuning_surgery_gives_a_zero_head_and_resized_positions() {
    let pretrained = load("google_token_prelogits.npz");
    let mut target = pretrained
        .config
        .clone()
        .with_num_classes(10)
        .with_image_size(48);
    target.representation_size = None;
    let adapted = pretrained.clone().for_finetuning(&target).unwrap();
    assert!(!adapted.params.contains_key(params::PRE_LOGITS_KERNEL));
    assert_eq!(adapted.params[params::HEAD_KERNEL].shape, vec![32, 10]);
    assert!(
        adapted.params[params::HEAD_KERNEL]
            .data
            .iter()
            .all(|&v| v == 0.0)
    );
    assert_eq!(
        adapted.params[params::POS_EMBEDDING].shape,
        vec![1, 1 + 36, 32]
    );
    // A zero head: every class equally likely, loss ln(10) on the first step.
    let device = Device::flex();
    let model = adapted.build(&device).unwrap();
    let out = model.forward(Tensor::<4>::ones([1, 3, 48, 48], &device));
    assert!(
        out.try_into_vec_as::<f32>()
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
    // Another backbone is refused, naming the field.
    let mut wrong = target.clone();
    wrong.num_layers = 3;
    let error = pretrained.for_finetuning(&wrong).unwrap_err().to_string();
    assert!(error.contains("num_layers"), "{error}");
}

#[test]
fn inference_at_another_resolution_keeps_the_head() {
    let checkpoint = load("google_token.npz").at_resolution(48).unwrap();
    assert_eq!(checkpoint.config.image_size, 48);
    assert_eq!(checkpoint.config.num_classes, 7);
    let model = checkpoint.build(&Device::flex()).unwrap();
    let out = model.forward(Tensor::<4>::zeros([1, 3, 48, 48], &Device::flex()));
    assert_eq!(out.dims(), [1, 7]);
}

#[test]
fn new_model_has_the_reference_initialisation() {
    let config = ViTConfig::preset("Ti/16")
        .unwrap()
        .with_image_size(32)
        .with_num_classes(10);
    let model = vit::VisionTransformer::new(&config, &Device::flex()).unwrap();
    let params = vit::checkpoint::weights::model_params(&model);
    let count: usize = params.values().map(|array| array.data.len()).sum();
    assert_eq!(count, config.num_params());
    assert!(params[params::HEAD_KERNEL].data.iter().all(|&v| v == 0.0));
    assert!(params[params::CLS].data.iter().all(|&v| v == 0.0));
    let pos = &params[params::POS_EMBEDDING].data;
    let std = (pos.iter().map(|v| v * v).sum::<f32>() / pos.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.003, "pos embedding std {std}");
}

// ---- bad input: errors, never panics ----

fn npz_bytes(params: &vit::checkpoint::Params) -> Vec<u8> {
    let arrays: Vec<(&str, &Array)> = params
        .iter()
        .map(|(key, array)| (key.as_str(), array))
        .collect();
    let mut buffer = Cursor::new(Vec::new());
    npz::write_npz(&mut buffer, &arrays).unwrap();
    buffer.into_inner()
}

#[test]
fn missing_keys_are_named() {
    let mut params = load("google_token.npz").params;
    params.remove("Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias");
    let error = checkpoint::from_npz_bytes(&npz_bytes(&params)).unwrap_err();
    assert!(
        matches!(&error, CheckpointError::MissingKeys(keys) if keys == &["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias".to_string()]),
        "{error}"
    );
}

#[test]
fn wrong_shapes_name_the_key_and_both_shapes() {
    let mut params = load("google_token.npz").params;
    params.insert(params::ENCODER_NORM_BIAS.into(), Array::zeros(vec![23]));
    let error = checkpoint::from_npz_bytes(&npz_bytes(&params))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("encoder_norm/bias") && error.contains("[23]") && error.contains("[24]"),
        "{error}"
    );
}

#[test]
fn truncated_and_garbage_files_are_errors() {
    let npz_file = std::fs::read(fixture("google_token.npz")).unwrap();
    let weights = std::fs::read(fixture("hf_vit_cls/model.safetensors")).unwrap();
    let config = std::fs::read(fixture("hf_vit_cls/config.json")).unwrap();
    for cut in [10, npz_file.len() / 2, npz_file.len() - 30] {
        assert!(
            checkpoint::from_npz_bytes(&npz_file[..cut]).is_err(),
            "npz cut at {cut}"
        );
    }
    for cut in [0, 7, 9, weights.len() / 2, weights.len() - 1] {
        assert!(
            checkpoint::from_hf_bytes(&config, &weights[..cut]).is_err(),
            "safetensors cut at {cut}"
        );
    }
    assert!(checkpoint::from_hf_bytes(b"{not json", &weights).is_err());
    // A header that claims an enormous size must not be trusted.
    let mut hostile = u64::MAX.to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{}");
    assert!(checkpoint::from_hf_bytes(&config, &hostile).is_err());

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    let error = checkpoint::load(&garbage, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("garbage.safetensors") && error.contains(".npz"),
        "{error}"
    );
    let missing =
        checkpoint::load(&dir.path().join("absent.npz"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(missing, CheckpointError::Io { .. }));
    let empty_dir = checkpoint::load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(empty_dir.contains("config.json"), "{empty_dir}");
}

#[test]
fn non_image_bytes_are_an_error() {
    let reference = vit::preprocess::Normalization::REFERENCE;
    assert!(vit::preprocess::preprocess(b"definitely not an image", 32, &reference).is_err());
    assert!(vit::preprocess::decode_rgb(&[0x89, b'P', b'N', b'G', 0, 0]).is_err());
}

#[test]
fn dropout_acts_only_in_training() {
    let mut checkpoint = load("google_token.npz");
    checkpoint.config.dropout = 0.5;
    checkpoint.config.attention_dropout = 0.5;
    let input = &read_tensors("google_token.io.safetensors")["input"];
    let reference = &read_tensors("google_token.io.safetensors")["logits"];
    // Inference device: dropout is off, the reference function is computed.
    assert!(max_abs_diff(&logits(&checkpoint, input), &reference.data) < 1e-4);
    // Training device: dropout changes the output.
    let device = Device::flex().autodiff();
    let model = checkpoint.build(&device).unwrap();
    let images = Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), input.shape.clone()),
        &device,
    );
    let trained = model.forward(images).try_into_vec_as::<f32>().unwrap();
    assert!(max_abs_diff(&trained, &reference.data) > 1e-2);
}
