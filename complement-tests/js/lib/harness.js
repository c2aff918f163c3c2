// Test harness: spawns a throwaway Paracord homeserver and builds
// matrix-js-sdk clients against it. Kept out of test/ so that
// `node --test test/` does not treat it as a test file.
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import * as RustSdkCryptoJs from "@matrix-org/matrix-sdk-crypto-wasm";
import loglevel from "loglevel";
import * as sdk from "matrix-js-sdk";

// The SDK logs every sync/HTTP step, and its named child loggers force
// themselves to DEBUG. Filter in the method factory (inherited by loggers
// created later) so test output stays readable. SDK_LOG_LEVEL=error|warn|debug to see more.
{
  const rank = { trace: 0, debug: 1, info: 2, log: 2, warn: 3, error: 4, silent: 5 };
  const threshold = rank[(process.env.SDK_LOG_LEVEL ?? "silent").toLowerCase()] ?? rank.error;
  const wrap = (inner) => (method, level, name) =>
    (rank[method] ?? rank.info) < threshold ? () => {} : inner(method, level, name);
  loglevel.methodFactory = wrap(loglevel.methodFactory);
  for (const l of Object.values(loglevel.getLoggers())) {
    l.methodFactory = wrap(l.methodFactory);
  }
  loglevel.rebuild();
}

// matrix-js-sdk's http-api timeoutSignal() arms a plain setTimeout for each
// request's local timeout (sync: pollTimeout + 80 s = 110 s) and never clears
// it, so after stopClient() node would idle ~110 s before exiting. Unref only
// such long timers so they cannot keep the test process alive.
{
  const realSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = function patchedSetTimeout(fn, ms, ...args) {
    const t = realSetTimeout(fn, ms, ...args);
    if (typeof ms === "number" && ms >= 60_000) t?.unref?.();
    return t;
  };
}

export function paracordBin() {
  return (
    process.env.PARACORD_BIN ??
    path.join(os.homedir(), ".cache/paracord/target/debug/paracord")
  );
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

/** Poll `fn` every `intervalMs` until it returns a truthy value or the deadline passes. */
export async function waitFor(fn, what, { timeoutMs = 10_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastErr = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}` +
      (lastErr ? ` (last error: ${lastErr.message ?? lastErr})` : ""),
  );
}

/**
 * Start a Paracord server in a fresh temp dir. Returns
 * { baseUrl, serverName, proc, tmp, logTail(), stop() }.
 */
export async function startServer() {
  const bin = paracordBin();
  if (!fs.existsSync(bin)) {
    throw new Error(
      `paracord binary not found at ${bin}; build it with ` +
        "`CARGO_TARGET_DIR=$HOME/.cache/paracord/target cargo build -p paracord` or set PARACORD_BIN",
    );
  }
  const port = await freePort();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "paracord-js-"));
  const serverName = `localhost:${port}`;
  const baseUrl = `http://127.0.0.1:${port}`;
  const proc = spawn(bin, [], {
    cwd: tmp,
    env: {
      ...process.env,
      PARACORD_SERVER_NAME: serverName,
      PARACORD_LISTEN: `127.0.0.1:${port}`,
      PARACORD_DATA_DIR: path.join(tmp, "data"),
      PARACORD_REGISTRATION_ENABLED: "true",
      PARACORD_RATE_LIMITS_ENABLED: "false",
      PARACORD_LOG: "warn",
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
  // Last resort if the test process dies without running `after` hooks.
  const killOnExit = () => {
    if (exited === null) proc.kill("SIGKILL");
  };
  process.once("exit", killOnExit);

  const server = {
    baseUrl,
    serverName,
    proc,
    tmp,
    logTail: () => log.split("\n").slice(-40).join("\n"),
    stop() {
      if (exited === null) proc.kill("SIGKILL");
      try {
        fs.rmSync(tmp, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    },
  };

  try {
    await waitFor(
      async () => {
        if (exited) {
          throw new Error(`server exited early (${JSON.stringify(exited)}):\n${server.logTail()}`);
        }
        const res = await fetch(`${baseUrl}/_matrix/client/versions`);
        return res.status === 200;
      },
      `GET ${baseUrl}/_matrix/client/versions to return 200`,
      { timeoutMs: 30_000, intervalMs: 100 },
    );
  } catch (e) {
    server.stop();
    throw new Error(`${e.message}\n--- server log tail ---\n${log.slice(-4000)}`);
  }
  return server;
}

/** Register a user with plain fetch (m.login.dummy in the first request). */
export async function register(baseUrl, username, password = "interop-password-1") {
  const res = await fetch(`${baseUrl}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username, password, auth: { type: "m.login.dummy" } }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.status !== 200) {
    throw new Error(
      `POST /_matrix/client/v3/register for ${username}: expected 200, got ${res.status} ${JSON.stringify(body)}`,
    );
  }
  for (const k of ["user_id", "access_token", "device_id"]) {
    if (typeof body[k] !== "string") {
      throw new Error(`register response for ${username} lacks ${k}: ${JSON.stringify(body)}`);
    }
  }
  return { userId: body.user_id, accessToken: body.access_token, deviceId: body.device_id };
}

/** Build a matrix-js-sdk client (no crypto, in-memory store) for a registered user. */
export function makeClient(baseUrl, creds) {
  return sdk.createClient({
    baseUrl,
    accessToken: creds.accessToken,
    userId: creds.userId,
    deviceId: creds.deviceId,
  });
}

/**
 * End-to-end encryption for `client` with matrix-js-sdk's Rust crypto (WASM) and an
 * in-memory store. initRustCrypto turns the WASM tracing on at DEBUG, straight to the
 * console; it is lowered to SDK_LOG_LEVEL (default: errors only) afterwards.
 */
export async function initCrypto(client) {
  await client.initRustCrypto({ useIndexedDB: false });
  const levels = {
    trace: RustSdkCryptoJs.LoggerLevel.Trace,
    debug: RustSdkCryptoJs.LoggerLevel.Debug,
    info: RustSdkCryptoJs.LoggerLevel.Info,
    warn: RustSdkCryptoJs.LoggerLevel.Warn,
  };
  const wanted = levels[(process.env.SDK_LOG_LEVEL ?? "").toLowerCase()];
  new RustSdkCryptoJs.Tracing(wanted ?? RustSdkCryptoJs.LoggerLevel.Error).turnOn();
}

/** startClient and wait for the first sync to reach PREPARED. */
export async function startAndSync(client, timeoutMs = 20_000) {
  const prepared = new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener(sdk.ClientEvent.Sync, onSync);
      reject(
        new Error(
          `${client.getUserId()}: sync did not reach PREPARED within ${timeoutMs} ms ` +
            `(state ${client.getSyncState()})`,
        ),
      );
    }, timeoutMs);
    function onSync(state, _prev, data) {
      if (state === sdk.SyncState.Prepared || state === sdk.SyncState.Syncing) {
        clearTimeout(timer);
        client.removeListener(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === sdk.SyncState.Error) {
        // The SDK retries by itself; surface the cause if we end up timing out.
        client.lastSyncError = data?.error;
      }
    }
    client.on(sdk.ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 20, threadSupport: true });
  await prepared;
}

/**
 * The `paracord-cli` binary (matrix-sdk with end-to-end encryption): PARACORD_CLI_BIN, or
 * debug/paracord-cli under CARGO_TARGET_DIR (default $HOME/.cache/paracord/target).
 */
export function cliBin() {
  return (
    process.env.PARACORD_CLI_BIN ??
    path.join(
      process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), ".cache/paracord/target"),
      "debug/paracord-cli",
    )
  );
}

/**
 * Run `paracord-cli --json --store <store> ...args` and return its stdout as parsed JSON
 * lines. Rejects, with stderr, when it exits non-zero.
 */
export function runCli(store, args, { password, timeoutMs = 60_000 } = {}) {
  const env = { ...process.env };
  delete env.PARACORD_CLI_STORE;
  delete env.PARACORD_CLI_PASSWORD;
  if (password !== undefined) env.PARACORD_CLI_PASSWORD = password;
  return new Promise((resolve, reject) => {
    execFile(
      cliBin(),
      ["--json", "--store", store, ...args],
      { env, timeout: timeoutMs, maxBuffer: 4 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) {
          reject(
            new Error(
              `paracord-cli ${args.join(" ")} failed (${error.code ?? error.signal}):\n` +
                `stdout: ${stdout}\nstderr: ${stderr}`,
            ),
          );
          return;
        }
        try {
          resolve(
            stdout
              .split("\n")
              .filter((line) => line.trim() !== "")
              .map((line) => JSON.parse(line)),
          );
        } catch (e) {
          reject(new Error(`paracord-cli ${args.join(" ")}: not JSON lines (${e.message}): ${stdout}`));
        }
      },
    );
  });
}

export { sdk };
