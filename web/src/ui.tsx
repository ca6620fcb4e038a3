/** Pieces both pages share: the sign-in form, the connection badge, the theme toggle. */
import { useState, type FormEvent } from 'react';
import { DevSignInUnavailable, devToken, type Session } from './auth';
import { ApiError } from './api';
import { useTheme } from './theme';

export function SignIn({
  title,
  admin = false,
  notice,
  onSignedIn,
}: {
  title: string;
  admin?: boolean;
  notice?: string | null;
  onSignedIn: (session: Session) => void;
}) {
  const [name, setName] = useState('');
  const [asAdmin, setAsAdmin] = useState(admin);
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);

  const byName = async (event: FormEvent) => {
    event.preventDefault();
    if (!name.trim()) return;
    setBusy(true);
    setProblem(null);
    try {
      const issued = await devToken(name.trim(), asAdmin);
      onSignedIn({ token: issued.token, devName: name.trim(), devAdmin: asAdmin });
    } catch (error) {
      setProblem(
        error instanceof DevSignInUnavailable || error instanceof ApiError
          ? error.message
          : 'Could not sign in. Please try again.',
      );
    } finally {
      setBusy(false);
    }
  };

  const byToken = (event: FormEvent) => {
    event.preventDefault();
    if (token.trim()) onSignedIn({ token: token.trim() });
  };

  return (
    <main className="signin">
      <h1>{title}</h1>
      {notice && <p className="notice" role="status">{notice}</p>}
      <form onSubmit={byName} className="card">
        <label htmlFor="signin-name">Your name</label>
        <input
          id="signin-name"
          name="name"
          autoComplete="username"
          autoFocus
          maxLength={64}
          value={name}
          onChange={(e) => setName(e.target.value)}
        />
        {admin && (
          <label className="check">
            <input type="checkbox" checked={asAdmin} onChange={(e) => setAsAdmin(e.target.checked)} />
            admin
          </label>
        )}
        <button type="submit" disabled={busy || !name.trim()}>
          Sign in
        </button>
        <p className="hint">Development servers hand out a token for any name.</p>
      </form>
      <form onSubmit={byToken} className="card">
        <label htmlFor="signin-token">Or paste a token (JWT)</label>
        <input
          id="signin-token"
          name="token"
          autoComplete="off"
          spellCheck={false}
          value={token}
          onChange={(e) => setToken(e.target.value)}
        />
        <button type="submit" disabled={!token.trim()}>
          Use token
        </button>
        <p className="hint">
          You can also open this page as <code>?token=&lt;JWT&gt;</code>.
        </p>
      </form>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
    </main>
  );
}

const STATE_WORDS: Record<string, string> = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  refused: 'Refused',
  'signed-out': 'Signed out',
  unauthorised: 'Not authorised',
};

export function ConnectionBadge({ state, detail }: { state: string; detail?: string | null }) {
  return (
    <span className={`badge badge-${state}`} role="status" title={detail ?? undefined} data-state={state}>
      <span className="dot" aria-hidden="true" />
      {STATE_WORDS[state] ?? state}
    </span>
  );
}

export function ThemeToggle() {
  const { dark, toggle } = useTheme();
  return (
    <button
      type="button"
      className="icon"
      onClick={toggle}
      aria-label={dark ? 'Switch to light theme' : 'Switch to dark theme'}
      title={dark ? 'Light theme' : 'Dark theme'}
    >
      {dark ? '☀' : '☾'}
    </button>
  );
}
