// End-to-end encryption across two client implementations: matrix-js-sdk with its Rust
// crypto (matrix-sdk-crypto compiled to WASM, in-memory store) and paracord-cli
// (matrix-rust-sdk, SQLite store), in one encrypted room, messages both ways.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import {
  cliBin,
  initCrypto,
  makeClient,
  register,
  runCli,
  startAndSync,
  startServer,
  waitFor,
} from "../lib/harness.js";

const MEGOLM = "m.megolm.v1.aes-sha2";

let server;
let alice; // matrix-js-sdk + Rust crypto (WASM)
let aliceCreds;
let bobCreds; // paracord-cli
let bobStore;
const bobPassword = "interop-password-bob";
const clients = [];

function marker(what) {
  return `secret-${what}-${Math.random().toString(36).slice(2, 12)}`;
}

/** The event `eventId` in alice's live timeline of `roomId`, once decrypted. */
async function aliceDecrypted(roomId, eventId) {
  return waitFor(
    async () => {
      const room = alice.getRoom(roomId);
      const event = room?.getLiveTimeline().getEvents().find((e) => e.getId() === eventId);
      if (!event) return null;
      await alice.decryptEventIfNeeded(event);
      if (event.isBeingDecrypted() || event.isDecryptionFailure()) return null;
      return event.getType() === "m.room.message" ? event : null;
    },
    `alice (matrix-js-sdk) to receive and decrypt ${eventId} in ${roomId}`,
    { timeoutMs: 30_000, intervalMs: 200 },
  );
}

describe("matrix-js-sdk (Rust crypto) and matrix-sdk exchange encrypted messages", { timeout: 180_000 }, () => {
  before(async () => {
    assert.ok(
      fs.existsSync(cliBin()),
      `paracord-cli not found at ${cliBin()}; build it with \`cargo build -p paracord-cli\` ` +
        "or set PARACORD_CLI_BIN",
    );
    server = await startServer();
    const suffix = Date.now().toString(36);
    aliceCreds = await register(server.baseUrl, `alice_e2ee_${suffix}`);
    bobCreds = await register(server.baseUrl, `bob_e2ee_${suffix}`, bobPassword);
    bobStore = fs.mkdtempSync(path.join(os.tmpdir(), "paracord-cli-js-"));

    alice = makeClient(server.baseUrl, aliceCreds);
    clients.push(alice);
    await initCrypto(alice);
    await startAndSync(alice);

    const [login] = await runCli(
      bobStore,
      ["login", "--homeserver", server.baseUrl, "--user", bobCreds.userId],
      { password: bobPassword },
    );
    assert.equal(login.user_id, bobCreds.userId, `CLI login: ${JSON.stringify(login)}`);
  });

  after(() => {
    for (const c of clients) c.stopClient();
    server?.stop();
    if (bobStore) fs.rmSync(bobStore, { recursive: true, force: true });
  });

  test("encrypted direct room, messages both ways, each side decrypts the other", async () => {
    const crypto = alice.getCrypto();
    assert.ok(crypto, "initRustCrypto gave the client a crypto API");
    const aliceDevice = await crypto.getOwnDeviceKeys();
    assert.ok(aliceDevice.ed25519, "alice's device has an ed25519 identity key");

    const { room_id: roomId } = await alice.createRoom({
      preset: "trusted_private_chat",
      is_direct: true,
      invite: [bobCreds.userId],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
    });
    await waitFor(() => alice.getRoom(roomId), `alice to see ${roomId}`);

    // Bob's `dm` joins the pending direct invite from alice.
    const [dm] = await runCli(bobStore, ["dm", aliceCreds.userId]);
    assert.equal(dm.room_id, roomId, `bob joined alice's room: ${JSON.stringify(dm)}`);
    assert.equal(dm.action, "joined", JSON.stringify(dm));
    assert.equal(dm.encrypted, true, JSON.stringify(dm));

    await waitFor(
      () => alice.getRoom(roomId)?.getMember(bobCreds.userId)?.membership === "join",
      `alice to see bob join ${roomId}`,
      { timeoutMs: 20_000 },
    );
    assert.ok(await crypto.isEncryptionEnabledInRoom(roomId), "alice's crypto treats the room as encrypted");

    // js-sdk → matrix-sdk.
    const fromAlice = marker("js");
    const { event_id: aliceEventId } = await alice.sendMessage(roomId, { msgtype: "m.text", body: fromAlice });
    const raw = await fetch(
      `${server.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(aliceEventId)}`,
      { headers: { authorization: `Bearer ${aliceCreds.accessToken}` } },
    ).then((r) => r.json());
    assert.equal(raw.type, "m.room.encrypted", `the server holds ciphertext: ${JSON.stringify(raw)}`);
    assert.equal(raw.content?.algorithm, MEGOLM, JSON.stringify(raw));
    assert.ok(!JSON.stringify(raw).includes(fromAlice), "no plaintext in the server's copy");

    const tail = await runCli(bobStore, ["tail", roomId, "--count", "1", "--timeout", "30"]);
    assert.equal(tail.length, 1, JSON.stringify(tail));
    assert.equal(tail[0].event_id, aliceEventId, JSON.stringify(tail));
    assert.equal(tail[0].body, fromAlice, `bob decrypted alice's message: ${JSON.stringify(tail)}`);
    assert.equal(tail[0].decrypted, true, JSON.stringify(tail));

    // matrix-sdk → js-sdk.
    const fromBob = marker("rust");
    const [sent] = await runCli(bobStore, ["send", roomId, fromBob]);
    assert.equal(sent.encrypted, true, JSON.stringify(sent));
    const event = await aliceDecrypted(roomId, sent.event_id);
    assert.equal(event.getContent().body, fromBob, "alice decrypted bob's message");
    assert.equal(event.getSender(), bobCreds.userId);
    assert.ok(event.isEncrypted(), "bob's message arrived encrypted");
    assert.equal(event.getWireContent().algorithm, MEGOLM);

    // And once more each way, over the established sessions.
    const again = marker("js-again");
    const { event_id: againId } = await alice.sendMessage(roomId, { msgtype: "m.text", body: again });
    const tail2 = await runCli(bobStore, ["tail", roomId, "--count", "3", "--timeout", "30"]);
    assert.deepEqual(
      tail2.map((m) => m.body),
      [fromAlice, fromBob, again],
      `bob reads the whole conversation: ${JSON.stringify(tail2)}`,
    );
    assert.equal(tail2[2].event_id, againId);
    const replyAgain = marker("rust-again");
    const [sent2] = await runCli(bobStore, ["send", `@${aliceCreds.userId.slice(1)}`, replyAgain]);
    const event2 = await aliceDecrypted(roomId, sent2.event_id);
    assert.equal(event2.getContent().body, replyAgain);
  });
});

