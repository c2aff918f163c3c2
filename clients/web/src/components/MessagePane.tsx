import { type DragEvent, useEffect, useLayoutEffect, useRef, useState } from "react";

import type { Channel, Member } from "../api";
import { groupMessages } from "../lib/grouping";
import { channelPermissions, colourRole, has, Permission, type Role, sendBlockedReason } from "../lib/permissions";
import { typingText } from "../lib/timeline";
import { describeError, type Store, useStore } from "../store";
import { Composer } from "./Composer";
import { type M, Message, type MessageCtx, preview } from "./Message";

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
  const me = data.members.find((m) => m.user_id === store.userId) ?? { user_id: store.userId, roles: [] };
  const now = Date.now();
  const perms = data.guild ? channelPermissions(data.guild.owner, data.roles, me, channel.permission_overwrites, now) : 0n;
  const blocked = data.loaded && data.guild ? sendBlockedReason(perms, me, now) : null;
  const timeline = store.timeline(channel.id);
  const [replyTo, setReplyTo] = useState<M | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const [thread, setThread] = useState<string | null>(null);
  const [dragging, setDragging] = useState(false);
  const dropRef = useRef<((files: File[]) => void) | null>(null);

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

  const name = (userId: string) => displayName(store, data.members, userId, channel.id);
  const ctx: MessageCtx = {
    roomId: channel.id,
    perms,
    members: data.members,
    name,
    byId: timeline.byId,
    editing,
    setEditing,
    onReply: (m) => {
      setEditing(null);
      setReplyTo(m);
    },
    onThread: (id) => {
      setThread(id);
      void store.loadThread(channel.id, id);
    },
  };
  const editLast = () => {
    const last = [...timeline.main].reverse().find((m) => m.sender === store.userId && !m.pending && !m.content.url);
    if (last) setEditing(last.id);
  };
  const canDrop = has(perms, Permission.ATTACH_FILES) && !blocked;
  const dragProps = {
    onDragOver: (e: DragEvent) => {
      if (!canDrop || !e.dataTransfer.types.includes("Files")) return;
      e.preventDefault();
      setDragging(true);
    },
    onDragLeave: (e: DragEvent) => e.currentTarget === e.target && setDragging(false),
    onDrop: (e: DragEvent) => {
      setDragging(false);
      const files = [...e.dataTransfer.files];
      if (!files.length || !canDrop) return;
      e.preventDefault();
      dropRef.current?.(files);
    },
  };

  return (
    <div className={`pane-wrap${thread ? " with-thread" : ""}`}>
      <main className="pane" aria-label={`#${channel.name}`} {...dragProps}>
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
          <MessageList key={`list-${channel.id}`} channel={channel} messages={timeline.main} ctx={ctx} />
        ) : (
          <div className="messages">
            <p className="muted center">{joinError ? `Could not join #${channel.name}: ${joinError}` : `Joining #${channel.name}…`}</p>
          </div>
        )}
        {dragging && <div className="drop-overlay">Drop to upload to #{channel.name}</div>}
        <Composer
          key={`composer-${channel.id}`}
          roomId={channel.id}
          label={`Message #${channel.name}`}
          blocked={blocked}
          ready={membership === "join"}
          perms={perms}
          members={data.members}
          channels={data.channels}
          name={name}
          replyTo={replyTo}
          onCancelReply={() => setReplyTo(null)}
          onEditLast={editLast}
          dropRef={dropRef}
        />
        <Typing roomId={channel.id} name={name} />
      </main>
      {thread && (
        <ThreadPanel key={thread} root={thread} ctx={ctx} blocked={blocked} data={data} onClose={() => setThread(null)} />
      )}
    </div>
  );
}

function Typing({ roomId, name }: { roomId: string; name: (u: string) => string }) {
  const store = useStore();
  return (
    <div className="typing small" role="status" aria-live="polite">
      {typingText(store.typing(roomId).map(name))}
    </div>
  );
}

function ThreadPanel(props: {
  root: string;
  ctx: MessageCtx;
  blocked: string | null;
  data: ReturnType<Store["guildData"]>;
  onClose: () => void;
}) {
  const store = useStore();
  const { ctx } = props;
  const t = store.timeline(ctx.roomId);
  const root = t.byId.get(props.root);
  const replies = t.threads.get(props.root) ?? [];
  const threadCtx: MessageCtx = { ...ctx, byId: t.byId, inThread: true, onReply: undefined };
  const canReply = has(ctx.perms, Permission.SEND_MESSAGES_IN_THREADS) || (!replies.length && has(ctx.perms, Permission.CREATE_PUBLIC_THREADS));
  const scroller = useRef<HTMLDivElement>(null);
  useLayoutEffect(() => {
    if (scroller.current) scroller.current.scrollTop = scroller.current.scrollHeight;
  }, [replies.length]);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && !(e.target instanceof HTMLTextAreaElement) && props.onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  });
  return (
    <aside className="thread-panel" aria-label="Thread">
      <header className="pane-header">
        <h1 className="truncate">Thread{root ? `: ${preview(root)}` : ""}</h1>
        <button className="icon" aria-label="Close thread" title="Close" onClick={props.onClose}>
          ✕
        </button>
      </header>
      <div className="messages" ref={scroller} role="log" aria-label="Thread messages">
        {root && <ThreadItem m={root} ctx={threadCtx} />}
        <div className="thread-count muted small">
          {replies.length} {replies.length === 1 ? "reply" : "replies"}
        </div>
        {replies.map((m) => (
          <ThreadItem key={m.id} m={m} ctx={threadCtx} />
        ))}
      </div>
      <Composer
        roomId={ctx.roomId}
        label="Reply in thread"
        blocked={canReply ? null : props.blocked?.startsWith("You are timed out") ? props.blocked : "You do not have permission to send messages in this thread."}
        ready
        perms={ctx.perms}
        members={ctx.members}
        channels={props.data.channels}
        name={ctx.name}
        // The fallback reply points at the latest reply the server has given an id.
        thread={{ root: props.root, last: [...replies].reverse().find((r) => r.id.startsWith("$"))?.id }}
      />
    </aside>
  );
}

function ThreadItem({ m, ctx }: { m: M; ctx: MessageCtx }) {
  return (
    <article className="group" data-sender={m.sender}>
      <div className="avatar small" aria-hidden="true">{ctx.name(m.sender)[0]?.toUpperCase()}</div>
      <div className="group-body">
        <header>
          <span className="author">{ctx.name(m.sender)}</span>
          <time dateTime={new Date(m.ts).toISOString()}>{when(m.ts)}</time>
        </header>
        <Message m={m} ctx={ctx} />
      </div>
    </article>
  );
}

function MessageList({ channel, messages, ctx }: { channel: Channel; messages: M[]; ctx: MessageCtx }) {
  const store = useStore();
  const data = store.guildData(channel.guild_id);
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

  const items = groupMessages(messages.map((m) => ({ ...m, reply: !!m.replyTo, m })));

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
              {ctx.name(item.sender)[0]?.toUpperCase()}
            </div>
            <div className="group-body">
              <header>
                <span className="author" style={{ color: nameColour(data.roles, data.members, item.sender) }}>
                  {ctx.name(item.sender)}
                </span>
                <time dateTime={new Date(item.messages[0].ts).toISOString()}>
                  {when(item.messages[0].ts)}
                </time>
              </header>
              {item.messages.map(({ m }) => (
                <Message key={m.id} m={m} ctx={ctx} />
              ))}
            </div>
          </article>
        ),
      )}
    </div>
  );
}
