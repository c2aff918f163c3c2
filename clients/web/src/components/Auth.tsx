import { type FormEvent, useEffect, useState } from "react";

import { login, NeedsRegistrationToken, register, type Session } from "../api";
import { navigate } from "../router";
import { describeError } from "../store";

export function AuthScreen(props: {
  mode: "login" | "register";
  inviteCode?: string;
  notice: string | null;
  onSignedIn: (s: Session) => void;
}) {
  const { mode } = props;
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [token, setToken] = useState("");
  const [needsToken, setNeedsToken] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (showRegister && password !== confirm) {
      setError("The passwords do not match.");
      return;
    }
    setBusy(true);
    try {
      const s =
        !showRegister
          ? await login(username.trim(), password)
          : await register(username.trim(), password, token.trim() || undefined);
      props.onSignedIn(s);
    } catch (err) {
      if (err instanceof NeedsRegistrationToken) {
        setNeedsToken(true);
        setError(err.message);
      } else {
        setError(describeError(err));
      }
    } finally {
      setBusy(false);
    }
  };

  const [showRegister, setShowRegister] = useState(mode === "register");
  useEffect(() => setShowRegister(mode === "register"), [mode]);
  const switchTo = (m: "login" | "register") => {
    setError(null);
    setShowRegister(m === "register");
    // An invite link stays in the address bar: it is where signing in leads.
    if (!props.inviteCode) navigate(`/${m}`);
  };

  return (
    <main className="auth">
      <form className="auth-card" onSubmit={submit} aria-labelledby="auth-title">
        <h1 id="auth-title">{showRegister ? "Create an account" : "Welcome back!"}</h1>
        {props.inviteCode && <p className="muted">Sign in to accept your invite.</p>}
        {props.notice && <p className="notice">{props.notice}</p>}
        <label>
          Username
          <input
            name="username"
            autoComplete="username"
            required
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete={showRegister ? "new-password" : "current-password"}
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        {showRegister && (
          <label>
            Confirm password
            <input
              name="confirm"
              type="password"
              autoComplete="new-password"
              required
              value={confirm}
              onChange={(e) => setConfirm(e.target.value)}
            />
          </label>
        )}
        {showRegister && needsToken && (
          <label>
            Registration token
            <input
              name="token"
              required
              value={token}
              onChange={(e) => setToken(e.target.value)}
            />
          </label>
        )}
        {showRegister && !needsToken && (
          <p className="muted small">
            <button type="button" className="link" onClick={() => setNeedsToken(true)}>
              I have a registration token
            </button>
          </p>
        )}
        {error && (
          <p className="form-error" role="alert">
            {error}
          </p>
        )}
        <button className="primary" type="submit" disabled={busy}>
          {showRegister ? "Register" : "Log in"}
        </button>
        {showRegister ? (
          <p className="muted">
            Already have an account?{" "}
            <button type="button" className="link" onClick={() => switchTo("login")}>
              Log in
            </button>
          </p>
        ) : (
          <p className="muted">
            Need an account?{" "}
            <button type="button" className="link" onClick={() => switchTo("register")}>
              Register
            </button>
          </p>
        )}
      </form>
    </main>
  );
}
