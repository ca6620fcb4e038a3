import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { applyStoredTheme } from '../theme';
import '../styles.css';
import './admin.css';
import { AdminApp } from './AdminApp';

applyStoredTheme();
createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <AdminApp />
  </StrictMode>,
);
