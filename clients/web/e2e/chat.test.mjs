// The web client in a real browser against a real paracord: two people register through
// the UI (one of them on the invite link), one creates a guild and an invite, the other
// joins through the link, they chat (Markdown included), a role colours a name, a
// permission overwrite disables one's composer with a reason, a reload restores the session
// and scrolling up pages back through history. Also: / is served with its CSP and the APIs
// are not shadowed.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { diagnosed, launchBrowser, startServer, waitFor } from "./harness.mjs";

let server;
let browser;
const problems = [];

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

/** A page of its own browser context that records console errors and CSP violations. */
async function person(name) {
  const context = await browser.newContext({ baseURL: server.baseUrl });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content Security Policy|Refused to/i.test(msg.text())) {
      problems.push(`${name}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`${name}: uncaught ${e.message}`));
  return page;
}

async function register(page, username) {
  await page.goto("/register");
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password", { exact: true }).fill("a long enough password");
  await page.getByLabel("Confirm password").fill("a long enough password");
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByText("Welcome to Paracord").waitFor();
}

async function send(page, text) {
  const box = page.getByRole("textbox", { name: /^Message #/ });
  await box.fill(text);
  await box.press("Enter");
}

function message(page, text) {
  return page.locator(".message", { hasText: text });
}

test("/ is the app with its CSP, and unknown API paths stay M_UNRECOGNIZED", async () => {
  for (const p of ["/", "/login", "/invite/abc"]) {
    const res = await fetch(`${server.baseUrl}${p}`, { headers: { "accept-encoding": "gzip" } });
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get("content-type"), /^text\/html/);
    const csp = res.headers.get("content-security-policy") ?? "";
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/);
    assert.match(csp, /object-src 'none'/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    assert.equal(res.headers.get("cache-control"), "no-cache");
    assert.match(await res.text(), /<div id="root">/);
  }
  const index = await (await fetch(`${server.baseUrl}/`)).text();
  const script = /src="(\/assets\/[^"]+\.js)"/.exec(index)?.[1];
  assert.ok(script, "index.html loads a hashed script");
  const js = await fetch(`${server.baseUrl}${script}`);
  assert.equal(js.status, 200);
  assert.equal(js.headers.get("cache-control"), "public, max-age=31536000, immutable");
  assert.match(js.headers.get("content-type"), /javascript/);

  for (const p of ["/_matrix/nonexistent", "/_paracord/v1/nonexistent"]) {
    const res = await fetch(`${server.baseUrl}${p}`);
    assert.equal(res.status, 404, p);
    assert.equal((await res.json()).errcode, "M_UNRECOGNIZED", p);
  }
});

test("two people meet in a guild through an invite link and chat", async () => {
  const suffix = Math.random().toString(36).slice(2, 8);
  const alice = await person("alice");
  const bob = await person("bob");
  await diagnosed(server, { alice, bob }, async () => {
    await register(alice, `alice${suffix}`);

    // A wrong password is refused with the server's words.
    const stranger = await person("stranger");
    await stranger.goto("/login");
    await stranger.getByLabel("Username").fill(`alice${suffix}`);
    await stranger.getByLabel("Password", { exact: true }).fill("not the password");
    await stranger.getByRole("button", { name: "Log in" }).click();
    await stranger.getByRole("alert").waitFor();
    assert.match(await stranger.getByRole("alert").innerText(), /password|forbidden|invalid/i);

    // A taken name too.
    await stranger.goto("/register");
    await stranger.getByLabel("Username").fill(`alice${suffix}`);
    await stranger.getByLabel("Password", { exact: true }).fill("a long enough password");
    await stranger.getByLabel("Confirm password").fill("a long enough password");
    await stranger.getByRole("button", { name: "Register" }).click();
    await stranger.getByRole("alert").waitFor();
    assert.match(await stranger.getByRole("alert").innerText(), /already taken/i);

    // Alice creates a guild; she lands in its #general.
    await alice.getByRole("button", { name: "Create a guild" }).click();
    await alice.getByLabel("Guild name").fill("Rustaceans");
    await alice.getByRole("button", { name: "Create", exact: true }).click();
    await alice.getByRole("heading", { name: "general", exact: true }).waitFor();
    await alice.getByRole("button", { name: /^Rustaceans/ }).first().waitFor();

    // ... and makes an invite link from the guild menu.
    await alice.locator(".guild-menu-button").click();
    await alice.getByRole("menuitem", { name: "Invite people" }).click();
    const linkBox = alice.getByLabel("Invite link");
    await waitFor(async () => (await linkBox.inputValue()).includes("/invite/"), "an invite link");
    const link = await linkBox.inputValue();
    assert.ok(link.startsWith(`${server.baseUrl}/invite/`), link);
    await alice.getByRole("button", { name: "Done" }).click();

    // Bob opens it before he has an account: he registers right there, then sees a preview
    // with the guild's name and member count, and joins.
    await bob.goto(link);
    await bob.getByText("Sign in to accept your invite.").waitFor();
    await bob.getByRole("button", { name: "Register" }).click();
    await bob.getByLabel("Username").fill(`bob${suffix}`);
    await bob.getByLabel("Password", { exact: true }).fill("a long enough password");
    await bob.getByLabel("Confirm password").fill("a long enough password");
    await bob.getByRole("button", { name: "Register" }).click();
    await bob.getByRole("heading", { name: "Rustaceans" }).waitFor();
    assert.match(await bob.getByTestId("member-count").innerText(), /^1 member\b/);
    await bob.getByRole("button", { name: "Accept invite" }).click();
    await bob.getByRole("heading", { name: "general", exact: true }).waitFor();

    // Messages both ways.
    await send(alice, "hello from alice");
    await message(bob, "hello from alice").waitFor();
    await send(bob, "hi alice, bob here");
    await message(alice, "hi alice, bob here").waitFor();
    // Both members are listed on both sides.
    await alice.locator(".members").getByText(`bob${suffix}`).waitFor();
    await bob.locator(".members").getByText(`alice${suffix}`).waitFor();

    // Markdown: bold arrives as bold, and markup typed as text stays text.
    await send(alice, "this is **very bold** and <b>not html</b>");
    const md = message(bob, "very bold");
    await md.waitFor();
    assert.equal(await md.locator("strong").innerText(), "very bold");
    assert.equal(await md.locator("b").count(), 0);
    assert.match(await md.innerText(), /<b>not html<\/b>/);

    // Shift+Enter is a new line, not a send.
    const box = alice.getByRole("textbox", { name: /^Message #/ });
    await box.fill("first line");
    await box.press("Shift+Enter");
    await box.pressSequentially("second line");
    assert.equal(await box.inputValue(), "first line\nsecond line");
    await box.press("Enter");
    await message(bob, "second line").waitFor();

    // Away from the guild, a new message shows as unread on the rail; opening it reads it.
    await alice.getByRole("button", { name: "Home" }).click();
    await alice.getByText("Welcome to Paracord").waitFor();
    assert.equal(await alice.getByRole("button", { name: "Rustaceans (unread)" }).count(), 0);
    await send(bob, "are you there?");
    const unread = alice.getByRole("button", { name: "Rustaceans (unread)" });
    await unread.waitFor();
    await unread.click();
    await message(alice, "are you there?").waitFor();
    await alice.locator(".rail").getByRole("button", { name: "Rustaceans", exact: true }).waitFor();

    const session = JSON.parse(await alice.evaluate(() => localStorage.getItem("paracord.session")));
    const [, , guildId, channelId] = new URL(bob.url()).pathname.split("/").map(decodeURIComponent);
    const asAlice = async (method, path, body) => {
      const r = await fetch(`${server.baseUrl}${path}`, {
        method,
        headers: { authorization: `Bearer ${session.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      assert.equal(r.status, 200, `${method} ${path}: ${await r.clone().text()}`);
      return r.json();
    };

    // What went over the wire: the Markdown source as body, the escaped HTML as formatted_body.
    const recent = await asAlice(
      "GET",
      `/_matrix/client/v3/rooms/${encodeURIComponent(channelId)}/messages?dir=b&limit=20`,
    );
    const bold = recent.chunk.find((e) => e.content?.body?.includes("very bold"));
    assert.deepEqual(bold.content, {
      msgtype: "m.text",
      body: "this is **very bold** and <b>not html</b>",
      format: "org.matrix.custom.html",
      formatted_body: "this is <strong>very bold</strong> and &lt;b&gt;not html&lt;/b&gt;",
    });
    const plain = recent.chunk.find((e) => e.content?.body === "hello from alice");
    assert.deepEqual(plain.content, { msgtype: "m.text", body: "hello from alice" });

    // A hoisted, coloured role given to Bob: the member list groups him under it, and his
    // name takes its colour, in Alice's view, as soon as the state arrives.
    const role = await asAlice("POST", `/_paracord/v1/guilds/${encodeURIComponent(guildId)}/roles`, {
      name: "Crabs",
      color: 0xe74c3c,
      hoist: true,
    });
    const bobId = JSON.parse(await bob.evaluate(() => localStorage.getItem("paracord.session"))).userId;
    await asAlice(
      "PUT",
      `/_paracord/v1/guilds/${encodeURIComponent(guildId)}/members/${encodeURIComponent(bobId)}/roles/${role.id}`,
    );
    await alice.locator(".members h2", { hasText: "Crabs — 1" }).waitFor();
    const bobName = alice.locator(".group .author", { hasText: `bob${suffix}` }).first();
    await waitFor(
      async () => (await bobName.evaluate((el) => getComputedStyle(el).color)) === "rgb(231, 76, 60)",
      "Bob's name in the role's colour",
    );

    // A new category with a channel: both sidebars show it; a message there marks it unread
    // for Bob, who is reading #general; a collapsed category hides it.
    const enc = encodeURIComponent;
    const category = await asAlice("POST", `/_paracord/v1/guilds/${enc(guildId)}/channels`, {
      name: "Chill",
      kind: "category",
    });
    const random = await asAlice("POST", `/_paracord/v1/guilds/${enc(guildId)}/channels`, {
      name: "random",
      kind: "text",
      parent: category.id,
      topic: "Anything goes.",
    });
    const bobRandom = bob.locator(".channels").getByRole("button", { name: /^random/ });
    await bobRandom.waitFor();
    await alice.locator(".channels").getByRole("button", { name: /^random/ }).click();
    await alice.getByText("Anything goes.").waitFor();
    await send(alice, "over here");
    await bob.locator(".channels").getByRole("button", { name: "random (unread)" }).waitFor();
    await bob.getByRole("button", { name: "Chill" }).click();
    await bobRandom.waitFor({ state: "detached" });
    await bob.getByRole("button", { name: "Chill" }).click();
    await bobRandom.click();
    await message(bob, "over here").waitFor();
    await bob.locator(".channels").getByRole("button", { name: "random", exact: true }).waitFor();
    assert.equal(decodeURIComponent(new URL(bob.url()).pathname.split("/")[3]), random.id);
    await bob.locator(".channels").getByRole("button", { name: /^general/ }).click();
    await alice.locator(".channels").getByRole("button", { name: /^general/ }).click();
    await bob.getByRole("heading", { name: "general", exact: true }).waitFor();
    // Nothing of #random is left in #general's view.
    for (const page of [alice, bob]) {
      assert.equal(await page.locator(".messages").count(), 1);
      assert.equal(await page.getByText("Welcome to #random!").count(), 0);
      assert.equal(await message(page, "over here").count(), 0);
    }

    // Alice takes SEND_MESSAGES from @everyone in #general (through /_paracord/v1): Bob's
    // composer is disabled, with the reason.
    const res = await fetch(
      `${server.baseUrl}/_paracord/v1/channels/${encodeURIComponent(channelId)}/permissions/role%3Aeveryone`,
      {
        method: "PUT",
        headers: { authorization: `Bearer ${session.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify({ allow: "0", deny: "2048" }),
      },
    );
    assert.equal(res.status, 200, await res.text());
    const blocked = bob.getByTestId("composer-blocked");
    await blocked.waitFor();
    assert.match(await blocked.innerText(), /do not have permission to send messages/);
    assert.equal(await bob.getByRole("textbox", { name: /^Message #/ }).isDisabled(), true);
    // The owner still can.
    assert.equal(await alice.getByRole("textbox", { name: /^Message #/ }).isDisabled(), false);

    // WEB_E2E_SCREENSHOTS=<dir> keeps pictures of the main screens.
    const shots = process.env.WEB_E2E_SCREENSHOTS;
    if (shots) {
      await alice.setViewportSize({ width: 1280, height: 720 });
      await alice.screenshot({ path: `${shots}/web-guild-dark.png` });
      await bob.setViewportSize({ width: 1280, height: 720 });
      await bob.screenshot({ path: `${shots}/web-composer-blocked.png` });
      await alice.getByRole("button", { name: /Switch between dark and light/ }).click();
      await alice.screenshot({ path: `${shots}/web-guild-light.png` });
      await alice.getByRole("button", { name: /Switch between dark and light/ }).click();
    }

    // Enough history that the first sync (50 events) does not hold it all.
    for (let i = 1; i <= 80; i++) {
      await asAlice(
        "PUT",
        `/_matrix/client/v3/rooms/${encodeURIComponent(channelId)}/send/m.room.message/h${i}`,
        { msgtype: "m.text", body: `history ${i}` },
      );
    }
    await message(bob, "history 80").waitFor();

    // Bob reloads: still signed in, back in #general, still unable to send.
    await bob.reload();
    await bob.getByRole("heading", { name: "general", exact: true }).waitFor();
    await message(bob, "history 80").waitFor();
    await bob.getByTestId("composer-blocked").waitFor();
    assert.equal(await message(bob, "hello from alice").count(), 0, "the first sync holds only the latest");

    // Scrolling up pages back to the channel's start.
    await waitFor(
      async () => {
        await bob.locator(".messages").evaluate((el) => {
          el.scrollTop = 0;
        });
        return (await bob.getByText("This is the start of the #general channel.").count()) > 0;
      },
      "scrolling back to the start of #general",
      { timeoutMs: 30_000, intervalMs: 300 },
    );
    await message(bob, "hello from alice").waitFor();
    await message(bob, /^history 1$/).waitFor();

    // Dark by default; the light theme is a toggle that survives a reload.
    const theme = () => bob.evaluate(() => document.documentElement.dataset.theme);
    assert.equal(await theme(), "dark");
    await bob.getByRole("button", { name: /Switch between dark and light/ }).click();
    assert.equal(await theme(), "light");
    await bob.reload();
    await bob.getByRole("heading", { name: "general", exact: true }).waitFor();
    assert.equal(await theme(), "light");

    // A guild link of a guild Bob is not in leads home, saying so.
    await bob.goto("/channels/!nosuchguild:localhost");
    await bob.getByRole("alert").filter({ hasText: "not a member" }).waitFor();
    await waitFor(() => new URL(bob.url()).pathname === "/channels/@me", "Bob sent home");

    // Alice logs out: back at the login form, and her token is dead on the server.
    await alice.getByRole("button", { name: "Log out" }).click();
    await alice.getByRole("button", { name: "Log in" }).waitFor();
    assert.equal(await alice.evaluate(() => localStorage.getItem("paracord.session")), null);
    const whoami = await fetch(`${server.baseUrl}/_matrix/client/v3/account/whoami`, {
      headers: { authorization: `Bearer ${session.accessToken}` },
    });
    assert.equal(whoami.status, 401);

    assert.deepEqual(problems, [], "no CSP violations or uncaught errors in the pages");
  });
});
