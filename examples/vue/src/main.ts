import { createApp } from 'vue';
import AiChat from './AiChat.vue';

// The guide reads the token from localStorage 'accessToken'; `?token=<JWT>`
// (from `tokenwire token alice`) puts it there.
const fromUrl = new URLSearchParams(window.location.search).get('token');
if (fromUrl) localStorage.setItem('accessToken', fromUrl);

createApp(AiChat).mount('#app');
