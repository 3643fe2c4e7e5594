// Entry of the threaded inference worker (an ES module worker): loads its wasm, whose
// `main` starts the thread pool and then serves the page (web/src/worker.rs).
import init from './worker-threads.js';

await init();
