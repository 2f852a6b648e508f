import { defineConfig } from "@playwright/test";

// Debian's Chromium, never a downloaded browser. scripts/e2e.mjs starts a node and sets
// BASE_URL; point BASE_URL at any node serving the client to run the same specs there.
export default defineConfig({
  testDir: "e2e",
  outputDir: "e2e/results",
  timeout: 90_000,
  expect: { timeout: 15_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"], ["json", { outputFile: "e2e/results/report.json" }]],
  use: {
    baseURL: process.env.BASE_URL ?? "http://127.0.0.1:5173",
    headless: true,
    viewport: { width: 1280, height: 860 },
    launchOptions: {
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    },
    trace: "off",
    screenshot: "only-on-failure",
  },
});
