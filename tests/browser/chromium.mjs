// What the display drivers share: Debian's Chromium (/usr/bin/chromium) through
// playwright-core, headless, with a profile of the test's own, and the first page.
import { chromium } from "playwright-core";

// Opens a persistent headless context in `userDataDir` and returns {context, page};
// the page's console goes to stderr (the test's output).
export async function openPage(userDataDir, viewport) {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  return { context, page };
}
