#!/usr/bin/env node
// Serves web/dist and passes the API (and socket.io, websockets included) through to a node,
// until the node serves the client itself. No dependencies beyond node.
//
//   node scripts/serve.mjs --listen 127.0.0.1:5173 --node http://127.0.0.1:8080 [--dist dist]
import http from "node:http";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const PROXIED = ["/api/", "/socket.io/", "/healthz", "/readyz"];
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
};

export function startServer({ listen = "127.0.0.1:0", node, dist = path.join(here, "..", "dist") }) {
  const target = new URL(node);
  const [host, port] = listen.split(":");
  const root = path.resolve(dist);

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (PROXIED.some((p) => url.pathname === p.replace(/\/$/, "") || url.pathname.startsWith(p))) {
      const upstream = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers, host: target.host } },
        (up) => {
          res.writeHead(up.statusCode ?? 502, up.headers);
          res.flushHeaders(); // a server-sent event stream sends its headers long before a byte
          up.pipe(res);
        },
      );
      upstream.on("error", () => {
        if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { code: "bad_gateway", message: "the node did not answer" } }));
      });
      req.pipe(upstream);
      return;
    }
    // A file of the build, else index.html (the client routes the rest).
    let file = path.join(root, decodeURIComponent(url.pathname));
    if (!file.startsWith(root) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) file = path.join(root, "index.html");
    const type = TYPES[path.extname(file)] ?? "application/octet-stream";
    const immutable = file.includes(`${path.sep}assets${path.sep}`);
    res.writeHead(200, { "content-type": type, "cache-control": immutable ? "public, max-age=31536000, immutable" : "no-cache" });
    fs.createReadStream(file).pipe(res);
  });

  // WebSocket upgrades (socket.io) are passed through as raw bytes.
  server.on("upgrade", (req, socket, head) => {
    const upstream = net.connect(Number(target.port), target.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i];
        lines.push(`${name}: ${name.toLowerCase() === "host" ? target.host : req.rawHeaders[i + 1]}`);
      }
      upstream.write(lines.join("\r\n") + "\r\n\r\n");
      if (head?.length) upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("error", () => upstream.destroy());
  });

  return new Promise((resolve) => {
    server.listen(Number(port), host, () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const server = await startServer({
    listen: arg("listen", "127.0.0.1:5173"),
    node: arg("node", process.env.CANOPY_URL ?? "http://127.0.0.1:8080"),
    dist: arg("dist", undefined),
  });
  const { address, port } = server.address();
  console.log(`serving the client on http://${address}:${port}/`);
}
