import { HttpApiEvent } from "./sdk";
import { useEffect, useState } from "react";

import type { Session } from "./api";
import { AuthScreen } from "./components/Auth";
import { Shell } from "./components/Shell";
import { navigate, parseRoute, usePath } from "./router";
import { loadSession, saveSession, setStore, Store } from "./store";

export function App() {
  const [session, setSession] = useState<Session | null>(loadSession);
  const [store, setStoreState] = useState<Store | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const path = usePath();
  const route = parseRoute(path);

  useEffect(() => {
    if (!session) return;
    const s = new Store(session);
    s.client.on(HttpApiEvent.SessionLoggedOut, () => {
      saveSession(null);
      setNotice("Your session has ended. Log in again.");
      setSession(null);
    });
    setStore(s);
    setStoreState(s);
    void s.start();
    return () => {
      s.stop();
      setStore(null);
      setStoreState(null);
    };
  }, [session]);

  const signedIn = (s: Session) => {
    saveSession(s);
    setNotice(null);
    setSession(s);
    if (route.name === "login" || route.name === "register") navigate("/channels/@me", true);
  };

  const signOut = async () => {
    if (store) {
      try {
        await store.client.logout(true);
      } catch {
        // The token is forgotten here whatever the server said; it can no longer be used
        // from this browser.
      }
    }
    saveSession(null);
    setSession(null);
    navigate("/login");
  };

  if (!session) {
    return (
      <AuthScreen
        mode={route.name === "register" ? "register" : "login"}
        inviteCode={route.name === "invite" ? route.code : undefined}
        notice={notice}
        onSignedIn={signedIn}
      />
    );
  }
  if (!store) return <div className="splash">Connecting…</div>;
  return <Shell route={route} onSignOut={signOut} />;
}
