import { type FormEvent, useState } from "react";

import { channelPath, navigate } from "../router";
import { describeError, useStore } from "../store";
import { HomeIcon } from "./Icons";
import { Modal } from "./Modal";

export function initials(name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean);
  return (words.length > 1 ? words.slice(0, 3).map((w) => [...w][0]).join("") : [...name].slice(0, 2).join("")) || "?";
}

export function GuildRail({ selected }: { selected?: string }) {
  const store = useStore();
  const [creating, setCreating] = useState(false);
  return (
    <nav className="rail" aria-label="Guilds">
      <ul role="list">
        <li className={selected ? undefined : "selected"}>
          <button
            className="guild-icon home"
            title="Home"
            aria-label="Home"
            aria-current={selected ? undefined : "page"}
            onClick={() => navigate("/channels/@me")}
          >
            <HomeIcon />
          </button>
        </li>
        <li className="rail-separator" aria-hidden="true" />
        {store.guildRooms().map((room) => {
          const name = store.guilds.get(room.roomId)?.guild?.name ?? room.name;
          const unread = store.guildUnread(room.roomId);
          const mentioned = store.guildMentions(room.roomId);
          return (
            <li key={room.roomId} className={room.roomId === selected ? "selected" : undefined}>
              {unread && <span className="pill" aria-hidden="true" />}
              <button
                className="guild-icon"
                title={name}
                aria-label={`${name}${unread ? " (unread)" : ""}`}
                aria-current={room.roomId === selected ? "page" : undefined}
                onClick={() => navigate(channelPath(room.roomId))}
              >
                {initials(name)}
              </button>
              {mentioned > 0 && (
                <span className="badge rail-badge" data-testid="mention-badge" title={`${mentioned} mention${mentioned === 1 ? "" : "s"}`}>
                  {mentioned}
                </span>
              )}
            </li>
          );
        })}
        <li>
          <button className="guild-icon add" aria-label="Create a guild" title="Create a guild" onClick={() => setCreating(true)}>
            +
          </button>
        </li>
      </ul>
      {creating && <CreateGuild onClose={() => setCreating(false)} />}
    </nav>
  );
}

function CreateGuild({ onClose }: { onClose: () => void }) {
  const store = useStore();
  const [name, setName] = useState(`${store.client.getUser(store.userId)?.displayName ?? "My"}'s guild`);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const g = await store.paracord.createGuild(name.trim());
      store.guilds.set(g.id, {
        guild: g,
        channels: g.channels,
        roles: g.roles,
        members: [],
        loaded: true,
      });
      store.scheduleRefresh(g.id, 0);
      onClose();
      navigate(channelPath(g.id, g.system_channel));
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title="Create a guild" onClose={onClose}>
      <form onSubmit={submit}>
        <label>
          Guild name
          <input name="guild-name" required maxLength={100} value={name} onChange={(e) => setName(e.target.value)} autoFocus />
        </label>
        {error && <p className="form-error" role="alert">{error}</p>}
        <div className="modal-actions">
          <button type="button" onClick={onClose}>Cancel</button>
          <button className="primary" type="submit" disabled={busy}>Create</button>
        </div>
      </form>
    </Modal>
  );
}
