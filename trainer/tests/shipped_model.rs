//! The model the browser page ships (`web/model/`) against its model card
//! (`models/cifar10-demo/card.json`): `trainer eval` on the committed sample of real
//! CIFAR-10 test images gives the card's figure, far above chance.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

#[test]
fn the_shipped_model_scores_its_cards_figure_on_the_sample() {
    let root = root();
    let card: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("models/cifar10-demo/card.json")).expect("the model card"),
    )
    .expect("card.json is JSON");
    let sample = root.join(card["sample"].as_str().expect("the sample's path"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let out = dir.path().join("eval");
    let output = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["eval", "--checkpoint"])
        .arg(root.join(card["model"].as_str().expect("the model's path")))
        .arg("--dataset")
        .arg(&sample)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run trainer eval");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).expect("eval.json"))
            .expect("eval.json is JSON");
    assert_eq!(eval["images"], card["sample_images"]);
    let accuracy = eval["accuracy"].as_f64().expect("an accuracy");
    let recorded = card["sample_accuracy"].as_f64().expect("the card's figure");
    // The same images, model and code: the same answers.
    assert!(
        (accuracy - recorded).abs() < 1e-9,
        "trainer eval gives {accuracy} on the sample, the card says {recorded}"
    );
    // Ten classes: chance is 10%. Far below any model worth shipping, so it cannot flake.
    assert!(accuracy >= 0.3, "{accuracy}");
}
