//! The inference Web Worker: receives models and images from the page, runs
//! them on burn-flex, and posts back results, so the page never freezes.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use vit::checkpoint::ByteSource;

use crate::classify::LoadedModel;
use crate::protocol::{self, Classification, Request, Response};

struct Worker {
    scope: DedicatedWorkerGlobalScope,
    device: Device,
    /// Replaced only by a model that loaded, so a bad file keeps the old one.
    model: Option<LoadedModel>,
}

/// Installs the message handler and tells the page the worker is up.
pub fn start() {
    console_error_panic_hook::set_once();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let worker = Rc::new(RefCell::new(Worker {
        scope: scope.clone(),
        device: Device::flex(),
        model: None,
    }));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        worker.borrow_mut().handle(&event);
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    on_message.forget();
    post(
        &scope,
        &Response::Started {
            backend: crate::BACKEND.to_owned(),
        },
    );
}

impl Worker {
    fn handle(&mut self, event: &MessageEvent) {
        let message: Array = event.data().unchecked_into();
        let header = message.get(0).as_string().unwrap_or_default();
        let response = match protocol::decode::<Request>(&header) {
            Ok(Request::LoadModel { source }) => {
                let weights = JsBuffer(
                    message
                        .get(2)
                        .dyn_into::<ArrayBuffer>()
                        .unwrap_or_else(|_| ArrayBuffer::new(0)),
                );
                self.load_model(source, &payload(&message, 1), &weights)
            }
            Ok(Request::Classify { request_id }) => {
                self.classify(request_id, &payload(&message, 1))
            }
            Err(error) => {
                web_sys::console::error_1(&format!("bad request `{header}`: {error}").into());
                return;
            }
        };
        post(&self.scope, &response);
    }

    fn load_model(&mut self, source: String, config: &[u8], weights: &JsBuffer) -> Response {
        match LoadedModel::from_export(config, weights, &source, &self.device) {
            Ok(model) => {
                let mut info = model.info();
                info.memory_bytes = Some(memory_bytes());
                self.model = Some(model);
                Response::ModelLoaded { model: info }
            }
            Err(error) => Response::ModelFailed {
                source,
                message: error.to_string(),
            },
        }
    }

    fn classify(&self, request_id: u64, image: &[u8]) -> Response {
        let Some(model) = &self.model else {
            return Response::ClassifyFailed {
                request_id,
                message: "no model is loaded yet".to_owned(),
            };
        };
        let started_ms = self.now_ms();
        match model.classify(image) {
            Ok(outcome) => Response::Classified {
                request_id,
                result: Classification {
                    top: outcome.top,
                    latency_ms: self.now_ms() - started_ms,
                    rollout: outcome.rollout,
                    grid: outcome.grid,
                },
            },
            Err(error) => Response::ClassifyFailed {
                request_id,
                message: error.to_string(),
            },
        }
    }

    fn now_ms(&self) -> f64 {
        self.scope
            .performance()
            .map_or_else(js_sys::Date::now, |performance| performance.now())
    }
}

/// The page's buffer of a weights file, read one tensor at a time: the file itself
/// never enters the wasm heap, which holds only the model it describes.
struct JsBuffer(ArrayBuffer);

impl ByteSource for JsBuffer {
    fn len(&self) -> u64 {
        u64::from(self.0.byte_length())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let out_of_range = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.len())
            .ok_or_else(out_of_range)?;
        let start = u32::try_from(offset).map_err(|_| out_of_range())?;
        let length = u32::try_from(end - offset).map_err(|_| out_of_range())?;
        Uint8Array::new_with_byte_offset_and_length(&self.0, start, length).copy_to(buf);
        Ok(())
    }
}

/// The size of this worker's wasm memory, which only grows.
fn memory_bytes() -> u64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer: ArrayBuffer = memory.buffer().unchecked_into();
    u64::from(buffer.byte_length())
}

/// The `index`-th payload of a message as bytes (empty when absent).
fn payload(message: &Array, index: u32) -> Vec<u8> {
    message
        .get(index)
        .dyn_into::<ArrayBuffer>()
        .map(|buffer| Uint8Array::new(&buffer).to_vec())
        .unwrap_or_default()
}

fn post(scope: &DedicatedWorkerGlobalScope, response: &Response) {
    let message = Array::of1(&JsValue::from_str(&protocol::encode(response)));
    if let Err(error) = scope.post_message(&message) {
        web_sys::console::error_1(&error);
    }
}
