/** An error in plain words; RATE_LIMIT counts down to when a retry may succeed. */
import { useEffect, useState } from 'react';
import { describeError } from '../protocol';
import type { ChatError } from '../useChat';

export function ErrorBanner({ error, onDismiss }: { error: ChatError; onDismiss: () => void }) {
  const [now, setNow] = useState(() => Date.now());
  const counting = error.retryAfter != null;

  useEffect(() => {
    if (!counting) return;
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [counting]);

  const retryIn = counting ? (error.retryAfter ?? 0) - (now - error.at) / 1000 : null;
  return (
    <div className="error banner" role="alert" data-code={error.code}>
      <span>{describeError(error, retryIn)}</span>
      <button type="button" className="icon" aria-label="Dismiss" onClick={onDismiss}>
        ×
      </button>
    </div>
  );
}
