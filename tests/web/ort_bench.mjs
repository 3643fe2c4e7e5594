// Times onnxruntime-web's wasm backend (what transformers.js runs on) in headless
// chromium, on the same machine as our page (called by bench.sh):
//   node ort_bench.mjs MODEL.onnx RUNS
// SIMD on one thread, as our one-thread workers, or with THREADS=N on N (served with the
// cross-origin isolation headers, which its threads need, as ours do); forward pass only
// (`session.run` on a ready [1, 3, 224, 224] tensor). Prints JSON: session creation
// time and per-run latency.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';
import { launch } from './browser.mjs';

const [modelFile, runsArg] = process.argv.slice(2);
const runs = Number(runsArg ?? 5);
const threads = Number(process.env.THREADS ?? 1);
const here = path.dirname(fileURLToPath(import.meta.url));
const ortDist = path.join(here, 'node_modules', 'onnxruntime-web', 'dist');
const page = fs.mkdtempSync(path.join(os.tmpdir(), 'ort-bench-'));
fs.writeFileSync(path.join(page, 'index.html'), `<!doctype html><script type="module">
import * as ort from './ort/ort.wasm.min.mjs';
ort.env.wasm.numThreads = ${threads};
ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
try {
  const t0 = performance.now();
  const session = await ort.InferenceSession.create('./model/${path.basename(modelFile)}',
    { executionProviders: ['wasm'] });
  const ready_ms = performance.now() - t0;
  const input = new ort.Tensor('float32', new Float32Array(3 * 224 * 224).fill(0.1), [1, 3, 224, 224]);
  const feeds = { [session.inputNames[0]]: input };
  await session.run(feeds); // warm-up
  const run_ms = [];
  for (let i = 0; i < ${runs}; i++) {
    const t = performance.now();
    await session.run(feeds);
    run_ms.push(Math.round(performance.now() - t));
  }
  window.result = { ready_ms: Math.round(ready_ms), run_ms };
} catch (error) {
  window.result = { failure: String(error?.stack ?? error) };
}
</script>`);
const { server, url } = await serve(page, '/ort-bench/', {
  'ort/': ortDist,
  'model/': path.dirname(path.resolve(modelFile)),
}, { isolated: threads > 1 });
const browser = await launch({ webgpu: false });
try {
  const tab = await browser.newPage();
  await tab.goto(url);
  await tab.waitForFunction(() => window.result, null, { timeout: 600_000 });
  const result = await tab.evaluate(() => window.result);
  const sorted = [...(result.run_ms ?? [])].sort((a, b) => a - b);
  console.log(JSON.stringify({
    engine: 'onnxruntime-web', version: JSON.parse(fs.readFileSync(path.join(ortDist, '..', 'package.json'))).version,
    model: modelFile, threads, runs, median_ms: sorted[Math.floor(sorted.length / 2)], ...result,
  }));
  if (result.failure) process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
  fs.rmSync(page, { recursive: true, force: true });
}
