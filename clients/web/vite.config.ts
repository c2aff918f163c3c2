import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// `npm run dev` serves the app with hot reload and proxies the APIs to a local paracord
// (PARACORD_URL, default http://127.0.0.1:8008), so the app and the APIs share one origin
// as they do when the binary serves the built app.
const target = process.env.PARACORD_URL ?? "http://127.0.0.1:8008";
const proxy = Object.fromEntries(
  ["/_matrix", "/_paracord", "/_synapse", "/.well-known"].map((p) => [
    p,
    { target, changeOrigin: true },
  ]),
);

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  build: {
    target: "es2022",
    // The crypto WASM stays a separate file, loaded only when end-to-end encryption starts.
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  test: {
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
    environment: "node",
  },
});
