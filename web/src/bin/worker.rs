//! Entry of the inference Web Worker (built by trunk with `data-type="worker"`).

#[cfg(target_arch = "wasm32")]
fn main() {
    web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in the browser: build it with trunk");
}
