//! Writes a random-weight ViT in the export format (config.json + model.safetensors),
//! labelled with the CIFAR-10 classes and described as untrained: models of any
//! size for timing (`tests/web/bench.sh`). The site ships a trained model instead.
//!
//! cargo run --release -p web --example make_demo_model -- web/model
//! cargo run --release -p web --example make_demo_model -- /tmp/vit-b16 --preset B/16 --f32

use std::path::PathBuf;
use std::process::ExitCode;

use burn::nn::{Initializer, LinearConfig};
use burn::tensor::Device;
use vit::{Checkpoint, SaveOptions, ViTConfig, VisionTransformer, labels};

const USAGE: &str = "usage: make_demo_model OUT_DIR [--preset NAME] [--f32] [--seed N]";

struct Args {
    out: PathBuf,
    preset: Option<String>,
    float16: bool,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let mut preset = None;
    let mut float16 = true;
    let mut seed = 42;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--preset" => preset = Some(args.next().ok_or("--preset needs a name")?),
            "--f32" => float16 = false,
            "--seed" => {
                let value = args.next().ok_or("--seed needs a number")?;
                seed = value.parse().map_err(|_| format!("bad seed `{value}`"))?;
            }
            other if other.starts_with("--") => return Err(format!("unknown option `{other}`")),
            other => out = Some(PathBuf::from(other)),
        }
    }
    Ok(Args {
        out: out.ok_or("missing OUT_DIR")?,
        preset,
        float16,
        seed,
    })
}

/// The shipped demo model: CIFAR-10 size (32 px), 4 px patches (an 8x8
/// attention map), 6 layers of width 128: about 1.2 M parameters, 2.4 MB in f16.
fn tiny_config() -> ViTConfig {
    ViTConfig {
        image_size: 32,
        patch_size: 4,
        hidden_size: 128,
        mlp_dim: 512,
        num_heads: 4,
        num_layers: 6,
        ..ViTConfig::preset("Ti/16").expect("Ti/16 is a known preset")
    }
    .with_num_classes(labels::CIFAR10.len())
}

fn run(args: &Args) -> Result<(), String> {
    let config = match &args.preset {
        Some(name) => ViTConfig::preset(name)
            .map_err(|error| error.to_string())?
            .with_num_classes(labels::CIFAR10.len()),
        None => tiny_config(),
    };
    let device = Device::flex();
    device.seed(args.seed);
    let mut model = VisionTransformer::new(&config, &device).map_err(|error| error.to_string())?;
    // The reference initialises the head to zero, which would give every class
    // 10 %; a random head makes the ranking (and the tests) meaningful.
    let width = config.representation_width();
    model.head = Some(
        LinearConfig::new(width, config.num_classes)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 1.0 / (width as f64).sqrt(),
            })
            .init(&device),
    );
    let mut checkpoint = Checkpoint::from_model(&model, Some(labels::owned(&labels::CIFAR10)));
    checkpoint.description = Some("Random weights, not trained: for timing and tests".into());
    checkpoint
        .save(
            &args.out,
            SaveOptions {
                float16: args.float16,
            },
        )
        .map_err(|error| error.to_string())?;
    println!(
        "wrote {} ({} parameters, {})",
        args.out.display(),
        config.num_params(),
        if args.float16 { "f16" } else { "f32" }
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
