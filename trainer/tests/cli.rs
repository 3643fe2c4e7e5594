//! The `trainer` binary as a user runs it: predict and export on the fixtures.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("trainer runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn predict_json_prints_one_object_per_image() {
    let checkpoint = fixture("hf_vit_cls");
    let image = fixture("preprocess_image.png");
    let out = trainer(&[
        "predict",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--json",
        "--top-k",
        "3",
        image.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            value["image"]
                .as_str()
                .unwrap()
                .ends_with("preprocess_image.png")
        );
        assert_eq!(value["logits"].as_array().unwrap().len(), 6);
        let probabilities: Vec<f64> = value["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert!((probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let top = value["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let best = top[0]["index"].as_u64().unwrap() as usize;
        let expected_max = probabilities.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(probabilities[best], expected_max);
        let labels = ["apple", "bus", "cloud", "dune", "eel", "fern"];
        assert_eq!(top[0]["label"], labels[best]);
    }
}

/// `logits` of a committed reference file, per image.
fn reference_logits(name: &str) -> Vec<Vec<f64>> {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let tensors = vit::checkpoint::safetensors_io::Tensors::parse(&[&bytes]).unwrap();
    let logits = tensors.get("logits").unwrap();
    logits
        .data
        .chunks(logits.shape[1])
        .map(|row| row.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

fn json_logits(stdout: &str) -> Vec<f64> {
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    value["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_close(ours: &[f64], reference: &[f64], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}");
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "{what}: max abs diff {diff} to the reference");
}

#[test]
fn predict_runs_the_model_at_another_resolution_as_the_reference() {
    let checkpoint = fixture("google_token.npz");
    let image = fixture("preprocess_image.png");
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--checkpoint", checkpoint.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        let out = trainer(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // The image resized to 48 px and the position embeddings zoomed as vit_jax does
    // (tests/fixtures/generate.py: numpy forward, scipy zoom); at the model's own 32 px
    // the logits differ, so the flag cannot go unnoticed.
    let at_48 = json_logits(&predict(&["--image-size", "48", "--json"]));
    assert_close(
        &at_48,
        &reference_logits("google_token_48.io.safetensors")[0],
        "48 px",
    );
    let at_32 = json_logits(&predict(&["--json"]));
    assert!(at_32.iter().zip(&at_48).any(|(a, b)| (a - b).abs() > 1e-2));
    // Without --json, a readable list of the top five.
    let stdout = predict(&["--image-size", "48"]);
    assert!(stdout.contains("preprocess_image.png"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|line| line.contains('%')).count(),
        5,
        "{stdout}"
    );
}

#[test]
fn predict_normalises_as_the_checkpoint_says_and_as_told() {
    // A Hugging Face folder whose preprocessor_config.json asks for ImageNet's mean and
    // standard deviation (as DeiT's): transformers' own processor and model gave these.
    let checkpoint = fixture("hf_vit_imagenet");
    let image = fixture("hf_vit_imagenet.png");
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--json",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        let out = trainer(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json_logits(&text(&out.stdout))
    };
    let reference = &reference_logits("hf_vit_imagenet.io.safetensors")[0];
    assert_close(&predict(&[]), reference, "from preprocessor_config.json");
    // Told otherwise, it computes something else; told the same, the same.
    let other = predict(&["--image-mean", "0.5", "--image-std", "0.5"]);
    assert!(
        other
            .iter()
            .zip(reference)
            .any(|(a, b)| (a - b).abs() > 1e-2)
    );
    let told = predict(&[
        "--image-mean",
        "0.485,0.456,0.406",
        "--image-std",
        "0.229,0.224,0.225",
    ]);
    assert_close(&told, reference, "--image-mean/--image-std");
    let out = trainer(&[
        "predict",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--image-std",
        "0,1,1",
        image.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("image_std"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exports_carry_the_normalisation_for_transformers_and_for_us() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("exported");
    let out = trainer(&[
        "export",
        "--checkpoint",
        fixture("hf_vit_imagenet").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let preprocessor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("preprocessor_config.json")).unwrap())
            .unwrap();
    assert_eq!(preprocessor["image_processor_type"], "ViTImageProcessor");
    assert_eq!(preprocessor["size"]["height"], 32);
    let mean: Vec<f64> = serde_json::from_value(preprocessor["image_mean"].clone()).unwrap();
    assert!((mean[0] - 0.485).abs() < 1e-6, "{mean:?}");
    let out = trainer(&[
        "predict",
        "--json",
        "--checkpoint",
        out_dir.to_str().unwrap(),
        fixture("hf_vit_imagenet.png").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_close(
        &json_logits(&text(&out.stdout)),
        &reference_logits("hf_vit_imagenet.io.safetensors")[0],
        "the export",
    );
}

#[test]
fn export_writes_a_folder_that_predict_reads_with_the_given_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("exported");
    let out = trainer(&[
        "export",
        "--checkpoint",
        fixture("google_gap.npz").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--labels",
        "red,green,blue",
        "--f16",
        "--description",
        "three colours",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out_dir.join("config.json").exists() && out_dir.join("model.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vit_description"], "three colours");
    let out = trainer(&[
        "predict",
        "--checkpoint",
        out_dir.to_str().unwrap(),
        "--json",
        fixture("preprocess_image.png").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let label = value["top"][0]["label"].as_str().unwrap().to_string();
    assert!(
        ["red", "green", "blue"].contains(&label.as_str()),
        "{label}"
    );
    // Wrong label count: one clear line, non-zero exit.
    let out = trainer(&[
        "export",
        "--checkpoint",
        fixture("google_gap.npz").to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--labels",
        "a,b",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--labels names 2 classes but the model has 3"));
}

#[test]
fn errors_are_one_clear_line_and_a_failing_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let not_image = dir.path().join("notes.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "predict".into(),
                "--checkpoint".into(),
                "/nonexistent/model.npz".into(),
                "x.png".into(),
            ],
            "/nonexistent/model.npz",
        ),
        (
            vec![
                "predict".into(),
                "--checkpoint".into(),
                fixture("google_token.npz").display().to_string(),
                not_image.display().to_string(),
            ],
            "notes.txt",
        ),
        (
            vec![
                "predict".into(),
                "--checkpoint".into(),
                not_image.display().to_string(),
                not_image.display().to_string(),
            ],
            "notes.txt",
        ),
    ];
    for (args, mentions) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = trainer(&args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
            "{stderr}"
        );
        assert!(stderr.contains(mentions), "{stderr}");
    }
}

#[test]
fn bench_times_training_updates_and_prints_one_json_line_per_case() {
    let config = fixture("hf_vit_cls/config.json");
    // (case, extra arguments, device and precision it reports)
    #[allow(unused_mut)] // without the `tch` feature
    let mut cases = vec![
        ("train", &["--train"][..], "cpu", "fp32"),
        ("infer", &[][..], "cpu", "fp32"),
    ];
    // bfloat16 on libtorch.
    #[cfg(feature = "tch")]
    cases.push((
        "train",
        &["--train", "--device", "tch:cpu", "--precision", "bf16"][..],
        "tch:cpu",
        "bf16",
    ));
    for (case, extra, device, precision) in cases {
        let mut args = vec![
            "bench",
            "--json",
            "--model",
            config.to_str().unwrap(),
            "--image-size",
            "16",
            "--num-classes",
            "3",
            "--batch",
            "4",
            "--iterations",
            "3",
            "--warmup",
            "1",
        ];
        args.extend_from_slice(extra);
        let out = trainer(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(line["case"], case);
        assert_eq!(line["batch"], 4);
        assert_eq!(line["resolution"], 16);
        assert_eq!(line["precision"], precision);
        assert_eq!(line["device"], device);
        assert_eq!(line["runs"], 3);
        let median = line["median_ms"].as_f64().expect("median_ms");
        let rate = line["images_per_sec"].as_f64().expect("images_per_sec");
        assert!(
            median > 0.0 && (rate - 4e3 / median).abs() < 1e-6 * rate,
            "{line}"
        );
        assert!(
            line["peak_memory_bytes"]
                .as_u64()
                .expect("Linux reports it")
                > 1_000_000
        );
    }
    let out = trainer(&["bench", "--train", "--num-classes", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--num-classes"),
        "{}",
        text(&out.stderr)
    );
    // bfloat16 is for libtorch devices.
    let out = trainer(&["bench", "--precision", "bf16"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("runs on libtorch devices"),
        "{}",
        text(&out.stderr)
    );
}
