import { EventStatus, type MatrixEvent } from "../sdk";
import { type KeyboardEvent, useEffect, useLayoutEffect, useRef, useState } from "react";

import type { Channel, Member } from "../api";
import { groupMessages } from "../lib/grouping";
import { messageContent } from "../lib/markdown";
import { channelPermissions, colourRole, type Role, sendBlockedReason } from "../lib/permissions";
import { Markdown } from "../lib/render";
import { describeError, type Store, useStore } from "../store";

export function displayName(store: Store, members: Member[], userId: string, roomId?: string): string {
  const m = members.find((x) => x.user_id === userId);
  return (
    m?.nick ||
    m?.displayname ||
    (roomId ? store.client.getRoom(roomId)?.getMember(userId)?.name : undefined) ||
    userId.replace(/^@/, "").split(":")[0]
  );
}

export function nameColour(roles: Role[], members: Member[], userId: string): string | undefined {
  const role = colourRole(roles, members.find((m) => m.user_id === userId)?.roles ?? []);
  return role ? `#${role.color.toString(16).padStart(6, "0")}` : undefined;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "long" });
const shortFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "short" });

/** "Today at 10:42", "Yesterday at 22:10", or the date and time. */
function when(ts: number): string {
  const day = (t: number) => new Date(t).toDateString();
  const now = Date.now();
  if (day(ts) === day(now)) return `Today at ${timeFmt.format(ts)}`;
  if (day(ts) === day(now - 86_400_000)) return `Yesterday at ${timeFmt.format(ts)}`;
  return `${shortFmt.format(ts)} ${timeFmt.format(ts)}`;
}

export function MessagePane({ guildId, channel }: { guildId: string; channel: Channel }) {
  const store = useStore();
  const data = store.guildData(guildId);
  const room = store.client.getRoom(channel.id);
  const events = store.messages(channel.id);
  const me = data.members.find((m) => m.user_id === store.userId) ?? { user_id: store.userId, roles: [] };
  const now = Date.now();
  const blocked =
    data.loaded && data.guild
      ? sendBlockedReason(
          channelPermissions(data.guild.owner, data.roles, me, channel.permission_overwrites, now),
          me,
          now,
        )
      : null;

  useEffect(() => {
    if (document.visibilityState === "visible") store.markRead(channel.id);
  });

  // A visible channel this user is not in (left from another client, say): join it, through
  // the guild host. Guild members may join any channel they can see (spec/guilds.md §2.1).
  const membership = room?.getMyMembership();
  const host = data.guild?.owner.split(":").slice(1).join(":");
  const [joinError, setJoinError] = useState<string | null>(null);
  useEffect(() => {
    if (!store.syncState || membership === "join" || !host || joinError) return;
    let live = true;
    const timer = setTimeout(() => {
      store.client.joinRoom(channel.id, { viaServers: [host] }).catch((e) => {
        if (!live) return;
        setJoinError(describeError(e));
        store.toast(`Could not join #${channel.name}: ${describeError(e)}`);
      });
    }, 3000);
    return () => {
      live = false;
      clearTimeout(timer);
    };
  }, [store, store.syncState, channel.id, channel.name, membership, host, joinError]);

  return (
    <main className="pane" aria-label={`#${channel.name}`}>
      <header className="pane-header">
        <span className="hash" aria-hidden="true">#</span>
        <h1>{channel.name}</h1>
        {channel.topic && (
          <>
            <span className="divider" aria-hidden="true" />
            <span className="topic truncate" title={channel.topic}>{channel.topic}</span>
          </>
        )}
      </header>
      {room && membership === "join" ? (
        <MessageList key={`list-${channel.id}`} channel={channel} events={events} guildId={guildId} />
      ) : (
        <div className="messages">
          <p className="muted center">{joinError ? `Could not join #${channel.name}: ${joinError}` : `Joining #${channel.name}…`}</p>
        </div>
      )}
      <Composer key={`composer-${channel.id}`} channel={channel} blocked={blocked} ready={membership === "join"} />
    </main>
  );
}

function MessageList({ channel, events, guildId }: { channel: Channel; events: MatrixEvent[]; guildId: string }) {
  const store = useStore();
  const data = store.guildData(guildId);
  const scroller = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const before = useRef<number | null>(null);
  const [loading, setLoading] = useState(false);
  const [start, setStart] = useState(false);

  const older = async () => {
    if (loading || start) return;
    setLoading(true);
    before.current = scroller.current ? scroller.current.scrollHeight - scroller.current.scrollTop : null;
    const more = await store.loadOlder(channel.id);
    setStart(!more);
    setLoading(false);
  };

  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    if (before.current !== null) {
      // Older messages were added above: keep what the user was reading in place.
      el.scrollTop = el.scrollHeight - before.current;
      before.current = null;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    // Not enough to scroll yet: fetch more so scrolling up has something to reach.
    if (el.scrollHeight <= el.clientHeight && !start && !loading) void older();
  });

  const items = groupMessages(
    events.map((e) => ({ id: e.getId() ?? e.getTxnId() ?? "", sender: e.getSender() ?? "", ts: e.getTs(), e })),
  );

  return (
    <div
      className="messages"
      ref={scroller}
      role="log"
      aria-label={`Messages in #${channel.name}`}
      onScroll={(ev) => {
        const el = ev.currentTarget;
        atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
        if (el.scrollTop < 80) void older();
      }}
    >
      {start ? (
        <div className="channel-start">
          <h2>Welcome to #{channel.name}!</h2>
          <p className="muted">This is the start of the #{channel.name} channel.</p>
        </div>
      ) : (
        <p className="muted center small">{loading ? "Loading older messages…" : " "}</p>
      )}
      {items.map((item) =>
        item.kind === "day" ? (
          <div key={item.key} className="day-divider" role="separator">
            <span>{dayFmt.format(item.ts)}</span>
          </div>
        ) : (
          <article key={item.key} className="group" data-sender={item.sender}>
            <div className="avatar" aria-hidden="true">
              {displayName(store, data.members, item.sender, channel.id)[0]?.toUpperCase()}
            </div>
            <div className="group-body">
              <header>
                <span className="author" style={{ color: nameColour(data.roles, data.members, item.sender) }}>
                  {displayName(store, data.members, item.sender, channel.id)}
                </span>
                <time dateTime={new Date(item.messages[0].ts).toISOString()}>
                  {when(item.messages[0].ts)}
                </time>
              </header>
              {item.messages.map(({ e, id }) => {
                const body = e.getContent().body;
                const failed = e.status === EventStatus.NOT_SENT;
                return (
                  <div
                    key={id}
                    className={`message${e.status && !failed ? " pending" : ""}${failed ? " failed" : ""}`}
                    data-event-id={e.getId()}
                  >
                    <Markdown source={typeof body === "string" ? body : ""} />
                    {failed && <span className="form-error small">Not sent</span>}
                  </div>
                );
              })}
            </div>
          </article>
        ),
      )}
    </div>
  );
}

function Composer({ channel, blocked, ready }: { channel: Channel; blocked: string | null; ready: boolean }) {
  const store = useStore();
  const [text, setText] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);

  useEffect(() => {
    if (input.current) {
      input.current.style.height = "auto";
      input.current.style.height = `${Math.min(input.current.scrollHeight, 240)}px`;
    }
  }, [text]);

  const send = () => {
    const src = text.trim();
    if (!src) return;
    setText("");
    store.client
      // matrix-js-sdk's content types do not cover every msgtype shape; this one is m.text.
      .sendMessage(channel.id, messageContent(src) as never)
      .catch((e) => {
        store.toast(`Your message was not sent: ${describeError(e)}`);
      });
  };

  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    }
  };

  return (
    <div className="composer">
      {blocked ? (
        <div className="composer-blocked" role="note" data-testid="composer-blocked">
          <textarea disabled aria-label={`Message #${channel.name}`} placeholder="You cannot send messages here" rows={1} />
          <p className="muted small">{blocked}</p>
        </div>
      ) : (
        <textarea
          ref={input}
          rows={1}
          value={text}
          disabled={!ready}
          aria-label={`Message #${channel.name}`}
          placeholder={`Message #${channel.name}`}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={onKey}
        />
      )}
    </div>
  );
}
