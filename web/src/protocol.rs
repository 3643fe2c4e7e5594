//! Messages between the page and the inference worker.
//!
//! Each message is a JS array: a JSON header (these types) followed by the
//! binary payloads as transferred `ArrayBuffer`s, so that megabytes of model
//! weights are moved, not copied or encoded.

use serde::{Deserialize, Serialize};

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Payloads: config.json, model.safetensors.
    LoadModel { source: String },
    /// Payload: a zip of those (the page's "download the taught model").
    LoadZip { source: String },
    /// Payload: the image file.
    Classify { request_id: u64 },
    /// Payloads: the images of each class in turn, `counts[i]` of class `classes[i]`.
    /// Trains a new head on the loaded model's features; a newer request cancels it.
    Teach {
        request_id: u64,
        classes: Vec<String>,
        counts: Vec<usize>,
    },
    /// Back to the loaded model (cancels teaching).
    ResetModel,
    /// The taught model as a zip (config.json, model.safetensors, preprocessor_config.json).
    ExportTaught,
    /// Run the model on `backend` from now on (WebGPU only where it started).
    SetBackend { backend: Backend },
}

/// What runs the model in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The browser's GPU through WebGPU (burn's wgpu backend).
    Webgpu,
    /// burn-flex compiled to WebAssembly with SIMD, on one CPU thread.
    Wasm,
}

impl Backend {
    /// The name in the page's `?backend=` parameter and its `data-testid="backend"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Webgpu => "webgpu",
            Backend::Wasm => "wasm",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "webgpu" => Some(Backend::Webgpu),
            "wasm" => Some(Backend::Wasm),
            _ => None,
        }
    }

    /// What the page says runs the model.
    pub fn describe(self) -> &'static str {
        match self {
            Backend::Webgpu => "the GPU (WebGPU)",
            Backend::Wasm => "the CPU (wasm SIMD)",
        }
    }
}

/// Whether the worker can run the model on WebGPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WebGpu {
    /// The page has not asked for it (the worker starts on the CPU).
    NotRequested,
    /// Asking the browser for an adapter.
    Starting,
    /// `adapter`: what the browser says the GPU is.
    Ready { adapter: String },
    /// The browser has no WebGPU, or it failed (at start-up or later): why.
    Unavailable { reason: String },
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// The worker's wasm is running and accepts requests (on the CPU until WebGPU,
    /// if asked for, has started), with the threads its CPU path runs on.
    Started {
        threads: usize,
    },
    /// What runs the model now, and where WebGPU stands; sent whenever either changes.
    Backend {
        active: Backend,
        webgpu: WebGpu,
    },
    ModelLoaded {
        model: ModelInfo,
    },
    /// The previous model, if any, stays loaded.
    ModelFailed {
        source: String,
        message: String,
    },
    Classified {
        request_id: u64,
        result: Classification,
    },
    ClassifyFailed {
        request_id: u64,
        message: String,
    },
    /// Teaching is under way: `done` of `total` units of work.
    TeachProgress {
        request_id: u64,
        done: usize,
        total: usize,
    },
    /// The taught model now classifies. `accuracy`: leave-one-image-out accuracy on the
    /// taught images.
    Taught {
        request_id: u64,
        accuracy: f64,
        model: ModelInfo,
    },
    TeachFailed {
        request_id: u64,
        message: String,
    },
    /// Payload: the zip.
    Exported {
        file_name: String,
    },
    ExportFailed {
        message: String,
    },
}

/// What the page shows about the loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Where it came from: "shipped model" or the user's file names.
    pub source: String,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_classes: usize,
    pub num_params: usize,
    /// How the model was made, from its config.json (`vit_description`), if it says.
    pub description: Option<String>,
    /// The worker's memory after loading the model: the wasm heap never shrinks, so
    /// this is the most loading took (`None` outside the browser).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

/// One class of the top-k, most probable first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub label: String,
    pub probability: f32,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub top: Vec<Prediction>,
    /// Decode + preprocess + forward + rollout, measured in the worker.
    pub latency_ms: f64,
    /// Attention rollout weight per patch, row-major over a `grid`x`grid` grid.
    pub rollout: Vec<f32>,
    pub grid: usize,
}

impl WebGpu {
    /// The state's name, as in the message (`starting`, `ready`, ...).
    pub fn state_name(&self) -> &'static str {
        match self {
            WebGpu::NotRequested => "not_requested",
            WebGpu::Starting => "starting",
            WebGpu::Ready { .. } => "ready",
            WebGpu::Unavailable { .. } => "unavailable",
        }
    }
}

/// Header of a message.
pub fn encode<T: Serialize>(message: &T) -> String {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_string(message).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
}

pub fn decode<'a, T: Deserialize<'a>>(header: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_json() {
        let request = Request::Classify { request_id: 7 };
        assert_eq!(decode::<Request>(&encode(&request)).unwrap(), request);
        let response = Response::Classified {
            request_id: 7,
            result: Classification {
                top: vec![Prediction {
                    label: "cat".into(),
                    probability: 0.123_456_78,
                }],
                latency_ms: 12.5,
                rollout: vec![0.25; 4],
                grid: 2,
            },
        };
        assert_eq!(decode::<Response>(&encode(&response)).unwrap(), response);
        assert!(encode(&request).contains("\"kind\":\"classify\""));
        let backend = Response::Backend {
            active: Backend::Wasm,
            webgpu: WebGpu::Unavailable {
                reason: "no adapter".into(),
            },
        };
        assert_eq!(decode::<Response>(&encode(&backend)).unwrap(), backend);
        for backend in [Backend::Webgpu, Backend::Wasm] {
            assert_eq!(Backend::parse(backend.name()), Some(backend));
        }
        assert_eq!(Backend::parse("cuda"), None);
    }
}
