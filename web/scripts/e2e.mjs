#!/usr/bin/env node
// Runs the browser tests against a real node: starts `canopy up` on a free port with a fresh
// data directory, creates the admin, serves web/dist with the API passed through, runs the
// Playwright specs in Debian's Chromium, and stops everything. Exits non-zero on failure.
//
//   CANOPY_BIN=/path/to/canopy node scripts/e2e.mjs [playwright args, e.g. e2e/verify.spec.ts]
//
// With BASE_URL set (and CANOPY_ADMIN_PASSWORD, CANOPY_ADMIN_USER if not root) no node is
// started: the specs run against whatever serves the client there (e.g. the node itself).
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer } from "./serve.mjs";

const web = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const children = [];
let server = null;
let dataDir = null;

const log = (...args) => console.log("[e2e]", ...args);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitReady(url, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url} was not ready within ${seconds} s`);
}

function run(cmd, args, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, options);
    if (options.input !== undefined) {
      child.stdin.write(options.input);
      child.stdin.end();
    }
    child.on("error", reject);
    child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

async function stopAll() {
  for (const child of children) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    child.kill("SIGTERM");
    const exited = await Promise.race([
      new Promise((r) => child.once("exit", () => r(true))),
      new Promise((r) => setTimeout(() => r(false), 15_000)),
    ]);
    if (!exited) child.kill("SIGKILL");
  }
  if (server) await new Promise((r) => server.close(r));
  server?.closeAllConnections?.();
}

async function main() {
  const extra = process.argv.slice(2);
  const env = { ...process.env, CHROMIUM: process.env.CHROMIUM || "/usr/bin/chromium" };
  if (!fs.existsSync(env.CHROMIUM)) throw new Error(`no Chromium at ${env.CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)`);

  if (!process.env.BASE_URL) {
    const bin = process.env.CANOPY_BIN;
    if (!bin || !fs.existsSync(bin)) throw new Error("set CANOPY_BIN to the canopy binary (or BASE_URL to a running client)");
    if (!fs.existsSync(path.join(web, "dist", "index.html"))) throw new Error("no web/dist: run `npm run build` first");
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "canopy-e2e-"));
    const port = await freePort();
    const nodeUrl = `http://127.0.0.1:${port}`;
    const nodeLog = fs.openSync(path.join(dataDir, "canopy.log"), "a");
    log(`starting ${bin} on ${nodeUrl}, data in ${dataDir}`);
    const node = spawn(bin, ["up", "--listen", `127.0.0.1:${port}`, "--user-rate", "100000", "--data-dir", path.join(dataDir, "data")], {
      env: {
        ...process.env,
        CANOPY_API__REGISTRATIONS_PER_ADDRESS_HOUR: "100000",
        CANOPY_API__REGISTRATIONS_PER_BLOCK_HOUR: "100000",
      },
      stdio: ["ignore", nodeLog, nodeLog],
    });
    children.push(node);
    node.on("exit", (code) => code && log(`canopy exited with ${code}; see ${path.join(dataDir, "canopy.log")}`));
    await waitReady(`${nodeUrl}/readyz`, 120);

    const password = "the e2e admin password " + Math.random().toString(36).slice(2);
    const created = await run(bin, ["admin", "create", "--username", "root", "--data-dir", path.join(dataDir, "data")], {
      input: password + "\n",
      stdio: ["pipe", "ignore", "inherit"],
    });
    if (created !== 0) throw new Error(`canopy admin create exited with ${created}`);
    env.CANOPY_ADMIN_USER = "root";
    env.CANOPY_ADMIN_PASSWORD = password;

    server = await startServer({ listen: "127.0.0.1:0", node: nodeUrl, dist: path.join(web, "dist") });
    env.BASE_URL = `http://127.0.0.1:${server.address().port}`;
    log(`client on ${env.BASE_URL}`);
  } else if (!process.env.CANOPY_ADMIN_PASSWORD) {
    throw new Error("with BASE_URL, set CANOPY_ADMIN_PASSWORD (and CANOPY_ADMIN_USER if not root)");
  }

  const playwright = path.join(web, "node_modules", ".bin", "playwright");
  const test = spawn(playwright, ["test", ...extra], { cwd: web, env, stdio: "inherit" });
  children.push(test);
  const code = await new Promise((resolve) => test.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  summarize();
  return code;
}

/** One closing line any CI reads: `e2e: N passed, N failed, N skipped`. */
function summarize() {
  try {
    const { stats } = JSON.parse(fs.readFileSync(path.join(web, "e2e", "results", "report.json"), "utf8"));
    console.log(`e2e: ${stats.expected + stats.flaky} passed, ${stats.unexpected} failed, ${stats.skipped} skipped`);
  } catch {
    /* no report: the exit code tells */
  }
}

let code = 1;
const interrupted = () => {
  stopAll().finally(() => process.exit(130));
};
process.on("SIGINT", interrupted);
process.on("SIGTERM", interrupted);
try {
  code = await main();
} catch (e) {
  console.error("[e2e]", e.message);
  code = 1;
} finally {
  await stopAll();
  if (dataDir && code === 0) fs.rmSync(dataDir, { recursive: true, force: true });
  else if (dataDir) log(`kept ${dataDir} (the node's log is canopy.log there)`);
}
log(code === 0 ? "passed" : `failed (${code})`);
process.exit(code);
