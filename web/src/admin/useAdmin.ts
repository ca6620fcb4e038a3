/**
 * `useAdmin`: the `/admin` namespace. The server sends `admin:history` (up to
 * 15 minutes of one-second samples) on connect, then `admin:stats` every
 * second; `admin:stop {messageId}` stops any running reply.
 *
 * A token without role admin is refused with connect_error 'unauthorized':
 * that is shown as "not authorised", not retried. An expired token is renewed
 * once (development sign-in) and the connection tried again.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { io, type Socket } from 'socket.io-client';
import type {
  AdminClientToServerEvents,
  AdminSample,
  AdminServerToClientEvents,
  AdminStats,
  RefusalData,
} from '../protocol';
import { describeError } from '../protocol';

export type AdminConnection = 'connecting' | 'connected' | 'reconnecting' | 'refused' | 'unauthorised';

export const WINDOW_MS = 15 * 60 * 1000;
const MAX_SAMPLES = 900;

type AdminSocket = Socket<AdminServerToClientEvents, AdminClientToServerEvents>;

export interface UseAdmin {
  connection: AdminConnection;
  detail: string | null;
  samples: AdminSample[];
  stats: AdminStats | null;
  /** Resolves to an error in words, or null when the reply was stopped. */
  stop: (messageId: string) => Promise<string | null>;
}

function trim(samples: AdminSample[]): AdminSample[] {
  const newest = samples.length ? samples[samples.length - 1]!.ts : 0;
  const kept = samples.filter((s) => s.ts > newest - WINDOW_MS);
  return kept.length > MAX_SAMPLES ? kept.slice(kept.length - MAX_SAMPLES) : kept;
}

export function useAdmin(token: () => string | null, renew: () => Promise<string | null>): UseAdmin {
  const [connection, setConnection] = useState<AdminConnection>('connecting');
  const [detail, setDetail] = useState<string | null>(null);
  const [samples, setSamples] = useState<AdminSample[]>([]);
  const [stats, setStats] = useState<AdminStats | null>(null);
  const socketRef = useRef<AdminSocket | null>(null);
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const renewRef = useRef(renew);
  renewRef.current = renew;

  useEffect(() => {
    const socket: AdminSocket = io('/admin', {
      auth: (cb) => cb({ token: tokenRef.current() }),
      transports: ['websocket'],
      reconnectionDelay: 1000,
      reconnectionDelayMax: 5000,
    });
    socketRef.current = socket;
    let renewed = false;
    let retry: number | undefined;

    socket.on('connect', () => {
      renewed = false;
      setConnection('connected');
      setDetail(null);
    });
    socket.on('disconnect', (reason) => {
      if (reason === 'io client disconnect') return;
      setConnection('reconnecting');
      if (reason === 'io server disconnect') retry = window.setTimeout(() => socket.connect(), 1000);
    });
    socket.on('connect_error', (err: Error & { data?: RefusalData }) => {
      if (socket.active) {
        setConnection('reconnecting');
        setDetail('The server cannot be reached. Retrying…');
        return;
      }
      const data = err.data ?? {};
      if (err.message === 'rate_limited') {
        const wait = Math.max(1, Math.ceil(data.retryAfter ?? 5));
        setConnection('refused');
        setDetail(`Too many connections right now. Retrying in ${wait} s…`);
        retry = window.setTimeout(() => socket.connect(), wait * 1000);
        return;
      }
      if (data.code === 'TOKEN_EXPIRED' && !renewed) {
        renewed = true;
        setConnection('reconnecting');
        setDetail('Your session expired. Renewing it…');
        void renewRef.current().then((fresh) => {
          if (fresh) socket.connect();
          else {
            setConnection('unauthorised');
            setDetail(describeError({ code: 'TOKEN_EXPIRED', message: '' }));
          }
        });
        return;
      }
      setConnection('unauthorised');
      setDetail(data.message ?? null);
    });
    socket.io.on('reconnect_attempt', () => setConnection('reconnecting'));

    socket.on('admin:history', (data) => {
      setSamples(trim([...data.samples].sort((a, b) => a.ts - b.ts)));
    });
    socket.on('admin:stats', (data) => {
      setStats(data);
      const { ts, connections, streaming, tokensPerS, startsPerS, errorsPerS } = data;
      setSamples((prev) => {
        const last = prev[prev.length - 1];
        if (last && last.ts >= ts) return prev;
        return trim([...prev, { ts, connections, streaming, tokensPerS, startsPerS, errorsPerS }]);
      });
    });

    return () => {
      window.clearTimeout(retry);
      socket.removeAllListeners();
      socket.io.removeAllListeners();
      socket.disconnect();
      socketRef.current = null;
    };
  }, []);

  const stop = useCallback(
    (messageId: string) =>
      new Promise<string | null>((resolve) => {
        const socket = socketRef.current;
        if (!socket?.connected) {
          resolve('Not connected.');
          return;
        }
        socket.timeout(10_000).emit('admin:stop', { messageId }, (timeout, ack) => {
          if (timeout) resolve('The server did not answer in time.');
          else if (!ack.ok) resolve(describeError(ack.error));
          else resolve(null);
        });
      }),
    [],
  );

  return { connection, detail, samples, stats, stop };
}
