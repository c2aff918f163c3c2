import { useEffect, useRef, useState } from "react";

import type { Channel, Invite } from "../api";
import { channelPermissions, Permission } from "../lib/permissions";
import { channelPath, navigate } from "../router";
import { describeError, useStore } from "../store";
import { setTheme, storedTheme } from "../theme";
import { PowerIcon, ThemeIcon } from "./Icons";
import { Modal } from "./Modal";

const COLLAPSED_KEY = "paracord.collapsed";

function loadCollapsed(): Set<string> {
  try {
    return new Set(JSON.parse(localStorage.getItem(COLLAPSED_KEY) ?? "[]"));
  } catch {
    return new Set();
  }
}

/** Channels in the order of spec/guilds.md §2.2: top-level ones, then each category's. */
function layout(channels: Channel[]): { category?: Channel; items: Channel[] }[] {
  const byPos = (a: Channel, b: Channel) => a.position - b.position || (a.id < b.id ? -1 : 1);
  const cats = channels.filter((c) => c.kind === "category").sort(byPos);
  const catIds = new Set(cats.map((c) => c.id));
  const top = channels.filter((c) => c.kind !== "category" && !(c.parent && catIds.has(c.parent))).sort(byPos);
  return [
    { items: top },
    ...cats.map((category) => ({
      category,
      items: channels.filter((c) => c.kind !== "category" && c.parent === category.id).sort(byPos),
    })),
  ];
}

export function ChannelSidebar(props: { guildId?: string; channelId?: string; onSignOut: () => void }) {
  const store = useStore();
  const [collapsed, setCollapsed] = useState(loadCollapsed);
  const [menu, setMenu] = useState(false);
  const [inviting, setInviting] = useState(false);
  const data = props.guildId ? store.guilds.get(props.guildId) : undefined;
  const me = store.client.getUser(store.userId);
  const toggle = (id: string) => {
    const next = new Set(collapsed);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    localStorage.setItem(COLLAPSED_KEY, JSON.stringify([...next]));
    setCollapsed(next);
  };
  const member = data?.members.find((m) => m.user_id === store.userId);
  const inviteChannel = data?.channels.find((c) => c.id === props.channelId) ?? data?.channels.find((c) => c.id === data.guild?.system_channel);
  const canInvite =
    !!data?.guild &&
    !!inviteChannel &&
    (channelPermissions(data.guild.owner, data.roles, member ?? { user_id: store.userId, roles: [] }, inviteChannel.permission_overwrites, Date.now()) &
      Permission.CREATE_INSTANT_INVITE) !== 0n;

  return (
    <aside className="sidebar">
      {data?.guild ? (
        <header className="sidebar-header">
          <button className="guild-menu-button" aria-haspopup="menu" aria-expanded={menu} onClick={() => setMenu(!menu)}>
            <span className="truncate">{data.guild.name}</span>
            <span aria-hidden="true">{menu ? "✕" : "⌄"}</span>
          </button>
          {menu && (
            <div className="menu" role="menu">
              {canInvite && (
                <button role="menuitem" onClick={() => { setMenu(false); setInviting(true); }}>
                  Invite people
                </button>
              )}
              <button
                role="menuitem"
                className="danger"
                onClick={async () => {
                  setMenu(false);
                  try {
                    await store.paracord.leave(props.guildId!, store.userId);
                    navigate("/channels/@me");
                    store.guilds.delete(props.guildId!);
                  } catch (e) {
                    store.toast(`Could not leave the guild: ${describeError(e)}`);
                  }
                }}
              >
                Leave guild
              </button>
            </div>
          )}
        </header>
      ) : (
        <header className="sidebar-header"><span className="truncate">{props.guildId ? "…" : "Paracord"}</span></header>
      )}
      <nav className="channels" aria-label="Channels">
        {data &&
          layout(data.channels).map(({ category, items }) => (
            <div key={category?.id ?? "top"} className="channel-group">
              {category && (
                <button className="category" aria-expanded={!collapsed.has(category.id)} onClick={() => toggle(category.id)}>
                  <span aria-hidden="true">{collapsed.has(category.id) ? "›" : "⌄"}</span> {category.name}
                </button>
              )}
              <ul role="list">
                {items
                  .filter((c) => !category || !collapsed.has(category.id) || c.id === props.channelId)
                  .map((c) => {
                    const unread = c.id !== props.channelId && store.isUnread(c.id);
                    const mentioned = c.id !== props.channelId ? store.mentionCount(c.id) : 0;
                    return (
                      <li key={c.id}>
                        <button
                          className={`channel${c.id === props.channelId ? " selected" : ""}${unread ? " unread" : ""}`}
                          aria-current={c.id === props.channelId ? "page" : undefined}
                          aria-label={`${c.name}${unread ? " (unread)" : ""}`}
                          onClick={() => navigate(channelPath(props.guildId!, c.id))}
                        >
                          <span className="hash" aria-hidden="true">{c.kind === "voice" ? "♪" : "#"}</span>
                          <span className="truncate">{c.name}</span>
                          {mentioned > 0 && (
                            <span className="badge" data-testid="mention-badge" title={`${mentioned} mention${mentioned === 1 ? "" : "s"}`}>
                              {mentioned}
                            </span>
                          )}
                        </button>
                      </li>
                    );
                  })}
              </ul>
            </div>
          ))}
      </nav>
      <footer className="user-panel">
        <div className="avatar small" aria-hidden="true">{(me?.displayName ?? store.userId).replace(/^@/, "")[0]?.toUpperCase()}</div>
        <div className="user-names">
          <div className="truncate" data-testid="my-name">{me?.displayName ?? store.userId}</div>
          <div className="muted truncate small">{store.userId}</div>
        </div>
        <button
          className="icon"
          title="Switch theme"
          aria-label="Switch between dark and light theme"
          onClick={() => setTheme(storedTheme() === "dark" ? "light" : "dark")}
        >
          <ThemeIcon />
        </button>
        <button className="icon" title="Log out" aria-label="Log out" onClick={props.onSignOut}>
          <PowerIcon />
        </button>
      </footer>
      {inviting && inviteChannel && <InviteModal channel={inviteChannel} onClose={() => setInviting(false)} />}
    </aside>
  );
}

function InviteModal({ channel, onClose }: { channel: Channel; onClose: () => void }) {
  const store = useStore();
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [copied, setCopied] = useState(false);
  const requested = useRef(false);
  useEffect(() => {
    if (requested.current) return;
    requested.current = true;
    store.paracord.createInvite(channel.id).then(setInvite, (e) => setError(describeError(e)));
  }, [store, channel.id]);
  const link = invite ? `${window.location.origin}/invite/${encodeURIComponent(invite.code)}` : "";
  return (
    <Modal title={`Invite friends to #${channel.name}`} onClose={onClose}>
      {error && <p className="form-error" role="alert">{error}</p>}
      {!invite && !error && <p className="muted">Creating an invite…</p>}
      {invite && (
        <>
          <p className="muted">Send this link to a friend. It expires in a day.</p>
          <div className="copy-row">
            <input readOnly aria-label="Invite link" value={link} onFocus={(e) => e.target.select()} />
            <button
              className="primary"
              onClick={async () => {
                try {
                  await navigator.clipboard.writeText(link);
                  setCopied(true);
                } catch {
                  setError("Copying was refused by the browser; select the link and copy it.");
                }
              }}
            >
              {copied ? "Copied" : "Copy"}
            </button>
          </div>
        </>
      )}
      <div className="modal-actions">
        <button onClick={onClose}>Done</button>
      </div>
    </Modal>
  );
}
