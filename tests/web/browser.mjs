// Headless Debian chromium through playwright-core, and the page actions the
// end-to-end test and the benchmark share.
import { chromium } from 'playwright-core';

// The flags our machines need (running as root, no network). Playwright adds
// --headless and a fresh temporary --user-data-dir itself.
const FLAGS = [
  '--no-sandbox', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// WebGPU in headless Chromium on a machine without a GPU: SwiftShader, a CPU Vulkan
// (right answers, no speed), on pages from 127.0.0.1 (a secure context).
const WEBGPU = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader'];

/// `webgpu: false` launches a browser without WebGPU, as many visitors' are.
export async function launch({ webgpu = true } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      ...FLAGS,
      ...(webgpu ? WEBGPU : ['--disable-gpu']),
      ...(webgpu && process.env.CHROMIUM_LOG ? ['--enable-logging=stderr', '--v=0'] : []),
      // Extra flags for experiments, e.g. CHROMIUM_FLAGS='--js-flags=--no-liftoff'.
      ...(process.env.CHROMIUM_FLAGS?.split(' ').filter(Boolean) ?? []),
    ],
  });
}

/// Waits until the page says which backend runs the model, once WebGPU has started or
/// failed (`webgpu` or `wasm`), and returns it with the reason WebGPU is not used, if any.
export async function settledBackend(page) {
  await page.waitForFunction(
    () => ['ready', 'unavailable'].includes(
      document.querySelector('[data-testid="backend"]')?.dataset.webgpu,
    ),
    null,
    { timeout: 120_000 },
  );
  return page.evaluate(() => ({
    backend: document.querySelector('[data-testid="backend"]')?.textContent,
    note: document.querySelector('[data-testid="webgpu-note"]')?.textContent ?? null,
    threads: Number(document.querySelector('[data-testid="backend"]')?.dataset.threads),
    cpu_label: document.querySelector('[data-testid="backend-choice"] option[value=wasm]')?.textContent,
    isolated: self.crossOriginIsolated,
    cores: navigator.hardwareConcurrency,
  }));
}

/// Switches the page to `backend` and waits until the worker runs on it.
export async function chooseBackend(page, backend) {
  await page.selectOption('[data-testid="backend-choice"]', backend);
  await page.waitForFunction(
    (backend) => document.querySelector('[data-testid="backend"]')?.textContent === backend,
    backend,
    { timeout: 60_000 },
  );
}

/// Opens the page and waits for its model; `initScript` runs in the page before its own
/// scripts (e.g. to hide a browser feature); requests for URLs that match `blocked` (a
/// glob) fail, as files missing from a site would.
export async function openPage(browser, url, log, initScript = null, blocked = null) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  if (initScript) await page.addInitScript(initScript);
  if (blocked) await page.route(blocked, (route) => route.fulfill({ status: 404, body: 'not found' }));
  page.on('console', (message) => log.push(`console.${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => log.push(`pageerror: ${error.message}`));
  page.on('requestfailed', (request) => log.push(`requestfailed: ${request.url()}`));
  await page.goto(url);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="model-status"]')?.textContent === 'ready',
    null,
    { timeout: 600_000 },
  );
  return page;
}

/// Waits for the `count` predictions of a new image (five, or as many classes as a
/// taught model has) and reads them.
export async function readPredictions(page, count = 5) {
  await page.waitForFunction(
    (count) => document.querySelectorAll('ol[data-testid="predictions"] li').length === count,
    count,
    { timeout: 600_000 },
  );
  return page.evaluate(() => ({
    top: [...document.querySelectorAll('ol[data-testid="predictions"] li')].map((li) => ({
      label: li.dataset.label,
      probability: Number(li.dataset.probability),
    })),
    latency_ms: Number(document.querySelector('[data-testid="latency-ms"]').textContent),
  }));
}

export async function upload(page, file, count = 5) {
  // The image input is the page's first file input (the teaching panel's come later).
  await page.setInputFiles('input[type=file]', file);
  return readPredictions(page, count);
}

/// Drops a file on the page as a drag from the desktop would.
export async function drop(page, bytes, name, type) {
  await page.evaluate(
    ({ base64, name, type }) => {
      const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const transfer = new DataTransfer();
      transfer.items.add(new File([data], name, { type }));
      const target = document.querySelector('main') ?? document.body;
      target.dispatchEvent(new DragEvent('dragover', { dataTransfer: transfer, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
    },
    { base64: Buffer.from(bytes).toString('base64'), name, type },
  );
  return readPredictions(page);
}
