// Drives the /test/ page in rooms mode (?room=…, on web/switchyard.js) in headless Chromium
// for tests/tests/rooms_browser.rs. Commands on stdin, one JSON line back per command:
//   wait_count N TIMEOUT_MS → waits until the page lists N broadcasts (or more);
//                             {"ok", "ms", "state", "seqs", "texts", "epochs", "recover_failed", "connects"}
//   show                    → the same, at once
//   quit
//
// usage: node rooms_page.mjs PAGE_URL USER_DATA_DIR
import { createInterface } from "node:readline";
import { openPage } from "./chromium.mjs";

const [url, userDataDir] = process.argv.slice(2);
if (!url || !userDataDir) {
  console.error("usage: node rooms_page.mjs PAGE_URL USER_DATA_DIR");
  process.exit(2);
}

const { context, page } = await openPage(userDataDir, { width: 1000, height: 900 });
await page.goto(url);

const shown = () =>
  page.evaluate(() => {
    const items = [...document.querySelectorAll("#broadcasts li")];
    return {
      state: document.getElementById("state").textContent,
      seqs: items.map((li) => Number(li.dataset.seq)),
      epochs: [...new Set(items.map((li) => li.dataset.epoch))],
      texts: items.map((li) => li.textContent),
      recover_failed: Number(document.getElementById("recover-failed").textContent),
      connects: document.getElementById("connects").textContent,
    };
  });

const reply = (object) => process.stdout.write(JSON.stringify(object) + "\n");

for await (const line of createInterface({ input: process.stdin })) {
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === "wait_count") {
    const [n, timeout] = args.map(Number);
    const started = performance.now();
    let ok = true;
    try {
      await page.waitForFunction((n) => document.querySelectorAll("#broadcasts li").length >= n, n, {
        timeout,
        polling: 20,
      });
    } catch {
      ok = false;
    }
    reply({ ok, ms: Math.round(performance.now() - started), ...(await shown()) });
  } else if (command === "wait_state") {
    const [state, timeout] = args;
    let ok = true;
    try {
      await page.waitForFunction((s) => document.getElementById("state").textContent === s, state, {
        timeout: Number(timeout),
        polling: 20,
      });
    } catch {
      ok = false;
    }
    reply({ ok, ...(await shown()) });
  } else if (command === "show") {
    reply({ ok: true, ...(await shown()) });
  } else if (command === "quit") {
    break;
  }
}
await context.close();
