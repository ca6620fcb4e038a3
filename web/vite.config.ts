// Two pages, built into the Python package so `tokenwire serve` ships them:
//   index.html -> /        (chat)
//   admin.html -> /admin   (dashboard)
// `npm run dev` serves them on :5173 and proxies the API and Socket.IO to a
// tokenwire on :8000 (override with TOKENWIRE_URL).
import { resolve } from 'node:path';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const backend = process.env.TOKENWIRE_URL ?? 'http://localhost:8000';

export default defineConfig({
  base: '/',
  plugins: [react()],
  build: {
    outDir: '../src/tokenwire/static',
    emptyOutDir: true,
    target: 'es2022',
    rollupOptions: {
      input: {
        index: resolve(import.meta.dirname, 'index.html'),
        admin: resolve(import.meta.dirname, 'admin.html'),
      },
    },
  },
  server: {
    port: 5173,
    proxy: {
      '/api': backend,
      '/socket.io': { target: backend, ws: true },
    },
  },
});
