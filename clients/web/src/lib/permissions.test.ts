// The worked examples of spec/guilds.md §6.1, and the edges around them.
import { describe, expect, it } from "vitest";

import {
  ALL,
  channelPermissions,
  colourRole,
  guildPermissions,
  Permission,
  parseBits,
  type Role,
  sendBlockedReason,
} from "./permissions";

const OWNER = "@alice:paracord.example";
const D = "563330128662081";
const roles: Role[] = [
  { id: "everyone", name: "@everyone", color: 0, position: 0, hoist: false, permissions: D },
  { id: "r7Kq2mod", name: "Moderator", color: 3447003, position: 5, hoist: true, permissions: "1099645853702" },
  { id: "r3Spk", name: "Speaker", color: 15844367, position: 1, hoist: false, permissions: "0" },
  { id: "r9Adm", name: "Admin", color: 0, position: 9, hoist: false, permissions: "8" },
];
const bob = { user_id: "@bob:matrix.example", roles: [] };
const mo = { user_id: "@mo:paracord.example", roles: ["r7Kq2mod"] };
const sam = { user_id: "@sam:paracord.example", roles: ["r3Spk"] };
const erin = { user_id: "@erin:matrix.example", roles: ["r3Spk"] };
const now = 1794999000000;

const announcements = [
  { id: "role:everyone", allow: "0", deny: "2048" },
  { id: "role:r3Spk", allow: "2048", deny: "0" },
];

describe("effective permissions (spec/guilds.md §6.1)", () => {
  it("example 1: a plain member and a moderator in #general", () => {
    expect(channelPermissions(OWNER, roles, bob, [], now).toString()).toBe(D);
    expect(channelPermissions(OWNER, roles, mo, [], now).toString()).toBe("564429774515783");
  });

  it("example 2: denied by @everyone, allowed by a role", () => {
    expect(channelPermissions(OWNER, roles, bob, announcements, now).toString()).toBe(
      "563330128610881",
    );
    expect(channelPermissions(OWNER, roles, sam, announcements, now).toString()).toBe(D);
  });

  it("example 3: a user overwrite beats a role overwrite", () => {
    const ow = [...announcements, { id: `user:${erin.user_id}`, allow: "0", deny: "2048" }];
    expect(channelPermissions(OWNER, roles, erin, ow, now).toString()).toBe("563330128610881");
    // and a user overwrite can let one member into a hidden channel
    const hidden = [
      { id: "role:everyone", allow: "0", deny: "1024" },
      { id: `user:${bob.user_id}`, allow: "1024", deny: "0" },
    ];
    expect(channelPermissions(OWNER, roles, bob, hidden, now)).not.toBe(0n);
  });

  it("example 4: a timed-out member keeps VIEW_CHANNEL and READ_MESSAGE_HISTORY", () => {
    const timedOut = { ...mo, communication_disabled_until: 1795000000000 };
    expect(channelPermissions(OWNER, roles, timedOut, [], now).toString()).toBe("66560");
    expect(channelPermissions(OWNER, roles, timedOut, [], 1795000000001).toString()).toBe(
      "564429774515783",
    );
    const ann = { user_id: "@ann:x", roles: ["r9Adm"], communication_disabled_until: 1795000000000 };
    expect(channelPermissions(OWNER, roles, ann, [], now)).toBe(ALL);
  });

  it("example 5: a hidden channel", () => {
    const mods = [
      { id: "role:everyone", allow: "0", deny: "1024" },
      { id: "role:r7Kq2mod", allow: "1024", deny: "0" },
    ];
    expect(channelPermissions(OWNER, roles, bob, mods, now)).toBe(0n);
    expect(channelPermissions(OWNER, roles, mo, mods, now).toString()).toBe("564429774515783");
  });

  it("the owner has all bits, even in a channel denying @everyone everything", () => {
    const ow = [{ id: "role:everyone", allow: "0", deny: ALL.toString() }];
    expect(channelPermissions(OWNER, roles, { user_id: OWNER, roles: [] }, ow, now)).toBe(ALL);
    expect(guildPermissions(OWNER, roles, { user_id: OWNER, roles: [] })).toBe(ALL);
  });

  it("role overwrites of all the member's roles apply together, allow winning over deny", () => {
    const both = { user_id: "@x:y", roles: ["r7Kq2mod", "r3Spk"] };
    const ow = [
      { id: "role:r7Kq2mod", allow: "0", deny: "2048" },
      { id: "role:r3Spk", allow: "2048", deny: "0" },
    ];
    expect(channelPermissions(OWNER, roles, both, ow, now) & Permission.SEND_MESSAGES).toBe(
      Permission.SEND_MESSAGES,
    );
  });

  it("roles that do not exist and the everyone id in a member's list add nothing", () => {
    const ghost = { user_id: "@g:y", roles: ["nope", "everyone"] };
    expect(guildPermissions(OWNER, roles, ghost).toString()).toBe(D);
  });

  it("malformed permission strings count as no bits", () => {
    expect(parseBits("12x")).toBe(0n);
    expect(parseBits("-1")).toBe(0n);
    expect(parseBits("18446744073709551616")).toBe(0n);
    expect(parseBits("18446744073709551615")).toBe(ALL);
  });
});

describe("the composer's reason", () => {
  it("is null when SEND_MESSAGES is there, a sentence otherwise", () => {
    expect(sendBlockedReason(Permission.SEND_MESSAGES, bob, now)).toBeNull();
    expect(sendBlockedReason(Permission.VIEW_CHANNEL, bob, now)).toMatch(/permission to send/);
    const t = { ...bob, communication_disabled_until: now + 1000 };
    expect(sendBlockedReason(Permission.VIEW_CHANNEL, t, now)).toMatch(/timed out/);
  });
});

describe("name colour", () => {
  it("takes the highest role with a colour", () => {
    expect(colourRole(roles, ["r3Spk", "r7Kq2mod"])?.id).toBe("r7Kq2mod");
    expect(colourRole(roles, ["r9Adm"])).toBeUndefined();
  });
});
