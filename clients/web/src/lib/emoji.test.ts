import { describe, expect, it } from "vitest";

import { CATEGORIES, searchEmoji } from "./emoji";

describe("the emoji set", () => {
  it("has categories of named emoji, each emoji once", () => {
    const all = CATEGORIES.flatMap((c) => c.emoji);
    expect(CATEGORIES.length).toBeGreaterThanOrEqual(5);
    expect(new Set(all.map((x) => x.e)).size).toBe(all.length);
    expect(all.every((x) => x.e && x.n)).toBe(true);
  });

  it("searches names by every word", () => {
    expect(searchEmoji("thumbsup").map((x) => x.e)).toEqual(["👍"]);
    expect(searchEmoji("heart green").map((x) => x.e)).toEqual(["💚"]);
    expect(searchEmoji("nothing-like-this")).toEqual([]);
  });
});
