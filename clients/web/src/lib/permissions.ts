// Effective permissions of a guild member, exactly as spec/guilds.md §6 defines them.
// Pure: the caller passes what it read from /_paracord/v1 (guild, roles, member, channel).
// Permissions are u64 bit sets, carried as decimal strings on the wire and as BigInt here.

export const Permission = {
  CREATE_INSTANT_INVITE: 1n << 0n,
  KICK_MEMBERS: 1n << 1n,
  BAN_MEMBERS: 1n << 2n,
  ADMINISTRATOR: 1n << 3n,
  MANAGE_CHANNELS: 1n << 4n,
  MANAGE_GUILD: 1n << 5n,
  ADD_REACTIONS: 1n << 6n,
  VIEW_AUDIT_LOG: 1n << 7n,
  PRIORITY_SPEAKER: 1n << 8n,
  STREAM: 1n << 9n,
  VIEW_CHANNEL: 1n << 10n,
  SEND_MESSAGES: 1n << 11n,
  SEND_TTS_MESSAGES: 1n << 12n,
  MANAGE_MESSAGES: 1n << 13n,
  EMBED_LINKS: 1n << 14n,
  ATTACH_FILES: 1n << 15n,
  READ_MESSAGE_HISTORY: 1n << 16n,
  MENTION_EVERYONE: 1n << 17n,
  USE_EXTERNAL_EMOJIS: 1n << 18n,
  CONNECT: 1n << 20n,
  SPEAK: 1n << 21n,
  MUTE_MEMBERS: 1n << 22n,
  DEAFEN_MEMBERS: 1n << 23n,
  MOVE_MEMBERS: 1n << 24n,
  CHANGE_NICKNAME: 1n << 26n,
  MANAGE_NICKNAMES: 1n << 27n,
  MANAGE_ROLES: 1n << 28n,
  MANAGE_WEBHOOKS: 1n << 29n,
  MANAGE_GUILD_EXPRESSIONS: 1n << 30n,
  USE_APPLICATION_COMMANDS: 1n << 31n,
  MANAGE_EVENTS: 1n << 33n,
  MANAGE_THREADS: 1n << 34n,
  CREATE_PUBLIC_THREADS: 1n << 35n,
  CREATE_PRIVATE_THREADS: 1n << 36n,
  SEND_MESSAGES_IN_THREADS: 1n << 38n,
  MODERATE_MEMBERS: 1n << 40n,
  SEND_POLLS: 1n << 49n,
} as const;

export type PermissionName = keyof typeof Permission;

export const ALL = (1n << 64n) - 1n;

export interface Role {
  id: string;
  name: string;
  color: number;
  position: number;
  hoist: boolean;
  permissions: string;
}

export interface Overwrite {
  /** `role:<role id>` or `user:<user id>` */
  id: string;
  allow: string;
  deny: string;
}

export interface MemberPerms {
  user_id: string;
  roles: string[];
  communication_disabled_until?: number | null;
}

/** A u64 from its decimal string; anything unparsable counts as no bits. */
export function parseBits(s: string | undefined | null): bigint {
  if (typeof s !== "string" || !/^\d{1,20}$/.test(s)) return 0n;
  const v = BigInt(s);
  return v > ALL ? 0n : v;
}

export function has(bits: bigint, flag: bigint): boolean {
  return (bits & flag) === flag;
}

/** The member's roles that exist, other than `everyone` (§6). */
function memberRoles(member: MemberPerms, roles: Role[]): Role[] {
  const ids = new Set(member.roles.filter((r) => r !== "everyone"));
  return roles.filter((r) => ids.has(r.id));
}

/** Guild-wide permissions: steps 1–2 of §6. */
export function guildPermissions(ownerId: string, roles: Role[], member: MemberPerms): bigint {
  if (member.user_id === ownerId) return ALL;
  let base = parseBits(roles.find((r) => r.id === "everyone")?.permissions);
  for (const role of memberRoles(member, roles)) base |= parseBits(role.permissions);
  if (has(base, Permission.ADMINISTRATOR)) return ALL;
  return base;
}

/** The member's permissions in a channel with these overwrites at `now` (ms): all of §6. */
export function channelPermissions(
  ownerId: string,
  roles: Role[],
  member: MemberPerms,
  overwrites: Overwrite[],
  now: number,
): bigint {
  let base = guildPermissions(ownerId, roles, member);
  if (base === ALL) return ALL;
  const byId = new Map(overwrites.map((o) => [o.id, o]));
  const apply = (allow: bigint, deny: bigint) => {
    base &= ~deny & ALL;
    base |= allow;
  };
  const everyone = byId.get("role:everyone");
  if (everyone) apply(parseBits(everyone.allow), parseBits(everyone.deny));
  let allow = 0n;
  let deny = 0n;
  let any = false;
  for (const role of memberRoles(member, roles)) {
    const o = byId.get(`role:${role.id}`);
    if (!o) continue;
    any = true;
    allow |= parseBits(o.allow);
    deny |= parseBits(o.deny);
  }
  if (any) apply(allow, deny);
  const own = byId.get(`user:${member.user_id}`);
  if (own) apply(parseBits(own.allow), parseBits(own.deny));
  if (!has(base, Permission.VIEW_CHANNEL)) return 0n;
  if (!has(base, Permission.SEND_MESSAGES)) {
    base &= ~(
      Permission.SEND_TTS_MESSAGES |
      Permission.MENTION_EVERYONE |
      Permission.ATTACH_FILES |
      Permission.EMBED_LINKS
    );
  }
  const until = member.communication_disabled_until;
  if (typeof until === "number" && until > now) {
    base &= Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY;
  }
  return base;
}

/**
 * Why the member cannot send in the channel, or null if they can: the text the composer
 * shows in place of its input.
 */
export function sendBlockedReason(
  perms: bigint,
  member: MemberPerms,
  now: number,
): string | null {
  if (has(perms, Permission.SEND_MESSAGES)) return null;
  const until = member.communication_disabled_until;
  if (typeof until === "number" && until > now) {
    return `You are timed out until ${new Date(until).toLocaleString()}.`;
  }
  return "You do not have permission to send messages in this channel.";
}

/** The role whose colour a member's name takes: the highest-positioned role with a colour. */
export function colourRole(roles: Role[], memberRoleIds: string[]): Role | undefined {
  const ids = new Set(memberRoleIds);
  return roles
    .filter((r) => ids.has(r.id) && r.id !== "everyone" && r.color !== 0)
    .sort((a, b) => b.position - a.position || (a.id < b.id ? -1 : 1))[0];
}
