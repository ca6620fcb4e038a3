/** The HTTP API: conversations, messages, models, development sign-in. Errors are `{error:{code,message}}`. */
import type { ConversationPage, ModelList, StoredMessage } from './protocol';

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request<T>(path: string, init: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'UNAVAILABLE', 'The server cannot be reached. Check your connection.');
  }
  if (response.status === 204) return undefined as T;
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through with the status alone
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(
      response.status,
      error?.code ?? (response.status === 401 ? 'UNAUTHORIZED' : 'INTERNAL'),
      error?.message ?? `The server answered ${response.status}.`,
    );
  }
  return body as T;
}

export function postJson<T>(path: string, body: unknown): Promise<T> {
  return request<T>(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/**
 * Calls made with the session's token. A 401 renews the token once (through
 * `renew`) and tries again.
 */
export class Api {
  private readonly token: () => string | null;
  private readonly renew: () => Promise<string | null>;

  constructor(token: () => string | null, renew: () => Promise<string | null>) {
    this.token = token;
    this.renew = renew;
  }

  private async authed<T>(path: string, init: RequestInit = {}): Promise<T> {
    const attempt = (token: string | null) =>
      request<T>(path, {
        ...init,
        headers: { ...(init.headers ?? {}), Authorization: `Bearer ${token ?? ''}` },
      });
    try {
      return await attempt(this.token());
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      const fresh = await this.renew();
      if (!fresh) throw error;
      return attempt(fresh);
    }
  }

  conversations(limit = 50, offset = 0): Promise<ConversationPage> {
    return this.authed(`/api/conversations?limit=${limit}&offset=${offset}`);
  }

  messages(conversationId: string): Promise<StoredMessage[]> {
    return this.authed(`/api/conversations/${encodeURIComponent(conversationId)}/messages`);
  }

  deleteConversation(conversationId: string): Promise<void> {
    return this.authed(`/api/conversations/${encodeURIComponent(conversationId)}`, {
      method: 'DELETE',
    });
  }
}

export function models(): Promise<ModelList> {
  return request<ModelList>('/api/models', {});
}
