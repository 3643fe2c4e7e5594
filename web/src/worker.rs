//! The inference Web Worker: receives models and images from the page, runs
//! them on WebGPU where the browser has it and the page asks for it, on burn-flex
//! (wasm SIMD) otherwise, and posts back results, so the page never freezes. It also
//! teaches the loaded model new classes ([`crate::teach`]), a unit of work at a time.
//!
//! Models live on the CPU, where loading, teaching and export read them; the GPU holds
//! a copy of the one that classifies. A WebGPU failure at start-up or during a
//! classification switches to the CPU and says why ([`Response::Backend`]).

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use vit::checkpoint::ByteSource;

use crate::classify::{Classifier, ClassifyError, LoadedModel, ModelError};
use crate::protocol::{self, Backend, Classification, Request, Response, WebGpu};
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
    /// What the page asked to run the model on.
    wanted: Backend,
    webgpu: WebGpu,
    /// The WebGPU device once it started.
    gpu: Option<Device>,
    /// The classifying model on the GPU, while WebGPU is the active backend.
    on_gpu: Option<Classifier>,
}

/// Installs the message handler and tells the page the worker is up (on one thread).
pub fn start() {
    console_error_panic_hook::set_once();
    serve(1);
}

/// Starts a pool of threads for the matmul kernel (rayon's, on Web Workers that share
/// this one's memory), then serves as [`start`] does. One thread per logical core, at
/// most [`MAX_THREADS`]; if the pool cannot start, one thread, with the reason in the
/// console.
#[cfg(feature = "threads")]
pub fn start_with_threads() {
    console_error_panic_hook::set_once();
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let threads = (scope.navigator().hardware_concurrency() as usize).clamp(1, MAX_THREADS);
    wasm_bindgen_futures::spawn_local(async move {
        let pool = wasm_bindgen_rayon::init_thread_pool(threads);
        match wasm_bindgen_futures::JsFuture::from(pool).await {
            Ok(_) => serve(threads),
            Err(error) => {
                web_sys::console::error_2(&"cannot start the thread pool:".into(), &error);
                serve(1);
            }
        }
    });
}

/// The most threads the threaded worker starts: ViT-B/16's products split into more
/// blocks than that would be narrower than a few kernel panels each, and every thread
/// is a Web Worker with its own copy of the compiled module.
#[cfg(feature = "threads")]
const MAX_THREADS: usize = 16;

fn serve(threads: usize) {
    // Set once per worker; a second call cannot happen, and would only keep the first.
    let _ = log::set_logger(&ConsoleLog).map(|()| log::set_max_level(log::LevelFilter::Error));
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let worker = Rc::new(RefCell::new(Worker {
        scope: scope.clone(),
        device: Device::flex(),
        base: None,
        taught: None,
        teaching: 0,
        wanted: Backend::Wasm,
        webgpu: WebGpu::NotRequested,
        gpu: None,
        on_gpu: None,
    }));
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        Worker::handle(&worker, &event);
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    on_message.forget();
    post(&scope, &Response::Started { threads });
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
            Request::Classify { request_id } => {
                let image = payload(&message, 1);
                drop(worker);
                wasm_bindgen_futures::spawn_local(classify(this.clone(), request_id, image));
                return;
            }
            Request::SetBackend { backend } => {
                worker.wanted = backend;
                if backend == Backend::Webgpu && worker.webgpu == WebGpu::NotRequested {
                    worker.webgpu = WebGpu::Starting;
                    wasm_bindgen_futures::spawn_local(start_webgpu(this.clone()));
                }
                worker.follow_backend();
                worker.backend_response()
            }
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
                worker.follow_backend();
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
                self.follow_backend();
                Response::ModelLoaded { model: info }
            }
            Err(error) => Response::ModelFailed {
                source,
                message: error.to_string(),
            },
        }
    }

    /// The model that classifies: the taught one, else the loaded one.
    fn current(&self) -> Option<&LoadedModel> {
        self.taught.as_ref().or(self.base.as_ref())
    }

    fn active(&self) -> Backend {
        match (&self.gpu, self.wanted) {
            (Some(_), Backend::Webgpu) => Backend::Webgpu,
            _ => Backend::Wasm,
        }
    }

    /// Puts the classifying model where the active backend runs it (a copy on the GPU,
    /// or none).
    fn follow_backend(&mut self) {
        self.on_gpu = match (self.active(), &self.gpu, self.current()) {
            (Backend::Webgpu, Some(gpu), Some(model)) => Some(model.classifier().to_device(gpu)),
            _ => None,
        };
    }

    fn backend_response(&self) -> Response {
        Response::Backend {
            active: self.active(),
            webgpu: self.webgpu.clone(),
        }
    }

    /// WebGPU failed: the CPU from now on, and the page is told why.
    fn give_up_webgpu(&mut self, reason: String) {
        web_sys::console::error_1(&format!("WebGPU: {reason}").into());
        self.webgpu = WebGpu::Unavailable { reason };
        self.gpu = None;
        self.follow_backend();
        post(&self.scope, &self.backend_response());
    }
}

fn now_ms(scope: &DedicatedWorkerGlobalScope) -> f64 {
    scope
        .performance()
        .map_or_else(js_sys::Date::now, |performance| performance.now())
}

/// Asks the browser for a GPU and starts burn's WebGPU runtime on it; the model moves
/// there if the page still wants it.
async fn start_webgpu(this: Rc<RefCell<Worker>>) {
    let scope = this.borrow().scope.clone();
    let started = webgpu_device(&scope).await;
    let mut worker = this.borrow_mut();
    match started {
        Ok((device, adapter)) => {
            worker.webgpu = WebGpu::Ready { adapter };
            worker.gpu = Some(device);
            worker.follow_backend();
            post(&worker.scope, &worker.backend_response());
        }
        Err(reason) => worker.give_up_webgpu(reason),
    }
}

/// Without the `webgpu` feature (the CPU-only worker, which the page loads where it found
/// no adapter, or when asked for `?backend=wasm`) there is no WebGPU runtime: say why.
#[cfg(not(feature = "webgpu"))]
async fn webgpu_device(scope: &DedicatedWorkerGlobalScope) -> Result<(Device, String), String> {
    crate::gpu_probe::adapter(&scope.navigator()).await?;
    Err(
        "the page started its CPU-only worker (open it without ?backend=wasm to use WebGPU)"
            .to_owned(),
    )
}

/// The WebGPU device and a description of its adapter, or why there is none.
#[cfg(feature = "webgpu")]
async fn webgpu_device(scope: &DedicatedWorkerGlobalScope) -> Result<(Device, String), String> {
    crate::gpu_probe::adapter(&scope.navigator()).await?;
    allow_burn_shaders()?;
    let (device, setup) = Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_with_setup_async()
        .await
        .map_err(|error| format!("cannot start WebGPU: {error}"))?;
    let name = setup.adapter.get_info().name;
    let adapter = if name.is_empty() {
        "GPU".to_owned()
    } else {
        name
    };
    Ok((device, adapter))
}

/// burn 0.22's WebGPU matrix kernels for vector-matrix products (which its autotuner
/// tries whatever the shapes) are written with WGSL subgroup operations, but wgpu 30 does
/// not know the `subgroups` feature, so it never asks the browser to enable it; and
/// Chrome's uniformity analysis rejects one of them, which wgpu's own shader compiler
/// (naga, on native GPUs) accepts. In the browser a refused shader poisons the device and
/// takes the worker down. So this worker's device requests ask for `subgroups` where the
/// adapter has it (checked before), and shaders that enable subgroups turn that
/// diagnostic off, as naga does. The end-to-end test checks the answers against native.
#[cfg(feature = "webgpu")]
fn allow_burn_shaders() -> Result<(), String> {
    let patch = js_sys::Function::new_no_args(
        "const adapter = self.GPUAdapter && self.GPUAdapter.prototype;
         const device = self.GPUDevice && self.GPUDevice.prototype;
         if (!adapter || !device || adapter.requestDevice.burnPatched) return;
         const requestDevice = adapter.requestDevice;
         adapter.requestDevice = function (descriptor) {
           const features = [...((descriptor && descriptor.requiredFeatures) || [])];
           if (this.features.has('subgroups') && !features.includes('subgroups')) {
             features.push('subgroups');
           }
           return requestDevice.call(this, { ...descriptor, requiredFeatures: features });
         };
         adapter.requestDevice.burnPatched = true;
         const createShaderModule = device.createShaderModule;
         const enable = 'enable subgroups;';
         device.createShaderModule = function (descriptor) {
           const code = descriptor && descriptor.code;
           if (typeof code === 'string' && code.startsWith(enable)) {
             const relaxed = enable + '\\ndiagnostic(off, subgroup_uniformity);' + code.slice(enable.length);
             return createShaderModule.call(this, { ...descriptor, code: relaxed });
           }
           return createShaderModule.call(this, descriptor);
         };",
    );
    patch
        .call0(&JsValue::NULL)
        .map(|_| ())
        .map_err(|error| format!("cannot prepare WebGPU for burn's shaders: {error:?}"))
}

/// Classifies `image` on the active backend. A GPU failure switches to the CPU, which
/// then answers.
async fn classify(this: Rc<RefCell<Worker>>, request_id: u64, image: Vec<u8>) {
    let (scope, cpu, gpu) = {
        let worker = this.borrow();
        let Some(model) = worker.current() else {
            let response = Response::ClassifyFailed {
                request_id,
                message: "no model is loaded yet".to_owned(),
            };
            return post(&worker.scope, &response);
        };
        (
            worker.scope.clone(),
            model.classifier().clone(),
            worker.on_gpu.clone(),
        )
    };
    let started_ms = now_ms(&scope);
    let mut outcome = match &gpu {
        Some(gpu) => gpu.classify(&image).await,
        None => cpu.classify(&image).await,
    };
    if let (Some(_), Err(ClassifyError::Backend(reason))) = (&gpu, &outcome) {
        this.borrow_mut()
            .give_up_webgpu(format!("failed during a classification: {reason}"));
        outcome = cpu.classify(&image).await;
    }
    let response = match outcome {
        Ok(outcome) => Response::Classified {
            request_id,
            result: Classification {
                top: outcome.top,
                latency_ms: now_ms(&scope) - started_ms,
                rollout: outcome.rollout,
                grid: outcome.grid,
            },
        },
        Err(error) => Response::ClassifyFailed {
            request_id,
            message: error.to_string(),
        },
    };
    post(&scope, &response);
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
    worker.follow_backend();
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

/// Errors of burn's GPU runtime (a shader that does not compile, a lost device) in the
/// browser's console, where a developer looks. (Its warnings are noise here: that the
/// autotuner cannot keep its cache between visits.)
struct ConsoleLog;

impl log::Log for ConsoleLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let text = JsValue::from_str(&format!("{}: {}", record.target(), record.args()));
            web_sys::console::error_1(&text);
        }
    }

    fn flush(&self) {}
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
