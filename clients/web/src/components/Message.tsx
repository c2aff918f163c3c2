// One message of the list or of a thread: the quote of what it replies to, its body (text,
// image or file), "(edited)", its reactions and thread summary, and the actions on hover
// that the user's permissions allow.
import { type KeyboardEvent, lazy, Suspense, useEffect, useRef, useState } from "react";

import type { Member } from "../api";
import { MATRIX_TO, messageContent, pillsOf, plainText } from "../lib/markdown";
import { has, Permission } from "../lib/permissions";
import { Markdown } from "../lib/render";
import { formatSize, type Msg, reactedBy, stripHtmlReplyFallback, stripReplyFallback } from "../lib/timeline";
import { channelPath, navigate } from "../router";
import { EventStatus, type MatrixEvent } from "../sdk";
import { describeError, mentions, type Store, useStore } from "../store";
import { FileIcon } from "./Icons";
import { Modal } from "./Modal";

const EmojiPicker = lazy(() => import("./EmojiPicker"));

export type M = Msg<MatrixEvent | null>;

export interface MessageCtx {
  roomId: string;
  perms: bigint;
  members: Member[];
  name: (userId: string) => string;
  byId: Map<string, M>;
  editing: string | null;
  setEditing: (id: string | null) => void;
  onReply?: (m: M) => void;
  onThread?: (rootId: string) => void;
  inThread?: boolean;
}

/** The text of a message as one line (for quotes and previews). */
export function preview(m: M): string {
  const c = m.content;
  if (c.msgtype === "m.image") return "Image";
  if (c.msgtype === "m.file") return `File: ${c.body}`;
  return plainText(stripReplyFallback(typeof c.body === "string" ? c.body : ""));
}

/** Scrolls to a message that is loaded and flashes it. */
export function jumpTo(id: string) {
  const el = document.querySelector(`[data-event-id="${CSS.escape(id)}"]`);
  if (!el) return false;
  el.scrollIntoView({ block: "center" });
  el.classList.add("flash");
  setTimeout(() => el.classList.remove("flash"), 1500);
  return true;
}

/** Jumps to a message, loading older ones (a few pages at most) until it is there. */
async function jumpBack(store: Store, roomId: string, id: string) {
  for (let page = 0; !jumpTo(id); page++) {
    if (page === 10 || !(await store.loadOlder(roomId))) {
      store.toast("Could not find that message: it was deleted, or is too far back.", "info");
      return;
    }
    await new Promise((r) => requestAnimationFrame(r));
  }
}

async function react(store: Store, roomId: string, m: M, key: string) {
  const mine = m.reactions.find((r) => r.key === key);
  try {
    if (mine?.mine) await store.client.redactEvent(roomId, mine.mine);
    else if (!mine?.minePending) {
      await store.client.sendEvent(roomId, "m.reaction" as never, {
        "m.relates_to": { rel_type: "m.annotation", event_id: m.id, key },
      } as never);
    }
  } catch (e) {
    store.toast(`Could not react: ${describeError(e)}`);
  }
}

export function Message({ m, ctx }: { m: M; ctx: MessageCtx }) {
  const store = useStore();
  const [picking, setPicking] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const own = m.sender === store.userId;
  const failed = m.src?.status === EventStatus.NOT_SENT;
  const canSend = has(ctx.perms, Permission.SEND_MESSAGES);
  // Edits are checked as sends where the message is: in a thread, SEND_MESSAGES_IN_THREADS.
  const canEdit = has(ctx.perms, m.threadRoot ? Permission.SEND_MESSAGES_IN_THREADS : Permission.SEND_MESSAGES);
  const canManage = has(ctx.perms, Permission.MANAGE_MESSAGES);
  // An existing thread can always be opened; starting one needs CREATE_PUBLIC_THREADS.
  const canThread = m.threadCount > 0 || has(ctx.perms, Permission.CREATE_PUBLIC_THREADS);
  const target = m.replyTo ? ctx.byId.get(m.replyTo) : undefined;
  const mentioned = !own && mentions(m.original, store.userId);
  const sent = !m.pending;

  return (
    <div
      className={`message${m.pending && !failed ? " pending" : ""}${failed ? " failed" : ""}${mentioned ? " mentioned" : ""}`}
      data-event-id={m.id}
    >
      {m.replyTo && (
        <button
          className="reply-quote truncate"
          onClick={() => m.replyTo && void jumpBack(store, ctx.roomId, m.replyTo)}
        >
          <span aria-hidden="true">↱ </span>
          {target ? (
            <>
              <b>@{ctx.name(target.sender)}</b> {preview(target)}
            </>
          ) : (
            <i>Original message not loaded or deleted</i>
          )}
        </button>
      )}
      {ctx.editing === m.id ? (
        <InlineEditor m={m} roomId={ctx.roomId} onDone={() => ctx.setEditing(null)} />
      ) : (
        <Body m={m} />
      )}
      {m.edited && ctx.editing !== m.id && <span className="edited muted small">(edited)</span>}
      {failed && <span className="form-error small">Not sent</span>}
      {m.reactions.length > 0 && (
        <div className="reactions">
          {m.reactions.map((r) => (
            <button
              key={r.key}
              className={`reaction${r.mine || r.minePending ? " mine" : ""}`}
              aria-pressed={!!(r.mine || r.minePending)}
              title={reactedBy(r.key, r.senders.map(ctx.name))}
              aria-label={`${r.key} ${r.senders.length}`}
              onClick={() => sent && react(store, ctx.roomId, m, r.key)}
            >
              {r.key} <span className="count">{r.senders.length}</span>
            </button>
          ))}
        </div>
      )}
      {!ctx.inThread && m.threadCount > 0 && ctx.onThread && (
        <button className="thread-summary link" onClick={() => ctx.onThread!(m.id)}>
          {m.threadCount} {m.threadCount === 1 ? "reply" : "replies"}
        </button>
      )}
      {sent && (
        <div className="actions" role="toolbar" aria-label="Message actions">
          {has(ctx.perms, Permission.ADD_REACTIONS) && (
            <button className="icon" aria-label="Add reaction" title="Add reaction" onClick={() => setPicking(true)} data-icon="☺" />
          )}
          {canSend && ctx.onReply && (
            <button className="icon" aria-label="Reply" title="Reply" onClick={() => ctx.onReply!(m)} data-icon="↩" />
          )}
          {!ctx.inThread && ctx.onThread && canThread && (
            <button
              className="icon"
              aria-label={m.threadCount > 0 ? "Open thread" : "Create thread"}
              title={m.threadCount > 0 ? "Open thread" : "Create thread"}
              onClick={() => ctx.onThread!(m.id)}
             data-icon="⋔" />
          )}
          {own && canEdit && !m.content.url && (
            <button className="icon" aria-label="Edit" title="Edit" onClick={() => ctx.setEditing(m.id)} data-icon="✎" />
          )}
          {(own || canManage) && (
            <button className="icon danger" aria-label="Delete" title="Delete" onClick={() => setDeleting(true)} data-icon="✕" />
          )}
        </div>
      )}
      {picking && (
        <Suspense fallback={null}>
          <EmojiPicker
            onPick={(key) => {
              setPicking(false);
              void react(store, ctx.roomId, m, key);
            }}
            onClose={() => setPicking(false)}
          />
        </Suspense>
      )}
      {deleting && (
        <Modal title="Delete message" onClose={() => setDeleting(false)}>
          <p>Are you sure you want to delete this message?</p>
          <blockquote className="muted">{preview(m)}</blockquote>
          <div className="modal-actions">
            <button onClick={() => setDeleting(false)}>Cancel</button>
            <button
              className="primary danger"
              onClick={async () => {
                setDeleting(false);
                try {
                  await store.client.redactEvent(ctx.roomId, m.id);
                } catch (e) {
                  store.toast(`Could not delete the message: ${describeError(e)}`);
                }
              }}
            >
              Delete
            </button>
          </div>
        </Modal>
      )}
    </div>
  );
}

function Body({ m }: { m: M }) {
  const store = useStore();
  const c = m.content;
  if (c.msgtype === "m.image" && typeof c.url === "string") return <ImageAttachment content={c} />;
  if ((c.msgtype === "m.file" || c.msgtype === "m.video" || c.msgtype === "m.audio") && typeof c.url === "string") {
    return <FileCard content={c} />;
  }
  const body = typeof c.body === "string" ? c.body : "";
  const html = typeof c.formatted_body === "string" ? stripHtmlReplyFallback(c.formatted_body) : "";
  // A #channel pill opens the channel when it is one of a joined guild's.
  const onPill = (href: string) => {
    const roomId = decodeURIComponent(href.slice(MATRIX_TO.length).split("?")[0]);
    const guild = [...store.guilds.entries()].find(([, d]) => d.channels.some((c) => c.id === roomId))?.[0];
    if (guild) navigate(channelPath(guild, roomId));
    else store.toast("That channel is not one you can see.", "info");
  };
  return <Markdown source={m.replyTo ? stripReplyFallback(body) : body} pills={pillsOf(html)} self={store.userId} onPill={onPill} />;
}

function useBlob(mxc: string, thumb?: { w: number; h: number }) {
  const store = useStore();
  const [url, setUrl] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    store.mediaBlob(mxc, thumb).then(
      (u) => live && setUrl(u),
      (e) => live && setError(describeError(e)),
    );
    return () => {
      live = false;
    };
  }, [store, mxc, thumb?.w, thumb?.h]);
  return { url, error };
}

function ImageAttachment({ content }: { content: Record<string, any> }) {
  const w = Number(content.info?.w) || 400;
  const h = Number(content.info?.h) || 300;
  const scale = Math.min(1, 400 / w, 300 / h);
  const { url, error } = useBlob(content.url, { w: 800, h: 600 });
  const [open, setOpen] = useState(false);
  const alt = typeof content.body === "string" ? content.body : "image";
  return (
    <>
      <button className="image" style={{ width: w * scale, height: h * scale }} onClick={() => setOpen(true)} aria-label={`Open image ${alt}`}>
        {url ? <img src={url} alt={alt} /> : <span className="muted small">{error ? `Image failed to load: ${error}` : "Loading image…"}</span>}
      </button>
      {open && <Lightbox content={content} onClose={() => setOpen(false)} />}
    </>
  );
}

function Lightbox({ content, onClose }: { content: Record<string, any>; onClose: () => void }) {
  const { url, error } = useBlob(content.url);
  useEffect(() => {
    const onKey = (e: globalThis.KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  });
  return (
    <div className="lightbox" role="dialog" aria-modal="true" aria-label="Image viewer" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      {url ? <img src={url} alt={content.body} /> : <p>{error ? `Could not load the image: ${error}` : "Loading…"}</p>}
      <div className="lightbox-bar">
        {url && (
          <a href={url} download={content.body}>
            Download
          </a>
        )}
        <button className="link" onClick={onClose}>Close</button>
      </div>
    </div>
  );
}

function FileCard({ content }: { content: Record<string, any> }) {
  const store = useStore();
  const name = typeof content.filename === "string" ? content.filename : String(content.body ?? "file");
  const size = Number(content.info?.size);
  const download = async () => {
    try {
      const url = await store.mediaBlob(content.url);
      const a = document.createElement("a");
      a.href = url;
      a.download = name;
      a.click();
    } catch (e) {
      store.toast(`Could not download ${name}: ${describeError(e)}`);
    }
  };
  return (
    <div className="file-card">
      <span className="file-icon"><FileIcon /></span>
      <div className="truncate">
        <div className="truncate file-name">{name}</div>
        <div className="muted small">{Number.isFinite(size) ? formatSize(size) : ""}</div>
      </div>
      <button className="icon" aria-label={`Download ${name}`} title="Download" onClick={download}>
        ⤓
      </button>
    </div>
  );
}

function InlineEditor({ m, roomId, onDone }: { m: M; roomId: string; onDone: () => void }) {
  const store = useStore();
  const initial = typeof m.content.body === "string" ? stripReplyFallback(m.content.body) : "";
  const [text, setText] = useState(initial);
  const ref = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (el) {
      el.focus();
      el.setSelectionRange(el.value.length, el.value.length);
    }
  }, []);
  const save = async () => {
    const src = text.trim();
    onDone();
    if (!src || src === initial) return;
    const pills = pillsOf(m.content.formatted_body);
    const next = messageContent(src, pills);
    const content: Record<string, unknown> = {
      msgtype: "m.text",
      body: `* ${next.body}`,
      "m.new_content": { ...next, ...(m.original["m.mentions"] ? { "m.mentions": m.original["m.mentions"] } : {}) },
      "m.relates_to": { rel_type: "m.replace", event_id: m.id },
    };
    if (next.formatted_body) {
      content.format = next.format;
      content.formatted_body = `* ${next.formatted_body}`;
    }
    try {
      await store.client.sendEvent(roomId, "m.room.message" as never, content as never);
    } catch (e) {
      store.toast(`Your edit was not saved: ${describeError(e)}`);
    }
  };
  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === "Escape") {
      e.preventDefault();
      onDone();
    } else if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void save();
    }
  };
  return (
    <div className="inline-editor">
      <textarea ref={ref} aria-label="Edit message" value={text} rows={Math.min(8, text.split("\n").length)} onChange={(e) => setText(e.target.value)} onKeyDown={onKey} />
      <p className="muted small">
        Escape to <button className="link" onClick={onDone}>cancel</button> • Enter to <button className="link" onClick={() => void save()}>save</button>
      </p>
    </div>
  );
}
