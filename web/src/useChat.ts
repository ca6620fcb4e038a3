/**
 * `useChat`: one `/ai` socket and the conversation on screen.
 *
 * - Connects to the page's own origin (`io('/ai')`), with the session's token
 *   read at every (re)connect, so a renewed token is used at once.
 * - A refused connection (`connect_error` 'unauthorized', e.g. TOKEN_EXPIRED)
 *   renews the token through `renew` and connects again; when it cannot be
 *   renewed the person is asked to sign in. 'rate_limited' waits retryAfter.
 * - Chunks are appended only when `offset === reply.length`, so a chunk is
 *   never shown twice or out of place; `chat:end` / `chat:stopped` carry the
 *   whole saved reply, which replaces what was assembled.
 * - A reasoning model's thinking (`chat:reasoning`) is assembled the same
 *   way beside the reply, timed from its first piece to the first text
 *   ("Thought for 12 s"); `chat:queued` says where the reply waits in line.
 * - The conversation on screen is followed with `chat:join`: its messages
 *   come in the ack, a reply in progress is caught up from offset 0 and then
 *   streams live, and replies started in another tab stream here too; Stop
 *   stops the reply by id, whichever tab started it. The open conversation is
 *   kept in sessionStorage, so a reload reopens it and the reply continues.
 * - After a reconnect the conversation is joined again (a reply still being
 *   written is caught up from 0: the catch-up is one chunk, and rejoining is
 *   simpler than resuming at an offset while the join would follow it too).
 *   When socket.io recovered the session (`socket.recovered`) nothing is
 *   needed: the missed events were replayed. Without a socket, HTTP loads.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { io, type Socket } from 'socket.io-client';
import type { Api } from './api';
import { ApiError } from './api';
import type {
  ChatStartPayload,
  ClientToServerEvents,
  RefusalData,
  ServerToClientEvents,
  StopPayload,
  StoredMessage,
  WireError,
} from './protocol';

export type ConnectionState =
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  | 'refused'
  | 'signed-out';

export type MessageState = 'sending' | 'streaming' | 'complete' | 'stopped' | 'error' | 'interrupted';

export interface ChatMessage {
  /** Stable React key. */
  key: string;
  /** The server's id, once known. */
  id: string | null;
  role: 'user' | 'assistant';
  content: string;
  status: MessageState;
  model?: string | null;
  finishReason?: string | null;
  completionTokens?: number | null;
  /** A reasoning model's thinking, and how long it took (ms; null while it thinks). */
  reasoning?: string | null;
  reasoningMs?: number | null;
  /** Waiting for the model server: 1 = next in line. */
  queuePosition?: number | null;
}

export interface ChatError extends WireError {
  /** Date.now() when it arrived, to count retryAfter down. */
  at: number;
}

export interface SendOptions {
  model?: string;
  maxTokens?: number;
  temperature?: number;
}

export interface UseChatOptions {
  token: () => string | null;
  renew: () => Promise<string | null>;
  api: Api;
  /** The token was refused and could not be renewed. */
  onSignedOut: () => void;
  /** A conversation was created, or a reply in one finished (its place in the list changed). */
  onConversationsChanged: () => void;
}

export interface UseChat {
  connection: ConnectionState;
  connectionDetail: string | null;
  conversationId: string | null;
  messages: ChatMessage[];
  /** A reply is being written (from send until its final event). */
  streaming: boolean;
  loading: boolean;
  error: ChatError | null;
  /** Resolves false when the message was refused (it is then not in the list). */
  send: (text: string, options?: SendOptions) => Promise<boolean>;
  stop: () => void;
  open: (conversationId: string) => Promise<void>;
  newChat: () => void;
  dismissError: () => void;
}

type ChatSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

interface LiveReply {
  /** Key of the user message that started it, and of the assistant message on screen. */
  userKey: string;
  replyKey: string;
  messageId: string | null;
  conversationId: string | null;
  content: string;
  reasoning: string;
  /** Date.now() at the first piece of reasoning. */
  thinkingSince: number | null;
}

const ACK_TIMEOUT_MS = 15_000;
const OPEN_KEY = 'tokenwire.open-conversation';

function remembered(): string | null {
  try {
    return sessionStorage.getItem(OPEN_KEY);
  } catch {
    return null;
  }
}

function remember(id: string | null): void {
  try {
    if (id) sessionStorage.setItem(OPEN_KEY, id);
    else sessionStorage.removeItem(OPEN_KEY);
  } catch {
    // Storage refused (private mode): a reload then starts on a new chat.
  }
}
const POLL_MS = 1500;

let keySeq = 0;
const nextKey = (prefix: string) => `${prefix}-${Date.now().toString(36)}-${++keySeq}`;

function fromStored(message: StoredMessage): ChatMessage | null {
  if (message.role !== 'user' && message.role !== 'assistant') return null;
  const known: MessageState[] = ['streaming', 'complete', 'stopped', 'error', 'interrupted'];
  return {
    key: message.id,
    id: message.id,
    role: message.role,
    content: message.content,
    status: (known as string[]).includes(message.status) ? (message.status as MessageState) : 'complete',
    model: message.model,
    finishReason: message.finishReason,
    completionTokens: message.completionTokens,
    reasoning: message.reasoning,
    reasoningMs: message.reasoningMs,
  };
}

export function useChat(options: UseChatOptions): UseChat {
  const [connection, setConnection] = useState<ConnectionState>('connecting');
  const [connectionDetail, setConnectionDetail] = useState<string | null>(null);
  const [conversationId, setConversationId] = useState<string | null>(null);
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [streaming, setStreaming] = useState(false);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<ChatError | null>(null);

  const socketRef = useRef<ChatSocket | null>(null);
  const replyRef = useRef<LiveReply | null>(null);
  const visibleRef = useRef<string | null>(null);
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const loadSeq = useRef(0);
  // The conversation this tab had open before a reload, read once.
  const reopenRef = useRef<string | null>(remembered());

  useEffect(() => remember(conversationId), [conversationId]);

  const fail = useCallback((err: WireError) => {
    setError({ code: err.code, message: err.message, retryAfter: err.retryAfter, at: Date.now() });
  }, []);

  const patchReply = useCallback((reply: LiveReply, patch: Partial<ChatMessage>) => {
    setMessages((prev) =>
      prev.map((m) =>
        m.key === reply.replyKey || (reply.messageId !== null && m.id === reply.messageId)
          ? { ...m, ...patch }
          : m,
      ),
    );
  }, []);

  /** The reply's final event arrived (or it was lost): stop streaming. */
  const settle = useCallback(
    (reply: LiveReply, patch: Partial<ChatMessage>, dropIfEmpty: boolean) => {
      replyRef.current = null;
      setStreaming(false);
      setMessages((prev) =>
        prev.flatMap((m) => {
          const mine =
            m.key === reply.replyKey || (reply.messageId !== null && m.id === reply.messageId);
          if (!mine) return [m];
          const next = { ...m, ...patch };
          return dropIfEmpty && !next.content && !next.reasoning ? [] : [next];
        }),
      );
      optionsRef.current.onConversationsChanged();
    },
    [],
  );

  /** Is this event about the reply we are waiting for? */
  const claim = useCallback((messageId: string | undefined): LiveReply | null => {
    const reply = replyRef.current;
    if (!reply || !messageId) return null;
    if (reply.messageId === null) reply.messageId = messageId;
    return reply.messageId === messageId ? reply : null;
  }, []);

  const load = useCallback(async (id: string, quiet = false) => {
    const seq = ++loadSeq.current;
    if (!quiet) setLoading(true);
    try {
      const stored = await optionsRef.current.api.messages(id);
      if (seq !== loadSeq.current || visibleRef.current !== id) return;
      const live = replyRef.current;
      setMessages(
        stored.flatMap((m) => {
          const message = fromStored(m);
          if (!message) return [];
          if (live && live.messageId === message.id) {
            return [{ ...message, key: live.replyKey, content: live.content, status: 'streaming' as const }];
          }
          return [message];
        }),
      );
    } catch (err) {
      if (seq !== loadSeq.current) return;
      if (err instanceof ApiError) {
        fail({ code: err.code, message: err.message });
        if (err.code === 'NOT_FOUND') {
          visibleRef.current = null;
          setConversationId(null);
          setMessages([]);
        }
      }
    } finally {
      if (seq === loadSeq.current) setLoading(false);
    }
  }, [fail]);

  /**
   * Follow a conversation: its messages, and a reply in progress caught up
   * from offset 0 (the catch-up comes after this ack, so the reply is set up
   * before its first chunk). False when it could not be joined.
   */
  const join = useCallback(
    (id: string, quiet = false): Promise<boolean> => {
      const socket = socketRef.current;
      if (!socket?.connected) return Promise.resolve(false);
      const seq = ++loadSeq.current;
      if (!quiet) setLoading(true);
      return new Promise<boolean>((resolve) => {
        socket.timeout(ACK_TIMEOUT_MS).emit('chat:join', { conversationId: id }, (timeout, ack) => {
          if (seq === loadSeq.current) setLoading(false);
          if (timeout || seq !== loadSeq.current || visibleRef.current !== id) {
            resolve(false);
            return;
          }
          if (!ack.ok) {
            fail(ack.error);
            if (ack.error.code === 'NOT_FOUND') {
              visibleRef.current = null;
              remember(null);
              setConversationId(null);
              setMessages([]);
            }
            resolve(false);
            return;
          }
          const live = replyRef.current;
          const streamingId = ack.streaming?.messageId ?? null;
          if (streamingId !== null) {
            const same = live !== null && live.messageId === streamingId;
            replyRef.current = {
              userKey: same ? live.userKey : '',
              replyKey: same ? live.replyKey : streamingId,
              messageId: streamingId,
              conversationId: id,
              content: '', // the catch-up chunk at offset 0 brings it whole
              reasoning: '',
              thinkingSince: same ? live.thinkingSince : null,
            };
            setStreaming(true);
          } else if (live !== null && live.conversationId === id && live.messageId !== null) {
            // It ended while we were away: the messages hold it as saved.
            replyRef.current = null;
            setStreaming(false);
          }
          const reply = replyRef.current;
          setMessages(
            ack.messages.flatMap((m) => {
              const message = fromStored(m);
              if (!message) return [];
              if (reply && reply.messageId === message.id) {
                return [{ ...message, key: reply.replyKey, status: 'streaming' as const }];
              }
              return [message];
            }),
          );
          resolve(true);
        });
      });
    },
    [fail],
  );

  // --- the socket

  useEffect(() => {
    const socket: ChatSocket = io('/ai', {
      auth: (cb) => cb({ token: optionsRef.current.token() }),
      transports: ['websocket'],
      reconnectionDelay: 1000,
      reconnectionDelayMax: 5000,
    });
    socketRef.current = socket;
    let renewals = 0;
    let retryTimer: number | undefined;
    let everConnected = false;

    socket.on('connect', () => {
      renewals = 0;
      setConnection('connected');
      setConnectionDetail(null);
      if (everConnected && !socket.recovered) {
        // Replies carry on server-side while we are away: follow the
        // conversation again (a reply still running is caught up whole).
        const lost = replyRef.current;
        const visible = visibleRef.current;
        if (lost && lost.conversationId !== visible) {
          replyRef.current = null;
          setStreaming(false);
        }
        if (visible) {
          void join(visible, true).then((joined) => {
            if (!joined && visibleRef.current === visible) void load(visible, true);
          });
        }
        optionsRef.current.onConversationsChanged();
      } else if (!everConnected && visibleRef.current === null) {
        // A reload: reopen the conversation this tab had open.
        const previous = reopenRef.current;
        reopenRef.current = null;
        if (previous) {
          visibleRef.current = previous;
          setConversationId(previous);
          void join(previous);
        }
      }
      everConnected = true;
    });

    socket.on('disconnect', (reason) => {
      if (reason === 'io client disconnect') return;
      setConnection('reconnecting');
      setConnectionDetail(null);
      if (reason === 'io server disconnect') {
        // The server closed us on purpose; socket.io does not retry by itself.
        retryTimer = window.setTimeout(() => socket.connect(), 1000);
      }
    });

    socket.on('connect_error', (err: Error & { data?: RefusalData }) => {
      if (socket.active) {
        // A transport failure: socket.io retries on its own.
        setConnection('reconnecting');
        setConnectionDetail('The server cannot be reached. Retrying…');
        return;
      }
      const data = err.data ?? {};
      if (err.message === 'rate_limited') {
        const wait = Math.max(1, Math.ceil(data.retryAfter ?? 5));
        setConnection('refused');
        setConnectionDetail(`Too many connections right now. Retrying in ${wait} s…`);
        retryTimer = window.setTimeout(() => socket.connect(), wait * 1000);
        return;
      }
      // 'unauthorized' (UNAUTHORIZED or TOKEN_EXPIRED): try a fresh token once.
      setConnection('reconnecting');
      setConnectionDetail(
        data.code === 'TOKEN_EXPIRED' ? 'Your session expired. Renewing it…' : 'Checking your sign-in…',
      );
      if (renewals >= 1) {
        setConnection('signed-out');
        setConnectionDetail(data.message ?? 'Please sign in again.');
        optionsRef.current.onSignedOut();
        return;
      }
      renewals += 1;
      void optionsRef.current.renew().then((token) => {
        if (token) {
          socket.connect();
        } else {
          setConnection('signed-out');
          setConnectionDetail(
            data.code === 'TOKEN_EXPIRED'
              ? 'Your session has expired. Please sign in again.'
              : 'Your sign-in was not accepted. Please sign in again.',
          );
          optionsRef.current.onSignedOut();
        }
      });
    });

    socket.io.on('reconnect_attempt', () => setConnection('reconnecting'));

    socket.on('chat:conversation', (data) => {
      const reply = replyRef.current;
      if (reply && reply.conversationId === null) {
        reply.conversationId = data.conversationId;
        if (visibleRef.current === null) {
          visibleRef.current = data.conversationId;
          setConversationId(data.conversationId);
        }
      }
      optionsRef.current.onConversationsChanged();
    });

    socket.on('chat:user-message', (data) => {
      const reply = replyRef.current;
      if (!reply) {
        // A turn started in another tab of this conversation: follow it here too.
        if (data.conversationId !== visibleRef.current) return;
        const followed: LiveReply = {
          userKey: data.messageId,
          replyKey: nextKey('reply'),
          messageId: null,
          conversationId: data.conversationId,
          content: '',
          reasoning: '',
          thinkingSince: null,
        };
        replyRef.current = followed;
        setStreaming(true);
        setMessages((prev) => [
          ...prev,
          { key: data.messageId, id: data.messageId, role: 'user', content: data.content, status: 'complete' },
          { key: followed.replyKey, id: null, role: 'assistant', content: '', status: 'streaming' },
        ]);
        return;
      }
      reply.conversationId ??= data.conversationId;
      setMessages((prev) =>
        prev.map((m) => (m.key === reply.userKey ? { ...m, id: data.messageId, status: 'complete' } : m)),
      );
    });

    socket.on('chat:queued', (data) => {
      const reply = claim(data.messageId);
      if (!reply) return;
      patchReply(reply, { id: data.messageId, queuePosition: data.position || null });
    });

    socket.on('chat:reasoning', (data) => {
      const reply = claim(data.messageId);
      if (!reply || data.offset !== reply.reasoning.length) return;
      reply.reasoning += data.content;
      reply.thinkingSince ??= Date.now();
      patchReply(reply, {
        id: data.messageId,
        reasoning: reply.reasoning,
        status: 'streaming',
        queuePosition: null,
      });
    });

    socket.on('chat:message', (data) => {
      const reply = claim(data.messageId);
      if (!reply) return;
      // Append only the chunk that continues the text: never twice, never out of place.
      if (data.offset !== reply.content.length) return;
      if (!data.content) return;
      const patch: Partial<ChatMessage> = { id: data.messageId, status: 'streaming', queuePosition: null };
      if (!reply.content && reply.thinkingSince !== null) {
        patch.reasoningMs = Date.now() - reply.thinkingSince;
      }
      reply.content += data.content;
      patchReply(reply, { ...patch, content: reply.content });
    });

    socket.on('chat:end', (data) => {
      const reply = claim(data.messageId);
      if (!reply) return;
      settle(
        reply,
        {
          id: data.messageId,
          content: data.content,
          status: 'complete',
          model: data.model,
          finishReason: data.finishReason,
          completionTokens: data.completionTokens,
          queuePosition: null,
          // Thought, then wrote nothing: it thought until the end.
          ...(reply.thinkingSince !== null && !reply.content
            ? { reasoningMs: Date.now() - reply.thinkingSince }
            : {}),
        },
        false,
      );
    });

    socket.on('chat:stopped', (data) => {
      const reply = claim(data.messageId);
      if (!reply) return;
      settle(
        reply,
        { id: data.messageId, content: data.content, status: 'stopped', queuePosition: null },
        true,
      );
    });

    socket.on('chat:error', (data) => {
      fail(data);
      const reply = data.messageId ? claim(data.messageId) : null;
      if (reply) {
        settle(reply, { id: data.messageId ?? null, status: 'error', queuePosition: null }, true);
      }
    });

    return () => {
      window.clearTimeout(retryTimer);
      socket.removeAllListeners();
      socket.io.removeAllListeners();
      socket.disconnect();
      socketRef.current = null;
    };
  }, [claim, fail, join, load, patchReply, settle]);

  // --- a reply being written elsewhere (another tab, or before a reconnect): poll

  const pollNeeded = messages.some(
    (m) => m.status === 'streaming' && m.role === 'assistant' && !replyRef.current,
  );
  useEffect(() => {
    if (!pollNeeded || !conversationId) return;
    const timer = window.setTimeout(() => void load(conversationId, true), POLL_MS);
    return () => window.clearTimeout(timer);
  }, [pollNeeded, conversationId, messages, load]);

  // --- actions

  const send = useCallback(
    (text: string, sendOptions: SendOptions = {}): Promise<boolean> => {
      const socket = socketRef.current;
      if (!socket?.connected || replyRef.current || !text.trim()) return Promise.resolve(false);
      const reply: LiveReply = {
        userKey: nextKey('user'),
        replyKey: nextKey('reply'),
        messageId: null,
        conversationId: visibleRef.current,
        content: '',
        reasoning: '',
        thinkingSince: null,
      };
      replyRef.current = reply;
      setStreaming(true);
      setError(null);
      setMessages((prev) => [
        ...prev,
        { key: reply.userKey, id: null, role: 'user', content: text, status: 'sending' },
        { key: reply.replyKey, id: null, role: 'assistant', content: '', status: 'streaming' },
      ]);
      const payload: ChatStartPayload = { message: text, ...sendOptions };
      if (reply.conversationId) payload.conversationId = reply.conversationId;

      const refuse = (err: WireError) => {
        if (replyRef.current === reply) replyRef.current = null;
        setStreaming(false);
        setMessages((prev) => prev.filter((m) => m.key !== reply.userKey && m.key !== reply.replyKey));
        fail(err);
      };

      return new Promise<boolean>((resolve) => {
        socket.timeout(ACK_TIMEOUT_MS).emit('chat:start', payload, (timeout, ack) => {
          if (timeout) {
            // No answer: the server may still have started it; the reconnect
            // path or the final event sorts that out. Let the person try again.
            if (replyRef.current === reply && reply.messageId === null) {
              refuse({ code: 'UNAVAILABLE', message: 'The server did not answer in time.' });
              resolve(false);
            } else {
              resolve(true);
            }
            return;
          }
          if (!ack.ok) {
            refuse(ack.error);
            resolve(false);
            return;
          }
          if (replyRef.current === reply) {
            reply.messageId ??= ack.messageId;
            reply.conversationId ??= ack.conversationId;
          }
          if (visibleRef.current === null) {
            visibleRef.current = ack.conversationId;
            setConversationId(ack.conversationId);
          }
          resolve(true);
        });
      });
    },
    [fail],
  );

  const stop = useCallback(() => {
    const socket = socketRef.current;
    const reply = replyRef.current;
    if (!socket?.connected || !reply) return;
    // By id, so it stops whichever tab started it; it ends with chat:stopped
    // (or, if it had just finished, chat:end) in every tab.
    const payload: StopPayload | Record<string, never> = reply.messageId
      ? { messageId: reply.messageId }
      : {};
    socket.timeout(ACK_TIMEOUT_MS).emit('chat:stop', payload, (timeout, ack) => {
      if (!timeout && !ack.ok) fail(ack.error);
    });
  }, [fail]);

  /** Stop following the conversation on screen (unless it is `next`), and its reply. */
  const leave = useCallback((next: string | null) => {
    const current = visibleRef.current;
    if (!current || current === next) return;
    socketRef.current?.emit('chat:leave', { conversationId: current }, () => undefined);
    const reply = replyRef.current;
    if (reply && reply.conversationId === current) {
      replyRef.current = null;
      setStreaming(false);
    }
  }, []);

  const open = useCallback(
    async (id: string) => {
      leave(id);
      visibleRef.current = id;
      remember(id);
      setConversationId(id);
      setMessages([]);
      setError(null);
      if (!(await join(id))) await load(id);
    },
    [join, leave, load],
  );

  const newChat = useCallback(() => {
    loadSeq.current += 1;
    leave(null);
    remember(null);
    visibleRef.current = null;
    setConversationId(null);
    setMessages([]);
    setError(null);
    setLoading(false);
  }, []);

  const dismissError = useCallback(() => setError(null), []);

  return {
    connection,
    connectionDetail,
    conversationId,
    messages,
    streaming,
    loading,
    error,
    send,
    stop,
    open,
    newChat,
    dismissError,
  };
}
