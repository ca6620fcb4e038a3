import { defineConfig } from 'vite';
import vue from '@vitejs/plugin-vue';

// Port 5173 is the origin tokenwire's CORS_ORIGIN allows by default.
export default defineConfig({
  plugins: [vue()],
  server: { port: 5173, strictPort: true },
});
