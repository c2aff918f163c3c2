// The message composer: Markdown text, Enter to send, Shift+Enter for a new line, Up to
// edit the last message, Esc to cancel a reply; @member and #channel autocomplete that
// inserts mentions; typing notices; attachments by button, drag and drop or paste, with
// upload progress.
import { type KeyboardEvent, type MutableRefObject, useEffect, useLayoutEffect, useRef, useState } from "react";

import type { Channel, Member } from "../api";
import { mentionQuery, messageContent, type Pill, pillUser, roomPill, userPill } from "../lib/markdown";
import { has, Permission } from "../lib/permissions";
import { describeError, useStore } from "../store";
import { PlusCircleIcon } from "./Icons";
import type { M } from "./Message";

export interface ComposerProps {
  roomId: string;
  label: string;
  blocked: string | null;
  ready: boolean;
  perms: bigint;
  members: Member[];
  channels: Channel[];
  name: (userId: string) => string;
  replyTo?: M | null;
  onCancelReply?: () => void;
  onEditLast?: () => void;
  /** In a thread's panel: its root and latest reply. */
  thread?: { root: string; last?: string };
  /** Set by the composer: uploads files dropped on the pane. */
  dropRef?: MutableRefObject<((files: File[]) => void) | null>;
}

export function Composer(p: ComposerProps) {
  const store = useStore();
  const [text, setText] = useState("");
  const [caret, setCaret] = useState(0);
  const [pills, setPills] = useState<Pill[]>([]);
  const [pick, setPick] = useState(0);
  const [dismissed, setDismissed] = useState<string | null>(null);
  const [uploading, setUploading] = useState<{ name: string; pct: number } | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);
  const file = useRef<HTMLInputElement>(null);
  const typingAt = useRef(0);
  const typingFailed = useRef(false);
  const canAttach = has(p.perms, Permission.ATTACH_FILES);

  useEffect(() => {
    if (input.current) {
      input.current.style.height = "auto";
      input.current.style.height = `${Math.min(input.current.scrollHeight, 240)}px`;
    }
  }, [text]);
  // After a mention is inserted, the caret goes after it before the next key is handled
  // (a frame later, fast typing would land behind it).
  const placeCaret = useRef<number | null>(null);
  useLayoutEffect(() => {
    if (placeCaret.current === null || !input.current) return;
    input.current.setSelectionRange(placeCaret.current, placeCaret.current);
    placeCaret.current = null;
  });
  useEffect(() => {
    if (p.replyTo) input.current?.focus();
  }, [p.replyTo]);

  const relation = (): Record<string, unknown> => {
    if (p.thread) {
      return {
        "m.relates_to": {
          rel_type: "m.thread",
          event_id: p.thread.root,
          is_falling_back: true,
          "m.in_reply_to": { event_id: p.thread.last ?? p.thread.root },
        },
      };
    }
    if (p.replyTo) return { "m.relates_to": { "m.in_reply_to": { event_id: p.replyTo.id } } };
    return {};
  };

  const typing = (on: boolean) => {
    if (on === !!typingAt.current && (!on || Date.now() - typingAt.current < 4000)) return;
    typingAt.current = on ? Date.now() : 0;
    store.client.sendTyping(p.roomId, on, on ? 8000 : 0).catch((e) => {
      if (typingFailed.current) return;
      typingFailed.current = true;
      store.toast(`Typing notice refused: ${describeError(e)}`);
    });
  };
  useEffect(() => () => {
    if (typingAt.current) void store.client.sendTyping(p.roomId, false, 0).catch(() => undefined);
  }, [store, p.roomId]);

  const send = () => {
    const src = text.trim();
    if (!src) return;
    const used = pills.filter((x) => src.includes(x.text));
    const content: Record<string, unknown> = { ...messageContent(src, used), ...relation() };
    const users = new Set(used.map(pillUser).filter((u): u is string => !!u));
    if (p.replyTo && p.replyTo.sender !== store.userId) users.add(p.replyTo.sender);
    if (users.size) content["m.mentions"] = { user_ids: [...users] };
    setText("");
    setPills([]);
    typing(false);
    p.onCancelReply?.();
    store.client.sendMessage(p.roomId, content as never).catch((e) => {
      store.toast(`Your message was not sent: ${describeError(e)}`);
    });
  };

  const upload = async (files: File[]) => {
    if (!canAttach) {
      store.toast("You do not have permission to attach files in this channel.");
      return;
    }
    const rel = relation();
    p.onCancelReply?.();
    for (const f of files) {
      setUploading({ name: f.name, pct: 0 });
      try {
        const { content_uri } = await store.client.uploadContent(f, {
          name: f.name,
          type: f.type || "application/octet-stream",
          progressHandler: ({ loaded, total }) => setUploading({ name: f.name, pct: total ? Math.round((loaded * 100) / total) : 0 }),
        });
        const info: Record<string, unknown> = { mimetype: f.type || "application/octet-stream", size: f.size };
        let msgtype = "m.file";
        if (f.type.startsWith("image/")) {
          try {
            const bmp = await createImageBitmap(f);
            info.w = bmp.width;
            info.h = bmp.height;
            bmp.close();
            msgtype = "m.image";
          } catch {
            /* not an image the browser can read: sent as a file */
          }
        }
        await store.client.sendMessage(p.roomId, { msgtype, body: f.name, filename: f.name, url: content_uri, info, ...rel } as never);
      } catch (e) {
        store.toast(`Could not upload ${f.name}: ${describeError(e)}`);
      }
    }
    setUploading(null);
  };
  if (p.dropRef) p.dropRef.current = (files) => void upload(files);

  const q = mentionQuery(text.slice(0, caret));
  const qKey = q ? `${q.at}${q.kind}` : null;
  const options: { label: string; sub?: string; pill: Pill }[] =
    !q || qKey === dismissed
      ? []
      : q.kind === "@"
        ? p.members
            .map((m) => ({ label: p.name(m.user_id), sub: m.user_id, pill: userPill(m.user_id, p.name(m.user_id)) }))
            .filter((o) => `${o.label} ${o.sub}`.toLowerCase().includes(q.query.toLowerCase()))
            .slice(0, 8)
        : p.channels
            .filter((c) => c.kind === "text" && c.name.toLowerCase().includes(q.query.toLowerCase()))
            .map((c) => ({ label: c.name, pill: roomPill(c.id, c.name) }))
            .slice(0, 8);
  const choose = (o: { pill: Pill }) => {
    if (!q) return;
    const next = `${text.slice(0, q.at)}${o.pill.text} ${text.slice(caret)}`;
    const pos = q.at + o.pill.text.length + 1;
    setText(next);
    setPills([...pills.filter((x) => x.text !== o.pill.text), o.pill]);
    setCaret(pos);
    setPick(0);
    placeCaret.current = pos;
  };

  const onKey = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.nativeEvent.isComposing) return;
    if (options.length > 0) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        setPick((pick + (e.key === "ArrowDown" ? 1 : options.length - 1)) % options.length);
        return;
      }
      if (e.key === "Enter" || e.key === "Tab") {
        e.preventDefault();
        choose(options[Math.min(pick, options.length - 1)]);
        return;
      }
      if (e.key === "Escape") {
        e.preventDefault();
        setDismissed(qKey);
        return;
      }
    }
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && p.replyTo) {
      e.preventDefault();
      p.onCancelReply?.();
    } else if (e.key === "ArrowUp" && !text && p.onEditLast) {
      e.preventDefault();
      p.onEditLast();
    }
  };

  if (p.blocked) {
    return (
      <div className="composer">
        <div className="composer-blocked" role="note" data-testid="composer-blocked">
          <textarea disabled aria-label={p.label} placeholder="You cannot send messages here" rows={1} />
          <p className="muted small">{p.blocked}</p>
        </div>
      </div>
    );
  }
  return (
    <div className="composer">
      {options.length > 0 && (
        <ul className="autocomplete" role="listbox" aria-label={q?.kind === "@" ? "Members" : "Channels"}>
          {options.map((o, i) => (
            <li key={o.pill.href} role="option" aria-selected={i === pick} className={i === pick ? "selected" : undefined} onMouseDown={(e) => { e.preventDefault(); choose(o); }}>
              <b>{q?.kind === "#" ? `#${o.label}` : o.label}</b> {o.sub && <span className="muted small">{o.sub}</span>}
            </li>
          ))}
        </ul>
      )}
      {p.replyTo && (
        <div className="replying muted small">
          <span>
            Replying to <b>{p.name(p.replyTo.sender)}</b>
          </span>
          <button className="link" aria-label="Cancel reply" onClick={p.onCancelReply}>
            ✕
          </button>
        </div>
      )}
      {uploading && (
        <div className="upload-progress small" role="status">
          Uploading {uploading.name}… {uploading.pct}%
          <progress max={100} value={uploading.pct} />
        </div>
      )}
      <div className="composer-row">
        {canAttach && (
          <>
            <button className="icon attach" aria-label="Upload a file" title="Upload a file" disabled={!p.ready} onClick={() => file.current?.click()}>
              <PlusCircleIcon />
            </button>
            <input
              ref={file}
              type="file"
              multiple
              hidden
              data-testid="file-input"
              onChange={(e) => {
                const files = [...(e.target.files ?? [])];
                e.target.value = "";
                if (files.length) void upload(files);
              }}
            />
          </>
        )}
        <textarea
          ref={input}
          rows={1}
          value={text}
          disabled={!p.ready}
          aria-label={p.label}
          placeholder={p.label}
          aria-autocomplete="list"
          onChange={(e) => {
            setText(e.target.value);
            setCaret(e.target.selectionStart);
            typing(e.target.value.trim() !== "");
          }}
          onSelect={(e) => setCaret(e.currentTarget.selectionStart)}
          onKeyDown={onKey}
          onPaste={(e) => {
            const files = [...e.clipboardData.files];
            if (files.length) {
              e.preventDefault();
              void upload(files);
            }
          }}
        />
      </div>
    </div>
  );
}
