// Small inline SVG icons (no icon font, no emoji: not every system has the glyphs).

export function CrownIcon() {
  return (
    <svg className="svg-icon crown" viewBox="0 0 24 24" width="14" height="14" aria-hidden="true">
      <path fill="currentColor" d="M3 7l4.5 4L12 4l4.5 7L21 7l-2 12H5L3 7z" />
    </svg>
  );
}

export function PowerIcon() {
  return (
    <svg className="svg-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
      <path fill="none" stroke="currentColor" strokeWidth="2" strokeLinecap="round" d="M12 3v9M6.3 6.3a8 8 0 1 0 11.4 0" />
    </svg>
  );
}

export function ThemeIcon() {
  return (
    <svg className="svg-icon" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
      <circle cx="12" cy="12" r="8" fill="none" stroke="currentColor" strokeWidth="2" />
      <path fill="currentColor" d="M12 4a8 8 0 0 1 0 16z" />
    </svg>
  );
}

export function HomeIcon() {
  return (
    <svg className="svg-icon" viewBox="0 0 24 24" width="24" height="24" aria-hidden="true">
      <path fill="currentColor" d="M12 3l9 8h-3v9h-5v-6h-2v6H6v-9H3z" />
    </svg>
  );
}

export function PlusCircleIcon() {
  return (
    <svg className="svg-icon" viewBox="0 0 24 24" width="22" height="22" aria-hidden="true">
      <circle cx="12" cy="12" r="10" fill="currentColor" />
      <path stroke="var(--bg-input)" strokeWidth="2.4" strokeLinecap="round" d="M12 7v10M7 12h10" />
    </svg>
  );
}

export function FileIcon() {
  return (
    <svg className="svg-icon" viewBox="0 0 24 24" width="32" height="32" aria-hidden="true">
      <path fill="none" stroke="currentColor" strokeWidth="1.6" strokeLinejoin="round" d="M6 2h8l5 5v15H6zM14 2v5h5M9 12h7M9 15h7M9 18h5" />
    </svg>
  );
}
