import { describe, expect, it } from "vitest";

import { buildTimeline, formatSize, type Raw, reactedBy, replyTargetOf, stripHtmlReplyFallback, stripReplyFallback, typingText } from "./timeline";

let ts = 0;
function ev(id: string, sender: string, type: string, content: Record<string, unknown>, extra: Partial<Raw> = {}): Raw {
  return { id, type, sender, ts: ++ts, content, src: null, ...extra };
}
const text = (id: string, sender: string, body: string, more: Record<string, unknown> = {}) =>
  ev(id, sender, "m.room.message", { msgtype: "m.text", body, ...more });
const edit = (id: string, sender: string, target: string, body: string) =>
  ev(id, sender, "m.room.message", {
    msgtype: "m.text",
    body: `* ${body}`,
    "m.new_content": { msgtype: "m.text", body },
    "m.relates_to": { rel_type: "m.replace", event_id: target },
  });
const react = (id: string, sender: string, target: string, key: string, extra: Partial<Raw> = {}) =>
  ev(id, sender, "m.reaction", { "m.relates_to": { rel_type: "m.annotation", event_id: target, key } }, extra);

describe("edits", () => {
  it("shows the sender's latest edit, marked edited, and hides the edit events", () => {
    const t = buildTimeline([text("$a", "@a", "one"), edit("$e1", "@a", "$a", "two"), edit("$e2", "@a", "$a", "three")], "@a");
    expect(t.main.map((m) => m.content.body)).toEqual(["three"]);
    expect(t.main[0].edited).toBe(true);
    expect(t.main[0].original.body).toBe("one");
  });

  it("ignores an edit by someone else", () => {
    const t = buildTimeline([text("$a", "@a", "one"), edit("$e", "@b", "$a", "hijacked")], "@a");
    expect(t.main[0].content.body).toBe("one");
    expect(t.main[0].edited).toBe(false);
  });

  it("uses a bundled edit when the edit itself is not loaded", () => {
    const bundled = { sender: "@a", content: { "m.new_content": { msgtype: "m.text", body: "later" } } };
    const t = buildTimeline([text("$a", "@a", "one", {}), ], "@a");
    expect(t.main[0].edited).toBe(false);
    const t2 = buildTimeline([{ ...text("$a", "@a", "one"), unsigned: { "m.relations": { "m.replace": bundled } } }], "@a");
    expect(t2.main[0].content.body).toBe("later");
    expect(t2.main[0].edited).toBe(true);
  });

  it("drops redacted messages", () => {
    const t = buildTimeline([text("$a", "@a", "one", {}), { ...text("$b", "@a", "gone"), redacted: true }], "@a");
    expect(t.main.map((m) => m.id)).toEqual(["$a"]);
  });
});

describe("reactions", () => {
  it("groups by key in order of first use, counts each sender once and finds the user's own", () => {
    const t = buildTimeline(
      [
        text("$a", "@a", "hi"),
        react("$r1", "@b", "$a", "👍"),
        react("$r2", "@me", "$a", "👍"),
        react("$r3", "@b", "$a", "👍"),
        react("$r4", "@c", "$a", "🎉"),
        { ...react("$r5", "@d", "$a", "🎉"), redacted: true },
      ],
      "@me",
    );
    expect(t.main[0].reactions).toEqual([
      { key: "👍", senders: ["@b", "@me"], mine: "$r2" },
      { key: "🎉", senders: ["@c"] },
    ]);
  });

  it("marks a reaction still being sent as the user's, without an id to redact", () => {
    const t = buildTimeline([text("$a", "@a", "hi"), react("~txn", "@me", "$a", "👍", { pending: true })], "@me");
    expect(t.main[0].reactions).toEqual([{ key: "👍", senders: ["@me"], minePending: true }]);
  });

  it("says who reacted", () => {
    expect(reactedBy("👍", ["Ann"])).toBe("👍 by Ann");
    expect(reactedBy("👍", ["Ann", "Bo"])).toBe("👍 by Ann and Bo");
    expect(reactedBy("👍", ["Ann", "Bo", "Cy"])).toBe("👍 by Ann, Bo and Cy");
    expect(reactedBy("👍", ["Ann", "Bo", "Cy", "Di", "Ed"])).toBe("👍 by Ann, Bo, Cy and 2 others");
  });
});

describe("threads and replies", () => {
  const thread = (id: string, root: string, body: string) =>
    text(id, "@b", body, {
      "m.relates_to": { rel_type: "m.thread", event_id: root, is_falling_back: true, "m.in_reply_to": { event_id: root } },
    });

  it("keeps thread replies out of the channel list and counts them on the root", () => {
    const t = buildTimeline([text("$root", "@a", "root"), thread("$t1", "$root", "one"), text("$x", "@a", "after"), thread("$t2", "$root", "two")], "@a");
    expect(t.main.map((m) => m.id)).toEqual(["$root", "$x"]);
    expect(t.main[0].threadCount).toBe(2);
    expect(t.threads.get("$root")?.map((m) => m.content.body)).toEqual(["one", "two"]);
    // The thread fallback is not a reply to show.
    expect(t.threads.get("$root")?.[0].replyTo).toBeUndefined();
  });

  it("orders thread replies fetched apart by time, and drops those a later redaction removes", () => {
    const fetched = [
      { ...thread("$t1", "$root", "one"), ts: 10 },
      { ...thread("$t2", "$root", "two"), ts: 20 },
    ];
    const live = [
      { ...text("$root", "@a", "root"), ts: 1 },
      { ...thread("$t3", "$root", "three"), ts: 30 },
      { ...ev("$red", "@b", "m.room.redaction", {}), redacts: "$t2", ts: 40 },
    ];
    const t = buildTimeline([...live, ...fetched], "@a");
    expect(t.threads.get("$root")?.map((m) => m.content.body)).toEqual(["one", "three"]);
    expect(t.main[0].threadCount).toBe(2);
  });

  it("takes the bundled count when more replies exist than are loaded", () => {
    const root = { ...text("$root", "@a", "root"), unsigned: { "m.relations": { "m.thread": { count: 5 } } } };
    expect(buildTimeline([root, thread("$t1", "$root", "one")], "@a").main[0].threadCount).toBe(5);
  });

  it("finds what a reply quotes", () => {
    expect(replyTargetOf({ "m.relates_to": { "m.in_reply_to": { event_id: "$q" } } })).toBe("$q");
    expect(replyTargetOf({ "m.relates_to": { rel_type: "m.thread", event_id: "$r", is_falling_back: false, "m.in_reply_to": { event_id: "$q" } } })).toBe("$q");
    expect(replyTargetOf({ body: "x" })).toBeUndefined();
  });

  it("strips the reply fallback of older clients", () => {
    expect(stripReplyFallback("> <@a:b> quoted\n> more\n\nmy answer")).toBe("my answer");
    expect(stripReplyFallback("> a quote I typed\n\ntext")).toBe("> a quote I typed\n\ntext");
    expect(stripHtmlReplyFallback("<mx-reply><blockquote>q</blockquote></mx-reply>answer")).toBe("answer");
  });
});

describe("small texts", () => {
  it("says who is typing", () => {
    expect(typingText([])).toBe("");
    expect(typingText(["Ann"])).toBe("Ann is typing…");
    expect(typingText(["Ann", "Bo"])).toBe("Ann and Bo are typing…");
    expect(typingText(["A", "B", "C", "D"])).toBe("Several people are typing…");
  });

  it("formats sizes", () => {
    expect(formatSize(12)).toBe("12 B");
    expect(formatSize(2048)).toBe("2.0 KB");
    expect(formatSize(5 * 1024 * 1024 * 1024)).toBe("5.0 GB");
  });
});
