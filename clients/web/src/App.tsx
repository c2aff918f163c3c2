import { HttpApiEvent } from "./sdk";
import { useEffect, useState } from "react";

import { logout, ServerError, type Session } from "./api";
import { AuthScreen } from "./components/Auth";
import { Shell } from "./components/Shell";
import { navigate, parseRoute, usePath } from "./router";
import { describeError, loadSession, saveSession, setStore, Store } from "./store";

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
    if (!session) return;
    store?.stop();
    let refused: string | null = null;
    try {
      await logout(session);
    } catch (e) {
      // An unknown token is already logged out; anything else is said on the login form.
      if (!(e instanceof ServerError && e.errcode === "M_UNKNOWN_TOKEN")) refused = describeError(e);
    }
    saveSession(null);
    setNotice(refused && `Logged out of this browser, but the server did not confirm: ${refused}`);
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
