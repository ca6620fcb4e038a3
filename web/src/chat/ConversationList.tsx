/** The person's conversations (GET /api/conversations), newest first, with New chat and Delete. */
import type { Conversation } from '../protocol';

function when(iso: string): string {
  const date = new Date(iso);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

export function ConversationList({
  conversations,
  selected,
  error,
  onNew,
  onOpen,
  onDelete,
}: {
  conversations: Conversation[];
  selected: string | null;
  error: string | null;
  onNew: () => void;
  onOpen: (id: string) => void;
  onDelete: (id: string) => void;
}) {
  return (
    <nav className="sidebar" aria-label="Conversations">
      <button type="button" className="new-chat" onClick={onNew}>
        + New chat
      </button>
      {error && (
        <p className="error small" role="alert">
          {error}
        </p>
      )}
      <ul className="conversations">
        {conversations.map((c) => (
          <li key={c.id} className={c.id === selected ? 'selected' : undefined} data-id={c.id}>
            <button
              type="button"
              className="open"
              onClick={() => onOpen(c.id)}
              aria-current={c.id === selected ? 'true' : undefined}
            >
              <span className="title">{c.title || 'Untitled'}</span>
              <span className="date">{when(c.updatedAt)}</span>
            </button>
            <button
              type="button"
              className="icon delete"
              aria-label={`Delete “${c.title || 'Untitled'}”`}
              title="Delete"
              onClick={() => {
                if (window.confirm(`Delete “${c.title || 'Untitled'}” and all its messages?`)) {
                  onDelete(c.id);
                }
              }}
            >
              ×
            </button>
          </li>
        ))}
        {!conversations.length && !error && <li className="empty">No conversations yet.</li>}
      </ul>
    </nav>
  );
}
