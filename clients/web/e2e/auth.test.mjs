// Signing up where the server asks for a registration token (here: a server with
// registration closed, whose first admin registers with the one-time token it prints), and
// the server's refusals shown in its own words.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { launchBrowser, startServer, waitFor } from "./harness.mjs";

let server;
let browser;

before(async () => {
  server = await startServer({ registration: false });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  server?.stop();
});

test("registration asks for the token the server's flows require, then signs in", async () => {
  const token = await waitFor(
    () => /one-time registration token[^:]*: (\S+)/.exec(server.log())?.[1],
    "the one-time admin token on the console",
  );
  const page = await (await browser.newContext({ baseURL: server.baseUrl })).newPage();
  page.setDefaultTimeout(20_000);
  await page.goto("/register");
  await page.getByLabel("Username").fill("operator");
  await page.getByLabel("Password", { exact: true }).fill("a long enough password");
  await page.getByLabel("Confirm password").fill("a long enough password");
  await page.getByRole("button", { name: "Register" }).click();
  // The only flow is m.login.registration_token: the form says so and asks for it.
  await page.getByRole("alert").waitFor();
  assert.match(await page.getByRole("alert").innerText(), /registration token/i);
  await page.getByLabel("Registration token").fill("not-the-token");
  await page.getByRole("button", { name: "Register" }).click();
  await waitFor(
    async () => !/needs a registration token/.test(await page.getByRole("alert").innerText()),
    "the server's refusal of a wrong token",
  );
  assert.doesNotMatch(await page.getByRole("alert").innerText(), /^\s*$/);
  await page.getByLabel("Registration token").fill(token);
  await page.getByRole("button", { name: "Register" }).click();
  await page.getByText("Welcome to Paracord").waitFor();

  // Now that the server has its admin, it registers no one: the form shows its refusal.
  const other = await (await browser.newContext({ baseURL: server.baseUrl })).newPage();
  await other.goto("/register");
  await other.getByLabel("Username").fill("latecomer");
  await other.getByLabel("Password", { exact: true }).fill("another long password");
  await other.getByLabel("Confirm password").fill("another long password");
  await other.getByRole("button", { name: "Register" }).click();
  await other.getByRole("alert").waitFor();
  assert.match(await other.getByRole("alert").innerText(), /registration is disabled/i);
});
