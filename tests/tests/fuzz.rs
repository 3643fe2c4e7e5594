//! The parsers that read untrusted bytes, fed mutated copies of the fixtures
//! (`vit_tests::fuzz`): each must answer with a model or an error, never a panic, and
//! quickly. `VIT_FUZZ_CASES` sets the cases per corpus file (300 in CI).

use std::time::Duration;

use vit::ViTConfig;
use vit::checkpoint::{self, LoadOptions};
use vit::preprocess::{Normalization, decode_rgb, preprocess};
use vit_tests::fixture;
use vit_tests::fuzz::{self, Rng};

/// Per case, far above what any of these small files needs.
const LIMIT: Duration = Duration::from_secs(2);

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

#[test]
fn npz_archives() {
    let corpus = [
        "google_token.npz",
        "google_gap.npz",
        "google_token_f16.npz",
        "google_token_prelogits.npz",
    ]
    .map(read);
    let report = fuzz::run("npz", &corpus, LIMIT, |bytes| {
        checkpoint::from_npz_bytes(bytes).is_ok()
    });
    assert!(report.refused > 0);
}

#[test]
fn safetensors_files() {
    let corpus = ["timm_vit.safetensors", "hf_vit_cls/model.safetensors"].map(read);
    let report = fuzz::run("safetensors", &corpus, LIMIT, |bytes| {
        // Straight through the header reader and every tensor.
        let Ok(tensors) = checkpoint::safetensors_io::Tensors::parse(&[&bytes]) else {
            return false;
        };
        let names: Vec<String> = tensors.names().map(str::to_string).collect();
        names.iter().all(|name| tensors.get(name).is_ok())
    });
    assert!(report.refused > 0);
    // And as the model files they are: timm's (given its head count) and Hugging Face's.
    let dir = tempfile::tempdir().expect("tempdir");
    let timm = read("timm_vit.safetensors");
    fuzz::run("timm model", &[timm], LIMIT, |bytes| {
        let path = dir.path().join("timm.safetensors");
        std::fs::write(&path, bytes).expect("write");
        checkpoint::load(&path, &LoadOptions { num_heads: Some(3) }).is_ok()
    });
    let config = read("hf_vit_cls/config.json");
    let weights = read("hf_vit_cls/model.safetensors");
    fuzz::run(
        "hf weights",
        std::slice::from_ref(&weights),
        LIMIT,
        |bytes| checkpoint::from_hf_bytes(&config, bytes).is_ok(),
    );
    fuzz::run("hf config", &[config], LIMIT, |bytes| {
        checkpoint::from_hf_bytes(bytes, &weights).is_ok()
    });
}

/// config.json forms, mutated as text and as JSON values (numbers made huge, zero,
/// negative or strings; fields dropped).
#[test]
fn model_configs() {
    let corpus = [
        "hf_vit_cls/config.json",
        "hf_vit_pooler/config.json",
        "hf_vit_imagenet/preprocessor_config.json",
    ]
    .map(read);
    fuzz::run("config text", &corpus, LIMIT, |bytes| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .is_ok_and(|json| ViTConfig::from_json(&json).is_ok())
    });
    let values = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1e300),
        serde_json::json!(u64::MAX),
        serde_json::json!("x"),
        serde_json::json!(null),
        serde_json::json!([1, 2]),
    ];
    let mut accepted = 0;
    for name in ["hf_vit_cls/config.json", "hf_vit_pooler/config.json"] {
        let json: serde_json::Value = serde_json::from_slice(&read(name)).expect("json");
        let keys: Vec<String> = json.as_object().expect("object").keys().cloned().collect();
        for case in 0..fuzz::cases() {
            let mut rng = Rng::new(case);
            let mut mutated = json.clone();
            let key = &keys[rng.below(keys.len())];
            if rng.below(5) == 0 {
                mutated.as_object_mut().expect("object").remove(key);
            } else {
                mutated[key] = values[rng.below(values.len())].clone();
            }
            let config = std::panic::catch_unwind(|| ViTConfig::from_json(&mutated))
                .unwrap_or_else(|_| panic!("{name}: `{key}` = {} panicked", mutated[key]));
            accepted += usize::from(config.is_ok());
            let preprocessor = std::panic::catch_unwind(|| {
                checkpoint::hf::read_preprocessor(&mutated).map(|n| n.is_valid())
            });
            assert!(preprocessor.is_ok(), "{name}: `{key}` panicked");
        }
    }
    eprintln!("fuzz config values: {accepted} accepted");
}

#[test]
fn images() {
    let sample = |path: &str| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("data/cifar10-sample")
                .join(path),
        )
        .expect("sample")
    };
    let corpus = [
        read("preprocess_image.png"),
        read("hf_vit_imagenet.png"),
        sample("test/cat/0000.jpg"),
        sample("test/ship/0003.jpg"),
    ];
    fuzz::run("images", &corpus, LIMIT, |bytes| {
        decode_rgb(bytes).is_ok() && preprocess(bytes, 16, &Normalization::REFERENCE).is_ok()
    });
}
