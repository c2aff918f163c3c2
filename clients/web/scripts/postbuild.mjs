// After `vite build`: writes a gzip copy beside each text file of dist/ (the server sends
// it to browsers that accept gzip) and enforces the size budget of the initial load: the
// JavaScript that index.html loads, gzipped, must stay within 300 KB. The crypto WASM and
// the chunks loaded on demand are not part of it.
import fs from "node:fs";
import path from "node:path";
import { gzipSync } from "node:zlib";

const BUDGET = 300 * 1024;
const dist = path.resolve(import.meta.dirname, "../dist");

function walk(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p) : [p];
  });
}

const gzipped = new Map();
for (const file of walk(dist)) {
  if (!/\.(html|js|mjs|css|svg|json|wasm|txt)$/.test(file)) continue;
  const gz = gzipSync(fs.readFileSync(file), { level: 9 });
  gzipped.set(path.relative(dist, file).split(path.sep).join("/"), gz.length);
  fs.writeFileSync(`${file}.gz`, gz);
}

const index = fs.readFileSync(path.join(dist, "index.html"), "utf8");
const initial = [...index.matchAll(/(?:src|href)="\/([^"]+\.js)"/g)].map((m) => m[1]);
if (initial.length === 0) {
  console.error("postbuild: index.html loads no script; is this the Vite build?");
  process.exit(1);
}
const total = initial.reduce((sum, f) => sum + (gzipped.get(f) ?? 0), 0);
const lazy = [...gzipped.keys()].filter((f) => f.endsWith(".js") && !initial.includes(f));
const wasm = [...gzipped.keys()].filter((f) => f.endsWith(".wasm"));
console.log(
  `postbuild: initial JS ${(total / 1024).toFixed(1)} KB gzipped (${initial.join(", ")}); ` +
    `budget ${BUDGET / 1024} KB; ${lazy.length} lazy chunk(s), ${wasm.length} WASM file(s)`,
);
if (total > BUDGET) {
  console.error(`postbuild: the initial JS is over budget by ${((total - BUDGET) / 1024).toFixed(1)} KB`);
  process.exit(1);
}
