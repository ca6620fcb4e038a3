/** The admin dashboard: live figures, 15-minute charts, running replies with Stop. */
import { useEffect, useRef, useState } from 'react';
import { useSession, type SessionApi } from '../auth';
import type { AdminStats, RunningReply } from '../protocol';
import { ConnectionBadge, SignIn, ThemeToggle } from '../ui';
import { LineChart } from './LineChart';
import { useAdmin } from './useAdmin';

export function AdminApp() {
  const auth = useSession('admin');
  if (!auth.session) {
    return <SignIn title="tokenwire admin" admin onSignedIn={auth.signIn} />;
  }
  return <Dashboard key={auth.session.token} auth={auth} />;
}

const number = (v: number) => v.toLocaleString(undefined, { maximumFractionDigits: 1 });
const ms = (v: number | null) => (v == null ? '—' : `${Math.round(v).toLocaleString()} ms`);

function Figure({ name, label, value }: { name: string; label: string; value: string }) {
  return (
    <div className="figure" data-figure={name}>
      <span className="label">{label}</span>
      <span className="value">{value}</span>
    </div>
  );
}

function age(iso: string, now: number): string {
  const s = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86_400)} d`;
}

function Replies({ replies, stop }: { replies: RunningReply[]; stop: (id: string) => Promise<string | null> }) {
  const [stopping, setStopping] = useState<Set<string>>(new Set());
  const [problem, setProblem] = useState<string | null>(null);
  const now = Date.now();
  if (!replies.length) return <p className="empty">No reply is streaming.</p>;
  return (
    <>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
      <div className="table-wrap">
        <table className="replies">
          <thead>
            <tr>
              <th>User</th>
              <th>Model</th>
              <th>Running</th>
              <th>Chars</th>
              <th>
                <span className="sr-only">Action</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {replies.map((r) => (
              <tr key={r.messageId} data-message-id={r.messageId}>
                <td title={`conversation ${r.conversationId}`}>{r.userId}</td>
                <td>{r.model}</td>
                <td>{age(r.startedAt, now)}</td>
                <td>{r.chars.toLocaleString()}</td>
                <td>
                  <button
                    type="button"
                    className="stop"
                    disabled={stopping.has(r.messageId)}
                    onClick={() => {
                      setStopping((s) => new Set(s).add(r.messageId));
                      void stop(r.messageId).then((error) => {
                        setProblem(error);
                        if (error) {
                          setStopping((s) => {
                            const next = new Set(s);
                            next.delete(r.messageId);
                            return next;
                          });
                        }
                      });
                    }}
                  >
                    Stop
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}

function Tables({ stats }: { stats: AdminStats }) {
  const errors = Object.entries(stats.errorsByCode).sort((a, b) => b[1] - a[1]);
  const usage = Object.entries(stats.usageByModel).sort((a, b) => b[1].replies - a[1].replies);
  return (
    <div className="tables">
      <section>
        <h2>Errors by code</h2>
        {errors.length ? (
          <table className="errors-by-code">
            <tbody>
              {errors.map(([code, count]) => (
                <tr key={code} data-code={code}>
                  <td>
                    <code>{code}</code>
                  </td>
                  <td className="num">{count.toLocaleString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : (
          <p className="empty">No errors.</p>
        )}
      </section>
      <section>
        <h2>Usage by model</h2>
        {usage.length ? (
          <div className="table-wrap">
            <table className="usage">
              <thead>
                <tr>
                  <th>Model</th>
                  <th className="num">Replies</th>
                  <th className="num">Prompt</th>
                  <th className="num">Completion</th>
                </tr>
              </thead>
              <tbody>
                {usage.map(([model, u]) => (
                  <tr key={model} data-model={model}>
                    <td>{model}</td>
                    <td className="num">{u.replies.toLocaleString()}</td>
                    <td className="num">{u.promptTokens.toLocaleString()}</td>
                    <td className="num">{u.completionTokens.toLocaleString()}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <p className="empty">No replies yet.</p>
        )}
      </section>
    </div>
  );
}

function Dashboard({ auth }: { auth: SessionApi }) {
  const tokenRef = useRef(auth.session?.token ?? null);
  tokenRef.current = auth.session?.token ?? null;
  const admin = useAdmin(() => tokenRef.current, auth.renew);
  const { stats, samples } = admin;
  const who = auth.claims.sub ?? 'you';

  // Keep "running for" ages moving between stats.
  const [, tick] = useState(0);
  useEffect(() => {
    const timer = window.setInterval(() => tick((n) => n + 1), 1000);
    return () => window.clearInterval(timer);
  }, []);

  const header = (
    <header className="topbar">
      <span className="brand">tokenwire admin</span>
      <ConnectionBadge state={admin.connection} detail={admin.detail} />
      <span className="spacer" />
      <span className="who">{who}</span>
      <ThemeToggle />
      <button type="button" className="link" onClick={auth.signOut}>
        Sign out
      </button>
    </header>
  );

  if (admin.connection === 'unauthorised') {
    return (
      <div className="app">
        {header}
        <main className="admin">
          <div className="unauthorised" role="alert">
            <h1>Not authorised</h1>
            <p>
              This dashboard needs an account with the admin role.{' '}
              {auth.claims.role === 'admin'
                ? 'Your sign-in was not accepted; it may have expired.'
                : `You are signed in as “${who}”, who is not an admin.`}
            </p>
            {admin.detail && <p className="hint">The server said: {admin.detail}</p>}
            <button type="button" onClick={auth.signOut}>
              Sign in as someone else
            </button>
          </div>
        </main>
      </div>
    );
  }

  return (
    <div className="app">
      {header}
      {admin.detail && admin.connection !== 'connected' && (
        <p className="connection-detail" role="status">
          {admin.detail}
        </p>
      )}
      <main className="admin">
        <section className="figures" aria-label="Now">
          <Figure name="connections" label="Connected sockets" value={stats ? number(stats.connections) : '—'} />
          <Figure name="streaming" label="Replies streaming" value={stats ? number(stats.streaming) : '—'} />
          <Figure name="tokensPerS" label="Tokens/s" value={stats ? number(stats.tokensPerS) : '—'} />
          <Figure name="startsPerS" label="chat:start/s" value={stats ? number(stats.startsPerS) : '—'} />
          <Figure name="errorsPerS" label="Errors/s" value={stats ? number(stats.errorsPerS) : '—'} />
          <Figure name="ttftP50" label="Upstream TTFT p50" value={stats ? ms(stats.ttftP50Ms) : '—'} />
          <Figure name="ttftP95" label="Upstream TTFT p95" value={stats ? ms(stats.ttftP95Ms) : '—'} />
        </section>
        <section className="charts" aria-label="Last 15 minutes">
          <LineChart title="Connected sockets" samples={samples} pick={(s) => s.connections} />
          <LineChart title="Replies streaming" samples={samples} pick={(s) => s.streaming} />
          <LineChart title="Tokens/s" samples={samples} pick={(s) => s.tokensPerS} />
          <LineChart title="chat:start/s" samples={samples} pick={(s) => s.startsPerS} />
          <LineChart title="Errors/s" samples={samples} pick={(s) => s.errorsPerS} />
        </section>
        <section className="running">
          <h2>Running replies</h2>
          <Replies replies={stats?.replies ?? []} stop={admin.stop} />
        </section>
        {stats && <Tables stats={stats} />}
      </main>
    </div>
  );
}
