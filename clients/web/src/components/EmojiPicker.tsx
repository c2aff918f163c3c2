// The emoji picker: the built-in set (lib/emoji.ts) by category, with search. Loaded on
// demand, with its data, the first time a picker opens.
import { useEffect, useRef, useState } from "react";

import { CATEGORIES, searchEmoji } from "../lib/emoji";

export default function EmojiPicker({ onPick, onClose }: { onPick: (emoji: string) => void; onClose: () => void }) {
  const [query, setQuery] = useState("");
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    const onDown = (e: MouseEvent) => box.current && !box.current.contains(e.target as Node) && onClose();
    window.addEventListener("keydown", onKey);
    window.addEventListener("mousedown", onDown);
    return () => {
      window.removeEventListener("keydown", onKey);
      window.removeEventListener("mousedown", onDown);
    };
  });
  const sections = query.trim() ? [{ name: "Results", emoji: searchEmoji(query) }] : CATEGORIES;
  return (
    <div className="emoji-picker" role="dialog" aria-label="Emoji picker" ref={box}>
      <input autoFocus aria-label="Search emoji" placeholder="Find the perfect emoji" value={query} onChange={(e) => setQuery(e.target.value)} />
      <div className="emoji-scroll">
        {sections.map((s) => (
          <section key={s.name}>
            <h3>{s.name}</h3>
            <div className="emoji-grid">
              {s.emoji.map((x) => (
                <button key={x.e} title={`:${x.n.split(" ")[0]}:`} aria-label={x.n.split(" ")[0]} onClick={() => onPick(x.e)}>
                  {x.e}
                </button>
              ))}
            </div>
          </section>
        ))}
        {sections[0].emoji.length === 0 && <p className="muted small">No emoji match.</p>}
      </div>
    </div>
  );
}
