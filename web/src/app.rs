//! The page (leptos, client-side rendering): model status, image inputs,
//! results. All model work happens in the worker; this file only moves
//! bytes and shows answers.

use js_sys::ArrayBuffer;
use leptos::ev;
use leptos::html;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Blob, CanvasRenderingContext2d, File, FileList, HtmlCanvasElement, HtmlInputElement,
};

use crate::browser::{self, BrowserError};
use crate::protocol::{Backend, Classification, ModelInfo, Request, Response, WebGpu};
use crate::worker_client::{self, Event};
use crate::{display, heatmap, samples};

/// Everything the page shows; all signals, so the struct is `Copy`.
#[derive(Clone, Copy)]
struct State {
    model: RwSignal<Option<ModelInfo>>,
    /// (bytes received, total) while the shipped model downloads.
    download: RwSignal<Option<(u64, Option<u64>)>>,
    model_loading: RwSignal<bool>,
    busy: RwSignal<bool>,
    error: RwSignal<Option<String>>,
    result: RwSignal<Option<Classification>>,
    image_url: RwSignal<Option<String>>,
    show_attention: RwSignal<bool>,
    /// What runs the model now, and where WebGPU stands (the worker says).
    backend: RwSignal<Backend>,
    webgpu: RwSignal<WebGpu>,
    /// Which build of the worker runs (its CPU path: relaxed SIMD or not, threads or not).
    cpu: RwSignal<CpuWorker>,
    /// The threads of the worker's CPU path, as the worker reports them.
    threads: RwSignal<usize>,
    /// The shipped model's card, once fetched (the page works without it).
    card: RwSignal<Option<display::ModelCard>>,
    teach: Teach,
    /// Only the answer to the latest image is shown.
    latest_request: RwSignal<u64>,
    dragging: RwSignal<bool>,
}

/// The teaching panel's state.
#[derive(Clone, Copy)]
struct Teach {
    /// The name typed for the next class.
    name: RwSignal<String>,
    /// The classes, in the order added, with their images (`File`s live on this thread).
    classes: RwSignal<Vec<(String, Vec<File>)>, LocalStorage>,
    status: RwSignal<TeachStatus>,
    /// Leave-one-image-out accuracy of the taught model.
    accuracy: RwSignal<Option<f64>>,
    /// The latest teaching request; answers to older ones are ignored.
    request: RwSignal<u64>,
    /// Whether a taught model classifies now (it can then be exported).
    taught: RwSignal<bool>,
    error: RwSignal<Option<String>>,
}

/// The builds of the inference worker, by what their CPU path runs on (the WebGPU
/// worker's is `Simd`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum CpuWorker {
    Simd,
    RelaxedSimd,
    /// Plain SIMD on a pool of threads: only on cross-origin isolated pages.
    Threads,
}

#[derive(Clone, Debug, PartialEq)]
enum TeachStatus {
    Idle,
    Training { done: usize, total: usize },
    Trained,
    Failed,
}

impl Teach {
    fn new() -> Self {
        Self {
            name: RwSignal::new(String::new()),
            classes: RwSignal::new_local(Vec::new()),
            status: RwSignal::new(TeachStatus::Idle),
            accuracy: RwSignal::new(None),
            request: RwSignal::new(0),
            taught: RwSignal::new(false),
            error: RwSignal::new(None),
        }
    }

    /// The word tests wait for: `trained` once the taught model classifies.
    fn status_text(self) -> String {
        match self.status.get() {
            TeachStatus::Idle => "not trained".to_owned(),
            TeachStatus::Training { done, total } => format!("training ({done} of {total})"),
            TeachStatus::Trained => "trained".to_owned(),
            TeachStatus::Failed => "failed".to_owned(),
        }
    }

    fn add_class(self) {
        let name = self.name.get_untracked().trim().to_owned();
        if name.is_empty() {
            self.error
                .set(Some("Type a name for the class first.".to_owned()));
            return;
        }
        if self
            .classes
            .with_untracked(|classes| classes.iter().any(|(existing, _)| *existing == name))
        {
            self.error
                .set(Some(format!("There is already a class `{name}`.")));
            return;
        }
        self.error.set(None);
        self.classes
            .update(|classes| classes.push((name, Vec::new())));
        self.name.set(String::new());
    }

    fn train(self) {
        let classes = self.classes.get_untracked();
        let request_id = self.request.get_untracked() + 1;
        self.request.set(request_id);
        self.error.set(None);
        self.status.set(TeachStatus::Training { done: 0, total: 0 });
        spawn_local(async move {
            let mut payloads = Vec::new();
            for (_, files) in &classes {
                for file in files {
                    match browser::read_blob(file).await {
                        Ok(bytes) => payloads.push(bytes),
                        Err(error) => return self.fail(request_id, error.to_string()),
                    }
                }
            }
            let request = Request::Teach {
                request_id,
                counts: classes.iter().map(|(_, files)| files.len()).collect(),
                classes: classes.into_iter().map(|(name, _)| name).collect(),
            };
            worker_client::send(&request, &payloads);
        });
    }

    fn fail(self, request_id: u64, message: String) {
        if request_id == self.request.get_untracked() {
            self.status.set(TeachStatus::Failed);
            self.error.set(Some(format!("Cannot teach: {message}.")));
        }
    }

    /// Forgets what was taught, as the worker does when a model loads or on a reset;
    /// answers to a lesson still running are ignored from now on.
    fn abandon(self) {
        self.request.update(|id| *id += 1);
        self.status.set(TeachStatus::Idle);
        self.accuracy.set(None);
        self.taught.set(false);
        self.error.set(None);
    }

    fn reset(self) {
        self.abandon();
        worker_client::send(&Request::ResetModel, &[]);
    }
}

impl State {
    fn new() -> Self {
        Self {
            model: RwSignal::new(None),
            download: RwSignal::new(None),
            model_loading: RwSignal::new(true),
            busy: RwSignal::new(false),
            error: RwSignal::new(None),
            result: RwSignal::new(None),
            image_url: RwSignal::new(None),
            show_attention: RwSignal::new(true),
            backend: RwSignal::new(Backend::Wasm),
            webgpu: RwSignal::new(WebGpu::NotRequested),
            cpu: RwSignal::new(CpuWorker::Simd),
            threads: RwSignal::new(1),
            card: RwSignal::new(None),
            teach: Teach::new(),
            latest_request: RwSignal::new(0),
            dragging: RwSignal::new(false),
        }
    }

    /// The word tests wait for: `ready` once a model can classify.
    fn status_word(&self) -> &'static str {
        if self.download.get().is_some() {
            "downloading"
        } else if self.model_loading.get() {
            "loading"
        } else if self.model.get().is_some() {
            "ready"
        } else {
            "failed"
        }
    }

    fn on_worker_event(self, event: Event) {
        match event {
            Event::Response(response, payload) => self.on_response(response, payload),
            Event::Crashed(message) => {
                // WebGPU or the threads took the worker down (or the threaded build is
                // missing from the site): a new worker, with the shipped model. After
                // WebGPU, the CPU; after the threads, what the page asked for at first
                // (WebGPU if the browser gives an adapter after all, so that the page says
                // why not), on one thread. Any other crash ends the page's work.
                let (failed, backend, threads) = if self.backend.get_untracked() == Backend::Webgpu
                {
                    self.webgpu.set(WebGpu::Unavailable {
                        reason: message.clone(),
                    });
                    let failed =
                        format!("WebGPU failed ({message}); the model now runs on the CPU.");
                    (failed, Backend::Wasm, true)
                } else if self.cpu.get_untracked() == CpuWorker::Threads {
                    let failed = format!(
                        "The multi-threaded CPU worker failed ({message}); the model now \
                             runs on one thread."
                    );
                    (failed, initial_backend(), false)
                } else {
                    self.error.set(Some(format!(
                        "The inference worker stopped ({message}). Reload the page to try \
                             again."
                    )));
                    self.busy.set(false);
                    self.model_loading.set(false);
                    self.model.set(None);
                    return;
                };
                self.error.set(Some(format!(
                    "{failed} The shipped model was loaded again."
                )));
                self.backend.set(Backend::Wasm);
                self.busy.set(false);
                self.model.set(None);
                self.teach.abandon();
                self.model_loading.set(true);
                spawn_local(async move {
                    self.start_worker(backend, threads).await;
                    self.load_shipped_model().await;
                });
            }
        }
    }

    fn on_response(self, response: Response, payload: Option<ArrayBuffer>) {
        let teach = self.teach;
        let current = |request_id: u64| request_id == teach.request.get_untracked();
        match response {
            Response::TeachProgress {
                request_id,
                done,
                total,
            } if current(request_id) => teach.status.set(TeachStatus::Training { done, total }),
            Response::Taught {
                request_id,
                accuracy,
                model,
            } if current(request_id) => {
                self.model.set(Some(model));
                teach.accuracy.set(Some(accuracy));
                teach.taught.set(true);
                teach.status.set(TeachStatus::Trained);
            }
            Response::TeachFailed {
                request_id,
                message,
            } => teach.fail(request_id, message),
            Response::TeachProgress { .. } | Response::Taught { .. } => {}
            Response::Exported { file_name } => {
                let saved = payload
                    .ok_or_else(|| "the worker sent no file".to_owned())
                    .and_then(|bytes| {
                        browser::save_file(&file_name, &bytes).map_err(|error| error.to_string())
                    });
                if let Err(message) = saved {
                    teach
                        .error
                        .set(Some(format!("Cannot download the model: {message}.")));
                }
            }
            Response::ExportFailed { message } => {
                teach
                    .error
                    .set(Some(format!("Cannot export the taught model: {message}.")));
            }
            Response::Started { threads } => self.threads.set(threads),
            Response::Backend { active, webgpu } => {
                self.backend.set(active);
                self.webgpu.set(webgpu);
            }
            Response::ModelLoaded { model } => {
                // A new model (or the reset one) replaces the taught one in the worker.
                teach.abandon();
                self.model.set(Some(model));
                self.model_loading.set(false);
            }
            Response::ModelFailed { source, message } => {
                self.model_loading.set(false);
                let kept = if self.model.get_untracked().is_some() {
                    " The previous model is still in use."
                } else {
                    ""
                };
                self.error
                    .set(Some(format!("Cannot load {source}: {message}.{kept}")));
            }
            Response::Classified { request_id, result } => {
                if request_id == self.latest_request.get_untracked() {
                    self.result.set(Some(result));
                    self.busy.set(false);
                }
            }
            Response::ClassifyFailed {
                request_id,
                message,
            } => {
                if request_id == self.latest_request.get_untracked() {
                    self.error
                        .set(Some(format!("Cannot classify this file: {message}.")));
                    self.set_image(None);
                    self.busy.set(false);
                }
            }
        }
    }

    /// Starts the inference worker and asks it for `backend` (it starts on the CPU and
    /// moves to WebGPU once that has started, if it can). The WebGPU worker (eight times
    /// the CPU one's size) is loaded only where the browser gives us a GPU adapter;
    /// otherwise the threaded CPU worker where the page is cross-origin isolated (and
    /// `threads` allows it), else the one-thread CPU worker with relaxed SIMD where the
    /// browser has it, else the plain one.
    async fn start_worker(self, backend: Backend, threads: bool) {
        let (script, cpu) = match backend {
            Backend::Webgpu if browser::has_webgpu().await => {
                (crate::GPU_WORKER_SCRIPT_URL, CpuWorker::Simd)
            }
            _ if threads && browser::cross_origin_isolated() => {
                (crate::THREADS_WORKER_SCRIPT_URL, CpuWorker::Threads)
            }
            _ if browser::has_relaxed_simd() => {
                (crate::RELAXED_WORKER_SCRIPT_URL, CpuWorker::RelaxedSimd)
            }
            _ => (crate::WORKER_SCRIPT_URL, CpuWorker::Simd),
        };
        self.cpu.set(cpu);
        self.threads.set(1);
        let module = cpu == CpuWorker::Threads;
        match worker_client::start(script, module, move |event| self.on_worker_event(event)) {
            Ok(()) => worker_client::send(&Request::SetBackend { backend }, &[]),
            Err(error) => self
                .error
                .set(Some(format!("Cannot start the inference worker: {error}"))),
        }
    }

    fn set_image(self, url: Option<String>) {
        if let Some(old) = self.image_url.get_untracked() {
            browser::revoke_url(&old);
        }
        self.image_url.set(url);
    }

    /// Clears the previous result at once (before the file is even read), so
    /// that nothing stale shows; returns the id of the new request.
    fn begin(self) -> u64 {
        let request_id = self.latest_request.get_untracked() + 1;
        self.latest_request.set(request_id);
        self.error.set(None);
        self.result.set(None);
        self.set_image(None);
        self.busy.set(true);
        request_id
    }

    /// Sends an image to the worker; `display_url` is what the page shows.
    fn classify(self, request_id: u64, image: ArrayBuffer, display_url: Option<String>) {
        if request_id != self.latest_request.get_untracked() {
            return;
        }
        self.set_image(display_url);
        worker_client::send(&Request::Classify { request_id }, &[image]);
    }

    fn fail(self, request_id: u64, message: String) {
        if request_id == self.latest_request.get_untracked() {
            self.error.set(Some(message));
            self.busy.set(false);
        }
    }

    fn classify_blob(self, blob: Blob) {
        let request_id = self.begin();
        spawn_local(async move {
            match browser::read_blob(&blob).await {
                Ok(bytes) => self.classify(request_id, bytes, browser::object_url(&blob)),
                Err(error) => self.fail(request_id, error.to_string()),
            }
        });
    }

    fn classify_sample(self, url: &'static str) {
        let request_id = self.begin();
        spawn_local(async move {
            match browser::download(url, |_, _| {}).await {
                Ok(bytes) => self.classify(request_id, bytes, Some(url.to_owned())),
                Err(error) => self.fail(request_id, error.to_string()),
            }
        });
    }

    /// Files from the picker, a drop or a paste: a model (config.json +
    /// model.safetensors) or else one image.
    fn take_files(self, files: Vec<File>) {
        let is_model_file = |file: &File| {
            let name = file.name().to_ascii_lowercase();
            name.ends_with(".safetensors") || name.ends_with(".json")
        };
        let zip = files
            .iter()
            .find(|file| file.name().to_ascii_lowercase().ends_with(".zip"));
        if let Some(zip) = zip {
            self.load_zipped_model(zip.clone());
        } else if files.iter().any(is_model_file) {
            self.load_user_model(files);
        } else if let Some(file) = files.into_iter().next() {
            self.classify_blob(file.into());
        }
    }

    fn load_user_model(self, files: Vec<File>) {
        let find = |suffix: &str| {
            files
                .iter()
                .find(|file| file.name().to_ascii_lowercase().ends_with(suffix))
                .cloned()
        };
        let (Some(config), Some(weights)) = (find(".json"), find(".safetensors")) else {
            let names: Vec<String> = files.iter().map(File::name).collect();
            self.error.set(Some(format!(
                "To load your own model, choose config.json and model.safetensors together \
                 (got: {}).",
                names.join(", ")
            )));
            return;
        };
        self.error.set(None);
        self.model_loading.set(true);
        spawn_local(async move {
            let read = async {
                Ok::<_, BrowserError>((
                    browser::read_blob(&config).await?,
                    browser::read_blob(&weights).await?,
                ))
            };
            match read.await {
                Ok((config_bytes, weight_bytes)) => {
                    let source = format!("your model ({} + {})", config.name(), weights.name());
                    worker_client::send(
                        &Request::LoadModel { source },
                        &[config_bytes, weight_bytes],
                    );
                }
                Err(error) => {
                    self.model_loading.set(false);
                    self.error.set(Some(error.to_string()));
                }
            }
        });
    }

    /// The card is optional: without it the page shows no measured accuracy.
    async fn load_shipped_card(self) {
        let url = format!("{}card.json", crate::SHIPPED_CARD_DIR);
        if let Ok(bytes) = browser::download(&url, |_, _| {}).await {
            self.card.set(display::ModelCard::parse(
                &js_sys::Uint8Array::new(&bytes).to_vec(),
            ));
        }
    }

    /// A zip of an export, such as a taught model downloaded from this page.
    fn load_zipped_model(self, zip: File) {
        self.error.set(None);
        self.model_loading.set(true);
        spawn_local(async move {
            match browser::read_blob(&zip).await {
                Ok(bytes) => {
                    let source = format!("your model ({})", zip.name());
                    worker_client::send(&Request::LoadZip { source }, &[bytes]);
                }
                Err(error) => {
                    self.model_loading.set(false);
                    self.error.set(Some(error.to_string()));
                }
            }
        });
    }

    async fn load_shipped_model(self) {
        let download = async {
            let config = browser::download(crate::SHIPPED_CONFIG_URL, |_, _| {}).await?;
            let weights = browser::download(crate::SHIPPED_WEIGHTS_URL, |received, total| {
                self.download.set(Some((received, total)));
            })
            .await?;
            Ok::<_, BrowserError>((config, weights))
        };
        let result = download.await;
        self.download.set(None);
        match result {
            Ok((config, weights)) => worker_client::send(
                &Request::LoadModel {
                    source: crate::SHIPPED_SOURCE.to_owned(),
                },
                &[config, weights],
            ),
            Err(error) => {
                self.model_loading.set(false);
                self.error.set(Some(error.to_string()));
            }
        }
    }
}

fn file_list(files: Option<FileList>) -> Vec<File> {
    files
        .map(|files| {
            (0..files.length())
                .filter_map(|index| files.get(index))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens a file dialog for the two model files; the input is never in the
/// document, so the page keeps exactly one `input[type=file]` (for images).
fn pick_model_files(state: State) {
    let Ok(element) = browser::window()
        .document()
        .map_or(Err(JsValue::NULL), |document| {
            document.create_element("input")
        })
    else {
        return;
    };
    let input: HtmlInputElement = element.unchecked_into();
    input.set_type("file");
    input.set_multiple(true);
    input.set_accept(".json,.safetensors");
    let chosen = input.clone();
    let on_change = Closure::once_into_js(move || state.take_files(file_list(chosen.files())));
    input.set_onchange(Some(on_change.unchecked_ref()));
    input.click();
}

fn draw_heatmap(canvas: &HtmlCanvasElement, result: &Classification) -> Option<()> {
    let grid = u32::try_from(result.grid).ok()?;
    if result.rollout.len() != result.grid * result.grid || grid == 0 {
        return None;
    }
    canvas.set_width(grid);
    canvas.set_height(grid);
    let context: CanvasRenderingContext2d = canvas.get_context("2d").ok()??.dyn_into().ok()?;
    let pixels = heatmap::rgba(&result.rollout);
    let image = web_sys::ImageData::new_with_u8_clamped_array_and_sh(
        wasm_bindgen::Clamped(&pixels),
        grid,
        grid,
    )
    .ok()?;
    context.put_image_data(&image, 0.0, 0.0).ok()
}

fn listen_for_drops_and_pastes(state: State) {
    // Dropping anywhere on the page works; the browser must not open the file.
    let _ = window_event_listener(ev::dragover, move |event| {
        event.prevent_default();
        state.dragging.set(true);
    });
    let _ = window_event_listener(ev::dragleave, move |_| state.dragging.set(false));
    let _ = window_event_listener(ev::drop, move |event| {
        event.prevent_default();
        state.dragging.set(false);
        let files = file_list(event.data_transfer().and_then(|data| data.files()));
        if files.is_empty() {
            state.error.set(Some(
                "Drop an image file (or config.json + model.safetensors).".into(),
            ));
        } else {
            state.take_files(files);
        }
    });
    let _ = window_event_listener(ev::paste, move |event| {
        let files = file_list(event.clipboard_data().and_then(|data| data.files()));
        if !files.is_empty() {
            event.prevent_default();
            state.take_files(files);
        }
    });
}

#[component]
fn ModelPanel(state: State) -> impl IntoView {
    let details = move || {
        state.model.get().map(|model| {
            format!(
                "{} · {} px, {} px patches, {} layers, {} parameters",
                model.source,
                model.image_size,
                model.patch_size,
                model.num_layers,
                display::millions(model.num_params)
            )
        })
    };
    let progress = move || {
        state.download.get().map(|(received, total)| {
            view! {
                <div class="progress">
                    <progress
                        aria-label="Model download"
                        max=move || total.unwrap_or(0).max(1) as f64
                        value=received as f64
                    ></progress>
                    <span>{display::progress(received, total)}</span>
                </div>
            }
        })
    };
    view! {
        <section class="panel model" aria-labelledby="model-heading">
            <h2 id="model-heading">"Model"</h2>
            <p aria-live="polite">
                "Status: " <strong data-testid="model-status">{move || state.status_word()}</strong>
                " · runs on " {move || state.backend.get().describe()}
            </p>
            <BackendChoice state />
            {progress}
            <p class="details">
                {details}
                {move || {
                    state.model.get().and_then(|model| model.memory_bytes).map(|bytes| {
                        view! {
                            <span data-testid="model-memory" data-bytes=bytes.to_string()>
                                {format!(" · {} MB of memory", bytes / 1_000_000)}
                            </span>
                        }
                    })
                }}
            </p>
            {move || {
                let card = state.card.get()?;
                let shipped = state.model.get()?.source == crate::SHIPPED_SOURCE;
                shipped.then(|| {
                    let link = |file: &str| format!("{}{file}", crate::SHIPPED_CARD_DIR);
                    view! {
                        <p class="details" data-testid="model-card">
                            "Measured accuracy: "
                            <strong data-testid="model-accuracy">{card.accuracy()}</strong>
                            {format!(" on the {} CIFAR-10 test images · ", card.images())}
                            <a data-testid="model-card-link" href=link("README.md")>"model card"</a>
                            " · "
                            <a href=link("confusion.svg")>"confusion matrix"</a>
                            " · "
                            <a href=link("curves.svg")>"training curves"</a>
                        </p>
                    }
                })
            }}
            <p class="details" data-testid="model-description">
                {move || state.model.get().and_then(|model| model.description)}
            </p>
            <button type="button" on:click=move |_| pick_model_files(state)>
                "Load your own model (config.json + model.safetensors, or a .zip of them)"
            </button>
        </section>
    }
}

/// Which backend runs the model (`data-testid="backend"`: `webgpu` or `wasm`), and a
/// switch between them; WebGPU is offered only once it has started.
#[component]
fn BackendChoice(state: State) -> impl IntoView {
    let on_change = move |event: ev::Event| {
        let value = event_target_value(&event);
        if let Some(backend) = Backend::parse(&value) {
            worker_client::send(&Request::SetBackend { backend }, &[]);
        }
    };
    let webgpu_label = move || match state.webgpu.get() {
        WebGpu::Ready { adapter } => format!("GPU (WebGPU: {adapter})"),
        WebGpu::Starting => "GPU (WebGPU, starting…)".to_owned(),
        WebGpu::NotRequested => "GPU (WebGPU)".to_owned(),
        WebGpu::Unavailable { .. } => "GPU (WebGPU: unavailable)".to_owned(),
    };
    let webgpu_ready = move || matches!(state.webgpu.get(), WebGpu::Ready { .. });
    view! {
        <p class="details backend">
            <label for="backend-choice">"Backend: "</label>
            <select
                id="backend-choice"
                data-testid="backend-choice"
                on:change=on_change
                prop:value=move || state.backend.get().name()
            >
                <option value="webgpu" disabled=move || !webgpu_ready()>{webgpu_label}</option>
                <option value="wasm">
                    {move || match (state.cpu.get(), state.threads.get()) {
                        (CpuWorker::RelaxedSimd, _) => "CPU (WebAssembly relaxed SIMD)".to_owned(),
                        (_, 1) => "CPU (WebAssembly SIMD)".to_owned(),
                        (_, threads) => format!("CPU (WebAssembly SIMD, {threads} threads)"),
                    }}
                </option>
            </select>
            " "
            <code
                data-testid="backend"
                data-webgpu=move || state.webgpu.get().state_name()
                data-simd=move || {
                    if state.cpu.get() == CpuWorker::RelaxedSimd { "relaxed" } else { "simd128" }
                }
                data-threads=move || state.threads.get().to_string()
            >
                {move || state.backend.get().name()}
            </code>
            {move || match state.webgpu.get() {
                WebGpu::Unavailable { reason } => Some(view! {
                    <span class="hint" data-testid="webgpu-note">{format!(" · WebGPU: {reason}")}</span>
                }),
                _ => None,
            }}
        </p>
    }
}

#[component]
fn ImagePanel(state: State) -> impl IntoView {
    let on_change = move |event: ev::Event| {
        let Some(input) = event
            .target()
            .and_then(|target| target.dyn_into::<HtmlInputElement>().ok())
        else {
            return;
        };
        state.take_files(file_list(input.files()));
        // Choosing the same file again must fire `change` again.
        input.set_value("");
    };
    let sample_buttons = samples::SAMPLES
        .iter()
        .map(|&(name, url)| {
            view! {
                <button
                    type="button"
                    class="sample"
                    aria-label=format!("Classify the sample image of a {name}")
                    on:click=move |_| state.classify_sample(url)
                >
                    <img src=url alt="" width="64" height="64" />
                    <span>{name}</span>
                </button>
            }
        })
        .collect_view();
    view! {
        <section class="panel input" aria-labelledby="input-heading">
            <h2 id="input-heading">"Image"</h2>
            <label class="picker" for="image-file">"Choose an image file"</label>
            <input id="image-file" type="file" accept="image/*" on:change=on_change />
            <p class="hint">"…or drop an image anywhere on the page, or paste one (Ctrl+V)."</p>
            <div class="samples" role="group" aria-label="Sample CIFAR-10 test images">
                {sample_buttons}
            </div>
        </section>
    }
}

#[component]
fn Predictions(result: Classification) -> impl IntoView {
    let items = result
        .top
        .into_iter()
        .map(|prediction| {
            let width = format!("{:.2}%", display::bar_width(prediction.probability));
            view! {
                <li
                    data-label=prediction.label.clone()
                    data-probability=display::probability_attribute(prediction.probability)
                >
                    <span class="label">{prediction.label.clone()}</span>
                    <span class="bar" aria-hidden="true">
                        <span class="fill" style:width=width></span>
                    </span>
                    <span class="percent">{display::percent(prediction.probability)}</span>
                </li>
            }
        })
        .collect_view();
    view! {
        <ol data-testid="predictions" aria-label="Top 5 classes">
            {items}
        </ol>
        <p class="latency">
            "Inference took " <span data-testid="latency-ms">{format!("{:.0}", result.latency_ms)}</span> " ms"
        </p>
    }
}

#[component]
fn ResultPanel(state: State) -> impl IntoView {
    let canvas = NodeRef::<html::Canvas>::new();
    Effect::new(move |_| {
        if let (Some(result), Some(canvas)) = (state.result.get(), canvas.get()) {
            draw_heatmap(&canvas, &result);
        }
    });
    let heat_hidden = move || !state.show_attention.get() || state.result.get().is_none();
    view! {
        <section class="panel result" aria-labelledby="result-heading" aria-busy=move || state.busy.get().to_string()>
            <h2 id="result-heading">"Result"</h2>
            {move || state.busy.get().then(|| view! {
                <p class="working" role="status"><span class="spinner" aria-hidden="true"></span>"Classifying…"</p>
            })}
            {move || state.model_loading.get().then(|| view! {
                <p class="working" role="status"><span class="spinner" aria-hidden="true"></span>"Loading the model…"</p>
            })}
            <div class="result-body">
                <figure class="stage" hidden=move || state.image_url.get().is_none()>
                    <div class="frame">
                        <img src=move || state.image_url.get().unwrap_or_default() alt="The image being classified" />
                        <canvas node_ref=canvas class="heat" aria-hidden="true" hidden=heat_hidden></canvas>
                    </div>
                    <figcaption>
                        <label>
                            <input
                                type="checkbox"
                                prop:checked=move || state.show_attention.get()
                                on:change=move |event| state.show_attention.set(event_target_checked(&event))
                            />
                            " Show attention map (rollout: where the class token looks)"
                        </label>
                    </figcaption>
                </figure>
                <div class="scores">
                    {move || state.result.get().map(|result| view! { <Predictions result /> })}
                </div>
            </div>
        </section>
    }
}

#[component]
fn TeachPanel(state: State) -> impl IntoView {
    let teach = state.teach;
    let classes = move || {
        teach.classes.with(|classes| {
            classes
                .iter()
                .enumerate()
                .map(|(index, (name, files))| {
                    let on_change = move |event: ev::Event| {
                        let files = file_list(
                            event
                                .target()
                                .and_then(|target| target.dyn_into::<HtmlInputElement>().ok())
                                .and_then(|input| input.files()),
                        );
                        teach.classes.update(|classes| classes[index].1 = files);
                    };
                    view! {
                        <li>
                            <span class="class-name">{name.clone()}</span>
                            <input
                                type="file"
                                multiple
                                accept="image/*"
                                aria-label=format!("Images of {name}")
                                data-testid="teach-files"
                                on:change=on_change
                            />
                            <span>{format!("{} images", files.len())}</span>
                        </li>
                    }
                })
                .collect_view()
        })
    };
    let can_train = move || {
        teach.classes.with(|classes| {
            classes.len() >= 2 && classes.iter().all(|(_, files)| !files.is_empty())
        }) && state.model.with(Option::is_some)
    };
    view! {
        <section class="panel teach" aria-labelledby="teach-heading">
            <h2 id="teach-heading">"Teach it new classes"</h2>
            <p class="details">
                "Name two or more classes and give each a few images (five are enough). "
                "A new head is trained on the model's features here, in your browser."
            </p>
            <form class="teach-add" on:submit=move |event: ev::SubmitEvent| {
                event.prevent_default();
                teach.add_class();
            }>
                <input
                    type="text"
                    placeholder="class name"
                    aria-label="Class name"
                    data-testid="teach-class-name"
                    prop:value=move || teach.name.get()
                    on:input=move |event| teach.name.set(event_target_value(&event))
                />
                <button type="submit" data-testid="teach-add-class">"Add class"</button>
            </form>
            <ol class="teach-classes">{classes}</ol>
            <p>
                <button
                    type="button"
                    data-testid="teach-train"
                    disabled=move || !can_train()
                    on:click=move |_| teach.train()
                >
                    "Train"
                </button>
                " Status: "
                <strong data-testid="teach-status">{move || teach.status_text()}</strong>
            </p>
            {move || teach.accuracy.get().map(|accuracy| view! {
                <p>
                    "Leave-one-image-out accuracy: "
                    <strong data-testid="teach-accuracy">{format!("{accuracy:.2}")}</strong>
                    {format!(" ({:.0}% of the taught images, each classified by a head trained without it)", accuracy * 100.0)}
                </p>
            })}
            {move || teach.error.get().map(|message| view! {
                <p class="error" role="alert">{message}</p>
            })}
            <p>
                <button
                    type="button"
                    data-testid="teach-export"
                    disabled=move || !teach.taught.get()
                    on:click=move |_| worker_client::send(&Request::ExportTaught, &[])
                >
                    "Download the taught model (.zip)"
                </button>
                " "
                <button type="button" data-testid="teach-reset" on:click=move |_| teach.reset()>
                    "Back to the original model"
                </button>
            </p>
        </section>
    }
}

/// The backend the page starts with: the address's choice, else WebGPU where it works.
fn initial_backend() -> Backend {
    browser::requested_backend().unwrap_or(Backend::Webgpu)
}

#[component]
fn App() -> impl IntoView {
    let state = State::new();
    spawn_local(async move {
        // The worker must exist before the model is sent to it.
        state.start_worker(initial_backend(), true).await;
        state.load_shipped_model().await;
    });
    spawn_local(state.load_shipped_card());
    listen_for_drops_and_pastes(state);
    view! {
        <main class="app" class:dragging=move || state.dragging.get()>
            <header>
                <h1>"Vision Transformer in your browser"</h1>
                <p class="subtitle">
                    "Classifies images into the 10 CIFAR-10 classes, or into classes you teach it, with a ViT running locally on your GPU (WebGPU) or in WebAssembly; nothing is uploaded."
                </p>
            </header>
            {move || state.error.get().map(|message| view! {
                <p class="error" role="alert" data-testid="error">{message}</p>
            })}
            <div class="columns">
                <div class="column">
                    <ImagePanel state />
                    <ModelPanel state />
                    <TeachPanel state />
                </div>
                <ResultPanel state />
            </div>
        </main>
    }
}

/// Mounts the page.
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
