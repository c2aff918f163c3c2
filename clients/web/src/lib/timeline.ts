// What a channel's raw events mean as Discord shows them: messages with their latest edit,
// reactions grouped by key, thread replies apart from the channel's list (counted on their
// root), and replies pointing at what they quote. Pure: the store passes plain events.

export type Content = Record<string, any>;

export interface Raw<T = unknown> {
  id: string;
  type: string;
  sender: string;
  ts: number;
  content: Content;
  redacted?: boolean;
  /** Not yet accepted by the server (a local echo). */
  pending?: boolean;
  unsigned?: Content;
  /** For an m.room.redaction: the event it redacts. */
  redacts?: string;
  src: T;
}

export interface ReactionGroup {
  key: string;
  senders: string[];
  /** The event id of the user's own reaction with this key, to redact it. */
  mine?: string;
  /** The user's reaction is still being sent. */
  minePending?: boolean;
}

export interface Msg<T = unknown> {
  id: string;
  sender: string;
  ts: number;
  /** The latest content: the last edit's `m.new_content`, else the original. */
  content: Content;
  original: Content;
  edited: boolean;
  reactions: ReactionGroup[];
  threadCount: number;
  replyTo?: string;
  threadRoot?: string;
  pending?: boolean;
  src: T;
}

export interface Timeline<T> {
  main: Msg<T>[];
  threads: Map<string, Msg<T>[]>;
  byId: Map<string, Msg<T>>;
}

function rel(content: Content): Content | undefined {
  const r = content?.["m.relates_to"];
  return r && typeof r === "object" ? r : undefined;
}

/** The root of the thread a message is in, if any. */
export function threadRootOf(content: Content): string | undefined {
  const r = rel(content);
  return r?.rel_type === "m.thread" && typeof r.event_id === "string" ? r.event_id : undefined;
}

/** The message a reply quotes; a thread's fallback reply (is_falling_back) quotes nothing. */
export function replyTargetOf(content: Content): string | undefined {
  const r = rel(content);
  if (!r || (r.rel_type === "m.thread" && r.is_falling_back)) return undefined;
  const id = r["m.in_reply_to"]?.event_id;
  return typeof id === "string" ? id : undefined;
}

/**
 * A reply's body without the quoted fallback that older clients put first ("> <@a:b> text"
 * lines and a blank line).
 */
export function stripReplyFallback(body: string): string {
  if (!body.startsWith("> <")) return body;
  const lines = body.split("\n");
  let i = 0;
  while (i < lines.length && lines[i].startsWith(">")) i++;
  if (i < lines.length && lines[i] === "") i++;
  return lines.slice(i).join("\n");
}

/** The same for formatted_body: the <mx-reply> element goes. */
export function stripHtmlReplyFallback(html: string): string {
  return html.replace(/^<mx-reply>[\s\S]*?<\/mx-reply>/, "");
}

export function isMessage(type: string): boolean {
  return type === "m.room.message" || type === "m.sticker";
}

/**
 * Arranges a channel's events (oldest first; thread replies fetched apart may follow them,
 * as each thread is ordered by time).
 */
export function buildTimeline<T>(events: Raw<T>[], me: string): Timeline<T> {
  // A redaction in the list also removes events the SDK did not apply it to (fetched ones).
  const gone = new Set(events.filter((e) => e.type === "m.room.redaction" && e.redacts && !e.pending).map((e) => e.redacts));
  const live = events.filter((e) => !e.redacted && !gone.has(e.id));
  const edits = new Map<string, Raw<T>[]>();
  const reactions = new Map<string, Map<string, ReactionGroup>>();
  for (const e of live) {
    const r = rel(e.content);
    if (isMessage(e.type) && r?.rel_type === "m.replace" && typeof r.event_id === "string") {
      edits.set(r.event_id, [...(edits.get(r.event_id) ?? []), e]);
    } else if (e.type === "m.reaction" && r?.rel_type === "m.annotation" && typeof r.key === "string" && typeof r.event_id === "string") {
      const byKey = reactions.get(r.event_id) ?? new Map<string, ReactionGroup>();
      reactions.set(r.event_id, byKey);
      const g = byKey.get(r.key) ?? { key: r.key, senders: [] };
      byKey.set(r.key, g);
      if (g.senders.includes(e.sender)) continue;
      g.senders.push(e.sender);
      if (e.sender === me) {
        if (e.pending) g.minePending = true;
        else g.mine = e.id;
      }
    }
  }
  const main: Msg<T>[] = [];
  const threads = new Map<string, Msg<T>[]>();
  const byId = new Map<string, Msg<T>>();
  for (const e of live) {
    if (!isMessage(e.type) || rel(e.content)?.rel_type === "m.replace") continue;
    // Only the sender's own edits count; the last one wins.
    const own = (edits.get(e.id) ?? []).filter((x) => x.sender === e.sender).sort((a, b) => a.ts - b.ts);
    const lastEdit = own[own.length - 1]?.content["m.new_content"];
    const bundled = e.unsigned?.["m.relations"]?.["m.replace"];
    const bundledNew = bundled?.sender === e.sender ? bundled?.content?.["m.new_content"] : undefined;
    const newest = lastEdit ?? bundledNew;
    const m: Msg<T> = {
      id: e.id,
      sender: e.sender,
      ts: e.ts,
      content: newest && typeof newest === "object" ? newest : e.content,
      original: e.content,
      edited: !!newest,
      reactions: [...(reactions.get(e.id)?.values() ?? [])],
      threadCount: 0,
      replyTo: replyTargetOf(e.content),
      threadRoot: threadRootOf(e.content),
      pending: e.pending,
      src: e.src,
    };
    byId.set(m.id, m);
    if (m.threadRoot) threads.set(m.threadRoot, [...(threads.get(m.threadRoot) ?? []), m]);
    else main.push(m);
  }
  for (const list of threads.values()) list.sort((a, b) => a.ts - b.ts);
  for (const e of live) {
    const m = byId.get(e.id);
    if (!m || m.threadRoot) continue;
    const bundled = e.unsigned?.["m.relations"]?.["m.thread"]?.count;
    m.threadCount = Math.max(typeof bundled === "number" ? bundled : 0, threads.get(m.id)?.length ?? 0);
  }
  return { main, threads, byId };
}

/** "👍 by Alice, Bob and 2 others" */
export function reactedBy(key: string, names: string[]): string {
  const shown = names.slice(0, 3);
  const rest = names.length - shown.length;
  const list =
    rest > 0
      ? `${shown.join(", ")} and ${rest} other${rest === 1 ? "" : "s"}`
      : shown.length > 1
        ? `${shown.slice(0, -1).join(", ")} and ${shown[shown.length - 1]}`
        : shown.join("");
  return `${key} by ${list}`;
}

/** "Alice is typing…", "Alice and Bob are typing…", "Several people are typing…" */
export function typingText(names: string[]): string {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length <= 3) return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} are typing…`;
  return "Several people are typing…";
}

export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return "";
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let v = bytes / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}
