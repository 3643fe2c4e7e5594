// End-to-end run of the browser app, called by tests/tests/web_e2e.rs:
//   node e2e.mjs DIST_DIR IMAGE.jpg TEXT_FILE OUT_DIR SAMPLE_DIR
// Prints one JSON object with what the page showed; the Rust test checks it.
import fs from 'node:fs';
import path from 'node:path';
import { serve } from './serve.mjs';
import { launch, openPage, upload, drop, settledBackend, chooseBackend } from './browser.mjs';

const [distDir, imagePath, textPath, outDir, sampleDir] = process.argv.slice(2);
const PREFIX = '/vit-demo/';
const log = [];
const { server, url } = await serve(distDir, PREFIX);
let browser = await launch();
let isolated = null;
const report = { url, log };
try {
  const page = await openPage(browser, url, log);
  // WebGPU (SwiftShader here) runs the model once it has started.
  report.backend = await settledBackend(page);
  report.model_status = await page.textContent('[data-testid="model-status"]');
  report.model_description = await page.textContent('[data-testid="model-description"]');
  // The shipped model's measured accuracy, and its card one click away.
  await page.waitForSelector('[data-testid="model-accuracy"]', { timeout: 30_000 });
  report.model_accuracy = await page.textContent('[data-testid="model-accuracy"]');
  report.card_status = await page.evaluate(async () => {
    const link = document.querySelector('[data-testid="model-card-link"]');
    return (await fetch(link.href)).status;
  });
  report.upload = await upload(page, imagePath);
  report.screenshot = path.join(outDir, 'page.png');
  await page.screenshot({ path: report.screenshot, fullPage: true });

  await page.setInputFiles('input[type=file]', textPath);
  await page.waitForSelector('[data-testid="error"]', { timeout: 60_000 });
  report.text_error = await page.textContent('[data-testid="error"]');
  report.predictions_after_error = await page.locator('ol[data-testid="predictions"] li').count();

  report.drop = await drop(page, fs.readFileSync(imagePath), path.basename(imagePath), 'image/jpeg');
  report.error_after_drop = await page.locator('[data-testid="error"]').count();
  report.status_after = await page.textContent('[data-testid="model-status"]');
  await page.screenshot({ path: path.join(outDir, 'page-after-drop.png'), fullPage: true });

  // A corrupt model of the user's: a clear message, and the shipped model stays.
  const corrupt = path.join(outDir, 'model.safetensors');
  fs.writeFileSync(corrupt, 'not a safetensors file');
  const [chooser] = await Promise.all([
    page.waitForEvent('filechooser'),
    page.click('text=Load your own model'),
  ]);
  await chooser.setFiles([path.join(distDir, 'model', 'config.json'), corrupt]);
  await page.waitForSelector('[data-testid="error"]', { timeout: 60_000 });
  report.bad_model_error = await page.textContent('[data-testid="error"]');
  await page.waitForFunction(
    () => document.querySelector('[data-testid="model-status"]')?.textContent === 'ready',
  );
  report.status_after_bad_model = await page.textContent('[data-testid="model-status"]');

  // Teach two classes from five real CIFAR-10 test images each (0000-0004).
  const sample = (name, index) => path.join(sampleDir, name, `${String(index).padStart(4, '0')}.jpg`);
  const taught = ['ship', 'frog'];
  for (const name of taught) {
    await page.fill('[data-testid="teach-class-name"]', name);
    await page.click('[data-testid="teach-add-class"]');
  }
  for (const [index, name] of taught.entries()) {
    await page.locator('[data-testid="teach-files"]').nth(index)
      .setInputFiles([0, 1, 2, 3, 4].map((i) => sample(name, i)));
  }
  const started = Date.now();
  await page.click('[data-testid="teach-train"]');
  await page.waitForFunction(
    () => ['trained', 'failed'].includes(document.querySelector('[data-testid="teach-status"]')?.textContent),
    null,
    { timeout: 300_000 },
  );
  report.teach_ms = Date.now() - started;
  report.teach_status = await page.textContent('[data-testid="teach-status"]');
  report.teach_accuracy = await page.textContent('[data-testid="teach-accuracy"]');
  report.taught_description = await page.textContent('[data-testid="model-description"]');
  // Ten other images of the two classes (0005-0009), through the page's image input.
  report.held_out = [];
  for (const name of taught) {
    for (const index of [5, 6, 7, 8, 9]) {
      const image = sample(name, index);
      report.held_out.push({ class: name, image, ...(await upload(page, image, 2)) });
    }
  }
  await page.screenshot({ path: path.join(outDir, 'page-taught.png'), fullPage: true });
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('[data-testid="teach-export"]'),
  ]);
  report.export_name = download.suggestedFilename();
  report.export = path.join(outDir, report.export_name);
  await download.saveAs(report.export);

  // Back to the shipped model, then the downloaded zip through "load your own model".
  await page.click('[data-testid="teach-reset"]');
  await page.waitForSelector('[data-testid="model-accuracy"]', { timeout: 60_000 });
  report.description_after_reset = await page.textContent('[data-testid="model-description"]');
  const [zipChooser] = await Promise.all([
    page.waitForEvent('filechooser'),
    page.click('text=Load your own model'),
  ]);
  await zipChooser.setFiles([report.export]);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="model-description"]')?.textContent.includes('taught in the page'),
    null,
    { timeout: 60_000 },
  );
  report.zip_upload = await upload(page, sample('ship', 5), 2);

  // The visitor switches to the CPU: the same answers from wasm.
  await chooseBackend(page, 'wasm');
  report.switched_backend = await page.textContent('[data-testid="backend"]');
  report.zip_upload_wasm = await upload(page, sample('ship', 5), 2);
  await browser.close();

  // A browser without WebGPU: the page says why and runs on wasm.
  browser = await launch({ webgpu: false });
  const plain = await openPage(browser, url, log);
  report.no_webgpu_backend = await settledBackend(plain);
  report.no_webgpu_simd = await plain.getAttribute('[data-testid="backend"]', 'data-simd');
  report.no_webgpu_upload = await upload(plain, imagePath);
  // A browser without relaxed SIMD either (WebAssembly.validate refuses it, as Safari's
  // does): the plain SIMD worker, with the same answers.
  const older = await openPage(browser, url, log, () => { WebAssembly.validate = () => false; });
  await settledBackend(older);
  report.no_relaxed_simd = await older.getAttribute('[data-testid="backend"]', 'data-simd');
  report.no_relaxed_upload = await upload(older, imagePath);

  // A host that sends the cross-origin isolation headers: the threaded CPU worker, with
  // the same answers.
  isolated = await serve(distDir, PREFIX, {}, { isolated: true });
  const threaded = await openPage(browser, isolated.url, log);
  report.threads_backend = await settledBackend(threaded);
  report.threads_upload = await upload(threaded, imagePath);
  // Such a host without the threaded build (a 404 for its entry): one thread, and a message.
  const missing = await openPage(browser, isolated.url, log, null, '**/worker-threads_loader.js');
  report.threads_missing_backend = await settledBackend(missing);
  report.threads_missing_error = await missing.textContent('[data-testid="error"]');
  report.threads_missing_upload = await upload(missing, imagePath);
} catch (error) {
  report.failure = String(error?.stack ?? error);
} finally {
  await browser.close();
  server.close();
  isolated?.server.close();
}
console.log(JSON.stringify(report));
