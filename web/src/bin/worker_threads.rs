//! Entry of the inference Web Worker on several threads (the `threads` feature, built by
//! `web/build-threads.sh`); the page starts it instead of the one-thread CPU workers
//! where the page is cross-origin isolated, which shared memory needs.

#[cfg(target_arch = "wasm32")]
fn main() {
    web::worker::start_with_threads();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the worker runs in the browser: build it with web/build-threads.sh");
}
