// Drives the /display/ page in headless Chromium for tests/tests/display_browser.rs.
// The test sends commands on stdin, one per line, and reads one JSON line per command:
//   wait MODE REVISION TIMEOUT_MS  → waits until <body data-mode> is MODE and #revision is
//                                    REVISION (`*`: any); {"ok", "ms", "mode", "ws", "revision",
//                                    "title", "rows", "error"}
//   console                        → what the page logged so far; {"ok": true, "lines": [...]}
//   shot PATH                      → a screenshot; {"ok": true}
//   quit
//
// usage: node display_page.mjs PAGE_URL USER_DATA_DIR
import { createInterface } from "node:readline";
import { openPage } from "./chromium.mjs";

const [url, userDataDir] = process.argv.slice(2);
if (!url || !userDataDir) {
  console.error("usage: node display_page.mjs PAGE_URL USER_DATA_DIR");
  process.exit(2);
}

const { context, page } = await openPage(userDataDir, { width: 1000, height: 700 });
const logged = [];
page.on("console", (message) => logged.push(message.text()));
page.on("pageerror", (error) => logged.push(`pageerror: ${error.message}`));
await page.goto(url);

const shown = () =>
  page.evaluate(() => ({
    mode: document.body.dataset.mode,
    ws: document.body.dataset.ws,
    revision: document.getElementById("revision").textContent,
    title: document.getElementById("subtitle").textContent,
    rows: document.querySelectorAll("#schedule tr").length,
    error: document.getElementById("error").textContent,
  }));

const reply = (object) => process.stdout.write(JSON.stringify(object) + "\n");

for await (const line of createInterface({ input: process.stdin })) {
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === "wait") {
    const [mode, revision, timeout] = args;
    const started = performance.now();
    let ok = true;
    try {
      await page.waitForFunction(
        ([mode, revision]) =>
          document.body.dataset.mode === mode &&
          (revision === "*" || document.getElementById("revision").textContent === revision),
        [mode, revision],
        { timeout: Number(timeout), polling: 10 },
      );
    } catch (e) {
      ok = false;
    }
    reply({ ok, ms: Math.round(performance.now() - started), ...(await shown()) });
  } else if (command === "console") {
    reply({ ok: true, lines: logged });
  } else if (command === "shot") {
    await page.screenshot({ path: args[0] });
    reply({ ok: true });
  } else if (command === "quit") {
    break;
  }
}
await context.close();
