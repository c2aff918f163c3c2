import { useEffect, useState } from "react";

import type { Invite } from "../api";
import { channelPath, navigate } from "../router";
import { describeError, useStore } from "../store";
import { initials } from "./GuildRail";

/** /invite/{code}: what the invite leads to, then joining on click. */
export function InvitePage({ code }: { code: string }) {
  const store = useStore();
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    let live = true;
    store.paracord.invite(code).then(
      (i) => live && setInvite(i),
      (e) => live && setError(describeError(e)),
    );
    return () => {
      live = false;
    };
  }, [store, code]);

  const accept = async () => {
    setBusy(true);
    setError(null);
    try {
      const r = await store.paracord.acceptInvite(code);
      store.scheduleRefresh(r.guild_id, 0);
      navigate(channelPath(r.guild_id, r.channel_id));
    } catch (e) {
      setError(describeError(e));
      setBusy(false);
    }
  };

  return (
    <main className="auth">
      <section className="auth-card invite-card" aria-labelledby="invite-title">
        {invite ? (
          <>
            <div className="guild-icon large" aria-hidden="true">{initials(invite.guild.name)}</div>
            <p className="muted">You have been invited to join</p>
            <h1 id="invite-title">{invite.guild.name}</h1>
            {invite.guild.description && <p>{invite.guild.description}</p>}
            <p className="muted" data-testid="member-count">
              {invite.guild.member_count} {invite.guild.member_count === 1 ? "member" : "members"} · #{invite.channel.name}
            </p>
            <button className="primary" onClick={accept} disabled={busy}>
              Accept invite
            </button>
          </>
        ) : (
          <h1 id="invite-title">{error ? "This invite cannot be used" : "Loading the invite…"}</h1>
        )}
        {error && <p className="form-error" role="alert">{error}</p>}
        <button className="link" onClick={() => navigate("/channels/@me")}>
          Back to Paracord
        </button>
      </section>
    </main>
  );
}
