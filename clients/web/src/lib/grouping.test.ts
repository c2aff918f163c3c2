import { describe, expect, it } from "vitest";

import { GROUP_GAP_MS, groupMessages } from "./grouping";

const at = (h: number, m = 0) => new Date(2026, 11, 8, h, m).getTime();

describe("grouping messages", () => {
  it("groups one author's consecutive messages within the gap, and splits on days", () => {
    const items = groupMessages([
      { id: "1", sender: "@a", ts: at(10) },
      { id: "2", sender: "@a", ts: at(10, 2) },
      { id: "3", sender: "@b", ts: at(10, 3) },
      { id: "4", sender: "@b", ts: at(10, 3) + GROUP_GAP_MS + 1 },
      { id: "5", sender: "@b", ts: at(10) + 24 * 3600 * 1000 },
    ]);
    expect(items.map((i) => (i.kind === "day" ? "day" : i.messages.map((m) => m.id).join("")))).toEqual([
      "day",
      "12",
      "3",
      "4",
      "day",
      "5",
    ]);
  });

  it("starts a new group at a reply, as its quote sits above the name", () => {
    const items = groupMessages([
      { id: "1", sender: "@a", ts: at(10) },
      { id: "2", sender: "@a", ts: at(10, 1), reply: true },
      { id: "3", sender: "@a", ts: at(10, 2) },
    ]);
    expect(items.map((i) => (i.kind === "day" ? "day" : i.messages.map((m) => m.id).join("")))).toEqual(["day", "1", "23"]);
  });
});
