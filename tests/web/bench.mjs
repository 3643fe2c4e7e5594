// Times the browser app in headless chromium (called by bench.sh):
//   node bench.mjs DIST_DIR MODEL_DIR IMAGE RUNS
// Serves DIST_DIR under /vit-demo/ with MODEL_DIR as its model/ (with ISOLATED=1, with
// the cross-origin isolation headers: the page runs its threaded worker), then prints
// JSON: time until the model is ready, the worker's memory after loading it, and
// per-image latency as the page
// reports it (worker: decode + preprocess + forward + rollout) and as seen
// from outside (upload to results shown).
import { serve } from './serve.mjs';
import { launch, openPage, upload } from './browser.mjs';

const [distDir, modelDir, image, runsArg] = process.argv.slice(2);
const runs = Number(runsArg ?? 5);
const log = [];
const isolated = process.env.ISOLATED === '1';
const { server, url } = await serve(distDir, '/vit-demo/', { 'model/': modelDir }, { isolated });
// The CPU path (wasm): this machine's WebGPU is SwiftShader, a CPU emulation, whose speed
// says nothing about a real GPU.
const browser = await launch({ webgpu: false });
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
try {
  const start = performance.now();
  const page = await openPage(browser, url, log);
  const ready_ms = performance.now() - start;
  const threads = await page.evaluate(
    () => Number(document.querySelector('[data-testid="backend"]')?.dataset.threads),
  );
  // The worker's wasm memory after loading: the most loading the model took.
  const memory_bytes = await page.evaluate(
    () => Number(document.querySelector('[data-testid="model-memory"]')?.dataset.bytes ?? NaN),
  );
  await upload(page, image); // warm-up
  const worker_ms = [];
  const page_ms = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const result = await upload(page, image);
    page_ms.push(performance.now() - t0);
    worker_ms.push(result.latency_ms);
  }
  console.log(JSON.stringify({
    model: modelDir, threads, runs, ready_ms: Math.round(ready_ms), memory_mb: Math.round(memory_bytes / 1e6),
    worker_median_ms: median(worker_ms), page_median_ms: Math.round(median(page_ms)), worker_ms,
  }));
} catch (error) {
  console.log(JSON.stringify({ failure: String(error?.stack ?? error), log }));
  process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
}
