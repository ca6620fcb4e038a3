import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Port 5173 is the origin tokenwire's CORS_ORIGIN allows by default.
export default defineConfig({
  plugins: [react()],
  server: { port: 5173, strictPort: true },
});
