import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import AiChatComponent from './AiChatComponent';
import { readToken, subjectOf } from './config';
import './style.css';

const accessToken = readToken();

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    {accessToken ? (
      <AiChatComponent userId={subjectOf(accessToken)} accessToken={accessToken} />
    ) : (
      <p>
        No token. Run <code>tokenwire token alice</code> and open this page as{' '}
        <code>?token=&lt;the token&gt;</code>.
      </p>
    )}
  </StrictMode>,
);
