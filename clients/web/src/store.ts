// The app's state: the matrix-js-sdk client (sync, timelines, sending) and what the Paracord
// REST extension says about each guild (channels, roles, members). Components read it through
// useStore(), which re-renders them when anything changes.

import {
  ClientEvent,
  createClient,
  EventType,
  type MatrixClient,
  type MatrixEvent,
  Direction,
  type Room,
  RoomEvent,
  RoomMemberEvent,
  RoomStateEvent,
  SyncState,
} from "./sdk";
import { useSyncExternalStore } from "react";

import { type Channel, type Guild, type Member, Paracord, ServerError, type Session } from "./api";
import type { Role } from "./lib/permissions";
import { buildTimeline, isMessage, type Raw, type Timeline } from "./lib/timeline";

export type Ev = Raw<MatrixEvent | null>;

/** A matrix-js-sdk event as the pure timeline logic reads it. */
export function toRaw(e: MatrixEvent): Ev {
  return {
    id: e.getId() ?? e.getTxnId() ?? "",
    type: e.getType(),
    sender: e.getSender() ?? "",
    ts: e.getTs(),
    // The original content: edits are applied by lib/timeline, not by the SDK.
    content: e.getOriginalContent(),
    redacted: e.isRedacted(),
    pending: !!e.status,
    unsigned: e.getUnsigned() as Record<string, unknown>,
    redacts: e.getType() === "m.room.redaction" ? e.getAssociatedId() : undefined,
    src: e,
  };
}

/** A raw event from an API answer (a thread fetched with /relations). */
function rawOf(e: Record<string, any>): Ev {
  return {
    id: e.event_id,
    type: e.type,
    sender: e.sender,
    ts: e.origin_server_ts,
    content: e.content ?? {},
    redacted: !!e.unsigned?.redacted_because,
    unsigned: e.unsigned,
    redacts: e.type === "m.room.redaction" ? (e.redacts ?? e.content?.redacts) : undefined,
    src: null,
  };
}

export const GUILD_EVENT = "chat.paracord.guild";

export interface GuildData {
  guild?: Guild;
  channels: Channel[];
  roles: Role[];
  members: Member[];
  loaded: boolean;
  /** The server says the guild does not exist for this user (never joined, left, kicked). */
  gone?: boolean;
}

export interface Toast {
  id: number;
  text: string;
  kind: "error" | "info";
}

const SESSION_KEY = "paracord.session";

export function loadSession(): Session | null {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null");
    if (s && typeof s.userId === "string" && typeof s.accessToken === "string" && typeof s.deviceId === "string") {
      return s;
    }
  } catch {
    /* a damaged entry is no session */
  }
  return null;
}

export function saveSession(s: Session | null) {
  if (s) localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  else localStorage.removeItem(SESSION_KEY);
}

/** What a server refusal says to a person. */
export function describeError(e: unknown): string {
  if (e instanceof ServerError) return e.message;
  // matrix-js-sdk's MatrixError: the server's own words, without the SDK's prefix and URL.
  const data = e && typeof e === "object" && "data" in e ? (e.data as Record<string, unknown>) : null;
  if (data && typeof data.error === "string") return data.error;
  if (e && typeof e === "object" && "message" in e && typeof e.message === "string") {
    return e.message;
  }
  return String(e);
}

/** State event types that change what /_paracord/v1 says about a guild. */
function changesGuild(type: string): boolean {
  return (
    type.startsWith("chat.paracord.") ||
    type === EventType.SpaceChild ||
    type === EventType.RoomName ||
    type === EventType.RoomTopic ||
    type === EventType.RoomMember
  );
}

export class Store {
  readonly client: MatrixClient;
  readonly paracord: Paracord;
  readonly guilds = new Map<string, GuildData>();
  syncState: SyncState | null = null;
  toasts: Toast[] = [];
  private version = 0;
  private listeners = new Set<() => void>();
  private refreshTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private nextToast = 1;

  constructor(readonly session: Session) {
    this.client = createClient({
      baseUrl: window.location.origin,
      accessToken: session.accessToken,
      userId: session.userId,
      deviceId: session.deviceId,
      timelineSupport: true,
      // No 1:1 VoIP calls in this client: without this the SDK polls for TURN servers.
      disableVoip: true,
    });
    this.paracord = new Paracord(session.accessToken);
    const bump = () => this.changed();
    this.client.on(ClientEvent.Sync, (state) => {
      this.syncState = state;
      if (state === SyncState.Prepared || state === SyncState.Syncing) this.refreshKnownGuilds();
      this.changed();
    });
    this.client.on(RoomEvent.Timeline, bump);
    // A channel looked at again after the tab was hidden is read then.
    document.addEventListener("visibilitychange", this.onVisibility);
    this.client.on(RoomEvent.Receipt, bump);
    this.client.on(RoomEvent.Redaction, bump);
    this.client.on(RoomEvent.TimelineReset, bump);
    this.client.on(RoomMemberEvent.Typing, bump);
    // A refused send is reported by the composer that sent it.
    this.client.on(RoomEvent.LocalEchoUpdated, bump);
    this.client.on(RoomEvent.MyMembership, (room: Room) => {
      if (this.isGuild(room)) this.scheduleRefresh(room.roomId);
      this.changed();
    });
    this.client.on(ClientEvent.Room, bump);
    this.client.on(RoomStateEvent.Events, (event: MatrixEvent) => {
      if (!changesGuild(event.getType())) return;
      const roomId = event.getRoomId();
      if (!roomId) return;
      const room = this.client.getRoom(roomId);
      const guildId = room && this.isGuild(room) ? roomId : this.guildOf(roomId);
      if (guildId) this.scheduleRefresh(guildId);
      this.changed();
    });
  }

  async start() {
    await this.client.startClient({ initialSyncLimit: 50, lazyLoadMembers: true });
  }

  private onVisibility = () => this.changed();

  stop() {
    document.removeEventListener("visibilitychange", this.onVisibility);
    this.client.stopClient();
    for (const t of this.refreshTimers.values()) clearTimeout(t);
  }

  subscribe = (listener: () => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getVersion = () => this.version;

  changed() {
    this.version++;
    for (const l of this.listeners) l();
  }

  toast(text: string, kind: Toast["kind"] = "error") {
    const id = this.nextToast++;
    this.toasts = [...this.toasts, { id, text, kind }];
    this.changed();
    setTimeout(() => this.dismiss(id), kind === "error" ? 10_000 : 4_000);
  }

  dismiss(id: number) {
    this.toasts = this.toasts.filter((t) => t.id !== id);
    this.changed();
  }

  get userId() {
    return this.session.userId;
  }

  isGuild(room: Room): boolean {
    const ev = room.currentState.getStateEvents(GUILD_EVENT, "");
    return !!ev && Object.keys(ev.getContent()).length > 0;
  }

  /** Joined guilds, in the order they were joined (as the rail shows them). */
  guildRooms(): Room[] {
    return this.client
      .getRooms()
      .filter((r) => r.getMyMembership() === "join" && this.isGuild(r))
      .sort((a, b) => joinedAt(a, this.userId) - joinedAt(b, this.userId));
  }

  /** The guild a channel room belongs to (its m.space.parent), if any. */
  guildOf(roomId: string): string | undefined {
    const room = this.client.getRoom(roomId);
    const parents = room?.currentState.getStateEvents(EventType.SpaceParent) ?? [];
    const ids = parents.map((e) => e.getStateKey()).filter((k): k is string => !!k);
    return ids.find((k) => this.guilds.has(k)) ?? ids[0];
  }

  /** What is known of a guild; the first call fetches it. */
  guildData(guildId: string): GuildData {
    let d = this.guilds.get(guildId);
    if (!d) {
      d = { channels: [], roles: [], members: [], loaded: false };
      this.guilds.set(guildId, d);
      this.scheduleRefresh(guildId, 0);
    }
    return d;
  }

  private refreshKnownGuilds() {
    for (const room of this.guildRooms()) {
      if (!this.guilds.has(room.roomId)) this.guildData(room.roomId);
    }
  }

  scheduleRefresh(guildId: string, delay = 250) {
    const t = this.refreshTimers.get(guildId);
    if (t) clearTimeout(t);
    this.refreshTimers.set(
      guildId,
      setTimeout(() => {
        this.refreshTimers.delete(guildId);
        void this.refreshGuild(guildId);
      }, delay),
    );
  }

  async refreshGuild(guildId: string) {
    try {
      const [guild, channels, roles, members] = await Promise.all([
        this.paracord.guild(guildId),
        this.paracord.channels(guildId),
        this.paracord.roles(guildId),
        this.paracord.members(guildId),
      ]);
      this.guilds.set(guildId, { guild, channels, roles, members, loaded: true });
    } catch (e) {
      // Never joined, left or kicked: remembered as gone (not refetched on every render).
      if (e instanceof ServerError && e.errcode === "M_NOT_FOUND") {
        this.guilds.set(guildId, { channels: [], roles: [], members: [], loaded: true, gone: true });
      } else {
        this.toast(`Could not load the guild: ${describeError(e)}`);
      }
    }
    this.changed();
  }

  /** The events of a channel's live timeline, oldest first. */
  events(roomId: string): Ev[] {
    return this.cached(`events ${roomId}`, () => {
      const room = this.client.getRoom(roomId);
      return room ? room.getLiveTimeline().getEvents().map(toRaw) : [];
    });
  }

  // What is derived from the timelines, computed once per change (every change bumps the
  // version): the channel list, the rail and the panes all read it in one render.
  private derived = new Map<string, { version: number; value: unknown }>();

  private cached<T>(key: string, compute: () => T): T {
    const hit = this.derived.get(key);
    if (hit && hit.version === this.version) return hit.value as T;
    const value = compute();
    this.derived.set(key, { version: this.version, value });
    return value;
  }

  /** Messages of a channel's live timeline, oldest first. */
  messages(roomId: string): MatrixEvent[] {
    return this.events(roomId)
      .filter((e) => isMessage(e.type) && !e.redacted)
      .map((e) => e.src!);
  }

  /**
   * The channel's messages with their edits, reactions, replies and threads: the live
   * timeline, plus the thread replies fetched with /relations that it does not hold.
   */
  timeline(roomId: string): Timeline<MatrixEvent | null> {
    return this.cached(`timeline ${roomId}`, () => {
      const live = this.events(roomId);
      const ids = new Set(live.map((e) => e.id));
      const fetched = [...(this.fetchedThreads.get(roomId)?.values() ?? [])].flat().filter((e) => !ids.has(e.id));
      return buildTimeline([...live, ...fetched], this.userId);
    });
  }

  /** Replies of threads fetched with /relations, by room and root. */
  private readonly fetchedThreads = new Map<string, Map<string, Ev[]>>();

  async loadThread(roomId: string, rootId: string) {
    try {
      const events: Ev[] = [];
      let from: string | undefined;
      do {
        const r = await this.client.fetchRelations(roomId, rootId, "m.thread", null, {
          dir: Direction.Forward,
          from,
          limit: 100,
        });
        events.push(...r.chunk.map((e) => rawOf(e as Record<string, any>)));
        from = r.next_batch ?? undefined;
      } while (from && events.length < 1000);
      const room = this.fetchedThreads.get(roomId) ?? new Map<string, Ev[]>();
      room.set(rootId, events);
      this.fetchedThreads.set(roomId, room);
    } catch (e) {
      this.toast(`Could not load the thread: ${describeError(e)}`);
    }
    this.changed();
  }

  /** The last message (thread replies included) of a channel sent by the server. */
  private lastMessage(roomId: string): MatrixEvent | undefined {
    return [...this.messages(roomId)].reverse().find((e) => e.getId() && !e.status);
  }

  /** Whether a channel has a message from someone else after the user's read receipt. */
  isUnread(roomId: string): boolean {
    const room = this.client.getRoom(roomId);
    if (!room || room.getMyMembership() !== "join") return false;
    const last = this.lastMessage(roomId);
    if (!last || last.getSender() === this.userId) return false;
    return !room.hasUserReadEvent(this.userId, last.getId()!);
  }

  /** Unread messages that mention the user (m.mentions), as the badges count them. */
  mentionCount(roomId: string): number {
    const room = this.client.getRoom(roomId);
    if (!room || room.getMyMembership() !== "join") return 0;
    return this.messages(roomId).filter(
      (e) =>
        e.getSender() !== this.userId &&
        !e.status &&
        mentions(e.getOriginalContent(), this.userId) &&
        !room.hasUserReadEvent(this.userId, e.getId()!),
    ).length;
  }

  guildMentions(guildId: string): number {
    return (this.guilds.get(guildId)?.channels ?? []).reduce(
      (n, c) => n + (c.kind === "category" ? 0 : this.mentionCount(c.id)),
      0,
    );
  }

  guildUnread(guildId: string): boolean {
    return (this.guilds.get(guildId)?.channels ?? []).some(
      (c) => c.kind !== "category" && this.isUnread(c.id),
    );
  }

  /** The user has seen the channel's latest message: m.read and m.fully_read move to it. */
  markRead(roomId: string) {
    const last = this.lastMessage(roomId);
    const room = this.client.getRoom(roomId);
    if (!last || !room || room.hasUserReadEvent(this.userId, last.getId()!)) return;
    this.client
      .setRoomReadMarkers(roomId, last.getId()!, last)
      .catch((e) => this.toast(`Read receipt: ${describeError(e)}`));
  }

  /** Who else is typing in a channel. */
  typing(roomId: string): string[] {
    const room = this.client.getRoom(roomId);
    if (!room) return [];
    return room.getMembers().filter((m) => m.typing && m.userId !== this.userId).map((m) => m.userId);
  }

  private media = new Map<string, Promise<string>>();

  /**
   * An mxc:// URI as a blob: URL, fetched through authenticated media with the access
   * token (the CSP allows img-src blob:); a thumbnail when `thumb` is set.
   */
  mediaBlob(mxc: string, thumb?: { w: number; h: number }): Promise<string> {
    const key = `${mxc}|${thumb ? `${thumb.w}x${thumb.h}` : ""}`;
    let p = this.media.get(key);
    if (!p) {
      const m = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(mxc);
      p = (async () => {
        if (!m) throw new Error("not an mxc:// URI");
        const base = `/_matrix/client/v1/media/${thumb ? "thumbnail" : "download"}/${encodeURIComponent(m[1])}/${encodeURIComponent(m[2])}`;
        const url = thumb ? `${base}?width=${thumb.w}&height=${thumb.h}&method=scale` : base;
        const res = await fetch(url, { headers: { authorization: `Bearer ${this.session.accessToken}` } });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        return URL.createObjectURL(await res.blob());
      })();
      p.catch(() => this.media.delete(key));
      this.media.set(key, p);
    }
    return p;
  }

  /** Loads older messages; false when the channel's start is reached. */
  async loadOlder(roomId: string): Promise<boolean> {
    const room = this.client.getRoom(roomId);
    if (!room) return false;
    try {
      return await this.client.paginateEventTimeline(room.getLiveTimeline(), {
        backwards: true,
        limit: 40,
      });
    } catch (e) {
      this.toast(`Could not load older messages: ${describeError(e)}`);
      return false;
    } finally {
      this.changed();
    }
  }
}

/** Whether a message's m.mentions names the user. */
export function mentions(content: Record<string, any>, userId: string): boolean {
  const ids = content?.["m.mentions"]?.user_ids;
  return Array.isArray(ids) && ids.includes(userId);
}

function joinedAt(room: Room, userId: string): number {
  return room.currentState.getStateEvents(EventType.RoomMember, userId)?.getTs() ?? 0;
}

let current: Store | null = null;

export function setStore(s: Store | null) {
  current = s;
}

/** The store, re-rendering the calling component on every change. */
export function useStore(): Store {
  const s = current;
  if (!s) throw new Error("no session");
  useSyncExternalStore(s.subscribe, s.getVersion);
  return s;
}
