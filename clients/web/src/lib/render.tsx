// Markdown (lib/markdown.ts) to React elements: text is always a text node, never HTML.
import { type ReactNode, useState } from "react";

import { type Block, blocksWithPills, type Inline, parse, type Pill, pillUser } from "./markdown";

function Spoiler({ children }: { children: ReactNode }) {
  const [shown, setShown] = useState(false);
  return (
    <span
      className={shown ? "spoiler shown" : "spoiler"}
      role="button"
      tabIndex={0}
      aria-label={shown ? undefined : "Spoiler, press to reveal"}
      onClick={() => setShown(true)}
      onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && setShown(true)}
    >
      {children}
    </span>
  );
}

/** How pills render: whose mentions are highlighted, and what a click on one does. */
interface PillOpts {
  self: string;
  onPill?: (href: string) => void;
}

function inline(nodes: Inline[], o: PillOpts): ReactNode[] {
  return nodes.map((n, i) => {
    switch (n.t) {
      case "text":
        return n.v;
      case "br":
        return <br key={i} />;
      case "code":
        return <code key={i}>{n.v}</code>;
      case "bold":
        return <strong key={i}>{inline(n.c, o)}</strong>;
      case "italic":
        return <em key={i}>{inline(n.c, o)}</em>;
      case "strike":
        return <del key={i}>{inline(n.c, o)}</del>;
      case "spoiler":
        return <Spoiler key={i}>{inline(n.c, o)}</Spoiler>;
      case "pill": {
        const user = pillUser({ text: n.v, href: n.href });
        const cls = `mention${user && user === o.self ? " me" : ""}`;
        return o.onPill && !user ? (
          <button key={i} className={cls} onClick={() => o.onPill!(n.href)}>
            {n.v}
          </button>
        ) : (
          <span key={i} className={cls} title={user}>
            {n.v}
          </span>
        );
      }
    }
  });
}

function blocks(bs: Block[], o: PillOpts): ReactNode[] {
  return bs.map((b, i) => {
    switch (b.t) {
      case "para":
        return <div key={i}>{inline(b.c, o)}</div>;
      case "quote":
        return <blockquote key={i}>{blocks(b.c, o)}</blockquote>;
      case "codeblock":
        return (
          <pre key={i}>
            <code>{b.v}</code>
          </pre>
        );
    }
  });
}

/**
 * A message body (the Markdown source every client puts in `body`) as elements; `pills`
 * (from formatted_body's matrix.to links) show as mentions, the user's own highlighted;
 * `onPill` makes the pills of rooms (channels) clickable.
 */
export function Markdown(props: { source: string; pills?: Pill[]; self?: string; onPill?: (href: string) => void }) {
  const o = { self: props.self ?? "", onPill: props.onPill };
  return <>{blocks(blocksWithPills(parse(props.source), props.pills ?? []), o)}</>;
}
