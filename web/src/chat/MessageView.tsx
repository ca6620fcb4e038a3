/** The conversation: user messages as plain text, replies as sanitised Markdown with a cursor while streaming. */
import { memo, useEffect, useLayoutEffect, useMemo, useRef } from 'react';
import { renderMarkdown } from '../markdown';
import type { ChatMessage } from '../useChat';

const NOTES: Partial<Record<ChatMessage['status'], string>> = {
  stopped: 'Stopped',
  error: 'The reply failed here',
  interrupted: 'Interrupted (the server restarted)',
};

function thoughtFor(ms: number): string {
  const s = Math.max(1, Math.round(ms / 1000));
  return s < 90 ? `Thought for ${s} s` : `Thought for ${Math.round(s / 60)} min`;
}

function queueNote(position: number): string {
  return position === 1
    ? 'Waiting for the model: next in line'
    : `Waiting for the model: ${position - 1} ahead in line`;
}

/** A reasoning model's thinking, collapsed under how long it took; plain text, never Markdown. */
function Reasoning({ text, ms, thinking }: { text: string; ms: number | null; thinking: boolean }) {
  return (
    <details className="reasoning">
      <summary>{thinking || ms === null ? 'Thinking…' : thoughtFor(ms)}</summary>
      <p className="reasoning-text">{text}</p>
    </details>
  );
}

const Reply = memo(function Reply({ message }: { message: ChatMessage }) {
  const streaming = message.status === 'streaming';
  const html = useMemo(() => renderMarkdown(message.content, streaming), [message.content, streaming]);
  const note =
    NOTES[message.status] ??
    (message.finishReason === 'length' ? 'Cut off at the token limit' : null);
  return (
    <article className={`message assistant ${message.status}`} data-status={message.status}>
      {message.queuePosition ? <p className="note queued">{queueNote(message.queuePosition)}</p> : null}
      {message.reasoning ? (
        <Reasoning
          text={message.reasoning}
          ms={message.reasoningMs ?? null}
          thinking={streaming && !message.content}
        />
      ) : null}
      <div className="markdown" dangerouslySetInnerHTML={{ __html: html }} />
      {note && <p className="note">{note}</p>}
    </article>
  );
});

export function MessageView({ messages, loading }: { messages: ChatMessage[]; loading: boolean }) {
  const end = useRef<HTMLDivElement>(null);
  const box = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);

  // Follow the reply as it grows, unless the person has scrolled up to read.
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const onScroll = () => {
      pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    };
    el.addEventListener('scroll', onScroll, { passive: true });
    return () => el.removeEventListener('scroll', onScroll);
  }, []);
  useLayoutEffect(() => {
    if (pinned.current) end.current?.scrollIntoView({ block: 'end' });
  }, [messages]);

  return (
    <div className="messages" ref={box} role="log" aria-live="polite" aria-busy={loading}>
      {!messages.length && !loading && (
        <p className="empty">Ask anything. Replies stream in as they are written.</p>
      )}
      {messages.map((m) =>
        m.role === 'user' ? (
          <article key={m.key} className={`message user ${m.status}`} data-status={m.status}>
            <p className="text">{m.content}</p>
          </article>
        ) : (
          <Reply key={m.key} message={m} />
        ),
      )}
      <div ref={end} />
    </div>
  );
}
