/** The message box and its controls: Enter sends, Shift+Enter is a new line, Esc stops (page-wide). */
import { useRef, useState, type KeyboardEvent } from 'react';
import type { ModelList } from '../protocol';

export interface Settings {
  model: string;
  temperature: number;
  /** null: the server's default. */
  maxTokens: number | null;
}

export function Composer({
  connected,
  streaming,
  models,
  model,
  settings,
  onSettings,
  onSend,
  onStop,
}: {
  connected: boolean;
  streaming: boolean;
  models: ModelList | null;
  model: string;
  settings: Settings;
  onSettings: (settings: Settings) => void;
  onSend: (text: string) => Promise<boolean>;
  onStop: () => void;
}) {
  const [input, setInput] = useState('');
  const box = useRef<HTMLTextAreaElement>(null);
  const canSend = connected && !streaming && input.trim().length > 0;

  const send = () => {
    if (!canSend) return;
    const text = input;
    setInput('');
    void onSend(text).then((accepted) => {
      // Refused (busy, rate limited, invalid...): give the text back to edit or resend.
      if (!accepted) setInput((now) => now || text);
      box.current?.focus();
    });
  };

  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      send();
    }
  };

  const choices = models ? (models.models.length ? models.models : [models.default]) : [];

  return (
    <form
      className="composer"
      onSubmit={(event) => {
        event.preventDefault();
        send();
      }}
    >
      <div className="controls">
        <label>
          <span>Model</span>
          <select
            value={model}
            disabled={!choices.length}
            onChange={(e) => onSettings({ ...settings, model: e.target.value })}
          >
            {choices.map((name) => (
              <option key={name} value={name}>
                {name}
              </option>
            ))}
          </select>
        </label>
        <label title="Higher is more varied, lower is more focused">
          <span>Temperature {settings.temperature.toFixed(1)}</span>
          <input
            type="range"
            min={0}
            max={2}
            step={0.1}
            value={settings.temperature}
            onChange={(e) => onSettings({ ...settings, temperature: Number(e.target.value) })}
          />
        </label>
        <label>
          <span>Max tokens</span>
          <input
            type="number"
            inputMode="numeric"
            min={1}
            step={1}
            placeholder="default"
            value={settings.maxTokens ?? ''}
            onChange={(e) => {
              const value = Math.floor(Number(e.target.value));
              onSettings({ ...settings, maxTokens: e.target.value && value > 0 ? value : null });
            }}
          />
        </label>
      </div>
      <div className="input-row">
        <textarea
          ref={box}
          rows={2}
          value={input}
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={onKeyDown}
          placeholder="Type your message..."
          aria-label="Message"
          autoFocus
        />
        {!streaming ? (
          <button type="submit" className="primary" disabled={!canSend}>
            Send
          </button>
        ) : (
          <button type="button" className="stop" onClick={onStop}>
            Stop
          </button>
        )}
      </div>
      <p className="hint">
        {connected ? 'Enter sends · Shift+Enter new line · Esc stops' : 'Not connected: messages cannot be sent yet.'}
      </p>
    </form>
  );
}
