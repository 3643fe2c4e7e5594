//! The parsers that read untrusted bytes, fed mutated copies of the fixtures
//! (`vit_tests::fuzz`, proptest with a fixed seed): each must answer with a model or an
//! error, never a panic, and quickly. `VIT_FUZZ_CASES` sets the cases per corpus file (300
//! in CI), `VIT_FUZZ_SEED` the seed (0).

use std::io::{Cursor, Read};
use std::time::Duration;

use proptest::option::weighted;
use proptest::sample::select;

use vit::ViTConfig;
use vit::checkpoint::{self, LoadOptions};
use vit::preprocess::{Normalization, decode_rgb, preprocess};
use vit_tests::fixture;
use vit_tests::fuzz;

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

/// The `.npy` reader on its own (in an `.npz` the zip layer's CRC check refuses most
/// mutations first): f32, f16 and big-endian headers, 1 to 3 dimensions.
#[test]
fn npy_arrays() {
    let member = |npz: &str, name: &str| {
        let mut zip = zip::ZipArchive::new(Cursor::new(read(npz))).expect("zip");
        let mut bytes = Vec::new();
        let mut entry = zip.by_name(name).expect("member");
        entry.read_to_end(&mut bytes).expect("read");
        bytes
    };
    let bias = member("google_token.npz", "embedding/bias.npy");
    let big_endian = String::from_utf8_lossy(&bias)
        .replacen("'<f4'", "'>f4'", 1)
        .into_bytes();
    assert_ne!(big_endian, bias, "the header names '<f4'");
    let corpus = [
        bias,
        big_endian,
        member(
            "google_token.npz",
            "Transformer/posembed_input/pos_embedding.npy",
        ),
        member("google_token_f16.npz", "cls.npy"),
    ];
    let report = fuzz::run("npy", &corpus, LIMIT, |bytes| {
        checkpoint::npz::read_npy(bytes, "fuzz.npy").is_ok()
    });
    assert!(report.accepted > 0 && report.refused > 0, "{report:?}");
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
    // Each case sets one field to one of `values`, or (one case in five) drops it.
    let accepted = std::cell::Cell::new(0);
    for (entry, name) in ["hf_vit_cls/config.json", "hf_vit_pooler/config.json"]
        .into_iter()
        .enumerate()
    {
        let json: serde_json::Value = serde_json::from_slice(&read(name)).expect("json");
        let keys: Vec<String> = json.as_object().expect("object").keys().cloned().collect();
        let edits = (select(keys), weighted(0.8, select(values.to_vec())));
        let outcome = fuzz::runner("config values", entry).run(&edits, |(key, value)| {
            let mut mutated = json.clone();
            match value {
                Some(value) => mutated[&key] = value,
                None => {
                    mutated.as_object_mut().expect("object").remove(&key);
                }
            }
            accepted.set(accepted.get() + usize::from(ViTConfig::from_json(&mutated).is_ok()));
            let _ = checkpoint::hf::read_preprocessor(&mutated).map(|n| n.is_valid());
            let _ = checkpoint::hf::check_preprocessor_size(&mutated, 32);
            Ok(())
        });
        // A panic fails the case; proptest names the field and value.
        if let Err(error) = outcome {
            panic!("{name}: {error}");
        }
    }
    let accepted = accepted.get();
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
