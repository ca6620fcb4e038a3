/**
 * tokenwire's wire protocol, as socket.io-client types: the `/ai` namespace
 * (chat) and the `/admin` namespace (dashboard), their payloads, the error
 * codes, and the plain words the pages show for each code.
 *
 * Order of server events for one chat:start:
 *   chat:conversation (only when a conversation is created)
 *   chat:user-message
 *   chat:queued x N   (only while waiting for the model server; position 0 last)
 *   chat:reasoning x N (a reasoning model's thinking; offset into the reasoning)
 *   chat:message x N  (offset = UTF-16 units of the reply before the chunk)
 *   exactly one of chat:end | chat:stopped | chat:error
 *
 * Following a reply from anywhere: `chat:join` a conversation (its messages in
 * the ack, then the reply in progress from offset 0, then every event of it),
 * `chat:resume` one reply at the offset the client holds (its reasoning comes
 * again whole, at reasoning offset 0, as on join), `chat:stop` a reply
 * by id from any tab. Mirrored by src/tokenwire/wire/protocol.py.
 */

export type ErrorCode =
  | 'UNAUTHORIZED'
  | 'TOKEN_EXPIRED'
  | 'FORBIDDEN'
  | 'VALIDATION_ERROR'
  | 'INVALID_MODEL'
  | 'NOT_FOUND'
  | 'BUSY'
  | 'RATE_LIMIT'
  | 'UPSTREAM_ERROR'
  | 'UPSTREAM_TIMEOUT'
  | 'UNAVAILABLE'
  | 'SERVER_SHUTDOWN'
  | 'INTERNAL';

export interface WireError {
  code: ErrorCode | string;
  message: string;
  /** Seconds until a retry may succeed (RATE_LIMIT). */
  retryAfter?: number;
}

// --- /ai, client -> server

export interface ChatStartPayload {
  userId?: string;
  message: string;
  conversationId?: string | null;
  model?: string;
  maxTokens?: number;
  temperature?: number;
}

export type Ack<T> = ({ ok: true } & T) | { ok: false; error: WireError };

export type StartAck = Ack<{ conversationId: string; userMessageId: string; messageId: string }>;
export type StopAck = Ack<
  { stopped: false } | { stopped: true; conversationId: string; messageId: string }
>;

/** Without a payload: the reply this socket started. With an id: that reply, from any tab. */
export type StopPayload = { messageId: string } | { conversationId: string };

export interface JoinPayload {
  conversationId: string;
}

/** A reply in progress when joining: its id and its length so far (UTF-16 units). */
export interface Streaming {
  messageId: string;
  offset: number;
}

export type JoinAck = Ack<{
  conversationId: string;
  /** As GET /api/conversations/{id}/messages returns them (a running reply: its last checkpoint). */
  messages: StoredMessage[];
  streaming: Streaming | null;
}>;

export type LeaveAck = Ack<{ conversationId: string; left: boolean }>;

export interface ResumePayload {
  messageId: string;
  /** UTF-16 units of the reply the client already holds. */
  offset: number;
}

export type ResumeAck = Ack<{ conversationId: string; messageId: string; offset: number }>;

export interface ClientToServerEvents {
  'chat:start': (payload: ChatStartPayload, ack: (response: StartAck) => void) => void;
  /** `{}` (or no payload at all): the reply this socket started. */
  'chat:stop': (payload: StopPayload | Record<string, never>, ack: (response: StopAck) => void) => void;
  'chat:join': (payload: JoinPayload, ack: (response: JoinAck) => void) => void;
  'chat:leave': (payload: JoinPayload, ack: (response: LeaveAck) => void) => void;
  'chat:resume': (payload: ResumePayload, ack: (response: ResumeAck) => void) => void;
}

// --- /ai, server -> client

export interface ConversationEvent {
  conversationId: string;
}

export interface UserMessageEvent {
  messageId: string;
  content: string;
  conversationId: string;
}

export interface ChunkEvent {
  content: string;
  isComplete: false;
  messageId: string;
  conversationId: string;
  /** UTF-16 code units (JS `String.length`) of the reply before this chunk. */
  offset: number;
}

/** With UPSTREAM_MAX_CONCURRENCY: the reply waits for the model server (1 = next; 0 = it goes now). */
export interface QueuedEvent {
  messageId: string;
  conversationId: string;
  position: number;
}

/** A reasoning model's thinking, before (rarely between) the reply's chunks. */
export interface ReasoningEvent {
  messageId: string;
  conversationId: string;
  content: string;
  /** UTF-16 code units of the reasoning before this piece. */
  offset: number;
}

export type UsageSource = 'upstream' | 'estimated';

export interface EndEvent {
  messageId: string;
  conversationId: string;
  totalTokens: number;
  model: string;
  finishReason: string;
  promptTokens: number;
  completionTokens: number;
  /** Whether the model server reported the usage or tokenwire counted it. */
  usageSource: UsageSource;
  /** The whole reply, as saved. */
  content: string;
}

export interface StoppedEvent {
  conversationId: string;
  messageId: string;
  content: string;
}

export interface ErrorEvent extends WireError {
  conversationId?: string;
  messageId?: string;
  /** Only when answering chat:resume of a reply that had ended: the whole saved reply. */
  content?: string;
}

export interface ServerToClientEvents {
  'chat:conversation': (data: ConversationEvent) => void;
  'chat:user-message': (data: UserMessageEvent) => void;
  'chat:queued': (data: QueuedEvent) => void;
  'chat:reasoning': (data: ReasoningEvent) => void;
  'chat:message': (data: ChunkEvent) => void;
  'chat:end': (data: EndEvent) => void;
  'chat:stopped': (data: StoppedEvent) => void;
  'chat:error': (data: ErrorEvent) => void;
}

/** `connect_error` from a refused connection: `err.message` and `err.data`. */
export type RefusalReason = 'unauthorized' | 'rate_limited';
export interface RefusalData {
  code?: ErrorCode | string;
  message?: string;
  retryAfter?: number;
}

// --- HTTP

export interface Conversation {
  id: string;
  title: string;
  model: string;
  createdAt: string;
  updatedAt: string;
}

export interface ConversationPage {
  items: Conversation[];
  total: number;
  limit: number;
  offset: number;
}

export type MessageStatus = 'streaming' | 'complete' | 'stopped' | 'error' | 'interrupted';

export interface StoredMessage {
  id: string;
  role: 'user' | 'assistant' | 'system';
  content: string;
  status: MessageStatus | string;
  finishReason: string | null;
  model: string | null;
  promptTokens: number | null;
  completionTokens: number | null;
  /** null for replies saved before tokenwire recorded it. */
  usageSource: UsageSource | null;
  /** A reasoning model's thinking, and how long it thought (ms); null when none. */
  reasoning: string | null;
  reasoningMs: number | null;
  createdAt: string;
}

export interface ModelList {
  default: string;
  models: string[];
}

export interface DevToken {
  token: string;
  userId: string;
  expiresIn: number;
}

// --- /admin

export interface AdminSample {
  /** Epoch milliseconds. */
  ts: number;
  connections: number;
  streaming: number;
  tokensPerS: number;
  startsPerS: number;
  errorsPerS: number;
}

export interface RunningReply {
  messageId: string;
  conversationId: string;
  userId: string;
  model: string;
  /** ISO 8601. */
  startedAt: string;
  chars: number;
}

export interface AdminStats extends AdminSample {
  errorsByCode: Record<string, number>;
  ttftP50Ms: number | null;
  ttftP95Ms: number | null;
  usageByModel: Record<
    string,
    { replies: number; promptTokens: number; completionTokens: number; estimatedReplies: number }
  >;
  replies: RunningReply[];
}

export interface AdminServerToClientEvents {
  'admin:history': (data: { samples: AdminSample[] }) => void;
  'admin:stats': (data: AdminStats) => void;
}

export interface AdminClientToServerEvents {
  'admin:stop': (payload: { messageId: string }, ack: (response: Ack<object>) => void) => void;
}

// --- words

function seconds(value: number): string {
  const s = Math.max(1, Math.ceil(value));
  if (s < 90) return s === 1 ? '1 second' : `${s} seconds`;
  const m = Math.round(s / 60);
  return m === 1 ? '1 minute' : `${m} minutes`;
}

/**
 * What to tell the person, by code. `retryIn` is how many seconds are left
 * before a RATE_LIMIT may be retried (counted down by the caller).
 */
export function describeError(error: WireError, retryIn?: number | null): string {
  switch (error.code) {
    case 'UNAUTHORIZED':
      return 'You are not signed in, or your sign-in is no longer valid. Please sign in again.';
    case 'TOKEN_EXPIRED':
      return 'Your session has expired. Please sign in again.';
    case 'FORBIDDEN':
      return 'You are not allowed to do that.';
    case 'VALIDATION_ERROR':
      return `That message could not be sent: ${error.message}`;
    case 'INVALID_MODEL':
      return 'The model you picked is not available on this server. Please choose another one.';
    case 'NOT_FOUND':
      return 'That conversation no longer exists. Start a new chat.';
    case 'BUSY':
      return 'A reply is still being written. Stop it or wait for it to finish, then send again.';
    case 'RATE_LIMIT': {
      const left = retryIn ?? error.retryAfter;
      if (left == null) return 'Too many requests right now. Please wait a moment and try again.';
      if (left <= 0) return 'Too many requests a moment ago. You can try again now.';
      return `Too many requests right now. Please try again in ${seconds(left)}.`;
    }
    // The server's words say more here ("too long for this model", "busy").
    case 'UPSTREAM_ERROR':
      return error.message || 'The AI model failed to answer. Please try again.';
    case 'UPSTREAM_TIMEOUT':
      return error.message || 'The AI model took too long to answer. Please try again.';
    case 'UNAVAILABLE':
      return 'The service is temporarily unavailable. Please try again shortly.';
    case 'SERVER_SHUTDOWN':
      return 'The server is restarting. The reply so far was saved; reconnecting…';
    case 'INTERNAL':
      return 'Something went wrong on the server. Please try again.';
    default:
      return error.message || 'Something went wrong. Please try again.';
  }
}
