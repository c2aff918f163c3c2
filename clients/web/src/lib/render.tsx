// Markdown (lib/markdown.ts) to React elements: text is always a text node, never HTML.
import { type ReactNode, useState } from "react";

import { type Block, type Inline, parse } from "./markdown";

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

function inline(nodes: Inline[]): ReactNode[] {
  return nodes.map((n, i) => {
    switch (n.t) {
      case "text":
        return n.v;
      case "br":
        return <br key={i} />;
      case "code":
        return <code key={i}>{n.v}</code>;
      case "bold":
        return <strong key={i}>{inline(n.c)}</strong>;
      case "italic":
        return <em key={i}>{inline(n.c)}</em>;
      case "strike":
        return <del key={i}>{inline(n.c)}</del>;
      case "spoiler":
        return <Spoiler key={i}>{inline(n.c)}</Spoiler>;
    }
  });
}

function blocks(bs: Block[]): ReactNode[] {
  return bs.map((b, i) => {
    switch (b.t) {
      case "para":
        return <div key={i}>{inline(b.c)}</div>;
      case "quote":
        return <blockquote key={i}>{blocks(b.c)}</blockquote>;
      case "codeblock":
        return (
          <pre key={i}>
            <code>{b.v}</code>
          </pre>
        );
    }
  });
}

/** A message body (the Markdown source every client puts in `body`) as elements. */
export function Markdown({ source }: { source: string }) {
  return <>{blocks(parse(source))}</>;
}
