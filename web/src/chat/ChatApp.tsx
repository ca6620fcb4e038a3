/** The chat page: sign-in, conversation list, the conversation, the composer. */
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { Api, models as fetchModels } from '../api';
import { useSession, type SessionApi } from '../auth';
import type { Conversation, ModelList } from '../protocol';
import { ConnectionBadge, SignIn, ThemeToggle } from '../ui';
import { useChat } from '../useChat';
import { Composer, type Settings } from './Composer';
import { ConversationList } from './ConversationList';
import { ErrorBanner } from './ErrorBanner';
import { MessageView } from './MessageView';

export function ChatApp() {
  const auth = useSession('chat');
  const [notice, setNotice] = useState<string | null>(null);
  if (!auth.session) {
    return (
      <SignIn
        title="tokenwire chat"
        notice={notice}
        onSignedIn={(session) => {
          setNotice(null);
          auth.signIn(session);
        }}
      />
    );
  }
  return (
    <SignedIn
      // A different person is a different page: fresh socket, fresh state.
      key={auth.claims.sub ?? auth.session.token}
      auth={auth}
      onSignedOut={(why) => {
        setNotice(why);
        auth.signOut();
      }}
    />
  );
}

const SETTINGS_KEY = 'tokenwire.chat.settings';

function loadSettings(): Settings {
  try {
    const raw = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}') as Partial<Settings>;
    return {
      model: typeof raw.model === 'string' ? raw.model : '',
      temperature: typeof raw.temperature === 'number' ? raw.temperature : 0.7,
      maxTokens: typeof raw.maxTokens === 'number' ? raw.maxTokens : null,
    };
  } catch {
    return { model: '', temperature: 0.7, maxTokens: null };
  }
}

function SignedIn({ auth, onSignedOut }: { auth: SessionApi; onSignedOut: (why: string | null) => void }) {
  const tokenRef = useRef(auth.session?.token ?? null);
  tokenRef.current = auth.session?.token ?? null;
  const api = useMemo(() => new Api(() => tokenRef.current, auth.renew), [auth.renew]);

  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [listError, setListError] = useState<string | null>(null);
  const [drawer, setDrawer] = useState(false);
  const [modelList, setModelList] = useState<ModelList | null>(null);
  const [settings, setSettings] = useState<Settings>(loadSettings);

  const refreshList = useCallback(async () => {
    try {
      const page = await api.conversations(50);
      setConversations(page.items);
      setListError(null);
    } catch (error) {
      setListError(error instanceof Error ? error.message : 'Could not load your conversations.');
    }
  }, [api]);

  const chat = useChat({
    token: () => tokenRef.current,
    renew: auth.renew,
    api,
    onSignedOut: () => onSignedOut('Your session ended. Please sign in again.'),
    onConversationsChanged: () => void refreshList(),
  });

  useEffect(() => {
    void refreshList();
    fetchModels()
      .then(setModelList)
      .catch(() => setModelList(null));
  }, [refreshList]);

  useEffect(() => {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  }, [settings]);

  // Esc stops the reply from anywhere on the page.
  const { streaming, stop } = chat;
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.key === 'Escape' && streaming) {
        event.preventDefault();
        stop();
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [streaming, stop]);

  const model =
    modelList && (modelList.models.includes(settings.model) ? settings.model : modelList.default);

  const send = (text: string) =>
    chat.send(text, {
      ...(model ? { model } : {}),
      temperature: settings.temperature,
      ...(settings.maxTokens ? { maxTokens: settings.maxTokens } : {}),
    });

  const remove = async (id: string) => {
    try {
      await api.deleteConversation(id);
      if (chat.conversationId === id) chat.newChat();
    } catch (error) {
      setListError(error instanceof Error ? error.message : 'Could not delete it.');
    }
    await refreshList();
  };

  const who = auth.claims.sub ?? 'you';

  return (
    <div className={`app ${drawer ? 'drawer-open' : ''}`}>
      <header className="topbar">
        <button
          type="button"
          className="icon only-narrow"
          aria-label="Conversations"
          aria-expanded={drawer}
          onClick={() => setDrawer((open) => !open)}
        >
          ☰
        </button>
        <span className="brand">tokenwire</span>
        <ConnectionBadge state={chat.connection} detail={chat.connectionDetail} />
        <span className="spacer" />
        <span className="who" title={`Signed in as ${who}`}>
          {who}
        </span>
        <ThemeToggle />
        <button type="button" className="link" onClick={() => onSignedOut(null)}>
          Sign out
        </button>
      </header>
      {chat.connectionDetail && chat.connection !== 'connected' && (
        <p className="connection-detail" role="status">
          {chat.connectionDetail}
        </p>
      )}
      <div className="layout">
        <ConversationList
          conversations={conversations}
          selected={chat.conversationId}
          error={listError}
          onNew={() => {
            chat.newChat();
            setDrawer(false);
          }}
          onOpen={(id) => {
            void chat.open(id);
            setDrawer(false);
          }}
          onDelete={(id) => void remove(id)}
        />
        {drawer && <div className="scrim" onClick={() => setDrawer(false)} aria-hidden="true" />}
        <main className="chat">
          <MessageView messages={chat.messages} loading={chat.loading} />
          {chat.error && <ErrorBanner error={chat.error} onDismiss={chat.dismissError} />}
          <Composer
            connected={chat.connection === 'connected'}
            streaming={chat.streaming}
            models={modelList}
            model={model ?? ''}
            settings={settings}
            onSettings={setSettings}
            onSend={send}
            onStop={chat.stop}
          />
        </main>
      </div>
    </div>
  );
}
