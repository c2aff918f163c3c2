import { useEffect } from "react";

import { channelPath, navigate, type Route } from "../router";
import { SyncState } from "../sdk";
import { useStore } from "../store";
import { ChannelSidebar } from "./ChannelSidebar";
import { GuildRail } from "./GuildRail";
import { InvitePage } from "./InvitePage";
import { MemberList } from "./MemberList";
import { MessagePane } from "./MessagePane";
import { Toasts } from "./Toasts";

export function Shell({ route, onSignOut }: { route: Route; onSignOut: () => void }) {
  const store = useStore();
  const guildId = route.name === "guild" ? route.guildId : undefined;
  const data = guildId ? store.guildData(guildId) : undefined;
  const visible = data?.channels.filter((c) => c.kind !== "category") ?? [];
  const channelId = route.name === "guild" ? route.channelId : undefined;
  const channel = visible.find((c) => c.id === channelId);

  // /login or /register once signed in, and a guild without a channel, lead somewhere real.
  useEffect(() => {
    if (route.name === "login" || route.name === "register") navigate("/channels/@me", true);
    if (route.name === "guild" && data?.gone) {
      store.toast("That guild does not exist, or you are not a member of it.");
      navigate("/channels/@me", true);
      return;
    }
    if (route.name === "guild" && data?.loaded && !channel) {
      const first =
        visible.find((c) => c.id === data.guild?.system_channel) ??
        visible.find((c) => c.kind === "text");
      if (first) navigate(channelPath(route.guildId, first.id), true);
    }
  });

  if (route.name === "invite") {
    return (
      <>
        <InvitePage code={route.code} />
        <Toasts />
      </>
    );
  }

  const offline = store.syncState === SyncState.Error || store.syncState === SyncState.Reconnecting;
  return (
    <div className="shell">
      {offline && (
        <div className="connection-banner" role="status">
          Connection to the server lost; reconnecting…
        </div>
      )}
      <GuildRail selected={guildId} />
      <ChannelSidebar guildId={guildId} channelId={channel?.id} onSignOut={onSignOut} />
      {guildId && channel ? (
        <>
          <MessagePane guildId={guildId} channel={channel} />
          <MemberList guildId={guildId} />
        </>
      ) : (
        <main className="empty-pane">
          {store.syncState === null ? (
            <p>Connecting…</p>
          ) : guildId && !data?.loaded ? (
            <p>Loading the guild…</p>
          ) : (
            <div>
              <h2>Welcome to Paracord</h2>
              <p className="muted">
                Pick a guild on the left, create one with <b>+</b>, or open an invite link.
              </p>
            </div>
          )}
        </main>
      )}
      <Toasts />
    </div>
  );
}
