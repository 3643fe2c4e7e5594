//! The browser app end to end, in real headless Chromium: builds the site with
//! trunk under a sub-path, serves it from 127.0.0.1, uploads and drops a real
//! CIFAR-10 JPEG and a text file, loads a corrupt model, and checks the
//! page's top-5 against `trainer predict --json` on the same model and file; then
//! teaches it two classes, classifies held-out images with the taught model, and
//! checks its downloaded zip with `trainer predict` and by loading it back. All of that
//! on WebGPU (Chromium's SwiftShader, a CPU Vulkan: it proves the GPU path computes the
//! right thing, not its speed); then on wasm after the visitor switches, and in a
//! browser without WebGPU, where the page falls back to wasm and says why; and from a
//! host that sends the cross-origin isolation headers, on the threaded CPU worker, and
//! on one thread when that worker's files are missing.
//!
//! Needs the tools `.ci/setup-web` installs; fails (never skips) without them.
//! The page is driven by `tests/web/e2e.mjs` (playwright-core); this file
//! builds, prepares inputs and checks what the page showed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const SETUP: &str = "run .ci/setup-web to install the browser test tools";
/// A real CIFAR-10 test image that is not one of the shipped samples.
const CIFAR_MEMBER: &str = "test/truck/0007.jpg";
/// Probabilities on wasm (burn-flex, as native) and on WebGPU (other kernels, other
/// summation orders) against `trainer predict`.
const TOLERANCE: f64 = 1e-4;
const WEBGPU_TOLERANCE: f64 = 1e-3;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/` (or `$CARGO_TARGET_DIR`) from this test binary's path: `<target>/release/deps/web_e2e-…`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {what}: {error}; {SETUP}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn require_tools(root: &Path) {
    for (tool, flag) in [
        ("trunk", "--version"),
        ("wasm-bindgen", "--version"),
        ("node", "--version"),
    ] {
        let found = Command::new(tool)
            .arg(flag)
            .output()
            .is_ok_and(|output| output.status.success());
        assert!(found, "`{tool}` is missing: {SETUP}");
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: {SETUP}"
    );
    let playwright = root.join("tests/web/node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: {SETUP}",
        playwright.display()
    );
}

/// `trunk build --release` under `/vit-demo/`, into `out/dist`.
fn build_site(root: &Path, out: &Path) -> PathBuf {
    let dist = out.join("dist");
    run(
        Command::new("trunk")
            .current_dir(root)
            .env("TRUNK_OFFLINE", "true")
            .args(["build", "--release", "--public-url", "/vit-demo/", "--dist"])
            .arg(&dist),
        "trunk build",
    );
    dist
}

/// A real CIFAR-10 test image from the committed sample (`tests/data/`).
fn cifar_image(root: &Path) -> PathBuf {
    root.join("tests/data/cifar10-sample").join(CIFAR_MEMBER)
}

fn trainer_binary(root: &Path) -> PathBuf {
    let binary = target_dir().join("release/trainer");
    if !binary.is_file() {
        run(
            Command::new(env!("CARGO")).current_dir(root).args([
                "build",
                "--release",
                "-p",
                "trainer",
            ]),
            "cargo build --release -p trainer",
        );
    }
    binary
}

/// (label, probability) of `trainer predict --json --top-k 5` with the shipped model.
fn native_top5(root: &Path, image: &Path) -> Vec<(String, f64)> {
    native_top(root, &root.join("web/model"), image)
}

/// The same with any checkpoint `trainer` reads (a folder, a zip).
fn native_top(root: &Path, checkpoint: &Path, image: &Path) -> Vec<(String, f64)> {
    let output = run(
        Command::new(trainer_binary(root))
            .args(["predict", "--json", "--top-k", "5", "--checkpoint"])
            .arg(checkpoint)
            .arg(image),
        "trainer predict",
    );
    let line: Value = serde_json::from_slice(&output.stdout).expect("trainer prints JSON");
    top_of(&line["top"])
}

fn top_of(list: &Value) -> Vec<(String, f64)> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list of classes, got {list}"))
        .iter()
        .map(|entry| {
            (
                entry["label"].as_str().expect("label").to_owned(),
                entry["probability"].as_f64().expect("probability"),
            )
        })
        .collect()
}

/// The largest difference in probability, after checking that the labels agree.
fn assert_same_top5(
    page: &[(String, f64)],
    native: &[(String, f64)],
    tolerance: f64,
    what: &str,
) -> f64 {
    assert_eq!(page.len(), 5, "{what}: {page:?}");
    assert_same_top(page, native, tolerance, what)
}

fn assert_same_top(
    page: &[(String, f64)],
    native: &[(String, f64)],
    tolerance: f64,
    what: &str,
) -> f64 {
    assert_eq!(
        page.len(),
        native.len(),
        "{what}: {page:?} vs trainer {native:?}"
    );
    let mut largest: f64 = 0.0;
    for ((page_label, page_p), (native_label, native_p)) in page.iter().zip(native) {
        assert_eq!(
            page_label, native_label,
            "{what}: {page:?} vs trainer {native:?}"
        );
        assert!(
            (page_p - native_p).abs() <= tolerance,
            "{what}: {page_label} {page_p} vs trainer {native_p}"
        );
        largest = largest.max((page_p - native_p).abs());
    }
    largest
}

#[test]
fn browser_app_matches_trainer_predict() {
    let root = repo_root();
    require_tools(&root);
    let out = target_dir().join("web-e2e");
    // A clean folder each run, so a stale screenshot cannot pass for a new one.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create the test output folder");

    let image = cifar_image(&root);
    let text = out.join("notes.txt");
    std::fs::write(&text, "This is a text file, not an image.\n").expect("write a text file");
    let native = native_top5(&root, &image);
    let dist = build_site(&root, &out);

    let output = run(
        Command::new("node")
            .current_dir(root.join("tests/web"))
            .arg("e2e.mjs")
            .args([&dist, &image, &text, &out])
            .arg(root.join("tests/data/cifar10-sample/test")),
        "node tests/web/e2e.mjs",
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "e2e.mjs printed no JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let log = report["log"].to_string();
    assert!(
        report["failure"].is_null(),
        "the page run failed: {}\nbrowser log: {log}",
        report["failure"]
    );
    println!(
        "screenshot: {}",
        report["screenshot"].as_str().unwrap_or("?")
    );

    assert_eq!(report["model_status"], "ready");
    // The page tells the user what the shipped model is, from its config.json.
    let shipped: Value = serde_json::from_slice(
        &std::fs::read(dist.join("model/config.json")).expect("shipped config.json"),
    )
    .expect("shipped config.json is JSON");
    assert_eq!(
        report["model_description"], shipped["vit_description"],
        "model description"
    );
    let card: Value = serde_json::from_slice(
        &std::fs::read(root.join("models/cifar10-demo/card.json")).expect("the model card"),
    )
    .expect("card.json is JSON");
    let accuracy = card["test_accuracy"].as_f64().expect("card test_accuracy");
    assert_eq!(
        report["model_accuracy"],
        format!("{:.2}%", accuracy * 100.0),
        "the page shows the card's measured accuracy"
    );
    assert_eq!(report["card_status"], 200, "the model card link");
    assert_eq!(
        report["backend"]["backend"], "webgpu",
        "WebGPU should start in Chromium with SwiftShader: {}",
        report["backend"]
    );
    let mut webgpu_difference = assert_same_top5(
        &top_of(&report["upload"]["top"]),
        &native,
        WEBGPU_TOLERANCE,
        "uploaded JPEG (WebGPU)",
    );
    assert!(
        report["upload"]["latency_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0)
    );

    let text_error = report["text_error"].as_str().unwrap_or_default();
    assert!(
        text_error.contains("not an image"),
        "text file error: {text_error:?}"
    );
    assert_eq!(report["predictions_after_error"], 0);

    webgpu_difference = webgpu_difference.max(assert_same_top5(
        &top_of(&report["drop"]["top"]),
        &native,
        WEBGPU_TOLERANCE,
        "dropped JPEG (WebGPU)",
    ));
    assert_eq!(report["error_after_drop"], 0, "the error must clear");
    assert_eq!(report["status_after"], "ready");

    let bad_model = report["bad_model_error"].as_str().unwrap_or_default();
    assert!(
        bad_model.contains("Cannot load your model") && bad_model.contains("previous model"),
        "corrupt model error: {bad_model:?}"
    );
    assert_eq!(report["status_after_bad_model"], "ready");
    // Teaching: two classes from five real images each, in the worker.
    assert_eq!(report["teach_status"], "trained", "teaching: {log}");
    let accuracy: f64 = report["teach_accuracy"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("a leave-one-out accuracy");
    assert!((0.6..=1.0).contains(&accuracy), "leave-one-out {accuracy}");
    println!("taught 2 x 5 images in {} ms", report["teach_ms"]);
    let taught = report["taught_description"].as_str().unwrap_or_default();
    assert!(taught.contains("ship, frog"), "{taught}");
    let export = PathBuf::from(report["export"].as_str().expect("the downloaded zip"));
    assert_eq!(report["export_name"], "taught-model.zip");
    let held_out = report["held_out"].as_array().expect("held-out results");
    assert_eq!(held_out.len(), 10);
    let mut correct = 0;
    for result in held_out {
        let page = top_of(&result["top"]);
        correct += usize::from(page[0].0 == result["class"].as_str().unwrap_or_default());
        // `trainer predict` on the downloaded zip gives the page's probabilities.
        let image = Path::new(result["image"].as_str().expect("image path"));
        webgpu_difference = webgpu_difference.max(assert_same_top(
            &page,
            &native_top(&root, &export, image),
            WEBGPU_TOLERANCE,
            "taught model (WebGPU)",
        ));
    }
    // Chance is 5 of 10; the shipped model's features give 10 natively (web/src/teach.rs).
    assert!(correct >= 8, "{correct} of 10 held-out images right");
    assert_eq!(
        report["description_after_reset"], shipped["vit_description"],
        "reset gives the shipped model back"
    );
    assert_same_top(
        &top_of(&report["zip_upload"]["top"]),
        &top_of(&held_out[0]["top"]),
        TOLERANCE,
        "the zip loaded back into the page",
    );
    println!(
        "WebGPU against trainer predict: largest probability difference {webgpu_difference:.2e}"
    );

    // Switched to wasm by the visitor: burn-flex's answers, as native.
    assert_eq!(report["switched_backend"], "wasm");
    let first_held_out = Path::new(held_out[0]["image"].as_str().unwrap_or_default());
    assert_same_top(
        &top_of(&report["zip_upload_wasm"]["top"]),
        &native_top(&root, &export, first_held_out),
        TOLERANCE,
        "the zip on wasm",
    );
    // No WebGPU in the browser: wasm, and the page says why.
    assert_eq!(
        report["no_webgpu_backend"]["backend"], "wasm",
        "{}",
        report["no_webgpu_backend"]
    );
    let note = report["no_webgpu_backend"]["note"]
        .as_str()
        .unwrap_or_default();
    assert!(note.contains("WebGPU"), "why WebGPU is not used: {note:?}");
    // Chromium has relaxed SIMD: the worker built with it (fused multiply-add).
    assert_eq!(report["no_webgpu_simd"], "relaxed");
    assert_same_top5(
        &top_of(&report["no_webgpu_upload"]["top"]),
        &native,
        TOLERANCE,
        "uploaded JPEG (wasm with relaxed SIMD, no WebGPU)",
    );
    // Without relaxed SIMD: the plain SIMD worker, the same answers.
    assert_eq!(report["no_relaxed_simd"], "simd128");
    assert_same_top5(
        &top_of(&report["no_relaxed_upload"]["top"]),
        &native,
        TOLERANCE,
        "uploaded JPEG (wasm without relaxed SIMD)",
    );

    // No cross-origin isolation there: one thread.
    assert_eq!(report["no_webgpu_backend"]["threads"], 1);

    // A host that sends the isolation headers: the threaded worker (web/build-threads.sh),
    // one thread per core (at most 16), the same answers.
    let threads = &report["threads_backend"];
    assert_eq!(threads["isolated"], true, "{threads}");
    let cores = threads["cores"].as_u64().unwrap_or(0);
    assert_eq!(
        threads["threads"].as_u64(),
        Some(cores.clamp(1, 16)),
        "a thread per core: {threads}"
    );
    println!(
        "threaded worker: {} threads on {cores} cores",
        threads["threads"]
    );
    if cores > 1 {
        // What the visitor reads in the backend menu.
        let label = threads["cpu_label"].as_str().unwrap_or_default();
        assert!(
            label.contains(&format!("{} threads", cores.min(16))),
            "{label:?}"
        );
    }
    assert_same_top5(
        &top_of(&report["threads_upload"]["top"]),
        &native,
        TOLERANCE,
        "uploaded JPEG (wasm on threads)",
    );
    // The same host without the threaded build: one thread, and the page says so.
    assert_eq!(report["threads_missing_backend"]["threads"], 1);
    let message = report["threads_missing_error"].as_str().unwrap_or_default();
    assert!(message.contains("multi-threaded"), "{message}");
    assert_same_top5(
        &top_of(&report["threads_missing_upload"]["top"]),
        &native,
        TOLERANCE,
        "uploaded JPEG (one thread after the threaded worker failed)",
    );

    assert!(
        Path::new(report["screenshot"].as_str().unwrap_or_default()).is_file(),
        "no screenshot"
    );
    assert!(!log.contains("pageerror"), "errors in the page: {log}");
}
