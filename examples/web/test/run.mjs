// Open the example page in headless Chromium (playwright-core, the system's Chromium), wait for
// its explanation, and write result.json and page.png to OUT.
//   node test/run.mjs URL OUT [CHROMIUM]
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const [url, out, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node test/run.mjs URL OUT [CHROMIUM]");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 },
                                       deviceScaleFactor: 1 });
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.bincamResult !== undefined, null, { timeout: 120000 });
  const result = await page.evaluate(() => window.bincamResult);
  await page.screenshot({ path: join(out, "page.png"), fullPage: true });
  writeFileSync(join(out, "result.json"), JSON.stringify({ ...result, console: console_ }));
  if (result.error) {
    console.error(`page error: ${result.error}`);
    process.exitCode = 1;
  }
} finally {
  await browser.close();
}
