// The message features in a real browser against a real paracord: replies, edits (Up arrow),
// reactions through the emoji picker, deletes, threads in a side panel, typing indicators,
// read markers, @member and #channel mentions with their badges, attachments (an image with
// its lightbox, files by button, paste and drop; a refused upload shown with the server's
// words), actions hidden without their permission, and a private channel that a member
// without the role never sees. Two people, Alice (the guild's owner) and Bob.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { deflateSync } from "node:zlib";

import { diagnosed, launchBrowser, startServer, waitFor } from "./harness.mjs";

let server;
let browser;
const problems = [];
const enc = encodeURIComponent;

before(async () => {
  // A small upload limit, so that a refused upload can be tested.
  server = await startServer({ config: { PARACORD_MAX_UPLOAD_BYTES: String(256 * 1024) } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

async function api(token, method, path, body) {
  const r = await fetch(`${server.baseUrl}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `${method} ${path}: ${text}`);
  return text ? JSON.parse(text) : {};
}

/** An account made through the API (the UI's registration has its own test). */
async function account(username) {
  const body = { username, password: "a long enough password", auth: { type: "m.login.dummy" } };
  const r = await api(null, "POST", "/_matrix/client/v3/register", body);
  return { userId: r.user_id, accessToken: r.access_token, deviceId: r.device_id, name: username };
}

/** A signed-in page of its own browser context, recording CSP violations and page errors. */
async function open(who, path) {
  const context = await browser.newContext({ baseURL: server.baseUrl, viewport: { width: 1400, height: 800 } });
  const { userId, accessToken, deviceId } = who;
  await context.addInitScript((s) => {
    if (!localStorage.getItem("paracord.session")) localStorage.setItem("paracord.session", s);
  }, JSON.stringify({ userId, accessToken, deviceId }));
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content Security Policy|Refused to/i.test(msg.text())) {
      problems.push(`${who.name}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`${who.name}: uncaught ${e.message}`));
  await page.goto(path);
  return page;
}

const composer = (page) => page.getByRole("textbox", { name: /^Message #/ });

async function send(page, text) {
  await composer(page).fill(text);
  await composer(page).press("Enter");
}

/** A message of the channel's list (not a thread's) with this text, not a reply's quote of it. */
function msg(page, text) {
  return page.locator(".pane .message", { hasText: text, hasNot: page.locator(".reply-quote") });
}

/** A w×h PNG, solid colour, written by hand (no image library in the test). */
function png(w, h, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: w }, () => [r, g, b]).flat())]);
  const raw = Buffer.concat(Array.from({ length: h }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

test("replies, edits, reactions, deletes, threads, typing, mentions, attachments, private channels", async () => {
  const suffix = Math.random().toString(36).slice(2, 8);
  const alice = await account(`alice${suffix}`);
  const bob = await account(`bob${suffix}`);
  const guild = await api(alice.accessToken, "POST", "/_paracord/v1/guilds", { name: "Crustaceans" });
  const general = guild.system_channel;
  const random = await api(alice.accessToken, "POST", `/_paracord/v1/guilds/${enc(guild.id)}/channels`, {
    name: "random",
    kind: "text",
  });
  const invite = await api(alice.accessToken, "POST", `/_paracord/v1/channels/${enc(general)}/invites`, {});
  await api(bob.accessToken, "POST", `/_paracord/v1/invites/${enc(invite.code)}`, {});
  const messages = async (who, room) =>
    (await api(who.accessToken, "GET", `/_matrix/client/v3/rooms/${enc(room)}/messages?dir=b&limit=50`)).chunk;

  const a = await open(alice, `/channels/${enc(guild.id)}/${enc(general)}`);
  const b = await open(bob, `/channels/${enc(guild.id)}/${enc(general)}`);
  await diagnosed(server, { alice: a, bob: b }, async () => {
    await a.getByRole("heading", { name: "general", exact: true }).waitFor();
    await b.getByRole("heading", { name: "general", exact: true }).waitFor();
    await waitFor(async () => !(await composer(b).isDisabled()), "Bob's composer ready");

    // --- Replies: Bob replies to Alice; Alice sees the quote above it.
    await send(a, "the original message");
    const original = msg(b, "the original message");
    await original.hover();
    await original.getByRole("button", { name: "Reply" }).click();
    await b.getByText(`Replying to ${alice.name}`).waitFor();
    // Esc cancels, Reply again restores.
    await composer(b).press("Escape");
    await b.getByText(`Replying to ${alice.name}`).waitFor({ state: "detached" });
    await original.hover();
    await original.getByRole("button", { name: "Reply" }).click();
    await send(b, "a reply from bob");
    const reply = a.locator(".pane .message", { hasText: "a reply from bob" });
    await reply.waitFor();
    const originalId = await msg(a, "the original message").getAttribute("data-event-id");
    assert.match(await reply.locator(".reply-quote").innerText(), new RegExp(`@${alice.name} the original message`));
    assert.equal(await b.getByText(`Replying to ${alice.name}`).count(), 0, "sending ends the reply");
    let wire = (await messages(alice, general)).find((e) => e.content?.body === "a reply from bob");
    assert.deepEqual(wire.content["m.relates_to"], { "m.in_reply_to": { event_id: originalId } });
    assert.deepEqual(wire.content["m.mentions"], { user_ids: [alice.userId] });
    // Alice was replied to: the reply is highlighted for her.
    assert.match(await reply.getAttribute("class"), /mentioned/);
    // Clicking the quote jumps to the original, which flashes.
    await reply.locator(".reply-quote").click();
    await a.locator(`.pane .message.flash[data-event-id="${originalId}"]`).waitFor();

    // --- Edits: Up in Alice's empty composer edits her last message; Enter saves.
    await composer(a).click();
    await composer(a).press("ArrowUp");
    const editor = a.getByRole("textbox", { name: "Edit message" });
    assert.equal(await editor.inputValue(), "the original message");
    // Esc cancels without sending.
    await editor.press("Escape");
    await editor.waitFor({ state: "detached" });
    await composer(a).press("ArrowUp");
    await editor.fill("the **edited** message");
    await editor.press("Enter");
    const edited = msg(b, "edited message");
    await edited.waitFor();
    await edited.getByText("(edited)").waitFor();
    assert.equal(await edited.locator("strong").innerText(), "edited");
    assert.equal(await msg(b, "the original message").count(), 0);
    // Bob's reply now quotes the latest text.
    await b.locator(".pane .reply-quote", { hasText: "the edited message" }).waitFor();
    wire = (await messages(alice, general)).find((e) => e.content?.["m.relates_to"]?.rel_type === "m.replace");
    assert.equal(wire.content["m.relates_to"].event_id, originalId);
    assert.equal(wire.content["m.new_content"].body, "the **edited** message");
    assert.equal(wire.content.body, "* the **edited** message");
    // Bob can neither edit nor delete Alice's message (no MANAGE_MESSAGES).
    await edited.hover();
    await edited.getByRole("button", { name: "Reply" }).waitFor();
    assert.equal(await edited.getByRole("button", { name: "Edit" }).count(), 0);
    assert.equal(await edited.getByRole("button", { name: "Delete" }).count(), 0);

    // --- Reactions: Alice picks 👍; Bob sees 1 and joins in; both see 2.
    const aEdited = msg(a, "edited message");
    await aEdited.hover();
    await aEdited.getByRole("button", { name: "Add reaction" }).click();
    await a.getByRole("dialog", { name: "Emoji picker" }).waitFor();
    await a.getByLabel("Search emoji").fill("thumbsup");
    await a.getByRole("dialog", { name: "Emoji picker" }).getByRole("button", { name: "thumbsup" }).click();
    const bChip = edited.getByRole("button", { name: "👍 1" });
    await bChip.waitFor();
    assert.equal(await bChip.getAttribute("aria-pressed"), "false");
    await bChip.click();
    const aChip = aEdited.getByRole("button", { name: "👍 2" });
    await aChip.waitFor();
    assert.equal(await aChip.getAttribute("aria-pressed"), "true");
    assert.equal(await aChip.getAttribute("title"), `👍 by ${alice.name} and ${bob.name}`);
    await edited.getByRole("button", { name: "👍 2" }).waitFor();
    // Bob takes his back; Alice sees 1 again.
    await edited.getByRole("button", { name: "👍 2" }).click();
    await aEdited.getByRole("button", { name: "👍 1" }).waitFor();
    await edited.getByRole("button", { name: "👍 1" }).click();
    await aEdited.getByRole("button", { name: "👍 2" }).waitFor();

    // --- Deletes: Alice deletes one of hers, with a confirmation; Bob sees it gone.
    await send(a, "a doomed message");
    const doomed = msg(b, "a doomed message");
    await doomed.waitFor();
    await msg(a, "a doomed message").hover();
    await msg(a, "a doomed message").getByRole("button", { name: "Delete" }).click();
    await a.getByRole("dialog", { name: "Delete message" }).getByRole("button", { name: "Delete" }).click();
    await doomed.waitFor({ state: "detached" });
    await msg(a, "a doomed message").waitFor({ state: "detached" });

    // --- Threads: Bob starts one on Alice's message and replies twice; Alice sees "2 replies".
    await edited.hover();
    await edited.getByRole("button", { name: "Create thread" }).click();
    const bThread = b.getByRole("complementary", { name: "Thread" });
    await bThread.waitFor();
    const threadBox = bThread.getByRole("textbox", { name: "Reply in thread" });
    await threadBox.fill("first thread reply");
    await threadBox.press("Enter");
    await bThread.locator(".message", { hasText: "first thread reply" }).waitFor();
    await threadBox.fill("second thread reply");
    await threadBox.press("Enter");
    await bThread.getByText("2 replies").waitFor();
    const summary = aEdited.getByRole("button", { name: "2 replies" });
    await summary.waitFor();
    // Thread replies stay out of the channel's list.
    assert.equal(await a.locator(".pane .message", { hasText: "thread reply" }).count(), 0);
    // Opening a thread fetches its replies with /relations (older ones may not be loaded).
    const relations = a.waitForResponse((r) => r.url().includes(`/relations/${enc(originalId)}/m.thread`));
    await summary.click();
    assert.equal((await relations).status(), 200);
    const aThread = a.getByRole("complementary", { name: "Thread" });
    await aThread.locator(".message", { hasText: "first thread reply" }).waitFor();
    await aThread.locator(".message", { hasText: "second thread reply" }).waitFor();
    await aThread.locator(".message", { hasText: "edited message" }).waitFor();
    wire = (await messages(alice, general)).find((e) => e.content?.body === "second thread reply");
    assert.equal(wire.content["m.relates_to"].rel_type, "m.thread");
    assert.equal(wire.content["m.relates_to"].event_id, originalId);
    // The bundled aggregation agrees.
    const root = (await messages(alice, general)).find((e) => e.event_id === originalId);
    assert.equal(root.unsigned?.["m.relations"]?.["m.thread"]?.count, 2);
    await a.getByRole("button", { name: "Close thread" }).click();
    await aThread.waitFor({ state: "detached" });
    await b.getByRole("button", { name: "Close thread" }).click();

    // --- Typing: Alice types; Bob sees it; sending ends it.
    await composer(a).fill("");
    await composer(a).pressSequentially("still typ");
    const typing = b.getByText(`${alice.name} is typing…`);
    await typing.waitFor();
    await composer(a).press("Enter");
    await typing.waitFor({ state: "detached" });

    // --- Read markers: Alice, looking at #general, has read Bob's last message.
    await send(b, "read me");
    await msg(a, "read me").waitFor();
    const readId = await msg(b, "read me").getAttribute("data-event-id");
    await waitFor(async () => {
      const r = await fetch(
        `${server.baseUrl}/_matrix/client/v3/user/${enc(alice.userId)}/rooms/${enc(general)}/account_data/m.fully_read`,
        { headers: { authorization: `Bearer ${alice.accessToken}` } },
      );
      return r.ok && (await r.json()).event_id === readId;
    }, "Alice's m.fully_read at Bob's message");

    // --- Mentions: Alice moves to #random; Bob mentions her with @-autocomplete and links
    // #random with #-autocomplete; Alice gets a mention badge on #general and on the guild.
    await a.locator(".channels").getByRole("button", { name: /^random/ }).click();
    await a.getByRole("heading", { name: "random", exact: true }).waitFor();
    await composer(b).fill("");
    await composer(b).pressSequentially(`hey @${alice.name.slice(0, 5)}`);
    await b.getByRole("listbox", { name: "Members" }).getByRole("option", { name: new RegExp(alice.name) }).waitFor();
    await composer(b).press("Enter");
    await composer(b).pressSequentially("look at #ran");
    await b.getByRole("listbox", { name: "Channels" }).getByRole("option", { name: "#random" }).waitFor();
    await composer(b).press("Tab");
    assert.equal(await composer(b).inputValue(), `hey @${alice.name} look at #random `);
    await composer(b).press("Enter");
    const badge = a.locator(".channels").getByRole("button", { name: /^general/ }).getByTestId("mention-badge");
    await badge.waitFor();
    assert.equal(await badge.innerText(), "1");
    assert.equal(await a.locator(".rail").getByTestId("mention-badge").innerText(), "1");
    wire = (await messages(bob, general)).find((e) => e.content?.body?.startsWith("hey @"));
    assert.deepEqual(wire.content["m.mentions"], { user_ids: [alice.userId] });
    assert.equal(
      wire.content.formatted_body,
      `hey <a href="https://matrix.to/#/${alice.userId}">@${alice.name}</a> look at <a href="https://matrix.to/#/${random.id}">#random</a>`,
    );
    // Opening #general reads it: the badges go, the mention is highlighted as hers.
    await a.locator(".channels").getByRole("button", { name: /^general/ }).click();
    const mention = msg(a, "look at");
    await mention.waitFor();
    assert.match(await mention.getAttribute("class"), /mentioned/);
    assert.equal(await mention.locator(".mention.me").innerText(), `@${alice.name}`);
    await a.locator(".rail").getByTestId("mention-badge").waitFor({ state: "detached" });
    // The #random pill opens #random.
    await mention.getByRole("button", { name: "#random" }).click();
    await a.getByRole("heading", { name: "random", exact: true }).waitFor();
    await a.locator(".channels").getByRole("button", { name: /^general/ }).click();
    await a.getByRole("heading", { name: "general", exact: true }).waitFor();

    // --- Attachments: Alice uploads a PNG; Bob sees it inline and opens the lightbox.
    const image = png(64, 48, [230, 60, 40]);
    await a.getByTestId("file-input").setInputFiles({ name: "red.png", mimeType: "image/png", buffer: image });
    const img = b.getByRole("img", { name: "red.png" });
    await img.waitFor();
    await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth > 0 && el.src.startsWith("blob:")), "the thumbnail loaded");
    await b.getByRole("button", { name: "Open image red.png" }).click();
    const lightbox = b.getByRole("dialog", { name: "Image viewer" });
    const full = lightbox.getByRole("img", { name: "red.png" });
    await full.waitFor();
    await waitFor(() => full.evaluate((el) => el.complete && el.naturalWidth === 64 && el.naturalHeight === 48), "the full image");
    await lightbox.getByRole("button", { name: "Close" }).click();
    await lightbox.waitFor({ state: "detached" });
    await b.getByRole("button", { name: "Open image red.png" }).click();
    await lightbox.waitFor();
    await b.keyboard.press("Escape");
    await lightbox.waitFor({ state: "detached" });
    wire = (await messages(bob, general)).find((e) => e.content?.msgtype === "m.image");
    assert.equal(wire.content.body, "red.png");
    assert.match(wire.content.url, /^mxc:\/\//);
    assert.deepEqual(wire.content.info, { mimetype: "image/png", size: image.length, w: 64, h: 48 });

    // A file by the button, one pasted and one dropped: file cards with name, size, download.
    await a.getByTestId("file-input").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("hello notes\n") });
    const card = b.locator(".file-card", { hasText: "notes.txt" });
    await card.waitFor();
    assert.match(await card.innerText(), /12 B/);
    await card.getByRole("button", { name: "Download notes.txt" }).waitFor();
    await composer(a).evaluate((el) => {
      const dt = new DataTransfer();
      dt.items.add(new File(["pasted!"], "pasted.txt", { type: "text/plain" }));
      el.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
    });
    await b.locator(".file-card", { hasText: "pasted.txt" }).waitFor();
    await a.locator("main.pane").evaluate((el) => {
      const dt = new DataTransfer();
      dt.items.add(new File(["dropped!"], "dropped.txt", { type: "text/plain" }));
      el.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
      el.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    });
    await b.locator(".file-card", { hasText: "dropped.txt" }).waitFor();

    // Upload progress, on a slowed-down connection.
    const cdp = await a.context().newCDPSession(a);
    await cdp.send("Network.emulateNetworkConditions", {
      offline: false,
      latency: 0,
      downloadThroughput: -1,
      uploadThroughput: 40 * 1024,
    });
    await a.getByTestId("file-input").setInputFiles({
      name: "slow.bin",
      mimeType: "application/octet-stream",
      buffer: Buffer.alloc(160 * 1024, 1),
    });
    const progress = a.getByRole("status").filter({ hasText: "Uploading slow.bin…" });
    await progress.waitFor();
    await waitFor(async () => /Uploading slow\.bin… ([1-9]\d?)%/.test(await progress.innerText()), "a progress between 1 and 99 %", {
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await b.locator(".file-card", { hasText: "slow.bin" }).waitFor({ timeout: 30_000 });
    await progress.waitFor({ state: "detached" });

    // A refusal is shown: the server's upload limit turns a big file away.
    await a.getByTestId("file-input").setInputFiles({
      name: "big.bin",
      mimeType: "application/octet-stream",
      buffer: Buffer.alloc(300 * 1024, 7),
    });
    const refusal = a.getByRole("alert").filter({ hasText: "Could not upload big.bin" });
    await refusal.waitFor();
    assert.match(await refusal.innerText(), /^Could not upload big\.bin: uploads are limited to 262144 bytes/);

    // --- Private channels: #secret denies VIEW_CHANNEL to @everyone and allows a role Alice
    // has. Alice sees it; Bob never does (he sees #after, made after it).
    const role = await api(alice.accessToken, "POST", `/_paracord/v1/guilds/${enc(guild.id)}/roles`, { name: "Keepers" });
    await api(alice.accessToken, "PUT", `/_paracord/v1/guilds/${enc(guild.id)}/members/${enc(alice.userId)}/roles/${role.id}`);
    await api(alice.accessToken, "POST", `/_paracord/v1/guilds/${enc(guild.id)}/channels`, {
      name: "secret",
      kind: "text",
      permission_overwrites: [
        { id: "role:everyone", allow: "0", deny: "1024" },
        { id: `role:${role.id}`, allow: "1024", deny: "0" },
      ],
    });
    await api(alice.accessToken, "POST", `/_paracord/v1/guilds/${enc(guild.id)}/channels`, { name: "after", kind: "text" });
    await a.locator(".channels").getByRole("button", { name: /^secret/ }).waitFor();
    await b.locator(".channels").getByRole("button", { name: /^after/ }).waitFor();
    assert.equal(await b.locator(".channels").getByRole("button", { name: /^secret/ }).count(), 0);

    // --- Actions the user lacks are not offered: in #random Bob can react and attach until
    // Alice denies ADD_REACTIONS and ATTACH_FILES to @everyone there.
    await api(alice.accessToken, "PUT", `/_matrix/client/v3/rooms/${enc(random.id)}/send/m.room.message/perm1`, {
      msgtype: "m.text",
      body: "react to this",
    });
    await b.locator(".channels").getByRole("button", { name: /^random/ }).click();
    const target = msg(b, "react to this");
    await target.waitFor();
    await target.hover();
    await target.getByRole("button", { name: "Add reaction" }).waitFor();
    await b.getByRole("button", { name: "Upload a file" }).waitFor();
    await api(alice.accessToken, "PUT", `/_paracord/v1/channels/${enc(random.id)}/permissions/role%3Aeveryone`, {
      allow: "0",
      deny: String(64 + 32768),
    });
    await b.getByRole("button", { name: "Upload a file" }).waitFor({ state: "detached" });
    await target.hover();
    await target.getByRole("button", { name: "Reply" }).waitFor();
    assert.equal(await target.getByRole("button", { name: "Add reaction" }).count(), 0);
    await b.locator(".channels").getByRole("button", { name: /^general/ }).click();
    await b.getByRole("button", { name: "Upload a file" }).waitFor();

    // Screenshots of these screens, when asked for.
    const shots = process.env.WEB_E2E_SCREENSHOTS;
    if (shots) {
      await edited.scrollIntoViewIfNeeded();
      await edited.getByRole("button", { name: "2 replies" }).click();
      await b.getByRole("complementary", { name: "Thread" }).locator(".message", { hasText: "second thread reply" }).waitFor();
      await b.screenshot({ path: `${shots}/web-messages-thread.png` });
    }

    // A reply to a message far back: after a reload, the quote's click loads older pages
    // until the original is there, then jumps to it.
    for (let i = 1; i <= 60; i++) {
      await api(alice.accessToken, "PUT", `/_matrix/client/v3/rooms/${enc(general)}/send/m.room.message/fill${i}`, {
        msgtype: "m.text",
        body: `filler ${i}`,
      });
    }
    await api(bob.accessToken, "PUT", `/_matrix/client/v3/rooms/${enc(general)}/send/m.room.message/late-reply`, {
      msgtype: "m.text",
      body: "replying to something old",
      "m.relates_to": { "m.in_reply_to": { event_id: originalId } },
    });
    await a.reload();
    const late = a.locator(".pane .message", { hasText: "replying to something old" });
    await late.waitFor();
    assert.equal(await a.locator(`.pane .message[data-event-id="${originalId}"]`).count(), 0, "the original is not loaded yet");
    await late.locator(".reply-quote").click();
    await a.locator(`.pane .message.flash[data-event-id="${originalId}"]`).waitFor();

    assert.deepEqual(problems, [], "no CSP violations or uncaught errors in the pages");
  });
});
