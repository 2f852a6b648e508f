import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The node serves the build at `/` and the API under `/api`; `npm run dev` proxies both to a
// node at CANOPY_URL (default http://127.0.0.1:8080).
const target = process.env.CANOPY_URL ?? "http://127.0.0.1:8080";
const proxy = {
  "/api": { target, changeOrigin: false },
  "/socket.io": { target, ws: true },
  "/readyz": { target },
  "/healthz": { target },
};

export default defineConfig({
  base: "/",
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 700,
    rollupOptions: {
      output: {
        manualChunks: {
          react: ["react", "react-dom", "react-router-dom", "react-redux", "@reduxjs/toolkit"],
          mui: ["@mui/material", "@emotion/react", "@emotion/styled"],
        },
      },
    },
  },
  server: { proxy },
  preview: { proxy },
});
