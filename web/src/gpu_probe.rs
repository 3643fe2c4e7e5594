//! Whether this browser can give us a WebGPU adapter, asked the same way by the page
//! (before it picks which worker to load: the WebGPU one is eight times larger) and by
//! the worker (before it starts burn's WebGPU runtime), so both give the same reason.

use js_sys::Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// The browser's `GPUAdapter` with the `subgroups` feature that burn's kernels need,
/// or why there is none. `navigator` is the window's or the worker's.
pub async fn adapter(navigator: &JsValue) -> Result<JsValue, String> {
    // Without `navigator.gpu` (no WebGPU in this browser, or not a secure context such
    // as https or localhost) wgpu would fail less clearly.
    let gpu =
        js_sys::Reflect::get(navigator, &JsValue::from_str("gpu")).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser offers no WebGPU here (navigator.gpu is missing)".to_owned());
    }
    let adapter = js_call(&gpu, "requestAdapter", &[]).await?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("the browser has WebGPU but no GPU adapter for it".to_owned());
    }
    let features = js_sys::Reflect::get(&adapter, &JsValue::from_str("features"))
        .map_err(|error| format!("{error:?}"))?;
    let has_subgroups = js_call(&features, "has", &[JsValue::from_str("subgroups")]).await?;
    if has_subgroups.as_bool() != Some(true) {
        return Err("the GPU adapter lacks WebGPU subgroups, which burn's kernels need".to_owned());
    }
    Ok(adapter)
}

/// `target.method(arguments...)`, awaited when it returns a promise.
async fn js_call(target: &JsValue, method: &str, arguments: &[JsValue]) -> Result<JsValue, String> {
    let function: js_sys::Function = js_sys::Reflect::get(target, &JsValue::from_str(method))
        .ok()
        .and_then(|value| value.dyn_into().ok())
        .ok_or_else(|| format!("the browser's WebGPU has no `{method}`"))?;
    let arguments: Array = arguments.iter().collect();
    let value = function
        .apply(target, &arguments)
        .map_err(|error| format!("`{method}` failed: {error:?}"))?;
    match value.dyn_into::<js_sys::Promise>() {
        Ok(promise) => wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .map_err(|error| format!("`{method}` failed: {error:?}")),
        Err(value) => Ok(value),
    }
}
