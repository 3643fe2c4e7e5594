//! End to end: a tiny ViT fine-tuned for a few steps on a tiny data set made of real
//! CIFAR-10 JPEGs (from the team's shared data), then used through `trainer predict`.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSES: [&str; 3] = ["airplane", "cat", "ship"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `DIR/train/<class>/` with 8 images and `DIR/test/<class>/` with 4, per class.
fn tiny_cifar(dir: &Path) {
    let archive = repo().join("../shared/data/cifar10-jpeg.tar.gz");
    assert!(
        archive.exists(),
        "missing {} (the team's shared data)",
        archive.display()
    );
    let mut patterns = Vec::new();
    for class in CLASSES {
        patterns.push(format!("train/{class}/000[0-7].jpg"));
        patterns.push(format!("test/{class}/000[0-3].jpg"));
    }
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .arg("--wildcards")
        .args(&patterns)
        .status()
        .expect("tar runs");
    assert!(status.success());
}

fn metrics(workdir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(workdir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn fine_tunes_a_pretrained_model_on_real_images_and_exports_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    tiny_cifar(&data);
    let workdir = dir.path().join("run");
    let pretrained = repo().join("tests/fixtures/google_token.npz");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "--steps",
            "8",
            "--batch",
            "6",
            "--accum-steps",
            "2",
            "--lr",
            "0.03",
            "--warmup",
            "1",
        ])
        .args([
            "--resolution",
            "32",
            "--eval-every",
            "4",
            "--log-every",
            "1",
            "--seed",
            "7",
        ])
        .arg("--pretrained")
        .arg(&pretrained)
        .arg("--dataset")
        .arg(&data)
        .arg("--workdir")
        .arg(&workdir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let lines = metrics(&workdir);
    assert_eq!(lines.len(), 8, "one line per step with --log-every 1");
    assert_eq!(lines[0]["step"], 1);
    // The new head is zero: the first loss is exactly ln(3).
    let first = lines[0]["loss"].as_f64().unwrap();
    assert!((first - 3f64.ln()).abs() < 1e-5, "first loss {first}");
    // With warm-up, the first update has lr 0.
    assert_eq!(lines[0]["lr"].as_f64().unwrap(), 0.0);
    let last = lines[7]["loss"].as_f64().unwrap();
    assert!(last < first, "loss did not fall: {first} -> {last}");
    for line in &lines {
        assert!(line["grad_norm"].as_f64().unwrap().is_finite());
        assert!(line["images_per_sec"].as_f64().unwrap() > 0.0);
    }
    assert!(lines[3]["test_accuracy"].is_number() && lines[7]["test_accuracy"].is_number());
    assert!(lines[2].get("test_accuracy").is_none());
    assert!(workdir.join("summary.md").exists());

    let export = workdir.join("export");
    let image = data.join("test/cat/0000.jpg");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("predict")
        .arg("--checkpoint")
        .arg(&export)
        .arg("--json")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prediction: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let label = prediction["top"][0]["label"].as_str().unwrap();
    assert!(CLASSES.contains(&label), "{label}");
    assert_eq!(prediction["logits"].as_array().unwrap().len(), 3);
}
