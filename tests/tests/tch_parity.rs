//! burn-tch (libtorch, on the CPU) against burn-flex (`cpu`): the same committed
//! fixture checkpoints and images must give the same logits, attention maps and
//! training gradients on both.
//!
//! Tolerance: max abs difference below 1e-4 × max(1, largest |value|) in f32, on
//! logits, attention probabilities, losses and every parameter gradient. The two
//! backends sum in different orders, so their rounding differs by a relative amount:
//! measured here (torch 2.9.0, x86-64), logits of size up to 15 differ by up to
//! 1.5e-4 (google_token_f16, timm_vit; the others by under 3e-5), and the class
//! token's gradient, of size up to 1066, by up to 2.1e-3.
//!
//! Built only with the `tch` feature; it needs PyPI's torch 2.9.0
//! (`eval "$(.ci/setup-tch)"` before `cargo test -p vit-tests --features tch`).
#![cfg(feature = "tch")]

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use vit::checkpoint::{self, Array, LoadOptions};
use vit::model::Precision;
use vit::{Checkpoint, VisionTransformer};
use vit_tests::{fixture, max_abs_diff, read_tensors};

const TOLERANCE: f32 = 1e-4;

/// The allowed max abs difference for values like `values`: [`TOLERANCE`], relative
/// to their largest magnitude when that is above 1.
fn tolerance(values: &[f32]) -> f32 {
    TOLERANCE * values.iter().fold(1.0f32, |m, x| m.max(x.abs()))
}

/// A committed model fixture: the checkpoint, how to load it, and the file with
/// its input images (`<case>.io.safetensors`) and the name of its reference output.
struct Case {
    checkpoint: &'static str,
    num_heads: Option<usize>,
    io: &'static str,
    output: &'static str,
}

/// Every model fixture of `tests/tests/parity.rs`.
const CASES: &[Case] = &[
    Case::new("google_token.npz", "google_token", "logits"),
    Case::new(
        "google_token_prelogits.npz",
        "google_token_prelogits",
        "logits",
    ),
    Case::new("google_gap.npz", "google_gap", "logits"),
    Case::new("google_token_linen.npz", "google_token_linen", "logits"),
    Case::new("google_token_f16.npz", "google_token_f16", "logits"),
    Case::new("hf_vit_cls", "hf_vit_cls", "logits"),
    Case::new("hf_vit_pooler", "hf_vit_pooler", "pooler_output"),
    Case {
        num_heads: Some(3),
        ..Case::new("timm_vit.safetensors", "timm_vit", "logits")
    },
];

impl Case {
    const fn new(checkpoint: &'static str, io: &'static str, output: &'static str) -> Self {
        Case {
            checkpoint,
            num_heads: None,
            io,
            output,
        }
    }

    fn load(&self) -> Checkpoint {
        let options = LoadOptions {
            num_heads: self.num_heads,
        };
        checkpoint::load(&fixture(self.checkpoint), &options)
            .unwrap_or_else(|error| panic!("{}: {error}", self.checkpoint))
    }

    fn input(&self) -> Array {
        read_tensors(&format!("{}.io.safetensors", self.io))
            .remove("input")
            .unwrap_or_else(|| panic!("{}.io.safetensors has no input", self.io))
    }
}

#[allow(deprecated)] // burn-tch is the GPU path the project builds today (see trainer/src/device.rs)
fn libtorch() -> Device {
    Device::libtorch()
}

fn images(input: &Array, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(
        TensorData::new(input.data.clone(), input.shape.clone()),
        device,
    )
}

fn build(case: &Case, checkpoint: &Checkpoint, device: &Device) -> VisionTransformer {
    checkpoint
        .build(device)
        .unwrap_or_else(|error| panic!("{}: model does not build: {error}", case.checkpoint))
}

fn logits(case: &Case, checkpoint: &Checkpoint, input: &Array, device: &Device) -> Vec<f32> {
    build(case, checkpoint, device)
        .forward(images(input, device))
        .try_into_vec_as::<f32>()
        .unwrap()
}

/// Checks every case, then fails once with one line per case that differs.
fn check_all(what: &str, mut check: impl FnMut(&Case) -> Vec<String>) {
    let failures: Vec<String> = CASES.iter().flat_map(&mut check).collect();
    assert!(
        failures.is_empty(),
        "{what}: tch differs from flex by more than {TOLERANCE} (relative above 1):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_fixture_gives_the_same_logits_on_flex_and_tch() {
    check_all("logits", |case| {
        let checkpoint = case.load();
        let input = case.input();
        let flex = logits(case, &checkpoint, &input, &Device::flex());
        let tch = logits(case, &checkpoint, &input, &libtorch());
        let diff = max_abs_diff(&flex, &tch);
        let allowed = tolerance(&flex);
        println!(
            "{}: logits max abs diff flex/tch {diff:e} (allowed {allowed:e})",
            case.checkpoint
        );
        // Also against the reference's output, as tests/tests/parity.rs does for flex.
        let reference = &read_tensors(&format!("{}.io.safetensors", case.io))[case.output];
        let reference_diff = max_abs_diff(&tch, &reference.data);
        let mut failures = vec![];
        if diff >= allowed {
            failures.push(format!(
                "{}: logits max abs diff {diff:e} between flex and tch (allowed {allowed:e})",
                case.checkpoint
            ));
        }
        if reference_diff >= allowed {
            failures.push(format!(
                "{}: logits on tch max abs diff {reference_diff:e} to the reference `{}` (allowed {allowed:e})",
                case.checkpoint, case.output
            ));
        }
        failures
    });
}

#[test]
fn attention_maps_agree_on_flex_and_tch() {
    check_all("attention entry point", |case| {
        let checkpoint = case.load();
        let input = case.input();
        let run = |device: &Device| {
            let output =
                build(case, &checkpoint, device).forward_with_attention(images(&input, device));
            let logits = output.logits.try_into_vec_as::<f32>().unwrap();
            let attentions: Vec<Vec<f32>> = output
                .attentions
                .into_iter()
                .map(|a| a.try_into_vec_as::<f32>().unwrap())
                .collect();
            (logits, attentions)
        };
        let (flex_logits, flex_attentions) = run(&Device::flex());
        let (tch_logits, tch_attentions) = run(&libtorch());
        let mut failures = vec![];
        let diff = max_abs_diff(&flex_logits, &tch_logits);
        let allowed = tolerance(&flex_logits);
        if diff >= allowed {
            failures.push(format!(
                "{}: logits (with attention) max abs diff {diff:e} (allowed {allowed:e})",
                case.checkpoint
            ));
        }
        assert_eq!(flex_attentions.len(), tch_attentions.len());
        for (layer, (flex, tch)) in flex_attentions.iter().zip(&tch_attentions).enumerate() {
            let diff = max_abs_diff(flex, tch);
            if diff >= tolerance(flex) {
                failures.push(format!(
                    "{}: attention of layer {layer} max abs diff {diff:e}",
                    case.checkpoint
                ));
            }
        }
        failures
    });
}

/// Mean softmax cross-entropy of `logits` [B, C] against class `targets`, as in training.
fn cross_entropy(logits: Tensor<2>, targets: &[usize]) -> Tensor<1> {
    let device = logits.device();
    let [batch, _] = logits.dims();
    let targets: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, 1]), &device);
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

/// Parameter gradients by module path, in visiting order (`None`: no gradient).
type NamedGradients = Vec<(String, Option<Vec<f32>>)>;

/// Every float parameter's gradient, by module path, in visiting order.
struct CollectGradients<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    found: NamedGradients,
}

impl ModuleVisitor for CollectGradients<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.grads.get::<D>(param.id).map(|grad| {
            // Float32 weights have float32 gradients, whatever the model computes in.
            assert_eq!(
                grad.dtype(),
                DType::F32,
                "gradient of {}",
                self.path.join(".")
            );
            grad.try_into_vec_as::<f32>().unwrap()
        });
        self.found.push((self.path.join("."), grad));
    }
}

/// Loss and gradients of one training step (forward, cross-entropy, backward).
fn loss_and_gradients(
    checkpoint: &Checkpoint,
    input: &Array,
    device: &Device,
) -> (f32, NamedGradients) {
    loss_and_gradients_in(checkpoint, input, device, Precision::Fp32)
}

/// [`loss_and_gradients`] with the encoder computing in `precision`.
fn loss_and_gradients_in(
    checkpoint: &Checkpoint,
    input: &Array,
    device: &Device,
    precision: Precision,
) -> (f32, NamedGradients) {
    let model = checkpoint.build(device).expect("model builds");
    let model = model.with_precision(precision);
    let logits = model.forward(images(input, device));
    let [batch, classes] = logits.dims();
    let targets: Vec<usize> = (0..batch).map(|i| (2 * i + 1) % classes).collect();
    let loss = cross_entropy(logits, &targets);
    let value = loss.clone().into_scalar::<f32>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut visitor = CollectGradients {
        grads: &grads,
        path: vec![],
        found: vec![],
    };
    model.visit(&mut visitor);
    (value, visitor.found)
}

#[test]
fn training_gradients_agree_on_flex_and_tch() {
    check_all("gradients", |case| {
        if case.output != "logits" {
            return vec![]; // no classification head to train
        }
        let mut checkpoint = case.load();
        checkpoint.config.dropout = 0.0;
        checkpoint.config.attention_dropout = 0.0;
        let input = case.input();
        let (flex_loss, flex) = loss_and_gradients(&checkpoint, &input, &Device::flex().autodiff());
        let (tch_loss, tch) = loss_and_gradients(&checkpoint, &input, &libtorch().autodiff());
        let mut failures = vec![];
        let loss_diff = (flex_loss - tch_loss).abs();
        if loss_diff >= tolerance(&[flex_loss]) {
            failures.push(format!(
                "{}: loss {flex_loss} on flex, {tch_loss} on tch",
                case.checkpoint
            ));
        }
        assert_eq!(
            flex.len(),
            tch.len(),
            "{}: parameter count",
            case.checkpoint
        );
        assert!(
            flex.iter()
                .any(|(_, grad)| grad.as_ref().is_some_and(|g| g.iter().any(|&x| x != 0.0))),
            "{}: no non-zero gradient on flex",
            case.checkpoint
        );
        let mut worst = (0.0f32, String::new());
        for ((path, flex), (tch_path, tch)) in flex.iter().zip(&tch) {
            assert_eq!(path, tch_path, "{}: parameter order", case.checkpoint);
            match (flex, tch) {
                (Some(flex), Some(tch)) => {
                    let diff = max_abs_diff(flex, tch);
                    let allowed = tolerance(flex);
                    if diff > worst.0 {
                        worst = (diff, path.clone());
                    }
                    if diff >= allowed {
                        failures.push(format!(
                            "{}: gradient of {path} max abs diff {diff:e} (allowed {allowed:e})",
                            case.checkpoint
                        ));
                    }
                }
                (None, None) => {}
                _ => failures.push(format!(
                    "{}: gradient of {path} only on {}",
                    case.checkpoint,
                    if flex.is_some() { "flex" } else { "tch" }
                )),
            }
        }
        println!(
            "{}: loss diff {loss_diff:e}, worst gradient {} max abs diff {:e}",
            case.checkpoint, worst.1, worst.0
        );
        failures
    });
}

/// Training on tch runs attention through our memory-saving operation
/// (`vit::model::training_attention`): its output and gradients equal the decomposed
/// attention's (which keeps the probabilities, as attention rollout needs) within 1e-5.
#[test]
fn training_attention_equals_the_decomposed_attention_on_tch() {
    use vit::model::{MultiHeadDotProductAttention, training_attention};
    let device = libtorch().autodiff();
    assert!(training_attention::supported(&device));
    let attention = MultiHeadDotProductAttention::new(16, 4, 0.0, &device);
    let values = |seed: f32| {
        let data: Vec<f32> = (0..2 * 7 * 16)
            .map(|index| ((index as f32 + seed) * 0.7548).sin())
            .collect();
        Tensor::<3>::from_data(TensorData::new(data, [2, 7, 16]), &device)
    };
    let run = |fused: bool| {
        let x = values(0.0).require_grad();
        let output = if fused {
            attention.forward(x.clone())
        } else {
            attention.forward_with_probabilities(x.clone()).0
        };
        let grads = (output.clone() * values(11.0)).sum().backward();
        let read = |tensor: Tensor<3>| tensor.try_into_vec_as::<f32>().expect("f32 values");
        let kernel = attention.qkv.weight.grad(&grads).expect("qkv gradient");
        [
            read(output.inner()),
            read(x.grad(&grads).expect("input gradient")),
            read(kernel.unsqueeze()),
        ]
    };
    let (fused, decomposed) = (run(true), run(false));
    for (what, (ours, theirs)) in ["output", "input gradient", "qkv kernel gradient"]
        .iter()
        .zip(fused.iter().zip(&decomposed))
    {
        let diff = max_abs_diff(ours, theirs);
        assert!(diff < 1e-5, "{what}: max abs diff {diff:e}");
        assert!(theirs.iter().any(|x| x.abs() > 1e-3), "{what} is all zero");
    }
}

/// `‖a − b‖ / ‖b‖` over all the values of `a` and `b`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let difference: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let size: f32 = b.iter().map(|y| y * y).sum();
    (difference / size).sqrt()
}

/// bfloat16 mixed precision (`--precision bf16`) on libtorch, against PyTorch's own
/// bfloat16 autocast on the same model (timm, `google_token.autocast.safetensors`, made by
/// `tests/fixtures/generate.py autocast`): our logits, loss and gradients are no further
/// from float32's than autocast's are (relative error of the whole result; a margin of
/// 1.5 for libtorch's bfloat16 kernels, which differ between CPUs; measured: ours 1.0%,
/// 0.5% and 3.0%, autocast's 1.2%, 0.9% and 5.1%), and further than float32's own rounding
/// (1e-4), so that bfloat16 is in effect. The attention maps are within 3% (measured 0.8%
/// and 2.1%). Weights and gradients stay float32 (checked in `CollectGradients`), and so
/// do the outputs.
#[test]
fn bf16_mixed_precision_follows_float32_as_pytorch_autocast_does_on_tch() {
    const MARGIN: f32 = 1.5;
    const FLOAT32: f32 = 1e-4;
    let autocast = read_tensors("google_token.autocast.safetensors");
    let yardstick = |what: &str| {
        relative_error(
            &autocast[&format!("{what}_bf16")].data,
            &autocast[&format!("{what}_fp32")].data,
        )
    };
    let case = &CASES[0];
    assert_eq!(case.checkpoint, "google_token.npz");
    let checkpoint = case.load();
    let input = case.input();
    let device = libtorch();
    let model = build(case, &checkpoint, &device);
    let fp32 = model.forward_with_attention(images(&input, &device));
    let bf16 =
        (model.with_precision(Precision::Bf16)).forward_with_attention(images(&input, &device));
    let read = |tensor: Tensor<2>| {
        assert_eq!(tensor.dtype(), DType::F32);
        tensor.try_into_vec_as::<f32>().unwrap()
    };
    let (fp32_logits, bf16_logits) = (read(fp32.logits), read(bf16.logits));
    let checks = |what: &str, ours: &[f32], fp32: &[f32]| {
        let (error, allowed) = (relative_error(ours, fp32), MARGIN * yardstick(what));
        println!(
            "{what}: relative error of bf16 {error:e}, autocast's {:e}",
            yardstick(what)
        );
        assert!(
            error < allowed && error > FLOAT32,
            "{what}: relative error of bf16 {error:e} (allowed {allowed:e})"
        );
    };
    checks("logits", &bf16_logits, &fp32_logits);
    // The same model as timm's: float32 logits as the fixture's.
    let diff = max_abs_diff(&fp32_logits, &autocast["logits_fp32"].data);
    assert!(
        diff < tolerance(&fp32_logits),
        "float32 logits differ from timm's by {diff:e}"
    );
    for (layer, (fp32, bf16)) in fp32.attentions.into_iter().zip(bf16.attentions).enumerate() {
        let flat = |tensor: Tensor<4>| read(tensor.flatten::<2>(0, 2));
        let error = relative_error(&flat(bf16), &flat(fp32));
        println!("attention {layer}: relative error of bf16 {error:e}");
        assert!(error < 3e-2, "attention {layer}: relative error {error:e}");
    }

    let training = libtorch().autodiff();
    let (fp32_loss, fp32) = loss_and_gradients_in(&checkpoint, &input, &training, Precision::Fp32);
    let (bf16_loss, bf16) = loss_and_gradients_in(&checkpoint, &input, &training, Precision::Bf16);
    let diff = (fp32_loss - autocast["loss_fp32"].data[0]).abs();
    assert!(
        diff < tolerance(&[fp32_loss]),
        "float32 loss differs from timm's by {diff:e}"
    );
    checks("loss", &[bf16_loss], &[fp32_loss]);
    let flat = |grads: &NamedGradients| -> Vec<f32> {
        grads
            .iter()
            .flat_map(|(_, grad)| grad.clone().unwrap_or_default())
            .collect()
    };
    checks("gradients", &flat(&bf16), &flat(&fp32));
}
