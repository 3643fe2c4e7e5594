//! The page's side of the worker: starts it, queues requests until its wasm
//! is running, and turns its answers into [`Event`]s for the page.

use std::cell::RefCell;

use js_sys::{Array, ArrayBuffer};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::protocol::{self, Request, Response};

/// What the worker told the page.
pub enum Event {
    /// With the message's first payload, if it has one (an exported model).
    Response(Response, Option<ArrayBuffer>),
    /// The worker failed to start or crashed (e.g. out of memory).
    Crashed(String),
}

struct Client {
    worker: Worker,
    started: bool,
    /// Requests sent before the worker's wasm set its message handler would be lost.
    pending: Vec<Array>,
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

/// Starts the worker (stopping the one before, if any), from a classic script or, with
/// `module`, an ES module; `on_event` receives everything it reports.
pub fn start(
    script_url: &str,
    module: bool,
    on_event: impl Fn(Event) + 'static,
) -> Result<(), String> {
    let options = WorkerOptions::new();
    if module {
        options.set_type(WorkerType::Module);
    }
    let worker =
        Worker::new_with_options(script_url, &options).map_err(|error| format!("{error:?}"))?;
    let on_event = std::rc::Rc::new(on_event);
    let handler = on_event.clone();
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        let message = event.data().dyn_into::<Array>().ok();
        let header = message.as_ref().and_then(|m| m.get(0).as_string());
        let payload = message.and_then(|m| m.get(1).dyn_into::<ArrayBuffer>().ok());
        match header.as_deref().map(protocol::decode::<Response>) {
            Some(Ok(response)) => {
                if matches!(response, Response::Started { .. }) {
                    flush();
                }
                handler(Event::Response(response, payload));
            }
            _ => web_sys::console::error_1(&event.data()),
        }
    });
    // An `ErrorEvent` when the worker's code failed; a plain `Event` when its script
    // could not be loaded (e.g. missing from the site).
    let script = script_url.to_owned();
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
        let message = match event.dyn_ref::<ErrorEvent>() {
            Some(error) => error.message(),
            None => format!("cannot load {script}"),
        };
        on_event(Event::Crashed(message));
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    // Both handlers live as long as the page.
    on_message.forget();
    on_error.forget();
    CLIENT.with_borrow_mut(|client| {
        if let Some(old) = client.take() {
            old.worker.terminate();
        }
        *client = Some(Client {
            worker,
            started: false,
            pending: Vec::new(),
        })
    });
    Ok(())
}

/// Sends `request` with `payloads`, which are moved to the worker (not copied).
pub fn send(request: &Request, payloads: &[ArrayBuffer]) {
    let message = Array::of1(&JsValue::from_str(&protocol::encode(request)));
    for payload in payloads {
        message.push(payload);
    }
    CLIENT.with_borrow_mut(|client| match client {
        Some(client) if client.started => post(&client.worker, &message),
        Some(client) => client.pending.push(message),
        None => web_sys::console::error_1(&"the worker was not started".into()),
    });
}

fn flush() {
    CLIENT.with_borrow_mut(|client| {
        if let Some(client) = client {
            client.started = true;
            for message in client.pending.drain(..) {
                post(&client.worker, &message);
            }
        }
    });
}

fn post(worker: &Worker, message: &Array) {
    // Transfer the ArrayBuffers (every element after the header).
    let transfer: Array = message.iter().skip(1).collect();
    if let Err(error) = worker.post_message_with_transfer(message, &transfer) {
        web_sys::console::error_1(&error);
    }
}
