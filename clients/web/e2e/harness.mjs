// Browser-test harness: a throwaway paracord (with the web client embedded) on a free
// loopback port, and Debian's Chromium driven by playwright-core. Kept out of the test
// files' names so `node --test e2e/` does not run it as a test.
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";

export function paracordBin() {
  if (process.env.PARACORD_BIN) return process.env.PARACORD_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), ".cache/paracord/target");
  return path.join(target, "debug/paracord");
}

/** Debian's chromium, installed with apt when it is missing (Playwright's download cannot work here). */
export function ensureChromium() {
  if (fs.existsSync(CHROMIUM)) return;
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const sudo = process.getuid?.() === 0 ? [] : ["sudo"];
  const run = (args) => {
    const cmd = [...sudo, ...args];
    execFileSync(cmd[0], cmd.slice(1), { stdio: "inherit", env });
  };
  try {
    run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"]);
  } catch {
    run(["apt-get", "update"]);
    run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"]);
  }
  if (!fs.existsSync(CHROMIUM)) throw new Error(`apt-get installed chromium, but ${CHROMIUM} is missing`);
}

export function launchBrowser() {
  ensureChromium();
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
  });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function waitFor(fn, what, { timeoutMs = 15_000, intervalMs = 100, fatal } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    const stop = fatal?.();
    if (stop) throw new Error(stop);
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (${lastErr.message ?? lastErr})` : ""}`);
}

/**
 * A paracord in a temp dir, registration open unless `registration: false` (then only the
 * one-time admin token, printed at start, registers), with `config` as further PARACORD_*
 * variables; { baseUrl, log(), logTail(), stop() }.
 */
export async function startServer({ registration = true, config = {} } = {}) {
  const bin = paracordBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`paracord binary not found at ${bin}: build the web client, then \`cargo build -p paracord\`, or set PARACORD_BIN`);
  }
  const port = await freePort();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "paracord-web-"));
  // The server refuses PARACORD_* variables that are not configuration keys: pass none
  // but its own.
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("PARACORD_")),
  );
  const proc = spawn(bin, [], {
    cwd: tmp,
    env: {
      ...inherited,
      PARACORD_SERVER_NAME: `localhost:${port}`,
      PARACORD_LISTEN: `127.0.0.1:${port}`,
      PARACORD_DATA_DIR: path.join(tmp, "data"),
      PARACORD_REGISTRATION_ENABLED: String(registration),
      PARACORD_RATE_LIMITS_ENABLED: "false",
      PARACORD_LOG: "warn",
      ...config,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  let exited = null;
  proc.on("exit", (code, signal) => {
    exited = { code, signal };
  });
  process.once("exit", () => exited === null && proc.kill("SIGKILL"));
  const server = {
    baseUrl: `http://127.0.0.1:${port}`,
    log: () => log,
    logTail: () => log.slice(-4000),
    stop() {
      if (exited === null) proc.kill("SIGKILL");
      fs.rmSync(tmp, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(
      async () => (await fetch(`${server.baseUrl}/_matrix/client/versions`)).status === 200,
      "the server to answer /_matrix/client/versions",
      { timeoutMs: 30_000, fatal: () => exited && `the server exited (${JSON.stringify(exited)})` },
    );
  } catch (e) {
    server.stop();
    throw new Error(`${e.message}\n--- server log ---\n${log.slice(-4000)}`);
  }
  return server;
}

/**
 * Runs `fn(page)`-style test steps; on failure, adds what the pages logged (errors and
 * warnings), their URLs and the server's log to the error, so a failure says why.
 */
export async function diagnosed(server, pages, fn) {
  const logs = new Map();
  for (const [name, page] of Object.entries(pages)) {
    logs.set(name, []);
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") logs.get(name).push(`${m.type()}: ${m.text().slice(0, 300)}`);
    });
    page.on("requestfailed", (r) => logs.get(name).push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  }
  try {
    return await fn();
  } catch (e) {
    const parts = [e.stack ?? String(e)];
    for (const [name, page] of Object.entries(pages)) {
      parts.push(`--- ${name} at ${page.url()} ---`, ...logs.get(name).slice(-25));
    }
    parts.push("--- server log ---", server.logTail());
    e.message = `${e.message}\n${parts.slice(1).join("\n")}`;
    throw e;
  }
}
