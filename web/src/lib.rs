//! The browser demo: a leptos page (`app`) that hands images to an inference
//! Web Worker (`worker`), which runs the model crate's ViT on WebGPU or burn-flex
//! (wasm SIMD) and returns the top classes and an attention-rollout map.
//!
//! Everything except the browser glue compiles and is tested natively.

pub mod classify;
pub mod display;
pub mod heatmap;
pub mod image_input;
pub mod protocol;
pub mod rollout;
pub mod samples;
pub mod teach;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
mod gpu_probe;
#[cfg(target_arch = "wasm32")]
pub mod worker;
#[cfg(target_arch = "wasm32")]
mod worker_client;

/// The shipped model, relative to the site's base URL.
pub const SHIPPED_CONFIG_URL: &str = "model/config.json";
pub const SHIPPED_WEIGHTS_URL: &str = "model/model.safetensors";
/// The shipped model's card (`models/cifar10-demo/`, copied by trunk): its measured
/// accuracy, how it was made, the confusion matrix and the training curves.
pub const SHIPPED_CARD_DIR: &str = "cifar10-demo/";
/// The source name the page gives the shipped model.
pub const SHIPPED_SOURCE: &str = "the shipped model";
/// The workers' entry scripts written by trunk (`data-loader-shim`): the CPU-only worker,
/// the same with relaxed SIMD (for browsers that have it), and the one that also has
/// WebGPU (a much larger download).
pub const WORKER_SCRIPT_URL: &str = "worker_loader.js";
pub const RELAXED_WORKER_SCRIPT_URL: &str = "worker-relaxed_loader.js";
pub const GPU_WORKER_SCRIPT_URL: &str = "worker-gpu_loader.js";
/// The threaded CPU worker's entry, an ES module (`web/worker-threads_loader.js`, copied
/// with the build by `web/build-threads.sh`).
pub const THREADS_WORKER_SCRIPT_URL: &str = "worker-threads_loader.js";
