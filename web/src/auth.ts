/**
 * Sign-in for one browser tab: a JWT kept in sessionStorage.
 *
 * - `/?token=<JWT>` signs in with that token; it is moved out of the address
 *   bar at once (so it is not bookmarked, shared or sent as a Referer).
 * - In development, `POST /api/dev/token {name, admin}` hands out a token;
 *   the name is remembered so an expired token can be renewed without asking.
 */
import { useCallback, useMemo, useRef, useState } from 'react';
import type { DevToken } from './protocol';
import { ApiError, postJson } from './api';

export interface Session {
  token: string;
  /** Set when signed in through the development route, so the token can be renewed. */
  devName?: string;
  devAdmin?: boolean;
}

export interface Claims {
  sub?: string;
  exp?: number;
  role?: string;
}

const KEY_PREFIX = 'tokenwire.session.';

export function claimsOf(token: string): Claims {
  try {
    const part = token.split('.')[1] ?? '';
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent(
      Array.from(atob(base64), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''),
    );
    const value: unknown = JSON.parse(json);
    return typeof value === 'object' && value !== null ? (value as Claims) : {};
  } catch {
    return {};
  }
}

/** Take `?token=` out of the address bar; returns it, if there was one. */
function takeTokenFromUrl(): string | null {
  const url = new URL(window.location.href);
  const token = url.searchParams.get('token');
  if (token === null) return null;
  url.searchParams.delete('token');
  window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
  return token.trim() || null;
}

function load(scope: string): Session | null {
  try {
    const raw = sessionStorage.getItem(KEY_PREFIX + scope);
    if (!raw) return null;
    const value = JSON.parse(raw) as Session;
    return typeof value.token === 'string' && value.token ? value : null;
  } catch {
    return null;
  }
}

function store(scope: string, session: Session | null): void {
  if (session) sessionStorage.setItem(KEY_PREFIX + scope, JSON.stringify(session));
  else sessionStorage.removeItem(KEY_PREFIX + scope);
}

export class DevSignInUnavailable extends Error {
  constructor() {
    super('Signing in by name is only available on a development server. Open this page with ?token=<your JWT>.');
  }
}

export async function devToken(name: string, admin: boolean): Promise<DevToken> {
  try {
    return await postJson<DevToken>('/api/dev/token', { name, admin });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
      throw new DevSignInUnavailable();
    }
    throw error;
  }
}

export interface SessionApi {
  session: Session | null;
  claims: Claims;
  signIn: (session: Session) => void;
  signOut: () => void;
  /** A fresh token for the same development name, or null when the person must sign in again. */
  renew: () => Promise<string | null>;
}

/** The tab's session for one page (`scope` keeps the chat and admin sign-ins apart). */
export function useSession(scope: 'chat' | 'admin'): SessionApi {
  const [session, setSession] = useState<Session | null>(() => {
    const fromUrl = takeTokenFromUrl();
    if (fromUrl) {
      const fresh = { token: fromUrl };
      store(scope, fresh);
      return fresh;
    }
    return load(scope);
  });
  const current = useRef(session);
  current.current = session;

  const signIn = useCallback(
    (next: Session) => {
      store(scope, next);
      current.current = next;
      setSession(next);
    },
    [scope],
  );

  const signOut = useCallback(() => {
    store(scope, null);
    current.current = null;
    setSession(null);
  }, [scope]);

  const renew = useCallback(async (): Promise<string | null> => {
    const now = current.current;
    if (!now?.devName) return null;
    try {
      const fresh = await devToken(now.devName, now.devAdmin ?? false);
      const next = { ...now, token: fresh.token };
      store(scope, next);
      current.current = next;
      setSession(next);
      return fresh.token;
    } catch {
      return null;
    }
  }, [scope]);

  const claims = useMemo(() => (session ? claimsOf(session.token) : {}), [session]);
  return { session, claims, signIn, signOut, renew };
}
