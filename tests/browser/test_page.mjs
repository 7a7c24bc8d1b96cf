// Drives the /test/ page in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core) the way a person would: wait for the socket, send two messages,
// reconnect with the same session_uuid, send one more, wait for a heartbeat, take a
// screenshot. Prints one JSON line with what the page showed; exits non-zero on failure.
//
// usage: node test_page.mjs BASE_URL SCREENSHOT.png USER_DATA_DIR
import { chromium } from "playwright-core";

const [base, screenshot, userDataDir] = process.argv.slice(2);
if (!base || !screenshot || !userDataDir) {
  console.error("usage: node test_page.mjs BASE_URL SCREENSHOT.png USER_DATA_DIR");
  process.exit(2);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1000, height: 760 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

const text = (page, id) => page.locator(`#${id}`).innerText();
const waitText = (page, id, wanted) =>
  page.waitForFunction(
    ([id, wanted]) => document.getElementById(id).textContent === wanted,
    [id, wanted],
    { timeout: 10_000 },
  );

let failed = false;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => console.error(`page: ${message.text()}`));
  const session = `browser-${Date.now()}`;
  const first = await page.goto(`${base}/test/?session_uuid=${session}`);
  await waitText(page, "state", "open");

  await page.click("#send");
  await waitText(page, "count", "count: 1");
  await page.click("#send");
  await waitText(page, "count", "count: 2");

  await page.click("#reconnect");
  await waitText(page, "connects", "connects: 2");
  await waitText(page, "state", "open");
  await page.click("#send");
  await waitText(page, "count", "count: 3");

  await page.waitForFunction(
    () => !document.getElementById("heartbeats").textContent.endsWith(" 0"),
    null,
    { timeout: 10_000 },
  );
  await page.screenshot({ path: screenshot, fullPage: true });

  console.log(
    JSON.stringify({
      status: first?.status(),
      count: await text(page, "count"),
      heartbeats: await text(page, "heartbeats"),
      connects: await text(page, "connects"),
      state: await text(page, "state"),
      session: await text(page, "session"),
    }),
  );
} catch (error) {
  failed = true;
  console.error(`browser test failed: ${error.stack ?? error}`);
} finally {
  await context.close();
}
process.exit(failed ? 1 : 0);
