// End-to-end run of the browser app, called by tests/tests/web_e2e.rs:
//   node e2e.mjs DIST_DIR IMAGE.jpg TEXT_FILE OUT_DIR
// Prints one JSON object with what the page showed; the Rust test checks it.
import fs from 'node:fs';
import path from 'node:path';
import { serve } from './serve.mjs';
import { launch, openPage, upload, drop } from './browser.mjs';

const [distDir, imagePath, textPath, outDir] = process.argv.slice(2);
const PREFIX = '/vit-demo/';
const log = [];
const { server, url } = await serve(distDir, PREFIX);
const browser = await launch();
const report = { url, log };
try {
  const page = await openPage(browser, url, log);
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
} catch (error) {
  report.failure = String(error?.stack ?? error);
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(report));
