//! Entry of the page (built by trunk from index.html).

#[cfg(target_arch = "wasm32")]
fn main() {
    web::app::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the page runs in the browser: `trunk serve` or `trunk build --release`");
}
