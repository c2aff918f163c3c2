// HTTP calls the app makes itself: logging in, registering (with its UIA stages) and the
// Paracord REST extension (/_paracord/v1, spec/rest.md). Everything goes to this origin.

import type { Overwrite, Role } from "./lib/permissions";

/** A refusal from the server, with its Matrix `errcode` and `error` text. */
export class ServerError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string,
    message: string,
    readonly body: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export interface Session {
  userId: string;
  accessToken: string;
  deviceId: string;
}

async function request<T>(
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; timeoutMs?: number } = {},
): Promise<T> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: opts.timeoutMs ? AbortSignal.timeout(opts.timeoutMs) : undefined,
    });
  } catch (e) {
    throw new ServerError(0, "M_CONNECTION", `Cannot reach the server (${String(e)})`);
  }
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    /* not JSON: reported below */
  }
  if (!res.ok) {
    const errcode = typeof json.errcode === "string" ? json.errcode : `HTTP_${res.status}`;
    const error =
      typeof json.error === "string" ? json.error : `${method} ${path}: HTTP ${res.status}`;
    throw new ServerError(res.status, errcode, error, json);
  }
  return json as T;
}

function toSession(r: { user_id: string; access_token: string; device_id: string }): Session {
  return { userId: r.user_id, accessToken: r.access_token, deviceId: r.device_id };
}

const DEVICE_NAME = "Paracord web";

export async function login(username: string, password: string): Promise<Session> {
  const r = await request<{ user_id: string; access_token: string; device_id: string }>(
    "POST",
    "/_matrix/client/v3/login",
    {
      body: {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: username },
        password,
        initial_device_display_name: DEVICE_NAME,
      },
    },
  );
  return toSession(r);
}

/** Ends the session on the server (its access token stops working); 10 s at most. */
export async function logout(session: Session): Promise<void> {
  await request("POST", "/_matrix/client/v3/logout", {
    token: session.accessToken,
    body: {},
    timeoutMs: 10_000,
  });
}

/** The stages registration needs that the user must fill in (beyond m.login.dummy). */
export class NeedsRegistrationToken extends Error {}

interface UiaBody {
  session?: string;
  flows?: { stages: string[] }[];
  completed?: string[];
}

const KNOWN_STAGES = new Set(["m.login.dummy", "m.login.registration_token"]);

/**
 * Registers through user-interactive auth: asks for the flows, picks one made only of
 * stages this app can complete, and completes them in order. Throws NeedsRegistrationToken
 * when the server's flows all need a registration token and none was given.
 */
export async function register(
  username: string,
  password: string,
  registrationToken: string | undefined,
): Promise<Session> {
  const body: Record<string, unknown> = {
    username,
    password,
    initial_device_display_name: DEVICE_NAME,
  };
  let uia: UiaBody;
  try {
    return toSession(await request("POST", "/_matrix/client/v3/register", { body }));
  } catch (e) {
    if (!(e instanceof ServerError) || e.status !== 401) throw e;
    uia = e.body as UiaBody;
  }
  const usable = (uia.flows ?? []).filter((f) => f.stages.every((s) => KNOWN_STAGES.has(s)));
  if (usable.length === 0) {
    throw new ServerError(401, "M_UNKNOWN", "This server's registration needs steps this app cannot do.");
  }
  // With a token, the flow that uses it (the first admin's, say); without, one that needs none.
  const withToken = usable.find((f) => f.stages.includes("m.login.registration_token"));
  const flow = registrationToken
    ? (withToken ?? usable[0])
    : usable.find((f) => !f.stages.includes("m.login.registration_token"));
  if (!flow) throw new NeedsRegistrationToken("This server needs a registration token to sign up.");
  const completed = new Set(uia.completed ?? []);
  for (const stage of flow.stages) {
    if (completed.has(stage)) continue;
    const auth: Record<string, unknown> = { type: stage, session: uia.session };
    if (stage === "m.login.registration_token") auth.token = registrationToken;
    try {
      return toSession(await request("POST", "/_matrix/client/v3/register", { body: { ...body, auth } }));
    } catch (e) {
      // A 401 without an errcode: this stage is done, the next is due. With one (a wrong
      // token, say): the refusal the user sees.
      if (!(e instanceof ServerError) || e.status !== 401 || typeof e.body.errcode === "string") {
        throw e;
      }
      uia = { ...uia, ...(e.body as UiaBody) };
    }
  }
  throw new ServerError(401, "M_UNKNOWN", "Registration did not complete.");
}

// ---- /_paracord/v1 ----

export interface Guild {
  id: string;
  name: string;
  description?: string;
  icon?: string;
  owner: string;
  system_channel?: string;
}

export interface Channel {
  id: string;
  guild_id: string;
  kind: "text" | "voice" | "category" | "forum" | "announcement" | string;
  name: string;
  topic?: string;
  position: number;
  parent?: string;
  permission_overwrites: Overwrite[];
}

export interface Member {
  user_id: string;
  displayname?: string | null;
  avatar_url?: string | null;
  nick?: string | null;
  roles: string[];
  communication_disabled_until?: number | null;
}

export interface Invite {
  code: string;
  guild: { id: string; name: string; icon?: string; description?: string; member_count: number };
  channel: { id: string; name: string };
  inviter?: string;
  expires_at?: number | null;
}

const enc = encodeURIComponent;

export class Paracord {
  constructor(private readonly token: string) {}

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return request<T>(method, `/_paracord/v1${path}`, { token: this.token, body });
  }

  createGuild(name: string) {
    return this.call<Guild & { channels: Channel[]; roles: Role[] }>("POST", "/guilds", { name });
  }
  guild(id: string) {
    return this.call<Guild>("GET", `/guilds/${enc(id)}`);
  }
  channels(guildId: string) {
    return this.call<Channel[]>("GET", `/guilds/${enc(guildId)}/channels`);
  }
  roles(guildId: string) {
    return this.call<Role[]>("GET", `/guilds/${enc(guildId)}/roles`);
  }
  /** Every member, following `after` pages of 1000. */
  async members(guildId: string): Promise<Member[]> {
    const all: Member[] = [];
    let after = "";
    for (;;) {
      const q = after ? `&after=${enc(after)}` : "";
      const page = await this.call<Member[]>("GET", `/guilds/${enc(guildId)}/members?limit=1000${q}`);
      all.push(...page);
      if (page.length < 1000) return all;
      after = page[page.length - 1].user_id;
    }
  }
  /** Kick, or for oneself: leave. */
  leave(guildId: string, userId: string) {
    return this.call<object>("DELETE", `/guilds/${enc(guildId)}/members/${enc(userId)}`);
  }
  createInvite(channelId: string) {
    return this.call<Invite>("POST", `/channels/${enc(channelId)}/invites`, {});
  }
  invite(code: string) {
    return this.call<Invite>("GET", `/invites/${enc(code)}`);
  }
  acceptInvite(code: string) {
    return this.call<{ guild_id: string; channel_id: string }>("POST", `/invites/${enc(code)}`, {});
  }
}
