// matrix-js-sdk interop: a guild created through /_paracord/v1 is, to a plain Matrix
// client, a space with rooms it can join and talk in; the guild's permissions reach it as
// ordinary M_FORBIDDEN errors (spec/profile.md §3, §4).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { makeClient, register, startAndSync, startServer, waitFor } from "../lib/harness.js";

const SEND_MESSAGES = 2048;
const ATTACH_FILES = 32768;

let server;
let ownerCreds; // creates the guild over the REST extension
let bob; // a plain matrix-js-sdk client
const clients = [];

/** A request to the Paracord REST extension as the owner; returns the parsed body. */
async function rest(method, path, body) {
  const res = await fetch(`${server.baseUrl}/_paracord/v1${path}`, {
    method,
    headers: {
      authorization: `Bearer ${ownerCreds.accessToken}`,
      "content-type": "application/json",
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  assert.equal(res.status, 200, `${method} /_paracord/v1${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** The owner sets a channel permission overwrite. */
function overwrite(channelId, target, allow, deny) {
  return rest(
    "PUT",
    `/channels/${encodeURIComponent(channelId)}/permissions/${encodeURIComponent(target)}`,
    { allow: String(allow), deny: String(deny) },
  );
}

/** Asserts that `promise` rejects with a Matrix M_FORBIDDEN error whose message contains `what`. */
async function forbidden(promise, what) {
  await assert.rejects(promise, (err) => {
    assert.equal(
      err.errcode,
      "M_FORBIDDEN",
      `expected M_FORBIDDEN, got httpStatus=${err.httpStatus} errcode=${err.errcode} data=${JSON.stringify(err.data)}`,
    );
    assert.equal(err.httpStatus, 403, "a 403");
    if (what) assert.match(err.data?.error ?? "", new RegExp(what), `the error names ${what}`);
    return true;
  });
}

describe("matrix-js-sdk and a Paracord guild", { timeout: 120_000 }, () => {
  before(async () => {
    server = await startServer();
    const suffix = Date.now().toString(36);
    ownerCreds = await register(server.baseUrl, `owner_${suffix}`);
    const bCreds = await register(server.baseUrl, `bob_${suffix}`);
    bob = makeClient(server.baseUrl, bCreds);
    clients.push(bob);
    await startAndSync(bob);
  });

  after(() => {
    for (const c of clients) c.stopClient();
    server?.stop();
  });

  test("a guild is a space whose channels the SDK lists, joins and talks in, within the guild's permissions", async () => {
    const guild = await rest("POST", "/guilds", { name: "Interop Guild" });
    const spaceId = guild.id;
    const generalId = guild.system_channel;
    const category = guild.channels.find((c) => c.kind === "category");
    assert.ok(spaceId && generalId && category, `a guild with #general and a category: ${JSON.stringify(guild)}`);

    // The guild is joined through an invite (the owner's, as Matrix sees it).
    const owner = makeClient(server.baseUrl, ownerCreds);
    await owner.invite(spaceId, bob.getUserId());
    await waitFor(
      () => bob.getRoom(spaceId)?.getMyMembership() === "invite",
      "bob to see the invite to the space",
      { timeoutMs: 15_000 },
    );
    await bob.joinRoom(spaceId);

    // The hierarchy: the space, then its children with their names.
    const hierarchy = await bob.getRoomHierarchy(spaceId, 50, 1);
    const rooms = Object.fromEntries(hierarchy.rooms.map((r) => [r.room_id, r]));
    assert.equal(rooms[spaceId]?.room_type, "m.space", `the guild is a space: ${JSON.stringify(hierarchy)}`);
    assert.equal(rooms[spaceId]?.name, "Interop Guild");
    const childIds = rooms[spaceId].children_state.map((c) => c.state_key).sort();
    assert.deepEqual(childIds, [category.id, generalId].sort(), "the space lists the category and #general");
    assert.equal(rooms[generalId]?.name, "general", "#general is in the hierarchy");
    assert.equal(rooms[generalId]?.join_rule, "restricted", "#general is joined through the space");

    // Restricted join: no invite, just membership in the space.
    await bob.joinRoom(generalId);
    await waitFor(() => bob.getRoom(generalId)?.getMyMembership() === "join", "bob in #general");
    const { event_id: hello } = await bob.sendMessage(generalId, { msgtype: "m.text", body: "hello guild" });
    assert.ok(hello, "a message in #general");

    // A fine rule (no power level can say it): no attachments for @everyone.
    await overwrite(generalId, "role:everyone", 0, ATTACH_FILES);
    await forbidden(
      bob.sendMessage(generalId, { msgtype: "m.image", body: "cat.png", url: "mxc://example.org/cat" }),
      "Missing permission: ATTACH_FILES",
    );
    const { event_id: still } = await bob.sendMessage(generalId, { msgtype: "m.text", body: "text still works" });
    assert.ok(still, "text is still allowed");

    // SEND_MESSAGES denied to @everyone: the SDK's send fails with M_FORBIDDEN.
    await overwrite(generalId, "role:everyone", 0, SEND_MESSAGES);
    await forbidden(bob.sendMessage(generalId, { msgtype: "m.text", body: "denied" }));
    owner.stopClient();
  });
});
