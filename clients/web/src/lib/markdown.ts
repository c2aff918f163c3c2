// The Markdown that the composer understands, as Discord users type it: **bold**, *italic* or
// _italic_, ~~strike~~, `code`, ```code blocks```, ||spoilers|| and > quotes. Parsed into a
// small tree that is rendered twice: to React elements (never to an HTML string in the page)
// and to the `formatted_body` HTML of org.matrix.custom.html, with every text escaped.

export type Inline =
  | { t: "text"; v: string }
  | { t: "code"; v: string }
  | { t: "br" }
  | { t: "pill"; v: string; href: string }
  | { t: "bold" | "italic" | "strike" | "spoiler"; c: Inline[] };

export type Block =
  | { t: "para"; c: Inline[] }
  | { t: "quote"; c: Block[] }
  | { t: "codeblock"; lang: string; v: string };

const PAIRED: { d: string; t: "bold" | "italic" | "strike" | "spoiler" }[] = [
  { d: "**", t: "bold" },
  { d: "||", t: "spoiler" },
  { d: "~~", t: "strike" },
  { d: "*", t: "italic" },
  { d: "_", t: "italic" },
];

/** Where `delim` closes after `from`, skipping escapes and code spans; -1 if it does not. */
function findClose(s: string, from: number, delim: string): number {
  for (let j = from; j < s.length; j++) {
    const ch = s[j];
    if (ch === "\\") {
      j++;
      continue;
    }
    if (ch === "`" && delim !== "`") {
      const end = s.indexOf("`", j + 1);
      if (end === -1) return -1;
      j = end;
      continue;
    }
    if (s.startsWith(delim, j)) {
      // A single * or _ is not the start of ** or __, and content must not be empty.
      if (delim.length === 1 && s[j + 1] === delim) {
        j++;
        continue;
      }
      // `***` closing `**`: the last two close it, the first belongs to the content.
      if (delim.length === 2 && s[j + 2] === delim[0]) continue;
      if (j > from) return j;
    }
  }
  return -1;
}

export function parseInline(s: string): Inline[] {
  const out: Inline[] = [];
  let text = "";
  const flush = () => {
    if (text) out.push({ t: "text", v: text });
    text = "";
  };
  let i = 0;
  while (i < s.length) {
    const ch = s[i];
    if (ch === "\\" && i + 1 < s.length && /[\\`*_~|>]/.test(s[i + 1])) {
      text += s[i + 1];
      i += 2;
      continue;
    }
    if (ch === "\n") {
      flush();
      out.push({ t: "br" });
      i++;
      continue;
    }
    if (ch === "`") {
      const end = s.indexOf("`", i + 1);
      if (end > i + 1) {
        flush();
        out.push({ t: "code", v: s.slice(i + 1, end) });
        i = end + 1;
        continue;
      }
    }
    let matched = false;
    for (const { d, t } of PAIRED) {
      if (!s.startsWith(d, i)) continue;
      // `_` marks italics only at word edges, so snake_case stays as typed.
      if (d === "_" && i > 0 && /\w/.test(s[i - 1])) continue;
      if (d.length === 1 && s[i + 1] === d) continue;
      const end = findClose(s, i + d.length, d);
      if (end === -1) continue;
      if (d === "_" && end + 1 < s.length && /\w/.test(s[end + 1])) continue;
      flush();
      out.push({ t, c: parseInline(s.slice(i + d.length, end)) });
      i = end + d.length;
      matched = true;
      break;
    }
    if (matched) continue;
    text += ch;
    i++;
  }
  flush();
  return out;
}

export function parse(src: string): Block[] {
  const lines = src.replace(/\r\n?/g, "\n").split("\n");
  const blocks: Block[] = [];
  let para: string[] = [];
  const flushPara = () => {
    while (para.length && para[para.length - 1].trim() === "") para.pop();
    while (para.length && para[0].trim() === "") para.shift();
    if (para.length) blocks.push({ t: "para", c: parseInline(para.join("\n")) });
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^```([\w+-]*)\s*$/.exec(line);
    if (fence) {
      const close = lines.findIndex((l, k) => k > i && /^```\s*$/.test(l));
      if (close !== -1) {
        flushPara();
        blocks.push({ t: "codeblock", lang: fence[1], v: lines.slice(i + 1, close).join("\n") });
        i = close;
        continue;
      }
    }
    if (/^>( |$)/.test(line)) {
      flushPara();
      const quoted: string[] = [];
      while (i < lines.length && /^>( |$)/.test(lines[i])) {
        quoted.push(lines[i].replace(/^> ?/, ""));
        i++;
      }
      i--;
      blocks.push({ t: "quote", c: parse(quoted.join("\n")) });
      continue;
    }
    para.push(line);
  }
  flushPara();
  return blocks;
}

/** Whether the message has no formatting at all: then it is sent as a plain `body`. */
export function isPlain(blocks: Block[]): boolean {
  return blocks.every((b) => b.t === "para" && b.c.every((n) => n.t === "text" || n.t === "br"));
}

export function escapeHtml(s: string): string {
  return s
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const TAGS = { bold: "strong", italic: "em", strike: "del" } as const;

function inlineHtml(nodes: Inline[]): string {
  return nodes
    .map((n) => {
      switch (n.t) {
        case "text":
          return escapeHtml(n.v);
        case "code":
          return `<code>${escapeHtml(n.v)}</code>`;
        case "br":
          return "<br>";
        case "spoiler":
          return `<span data-mx-spoiler>${inlineHtml(n.c)}</span>`;
        case "pill":
          return `<a href="${escapeHtml(n.href)}">${escapeHtml(n.v)}</a>`;
        default:
          return `<${TAGS[n.t]}>${inlineHtml(n.c)}</${TAGS[n.t]}>`;
      }
    })
    .join("");
}

/** The `formatted_body` (org.matrix.custom.html) of a parsed message. */
export function toHtml(blocks: Block[]): string {
  return blocks
    .map((b) => {
      switch (b.t) {
        case "para":
          return inlineHtml(b.c);
        case "quote":
          return `<blockquote>${toHtml(b.c)}</blockquote>`;
        case "codeblock": {
          const lang = /^[\w+-]+$/.test(b.lang) ? ` class="language-${b.lang}"` : "";
          return `<pre><code${lang}>${escapeHtml(b.v)}</code></pre>`;
        }
      }
    })
    .join("<br>");
}

/** A mention as typed (`@Alice`, `#general`) and the matrix.to link it stands for. */
export interface Pill {
  text: string;
  href: string;
}

export const MATRIX_TO = "https://matrix.to/#/";

export function userPill(userId: string, name: string): Pill {
  return { text: `@${name}`, href: `${MATRIX_TO}${userId}` };
}

export function roomPill(roomId: string, name: string): Pill {
  return { text: `#${name}`, href: `${MATRIX_TO}${roomId}` };
}

/** The user a pill links to, if it links to a user. */
export function pillUser(p: Pill): string | undefined {
  if (!p.href.startsWith(MATRIX_TO)) return undefined;
  const id = decodeURIComponent(p.href.slice(MATRIX_TO.length).split("?")[0]);
  return /^@[^:\s]+:\S+$/.test(id) ? id : undefined;
}

function unescapeHtml(s: string): string {
  return s
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, "&");
}

/** The matrix.to links of a received formatted_body: the mentions to show as pills. */
export function pillsOf(formattedBody: unknown): Pill[] {
  if (typeof formattedBody !== "string") return [];
  const out: Pill[] = [];
  for (const m of formattedBody.matchAll(/<a href="(https:\/\/matrix\.to\/#\/[^"]+)">([^<]+)<\/a>/g)) {
    out.push({ href: unescapeHtml(m[1]), text: unescapeHtml(m[2]) });
  }
  return out;
}

/** Text nodes split where a pill's text occurs (not inside code). */
export function withPills(nodes: Inline[], pills: Pill[]): Inline[] {
  const usable = pills.filter((p) => p.text.length > 1).sort((a, b) => b.text.length - a.text.length);
  if (usable.length === 0) return nodes;
  const split = (v: string): Inline[] => {
    let best: { at: number; p: Pill } | null = null;
    for (const p of usable) {
      const at = v.indexOf(p.text);
      if (at !== -1 && (!best || at < best.at)) best = { at, p };
    }
    if (!best) return v ? [{ t: "text", v }] : [];
    return [
      ...(best.at > 0 ? [{ t: "text", v: v.slice(0, best.at) } as Inline] : []),
      { t: "pill", v: best.p.text, href: best.p.href },
      ...split(v.slice(best.at + best.p.text.length)),
    ];
  };
  return nodes.flatMap((n): Inline[] => {
    if (n.t === "text") return split(n.v);
    if (n.t === "bold" || n.t === "italic" || n.t === "strike" || n.t === "spoiler") {
      return [{ ...n, c: withPills(n.c, pills) }];
    }
    return [n];
  });
}

export function blocksWithPills(bs: Block[], pills: Pill[]): Block[] {
  if (pills.length === 0) return bs;
  return bs.map((b) =>
    b.t === "para" ? { ...b, c: withPills(b.c, pills) } : b.t === "quote" ? { ...b, c: blocksWithPills(b.c, pills) } : b,
  );
}

/**
 * The content of an m.room.message for what was typed in the composer; `pills` are the
 * mentions picked from the autocomplete (their text is in `src`).
 */
export function messageContent(src: string, pills: Pill[] = []): Record<string, string> {
  const used = pills.filter((p) => src.includes(p.text));
  const blocks = blocksWithPills(parse(src), used);
  if (isPlain(blocks)) return { msgtype: "m.text", body: src };
  return {
    msgtype: "m.text",
    body: src,
    format: "org.matrix.custom.html",
    formatted_body: toHtml(blocks),
  };
}

function inlinePlain(nodes: Inline[]): string {
  return nodes
    .map((n) => (n.t === "text" || n.t === "code" || n.t === "pill" ? n.v : n.t === "br" ? " " : n.t === "spoiler" ? "▒▒▒" : inlinePlain(n.c)))
    .join("");
}

/** A message's text without its markup, on one line (reply quotes, previews). */
export function plainText(src: string): string {
  const flat = (bs: Block[]): string =>
    bs.map((b) => (b.t === "para" ? inlinePlain(b.c) : b.t === "quote" ? flat(b.c) : b.v)).join(" ");
  return flat(parse(src)).replace(/\s+/g, " ").trim();
}

/** The `@query` or `#query` being typed just before the caret, if any. */
export function mentionQuery(before: string): { kind: "@" | "#"; query: string; at: number } | null {
  const m = /(^|\s)([@#])([^\s@#]*)$/.exec(before);
  if (!m) return null;
  return { kind: m[2] as "@" | "#", query: m[3], at: before.length - m[3].length - 1 };
}
