import { describe, expect, it } from "vitest";

import { channelPath, parseRoute } from "./router";

describe("routes", () => {
  it("reads the app's paths", () => {
    expect(parseRoute("/")).toEqual({ name: "home" });
    expect(parseRoute("/channels/@me")).toEqual({ name: "home" });
    expect(parseRoute("/login")).toEqual({ name: "login" });
    expect(parseRoute("/register")).toEqual({ name: "register" });
    expect(parseRoute("/invite/hT4k9QzP")).toEqual({ name: "invite", code: "hT4k9QzP" });
    expect(parseRoute("/invite/")).toEqual({ name: "home" });
  });

  it("round-trips room ids, whose : and / are encoded", () => {
    const path = channelPath("!g:example.org", "!c/x:example.org");
    expect(path).toBe("/channels/!g%3Aexample.org/!c%2Fx%3Aexample.org");
    expect(parseRoute(path)).toEqual({
      name: "guild",
      guildId: "!g:example.org",
      channelId: "!c/x:example.org",
    });
    expect(parseRoute("/channels/!g:example.org")).toEqual({ name: "guild", guildId: "!g:example.org" });
  });
});
