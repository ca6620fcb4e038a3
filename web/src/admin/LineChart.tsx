/** A small SVG line chart of one figure over the last 15 minutes. */
import type { AdminSample } from '../protocol';
import { WINDOW_MS } from './useAdmin';

const W = 300;
const MIN_SPAN_MS = 60_000;
const H = 80;

function niceMax(value: number): number {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * power >= value) ?? 10;
  return step * power;
}

function ago(ms: number): string {
  const minutes = Math.round(ms / 60_000);
  return minutes <= 1 ? '1 min ago' : `${minutes} min ago`;
}

export function LineChart({
  title,
  samples,
  pick,
  format = (v) => v.toLocaleString(undefined, { maximumFractionDigits: 1 }),
}: {
  title: string;
  samples: AdminSample[];
  pick: (sample: AdminSample) => number;
  format?: (value: number) => string;
}) {
  // The x axis spans what has been collected, up to 15 minutes (the server keeps no more).
  const newest = samples.length ? samples[samples.length - 1]!.ts : Date.now();
  const oldest = samples.length ? samples[0]!.ts : newest;
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, newest - oldest));
  const start = newest - span;
  const values = samples.map(pick);
  const max = niceMax(Math.max(0, ...values));
  const points = samples
    .map((s, i) => {
      const x = (Math.max(0, s.ts - start) / span) * W;
      const y = H - (Math.max(0, values[i]!) / max) * H;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
  const current = values.length ? values[values.length - 1]! : 0;

  return (
    <figure className="chart">
      <figcaption>
        <span>{title}</span>
        <span className="current">{format(current)}</span>
      </figcaption>
      <div className="plot">
        <span className="max">{format(max)}</span>
        <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={`${title}, ${ago(span).replace(' ago', '')} up to now`}>
          <line x1="0" y1={H} x2={W} y2={H} className="axis" />
          <line x1="0" y1="0" x2={W} y2="0" className="grid" />
          {samples.length > 1 && <polyline points={points} className="line" />}
        </svg>
      </div>
      <div className="xaxis">
        <span>{ago(span)}</span>
        <span>now</span>
      </div>
    </figure>
  );
}
