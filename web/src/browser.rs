//! Small wrappers over browser APIs used by the page: downloads with
//! progress, file contents, object URLs.

use js_sys::{ArrayBuffer, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, ReadableStreamDefaultReader, Response};

/// A failed browser call, as text for the user.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("cannot download {url}: {message}")]
    Download { url: String, message: String },
    #[error("cannot read the file: {0}")]
    Read(String),
}

fn describe(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

pub fn window() -> web_sys::Window {
    // The page code only runs in a window.
    web_sys::window().expect("the page runs in a browser window")
}

/// Whether the browser runs relaxed SIMD (fused multiply-add and friends), so that the
/// worker built with it loads. Checked by validating the smallest module that uses one
/// relaxed instruction: `(func (result v128) i32.const 1 i8x16.splat i32.const 2
/// i8x16.splat i8x16.relaxed_swizzle)`.
pub fn has_relaxed_simd() -> bool {
    const MODULE: [u8; 36] = [
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
        0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
        0x03, 0x02, 0x01, 0x00, // functions: one, of type 0
        0x0a, 0x0f, 0x01, 0x0d, 0x00, // code: one body of 13 bytes, no locals
        0x41, 0x01, 0xfd, 0x0f, // i32.const 1, i8x16.splat
        0x41, 0x02, 0xfd, 0x0f, // i32.const 2, i8x16.splat
        0xfd, 0x80, 0x02, // i8x16.relaxed_swizzle (0xfd 256)
        0x0b, // end
    ];
    js_sys::WebAssembly::validate(&Uint8Array::from(&MODULE[..]).into()).unwrap_or(false)
}

/// Whether the page is cross-origin isolated (its host sends `Cross-Origin-Opener-Policy:
/// same-origin` and `Cross-Origin-Embedder-Policy: require-corp`), which the threaded
/// worker's shared memory needs.
pub fn cross_origin_isolated() -> bool {
    // Not in web-sys's `Window`.
    Reflect::get(&window(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|value| value.as_bool())
        .unwrap_or(false)
}

/// The backend the page's address asks for (`?backend=webgpu` or `?backend=wasm`), if any.
pub fn requested_backend() -> Option<crate::protocol::Backend> {
    let search = window().location().search().ok()?;
    let parameters = web_sys::UrlSearchParams::new_with_str(&search).ok()?;
    crate::protocol::Backend::parse(&parameters.get("backend")?)
}

/// Whether the browser gives this page a WebGPU adapter that burn can use.
pub async fn has_webgpu() -> bool {
    crate::gpu_probe::adapter(&window().navigator())
        .await
        .is_ok()
}

/// Downloads `url` (relative to the page's base URL), calling `on_progress`
/// with (bytes received, total from Content-Length) after every chunk.
pub async fn download(
    url: &str,
    mut on_progress: impl FnMut(u64, Option<u64>),
) -> Result<ArrayBuffer, BrowserError> {
    let fail = |message: String| BrowserError::Download {
        url: url.to_owned(),
        message,
    };
    let response: Response = JsFuture::from(window().fetch_with_str(url))
        .await
        .map_err(|error| fail(describe(&error)))?
        .unchecked_into();
    if !response.ok() {
        return Err(fail(format!(
            "HTTP {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|length| length.parse::<u64>().ok());
    let Some(body) = response.body() else {
        return Err(fail("the response has no body".to_owned()));
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut chunks = Vec::new();
    let mut received = 0u64;
    on_progress(0, total);
    loop {
        let step = JsFuture::from(reader.read())
            .await
            .map_err(|error| fail(describe(&error)))?;
        let done = Reflect::get(&step, &"done".into())
            .ok()
            .and_then(|done| done.as_bool())
            .unwrap_or(true);
        if done {
            break;
        }
        let chunk: Uint8Array = Reflect::get(&step, &"value".into())
            .map_err(|error| fail(describe(&error)))?
            .unchecked_into();
        received += u64::from(chunk.length());
        chunks.push(chunk);
        on_progress(received, total);
    }
    Ok(concat(&chunks, received))
}

fn concat(chunks: &[Uint8Array], length: u64) -> ArrayBuffer {
    let all = Uint8Array::new_with_length(length as u32);
    let mut offset = 0u32;
    for chunk in chunks {
        all.set(chunk, offset);
        offset += chunk.length();
    }
    all.buffer()
}

/// The whole contents of a file or blob.
pub async fn read_blob(blob: &Blob) -> Result<ArrayBuffer, BrowserError> {
    JsFuture::from(blob.array_buffer())
        .await
        .map(JsCast::unchecked_into)
        .map_err(|error| BrowserError::Read(describe(&error)))
}

/// A URL showing `blob` in an `<img>`; revoke it with [`revoke_url`].
pub fn object_url(blob: &Blob) -> Option<String> {
    web_sys::Url::create_object_url_with_blob(blob).ok()
}

pub fn revoke_url(url: &str) {
    if url.starts_with("blob:") {
        // Only fails for URLs that are not object URLs.
        let _ = web_sys::Url::revoke_object_url(url);
    }
}

/// Offers `bytes` to the user as a download named `name`.
pub fn save_file(name: &str, bytes: &ArrayBuffer) -> Result<(), BrowserError> {
    let fail = |error: JsValue| BrowserError::Read(describe(&error));
    let parts = js_sys::Array::of1(bytes);
    let blob = Blob::new_with_buffer_source_sequence(&parts).map_err(fail)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(fail)?;
    let document = window()
        .document()
        .ok_or_else(|| BrowserError::Read("no document".to_owned()))?;
    let link: web_sys::HtmlAnchorElement =
        document.create_element("a").map_err(fail)?.unchecked_into();
    link.set_href(&url);
    link.set_download(name);
    link.click();
    // The download has its own reference to the blob by now.
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}
