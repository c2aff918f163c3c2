// matrix-js-sdk interop: reactions, edits and threads, observed through the
// client library's own requests against a freshly spawned Paracord.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { makeClient, register, sdk, startAndSync, startServer, waitFor } from "../lib/harness.js";

const { Direction } = sdk;

let server;
let alice; // creates rooms, reacts, edits, sends thread roots
let bob; // joins, replies in threads, reads everything back
const clients = [];

/** Make `client` see `roomId` in its own store (sendEvent wants a known room). */
async function knowsRoom(client, roomId) {
  await waitFor(() => client.getRoom(roomId), `${client.getUserId()} to see room ${roomId} via /sync`, {
    timeoutMs: 15_000,
  });
}

/** Alice creates a room, Bob joins; both clients have it in their stores. */
async function sharedRoom(name) {
  const { room_id: roomId } = await alice.createRoom({
    name,
    preset: "public_chat",
    invite: [bob.getUserId()],
  });
  assert.match(roomId, /^!/, `createRoom returned a room id: ${roomId}`);
  await knowsRoom(alice, roomId);
  await bob.joinRoom(roomId);
  await knowsRoom(bob, roomId);
  return roomId;
}

function text(body) {
  return { msgtype: "m.text", body };
}

describe("matrix-js-sdk interop", { timeout: 120_000 }, () => {
  before(async () => {
    server = await startServer();
    const suffix = Date.now().toString(36);
    const aCreds = await register(server.baseUrl, `alice_${suffix}`);
    const bCreds = await register(server.baseUrl, `bob_${suffix}`);
    alice = makeClient(server.baseUrl, aCreds);
    bob = makeClient(server.baseUrl, bCreds);
    clients.push(alice, bob);
    await Promise.all([startAndSync(alice), startAndSync(bob)]);
  });

  after(() => {
    for (const c of clients) c.stopClient();
    server?.stop();
  });

  test("reactions: one 👍 annotation, duplicate rejected with M_DUPLICATE_ANNOTATION", async () => {
    const roomId = await sharedRoom("reactions");
    const { event_id: msgId } = await bob.sendEvent(roomId, "m.room.message", text("react to me"));
    assert.ok(msgId, "bob's message got an event id");

    const reaction = { "m.relates_to": { rel_type: "m.annotation", event_id: msgId, key: "👍" } };
    const { event_id: reactionId } = await alice.sendEvent(roomId, "m.reaction", reaction);
    assert.ok(reactionId, "alice's reaction got an event id");

    const rel = await bob.relations(roomId, msgId, "m.annotation", "m.reaction");
    assert.equal(rel.originalEvent?.getId(), msgId, "relations() fetched the original event");
    assert.equal(
      rel.events.length,
      1,
      `expected exactly one m.annotation/m.reaction relation, got ${JSON.stringify(rel.events.map((e) => e.event))}`,
    );
    const [ev] = rel.events;
    assert.equal(ev.getId(), reactionId, "the relation is alice's reaction event");
    assert.equal(ev.getType(), "m.reaction", "relation event type");
    assert.equal(ev.getSender(), alice.getUserId(), "reaction sender is alice");
    assert.equal(ev.getContent()["m.relates_to"]?.key, "👍", "reaction key is 👍");

    await assert.rejects(
      alice.sendEvent(roomId, "m.reaction", reaction),
      (err) => {
        assert.equal(
          err.errcode,
          "M_DUPLICATE_ANNOTATION",
          `second identical reaction should fail with M_DUPLICATE_ANNOTATION, got httpStatus=${err.httpStatus} errcode=${err.errcode} data=${JSON.stringify(err.data)}`,
        );
        return true;
      },
      "a second identical 👍 by the same user must be rejected",
    );

    const again = await bob.relations(roomId, msgId, "m.annotation", "m.reaction");
    assert.equal(again.events.length, 1, "still exactly one 👍 after the rejected duplicate");
  });

  test("edits: m.replace is bundled on the original and listed by relations()", async () => {
    const roomId = await sharedRoom("edits");
    const { event_id: origId } = await alice.sendEvent(roomId, "m.room.message", text("helo"));
    const { event_id: editId } = await alice.sendEvent(roomId, "m.room.message", {
      msgtype: "m.text",
      body: " * hello",
      "m.new_content": text("hello"),
      "m.relates_to": { rel_type: "m.replace", event_id: origId },
    });
    assert.ok(origId && editId, "both events got ids");

    const orig = await bob.fetchRoomEvent(roomId, origId);
    assert.equal(orig.event_id, origId, "fetchRoomEvent returned the original");
    const bundled = orig.unsigned?.["m.relations"]?.["m.replace"];
    assert.ok(
      bundled,
      `original should carry unsigned["m.relations"]["m.replace"]; unsigned = ${JSON.stringify(orig.unsigned)}`,
    );
    assert.equal(bundled.event_id, editId, `bundled m.replace should be the edit: ${JSON.stringify(bundled)}`);

    const rel = await bob.relations(roomId, origId, "m.replace", "m.room.message");
    const ids = rel.events.map((e) => e.getId());
    assert.deepEqual(ids, [editId], `relations(m.replace, m.room.message) should list exactly the edit, got ${JSON.stringify(ids)}`);
    assert.equal(rel.events[0].getContent()["m.new_content"]?.body, "hello", "edit carries m.new_content");
  });

  test("threads: thread list shows the root, bundled m.thread count is 2", async () => {
    const roomId = await sharedRoom("threads");
    const { event_id: rootId } = await alice.sendEvent(roomId, "m.room.message", text("thread root"));
    const reply = (body) => ({
      ...text(body),
      "m.relates_to": {
        rel_type: "m.thread",
        event_id: rootId,
        is_falling_back: true,
        "m.in_reply_to": { event_id: rootId },
      },
    });
    // The first reply goes out as a plain PUT, without the SDK's local echo: when it opens
    // a thread, matrix-js-sdk 36 builds the thread from GET /relations while the send is
    // still in flight, and if that page already holds the reply (the server persisted it
    // before answering the PUT) the SDK's echo bookkeeping throws "updatePendingEventStatus
    // called on an event which is not a local echo". The second reply goes through
    // sendEvent into the thread the client has by then built from /sync and /relations.
    const { event_id: r1 } = await bob.http.authedRequest(
      sdk.Method.Put,
      `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/first-reply-${Date.now()}`,
      undefined,
      reply("reply one"),
    );
    await waitFor(
      () => {
        const thread = bob.getRoom(roomId)?.getThread(rootId);
        return thread?.initialEventsFetched && thread.findEventById(r1);
      },
      `${bob.getUserId()}'s client to build thread ${rootId} holding ${r1}`,
      { timeoutMs: 15_000 },
    );
    const { event_id: r2 } = await bob.sendEvent(roomId, "m.room.message", reply("reply two"));
    assert.ok(r1 && r2, "both thread replies got ids");

    const list = await bob.createThreadListMessagesRequest(roomId, null, 20, Direction.Backward);
    const listed = (list.chunk ?? []).map((e) => e.event_id);
    assert.ok(
      listed.includes(rootId),
      `GET /_matrix/client/v1/rooms/{roomId}/threads should list root ${rootId}; chunk ids = ${JSON.stringify(listed)}`,
    );
    const rootInList = list.chunk.find((e) => e.event_id === rootId);
    assert.equal(
      rootInList.unsigned?.["m.relations"]?.["m.thread"]?.count,
      2,
      `thread list entry should bundle m.thread count 2; unsigned = ${JSON.stringify(rootInList.unsigned)}`,
    );

    const root = await bob.fetchRoomEvent(roomId, rootId);
    const summary = root.unsigned?.["m.relations"]?.["m.thread"];
    assert.ok(summary, `root should carry unsigned["m.relations"]["m.thread"]; unsigned = ${JSON.stringify(root.unsigned)}`);
    assert.equal(summary.count, 2, `bundled thread count should be 2: ${JSON.stringify(summary)}`);
    assert.equal(summary.latest_event?.event_id, r2, "bundled latest_event is the second reply");
    assert.equal(summary.current_user_participated, true, "bob participated in the thread");
  });
  test("media: uploadContent, then an authenticated download and a thumbnail through mxcUrlToHttp", async () => {
    const bytes = Buffer.from("hello from matrix-js-sdk");
    const { content_uri: uri } = await alice.uploadContent(bytes, { type: "text/plain", name: "hello.txt" });
    assert.match(uri, /^mxc:\/\//, `uploadContent returned an mxc uri: ${uri}`);
    // useAuthentication = true: the /_matrix/client/v1/media download path with a bearer token.
    const url = bob.mxcUrlToHttp(uri, undefined, undefined, undefined, false, true, true);
    assert.match(url, /\/_matrix\/client\/v1\/media\/download\//, `authenticated media URL: ${url}`);
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${bob.getAccessToken()}` } });
    assert.equal(resp.status, 200, `download answered ${resp.status}`);
    assert.equal(Buffer.from(await resp.arrayBuffer()).toString(), "hello from matrix-js-sdk");
    const anonymous = await fetch(url);
    assert.equal(anonymous.status, 401, "authenticated media refuses a request without a token");
  });
});
