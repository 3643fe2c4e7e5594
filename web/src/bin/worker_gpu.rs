//! Entry of the inference Web Worker with WebGPU (built by trunk with the `webgpu`
//! feature); the page starts it instead of `worker` where the browser has WebGPU.

#[cfg(target_arch = "wasm32")]
fn main() {
    web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in the browser: build it with trunk");
}
