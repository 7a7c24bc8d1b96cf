// Drives the /display/admin/ page in headless Chromium for tests/tests/display_admin_browser.rs.
// The test sends one JSON command per line on stdin and reads one JSON line per command:
//   {"op": "fill", "sel": CSS, "value": TEXT}   → {"ok"}
//   {"op": "click", "sel": CSS}                 → {"ok"}
//   {"op": "wait", "js": EXPRESSION, "ms": N}   → waits until EXPRESSION (evaluated in the
//                                                page) is truthy; {"ok", "value"}
//   {"op": "eval", "js": EXPRESSION}            → {"ok", "value"}
//   {"op": "shot", "path": PNG}                 → {"ok"}
//   {"op": "quit"}
// A failed command answers {"ok": false, "error"} and the driver carries on.
//
// usage: node display_admin.mjs PAGE_URL USER_DATA_DIR
import { createInterface } from "node:readline";
import { openPage } from "./chromium.mjs";

const [url, userDataDir] = process.argv.slice(2);
if (!url || !userDataDir) {
  console.error("usage: node display_admin.mjs PAGE_URL USER_DATA_DIR");
  process.exit(2);
}

const { context, page } = await openPage(userDataDir, { width: 1200, height: 900 });
await page.goto(url);

const reply = (object) => process.stdout.write(JSON.stringify(object) + "\n");
const evaluate = (js) => page.evaluate((source) => (0, eval)(source), js);

for await (const line of createInterface({ input: process.stdin })) {
  let command;
  try { command = JSON.parse(line); } catch (e) { reply({ ok: false, error: `not JSON: ${line}` }); continue; }
  try {
    if (command.op === "fill") {
      await page.fill(command.sel, command.value, { timeout: 5000 });
      reply({ ok: true });
    } else if (command.op === "click") {
      await page.click(command.sel, { timeout: 5000 });
      reply({ ok: true });
    } else if (command.op === "wait") {
      await page.waitForFunction((source) => (0, eval)(source), command.js, { timeout: command.ms ?? 5000, polling: 20 });
      reply({ ok: true, value: await evaluate(command.js) });
    } else if (command.op === "eval") {
      reply({ ok: true, value: await evaluate(command.js) });
    } else if (command.op === "shot") {
      await page.screenshot({ path: command.path });
      reply({ ok: true });
    } else if (command.op === "quit") {
      break;
    } else {
      reply({ ok: false, error: `unknown op ${command.op}` });
    }
  } catch (e) {
    reply({ ok: false, error: String(e.message || e).split("\n")[0] });
  }
}
await context.close();
