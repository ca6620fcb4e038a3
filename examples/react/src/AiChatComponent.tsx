// The WebSocket guide's "React Component" example, as written, with the
// changes it needs to work (each marked "fix:").
import { useState, useEffect } from 'react';
import { io, Socket } from 'socket.io-client';
import { SERVER_URL } from './config';

interface Message {
  role: 'user' | 'assistant';
  content: string;
}

// fix: the guide leaves the props untyped, which strict TypeScript refuses.
interface Props {
  userId: string;
  accessToken: string;
}

function AiChatComponent({ userId, accessToken }: Props) {
  const [socket, setSocket] = useState<Socket | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [input, setInput] = useState('');
  const [isStreaming, setIsStreaming] = useState(false);
  const [conversationId, setConversationId] = useState<string | null>(null);
  const [currentResponse, setCurrentResponse] = useState('');

  // Initialize WebSocket
  useEffect(() => {
    const newSocket = io(`${SERVER_URL}/ai`, {
      auth: { token: accessToken },
      transports: ['websocket'],
    });

    newSocket.on('connect', () => {
      console.log('Connected to AI WebSocket');
    });

    newSocket.on('chat:conversation', (data) => {
      setConversationId(data.conversationId);
    });

    newSocket.on('chat:user-message', (data) => {
      // User message confirmed
      setMessages(prev => [...prev, {
        role: 'user',
        content: data.content
      }]);
    });

    newSocket.on('chat:message', (data) => {
      // Accumulate AI response
      setCurrentResponse(prev => prev + data.content);
    });

    newSocket.on('chat:end', (data) => {
      // fix: the guide added `currentResponse` here, but this handler was
      // created once, when `currentResponse` was '', so every reply was saved
      // empty. tokenwire's chat:end carries the whole reply in `content`.
      setMessages(prev => [...prev, {
        role: 'assistant',
        content: data.content
      }]);
      setCurrentResponse('');
      setIsStreaming(false);
    });

    // fix: the guide never listens for chat:stopped, so a stopped reply
    // vanished; tokenwire sends what was written (and saved) before the stop.
    newSocket.on('chat:stopped', (data) => {
      if (data.content) {
        setMessages(prev => [...prev, { role: 'assistant', content: data.content }]);
      }
      setCurrentResponse('');
      setIsStreaming(false);
    });

    newSocket.on('chat:error', (error) => {
      console.error('Error:', error.message);
      alert('Error: ' + error.message);
      setIsStreaming(false);
      setCurrentResponse('');
    });

    setSocket(newSocket);

    return () => {
      newSocket.close();
    };
  }, [accessToken]);

  const sendMessage = () => {
    if (!socket || !input.trim() || isStreaming) return;

    setIsStreaming(true);
    setCurrentResponse('');

    socket.emit('chat:start', {
      userId,
      message: input,
      conversationId,
      // fix: the guide hard-codes model 'gpt-4'; a server that offers other
      // models answers INVALID_MODEL. Leaving it out uses the server's default.
      maxTokens: 4096,
      temperature: 0.7
    });

    setInput('');
  };

  const stopStreaming = () => {
    if (socket) {
      socket.emit('chat:stop');
      // fix: the guide cleared the reply here; chat:stopped now ends it with
      // the text that was saved.
    }
  };

  return (
    <div className="ai-chat">
      <div className="messages">
        {messages.map((msg, idx) => (
          <div key={idx} className={`message ${msg.role}`}>
            <strong>{msg.role}:</strong> {msg.content}
          </div>
        ))}

        {currentResponse && (
          <div className="message assistant streaming">
            <strong>assistant:</strong> {currentResponse}
            <span className="cursor">▊</span>
          </div>
        )}
      </div>

      <div className="input-area">
        <input
          type="text"
          value={input}
          onChange={(e) => setInput(e.target.value)}
          // fix: onKeyPress is deprecated; onKeyDown does the same here.
          onKeyDown={(e) => e.key === 'Enter' && sendMessage()}
          disabled={isStreaming}
          placeholder="Type your message..."
        />

        {!isStreaming ? (
          <button onClick={sendMessage} disabled={!input.trim()}>
            Send
          </button>
        ) : (
          <button onClick={stopStreaming}>
            Stop
          </button>
        )}
      </div>
    </div>
  );
}

export default AiChatComponent;
