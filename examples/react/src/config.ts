// Where tokenwire runs, and who we are. The token comes from `?token=<JWT>`
// (get one with `tokenwire token alice`) or from VITE_TOKENWIRE_TOKEN; the
// userId the guide sends must be the token's own subject (`sub`), or
// tokenwire refuses chat:start with FORBIDDEN.
export const SERVER_URL: string = import.meta.env.VITE_TOKENWIRE_URL ?? 'http://localhost:8000';

export function readToken(): string | null {
  const fromUrl = new URLSearchParams(window.location.search).get('token');
  if (fromUrl) sessionStorage.setItem('accessToken', fromUrl);
  return fromUrl ?? sessionStorage.getItem('accessToken') ?? import.meta.env.VITE_TOKENWIRE_TOKEN ?? null;
}

export function subjectOf(token: string): string {
  try {
    const payload = token.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/');
    return String(JSON.parse(atob(payload)).sub ?? '');
  } catch {
    return '';
  }
}
