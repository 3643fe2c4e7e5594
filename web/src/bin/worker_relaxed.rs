//! Entry of the inference Web Worker built with relaxed SIMD (the `relaxed-simd`
//! feature: fused multiply-add in the matmul kernel); the page starts it instead of
//! `worker` where the browser validates relaxed SIMD instructions.

#[cfg(target_arch = "wasm32")]
fn main() {
    web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in the browser: build it with trunk");
}
