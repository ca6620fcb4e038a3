/** Light and dark: follows prefers-color-scheme until the person picks one (kept in localStorage). */
import { useCallback, useEffect, useState } from 'react';

export type ThemeChoice = 'system' | 'light' | 'dark';
const KEY = 'tokenwire.theme';

function stored(): ThemeChoice {
  const value = localStorage.getItem(KEY);
  return value === 'light' || value === 'dark' ? value : 'system';
}

function apply(choice: ThemeChoice): void {
  const root = document.documentElement;
  if (choice === 'system') root.removeAttribute('data-theme');
  else root.setAttribute('data-theme', choice);
}

/** Call before the first render, so the page never flashes the other theme. */
export function applyStoredTheme(): void {
  apply(stored());
}

export function useTheme(): { choice: ThemeChoice; dark: boolean; toggle: () => void } {
  const [choice, setChoice] = useState<ThemeChoice>(stored);
  const [media] = useState(() => window.matchMedia('(prefers-color-scheme: dark)'));
  const [systemDark, setSystemDark] = useState(media.matches);

  useEffect(() => {
    const onChange = (event: MediaQueryListEvent) => setSystemDark(event.matches);
    media.addEventListener('change', onChange);
    return () => media.removeEventListener('change', onChange);
  }, [media]);

  const dark = choice === 'dark' || (choice === 'system' && systemDark);
  const toggle = useCallback(() => {
    // Flip what is shown; choosing what the system shows anyway goes back to following it.
    const next: ThemeChoice = dark ? 'light' : 'dark';
    const wanted: ThemeChoice = (next === 'dark') === systemDark ? 'system' : next;
    if (wanted === 'system') localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, wanted);
    apply(wanted);
    setChoice(wanted);
  }, [dark, systemDark]);

  return { choice, dark, toggle };
}
