//! The inference Web Worker: receives models and images from the page, runs
//! them on burn-flex, and posts back results, so the page never freezes. It also
//! teaches the loaded model new classes ([`crate::teach`]), a unit of work at a time.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use vit::checkpoint::ByteSource;

use crate::classify::{LoadedModel, ModelError};
use crate::protocol::{self, Classification, Request, Response};
use crate::teach::{Lesson, TeachOptions};

struct Worker {
    scope: DedicatedWorkerGlobalScope,
    device: Device,
    /// The model loaded from files; replaced only by one that loaded, so a bad file
    /// keeps the old one.
    base: Option<LoadedModel>,
    /// What teaching made of `base`, which classifies until a reset or a new model.
    taught: Option<LoadedModel>,
    /// The latest teaching request; an older lesson still running stops at its next
    /// unit of work. 0 when none may run.
    teaching: u64,
}

/// Installs the message handler and tells the page the worker is up.
pub fn start() {
    console_error_panic_hook::set_once();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let worker = Rc::new(RefCell::new(Worker {
        scope: scope.clone(),
        device: Device::flex(),
        base: None,
        taught: None,
        teaching: 0,
    }));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        Worker::handle(&worker, &event);
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
    fn handle(this: &Rc<RefCell<Self>>, event: &MessageEvent) {
        let message: Array = event.data().unchecked_into();
        let header = message.get(0).as_string().unwrap_or_default();
        let request = match protocol::decode::<Request>(&header) {
            Ok(request) => request,
            Err(error) => {
                web_sys::console::error_1(&format!("bad request `{header}`: {error}").into());
                return;
            }
        };
        let mut worker = this.borrow_mut();
        let response = match request {
            Request::LoadModel { source } => {
                let weights = JsBuffer(
                    message
                        .get(2)
                        .dyn_into::<ArrayBuffer>()
                        .unwrap_or_else(|_| ArrayBuffer::new(0)),
                );
                worker.load_model(source, &payload(&message, 1), &weights)
            }
            Request::LoadZip { source } => {
                let zip = payload(&message, 1);
                let loaded = LoadedModel::from_zip(&zip, &source, &worker.device);
                worker.install(source, loaded)
            }
            Request::Classify { request_id } => worker.classify(request_id, &payload(&message, 1)),
            Request::Teach {
                request_id,
                classes,
                counts,
            } => {
                worker.teaching = request_id;
                let mut next = 1;
                let images = counts
                    .iter()
                    .map(|&count| {
                        let files = (next..next + count as u32)
                            .map(|index| payload(&message, index))
                            .collect();
                        next += count as u32;
                        files
                    })
                    .collect();
                drop(worker);
                wasm_bindgen_futures::spawn_local(teach(this.clone(), request_id, classes, images));
                return;
            }
            Request::ResetModel => {
                worker.teaching = 0;
                worker.taught = None;
                match &worker.base {
                    Some(base) => Response::ModelLoaded { model: base.info() },
                    None => return,
                }
            }
            Request::ExportTaught => match worker.taught.as_ref().map(LoadedModel::export_zip) {
                Some(Ok(zip)) => {
                    let response = Response::Exported {
                        file_name: "taught-model.zip".to_owned(),
                    };
                    post_with(&worker.scope, &response, &zip);
                    return;
                }
                Some(Err(error)) => Response::ExportFailed {
                    message: error.to_string(),
                },
                None => Response::ExportFailed {
                    message: "nothing has been taught yet".to_owned(),
                },
            },
        };
        post(&worker.scope, &response);
    }

    fn load_model(&mut self, source: String, config: &[u8], weights: &JsBuffer) -> Response {
        let loaded = LoadedModel::from_export(config, weights, &source, &self.device);
        self.install(source, loaded)
    }

    /// A model that loaded replaces the old one (and what was taught from it).
    fn install(&mut self, source: String, loaded: Result<LoadedModel, ModelError>) -> Response {
        match loaded {
            Ok(model) => {
                let mut info = model.info();
                info.memory_bytes = Some(memory_bytes());
                self.base = Some(model);
                self.taught = None;
                self.teaching = 0;
                Response::ModelLoaded { model: info }
            }
            Err(error) => Response::ModelFailed {
                source,
                message: error.to_string(),
            },
        }
    }

    fn classify(&self, request_id: u64, image: &[u8]) -> Response {
        let Some(model) = self.taught.as_ref().or(self.base.as_ref()) else {
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

/// Runs lesson `request_id` one unit at a time, yielding to the event loop in between
/// so that progress reaches the page and a newer request (or a reset) can cancel it.
async fn teach(
    this: Rc<RefCell<Worker>>,
    request_id: u64,
    classes: Vec<String>,
    images: Vec<Vec<Vec<u8>>>,
) {
    let scope = this.borrow().scope.clone();
    let fail = |message: String| {
        post(
            &scope,
            &Response::TeachFailed {
                request_id,
                message,
            },
        )
    };
    let lesson = match &this.borrow().base {
        Some(base) => Lesson::new(base.model(), classes, &images, TeachOptions::default()),
        None => return fail("no model is loaded yet".to_owned()),
    };
    let mut lesson = match lesson {
        Ok(lesson) => lesson,
        Err(error) => return fail(error.to_string()),
    };
    let total = lesson.total();
    while !lesson.is_finished() {
        next_tick(&scope).await;
        let worker = this.borrow();
        let Some(base) = worker
            .base
            .as_ref()
            .filter(|_| worker.teaching == request_id)
        else {
            return;
        };
        if let Err(error) = lesson.step(base.model(), base.device()) {
            return fail(error.to_string());
        }
        let done = lesson.done();
        post(
            &scope,
            &Response::TeachProgress {
                request_id,
                done,
                total,
            },
        );
    }
    let mut worker = this.borrow_mut();
    if worker.teaching != request_id {
        return;
    }
    let (Some(base), Some((head, labels, accuracy))) = (&worker.base, lesson.finish()) else {
        return;
    };
    let taught = base.taught(&head, labels);
    let mut model = taught.info();
    model.memory_bytes = Some(memory_bytes());
    worker.taught = Some(taught);
    post(
        &scope,
        &Response::Taught {
            request_id,
            accuracy,
            model,
        },
    );
}

/// Resolves on the event loop's next turn, after messages that arrived meanwhile.
async fn next_tick(scope: &DedicatedWorkerGlobalScope) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        if scope.set_timeout_with_callback(&resolve).is_err() {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
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

/// Posts `response` with `bytes` as its payload, moved to the page.
fn post_with(scope: &DedicatedWorkerGlobalScope, response: &Response, bytes: &[u8]) {
    let buffer = Uint8Array::from(bytes).buffer();
    let message = Array::of2(&JsValue::from_str(&protocol::encode(response)), &buffer);
    if let Err(error) = scope.post_message_with_transfer(&message, &Array::of1(&buffer)) {
        web_sys::console::error_1(&error);
    }
}

fn post(scope: &DedicatedWorkerGlobalScope, response: &Response) {
    let message = Array::of1(&JsValue::from_str(&protocol::encode(response)));
    if let Err(error) = scope.post_message(&message) {
        web_sys::console::error_1(&error);
    }
}
